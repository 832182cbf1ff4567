"""Encoding and decoding of the ZeroMQ frame protocol ``hypotest.frame/1`` (the protocol itself is
described in :mod:`hypotest.live.zmqstream`).

:func:`decode_message` turns the parts of one received message into a frame, a heartbeat or an
end, or raises :class:`MalformedMessage` with a reason that names the frame; it never raises
anything else, whatever the bytes (fuzzed in tests/hypotest/test_fuzz.py). Reasons quote at
most ~60 characters of any field, so a hostile header cannot flood the session record.
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import zmq

from forward.errors import InputError

__all__ = ["SCHEMA", "CONTROL_SCHEMA", "MalformedMessage", "decode_message", "encode_frame"]

SCHEMA = "hypotest.frame/1"
CONTROL_SCHEMA = "hypotest.control/1"
_REQUIRED = ("frame_id", "timestamp", "shape", "dtype")
_KNOWN = {"schema", "kind", "frame_id", "timestamp", "shape", "dtype", "beam", "sampling", "sender"}
_MAX_HEADER = 64 * 1024  # bytes of JSON header parsed at most (a BEAM.json is < 2 kB)
#: dtype strs the protocol accepts (what ``arr.dtype.str`` gives for integer and real arrays) and
#: numpy's names for the same; nothing else reaches ``np.dtype`` (which parses arbitrary syntax).
_DTYPE = re.compile(r"^[<>|=]?(u[1248]|i[1248]|f[248])$")
_DTYPE_NAMES = {f"{k}{b}" for k, bits in (("uint", (8, 16, 32, 64)), ("int", (8, 16, 32, 64)), ("float", (16, 32, 64)))
                for b in bits}  # fmt: skip


class MalformedMessage(ValueError):
    """A message that is not a valid ``hypotest.frame/1`` message: ``reason`` says why."""

    def __init__(self, reason: str, sender: str | None = None):
        super().__init__(reason)
        self.reason, self.sender = reason, sender


_Malformed = MalformedMessage


def _short(x, n: int = 60) -> str:
    """``repr(x)``, cut to about ``n`` characters (a hostile header cannot flood the record)."""
    r = repr(x)
    return r if len(r) <= n else f"{r[: n - 12]}... ({len(r)} chars)"


# ---------------------------------------------------------------------------------------------
# encoding / decoding


def encode_frame(
    counts: np.ndarray,
    frame_id: int,
    *,
    timestamp: float | None = None,
    beam: dict | None = None,
    sampling: tuple[float, float] | None = None,
    sender: str = "",
) -> list:
    """The two parts of a frame message: the JSON header (bytes) and the C-contiguous counts array.

    ``counts`` is ``[mx, my]`` (or a 4D-STEM ``[sx, sy, kx, ky]``), integer or real; the array
    itself is the second part (sent without a copy by ``socket.send_multipart(parts, copy=False)``).
    """
    arr = np.ascontiguousarray(counts)
    if arr.ndim not in (2, 4) or not _DTYPE.match(arr.dtype.str) or 0 in arr.shape:
        raise InputError(
            f"frame {frame_id}: expected a 2-D [mx, my] or 4D-STEM [sx, sy, kx, ky] integer or real array, got "
            f"{arr.ndim}-D {arr.dtype} {list(arr.shape)} (1-8 byte integers or 2-8 byte floats, no empty axis); "
            "pass one frame at a time"
        )
    header = {
        "schema": SCHEMA, "kind": "frame", "frame_id": int(frame_id),
        "timestamp": time.time() if timestamp is None else float(timestamp),
        "shape": [int(n) for n in arr.shape], "dtype": arr.dtype.str, "beam": beam,
        "sampling": None if sampling is None else [float(sampling[0]), float(sampling[1])],
        "sender": sender,
    }  # fmt: skip
    return [json.dumps(header).encode(), arr]


def _control_header(kind: str, sender: str, frames_sent: int) -> bytes:
    msg = {"schema": SCHEMA, "kind": kind, "timestamp": time.time(), "sender": sender, "frames_sent": frames_sent}
    return json.dumps(msg).encode()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    """A finite int or float that a float can hold (a 400-digit JSON integer is not)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _buffer(part) -> memoryview:
    """The bytes of one message part: a ``zmq.Frame`` (no copy), bytes, bytearray or memoryview."""
    return memoryview(part.buffer if isinstance(part, zmq.Frame) else part)


def _fid_text(header: dict) -> str:
    fid = header.get("frame_id", "unknown")
    return str(fid) if _is_int(fid) or fid == "unknown" else _short(fid)


