"""The live session when the truth is not in the library: the fit check of every step (and of the
segment) in the record and the status, no decision on unexplained frames, and new hypotheses made
from the host while the session runs, added with their past evidence, deciding for the truth."""

from __future__ import annotations

from hypotest.live.builtin import make_demo_session, outside_truth
from hypotest.live.record import load_record
from hypotest.live.resume import replay_record
from hypotest.hypothesis import load_hypotheses


def test_every_step_carries_its_fit_check_and_the_truth_passes_it(tmp_path, mos2_waves):
    s = make_demo_session(tmp_path / "in", seed=3, dose=200.0, exit_waves=mos2_waves, max_frames=12, stop_on_decision=False)
    st = s.run_sync()
    rec = load_record(tmp_path / "in")
    checks = [e["fit_check"] for e in rec.steps]
    assert checks and all({"z", "p_value", "rate", "unexplained", "segment"} <= set(c) for c in checks)
    assert sum(c["unexplained"] for c in checks) <= 1 and not checks[-1]["segment"]["unexplained"]
    assert st["fit_check"]["steps"] == len(rec.steps) and st["decision"] is not None
    rep = replay_record(tmp_path / "in")
    assert rep.ok and rep.decision_reproduced


def test_unexplained_frames_hold_the_decision(tmp_path, mos2_waves):
    """Se on an S site, not in the library, at 3e5 e-/Å² per frame: the fit check fails, so the
    least wrong hypothesis (however probable) is never decided for."""
    s = make_demo_session(tmp_path / "out", seed=0, dose=3e5, exit_waves=mos2_waves, max_frames=6, truth_outside="Se@S",
                          frame_rate_hz=None)  # fmt: skip
    st = s.run_sync()
    rec = load_record(tmp_path / "out")
    assert rec.truth["states"] == [outside_truth(load_hypotheses("mos2_defects"), "Se@S").name]
    assert all(e["fit_check"]["unexplained"] or e["fit_check"]["segment"]["unexplained"] for e in rec.steps)
    assert max(max(p for p in e["posterior"] if p is not None) for e in rec.steps) > 0.99  # a confident wrong best...
    assert st["decision"] is None and st["fit_check"]["unexplained"]  # ...never reported as a decision
    assert st["fit_check"]["unexplained_steps"] == len(rec.steps)


def test_generated_hypotheses_decide_for_the_truth_and_replay(tmp_path, mos2_waves):
    """The same truth at 2000 e-/Å² per frame, where one frame's fit check cannot see it: before
    the decision for the least wrong library member stands, hypotheses are generated from the host
    (Se and Cr substitutions, vacancies); the right one is added with its past evidence and wins."""
    s = make_demo_session(tmp_path / "gen", seed=0, dose=2000.0, exit_waves=mos2_waves, max_frames=10, truth_outside="Se@S",
                          frame_rate_hz=None, generate={"elements": "Se,Cr"})  # fmt: skip
    st = s.run_sync()
    truth = s.source.reveal()[-1]
    assert st["decision"] is not None and st["decision"]["id"] == truth["id"]
    rec = load_record(tmp_path / "gen")
    added = [e for e in rec.events if e["kind"] == "hypothesis_added"]
    assert any(e["id"] == truth["id"] for e in added)
    assert all(e["family"] == "generated" and "from host" in e["provenance"] for e in added)
    dec = [e for e in rec.events if e["kind"] == "decision"]
    assert len(dec) == 1 and dec[0]["id"] == truth["id"]  # the held decision for the library member was never written
    h = s.hypothesis(truth["id"])
    notes = dict((k, v) for k, v in h["provenance"]["notes"])
    assert "from host 'MoS2 monolayer'" in notes["generated"] and h["family"] == "generated"
    rep = replay_record(tmp_path / "gen")
    assert rep.ok and rep.decision_reproduced


def test_optics_learned_live_from_a_defocus_error_and_replayed(tmp_path, mos2_waves):
    """The microscope images 15 Å off the defocus it is told: the session learns the offset from
    the frames (an ``optics`` record line), scores under it from then on, decides for the truth,
    and a replay reproduces every step."""
    s = make_demo_session(tmp_path / "opt", seed=3, dose=400.0, exit_waves=mos2_waves, max_frames=40, defocus_error=15.0,
                          frame_rate_hz=None, learn_optics={"every": 2})  # fmt: skip
    st = s.run_sync()
    truth = s.source.reveal()[-1]
    rec = load_record(tmp_path / "opt")
    opt = [e for e in rec.events if e["kind"] == "optics"]
    assert opt, "no optics learned"
    cal, sd = opt[0]["calibration"][0], opt[0]["sd"][0]
    assert abs(cal - 15.0) < max(3 * sd, 1.0), (cal, sd)
    assert st["optics"] is not None and "set defocus to" in st["optics"]["correction"]
    assert st["decision"] is not None and st["decision"]["id"] == truth["id"]
    rep = replay_record(tmp_path / "opt")
    assert rep.ok and rep.decision_reproduced and rep.max_abs_posterior_diff <= 1e-6


def test_bad_live_options_are_precise_errors(tmp_path, mos2_waves):
    import pytest

    from forward import InputError

    with pytest.raises(InputError, match=r"unknown element 'Xx'"):
        make_demo_session(tmp_path / "a", exit_waves=mos2_waves, truth_outside="Xx@S")
    with pytest.raises(InputError, match="only structures already in the library"):
        make_demo_session(tmp_path / "b", exit_waves=mos2_waves, truth_outside="Mo@S")
    with pytest.raises(InputError, match=r"unknown element 'Qq'"):
        make_demo_session(tmp_path / "c", exit_waves=mos2_waves, generate={"elements": "Se,Qq"})
    with pytest.raises(InputError, match="unknown generator kind"):
        make_demo_session(tmp_path / "d", exit_waves=mos2_waves, generate={"elements": "Se", "kinds": ["mutation"]})
    with pytest.raises(InputError, match="every must be >= 1 step"):
        make_demo_session(tmp_path / "e", exit_waves=mos2_waves, learn_optics={"every": 0})
    with pytest.raises(InputError, match="range of zero width"):
        make_demo_session(tmp_path / "f", exit_waves=mos2_waves, learn_optics={"defocus_range": 0.0})
