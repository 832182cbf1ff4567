"""Checks of concrete input used by the ``make_*`` constructors (never inside jit)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from forward.errors import InputError

__all__ = ["as_float_array", "finite_scalar", "in_range"]


def as_float_array(value: Any, name: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """``value`` as a float64 array of the given shape (``None`` = any length), all finite."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric, got {type(value).__name__}: {exc}") from None
    if shape is not None:
        ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
        if not ok:
            want = "[" + ", ".join("n" if s is None else str(s) for s in shape) + "]"
            raise InputError(f"{name} must have shape {want}, got {list(arr.shape)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f" at index {idx[0] if len(idx) == 1 else idx}" if idx else ""
        raise InputError(f"{name} must be finite, got {arr[bad].flat[0]}{where}")
    return arr


def finite_scalar(value: Any, name: str, unit: str) -> float:
    """``value`` as a finite Python float."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} [{unit}] must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{name} [{unit}] must be finite, got {x}")
    return x


def in_range(
    value: Any, name: str, unit: str, lo: float, hi: float, hint: str = "", lo_open: bool = False
) -> float:
    """A finite scalar within [lo, hi] (or (lo, hi] when ``lo_open``)."""
    x = finite_scalar(value, name, unit)
    below = x <= lo if lo_open else x < lo
    if below or x > hi:
        bracket = "(" if lo_open else "["
        msg = f"{name} must be in {bracket}{lo:g}, {hi:g}] {unit}, got {x:g} {unit}"
        raise InputError(msg + (f"; {hint}" if hint else ""))
    return x
