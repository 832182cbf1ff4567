"""The live session end to end: identification, metastable switches, coalescing, bad frames,
a dropped source, kill -9 and resume, replay, hypotheses added and dropped while running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from forward import InputError, make_beam
from hypotest.cli import main
from hypotest.beamfile import parse_beam
from hypotest.live.events import BadMessage, RawFrame, StreamEvent
from hypotest.live.model import ImageModel
from hypotest.live.record import load_record
from hypotest.hypothesis import load_hypotheses
from hypotest.live.builtin import LIBRARY_SETTINGS, make_demo_session
from hypotest.live.resume import replay_record, resume_session


def _fates_complete(rec):
    """Every received frame has exactly one fate, and the steps hold each scored frame once."""
    in_steps = [j for s in rec.steps for j in s["frames"]]
    assert len(in_steps) == len(set(in_steps))
    assert [f["index"] for f in rec.frames] == list(range(len(rec.frames)))
    return {f["fate"] for f in rec.frames}


def test_session_identifies_hidden_structure_and_replays(tmp_path, mos2_waves):
    s = make_demo_session(tmp_path / "s", seed=3, dose=200.0, exit_waves=mos2_waves, max_frames=40)
    st = s.run_sync()
    truth = s.source.reveal()[-1]
    assert st["decision"] is not None and st["decision"]["id"] == truth["id"]
    assert st["decision"]["posterior"] >= 0.99
    rec = load_record(tmp_path / "s")
    assert _fates_complete(rec) == {"scored"}
    assert rec.truth["states"] == [truth["name"]]
    assert rec.rejections and all("Bayes factor" in r["reason"] and r["dose_e_per_A2"] > 0 for r in rec.rejections)
    assert any(e["kind"] == "proposals" for e in rec.events) or rec.steps[0]["proposals"] is not None
    rep = replay_record(tmp_path / "s")
    assert rep.steps == len(rec.steps) and rep.ok and rep.decision_reproduced
    assert rep.max_abs_posterior_diff <= 1e-6


@pytest.mark.slow  # ~90 s on two cores: the 4D-STEM S-matrices of eight hypotheses
def test_4dstem_frames_are_scored_recorded_shown_and_replayed(tmp_path, mos2_waves):
    """The MoS2 session offers 4D-STEM (a pixelated camera to 40 mrad): its frames arrive as
    [sx, sy, kx, ky], are scored over every detector pixel, recorded as received, shown as the
    virtual dark-field image, and replay to the same posteriors."""
    s = make_demo_session(tmp_path / "4d", seed=0, hidden=4, dose=200.0, exit_waves=mos2_waves, max_frames=5, start_beam=8,
                          auto_apply=False, stop_on_decision=False, pixelated=True)  # fmt: skip
    label, beam = s.candidates[8]
    assert label.startswith("4D-STEM to 40 mrad") and beam["detector"] == {"mode": "4dstem", "outer": 40.0}
    shape = s.model.frame_shape_of(beam)
    assert len(shape) == 4 and shape[:2] == s.model.scan_gpts(parse_beam(beam).beam)
    st = s.run_sync()
    assert st["frames"]["scored"] == 5 and st["frames"]["rejected"] == 0
    rec = load_record(tmp_path / "4d")
    assert all(tuple(rec.frame(f["index"]).shape) == shape for f in rec.frames)
    # Mo_S after 1000 e-/Å² of 4D-STEM: its nearest rival, the pristine lattice, is 25 nats behind
    # in expectation (pairwise Kullback-Leibler divergence 0.025 nats per e-/Å²), sd ~7 nats
    assert st["dose_used_e_per_A2"] == pytest.approx(1000.0)
    view = s.view()
    assert s.hyps[view.best].name == s.source.reveal()[-1]["name"]
    assert float(view.posterior[view.best]) > 0.9
    assert max(abs(v) for v in rec.steps[-1]["drift_px"]) < 1.0
    assert s.latest_frame().shape == shape[:2] and np.isfinite(s.residual()).all()
    assert s.simulated_image(s.hyps[0].id).shape == shape[:2]
    assert any(p["label"] == label for p in s.proposals())
    rep = replay_record(tmp_path / "4d")
    assert rep.steps == 5 and rep.ok and rep.max_abs_posterior_diff <= 1e-6


def test_fast_scorer_session_identifies_and_replays(tmp_path, mos2_waves):
    """The registered-frame screen + exact scorer (large libraries) reaches the same decision,
    never locks onto a lattice translation (a defect on another site), and replays exactly."""
    s = make_demo_session(tmp_path / "f", seed=4, dose=200.0, exit_waves=mos2_waves, max_frames=40, scorer="fast")
    st = s.run_sync()
    truth = s.source.reveal()[-1]
    assert st["decision"] is not None and st["decision"]["id"] == truth["id"]
    rec = load_record(tmp_path / "f")
    assert rec.config["scorer"] == "fast"
    assert all(max(abs(v) for v in x["drift_px"]) <= 3.0 for x in rec.steps)
    assert all(0.0 <= x["screen_error_bound"] <= 1e-6 for x in rec.steps)
    assert replay_record(tmp_path / "f").ok


def test_registration_recovers_a_small_drift_and_ignores_lattice_translations():
    from inference import register_shift
    from inference.evidence import fourier_shift

    rng = np.random.default_rng(0)
    x = np.arange(64)[:, None] * 2 * np.pi / 16  # a "lattice": period 16 pixels in x and y
    y = np.arange(72)[None, :] * 2 * np.pi / 18
    img = (2.0 + np.cos(x) * np.cos(y)).astype(np.float32)
    img[20, 30] += 3.0  # a defect
    frame = np.asarray(fourier_shift(img, np.array([1.3, -0.6], np.float32)))
    sx, sy = register_shift(rng.poisson(frame * 50.0).astype(np.float32), img)
    assert abs(sx - 1.3) < 0.25 and abs(sy + 0.6) < 0.25
    assert register_shift(rng.poisson(frame * 50.0), img, shift_sd=0.5) == pytest.approx((sx, sy), abs=0.05)
    moved = np.roll(img, (16, 0), axis=(0, 1))  # a whole lattice period: outside the drift window
    sx, sy = register_shift(moved, img, max_drift_px=3.0)
    assert abs(sx) <= 3.0 and abs(sy) <= 3.0


def test_channel_frames_register_on_the_scan_and_the_fast_scorer_scores_them_exactly():
    """4D-STEM-like frames [channels..., sx, sy]: registration sums the channels' correlations,
    and the fast scorer (no screen for channel frames) scores every hypothesis with the linear
    scorer at that drift."""
    from inference import ScorerConfig, make_noise_model, make_nuisance_prior, make_scorer, register_shift
    from inference.evidence import fourier_shift

    rng = np.random.default_rng(1)
    x = np.arange(24)[:, None] * 2 * np.pi / 12
    y = np.arange(20)[None, :] * 2 * np.pi / 10
    base = [np.cos(x + p) * np.cos(y - 2 * p) for p in (0.0, 0.7, 1.9)]
    # [H=3, 2, 3, 24, 20]: every channel an image over the scan, weak alone (~0.4 counts/pixel)
    imgs = np.stack([np.stack([np.stack([0.02 * (1.5 + b) * (1 + 0.1 * (h + 1) * (i - j)) for j in range(3)])
                               for i in range(2)]) for h, b in enumerate(base)]).astype(np.float32)  # fmt: skip
    shift = np.array([0.8, -0.5], np.float32)
    mu = np.asarray(fourier_shift(imgs[1], shift)) * 20.0
    counts = rng.poisson(np.maximum(mu, 0)).astype(np.float32)
    drift = register_shift(counts, imgs[1], shift_sd=0.5)
    assert abs(drift[0] - 0.8) < 0.3 and abs(drift[1] + 0.5) < 0.3
    noise, prior = make_noise_model("poisson"), make_nuisance_prior()
    ev = make_scorer(ScorerConfig("fast", noise, prior)).score(counts, imgs, 20.0, drift)
    assert ev.exact.all() and int(np.argmax(ev.log_evidence)) == 1 and ev.screen_error_bound == 0.0
    ref = make_scorer(ScorerConfig("linear", noise, prior)).score(counts, imgs, 20.0, drift)
    np.testing.assert_allclose(ev.log_evidence, np.asarray(ref.log_evidence), rtol=1e-6)
    lap = make_scorer(ScorerConfig("laplace", noise, prior)).score(counts, imgs, 20.0, drift)
    assert int(np.argmax(lap.log_evidence)) == 1
    np.testing.assert_allclose(lap.shift[1], shift, atol=0.3)


def test_registration_of_sparse_frames_follows_the_prior_not_the_noise():
    """ADF-like frames with ~15 counts (Gaussian columns on a dark field, no drift): the
    maximum-likelihood shift wanders by about half a pixel, the MAP with the nuisance prior's
    0.5-pixel sd stays near zero; on bright frames the two agree (previous test)."""
    from inference import register_shift

    rng = np.random.default_rng(1)
    xx, yy = np.meshgrid(np.arange(96), np.arange(112), indexing="ij")
    img = np.full((96, 112), 1e-3)
    for cx in range(8, 96, 16):
        for cy in range(8, 112, 16):
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))
    lam = img * 15.0 / img.sum()
    flat, prior = [], []
    for _ in range(60):
        y = rng.poisson(lam).astype(np.float32)
        flat.append(register_shift(y, img))
        prior.append(register_shift(y, img, shift_sd=0.5))
    rms = lambda v: float(np.sqrt(np.mean(np.square(v))))  # noqa: E731
    assert rms(prior) < 0.3 and rms(prior) < 0.7 * rms(flat), (rms(prior), rms(flat))


@pytest.mark.slow
@pytest.mark.parametrize("library", ["pt111_adsorbates", "srtio3_vacancy"])
def test_each_builtin_library_is_identified(tmp_path, library):
    s = make_demo_session(tmp_path / library, seed=1, library=library, max_frames=150)
    st = s.run_sync()
    truth = s.source.reveal()[-1]
    assert st["decision"] is not None, f"{library}: undecided after {st['step']} steps"
    assert st["decision"]["id"] == truth["id"] and st["decision"]["posterior"] >= 0.99


def test_metastable_switch_is_detected_within_a_few_frames(tmp_path, mos2_waves):
    a, b = 0, 1  # pristine MoS2 <-> V_Mo
    s = make_demo_session(tmp_path / "m", seed=5, dose=100.0, exit_waves=mos2_waves, hidden=[a, b],
                          schedule=[(0, 0), (10, 1)], max_frames=20, stop_on_decision=False,
                          expected_run_length=50.0, auto_apply=False)  # fmt: skip
    s.run_sync()
    rec = load_record(tmp_path / "m")
    ids = [h.id for h in s.hyps]
    assert rec.map_states[9] == ids[a]
    switched = [k for k in range(10, 20) if rec.map_states[k] == ids[b]]
    assert switched and switched[0] <= 13, rec.map_states
    assert all(m == ids[b] for m in rec.map_states[switched[0] :])
    assert rec.change_points and 9 <= rec.change_points[-1] <= 12
    # the new state had been rejected in the first segment, and came back
    assert any(r["id"] == ids[b] for r in rec.rejections)
    assert any(e["kind"] == "return" and e["id"] == ids[b] for e in rec.events)


def test_coalescing_accounts_for_every_frame(tmp_path, mos2_waves):
    s = make_demo_session(tmp_path / "c", seed=2, dose=20.0, exit_waves=mos2_waves, frame_rate_hz=None,
                          max_frames=60, stop_on_decision=False, auto_apply=False)  # fmt: skip
    st = s.run(timeout=300)
    rec = load_record(tmp_path / "c")
    fates = _fates_complete(rec)
    assert st["frames"]["received"] == 60 == len(rec.frames)
    assert "coalesced" in fates and st["frames"]["coalesced"] > 0
    assert sum(len(x["frames"]) for x in rec.steps) == 60  # nothing left unscored at the end of the source
    coalesced = [x for x in rec.steps if len(x["frames"]) > 1]
    assert all(x["coalesced"] == len(x["frames"]) - 1 for x in coalesced)
    assert all(x["dose_e_per_A2"] == pytest.approx(20.0 * len(x["frames"])) for x in rec.steps)
    assert replay_record(tmp_path / "c").ok


class _ListSource:
    """A scripted source: each poll returns the next list of events (then end)."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)
        self.beams = []

    def poll(self, timeout):
        if not self.script:
            return [StreamEvent("end", time.time())]
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def apply_beam(self, beam):
        self.beams.append(beam)
        return True

    def close(self):
        pass


