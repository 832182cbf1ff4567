"""Checks of concrete simulation input with clear errors (InputError: expected, got, how to fix).

They run in the eager wrappers of the simulators and are skipped for traced values (inside
``jit``/``vmap``/``grad`` a value cannot be inspected; validate with ``make_beam``/``make_specimen``
first, which is where DESIGN wants validation).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from forward.beam import ENERGY_RANGE, BeamCondition
from forward.constants import wavelength
from forward.errors import InputError
from forward.grid import Grid
from forward.reciprocal import ANTIALIAS_CUTOFF
from forward.specimen import Specimen

__all__ = ["antialias_angle", "check_energy", "check_angles", "check_specimen_grid", "check_hrtem"]


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer) and not any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x)
    )


def antialias_angle(grid: Grid, energy: float) -> float:
    """The largest scattering angle the grid represents after antialiasing [mrad]:
    ``lambda * (2/3) / (2 max(dx, dy)) * 1e3``."""
    return float(wavelength(float(energy))) * ANTIALIAS_CUTOFF / (2.0 * max(grid.sampling)) * 1e3


def check_energy(energy) -> float:
    """Energy [eV] within :data:`forward.beam.ENERGY_RANGE`."""
    e = float(np.asarray(energy))
    lo, hi = ENERGY_RANGE
    if not (math.isfinite(e) and lo <= e <= hi):
        hint = f"; did you give kV? use {e * 1e3:g} eV" if 0 < e <= 3000 else ""
        raise InputError(f"beam energy must be in [{lo:g}, {hi:g}] eV, got {e:g} eV{hint}")
    return e


def check_angles(grid: Grid, energy: float, angle: float, what: str) -> None:
    """``angle`` [mrad] must lie within the antialiased band of ``grid`` at ``energy``."""
    limit = antialias_angle(grid, energy)
    if angle > limit * (1 + 1e-6):
        need = float(wavelength(float(energy))) * ANTIALIAS_CUTOFF / (2.0 * angle * 1e-3)
        raise InputError(
            f"sampling too coarse for the {what} of {angle:g} mrad: the grid "
            f"(sampling {max(grid.sampling):.4g} Å) represents at most {limit:.4g} mrad at "
            f"{float(energy) / 1e3:g} keV after the 2/3 antialias cutoff; use a sampling of at most "
            f"{need:.4g} Å"
        )


def check_specimen_grid(grid: Grid, specimen: Specimen, thickness: float) -> None:
    """The grid must span the specimen cell in x and y, and the slicing its thickness."""
    c = np.asarray(specimen.cell, dtype=np.float64)
    if c.ndim != 1:
        return  # a batch of specimens: checked one by one by the caller
    ext = np.asarray(grid.extent)
    if not np.allclose(c[:2], ext, rtol=1e-5, atol=1e-4):
        raise InputError(
            f"the grid extent {tuple(round(float(e), 4) for e in ext)} Å does not match the "
            f"specimen cell {tuple(round(float(x), 4) for x in c[:2])} Å in x, y; build the grid "
            "with make_grid(extent=cell[:2], sampling=...) (it rounds gpts to FFT-friendly sizes "
            "and reports the sampling used)"
        )
    if c[2] > thickness * (1 + 1e-6) + 1e-6:
        raise InputError(
            f"the specimen is {c[2]:g} Å thick but the simulator slices {thickness:g} Å: "
            "build the simulator with thickness=specimen.cell[2]"
        )


def check_hrtem(grid: Grid, specimen: Specimen, beam: BeamCondition, thickness: float) -> None:
    """All eager checks of an HRTEM simulation (skipped for traced input)."""
    mode = beam.detector.mode  # static: always concrete
    if mode != "hrtem":
        raise InputError(
            f"the HRTEM simulator records on a camera, but the beam's detector is in mode {mode!r}; "
            "use make_detector('hrtem', mtf=...) (or a STEM simulator for STEM detectors)"
        )
    if _concrete(beam.energy):
        e = check_energy(beam.energy)
        if _concrete(beam.semiangle_cutoff):
            sa = float(np.asarray(beam.semiangle_cutoff))
            if sa > 0:
                check_angles(grid, e, sa, "objective aperture semiangle")
    if _concrete(specimen.cell):
        check_specimen_grid(grid, specimen, thickness)
