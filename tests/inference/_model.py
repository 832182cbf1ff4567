"""A small differentiable analytic image model standing in for the multislice in inference tests.

Gaussian atomic columns on a periodic cell, sampled at pixel corners (pixel (0, 0) at the cell
origin, arrays ``[x, y]``). It follows the ``simulate_fn(params, beam) -> intensity [nx, ny]``
contract of :mod:`inference.noise` (intensity relative to the incident beam):

    I(r) = BG + A(t) * sum_j occ_j * (s0² / s²) * exp(-|r - r_j - t * tilt|² / (2 s²))
    s²   = s0² + (KAPPA * (defocus_beam + defocus_offset))²
    A(t) = 1 - exp(-t / T_ABS)

so defocus blurs (and, conserving each column's integrated signal, dims) the columns, thickness
scales the contrast and beam tilt shifts the columns by ``t * tilt`` (small-angle projection).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from forward import make_beam

BG = 0.1  # flat intensity between columns (fraction of the incident beam)
S0 = 0.5  # in-focus column width [Å]
KAPPA = 2e-3  # blur per defocus [Å/Å]
T_ABS = 40.0  # thickness scale of the contrast [Å]
SAMPLING = 0.4  # [Å/pixel]
GPTS = (16, 16)
CELL = (GPTS[0] * SAMPLING, GPTS[1] * SAMPLING)  # 6.4 Å
BASE = np.array([[1.6, 1.6], [4.8, 1.6], [1.6, 4.8], [4.8, 4.8]])  # [n, 2] Å


def make_simulate_fn(gpts=GPTS, sampling=SAMPLING):
    """``simulate(params, beam) -> [nx, ny]``; params: positions [n, 2] Å, occupancy [n],
    defocus (offset added to the beam's, [Å]), thickness [Å], tilt ``[2]`` (offset added to
    the beam's, [mrad])."""
    nx, ny = gpts
    cell = jnp.asarray([nx * sampling, ny * sampling], jnp.float32)
    x = jnp.arange(nx, dtype=jnp.float32) * sampling
    y = jnp.arange(ny, dtype=jnp.float32) * sampling

    def simulate(params, beam):
        df = -jnp.asarray(beam.aberrations.C10, jnp.float32) + params["defocus"]
        t = params["thickness"]
        s2 = S0**2 + (KAPPA * df) ** 2
        amp = (1.0 - jnp.exp(-t / T_ABS)) * (S0**2 / s2)
        tilt = (jnp.asarray(beam.tilt, jnp.float32) + params["tilt"]) * 1e-3
        pos = params["positions"] + t * tilt[None, :]
        # periodic minimum-image distance per axis
        dx = x[None, :] - pos[:, 0:1]
        dy = y[None, :] - pos[:, 1:2]
        dx = dx - cell[0] * jnp.round(dx / cell[0])
        dy = dy - cell[1] * jnp.round(dy / cell[1])
        gx = jnp.exp(-(dx**2) / (2 * s2))  # [n, nx]
        gy = jnp.exp(-(dy**2) / (2 * s2))  # [n, ny]
        cols = jnp.einsum("n,nx,ny->xy", params["occupancy"], gx, gy)
        return BG + amp * cols

    return simulate


def base_params(positions=BASE, occupancy=None, defocus=0.0, thickness=80.0):
    n = len(positions)
    return {
        "positions": jnp.asarray(positions, jnp.float32),
        "occupancy": jnp.asarray(np.ones(n) if occupancy is None else occupancy, jnp.float32),
        "defocus": jnp.asarray(defocus, jnp.float32),
        "thickness": jnp.asarray(thickness, jnp.float32),
        "tilt": jnp.zeros((2,), jnp.float32),
    }


def library_params():
    """Six hypotheses: pristine, two vacancies, a half-occupied column, a displaced column, a
    column displaced the other way."""
    hyps = [base_params()]
    for k in (0, 3):
        occ = np.ones(4)
        occ[k] = 0.0
        hyps.append(base_params(occupancy=occ))
    occ = np.ones(4)
    occ[1] = 0.5
    hyps.append(base_params(occupancy=occ))
    for d in (0.5, -0.5):
        pos = BASE.copy()
        pos[2, 0] += d
        hyps.append(base_params(positions=pos))
    return hyps


def beam(defocus=0.0, dose=100.0, tilt=(0.0, 0.0)):
    return make_beam(300e3, defocus=defocus, dose=dose, tilt=tilt)


def library_images(simulate, beam_):
    """``[H, nx, ny]`` cached images of :func:`library_params` under ``beam_``."""
    return jnp.stack([simulate(p, beam_) for p in library_params()])


def pixel_area(sampling=SAMPLING):
    return sampling * sampling


def exposure(dose, sampling=SAMPLING):
    return dose * pixel_area(sampling)


jax.config.update("jax_numpy_rank_promotion", "raise")
