"""File replay: frames from files (:mod:`hypotest.frames`) delivered as a live stream.

Events, in order: ``StreamEvent("connected")`` on the first poll, then one :class:`RawFrame` per
stored frame (files in the order given, frames in file order), ``source_id`` counting from 0
across all files, then ``StreamEvent("end")``; with ``loop=True`` the files start over and the
stream never ends (ids keep counting). A file that cannot be opened mid-stream gives one
:class:`BadMessage` (``source_id=None``: its frames were never counted); a frame that cannot be
read (a truncated file, a damaged HDF5 chunk) gives a :class:`BadMessage` carrying the id that
frame would have had. Neither stops the replay. Files are opened lazily, one at a time.

Pacing: with ``rate_hz`` the ``k``-th frame delivered (counting frames and per-frame
BadMessages) is due at ``t0 + k / rate_hz`` (``t0`` = the first poll); a poll returns every frame
already due (it catches up, never skips; at most 256 per poll), else waits for the next one up to
``timeout``. With ``rate_hz=None`` every poll returns the next frame at once.

Resuming (:func:`hypotest.live.resume.resume_session`): ``skip_ids`` are ids already in the
session record (a frame or a bad_message line); they are passed over without reading the frame
and without a pacing delay (pacing counts frames delivered, not ids), so a resumed replay
continues where the record stops, at the same rate. ``start_id`` makes the ids of a replay that
follows another source start after that source's ids (ids stay unique in a record).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from forward.errors import InputError
from hypotest.live.events import BadMessage, RawFrame, SourceEvent, StreamEvent
from hypotest.frames import FrameReader, absolute_frame_path, frame_file_format, open_frames

__all__ = ["FileReplaySource"]

_MAX_BATCH = 256  # events one poll returns at most when catching up (bounds the ingest latency)


class FileReplaySource:
    """Replays frame files at a chosen rate; implements :class:`hypotest.live.events.FrameSource`.

    Args:
        paths: frame files (any format of :mod:`hypotest.frames`; ``file.h5:/dataset``).
        rate_hz: frames per second [Hz], or None to deliver as fast as polled.
        loop: start over after the last file (the stream never ends).
        beam: the beam condition every frame was recorded with (BEAM.json form; checked with
            :func:`hypotest.beamfile.parse_beam`), or None.
        sampling: pixel size [Å/pixel], one number or ``(sx, sy)``; overrides what the files say.
        skip_ids: source ids not to deliver (already recorded; module docstring).
        start_id: the id of the first stored frame (ids count from it).

    ``settings`` says how to open the same replay again (recorded in session.json).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        rate_hz: float | None = None,
        loop: bool = False,
        beam: dict | None = None,
        sampling: float | Sequence[float] | None = None,
        skip_ids: Iterable[int] = (),
        start_id: int = 0,
    ):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self._paths = [os.fspath(p) for p in paths]
        if not self._paths:
            raise InputError("FileReplaySource: expected at least one frame file, got an empty list")
        for p in self._paths:  # fail early on missing files and unknown formats (nothing is read)
            frame_file_format(p)
        if rate_hz is not None:
            r = float(rate_hz) if isinstance(rate_hz, (int, float)) and not isinstance(rate_hz, bool) else math.nan
            if not (math.isfinite(r) and r > 0):
                raise InputError(f"FileReplaySource: rate_hz must be a positive number [Hz] or None, got {rate_hz!r}")
            rate_hz = r
        if beam is not None:
            from hypotest.beamfile import parse_beam

            parse_beam(beam, where="FileReplaySource beam")
        if isinstance(start_id, bool) or not isinstance(start_id, int) or start_id < 0:
            raise InputError(f"FileReplaySource: start_id must be an integer >= 0, got {start_id!r}")
        try:
            skip = frozenset(int(i) for i in skip_ids)
        except (TypeError, ValueError):
            raise InputError(f"FileReplaySource: skip_ids must be source ids (integers), got {skip_ids!r:.80}") from None
        self._rate = rate_hz
        self._loop = bool(loop)
        self._beam = beam
        self._sampling = None if sampling is None else _sampling(sampling)
        self._skip = skip
        self.settings = {"kind": "replay", "paths": [absolute_frame_path(p) for p in self._paths], "rate_hz": rate_hz,
                         "loop": self._loop, "beam": beam, "sampling": None if self._sampling is None else list(self._sampling),
                         "start_id": start_id}  # fmt: skip
        self.name = f"replay:{Path(self._paths[0]).name}" + (f"+{len(self._paths) - 1}" if len(self._paths) > 1 else "")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader: FrameReader | None = None
        self._file_index = 0
        self._frame_index = 0
        self._pass = 0
        self._next_id = start_id
        self._delivered = 0  # frames and per-frame BadMessages delivered (the pacing clock)
        self._skipped = 0
        self._t0: float | None = None
        self._state = "new"  # new -> running -> ended | closed

    # FrameSource -------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[SourceEvent]:
        """Frames due now (waiting at most ``timeout`` [s] for the next), oldest first."""
        deadline = time.monotonic() + max(float(timeout), 0.0)
        out: list[SourceEvent] = []
        while True:
            with self._lock:
                if self._state in ("ended", "closed"):
                    return out
                if self._state == "new":
                    self._state, self._t0 = "running", time.monotonic()
                    out.append(StreamEvent("connected", time.time(), f"replaying {len(self._paths)} file(s)"))
                if self._rate is None:
                    self._emit_next(out)
                    return out
                now_m = time.monotonic()
                while self._state == "running" and self._t0 + self._delivered / self._rate <= now_m:
                    if not self._emit_next(out) or len(out) >= _MAX_BATCH:
                        break
                if any(not isinstance(e, StreamEvent) or e.kind == "end" for e in out) or now_m >= deadline:
                    return out
                wait = min(self._t0 + self._delivered / self._rate, deadline) - now_m
            if self._closed.wait(max(wait, 0.0)):
                return []

    #: a file has no control channel
    controllable = False

    def apply_beam(self, beam: dict) -> bool:
        """A file has no control channel: returns False."""
        return False

    def close(self) -> None:
        """Close the open file; idempotent. Further polls return []."""
        self._closed.set()
        with self._lock:
            self._state = "closed"
            self._close_reader()

    # internals ---------------------------------------------------------------------------

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _emit_next(self, out: list[SourceEvent]) -> bool:
        """Append the next frame, its BadMessage, or the end; False if no file could be opened."""
        failed_opens = 0
        while True:
            if self._reader is None:
                if self._file_index >= len(self._paths):
                    if not self._loop:
                        self._state = "ended"
                        skipped = f", {self._skipped} of them skipped (already recorded)" if self._skipped else ""
                        out.append(StreamEvent("end", time.time(), f"{self._next_id} frame id(s) replayed{skipped}"))
                        return True
                    self._file_index, self._pass = 0, self._pass + 1
                if failed_opens >= len(self._paths):
                    return False  # looping over files that all fail to open: try again next poll
                path = self._paths[self._file_index]
                try:
                    self._reader = open_frames(path)
                    self._frame_index = 0
                except InputError as exc:
                    out.append(BadMessage(None, time.time(), f"cannot open {path} mid-stream: {exc}"))
                    self._file_index += 1
                    failed_opens += 1
                    continue
            if self._frame_index >= self._reader.n_frames:
                self._close_reader()
                self._file_index += 1
                continue
            reader, index, sid = self._reader, self._frame_index, self._next_id
            self._frame_index += 1
            self._next_id += 1
            if sid in self._skip:  # recorded before a restart: not read, not paced
                self._skipped += 1
                continue
            self._delivered += 1
            try:
                counts = reader.frame(index)
            except InputError as exc:
                out.append(BadMessage(sid, time.time(), str(exc)))
                return True
            sampling = self._sampling or reader.sampling
            meta = {"file": reader.path, "index": index, "pass": self._pass, "format": reader.meta.get("format")}
            out.append(RawFrame(sid, time.time(), counts, self._beam, sampling, meta))
            return True


def _sampling(value) -> tuple[float, float]:
    try:
        vals = [float(value)] * 2 if isinstance(value, (int, float)) else [float(v) for v in value]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError(
            f"FileReplaySource: sampling must be a positive number or (sx, sy) [Å/pixel], got {value!r}"
        )
    return vals[0], vals[1]
