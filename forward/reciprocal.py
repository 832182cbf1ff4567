"""Reciprocal-space coordinates of a :class:`~forward.grid.Grid` and the antialias aperture.

Arrays are indexed ``[x, y]`` (as abTEM) and in FFT order (``numpy.fft.fftfreq``: zero frequency
first, not centred). Everything here depends only on the static grid, so it is built once per
compiled program (constants under jit).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from forward.grid import Grid

__all__ = [
    "spatial_frequencies",
    "polar_frequencies",
    "antialias_mask",
    "ANTIALIAS_CUTOFF",
    "ANTIALIAS_TAPER",
]

#: Antialias cutoff as a fraction of the Nyquist frequency of the coarser axis (DESIGN 3.2).
ANTIALIAS_CUTOFF = 2.0 / 3.0
#: Width of the cosine taper of the antialias edge, in units of 1/max(sampling) [1/Å]; abTEM's
#: default ``antialias.taper`` (0.01), kept so that our results match abTEM 1.0.11.
ANTIALIAS_TAPER = 0.01


def spatial_frequencies(grid: Grid) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Spatial frequencies (kx ``[nx]``, ky ``[ny]``) [1/Å] in FFT order, float32."""
    kx = np.fft.fftfreq(grid.gpts[0], grid.sampling[0]).astype(np.float32)
    ky = np.fft.fftfreq(grid.gpts[1], grid.sampling[1]).astype(np.float32)
    return jnp.asarray(kx), jnp.asarray(ky)


def _k2(grid: Grid) -> jnp.ndarray:
    kx, ky = spatial_frequencies(grid)
    return kx[:, None] ** 2 + ky[None, :] ** 2


def polar_frequencies(grid: Grid, wavelength) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Scattering angle and azimuth of every Fourier pixel.

    alpha = lambda |k| [rad] (the small-angle relation abTEM uses for its transfer functions),
    phi = atan2(ky, kx) [rad].

    Args:
        grid: the simulation grid.
        wavelength: electron wavelength [Å] (may be traced).

    Returns:
        ``(alpha [nx, ny], phi [nx, ny])``.
    """
    kx, ky = spatial_frequencies(grid)
    k = jnp.sqrt(_k2(grid))
    phi = jnp.arctan2(ky[None, :], kx[:, None])
    return k * jnp.asarray(wavelength, dtype=jnp.float32), phi


def antialias_mask(
    grid: Grid, cutoff: float = ANTIALIAS_CUTOFF, taper: float = ANTIALIAS_TAPER
) -> jnp.ndarray:
    """The antialias aperture ``[nx, ny]`` (float32, values in [0, 1]).

    A disc of radius ``cutoff`` x the Nyquist frequency of the coarser axis,
    ``k_c = cutoff / (2 max(dx, dy))`` [1/Å], with a raised-cosine edge of width
    ``taper / max(dx, dy)``: 1 inside ``k_c - taper``, 0 beyond ``k_c``. Multiplying both the
    propagator and the transmission function by it keeps the products of the multislice free of
    wrap-around aliasing (Kirkland 2010, sec. 6.8; DESIGN 3.2). This is abTEM 1.0.11's
    ``antialias_aperture`` with its default configuration (cutoff 2/3, taper 0.01).
    """
    dmax = max(grid.sampling)
    k_c = cutoff / dmax / 2.0
    w = taper / dmax
    kx = np.fft.fftfreq(grid.gpts[0], grid.sampling[0])
    ky = np.fft.fftfreq(grid.gpts[1], grid.sampling[1])
    r = np.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2)
    if w > 0:
        edge = 0.5 * (1.0 + np.cos(np.pi * (r - k_c + w) / w))
        mask = np.where(r > k_c - w, np.where(r > k_c, 0.0, edge), 1.0)
    else:
        mask = (r < k_c).astype(np.float64)
    return jnp.asarray(mask.astype(np.float32))
