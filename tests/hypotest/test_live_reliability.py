"""Wrong results the live session must not produce (issue: a wrong decision at P = 1):
a beam nobody confirmed assumed for the next frames, a non-finite evidence reaching the
posterior, a forged dose trusted."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hypotest.hypothesis import load_hypotheses
from hypotest.live.builtin import LIBRARY_SETTINGS, demo_beams
from hypotest.live.events import RawFrame, StreamEvent
from hypotest.live.model import ImageModel
from hypotest.live.record import load_record
from hypotest.live.runner import LiveSession

V_MO = 1  # the truth: V_Mo, second in the built-in MoS2 library's order (pristine, V_Mo, V_S, V_S2, ...)


class _ListSource:
    """A frame source over a list of ``(counts, beam or None)``: one frame per poll, then the end;
    no control channel (it cannot take beam commands)."""

    name = "list"
    controllable = False

    def __init__(self, frames):
        self.frames, self.k = list(frames), 0

    def poll(self, timeout):
        if self.k >= len(self.frames):
            return [StreamEvent("end", time.time())]
        counts, beam = self.frames[self.k]
        self.k += 1
        return [RawFrame(self.k - 1, time.time(), counts, beam)]

    def apply_beam(self, beam):
        return False

    def close(self):
        pass


@pytest.fixture(scope="module")
def mos2(mos2_waves):
    st = LIBRARY_SETTINGS["mos2_defects"]
    hyps = load_hypotheses("mos2_defects")
    model = ImageModel([h.specimen for h in hyps], exit_waves=mos2_waves, energy=st.energy)
    cands = demo_beams(st, model.pixel_sampling, 40.0)[:6]  # the HRTEM defocus series: warm-up in seconds
    return hyps, model, cands


def _frames(model, beam, truth, n, seed, dose=40.0):
    lam = model.images(beam)[truth] * dose * np.prod(model.pixel_sampling)
    return np.random.default_rng(seed).poisson(lam, (n, *lam.shape)).astype(np.uint16)


def _session(tmp_path, name, hyps, model, cands, source, **kw):
    return LiveSession(tmp_path / name, hypotheses=hyps, model=model, source=source, candidate_beams=cands,
                       beam=cands[2][1], config={"library": "mos2_defects", "model": model.settings,
                                                 "source": {"kind": "test"}}, **kw)  # fmt: skip


def test_auto_apply_with_no_one_listening_never_assumes_the_proposed_beam(tmp_path, mos2):
    """A ZeroMQ stream without a control channel, frames with no beam in their header, auto-apply
    on (the default): the session used to 'apply' its first proposal, which reached no one, and
    score every later frame against that beam's simulation (a V_S truth decided as V_Mo at
    P = 1.0000). Now auto-apply turns off with a warning in the record and on the page, and every
    frame is scored under the beam it was taken with."""
    from hypotest.live.zmqstream import ZmqSource, send_frames

    hyps, model, cands = mos2
    frames = _frames(model, cands[2][1], V_MO, 15, seed=2)
    source = ZmqSource("tcp://127.0.0.1:*", end_on_sender_end=True)
    s = _session(tmp_path, "z", hyps, model, cands, source, stop_on_decision=False)
    assert s.auto_apply
    s.start()
    sender = threading.Thread(target=lambda: send_frames(frames, source.address, beam=None, sampling=model.pixel_sampling,
                                                         rate_hz=20.0))  # fmt: skip
    sender.start()
    sender.join(120)
    assert s.wait(300)
    st = s.status()
    s.stop()
    rec = load_record(tmp_path / "z")
    warnings = [e["message"] for e in rec.events if e["kind"] == "warning"]
    assert warnings and "takes no beam commands" in warnings[0] and "auto-apply is off" in warnings[0]
    assert st["warnings"] == warnings and not st["auto_apply"]
    assert not [e for e in rec.events if e["kind"] == "beam" and e["by"] == "auto"]
    proposed = {p["label"] for e in rec.events if e["kind"] == "proposals" for p in e["proposals"][:1]}
    assert proposed - {cands[2][0]}, proposed  # the design did want another beam: auto-apply would have moved
    assert rec.steps and all(x["beam_label"] == cands[2][0] for x in rec.steps)
    assert all(f["beam_label"] == cands[2][0] for f in rec.frame_lines)
    best = rec.steps[-1]["map_state"]
    assert best == hyps[V_MO].id, [h.name for h in hyps if h.id == best]
    assert not rec.decision or rec.decision["id"] == hyps[V_MO].id


def test_a_beam_the_source_did_not_take_is_recorded_and_not_assumed(tmp_path, mos2):
    """An automatic beam change the source reports unsent is recorded (applied: false) with a
    warning and the beam in use stays; the operator's own setting is the state of the microscope
    even on a source without control (recorded as not sent, applied)."""
    hyps, model, cands = mos2
    s = _session(tmp_path, "b", hyps, model, cands, _ListSource([]))
    out = s._set_beam(cands[0][1], cands[0][0], by="auto")
    assert out == {"label": cands[0][0], "beam": cands[0][1], "sent_to_source": False, "applied": False}
    assert s.status()["beam_label"] == cands[2][0] and "did not take the beam" in s.status()["warnings"][0]
    out = s.apply_beam(cands[3][1])
    assert out["applied"] and not out["sent_to_source"] and s.status()["beam_label"] == cands[3][0]
    s.stop()
    rec = load_record(tmp_path / "b")
    beams = [(e["by"], e["applied"], e["sent_to_source"]) for e in rec.events if e["kind"] == "beam"]
    assert beams == [("auto", False, False), ("operator", True, False)]


def test_a_forged_dose_is_refused_with_the_reason(tmp_path, mos2):
    """Frames whose header claims 1e9 e-/Å² while their counts match 40: refused (fate
    "rejected", the reason says what the counts imply), never scored at the claimed dose (which
    made a hypothesis jump to P = 1 and a change point be recorded); the honest frames decide."""
    hyps, model, cands = mos2
    beam = cands[2][1]
    forged = {**beam, "dose": 1e9}
    frames = _frames(model, beam, V_MO, 24, seed=3)
    seq = [(f, forged if k % 3 == 1 else beam) for k, f in enumerate(frames)]
    s = _session(tmp_path, "d", hyps, model, cands, _ListSource(seq), stop_on_decision=False)
    st = s.run_sync()
    rec = load_record(tmp_path / "d")
    refused = [f for f in rec.frames if f["fate"] == "rejected"]
    assert [f["source_id"] for f in refused] == [k for k in range(24) if k % 3 == 1]
    assert all("not taken at that dose" in f["reason"] and "1e+09 e-/Å²" in f["reason"] for f in refused)
    assert st["frames"]["rejected"] == 8 and st["dose_used_e_per_A2"] == pytest.approx(16 * 40.0)
    assert not any(x["change_point"] for x in rec.steps)
    assert rec.steps[-1]["map_state"] == hyps[V_MO].id
    assert all(0.5 < x["dose_ratio"] < 2.0 for x in rec.steps)


def test_a_non_finite_evidence_refuses_the_frames_and_the_session_goes_on(tmp_path, mos2):
    """The one scorer raises NonFiniteEvidence (here injected for the second step, as a corrupt
    frame would): the step's frames are refused with the hypothesis named, the posterior is not
    touched, and the next frames are scored."""
    from inference import NonFiniteEvidence

    hyps, model, cands = mos2
    beam = cands[2][1]
    frames = _frames(model, beam, V_MO, 4, seed=4)
    s = _session(tmp_path, "n", hyps, model, cands, _ListSource([(f, beam) for f in frames]), stop_on_decision=False)
    real = s.images.scorer(s.live_config.scorer)
    calls = []

    class _Scorer:
        def __getattr__(self, name):
            return getattr(real, name)

        def score(self, counts, images, exposure, shift=None):
            calls.append(1)
            if len(calls) == 2:
                raise NonFiniteEvidence("laplace", [3], [float("nan")], float(np.max(counts)))
            return real.score(counts, images, exposure, shift)

    s.images.scorer = lambda config: _Scorer()
    st = s.run_sync(warm_up=False)
    rec = load_record(tmp_path / "n")
    assert st["state"] != "failed" and len(rec.steps) == 3
    (bad,) = [f for f in rec.frames if f["fate"] == "rejected"]
    assert bad["source_id"] == 1 and f"non-finite log evidence (nan) for hypothesis {hyps[3].name!r}" in bad["reason"]
    assert bad["reason"].startswith("frame 1: the laplace scorer")
    assert all(np.isfinite([v for v in x["log_evidence"] if v is not None]).all() for x in rec.steps)


def test_the_live_laplace_scorer_starts_at_zero_drift_the_others_score_at_the_registered_one():
    """The live Laplace scorer marginalises the shift from the prior mean, as before the one
    scoring core (started at the registered drift of sparse 4D-STEM frames it settled on a lower
    mode for the truth); linear and fast take the registered drift as the known shift."""
    from hypotest.live.step import scorer_shift

    assert scorer_shift("laplace", (1.4, -0.6)) == (0.0, 0.0)
    assert scorer_shift("fast", (1.4, -0.6)) == scorer_shift("linear", (1.4, -0.6)) == (1.4, -0.6)