def _scripted_session(tmp_path, mos2_waves, script, **kw):
    from hypotest.live.runner import LiveSession
    from hypotest.live.builtin import demo_beams

    st = LIBRARY_SETTINGS["mos2_defects"]
    hyps = load_hypotheses("mos2_defects")
    model = ImageModel([h.specimen for h in hyps], exit_waves=mos2_waves, energy=st.energy)
    cands = demo_beams(st, model.pixel_sampling, 200.0)
    return LiveSession(tmp_path, hypotheses=hyps, model=model, source=_ListSource(script), candidate_beams=cands,
                       beam=cands[2][1], config={"library": "mos2_defects", "model": model.settings,
                                                 "source": {"kind": "scripted"}}, **kw), model, cands  # fmt: skip


def test_bad_frames_and_a_dropped_source_are_recorded_and_the_session_goes_on(tmp_path, mos2_waves):
    rng = np.random.default_rng(0)
    good = lambda i: RawFrame(i, time.time(), rng.poisson(10.0, (96, 112)).astype(np.uint16))  # noqa: E731
    nan = rng.poisson(10.0, (96, 112)).astype(np.float32)
    nan[3, 4] = np.nan
    script = [
        [StreamEvent("connected", time.time())],
        [good(0)],
        [RawFrame(1, time.time(), np.zeros((50, 50), np.uint16))],  # wrong shape
        [RawFrame(2, time.time(), nan)],  # NaN
        [RawFrame(3, time.time(), -np.ones((96, 112), np.float32))],  # negative under Poisson
        [BadMessage(4, time.time(), "frame 4: header says shape [96, 112] but 10 bytes arrived")],  # truncated
        ConnectionError("stream dropped"),
        [StreamEvent("reconnected", time.time())],
        [good(5)],
    ]
    s, model, _ = _scripted_session(tmp_path / "b", mos2_waves, script, stop_on_decision=False, auto_apply=False)
    assert model.frame_shape == (96, 112)
    st = s.run(timeout=120)
    assert st["frames"] == {"received": 5, "scored": 2, "coalesced": 0, "rejected": 3, "bad_messages": 1} or (
        st["frames"]["scored"] + st["frames"]["coalesced"] == 2 and st["frames"]["rejected"] == 3
    )
    rec = load_record(tmp_path / "b")
    reasons = {f["source_id"]: f["reason"] for f in rec.frames if f["fate"] == "rejected"}
    assert "frame shape [50, 50] does not match the simulated images [96, 112]" in reasons[1]
    assert "must be finite" in reasons[2] and "pixel (3, 4)" in reasons[2]
    assert ">= 0 under the poisson noise model" in reasons[3]
    bad = [e for e in rec.events if e["kind"] == "bad_message"]
    assert bad[0]["reason"].startswith("frame 4: header says shape")
    streams = [e["event"] for e in rec.events if e["kind"] == "stream"]
    assert streams[:3] == ["connected", "disconnected", "reconnected"] and streams[-1] == "end"
    assert "ConnectionError: stream dropped" in [e for e in rec.events if e["kind"] == "stream"][1]["detail"]
    assert _fates_complete(rec) == {"scored", "rejected"}


