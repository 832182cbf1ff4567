"""The demo's closing report: frames and dose AT the decision, frames received afterwards (while
the dashboard lingers) counted apart. `hypotest demo --linger 200` printed "after 300 frames,
1040 e-/Å²" for a decision taken after 26 frames."""

import types

import numpy as np

import hypotest.demo as demo


def _status(decision, received, dose_used, step, coalesced=0):
    return {"decision": decision, "frames": {"received": received, "scored": step, "coalesced": coalesced, "rejected": 0},
            "step": step, "dose_used_e_per_A2": dose_used, "latency_s": {}}  # fmt: skip


DECISION = {"id": "h1", "name": "O_S", "posterior": 0.991, "step": 25, "dose_used_e_per_A2": 1040.0, "frames": 26}
TRUTH = {"id": "h1", "name": "O_S"}


def test_linger_frames_are_reported_apart_from_the_decision():
    summary, line = demo.summarize(_status(DECISION, 300, 12000.0, 300), TRUTH, {})
    assert line.startswith("identified: O_S (P = 0.991) after 26 frames (0 coalesced), 1040 e-/Å²; truth: O_S -> correct")
    assert "; 274 more frames received after the decision (not part of it; 10960 e-/Å² more scored)" in line
    assert summary["frames_at_decision"] == 26 and summary["dose_at_decision_e_per_A2"] == 1040.0
    assert summary["frames_after_decision"] == 274 and summary["frames_received"] == 300
    assert summary["dose_used_e_per_A2"] == 12000.0  # the total scored, as the record's steps add up


def test_coalesced_frames_at_the_decision_and_no_linger():
    dec = {**DECISION, "step": 19, "frames": 26}  # 20 steps for 26 frames: 6 coalesced
    _, line = demo.summarize(_status(dec, 26, 1040.0, 20, coalesced=6), TRUTH, {})
    assert "after 26 frames (6 coalesced), 1040 e-/Å²; truth: O_S -> correct" in line and "after the decision" not in line


def test_undecided():
    _, line = demo.summarize(_status(None, 80, 3200.0, 80), TRUTH, {})
    assert line == "undecided after 80 steps: - (P = None) after 80 frames (0 coalesced), 3200 e-/Å²; truth: O_S -> NOT correct"


def test_run_demo_prints_the_decision_not_the_lingering(tmp_path, monkeypatch):
    """run_demo end to end with the session replaced by its final state after a linger."""

    class FakeSession:
        model = types.SimpleNamespace(frame_shape=(64, 64))

        def start(self):
            (tmp_path / "truth.jsonl").write_text('{"id": "h1", "name": "O_S"}\n')

        def wait(self):
            pass

        def stop(self):
            pass

        def status(self):
            return _status(DECISION, 300, 12000.0, 300)

        def hypotheses(self):
            return [{"name": "V_S", "rejected": True, "reason": "Bayes factor 10^-4"}]

    hyps = [types.SimpleNamespace(id="h1", name="O_S", specimen=types.SimpleNamespace(cell=np.ones(3), n_atoms=3))]
    monkeypatch.setattr(demo, "load_hypotheses", lambda lib: hyps)
    monkeypatch.setattr(demo, "presimulate_exit_waves",
                        lambda h: ([None], {"workers": 2, "ray_address": "127.0.0.1:1", "seconds": 0.0}))  # fmt: skip
    monkeypatch.setattr(demo, "make_demo_session", lambda *a, **k: FakeSession())
    lines = []
    record = demo.run_demo(tmp_path, log=lines.append, dashboard=False)
    last = lines[-1]
    assert last.startswith("[4/4] identified: O_S (P = 0.991) after 26 frames (0 coalesced), 1040 e-/Å²"), last
    assert "274 more frames received after the decision" in last
    assert record["summary"]["frames_at_decision"] == 26
