"""Bookkeeping for frames: identity, time and origin, kept out of jitted pytrees."""

from __future__ import annotations

import math

import numpy as np

from forward import InputError, pytree_dataclass, static_field

__all__ = ["FrameMeta", "make_frame_meta"]


@pytree_dataclass
class FrameMeta:
    """Who a frame is, never what it contains (that is :class:`inference.Frame`).

    Ids and times are leaves, so a batch of metadata stacks and a new frame never recompiles;
    they are not meant to enter jitted code at all (timestamps need float64).

    Attributes:
        frame_id: running number of the frame in its source (the first of a coalesced group).
        timestamp: acquisition time [s since the Unix epoch], float64.
        n_coalesced: number of raw frames summed into this one (1 if none were coalesced).
        source: where the frame came from ("sim://...", "tcp://...", a file path).
    """

    frame_id: np.ndarray
    timestamp: np.ndarray
    n_coalesced: np.ndarray
    source: str = static_field(default="")


def make_frame_meta(
    frame_id: int, timestamp: float, *, n_coalesced: int = 1, source: str = ""
) -> FrameMeta:
    """A validated :class:`FrameMeta`."""
    if isinstance(frame_id, bool) or int(frame_id) != frame_id or frame_id < 0:
        raise InputError(f"frame_id must be a non-negative integer, got {frame_id!r}")
    t = float(timestamp)
    if not math.isfinite(t) or t < 0:
        raise InputError(f"timestamp must be finite seconds since the epoch, got {timestamp!r}")
    if isinstance(n_coalesced, bool) or int(n_coalesced) != n_coalesced or n_coalesced < 1:
        raise InputError(f"n_coalesced must be a positive integer, got {n_coalesced!r}")
    return FrameMeta(
        frame_id=np.asarray(int(frame_id), dtype=np.int64),
        timestamp=np.asarray(t, dtype=np.float64),
        n_coalesced=np.asarray(int(n_coalesced), dtype=np.int64),
        source=str(source),
    )