def test_add_and_drop_hypotheses_while_running(tmp_path, mos2_waves):
    s = make_demo_session(tmp_path / "a", seed=4, dose=100.0, exit_waves=mos2_waves, max_frames=3,
                          stop_on_decision=False, auto_apply=False)  # fmt: skip
    s.run_sync()
    # (the session stopped; the view still answers from its state)
    s2 = resume_session(tmp_path / "a", stop_on_decision=False)
    h0 = s2.hyps[1]
    new = {"name": "MoS2 shifted copy", "prior": 0.5,
           "positions": (np.asarray(h0.specimen.positions) + [0.05, 0, 0]).tolist(),
           "numbers": np.asarray(h0.specimen.numbers).tolist()}  # fmt: skip
    d = s2.add_hypothesis(new)
    assert d["name"] == "MoS2 shifted copy" and d["state"] in ("surviving", "rejected")
    assert all(np.isfinite(row[-1]) for row in s2.live.tracker.log_evidence)  # its past frames were re-scored
    with pytest.raises(InputError, match="same structure as an existing one"):
        s2.add_hypothesis({**new, "name": "again"})
    with pytest.raises(InputError, match="missing field"):
        s2.add_hypothesis({"name": "x"})
    s2.drop_hypothesis(s2.hyps[0].id)
    with pytest.raises(InputError, match="already dropped"):
        s2.drop_hypothesis(s2.hyps[0].id)
    with pytest.raises(InputError, match="unknown hypothesis id"):
        s2.drop_hypothesis("nope")
    s2.source.max_frames = 2
    s2.run_sync()
    rec = load_record(tmp_path / "a")
    assert rec.ids[-1] == d["id"] and len(rec.steps) == 5
    assert rec.steps[-1]["log_evidence"][0] is None  # dropped: not scored
    assert rec.posterior[-1, 0] == 0 or np.isnan(rec.posterior[-1, 0])
    assert replay_record(tmp_path / "a").ok


