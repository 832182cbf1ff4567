"""The ZeroMQ stream over loopback: every frame arrives, malformed messages become BadMessage and the
stream goes on, drops and restarts are reported, the control channel reaches the sender, the CLI
sender works end to end. Every socket binds an ephemeral port (tcp://127.0.0.1:*)."""

import gc
import json
import threading
import time

import numpy as np
import pytest
import zmq

from forward.errors import InputError
from hypotest.cli import main
from hypotest.live.events import BadMessage, FrameSource, RawFrame, StreamEvent
from hypotest.live.zmqstream import SCHEMA, ZmqSource, encode_frame, send_frames

ANY = "tcp://127.0.0.1:*"
BEAM = {"energy": 80000, "dose": 40, "sampling": 0.1}
BEAM2 = {"energy": 80000, "dose": 40, "sampling": 0.1, "aberrations": {"defocus": 50}}


def _frames(n, shape=(16, 12), start=0):
    out = np.zeros((n, *shape), np.uint16)
    out[:, 0, 0] = np.arange(start, start + n)  # each frame carries its own number
    return out


def _collect(src, until, timeout_s=30.0):
    """Poll until ``until(events)`` holds (or a generous safety limit)."""
    events = []
    t_end = time.monotonic() + timeout_s
    while not until(events) and time.monotonic() < t_end:
        events += src.poll(0.05)
    return events


def _kinds(events):
    return [e.kind for e in events if isinstance(e, StreamEvent)]


def _frames_of(events):
    return [e for e in events if isinstance(e, RawFrame)]


@pytest.fixture
def source():
    src = ZmqSource(ANY, heartbeat_timeout=2.0)
    yield src
    src.close()


@pytest.fixture
def push(source):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(source.address)
    yield sock
    sock.close()
    ctx.term()


def _in_thread(fn, *args, **kwargs):
    result = {}
    t = threading.Thread(target=lambda: result.update(report=fn(*args, **kwargs)), daemon=True)
    t.start()
    return t, result


def test_loopback_high_rate_every_frame_arrives(source):
    assert isinstance(source, FrameSource) and source.address.startswith("tcp://127.0.0.1:")
    frames = _frames(600, shape=(128, 128))
    t, res = _in_thread(send_frames, frames, source.address, sampling=0.1, beam=BEAM)
    events = _collect(source, lambda ev: "disconnected" in _kinds(ev))
    t.join(30)
    got = _frames_of(events)
    assert res["report"].sent == 600 and res["report"].ended
    assert [f.meta["frame_id"] for f in got] == list(range(600))
    assert [f.source_id for f in got] == list(range(600))
    assert [int(f.counts[0, 0]) for f in got] == list(range(600))
    assert not [e for e in events if isinstance(e, BadMessage)]
    assert got[0].counts.shape == (128, 128) and got[0].counts.dtype == np.uint16
    assert got[0].sampling == (0.1, 0.1) and got[0].beam == BEAM
    assert _kinds(events) == ["connected", "disconnected"]
    assert "ended after 600 frame(s)" in events[-1].detail


def test_received_counts_outlive_the_message(source, push):
    frame = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    push.send_multipart(encode_frame(frame, 0), copy=False)
    (got,) = _frames_of(_collect(source, lambda ev: _frames_of(ev)))
    gc.collect()
    push.send_multipart(encode_frame(frame[::-1].copy(), 1), copy=False)  # reuse of freed buffers
    _collect(source, lambda ev: _frames_of(ev))
    np.testing.assert_array_equal(got.counts, frame)


