"""The live session on frames of a field of view (hypotest.live.fov), on frames of an abTEM flake
(hypotest.live.fovsim: abTEM's image of a MoS2 flake with defects, through a rotated, miscalibrated
map, drifting, Poisson noise). The hypotheses' images are abTEM's too (tests/data/fov_mos2_haadf.npz),
so no simulation runs here; the session with hypotest's own simulation is the slow CLI test.

What is checked: a site's posterior accumulated frame by frame equals the batch scorer's on the
stack of the same frames read back from the record; the evidence grows with frames; the registered
drift follows the true one; the proposal targets exactly the undecided sites; bad frames are
refused with the reason and recorded, and the session goes on; the query API's /api/sites."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from forward import InputError
from hypotest.dashboard import serve
from hypotest.live.fov import FieldOfViewSession, replay_fov_record
from hypotest.live.fovsim import FieldOfViewSimSource, make_fov_demo_session
from hypotest.live.record import load_record

DATA = Path(__file__).parents[1] / "data" / "fov_mos2_haadf.npz"
DOSE = 5e3  # e-/Å² per frame: ~0.5 counts per pixel, several frames to decide


@pytest.fixture(scope="module")
def images():
    return np.load(DATA)["hyp_images"][:8].astype(np.float64)  # the library's eight, in library order


@pytest.fixture(scope="module")
def session(tmp_path_factory, images):
    s = make_fov_demo_session(tmp_path_factory.mktemp("fov") / "s", seed=4, dose=DOSE, rate_hz=None, max_frames=6,
                              images=images)  # fmt: skip
    s.run_sync()
    return s


def test_the_flake_copy_matches_the_test_data():
    from hypotest.live.fovsim import FLAKE

    a, b = np.load(FLAKE), np.load(DATA)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    src = FieldOfViewSimSource(dose=1.0, max_frames=1)
    np.testing.assert_allclose(src.expected((0.0, 0.0)), b["expected"], atol=1e-7)  # frame 0 is the file's frame


def test_live_posteriors_equal_the_batch_scorer_on_the_recorded_frames(session, images):
    rec = load_record(session.dir)
    steps = [e for e in rec.events if e["kind"] == "fov_step"]
    assert len(steps) == 6 and [f["index"] for f in rec.frames] == list(range(6))
    rep = replay_fov_record(session.dir, images=images)
    assert rep["frames"] == 6 and rep["sites"] == len(session.result["sites"]) > 40
    assert rep["max_abs_posterior_diff"] < 1e-6
    # sites.json is the session's result as RESULT.json
    on_disk = json.loads((session.dir / "sites.json").read_text())
    assert on_disk["n_frames"] == 6 and on_disk["field_of_view"] is True
    assert [s["best"] for s in on_disk["sites"]] == [s["best"] for s in session.result["sites"]]


def test_the_evidence_accumulates_over_frames(tmp_path, session, images):
    one = make_fov_demo_session(tmp_path / "one", seed=4, dose=DOSE, rate_hz=None, max_frames=1, images=images)
    one.run_sync()
    d = np.load(DATA)
    xy = np.array([[s["x_px"], s["y_px"]] for s in session.result["sites"]])
    k = int(np.argmin(np.linalg.norm(xy - d["defect_px"][list(d["defect_names"]).index("V_S2")], axis=1)))
    v_s2 = [h for h, n in zip(session.inputs.ids, session.inputs.names) if n.startswith("V_S2")][0]
    after1, after6 = one.result["sites"][k], session.result["sites"][k]
    assert after6["best"] == v_s2 and after6["decided"]
    assert after6["log10_bayes_factor"] > 3 * after1["log10_bayes_factor"] > 0  # ~linear in the frames
    assert session._history[-1]["undecided"] < one._history[-1]["undecided"]


def test_the_registered_drift_follows_the_stage(session):
    truth = FieldOfViewSimSource(seed=4, dose=DOSE, max_frames=6)
    offsets = [truth.frame()[1] for _ in range(6)]
    for e, true in zip(session._history, offsets):
        np.testing.assert_allclose(e["drift_px"], true, atol=0.15)  # ~0.5 counts/pixel per frame
    assert np.linalg.norm(offsets[-1]) > 0.3  # the stage did move
    cal = session.status()["field_of_view"]["calibration"]
    assert abs(cal["pixel_x_A"] / 0.1624 - 1) < 2e-3 and abs(cal["rotation_deg"] - 17.3) < 0.1


def test_the_proposal_targets_the_undecided_sites(tmp_path, images):
    s = make_fov_demo_session(tmp_path / "s", seed=5, dose=DOSE, rate_hz=None, max_frames=2, images=images)
    s.run_sync()
    undecided = {x["k"] for x in s.sites() if x["status"] == "ok" and not x["decided"]}
    assert undecided
    (p,) = s.proposals()
    assert set(p["sites"]) == undecided and len(p["frames_needed"]) == len(undecided)
    x0, x1, y0, y1 = p["beam"]["scan_region_px"]
    for x in s.sites():
        if x["k"] in undecided:
            assert x0 <= x["x_px"] <= x1 and y0 <= x["y_px"] <= y1
    assert p["expected_gain_bits"] > 0 and p["beam"]["dose"] == DOSE
    finite = [n for n in p["frames_needed"] if n is not None]
    assert finite and p["expected_dose_to_decision"] == sorted(finite)[len(finite) // 2] * DOSE


class _Frames:
    """A source that delivers the given frames, then ends."""

    name, controllable = "frames", False

    def __init__(self, frames):
        self.frames, self.n = list(frames), 0

    def poll(self, timeout):
        from hypotest.live.events import RawFrame, StreamEvent

        if self.n == len(self.frames):
            self.n += 1
            return [StreamEvent("end", 0.0)]
        if self.n > len(self.frames):
            return []
        f, self.n = self.frames[self.n], self.n + 1
        return [RawFrame(source_id=self.n - 1, timestamp=0.0, counts=f[0], beam=f[1])]

    def apply_beam(self, beam):
        return False

    def close(self):
        pass


def test_bad_frames_are_refused_with_the_reason_and_the_session_goes_on(tmp_path, images):
    from hypotest.hypothesis import load_hypotheses

    src = FieldOfViewSimSource(seed=1, dose=DOSE)
    beam = src.beam
    good = [src.frame()[0] for _ in range(2)]
    frames = [(good[0], beam), (good[0][:100], beam), (good[1], {**beam, "dose": 2 * DOSE}),
              (np.zeros((2, 3, 4)), beam), (good[1], beam)]  # fmt: skip
    s = FieldOfViewSession(tmp_path / "s", hypotheses=load_hypotheses("mos2_defects"), beam=beam, source=_Frames(frames),
                           images=images)  # fmt: skip
    s.run_sync()
    rec = load_record(tmp_path / "s")
    fates = {f["index"]: f for f in rec.frames}
    assert [fates[i]["fate"] for i in range(5)] == [None, "rejected", "rejected", "rejected", None]
    assert "the field of view's frames are 128x128" in fates[1]["reason"]
    assert "a field-of-view session keeps one beam" in fates[2]["reason"]
    assert "expected a 2D numeric frame" in fates[3]["reason"]
    assert s.status()["frames"] == {"received": 5, "scored": 2, "coalesced": 0, "rejected": 3, "bad_messages": 0}
    for i in range(5):  # every frame's bytes are in the record, the refused ones too
        np.testing.assert_array_equal(rec.frame(i), np.asarray(frames[i][0]))


def test_a_library_that_is_not_one_hosts_defects_is_refused_before_anything_is_written(tmp_path):
    from hypotest.hypothesis import load_hypotheses

    import dataclasses

    from forward import make_specimen

    hyps = load_hypotheses("mos2_defects")
    spec = hyps[2].specimen  # V_S, every atom moved by (0.8, 0.3) Å: not a point defect of the host
    moved = make_specimen(np.asarray(spec.positions) + np.array([0.8, 0.3, 0.0]), np.asarray(spec.numbers),
                          np.asarray(spec.cell))  # fmt: skip
    hyps[2] = dataclasses.replace(hyps[2], specimen=moved)
    with pytest.raises(InputError, match="differs from the host 'MoS2 monolayer' in .* not a point defect"):
        FieldOfViewSession(tmp_path / "s", hypotheses=hyps, beam=FieldOfViewSimSource().beam,
                           source=FieldOfViewSimSource())  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_resume_refuses_a_field_of_view_record(session):
    from hypotest.live.resume import resume_session

    with pytest.raises(InputError, match="field-of-view session: it is not resumed"):
        resume_session(session.dir)


def test_sites_api(session):
    with serve(session, port=0) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        sites = c.get("/api/sites").json()
        assert len(sites) == len(session.result["sites"])
        defect = next(x for x in sites if not x["is_host"] and x["decided"])
        assert {"k", "class", "x_px", "frame_x_px", "x_A", "best", "p_best", "decided", "status"} <= set(defect)
        d = c.get(f"/api/sites/{defect['k']}").json()
        assert d["posterior_named"][0]["id"] == defect["best"] and math.isclose(sum(d["posterior"].values()), 1.0)
        assert d["window"]["size_px"] > 10 and d["fit"]["n_pixels"] > 50
        for layer in ("frame", "best", "residual"):
            r = c.get(f"/api/sites/{defect['k']}/{layer}.png")
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        r = c.get(f"/api/sites/{len(sites)}")
        assert r.status_code == 404 and f"sites 0..{len(sites) - 1}" in r.json()["detail"]
        assert c.get("/api/sites/0/phase.png").status_code == 422
        r = c.post("/api/beam", json=session._beam)
        assert r.status_code in (409, 422)  # the session has stopped (409), or: beams are fixed (422)
        assert c.get("/api/residual.png").status_code == 200
        h = c.get("/api/hypotheses").json()
        assert math.isclose(sum(x["sites_decided"] for x in h), sum(x["decided"] for x in sites))


def test_control_actions_are_refused_with_the_reason(session):
    with pytest.raises(InputError, match="not available in a field-of-view session"):
        session.add_hypothesis({"file": "x.cif"})
    with pytest.raises(InputError, match="not available in a field-of-view session"):
        session.apply_beam(session._beam)


def test_sites_drifting_into_view_are_added_and_scored(images):
    """The stage walks 3 px per frame along x: the sites that enter the field are appended (every
    earlier site keeps its index and position), scored from the frame that first holds them, and
    the batch scorer on the same stack (grow_sites) gives the same posteriors."""
    from hypotest.fieldofview import FieldOfViewScorer, score_field_of_view
    from hypotest.hypothesis import load_hypotheses
    from hypotest.live.fovsim import FOV_BEAM
    from hypotest.scoring import ScoringInput
    from hypotest.beamfile import parse_beam

    src = FieldOfViewSimSource(seed=0, dose=2e4)
    rng = np.random.default_rng(7)
    exposure = 2e4 * abs(np.linalg.det(src.m))
    frames = np.stack([rng.poisson(exposure * np.maximum(src.expected((3.0 * i, 0.0)), 0)).astype(float) for i in range(5)])
    hyps = ScoringInput.from_hypotheses(load_hypotheses("mos2_defects"))
    bf = parse_beam({**FOV_BEAM, "dose": 2e4})
    sc = FieldOfViewScorer(hyps, frames[0], bf, images=images, fit_frame="latest", grow_sites=True)
    first = [(c, tuple(nn)) for c, _, _, nn in sc.sites]
    grown = [sc.add(f).new_sites for f in frames[1:]]
    assert all(n > 0 for n in grown) and len(sc.sites) == len(first) + sum(grown)
    assert [(c, tuple(nn)) for c, _, _, nn in sc.sites[: len(first)]] == first  # indices kept
    res = sc.result()
    assert len(res["sites"]) == len(sc.sites) and [s["k"] for s in res["sites"]] == list(range(len(sc.sites)))
    fit = sc.frames[-1].fit
    for s in res["sites"][len(first):]:  # a new site is inside the latest frame, beyond frame 0's edge
        p = (np.array([s["x_A"], s["y_A"]]) - fit.t) @ np.linalg.inv(fit.m).T
        assert np.all(p >= sc.wpx) and np.all(p <= 127 - sc.wpx)
        assert s["x_px"] < sc.wpx or s["x_px"] > 127 - sc.wpx or s["y_px"] < sc.wpx or s["y_px"] > 127 - sc.wpx
    new_ok = [s for s in res["sites"][len(first):] if s["status"] == "ok"]
    assert new_ok and all(s["fit"]["n_pixels"] > 100 for s in new_ok)
    batch = score_field_of_view(hyps, frames, bf, images=images, grow_sites=True)
    assert len(batch["sites"]) == len(res["sites"])
    # the batch's fit check is on each site's first frame: a new site's, not frame 0 (which lacks it)
    assert all(s["fit"]["n_pixels"] > 100 and s["status"] != "off_specimen" for s in batch["sites"][len(first):])
    diff = max(abs(p - b["posterior"][h]) for a, b in zip(res["sites"], batch["sites"]) for h, p in a["posterior"].items())
    assert diff < 1e-6
    # without grow_sites the batch keeps the first frame's sites
    assert len(score_field_of_view(hyps, frames, bf, images=images)["sites"]) == len(first)
    assert sc.frames_held(0) == 5 and sc.frames_held(len(sc.sites) - 1) == 1  # the last came in with frame 4
    # a site view of a new site
    w = sc.site_window(len(sc.sites) - 1)
    assert w["frame"] == 4 and w["expected"].shape[0] == len(w["members"])
