"""What a frame source delivers, and the interface every source implements.

A source never validates physics: it turns bytes into :class:`RawFrame` objects, reports what it
could not decode as :class:`BadMessage` (with the reason) and reports its connection state as
:class:`StreamEvent`. The session decides each frame's fate (scored, coalesced, rejected) and writes
it to the record, so nothing a source delivers is lost silently.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from forward.errors import InputError

__all__ = ["RawFrame", "BadMessage", "StreamEvent", "FrameSource", "SourceEvent", "BeamRefused"]


class BeamRefused(InputError):
    """The microscope cannot take a beam condition (an unknown control, a value out of its range,
    a detector it has not); the message names the control and the reason. A source's
    ``apply_beam`` raises it; the session records the refusal and shows it, and never assumes the
    beam."""


@dataclasses.dataclass(frozen=True)
class RawFrame:
    """One frame as the source delivered it.

    Attributes:
        source_id: the source's id of the frame (monotone per source).
        timestamp: when the source acquired or sent it [s since the epoch].
        counts: the detector counts, ``[mx, my]`` ([x, y] indexing as abTEM), any numeric dtype.
        beam: the beam condition it was recorded with, in the BEAM.json form
            (:mod:`hypotest.beamfile`), or None when the source does not know.
        sampling: pixel size [Å/pixel] ``(sx, sy)``, or None when the source does not know.
        meta: anything else the source reported (file name, header fields).
    """

    source_id: int
    timestamp: float
    counts: np.ndarray
    beam: dict | None = None
    sampling: tuple[float, float] | None = None
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BadMessage:
    """Something arrived that is not a frame; ``reason`` says what was expected and what came.
    ``sender``: the stream sender it came from, where known; ``lost``: for a loss report, how many
    of that sender's frames never arrived (the session records both, and a resumed session reads
    them back for its accounting: :class:`hypotest.live.zmqstream.ZmqSource` ``received``,
    ``reported_lost``)."""

    source_id: int | None
    timestamp: float
    reason: str
    sender: str | None = None
    lost: int | None = None


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """Connection state of a source. ``end``: the source has no more frames (replay finished)."""

    kind: Literal["connected", "disconnected", "reconnected", "end"]
    timestamp: float
    detail: str = ""


SourceEvent = RawFrame | BadMessage | StreamEvent


@runtime_checkable
class FrameSource(Protocol):
    """The one interface the live loop reads frames through.

    ``poll`` is called from the session's ingest thread; ``apply_beam`` may be called from another
    thread (the operator's click) and must be thread-safe.
    """

    name: str
    #: whether :meth:`apply_beam` can reach the microscope (a control channel exists); a session
    #: on a source without one turns auto-apply off (:func:`takes_control`)
    controllable: bool

    def poll(self, timeout: float) -> list[SourceEvent]:
        """Wait at most ``timeout`` [s] and return what arrived, oldest first (possibly empty).

        After a ``StreamEvent("end")`` every further call returns ``[]``.
        """
        ...

    def apply_beam(self, beam: dict) -> bool:
        """Send a beam condition (BEAM.json form) to the microscope's control channel.

        Returns True (or a truthy report of what was set, with ``as_dict()``) only when the beam
        reached the microscope; False when the source has no control channel (file replay) or
        could not send it; raises :class:`BeamRefused` when the microscope cannot do it. A beam
        not sent is never assumed for the frames that follow.
        """
        ...

    def close(self) -> None:
        """Release sockets and files; idempotent."""
        ...


def takes_control(source) -> bool:
    """Whether ``source`` can take beam commands (its ``controllable``; a source that does not say
    is asked through ``apply_beam`` and trusted only for the beams it reports sent)."""
    return bool(getattr(source, "controllable", True))
