"""File replay as a FrameSource: ids, order, pacing, end, per-frame BadMessage, loop, close."""

import numpy as np
import pytest

from forward.errors import InputError
from hypotest.live.events import BadMessage, FrameSource, RawFrame, StreamEvent
from hypotest.live.replay import FileReplaySource

BEAM = {"energy": 80000, "dose": 40, "sampling": 0.1}


def _stack(n, start=0):
    return (np.arange(start, start + n)[:, None, None] + np.zeros((1, 6, 4))).astype(np.uint16)


def _drain(src, timeout=0.5, limit=1000):
    events = []
    for _ in range(limit):
        got = src.poll(timeout)
        events += got
        if any(isinstance(e, StreamEvent) and e.kind == "end" for e in got):
            break
    return events


def test_replays_every_frame_in_order_then_ends(tmp_path):
    np.save(tmp_path / "a.npy", _stack(3))
    np.savez(tmp_path / "b.npz", frames=_stack(2, start=3), sampling=[0.2, 0.2])
    src = FileReplaySource([tmp_path / "a.npy", tmp_path / "b.npz"], beam=BEAM, sampling=None)
    assert isinstance(src, FrameSource) and src.apply_beam(BEAM) is False
    events = _drain(src)
    assert isinstance(events[0], StreamEvent) and events[0].kind == "connected"
    frames = [e for e in events if isinstance(e, RawFrame)]
    assert [f.source_id for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.counts[0, 0]) for f in frames] == [0, 1, 2, 3, 4]
    assert frames[0].counts.shape == (6, 4) and frames[0].beam == BEAM
    assert frames[0].sampling is None and frames[3].sampling == (0.2, 0.2)
    assert frames[4].meta["file"].endswith("b.npz") and frames[4].meta["index"] == 1
    assert events[-1] == StreamEvent("end", events[-1].timestamp, events[-1].detail)
    assert src.poll(0.01) == [] and src.poll(0.0) == []  # after end: nothing, ever
    src.close()
    src.close()  # idempotent


def test_sampling_override_and_rate(tmp_path):
    np.save(tmp_path / "a.npy", _stack(6))
    src = FileReplaySource(tmp_path / "a.npy", rate_hz=50.0, sampling=0.3)
    events = _drain(src, timeout=0.2)
    frames = [e for e in events if isinstance(e, RawFrame)]
    assert len(frames) == 6 and frames[0].sampling == (0.3, 0.3)
    # the schedule: frame k is not released before k/50 s after the replay started (the
    # "connected" event); a lower bound, never a speed (a loaded machine releases frames late)
    since_start = np.array([f.timestamp for f in frames]) - events[0].timestamp
    assert events[0].kind == "connected" and np.all(since_start >= np.arange(6) / 50.0 - 2e-3)


def test_rate_poll_returns_empty_before_the_next_frame_is_due(tmp_path):
    np.save(tmp_path / "a.npy", _stack(2))
    src = FileReplaySource(tmp_path / "a.npy", rate_hz=0.5)  # one frame per 2 s
    first = src.poll(0.0)
    assert [type(e) for e in first] == [StreamEvent, RawFrame]
    assert src.poll(0.01) == []  # frame 1 is due 2 s after the first poll
    src.close()
    assert src.poll(0.01) == []


def test_truncated_file_gives_bad_message_per_frame_and_goes_on(tmp_path):
    np.save(tmp_path / "t.npy", _stack(3))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-4])  # the last frame (48 bytes) is cut short
    np.save(tmp_path / "ok.npy", _stack(1, start=7))
    src = FileReplaySource([tmp_path / "t.npy", tmp_path / "ok.npy"])
    events = [e for e in _drain(src) if not isinstance(e, StreamEvent)]
    assert [type(e) for e in events] == [RawFrame, RawFrame, BadMessage, RawFrame]
    assert events[2].source_id == 2 and "frame 2 lies beyond the end of the file" in events[2].reason
    assert events[3].source_id == 3 and int(events[3].counts[0, 0]) == 7


def test_file_removed_mid_stream_is_one_bad_message(tmp_path):
    np.save(tmp_path / "a.npy", _stack(1))
    np.save(tmp_path / "gone.npy", _stack(1))
    src = FileReplaySource([tmp_path / "a.npy", tmp_path / "gone.npy"])
    (tmp_path / "gone.npy").unlink()
    events = _drain(src)
    bad = [e for e in events if isinstance(e, BadMessage)]
    assert len(bad) == 1 and bad[0].source_id is None
    assert "cannot open" in bad[0].reason and "gone.npy: no such file" in bad[0].reason
    assert events[-1].kind == "end"


def test_loop_keeps_counting_ids(tmp_path):
    np.save(tmp_path / "a.npy", _stack(2))
    src = FileReplaySource(tmp_path / "a.npy", loop=True)
    frames = []
    while len(frames) < 5:
        frames += [e for e in src.poll(0.1) if isinstance(e, RawFrame)]
    assert [f.source_id for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.counts[0, 0]) for f in frames] == [0, 1, 0, 1, 0]
    assert [f.meta["pass"] for f in frames] == [0, 0, 1, 1, 2]
    src.close()


def test_bad_arguments(tmp_path):
    np.save(tmp_path / "a.npy", _stack(1))
    with pytest.raises(InputError, match="expected at least one frame file, got an empty list"):
        FileReplaySource([])
    with pytest.raises(InputError, match=r"missing\.npy: no such file"):
        FileReplaySource([tmp_path / "missing.npy"])
    with pytest.raises(InputError, match=r"rate_hz must be a positive number \[Hz\] or None, got -1"):
        FileReplaySource(tmp_path / "a.npy", rate_hz=-1)
    with pytest.raises(InputError, match=r"sampling must be a positive number or \(sx, sy\) \[Å/pixel\], got \[0.1, 0.1, 0.1\]"):
        FileReplaySource(tmp_path / "a.npy", sampling=[0.1, 0.1, 0.1])
    with pytest.raises(InputError, match=r"FileReplaySource beam: missing required field 'dose'"):
        FileReplaySource(tmp_path / "a.npy", beam={"energy": 80000, "sampling": 0.1})


def test_damaged_hdf5_chunk_is_one_bad_message(tmp_path):
    from tests.hypotest.test_readers import _damaged_h5

    frames = _damaged_h5(tmp_path / "d.h5")
    events = [e for e in _drain(FileReplaySource(tmp_path / "d.h5")) if not isinstance(e, StreamEvent)]
    assert [type(e) for e in events] == [RawFrame, BadMessage, RawFrame]
    assert events[1].source_id == 1 and "frame 1 of 3 cannot be read" in events[1].reason
    np.testing.assert_array_equal(events[2].counts, frames[2])
