"""Resuming a session loses nothing and duplicates nothing (issue 18, items 8-12): a resumed file
replay passes over the frames recorded and keeps its rate; a directory is locked for the life of
its session; every setting is restored; frame lines name their ZeroMQ sender and a resumed
receiver continues each sender's count; a refused start leaves no record; SIGTERM stops a
session as Ctrl-C does.

The sessions here use the built-in MoS2 library file at 0.1 Å simulation sampling (32 x 36 px
camera, HRTEM only), which keeps every model cheap; the new names are imported inside the tests
so that each test fails on its own defect on code that lacks them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from forward import InputError
from hypotest.cli import main
from hypotest.live.model import ImageModel
from hypotest.live.record import load_record

TRUE = 2  # the hidden structure: index in the built-in MoS2 library
DOSE = 400.0  # [e-/Å²] per frame
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """60 Poisson frames of MoS2 structure TRUE at 400 e-/Å², the beam they were taken with, and
    the model of the session (the same settings `hypotest live --beam beam.json` derives)."""
    from hypotest.live.builtin import load_hypotheses
    from library.builtin import library_path

    d = tmp_path_factory.mktemp("resume")
    lib = str(library_path("mos2_defects"))
    hyps = load_hypotheses(lib)
    model = ImageModel([h.specimen for h in hyps], sampling=0.1, binning=3, slice_thickness=1.5)
    beam = {
        "energy": 80e3, "dose": DOSE, "sampling": [float(v) for v in model.pixel_sampling], "semiangle_cutoff": 25,
        "aberrations": {"C30": -1.5e5, "defocus": 97.0}, "focal_spread": 20, "angular_spread": 0.1,
        "detector": {"mode": "hrtem"}, "simulation": {"sampling": 0.1, "slice_thickness": 1.5},
    }  # fmt: skip
    lam = model.images(beam)[TRUE] * DOSE * model.pixel_area_of(beam)
    frames = np.random.default_rng(11).poisson(lam, (60, *lam.shape)).astype(np.uint16)
    np.save(d / "frames.npy", frames)
    (d / "beam.json").write_text(json.dumps(beam))
    return types.SimpleNamespace(dir=d, lib=lib, hyps=hyps, model=model, beam=beam, frames=frames)


def _session(case, out, source, source_config=None, **kw):
    """A live session on ``source`` with the case's library and model; one candidate beam (so
    there are no proposals to compute)."""
    from hypotest.live.runner import LiveSession

    cfg = {**(source_config or {}), **getattr(source, "settings", {})} or {"kind": "test"}
    return LiveSession(out, hypotheses=case.hyps, model=case.model, source=source, candidate_beams=[("given", case.beam)],
                       beam=case.beam, config={"library": case.lib, "model": case.model.settings, "source": cfg},
                       **kw)  # fmt: skip


def _file(case, n=None):
    """The case's first ``n`` frames in a file of their own (all 60: frames.npy)."""
    path = case.dir / "frames.npy" if n is None else case.dir / f"frames{n}.npy"
    if not path.exists():
        np.save(path, case.frames[:n])
    return path


def _replay(case, n=None, **kw):
    from hypotest.live.replay import FileReplaySource

    return FileReplaySource(_file(case, n), beam=case.beam, sampling=case.beam["sampling"], **kw)


def _lines(d, kind=None) -> list[dict]:
    out = []
    for ln in (d / "record.jsonl").read_text().splitlines():
        try:
            e = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if kind is None or e.get("kind") == kind:
            out.append(e)
    return out


