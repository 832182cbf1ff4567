"""Entrance waves for HRTEM: the plane wave (with beam tilt).

A plane wave is 1 everywhere in real space (abTEM 1.0.11 ``PlaneWave(normalize=False)``), so
``|psi|^2`` is the intensity relative to the incident beam. Beam tilt follows abTEM's
tilted-frame convention: the wave is written in coordinates that move with the beam, so the tilt
enters as a lateral shift ``dz tan(t)`` per slice in the Fresnel propagator
(:func:`forward.propagation.fresnel_propagator`), not as a phase ramp on the wave; a ramp
``exp(2 pi i k_t.r)`` could only represent tilts whose ``k_t = tan(t) / lambda`` falls on the
Fourier grid.
"""

from __future__ import annotations

import jax.numpy as jnp

from forward.grid import Grid

__all__ = ["plane_wave"]


def plane_wave(grid: Grid) -> jnp.ndarray:
    """A plane wave ``[nx, ny]`` complex64 of unit amplitude (real space)."""
    return jnp.ones(grid.gpts, dtype=jnp.complex64)