def test_4dstem_frames_travel_with_their_four_axes(source):
    """A 4D-STEM frame [sx, sy, kx, ky] is one message; a stack [n, sx, sy, kx, ky] is n."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(0.3, (3, 5, 6, 7, 8)).astype(np.uint16)
    t, res = _in_thread(send_frames, frames, source.address, sampling=(0.35, 0.4), beam=BEAM)
    events = _collect(source, lambda ev: "disconnected" in _kinds(ev))
    t.join(30)
    got = _frames_of(events)
    assert res["report"].sent == 3 and len(got) == 3 and not [e for e in events if isinstance(e, BadMessage)]
    for f, ref in zip(got, frames):
        assert f.counts.shape == (5, 6, 7, 8)
        np.testing.assert_array_equal(f.counts, ref)
    assert encode_frame(frames[0], 9)[0].decode().count('"shape": [5, 6, 7, 8]') == 1


def _header(fid, **kw):
    h = {"schema": SCHEMA, "frame_id": fid, "timestamp": 1.0e9, "shape": [4, 3], "dtype": "<u2"}
    h.update(kw)
    return json.dumps({k: v for k, v in h.items() if v is not ...}).encode()


GOOD_BYTES = np.zeros((4, 3), np.uint16).tobytes()
MALFORMED = {
    "one part": ([_header(5)], r"^frame 5: expected 2 parts \(JSON header, raw counts\), got 1$"),
    "three parts": ([_header(5), GOOD_BYTES, b"x"], r"^frame 5: expected 2 parts .*got 3$"),
    "bad json": ([b"{not json", GOOD_BYTES], r"^message \(frame id unknown\): header is not UTF-8 JSON"),
    "not utf-8": ([b"\xff\xfe{}", GOOD_BYTES], r"header is not UTF-8 JSON"),
    "not an object": ([b"[1, 2]", GOOD_BYTES], r"header must be a JSON object, got list"),
    "wrong schema": ([_header(5, schema="other/2"), GOOD_BYTES], r"^frame 5: schema 'other/2' is not 'hypotest.frame/1'$"),
    "missing field": ([_header(5, dtype=...), GOOD_BYTES], r"^frame 5: header is missing field\(s\) \['dtype'\]"),
    "bad frame id": ([_header(-3), GOOD_BYTES], r"^frame -3: frame_id must be an integer >= 0$"),
    "bad timestamp": ([_header(5, timestamp="now"), GOOD_BYTES], r"^frame 5: timestamp must be a finite number"),
    "bad shape": ([_header(5, shape=[4]), GOOD_BYTES], r"^frame 5: shape must be \[mx, my\] or \[sx, sy, kx, ky\] \(4D-STEM\) with positive ints, got \[4\]$"),
    "unknown dtype": ([_header(5, dtype="<q9"), GOOD_BYTES], r"^frame 5: dtype '<q9' is not an integer or real numpy dtype"),
    "string dtype": ([_header(5, dtype="<U2"), GOOD_BYTES], r"^frame 5: dtype '<U2' is not an integer or real"),
    "truncated": ([_header(5), GOOD_BYTES[:-2]], r"^frame 5: 22 bytes of counts, expected 24 = 4 x 3 x 2 bytes \(<u2\)"),
    "too long": ([_header(5, dtype="<u1"), GOOD_BYTES], r"^frame 5: 24 bytes of counts, expected 12 = 4 x 3 x 1 bytes"),
    "bad beam": ([_header(5, beam=[1]), GOOD_BYTES], r"^frame 5: beam must be a BEAM.json object or null, got list$"),
    "bad sampling": ([_header(5, sampling=[0.1, -1]), GOOD_BYTES], r"^frame 5: sampling must be \[sx, sy\] > 0"),
    "unknown kind": ([_header(5, kind="image"), GOOD_BYTES], r"^frame 5: unknown kind 'image'; expected 'frame'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_a_bad_message_and_the_next_frame_arrives(source, push, case):
    parts, reason = MALFORMED[case]
    push.send_multipart(encode_frame(np.ones((4, 3), np.uint16), 4), copy=False)
    push.send_multipart(parts)
    push.send_multipart(encode_frame(np.full((4, 3), 7, np.uint16), 6), copy=False)
    events = _collect(source, lambda ev: len(_frames_of(ev)) == 2)
    body = [e for e in events if not isinstance(e, StreamEvent)]
    assert [type(e) for e in body[::2]] == [RawFrame, RawFrame] and isinstance(body[1], BadMessage) and len(body) == 3
    assert body[1].source_id == 1 and body[1].reason
    assert __import__("re").search(reason, body[1].reason), body[1].reason
    assert body[2].source_id == 2 and body[2].meta["frame_id"] == 6 and int(body[2].counts[3, 2]) == 7


def test_lost_frames_are_reported_from_the_senders_count(source, push):
    for fid in range(3):
        push.send_multipart(encode_frame(np.zeros((2, 2), np.uint8), fid, sender="cam1"), copy=False)
    hb = {"schema": SCHEMA, "kind": "heartbeat", "timestamp": 1.0e9, "sender": "cam1", "frames_sent": 5}
    push.send(json.dumps(hb).encode())
    events = _collect(source, lambda ev: any(isinstance(e, BadMessage) for e in ev))
    (bad,) = [e for e in events if isinstance(e, BadMessage)]
    assert bad.reason == "sender cam1: 2 frame message(s) sent but never received (the sender counts 5 sent, 3 arrived)"
    push.send(json.dumps(hb).encode())  # the same count again: already reported, not twice
    assert not [e for e in _collect(source, lambda ev: False, timeout_s=0.3) if isinstance(e, BadMessage)]


def test_sender_stopped_then_restarted(source):
    t, res = _in_thread(send_frames, _frames(5), source.address, send_end=False)  # a crash: no "end"
    events = _collect(source, lambda ev: "disconnected" in _kinds(ev))
    t.join(30)
    assert _kinds(events) == ["connected", "disconnected"]
    assert "peer closed the connection" in events[-1].detail
    assert [f.source_id for f in _frames_of(events)] == list(range(5))
    t, res = _in_thread(send_frames, _frames(4, start=100), source.address, start_id=100)
    events = _collect(source, lambda ev: "disconnected" in _kinds(ev))
    t.join(30)
    assert _kinds(events)[0] == "reconnected" and _kinds(events)[-1] == "disconnected"
    got = _frames_of(events)
    assert [f.meta["frame_id"] for f in got] == [100, 101, 102, 103]
    assert [f.source_id for f in got] == [5, 6, 7, 8]  # the source's ids stay unique and monotone
    assert got[0].meta["sender"] == res["report"].sender


def test_silent_sender_times_out_and_a_heartbeat_revives_it():
    src = ZmqSource(ANY, heartbeat_timeout=0.3)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(src.address)  # connected, then silent: no frame, no heartbeat
        events = _collect(src, lambda ev: "disconnected" in _kinds(ev))
        assert _kinds(events) == ["connected", "disconnected"]
        assert events[-1].detail == "no frame or heartbeat for 0.3 s"
        hb = {"schema": SCHEMA, "kind": "heartbeat", "timestamp": 1.0e9, "sender": "s", "frames_sent": 0}
        sock.send(json.dumps(hb).encode())
        assert _kinds(_collect(src, lambda ev: _kinds(ev))) == ["reconnected"]
    finally:
        sock.close()
        ctx.term()
        src.close()


def test_heartbeats_keep_a_slow_sender_connected():
    src = ZmqSource(ANY, heartbeat_timeout=0.6)
    try:
        t, res = _in_thread(send_frames, _frames(2), src.address, rate_hz=1.0, heartbeat_s=0.1)
        events = _collect(src, lambda ev: "disconnected" in _kinds(ev))
        t.join(30)
        # frames 1 s apart, longer than the timeout: only the heartbeats keep the stream "up"
        assert _kinds(events) == ["connected", "disconnected"]
        assert "ended after 2 frame(s)" in events[-1].detail
        assert len(_frames_of(events)) == 2
    finally:
        src.close()


def test_end_on_sender_end_ends_the_source():
    src = ZmqSource(ANY, end_on_sender_end=True)
    t, _ = _in_thread(send_frames, _frames(2), src.address)
    events = _collect(src, lambda ev: "end" in _kinds(ev))
    t.join(30)
    assert _kinds(events) == ["connected", "end"] and len(_frames_of(events)) == 2
    assert src.poll(0.05) == []
    src.close()
    src.close()
    assert src.poll(0.05) == []


def test_control_channel_reaches_the_sender():
    src = ZmqSource(ANY, control_address=ANY)
    seen = []
    try:
        assert src.control_address.startswith("tcp://127.0.0.1:")
        assert src.apply_beam(BEAM)  # before any sender: re-sent when one subscribes
        t, res = _in_thread(
            send_frames, _frames(150), src.address, rate_hz=100.0, beam=None,
            control_address=src.control_address, on_beam=seen.append,
        )  # fmt: skip
        events = _collect(src, lambda ev: len(_frames_of(ev)) >= 50)
        assert src.apply_beam(BEAM2)
        events += _collect(src, lambda ev: "disconnected" in _kinds(ev))
        t.join(30)
        got = _frames_of(events)
        assert len(got) == 150
        assert seen == [BEAM, BEAM2] and res["report"].beams == (BEAM, BEAM2)
        assert got[-1].beam == BEAM2
        switched = [f.beam == BEAM2 for f in got]
        assert switched.index(True) >= 50 and all(switched[switched.index(True):])  # once switched, it stays
    finally:
        src.close()
    with ZmqSource(ANY, control_address=ANY) as src2:
        with pytest.raises(InputError, match=r"apply_beam: missing required field 'energy'"):
            src2.apply_beam({"dose": 1, "sampling": 0.1})


def test_no_control_channel_returns_false(source):
    assert source.apply_beam(BEAM) is False


def test_bad_arguments(source):
    with pytest.raises(InputError, match=r"data address must be a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got 'localhost'"):
        ZmqSource("localhost")
    with pytest.raises(InputError, match=r"cannot bind data address .*: Address already in use.*; choose a free port, or 'tcp://127.0.0.1:\*'"):
        ZmqSource(source.address)
    with pytest.raises(InputError, match=r"heartbeat_timeout must be a positive number \[s\], got 0"):
        ZmqSource(ANY, heartbeat_timeout=0)
    with pytest.raises(InputError, match=r"start_id must be an integer >= 0, got -1"):
        ZmqSource(ANY, start_id=-1)
    with pytest.raises(InputError, match=r"rate_hz must be a positive number \[Hz\] or None, got -5"):
        send_frames(_frames(1), source.address, rate_hz=-5)
    with pytest.raises(InputError, match=r"frames must be \[mx, my\], \[n, mx, my\], one 4D-STEM frame .* got shape \[2, 2, 2, 2, 2, 2\]"):
        send_frames(np.zeros((2, 2, 2, 2, 2, 2)), source.address)
    with pytest.raises(InputError, match=r"frame 0: expected a 2-D \[mx, my\] or 4D-STEM \[sx, sy, kx, ky\] integer or real array, got 2-D complex64"):
        send_frames([np.zeros((2, 2), np.complex64)], source.address)


def test_send_without_a_receiver_times_out():
    ctx = zmq.Context()
    probe = ctx.socket(zmq.PULL)
    addr = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # a free port with nobody listening
    ctx.term()
    with pytest.raises(TimeoutError, match=r"no receiver at tcp://127.0.0.1:\d+ took frame 0 within 0.2 s"):
        send_frames(_frames(1), f"tcp://127.0.0.1:{addr}", send_timeout=0.2)


def test_cli_stream_send_end_to_end(tmp_path, capsys):
    np.save(tmp_path / "a.npy", _frames(3))
    np.savez(tmp_path / "b.npz", frames=_frames(2, start=3))
    src = ZmqSource(ANY, end_on_sender_end=True)
    argv = ["stream", "send", str(tmp_path / "a.npy"), str(tmp_path / "b.npz"), "--rate", "200",
            "--address", src.address, "--sampling", "0.25"]  # fmt: skip
    t, res = _in_thread(main, argv)
    events = _collect(src, lambda ev: "end" in _kinds(ev))
    t.join(30)
    src.close()
    assert res["report"] == 0
    got = _frames_of(events)
    assert [int(f.counts[0, 0]) for f in got] == [0, 1, 2, 3, 4]
    assert [f.meta["frame_id"] for f in got] == [0, 1, 2, 3, 4] and got[0].sampling == (0.25, 0.25)
    assert "sent 5 frame(s)" in capsys.readouterr().out


def test_cli_stream_send_bad_file(tmp_path, capsys):
    assert main(["stream", "send", str(tmp_path / "none.npy"), "--address", "tcp://127.0.0.1:1"]) == 2
    assert "none.npy: no such file" in capsys.readouterr().err


def _free_port():
    ctx = zmq.Context()
    probe = ctx.socket(zmq.PULL)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    ctx.term()
    return port


def test_receiver_connects_to_a_binding_sender():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t, res = _in_thread(send_frames, _frames(20), address, connect=False)  # the sender binds
    with ZmqSource(address, bind=False, end_on_sender_end=True, start_id=40) as src:
        events = _collect(src, lambda ev: "end" in _kinds(ev))
    t.join(30)
    assert _kinds(events) == ["connected", "end"]
    assert [f.meta["frame_id"] for f in _frames_of(events)] == list(range(20))
    assert [f.source_id for f in _frames_of(events)] == list(range(40, 60))  # e.g. a resumed session


def test_stop_event_ends_the_send_cleanly(source):
    stop = threading.Event()

    def endless():
        k = 0
        while True:
            if k == 7:
                stop.set()  # e.g. Ctrl-C in `hypotest stream send`
            yield np.full((3, 3), k, np.uint16)
            k += 1

    t, res = _in_thread(send_frames, endless(), source.address, stop=stop)
    events = _collect(source, lambda ev: "disconnected" in _kinds(ev))
    t.join(30)
    assert res["report"].sent == 8 and res["report"].ended and res["report"].last_id == 7
    assert [int(f.counts[0, 0]) for f in _frames_of(events)] == list(range(8))
    assert not [e for e in events if isinstance(e, BadMessage)]  # "end" says 8 sent, 8 arrived


def test_console_script_loops_until_interrupted(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    np.save(tmp_path / "a.npy", _frames(3))
    exe = Path(sys.executable).parent / "hypotest"
    with ZmqSource(ANY, end_on_sender_end=True) as src:
        proc = subprocess.Popen(
            [str(exe), "stream", "send", str(tmp_path / "a.npy"), "--loop", "--rate", "100", "--address", src.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            events = _collect(src, lambda ev: len(_frames_of(ev)) >= 10, timeout_s=120)
            proc.send_signal(signal.SIGINT)
            events += _collect(src, lambda ev: "end" in _kinds(ev), timeout_s=60)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    got = _frames_of(events)
    assert proc.returncode == 0, err
    assert [f.meta["frame_id"] for f in got] == list(range(len(got))) and len(got) >= 10
    assert [int(f.counts[0, 0]) for f in got] == [k % 3 for k in range(len(got))]  # the file, over and over
    assert f"sent {len(got)} frame(s)" in out and "interrupted" in err
    assert not [e for e in events if isinstance(e, BadMessage)]