_KILL_SCRIPT = """
import sys
from hypotest.live.builtin import make_demo_session
s = make_demo_session(sys.argv[1], seed=6, dose=20.0, frame_rate_hz=8.0, max_frames=400, stop_on_decision=False)
s.start(); s.wait()
"""


@pytest.mark.slow
def test_kill_9_then_resume_loses_nothing_and_replays(tmp_path):
    d = tmp_path / "k"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(d)], env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(1.0)
            if (d / "record.jsonl").exists() and (d / "record.jsonl").read_text().count('"kind": "step"') >= 6:
                break
        else:
            pytest.fail("the session did not record 6 steps in time")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    before = load_record(d)
    n_frames = len(before.frames)
    assert len(before.steps) >= 6
    # resume: frames in flight are scored first; the microscope continues its sequence
    s = resume_session(d, stop_on_decision=False)
    s.max_steps = len(before.steps) + len(before.unscored_frames()) + 3
    s.run_sync()
    after = load_record(d)
    assert [f["index"] for f in after.frames] == list(range(len(after.frames)))
    assert len(after.frames) >= n_frames
    assert all(after.frames[i]["fate"] is not None for i in range(n_frames)), "a frame received before the kill was lost"
    sids = [fl["source_id"] for fl in after.frame_lines]
    assert sids == sorted(sids) and len(set(sids)) == len(sids)
    assert any(e["kind"] == "resumed" for e in after.events)
    assert replay_record(d).ok


