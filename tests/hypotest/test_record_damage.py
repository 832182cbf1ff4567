"""A session record with damaged lines (valid JSON that is not a record line, lines lacking the
fields of their kind, a line cut by a crash): each is ignored and reported, never a crash of
``load_record`` or ``hypotest session show``; the rest of the record reads as before."""

import json

import numpy as np
import pytest

from hypotest.cli import main
from hypotest.live.record import SessionWriter, load_record

IDS = ["ha", "hb"]
BEAM = {"energy": 80e3, "dose": 50.0, "sampling": 0.2, "detector": {"mode": "hrtem"}}
JUNK = [
    ("[1,2,3]", "not a JSON object (a JSON array)"),
    ('"just a string"', "not a JSON object (a JSON string)"),
    ("42", "not a JSON object (a JSON number)"),
    ("null", "not a JSON object (a JSON null)"),
    ('{"no_kind": 1}', "no 'kind'"),
    ('{"kind": 5}', "'kind' is not a string (5)"),
    ('{"kind": "frame", "index": 7}', "a 'frame' line without 'source_id'"),
    ('{"kind": "frame", "index": "x", "source_id": 1}', "a 'frame' line whose 'index' is 'x'"),
    ('{"kind": "step", "step": 5, "frames": [0], "ids": ["ha", "hb"], "posterior": [1.0]}',
     "a 'step' line with 2 ids and 1 posterior values"),
    ('{"kind": "step", "step": 5, "frames": [0], "ids": ["nope"], "posterior": [1.0]}',
     "a 'step' line naming unknown hypotheses ['nope']"),
    ('{"kind": "step", "step": 5, "frames": [0], "ids": ["ha"], "posterior": ["x"]}', "a 'step' line whose 'posterior' is ['x']"),
    ('{"kind": "fate", "index": [0], "fate": "rejected"}', "a 'fate' line whose 'index' is [0]"),
    ('{"kind": "decision", "name": "A"}', "a 'decision' line without 'id'"),
    ('{"kind": "hypothesis_added", "id": 3, "name": "x"}', "a 'hypothesis_added' line whose 'id' is 3"),
    ('{"kind": "beam", "label": "x"}', "a 'beam' line without 'beam'"),
    ('{"kind": "step", "step": 5, "fra', "not valid JSON (cut by a crash?)"),
]  # fmt: skip


def _record(d, junk_lines=()):
    """Two frames, two steps, a decision; ``junk_lines`` go between the good lines."""
    w = SessionWriter(d, {"hypotheses": [{"id": h, "name": h.upper(), "family": "f", "prior": 0.5} for h in IDS],
                          "library": "test", "source": {"kind": "file"}})  # fmt: skip
    for k in range(2):
        w.append_frame(np.full((4, 4), k, np.uint16), index=k, source_id=k, beam=BEAM, beam_label="b",
                       t_source=0.0, t_received=0.0)  # fmt: skip
    w.close()
    good = [
        {"kind": "step", "step": 0, "frames": [0], "ids": IDS, "posterior": [0.6, 0.4], "log_evidence": [-1.0, -1.4],
         "beam": BEAM, "beam_label": "b", "dose_e_per_A2": 50.0, "coalesced": 0, "rejected": {}, "map_state": "ha",
         "latency_s": {"total": 0.1}},
        {"kind": "step", "step": 1, "frames": [1], "ids": IDS, "posterior": [0.995, 0.005], "log_evidence": [-1.0, -5.0],
         "beam": BEAM, "beam_label": "b", "dose_e_per_A2": 50.0, "coalesced": 0, "rejected": {"hb": "Bayes factor"},
         "map_state": "ha", "latency_s": {"total": 0.1}},
        {"kind": "decision", "id": "ha", "name": "HA", "posterior": 0.995, "step": 1, "frames": 2,
         "dose_used_e_per_A2": 100.0},
    ]  # fmt: skip
    with open(d / "record.jsonl", "a") as f:
        for i, g in enumerate(good):
            f.write(json.dumps(g) + "\n")
            for line in junk_lines[i::len(good)]:
                f.write(line + "\n")


@pytest.mark.parametrize(("line", "reason"), JUNK)
def test_each_damaged_line_is_reported_and_ignored(tmp_path, line, reason):
    _record(tmp_path / "ok")
    _record(tmp_path / "bad", [line])
    ok, bad = load_record(tmp_path / "ok"), load_record(tmp_path / "bad")
    assert [(x["reason"]) for x in bad.damaged] == [reason]
    assert bad.damaged[0]["line"] == 4  # after the two frame lines and the first step
    assert len(bad.steps) == len(ok.steps) == 2 and bad.frames == ok.frames and bad.decision == ok.decision
    np.testing.assert_array_equal(bad.posterior, ok.posterior)
    np.testing.assert_array_equal(bad.frame(1), ok.frame(1))


def test_session_show_reports_damaged_lines_and_goes_on(tmp_path, capsys):
    _record(tmp_path, [line for line, _ in JUNK])
    assert main(["session", "show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: record line 4 is damaged and is ignored: not a JSON object (a JSON array)" in out
    assert out.count("note: record line") == len(JUNK)
    assert "is cut by a crash and is ignored" in out
    assert "posterior at the last step" in out and "decision: HA (P = 0.9950) at step 1" in out


def test_damaged_truth_and_session_json(tmp_path, capsys):
    _record(tmp_path)
    (tmp_path / "truth.jsonl").write_text('{"source_id": 0, "id": "ha", "name": "HA"}\n[1]\n{"name": \n{"id": "x"}\n')
    assert load_record(tmp_path).truth == {"frames": [{"source_id": 0, "id": "ha", "name": "HA"}], "states": ["HA"]}
    for text in ("[1, 2, 3]", '{"schema": "hypotest.session/1", "hypotheses": [1]}', '{"schema": "hypotest.session/1"}'):
        (tmp_path / "session.json").write_text(text)
        assert main(["session", "show", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hypotest session: error: ") and "session.json" in err, err


@pytest.mark.slow
def test_show_replay_and_resume_a_real_record_with_a_junk_line(tmp_path, capsys):
    """`[1,2,3]` (valid JSON, not a record line) in a real session's record.jsonl crashed
    `hypotest session show`; show, replay and resume now read past it."""
    from hypotest.live.builtin import make_demo_session
    from hypotest.live.resume import resume_session
    from tests.hypotest.conftest import builtin_exit_waves

    d = tmp_path / "s"
    s = make_demo_session(d, seed=3, dose=200.0, exit_waves=builtin_exit_waves("mos2_defects"), max_frames=3,
                          stop_on_decision=False, auto_apply=False)  # fmt: skip
    s.run_sync()
    with open(d / "record.jsonl", "a") as f:
        f.write('[1,2,3]\n{"kind": "step", "step": 7}\n')
    assert main(["session", "show", str(d)]) == 0
    out = capsys.readouterr().out
    assert "is damaged and is ignored: not a JSON object (a JSON array)" in out and "steps 3" in out
    assert main(["session", "replay", str(d)]) == 0
    assert "max |posterior difference| 0.00e+00" in capsys.readouterr().out
    s2 = resume_session(d, stop_on_decision=False)
    s2.source.max_frames = 1
    s2.run_sync()
    rec = load_record(d)
    assert len(rec.steps) == 4 and rec.steps[-1]["step"] == 3 and len(rec.damaged) == 2