def _decode_header(raw) -> dict:
    raw = _buffer(raw)
    if raw.nbytes > _MAX_HEADER:
        raise _Malformed(f"message (frame id unknown): header is {raw.nbytes} bytes, more than {_MAX_HEADER}; not parsed")
    try:
        header = json.loads(raw.tobytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, > 4300-digit ints
        raise _Malformed(f"message (frame id unknown): header is not UTF-8 JSON ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise _Malformed(f"message (frame id unknown): header must be a JSON object, got {type(header).__name__}")
    sender = header.get("sender") if isinstance(header.get("sender"), str) else None
    if sender is not None and len(sender) > 64:
        sender = sender[:64]
    if header.get("schema") != SCHEMA:
        raise _Malformed(f"frame {_fid_text(header)}: schema {_short(header.get('schema'))} is not {SCHEMA!r}", sender)
    return header


def decode_message(parts: list) -> tuple[str, dict, np.ndarray | None]:
    """Decode one message (its parts: ``zmq.Frame``, bytes or memoryviews) of the protocol.

    Returns ``("frame", header, counts)`` (counts ``[mx, my]`` or ``[sx, sy, kx, ky]``, a view of
    the second part) or ``("heartbeat" | "end", header, None)`` (their part count is the caller's
    to check: it still counts the sender's frames). Raises :class:`MalformedMessage` with the
    reason (and the sender where the header names one) for anything else.
    """
    if not isinstance(parts, (list, tuple)) or not parts:
        raise _Malformed("message (frame id unknown): no parts; expected a JSON header and the counts")
    header = _decode_header(parts[0])
    sender = header.get("sender") if isinstance(header.get("sender"), str) else ""
    sender = sender[:64]
    kind = header.get("kind", "frame")
    if kind in ("heartbeat", "end"):
        return kind, header, None
    if kind != "frame":
        reason = f"frame {_fid_text(header)}: unknown kind {_short(kind)}; expected 'frame', 'heartbeat' or 'end'"
        raise _Malformed(reason, sender)
    counts, header = _decode_frame(header, parts, sender)
    return "frame", header, counts


def _decode_frame(header: dict, parts: list, sender: str) -> tuple[np.ndarray, dict]:
    """Counts (a view of the message buffer) and the checked header of a frame message."""
    fid = header.get("frame_id", "unknown")
    where = f"frame {_fid_text(header)}" + (f" from sender {sender}" if sender else "")
    if len(parts) != 2:
        raise _Malformed(f"{where}: expected 2 parts (JSON header, raw counts), got {len(parts)}", sender)
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise _Malformed(f"{where}: header is missing field(s) {missing}; required: {list(_REQUIRED)}", sender)
    if not _is_int(fid) or fid < 0:
        raise _Malformed(f"frame {_short(fid)}: frame_id must be an integer >= 0", sender)
    if not _is_num(header["timestamp"]):
        raise _Malformed(f"{where}: timestamp must be a finite number [s], got {_short(header['timestamp'])}", sender)
    shape = header["shape"]
    if not (isinstance(shape, list) and len(shape) in (2, 4) and all(_is_int(s) and s > 0 for s in shape)):
        raise _Malformed(
            f"{where}: shape must be [mx, my] or [sx, sy, kx, ky] (4D-STEM) with positive ints, got {_short(shape)}",
            sender,
        )
    name = header["dtype"]
    ok = isinstance(name, str) and (_DTYPE.match(name) or name in _DTYPE_NAMES)
    dtype = np.dtype(name) if ok else None
    if dtype is None:
        raise _Malformed(
            f"{where}: dtype {_short(name)} is not an integer or real numpy dtype str (e.g. '<u2', '<f4')", sender
        )
    beam = header.get("beam")
    if beam is not None and not isinstance(beam, dict):
        raise _Malformed(f"{where}: beam must be a BEAM.json object or null, got {type(beam).__name__}", sender)
    sampling = header.get("sampling")
    if sampling is not None and not (
        isinstance(sampling, list) and len(sampling) == 2 and all(_is_num(s) and s > 0 for s in sampling)
    ):
        raise _Malformed(f"{where}: sampling must be [sx, sy] > 0 [Å/pixel] or null, got {_short(sampling)}", sender)
    buf = _buffer(parts[1])
    expected = math.prod(shape) * dtype.itemsize
    if buf.nbytes != expected:
        raise _Malformed(
            f"{where}: {buf.nbytes} bytes of counts, expected {expected} = {' x '.join(str(n) for n in shape)} x "
            f"{dtype.itemsize} bytes ({dtype.str}); truncated or wrong shape/dtype",
            sender,
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape), header


def _control_message(raw: bytes) -> dict | None:
    """A ``hypotest.control/1`` beam message ``{"seq": int, "beam": dict}``, or None for anything else."""
    try:
        msg = json.loads(raw) if len(raw) <= _MAX_HEADER else None
    except (ValueError, RecursionError):
        return None
    ok = (isinstance(msg, dict) and msg.get("schema") == CONTROL_SCHEMA and msg.get("kind") == "beam"
          and _is_int(msg.get("seq")) and isinstance(msg.get("beam"), dict))  # fmt: skip
    return msg if ok else None