def _wait_for(pred, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _n_frames(d) -> int:
    p = d / "record.jsonl"
    return p.read_text().count('"kind": "frame"') if p.exists() else 0


def _assert_nothing_lost_or_duplicated(rec, n_frames: int):
    sids = [fl["source_id"] for fl in rec.frame_lines]
    assert sorted(sids) == list(range(n_frames)), f"source ids {sids}"
    assert [f["index"] for f in rec.frames] == list(range(len(rec.frames)))
    in_steps = [j for s in rec.steps for j in s["frames"]]
    assert len(in_steps) == len(set(in_steps))
    assert [s["step"] for s in rec.steps] == list(range(len(rec.steps)))
    assert all(f["fate"] is not None for f in rec.frames)


# ---------------------------------------------------------------------------------------------
# item 8: a resumed file replay passes over what is recorded and keeps its settings


def test_replay_source_skips_recorded_ids_without_a_pacing_delay(case):
    """Ids already recorded are passed over at once: pacing counts the frames delivered, so the
    first frame after them is due at the first poll (not 6 frame periods later)."""
    src = _replay(case, 10, rate_hz=0.5, skip_ids=range(6))  # one frame per 2 s
    first = src.poll(0.0)
    assert [getattr(e, "source_id", None) for e in first] == [None, 6]  # connected, then frame 6 at once
    assert np.array_equal(first[1].counts, case.frames[6])
    assert src.poll(0.0) == []  # frame 7: due 2 s after frame 6
    src.close()
    assert _replay(case, 10, rate_hz=0.5).settings["rate_hz"] == 0.5
    ids = []
    src = _replay(case, 10, skip_ids=[0, 3, 9])
    for _ in range(20):
        ids += [e.source_id for e in src.poll(0.0) if hasattr(e, "counts")]
    assert ids == [1, 2, 4, 5, 6, 7, 8]
    with pytest.raises(InputError, match="skip_ids must be source ids"):
        _replay(case, 10, skip_ids=["a"])


def _five_steps_of_twelve(case, d):
    """A file replay of 12 frames at 5 Hz stopped after 5 steps (frames received, not scored, are
    "unscored")."""
    s = _session(case, d, _replay(case, 12, rate_hz=5.0), stop_on_decision=False, auto_apply=False)
    s.run_sync(max_steps=5)  # the warm-up compiles the scorer before the replay's clock starts
    rec = load_record(d)
    assert len(rec.steps) == 5 and 5 <= len(rec.frame_lines) < 12
    return rec


def test_resume_with_the_file_again_replays_each_frame_once(case, tmp_path, capsys):
    """A file replay stopped after 5 steps of 12 frames, resumed by `hypotest session resume DIR
    --source FILE`: 12 frames in all (not 12 + those recorded), each source id once, the dose of
    12 frames, the rate restored; a further resume finds nothing left (the files are reopened
    from session.json); replay reproduces every posterior."""
    from hypotest.live.resume import replay_record

    d = tmp_path / "r"
    _five_steps_of_twelve(case, d)
    assert main(["session", "resume", str(d), "--source", str(_file(case, 12))]) == 0
    rec = load_record(d)
    _assert_nothing_lost_or_duplicated(rec, 12)
    assert sum(st["dose_e_per_A2"] for st in rec.steps) == pytest.approx(12 * DOSE)
    assert [e for e in rec.events if e["kind"] == "resumed"][-1]["source"]["rate_hz"] == 5.0
    assert main(["session", "resume", str(d)]) == 0
    assert len(load_record(d).frame_lines) == 12
    rep = replay_record(d)
    assert rep.steps == len(rec.steps) and rep.ok and rep.max_abs_posterior_diff == 0.0
    capsys.readouterr()


def test_resume_reopens_the_recorded_files_at_the_recorded_rate(case, tmp_path, capsys):
    """`hypotest session resume DIR` without --source reopens the replayed files from
    session.json and continues after the recorded frames at the recorded rate; `--max-steps` is an
    override stated in the record, and kept by the next resume until given again."""
    d = tmp_path / "r"
    _five_steps_of_twelve(case, d)
    assert main(["session", "resume", str(d), "--max-steps", "8"]) == 0
    rec = load_record(d)
    assert len(rec.steps) == 8 and [fl["source_id"] for fl in rec.frame_lines] == list(range(len(rec.frame_lines)))
    resumed = [e for e in rec.events if e["kind"] == "resumed"]
    assert resumed[-1]["source"]["rate_hz"] == 5.0 and resumed[-1]["overrides"] == {"max_steps": 8}
    assert main(["session", "resume", str(d)]) == 0  # the last word stands: 8 steps in all
    assert len(load_record(d).steps) == 8
    assert "at most 8 steps" in capsys.readouterr().out
    assert main(["session", "resume", str(d), "--max-steps", "100"]) == 0
    _assert_nothing_lost_or_duplicated(load_record(d), 12)
    capsys.readouterr()


def test_resume_with_another_file_keeps_ids_unique(case, tmp_path, capsys):
    """A resume on another file continues the ids after the recorded ones (ids stay unique)."""
    d = tmp_path / "o"
    s = _session(case, d, _replay(case, 3), stop_on_decision=False, auto_apply=False)
    s.run_sync(warm_up=False)
    assert main(["session", "resume", str(d), "--source", str(_file(case, 4))]) == 0
    rec = load_record(d)
    assert [fl["source_id"] for fl in rec.frame_lines] == list(range(7))
    assert [e for e in rec.events if e["kind"] == "resumed"][-1]["source"]["beam"] == case.beam
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# item 9: one session per directory


def test_a_session_directory_is_locked_while_its_session_runs(case, tmp_path, capsys):
    """While a session runs, `session resume DIR` (and a second session on DIR) is refused with
    "DIR in use by PID n"; `session show` and `session replay` still read it; once it stopped
    the resume goes on, and the record holds one stopped line per run, no index twice."""
    from hypotest.live.resume import resume_session

    d = tmp_path / "l"
    s = _session(case, d, _replay(case, rate_hz=4.0), stop_on_decision=False, auto_apply=False)
    s.start(warm_up=False)
    try:
        _wait_for(lambda: len(_lines(d, "step")) >= 2, 120, "two steps")
        with pytest.raises(InputError, match=rf"{d} in use by PID {os.getpid()}"):
            resume_session(d, source=_replay(case))
        assert main(["session", "resume", str(d)]) == 2
        assert f"in use by PID {os.getpid()}" in capsys.readouterr().err
        with pytest.raises(InputError, match="in use by PID|already holds a session record"):
            _session(case, d, _replay(case, 3)).run_sync()
        assert main(["session", "show", str(d)]) == 0
        assert main(["session", "replay", str(d)]) == 0
        assert (d / "session.lock").read_text().strip() == str(os.getpid())
    finally:
        s.stop()
    assert (d / "session.lock").read_text() == ""  # released, the PID gone
    s2 = resume_session(d)
    s2.max_steps = len(load_record(d).steps) + 2
    s2.run_sync(warm_up=False)
    rec = load_record(d)
    assert len([e for e in rec.events if e["kind"] == "stopped"]) == 2
    idx = [fl["index"] for fl in rec.frame_lines]
    assert len(idx) == len(set(idx)) and [st["step"] for st in rec.steps] == list(range(len(rec.steps)))
    capsys.readouterr()


def test_session_lock_names_the_holder_and_dies_with_it(tmp_path):
    """The lock (flock on DIR/session.lock) holds the owner's PID and is released when the owner
    is killed (kill -9): nothing stale is left to clean up."""
    from hypotest.live.record import SessionLock

    d = tmp_path / "k"
    d.mkdir()
    code = "import sys, time; from hypotest.live.record import SessionLock; SessionLock(sys.argv[1]); print('locked', flush=True); time.sleep(300)"
    p = subprocess.Popen([sys.executable, "-c", code, str(d)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=rf"{d} in use by PID {p.pid}"):
            SessionLock(d)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
    with SessionLock(d) as lock:
        assert lock.held and (d / "session.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(InputError, match=f"in use by PID {os.getpid()}"):
            SessionLock(d)  # another open file in the same process is refused too
    assert not lock.held


# ---------------------------------------------------------------------------------------------
# item 10: every setting persisted and restored


def test_every_setting_is_restored_on_resume_and_the_operator_has_the_last_word(case, tmp_path):
    """A session started with auto-apply off (and other settings) resumes with them; an
    auto-apply toggle of the operator outlives a restart; a resume's overrides are stated in the
    record and kept by the next resume."""
    from hypotest.live.resume import resume_session

    d = tmp_path / "s"
    s = _session(case, d, _replay(case, 3), auto_apply=False, stop_on_decision=False, max_steps=40,
                 expected_run_length=77.0, design="eig", scorer="linear", seed=5, fsync=True, target=0.995)  # fmt: skip
    s.run_sync(warm_up=False)
    s2 = resume_session(d, source=_replay(case, 3))
    assert (s2.auto_apply, s2.stop_on_decision, s2.max_steps) == (False, False, 40)  # (not: True, True, None)
    assert s2.fsync is True
    assert (s2.design, s2.scorer_kind, s2._seed, s2.target, s2.live.config.target) == ("eig", "linear", 5, 0.995, 0.995)
    assert s2.live.step == s.live.step == 3
    s2.set_auto_apply(True)  # the operator turns it on
    s2.stop()
    cfg = load_record(d).config
    assert {k: cfg[k] for k in ("auto_apply", "stop_on_decision", "max_steps", "fsync", "design", "scorer", "seed")} == {
        "auto_apply": False, "stop_on_decision": False, "max_steps": 40, "fsync": True, "design": "eig",
        "scorer": "linear", "seed": 5}  # fmt: skip
    assert cfg["source"]["kind"] == "replay" and cfg["source"]["beam"] == case.beam
    s3 = resume_session(d)
    assert s3.auto_apply is True
    s3.stop()
    s4 = resume_session(d, auto_apply=False, stop_on_decision=True)
    assert (s4.auto_apply, s4.stop_on_decision) == (False, True)
    s4.stop()
    resumed = [e for e in load_record(d).events if e["kind"] == "resumed"]
    assert resumed[-1]["overrides"] == {"auto_apply": False, "stop_on_decision": True}
    assert resumed[-1]["settings"]["auto_apply"] is False and resumed[-1]["settings"]["max_steps"] == 40
    s5 = resume_session(d)  # the last word (the override) stands
    assert (s5.auto_apply, s5.stop_on_decision) == (False, True)
    s5.stop()
    # a damaged setting is named, and the refused resume leaves the directory unlocked
    from hypotest.live.record import SessionLock

    cfg_path = d / "session.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "max_steps": "x"}))
    with pytest.raises(InputError, match=r"session.json: 'max_steps' is 'x', expected an integer >= 0 or null"):
        resume_session(d)
    SessionLock(d).release()


def test_hypotest_session_resume_takes_overrides(case, tmp_path, capsys):
    """`hypotest live --no-auto-apply` then `hypotest session resume`: still off; with
    `--auto-apply` on (stated in the record)."""
    out = tmp_path / "cli"
    rc = main(["live", "--library", case.lib, "--source", str(_file(case, 3)), "--beam", str(case.dir / "beam.json"),
               "--out", str(out), "--no-dashboard", "--no-auto-apply", "--rate", "20"])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    assert main(["session", "resume", str(out), "--source", str(_file(case, 3))]) == 0
    assert "auto-apply off" in capsys.readouterr().out
    cfg = load_record(out).config
    assert cfg["auto_apply"] is False and cfg["source"]["rate_hz"] == 20.0 and cfg["stop_on_decision"] is False
    assert main(["session", "resume", str(out), "--auto-apply", "--rate", "10"]) == 0
    res = [e for e in load_record(out).events if e["kind"] == "resumed"][-1]
    assert res["overrides"] == {"auto_apply": True} and res["source"]["rate_hz"] == 10.0
    assert res["settings"]["auto_apply"] is True


# ---------------------------------------------------------------------------------------------
# item 11: frame lines name their sender; a resumed receiver continues each sender's count


def test_zmq_source_starts_from_the_recorded_sender_counts():
    """A receiver given the counts recorded before a restart compares a sender's frames_sent
    with everything that arrived from it, and reports each loss once, with sender and count."""
    import zmq

    from hypotest.live.zmqstream import SCHEMA, ZmqSource, encode_frame

    src = ZmqSource("tcp://127.0.0.1:*", received={"cam1": 3}, reported_lost={"cam1": 1}, start_id=4)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(src.address)
    try:
        push.send_multipart(encode_frame(np.zeros((2, 2), np.uint8), 4, sender="cam1"), copy=False)

        def hb(n):
            push.send(json.dumps({"schema": SCHEMA, "kind": "heartbeat", "timestamp": 1e9, "sender": "cam1",
                                  "frames_sent": n}).encode())  # fmt: skip

        hb(5)  # 3 before the restart + 1 now + 1 already reported lost: nothing new
        hb(7)  # 2 more sent, never arrived
        events = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(getattr(e, "lost", None) for e in events):
            events += src.poll(0.1)
        frames = [e for e in events if hasattr(e, "counts")]
        assert [f.source_id for f in frames] == [4] and frames[0].meta["sender"] == "cam1"
        lost = [e for e in events if getattr(e, "lost", None)]
        assert len(lost) == 1 and lost[0].sender == "cam1" and lost[0].lost == 2
        assert "2 frame message(s) sent but never received (the sender counts 7 sent, 4 arrived)" in lost[0].reason
    finally:
        push.close(linger=0)
        ctx.term()
        src.close()
    with pytest.raises(InputError, match="received must be a dict"):
        ZmqSource("tcp://127.0.0.1:*", received={"cam1": -1})


def _zmq_session(case, d, **kw):
    from hypotest.live.zmqstream import ZmqSource

    src = ZmqSource("tcp://127.0.0.1:*", end_on_sender_end=True)
    return _session(case, d, src, source_config={"kind": "zmq", "address": src.address}, stop_on_decision=False,
                    auto_apply=False, **kw)  # fmt: skip


def test_a_sender_continues_across_a_resume_and_its_losses_are_counted_exactly(case, tmp_path):
    """A sender streams 60 frames; the receiving session stops after some, the sender waits and
    goes on into the resumed session. Frame lines name the sender and its frame ids; the resumed
    receiver starts from the recorded count, so what it reports lost is exactly the frame ids
    that never reached the record (those dropped with the closed socket's queue)."""
    from hypotest.live.resume import resume_session
    from hypotest.live.zmqstream import send_frames

    d = tmp_path / "z"
    s = _zmq_session(case, d)
    address = s.source.address
    s.start()  # the warm-up compiles the scorer first: the ingest keeps up from the first frame
    reports = []
    sender = threading.Thread(target=lambda: reports.append(send_frames(
        case.frames, address, rate_hz=20.0, beam=case.beam, sampling=case.beam["sampling"], send_timeout=240)))
    sender.start()
    try:
        _wait_for(lambda: _n_frames(d) >= 8, 120, "8 frames")
    finally:
        s.stop()
    s2 = resume_session(d)
    s2.start(warm_up=False)
    sender.join(240)
    assert reports and reports[0].sent == 60
    sid = reports[0].sender
    _wait_for(lambda: any(f"sender {sid} ended" in e.get("detail", "") for e in _lines(d, "stream")), 120, "the end")
    ended = s2.wait(60)
    s2.stop()
    rec = load_record(d)
    assert all(fl.get("sender") == sid for fl in rec.frame_lines)
    fids = [fl["frame_id"] for fl in rec.frame_lines]
    assert len(fids) == len(set(fids))
    lost = [e for e in rec.events if e["kind"] == "bad_message" and e.get("lost")]
    missing = set(range(60)) - set(fids)
    assert sum(e["lost"] for e in lost) == len(missing), (lost, sorted(missing))
    assert all(e["sender"] == sid for e in lost)
    assert len(rec.frame_lines) + len(missing) == 60
    assert rec.config["source"]["address"] == address and rec.config["source"]["end_on_sender_end"] is True
    assert ended, "the resumed session did not end at the sender's end (end_on_sender_end restored)"
    _assert_nothing_lost_or_duplicated(rec, len(rec.frame_lines))


# ---------------------------------------------------------------------------------------------
# item 12: a refused start leaves nothing; SIGTERM stops like Ctrl-C


def test_a_refused_start_leaves_no_record(case, tmp_path, capsys):
    """`hypotest live --host 0.0.0.0` without a token, or on a busy dashboard port, is refused
    before anything is written (the --out directory is not even made), so the same --out works
    next time; a session built and never started writes nothing."""
    import socket

    out = tmp_path / "refused"
    args = ["live", "--library", case.lib, "--source", str(case.dir / "frames.npy"), "--beam", str(case.dir / "beam.json"),
            "--out", str(out)]  # fmt: skip
    assert main([*args, "--host", "0.0.0.0"]) == 2
    assert "needs" in (err := capsys.readouterr().err) and "token" in err and not out.exists()
    assert main(["live", "--library", "mos2_defects", "--source", "sim", "--host", "0.0.0.0", "--out", str(out)]) == 2
    assert "needs" in (err := capsys.readouterr().err) and "token" in err and not out.exists()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        assert main([*args, "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen on" in capsys.readouterr().err and not out.exists()
    finally:
        busy.close()
    s = _session(case, out, _replay(case, 3))
    s.stop()
    assert not out.exists()
    assert main([*args, "--no-dashboard"]) == 0  # the same --out, now used
    assert len(load_record(out).frame_lines) == 60
    capsys.readouterr()


def test_stop_signals_turn_sigterm_into_one_interrupt():
    """Under StopSignals, SIGTERM interrupts like Ctrl-C (KeyboardInterrupt naming it), once: a
    later signal does not cut the stop short; the previous handlers come back after."""
    from hypotest.commands.live import StopSignals

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as sig:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        os.kill(os.getpid(), signal.SIGINT)  # ignored: the stop goes on
        time.sleep(0.2)
        assert sig.name == "SIGTERM" and sig.reason == "terminated (SIGTERM)"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


class _Unhandled(Exception):
    pass


def test_sigterm_stops_the_demo_as_ctrl_c_does(tmp_path, monkeypatch, capsys):
    """`hypotest demo` on SIGTERM: the session is stopped with the reason (its `stopped` line,
    every queued frame's fate) and the command exits 143 with a note, not killed mid-record. (The
    demo's session is replaced by one whose wait() receives the signal.)"""
    import hypotest.demo as demo

    stops = []

    class FakeSession:
        model = types.SimpleNamespace(frame_shape=(64, 64))

        def start(self):
            pass

        def wait(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        def stop(self, reason=None):
            stops.append(reason)

    hyps = [types.SimpleNamespace(id="h1", name="O_S", specimen=types.SimpleNamespace(cell=np.ones(3), n_atoms=3))]
    monkeypatch.setattr(demo, "load_hypotheses", lambda lib: hyps)
    monkeypatch.setattr(demo, "presimulate_exit_waves",
                        lambda h: ([None], {"workers": 2, "ray_address": "127.0.0.1:1", "seconds": 0.0}))  # fmt: skip
    monkeypatch.setattr(demo, "make_demo_session", lambda *a, **k: FakeSession())

    def unhandled(signum, frame):
        raise _Unhandled("SIGTERM reached the default handling: the command does not stop its session on it")

    old = signal.signal(signal.SIGTERM, unhandled)
    try:
        rc = main(["demo", "--out", str(tmp_path / "demo"), "--no-dashboard"])
    finally:
        signal.signal(signal.SIGTERM, old)
    assert stops == ["terminated (SIGTERM)"] and rc == 128 + signal.SIGTERM
    assert "demo terminated (SIGTERM)" in capsys.readouterr().out


def _live_cmd(case, out, *extra):
    return [sys.executable, "-m", "hypotest.cli", "live", "--library", case.lib, "--source", str(case.dir / "frames.npy"),
            "--beam", str(case.dir / "beam.json"), "--out", str(out), "--no-dashboard", *extra]  # fmt: skip


@pytest.mark.slow
def test_sigterm_stops_live_and_resume_as_ctrl_c_does(case, tmp_path):
    """SIGTERM to `hypotest live`, then to `hypotest session resume`: each writes its stopped line
    (reason "terminated (SIGTERM)"), gives every frame received a fate, releases the lock and
    exits 0; the record replays."""
    from hypotest.live.resume import replay_record

    d = tmp_path / "t"
    for cmd in (_live_cmd(case, d, "--rate", "2", "--no-auto-apply"),
                [sys.executable, "-m", "hypotest.cli", "session", "resume", str(d)]):  # fmt: skip
        n0 = _n_frames(d)
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL)
        try:
            _wait_for(lambda: _n_frames(d) >= n0 + 3, 240, "3 more frames", proc=p)
            p.send_signal(signal.SIGTERM)
            assert p.wait(120) == 0
        finally:
            if p.poll() is None:
                p.kill()
        last = _lines(d)[-1]
        assert last["kind"] == "stopped" and last["reason"] == "terminated (SIGTERM)", last
        assert all(f["fate"] is not None for f in load_record(d).frames)
        assert (d / "session.lock").read_text() == ""
    rec = load_record(d)
    assert len([e for e in rec.events if e["kind"] == "stopped"]) == 2
    _assert_nothing_lost_or_duplicated(rec, len(rec.frame_lines))
    assert replay_record(d).ok


# ---------------------------------------------------------------------------------------------
# the kill -9 scenarios


@pytest.mark.slow
def test_kill_9_during_a_file_replay_then_resume_replays_each_frame_once(case, tmp_path):
    """Issue 18 item 8: `hypotest live` on a 60-frame file at --rate 4, kill -9 after 14 frames,
    `hypotest session resume DIR --source FRAMES.npy`: 60 frames in all (not 74), each source id
    once, 24,000 e-/Å² (not 29,600), the rate and --no-auto-apply restored; replay reproduces
    every posterior exactly."""
    from hypotest.live.resume import replay_record

    d = tmp_path / "k"
    p = subprocess.Popen(_live_cmd(case, d, "--rate", "4", "--no-auto-apply"), env=ENV, stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _n_frames(d) >= 14, 240, "14 frames", proc=p)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    before = load_record(d)
    assert 14 <= len(before.frame_lines) < 60 and not any(e["kind"] == "stopped" for e in before.events)
    assert main(["session", "resume", str(d), "--source", str(case.dir / "frames.npy")]) == 0
    rec = load_record(d)
    _assert_nothing_lost_or_duplicated(rec, 60)
    assert sum(st["dose_e_per_A2"] for st in rec.steps) == pytest.approx(60 * DOSE)
    resumed = [e for e in rec.events if e["kind"] == "resumed"][-1]
    assert resumed["source"]["rate_hz"] == 4.0 and resumed["settings"]["auto_apply"] is False
    assert resumed["requeued"] == len(before.unscored_frames())
    assert not any(e["kind"] == "auto_apply" and e.get("on") for e in rec.events)
    rep = replay_record(d)
    assert rep.ok and rep.max_abs_posterior_diff == 0.0


_RECEIVER = """
import json, sys
from hypotest.live.builtin import load_hypotheses
from hypotest.live.model import ImageModel
from hypotest.live.runner import LiveSession
from hypotest.live.zmqstream import ZmqSource
lib, d, beam = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read())
hyps = load_hypotheses(lib)
model = ImageModel([h.specimen for h in hyps], sampling=0.1, binning=3, slice_thickness=1.5)
src = ZmqSource("tcp://127.0.0.1:*", end_on_sender_end=True)
source = {"kind": "zmq", "address": src.address, **getattr(src, "settings", {})}
s = LiveSession(d, hypotheses=hyps, model=model, source=src, candidate_beams=[("given", beam)], beam=beam,
                config={"library": lib, "model": model.settings, "source": source}, stop_on_decision=False,
                auto_apply=False)
s.start(warm_up=False)
print(src.address, flush=True)
s.wait()
"""


@pytest.mark.slow
def test_kill_9_of_a_zmq_receiver_the_frames_lost_in_flight_are_reported_exactly(case, tmp_path):
    """Issue 18 item 11: a sender streams 6,000 frames into a session; the session is frozen
    (SIGSTOP) after 30, the sender fills the socket queues until it blocks (some 4,000 frames in
    flight over loopback TCP: 1,000 per pipe end plus the kernel's buffers), and the session is
    killed (kill -9): those frames are lost. Resumed on the same address, it takes the sender's
    remaining frames and its end: the record reports exactly the frames that never reached it
    (the sender's frames_sent minus every frame recorded before and after the kill), in loss
    lines naming the sender; nothing is reported twice and nothing recorded is lost."""
    from hypotest.live.resume import resume_session
    from hypotest.live.zmqstream import send_frames

    n_total = 6000
    d = tmp_path / "zk"
    p = subprocess.Popen([sys.executable, "-c", _RECEIVER, case.lib, str(d), str(case.dir / "beam.json")], env=ENV,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    fast, pulled, reports = threading.Event(), [0], []

    def frames():
        for k in range(n_total):
            if not fast.is_set():
                time.sleep(0.05)
            pulled[0] = k + 1
            yield case.frames[k % len(case.frames)]

    try:
        address = p.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), address
        sender = threading.Thread(target=lambda: reports.append(send_frames(
            frames(), address, beam=case.beam, sampling=case.beam["sampling"], send_timeout=300)))  # fmt: skip
        sender.start()
        _wait_for(lambda: _n_frames(d) >= 30, 240, "30 frames", proc=p)
        os.kill(p.pid, signal.SIGSTOP)
        fast.set()
        last = -1
        while pulled[0] != last:  # until the queues are full and the sender blocks
            last = pulled[0]
            time.sleep(2.0)
        assert pulled[0] < n_total, "every frame fit in the socket queues: the sender never blocked"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
    before = load_record(d)
    s = resume_session(d)
    s.start(warm_up=False)
    sender.join(400)
    assert reports and reports[0].sent == n_total
    sid = reports[0].sender
    _wait_for(lambda: any(f"sender {sid} ended" in e.get("detail", "") for e in _lines(d, "stream")), 300, "the end")
    ended = s.wait(300)
    s.stop()
    rec = load_record(d)
    fids = [fl["frame_id"] for fl in rec.frame_lines]
    assert all(fl["sender"] == sid for fl in rec.frame_lines) and len(fids) == len(set(fids))
    missing = set(range(n_total)) - set(fids)
    lost = [e for e in rec.events if e["kind"] == "bad_message" and e.get("lost")]
    assert len(missing) >= 1000 and len(before.frame_lines) < len(rec.frame_lines)
    assert all(e["sender"] == sid for e in lost) and sum(e["lost"] for e in lost) == len(missing)
    assert f"(the sender counts {n_total} sent, {len(rec.frame_lines)} arrived)" in lost[-1]["reason"]
    _assert_nothing_lost_or_duplicated(rec, len(rec.frame_lines))
    assert ended, "the resumed session did not end at the sender's end (end_on_sender_end restored)"