def test_session_cli_show_and_replay(tmp_path, mos2_waves, capsys):
    s = make_demo_session(tmp_path / "cli", seed=3, dose=200.0, exit_waves=mos2_waves, max_frames=40)
    s.run_sync()
    assert main(["session", "show", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "posterior at the last step" in out and "decision:" in out and "truth (simulated microscope)" in out
    assert main(["session", "replay", str(tmp_path / "cli")]) == 0
    assert "max |posterior difference| 0.00e+00" in capsys.readouterr().out
    assert main(["session", "show", str(tmp_path / "nothing")]) == 2
    assert "not a session directory" in capsys.readouterr().err


def test_record_survives_a_truncated_last_line(tmp_path, mos2_waves):
    s = make_demo_session(tmp_path / "t", seed=3, dose=200.0, exit_waves=mos2_waves, max_frames=3,
                          stop_on_decision=False, auto_apply=False)  # fmt: skip
    s.run_sync()
    path = tmp_path / "t" / "record.jsonl"
    text = path.read_text()
    path.write_text(text + '{"kind": "step", "step": 99, "fra')  # a crash mid-line
    rec = load_record(tmp_path / "t")
    assert rec.truncated.startswith('{"kind": "step", "step": 99') and len(rec.steps) == 3
    s2 = resume_session(tmp_path / "t", stop_on_decision=False)
    s2.source.max_frames = 1
    s2.run_sync()
    rec = load_record(tmp_path / "t")
    assert len(rec.steps) == 4 and rec.steps[-1]["step"] == 3
    json.loads(path.read_text().splitlines()[-1])  # the next line started clean


def test_zeromq_stream_at_a_high_rate_every_frame_scored_or_coalesced(tmp_path, mos2_waves):
    """Frames sent over loopback ZeroMQ as fast as the receiver takes them: the session ingests
    every one, scores or coalesces it, and the counts add up. (The control channel to the sender is
    tested in test_zmqstream.py.)"""
    import threading

    from hypotest.live.runner import LiveSession
    from hypotest.live.builtin import demo_beams
    from hypotest.live.zmqstream import ZmqSource, send_frames

    st = LIBRARY_SETTINGS["mos2_defects"]
    hyps = load_hypotheses("mos2_defects")
    model = ImageModel([h.specimen for h in hyps], exit_waves=mos2_waves, energy=st.energy)
    cands = demo_beams(st, model.pixel_sampling, 40.0)
    lam = model.images(cands[2][1])[5] * 40.0 * np.prod(model.pixel_sampling)
    frames = np.random.default_rng(1).poisson(lam, (400, *lam.shape)).astype(np.uint16)
    source = ZmqSource("tcp://127.0.0.1:*", control_address="tcp://127.0.0.1:*", end_on_sender_end=True)
    s = LiveSession(tmp_path / "z", hypotheses=hyps, model=model, source=source, candidate_beams=cands,
                    beam=cands[2][1], config={"library": "mos2_defects", "model": model.settings,
                                              "source": {"kind": "zmq", "address": source.address}},
                    stop_on_decision=False, auto_apply=False)  # fmt: skip
    s.start()
    beams_seen = []
    sender = threading.Thread(target=lambda: beams_seen.append(send_frames(
        frames, source.address, beam=cands[2][1], sampling=model.pixel_sampling,
        control_address=source.control_address, on_beam=lambda b: None)))  # fmt: skip
    sender.start()
    sender.join(120)
    assert s.wait(300)
    s.stop()
    rec = load_record(tmp_path / "z")
    st_ = s.status()
    assert beams_seen and beams_seen[0].sent == 400
    assert st_["frames"]["received"] == 400 == len(rec.frames) and st_["frames"]["bad_messages"] == 0
    assert _fates_complete(rec) <= {"scored", "coalesced"}
    assert st_["frames"]["scored"] + st_["frames"]["coalesced"] == 400
    assert sum(len(x["frames"]) for x in rec.steps) == 400
    assert st_["frames"]["coalesced"] > 0  # 400 frames arrive far faster than scoring


def test_scoring_loop_killed_mid_session_then_resumed_loses_nothing(tmp_path, mos2_waves):
    """The scoring loop dies on its 4th step (a crashed scorer): the session says so, every frame
    received is still in the record, and a resumed session scores the ones left in flight."""
    s = make_demo_session(tmp_path / "w", seed=3, dose=40.0, exit_waves=mos2_waves, frame_rate_hz=20.0,
                          max_frames=30, stop_on_decision=False, auto_apply=False)  # fmt: skip
    s.warm_up()  # compiles the scorer once per frame shape (camera, 4D-STEM)
    real, calls = s._live_step, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # steps 0..2 succeed
            raise RuntimeError("scoring worker killed")
        return real(*a, **k)

    s._live_step = dying
    s.start(warm_up=False)
    assert s.wait(120)
    time.sleep(0.5)  # the ingest thread keeps recording frames after the loop died
    st = s.status()
    s.stop()
    assert st["state"] == "failed" and "scoring worker killed" in st["error"]
    rec = load_record(tmp_path / "w")
    failed = [e for e in rec.events if e["kind"] == "failed"]
    assert failed and "RuntimeError: scoring worker killed" in failed[0]["error"] and "resume" in failed[0]["hint"]
    assert len(rec.steps) == 3
    n = len(rec.frames)
    in_flight = [f["index"] for f in rec.frames if f["fate"] is None]  # the batch the loop died on
    queued = [f["index"] for f in rec.frames if f["fate"] == "unscored"]  # received after it died
    assert n > 5 and in_flight and queued and len(in_flight) + len(queued) + 3 <= n
    assert sorted(rec.unscored_frames()) == sorted(in_flight + queued)
    # resume: every frame not scored before the crash is scored first, then the microscope goes on
    s2 = resume_session(tmp_path / "w", stop_on_decision=False)
    s2.source.max_frames = 2
    s2.run_sync()
    after = load_record(tmp_path / "w")
    assert [x["step"] for x in after.steps] == list(range(len(after.steps)))
    assert all(after.frames[i]["fate"] in ("scored", "coalesced") for i in range(n)), "a frame was lost"
    assert replay_record(tmp_path / "w").ok


def _live_on_file(tmp_path, frames, beam, out, *extra):
    """``hypotest live --library mos2_defects`` on ``frames`` saved to a file, with ``beam``."""
    np.save(tmp_path / "frames.npy", frames)
    (tmp_path / "beam.json").write_text(json.dumps(beam))
    return main(["live", "--library", "mos2_defects", "--source", str(tmp_path / "frames.npy"), "--beam",
                 str(tmp_path / "beam.json"), "--out", str(out), "--no-dashboard", *extra])  # fmt: skip


def test_hypotest_live_cli_on_a_replayed_file(tmp_path, mos2_waves, capsys):
    """`hypotest live --library LIB --source FILE --beam BEAM.json`: frames replayed from a file
    with the built-in library file, until the file ends; the record says what happened."""
    from hypotest.live.builtin import demo_beams

    st = LIBRARY_SETTINGS["mos2_defects"]
    hyps = load_hypotheses("mos2_defects")
    model = ImageModel([h.specimen for h in hyps], exit_waves=mos2_waves, energy=st.energy)
    beam = demo_beams(st, model.pixel_sampling, 200.0)[2][1]
    lam = model.images(beam)[6] * 200.0 * np.prod(model.pixel_sampling)
    frames = np.random.default_rng(5).poisson(lam, (6, *lam.shape)).astype(np.uint16)
    out = tmp_path / "live"
    assert _live_on_file(tmp_path, frames, beam, out, "--no-auto-apply") == 0
    rec = load_record(out)
    assert len(rec.frames) == 6 and {f["fate"] for f in rec.frames} <= {"scored", "coalesced"}
    assert rec.config["source"]["kind"] == "replay"
    assert rec.ids[int(np.nanargmax(rec.posterior[-1]))] == hyps[6].id
    assert "stopped:" in capsys.readouterr().out
    # a second run into the same directory is refused (the record is never overwritten)
    assert _live_on_file(tmp_path, frames, beam, out) == 2
    assert "already holds a session record" in capsys.readouterr().err


def test_hypotest_live_cli_on_4dstem_frames(tmp_path, capsys):
    """`hypotest live` with a 4D-STEM BEAM.json: frames [n, sx, sy, kx, ky] replayed from a file;
    a scan step that undersamples the probe's band limit is refused before anything starts."""
    from hypotest.live.builtin import demo_beams

    st = LIBRARY_SETTINGS["mos2_defects"]
    hyps = load_hypotheses("mos2_defects")
    model = ImageModel([h.specimen for h in hyps], sampling=st.sampling, binning=1, slice_thickness=st.slice_thickness)
    beam = demo_beams(st, (0.1, 0.1), 200.0, cell=model.cell)[-1][1]
    assert beam["detector"]["mode"] == "4dstem"
    lam = model.frame_layout(beam, model.images(beam)[4]) * 200.0 * model.pixel_area_of(beam)  # Mo_S
    frames = np.random.default_rng(2).poisson(lam, (5, *lam.shape)).astype(np.uint16)
    out = tmp_path / "live4d"
    assert _live_on_file(tmp_path, frames, beam, out, "--no-auto-apply") == 0
    rec = load_record(out)
    assert len(rec.frames) == 5 and {f["fate"] for f in rec.frames} <= {"scored", "coalesced"}
    assert rec.frame(0).shape == lam.shape
    assert rec.ids[int(np.nanargmax(rec.posterior[-1]))] == hyps[4].id
    capsys.readouterr()
    assert _live_on_file(tmp_path, frames, dict(beam, sampling=[0.6, 0.6]), tmp_path / "no") == 2
    err = capsys.readouterr().err
    assert "beam.json: 4D-STEM scan step" in err and ("does not divide the cell" in err or "undersamples" in err)
