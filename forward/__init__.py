"""forward: physics only, pure JAX. Structures and beam conditions in, frames out.

No Ray, no files, no globals. Arrays on a :class:`Grid` are indexed ``[x, y]``.
"""

from forward._pytree import pytree_dataclass, replace, static_field
from forward.beam import (
    ABERRATION_ALIASES,
    ABERRATION_SYMBOLS,
    DETECTOR_MODES,
    ENERGY_RANGE,
    Aberrations,
    BeamCondition,
    Detector,
    make_aberrations,
    make_beam,
    make_detector,
)
from forward.elements import atomic_number, symbol
from forward.errors import InputError
from forward.grid import Grid, fft_friendly_size, make_grid
from forward.specimen import DEFAULT_MIN_DISTANCE, Specimen, make_specimen, stack_specimens

__all__ = [
    "ABERRATION_ALIASES",
    "ABERRATION_SYMBOLS",
    "DEFAULT_MIN_DISTANCE",
    "DETECTOR_MODES",
    "ENERGY_RANGE",
    "Aberrations",
    "BeamCondition",
    "Detector",
    "Grid",
    "InputError",
    "Specimen",
    "atomic_number",
    "fft_friendly_size",
    "make_aberrations",
    "make_beam",
    "make_detector",
    "make_grid",
    "make_specimen",
    "pytree_dataclass",
    "replace",
    "stack_specimens",
    "static_field",
    "symbol",
]
