"""A recorded frame: counts and the beam condition it was taken under."""

from __future__ import annotations

import numpy as np

from forward import BeamCondition, InputError, pytree_dataclass, static_field
from forward._validate import as_float_array

__all__ = ["Frame", "make_frame"]


@pytree_dataclass
class Frame:
    """Counts recorded under one beam condition.

    Attributes:
        counts: ``[nx, ny]`` (HRTEM, STEM annular), ``[sx, sy, segment]`` (segmented) or
            ``[sx, sy, kx, ky]`` (4D-STEM) [counts], indexed ``[x, y]``; pixel ``(0, 0)`` sits at the cell origin.
        beam: the :class:`forward.BeamCondition` it was recorded under.
        sampling: pixel (or scan-step) size ``(dx, dy)`` [Å] (static).
    """

    counts: np.ndarray
    beam: BeamCondition
    sampling: tuple[float, float] = static_field()


#: Array layout of the counts per detector mode.
_LAYOUT = {
    "hrtem": (2, "[nx, ny]"),
    "stem_annular": (2, "[sx, sy]"),
    "stem_segmented": (3, "[sx, sy, segment]"),
    "4dstem": (4, "[sx, sy, kx, ky]"),
}


def make_frame(counts, beam: BeamCondition, sampling) -> Frame:
    """A validated :class:`Frame`; negative counts are accepted only with read noise."""
    if not isinstance(beam, BeamCondition):
        raise InputError(f"beam must be a forward.BeamCondition (see make_beam), got {type(beam).__name__}")
    c = np.asarray(counts)
    if c.dtype.kind not in "uif":
        raise InputError(f"frame counts must be numeric, got dtype {c.dtype}")
    want, layout = _LAYOUT[beam.detector.mode]
    if c.ndim != want:
        raise InputError(
            f"a {beam.detector.mode} frame must be {want}-D {layout}, got shape {list(c.shape)}"
        )
    if min(c.shape) < 1:
        raise InputError(f"frame is empty: shape {list(c.shape)}")
    c = as_float_array(c, "frame counts")
    if c.min() < 0 and float(beam.detector.read_noise) == 0:
        i = tuple(int(k) for k in np.unravel_index(np.argmin(c), c.shape))
        raise InputError(
            f"frame counts must be >= 0 without read noise, got {c.min():g} at pixel {i}; "
            "subtract no dark level twice, or set detector read_noise"
        )
    s = as_float_array(sampling, "frame sampling")
    s = np.broadcast_to(s, (2,)) if s.ndim == 0 else s
    if s.shape != (2,) or (s <= 0).any():
        raise InputError(f"frame sampling must be one or two positive sizes [Å/pixel], got {sampling!r}")
    return Frame(counts=c, beam=beam, sampling=(float(s[0]), float(s[1])))
