"""Fresnel propagation, transmission functions and the multislice loop (DESIGN 3.1, 3.2).

Waves are complex arrays indexed ``[..., x, y]`` in real space (leading axes are batches, e.g. STEM
probe positions). Each slice: transmit, then propagate, including after the last slice, as abTEM
1.0.11 (Kirkland 2010, sec. 6.4, eq. 6.92):

    psi_{n+1} = IFFT[ P(k, dz) FFT[ t_n(r) psi_n(r) ] ]

with the Fresnel propagator ``P = exp(-i pi lambda dz k^2)`` (Kirkland 2010, eq. 6.90) times the
tilt phase and the 2/3 antialias aperture, and ``t_n = exp(i sigma V_n)`` band-limited by the same
aperture.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from forward.constants import interaction_parameter
from forward.grid import Grid
from forward.reciprocal import antialias_mask, spatial_frequencies

__all__ = [
    "fresnel_propagator",
    "transmission_function",
    "multislice",
    "multislice_potential",
    "multislice_to_depth",
    "slice_fractions",
    "antialias",
]


def fresnel_propagator(grid: Grid, wavelength, dz, tilt=(0.0, 0.0)) -> jnp.ndarray:
    """Fourier-space Fresnel propagator over ``dz`` [Å], ``[nx, ny]`` complex64.

    ``P(k) = A(k) exp(-i pi lambda dz |k|^2) exp(-2 pi i dz (kx tan(tx) + ky tan(ty)))`` where ``A``
    is the antialias aperture and ``(tx, ty)`` the beam tilt; the tilt factor shifts the wave
    laterally by ``dz tan(t)`` per slice (abTEM 1.0.11 ``_apply_tilt_to_fresnel_propagator_array``;
    Kirkland 2010, eq. 6.99 in the small-angle limit).

    Args:
        grid: simulation grid.
        wavelength: electron wavelength [Å] (may be traced).
        dz: propagation distance [Å] (may be traced, negative propagates backwards).
        tilt: beam tilt ``(tx, ty)`` [mrad] (may be traced).
    """
    kx, ky = spatial_frequencies(grid)
    k2 = kx[:, None] ** 2 + ky[None, :] ** 2
    lam = jnp.asarray(wavelength, dtype=jnp.float32)
    dz = jnp.asarray(dz, dtype=jnp.float32)
    t = jnp.asarray(tilt, dtype=jnp.float32)
    tan_x = jnp.tan(t[0] * 1e-3)
    tan_y = jnp.tan(t[1] * 1e-3)
    phase = -jnp.pi * lam * dz * k2 - 2.0 * jnp.pi * dz * (kx[:, None] * tan_x + ky[None, :] * tan_y)
    return jax.lax.complex(jnp.cos(phase), jnp.sin(phase)) * antialias_mask(grid)


def antialias(array, grid: Grid | None = None) -> jnp.ndarray:
    """Band-limit ``array`` ``[..., nx, ny]`` by the antialias aperture (FFT, mask, inverse FFT).

    ``grid`` gives the pixel sizes; without it square pixels are assumed (the aperture then depends
    on ``gpts`` only).
    """
    a = jnp.asarray(array)
    if grid is None:
        grid = Grid(gpts=(a.shape[-2], a.shape[-1]), sampling=(1.0, 1.0))
    mask = antialias_mask(grid)
    mask = mask.reshape((1,) * (a.ndim - 2) + mask.shape)
    return jnp.fft.ifft2(jnp.fft.fft2(a, axes=(-2, -1)) * mask, axes=(-2, -1))


def transmission_function(potential_slices, energy, *, grid: Grid | None = None) -> jnp.ndarray:
    """Antialiased transmission functions ``exp(i sigma V)``, ``[n_slices, nx, ny]`` complex64.

    Kirkland 2010, eq. 6.86 (weak-phase-free, strong phase object per slice), with sigma the
    relativistic interaction parameter (:func:`forward.constants.interaction_parameter`).

    Args:
        potential_slices: projected potential ``[..., nx, ny]`` [V Å].
        energy: electron energy [eV] (may be traced).
        grid: the grid of the slices, for the antialias aperture with non-square pixels; ``None``
            assumes square pixels.
    """
    sigma = interaction_parameter(jnp.asarray(energy, dtype=jnp.float32))
    phase = sigma * jnp.asarray(potential_slices, dtype=jnp.float32)
    t = jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
    return antialias(t, grid).astype(jnp.complex64)


def multislice(wave, transmissions, propagator, checkpoint: bool = False) -> jnp.ndarray:
    """Exit wave of the multislice: for each slice, transmit then propagate (DESIGN 3.1).

    Args:
        wave: entrance wave in real space ``[..., nx, ny]`` complex (leading batch axes allowed).
        transmissions: ``[n_slices, nx, ny]`` complex transmission functions
            (:func:`transmission_function`).
        propagator: ``[nx, ny]`` Fourier-space propagator of one slice (:func:`fresnel_propagator`).
        checkpoint: recompute each slice in the backward pass instead of storing it
            (``jax.checkpoint``), so reverse-mode memory does not grow with the batch x slices.

    Returns:
        exit wave ``[..., nx, ny]`` complex64 in real space.
    """
    psi = jnp.asarray(wave).astype(jnp.complex64)
    lead = (1,) * (psi.ndim - 2)
    prop = jnp.asarray(propagator).astype(jnp.complex64).reshape(lead + psi.shape[-2:])

    def step(psi, t):
        t = t.reshape(lead + t.shape)
        psi = jnp.fft.ifft2(jnp.fft.fft2(psi * t, axes=(-2, -1)) * prop, axes=(-2, -1))
        return psi, None

    if checkpoint:
        step = jax.checkpoint(step)
    psi, _ = jax.lax.scan(step, psi, jnp.asarray(transmissions).astype(jnp.complex64))
    return psi


def _wave_setup(wave, grid: Grid | None):
    """The wave as complex64, its leading batch shape as ones, its (nx, ny), the grid (square
    pixels when None) and the 2/3 antialias mask of that grid."""
    psi = jnp.asarray(wave).astype(jnp.complex64)
    nx, ny = psi.shape[-2:]
    if grid is None:
        grid = Grid(gpts=(nx, ny), sampling=(1.0, 1.0))
    return psi, (1,) * (psi.ndim - 2), (nx, ny), grid, antialias_mask(grid)


def multislice_potential(
    wave, potential_slices, energy, propagator, *, grid: Grid | None = None, checkpoint: bool = False
) -> jnp.ndarray:
    """:func:`multislice` fused with :func:`transmission_function`, one slice at a time.

    Same result as ``multislice(wave, transmission_function(V, energy, grid=grid), propagator)``,
    but the transmission function of each slice is made inside the loop, so the
    ``[n_slices, nx, ny]`` complex array never exists (less memory, better cache use; the FFTs
    are the same: 2 for the antialiased transmission and 2 for the propagation per slice).

    Args:
        wave: entrance wave ``[..., nx, ny]`` complex (real space).
        potential_slices: ``[n_slices, nx, ny]`` projected potential [V Å].
        energy: electron energy [eV] (may be traced).
        propagator: ``[nx, ny]`` Fourier-space propagator of one slice.
        grid: grid of the slices for the antialias aperture (``None``: square pixels).
        checkpoint: ``jax.checkpoint`` each slice.
    """
    psi, lead, (nx, ny), grid, mask = _wave_setup(wave, grid)
    prop = jnp.asarray(propagator).astype(jnp.complex64).reshape(lead + (nx, ny))
    sigma = interaction_parameter(jnp.asarray(energy, dtype=jnp.float32))

    def step(psi, v):
        phase = sigma * v
        t = jnp.fft.ifft2(jnp.fft.fft2(jax.lax.complex(jnp.cos(phase), jnp.sin(phase))) * mask)
        t = t.reshape(lead + (nx, ny))
        psi = jnp.fft.ifft2(jnp.fft.fft2(psi * t, axes=(-2, -1)) * prop, axes=(-2, -1))
        return psi, None

    if checkpoint:
        step = jax.checkpoint(step)
    psi, _ = jax.lax.scan(step, psi, jnp.asarray(potential_slices, dtype=jnp.float32))
    return psi


def slice_fractions(depth, slice_thickness, n_slices: int) -> jnp.ndarray:
    """The part of each slice above the exit plane at ``depth`` [Å]: ``clip(depth / dz - j, 0, 1)``
    for slice ``j`` of thickness ``dz`` [Å], ``[n_slices]`` float32 (1: whole, 0: not crossed;
    piecewise linear, so differentiable in ``depth`` between slice boundaries)."""
    j = jnp.arange(n_slices, dtype=jnp.float32)
    return jnp.clip(jnp.asarray(depth, jnp.float32) / jnp.asarray(slice_thickness, jnp.float32) - j, 0.0, 1.0)


def multislice_to_depth(
    wave, potential_slices, energy, wavelength, slice_thickness, depth, *, tilt=(0.0, 0.0),
    grid: Grid | None = None, checkpoint: bool = False,
) -> jnp.ndarray:  # fmt: skip
    """:func:`multislice_potential` with the exit plane at a continuous ``depth`` [Å].

    Thickness as a differentiable input: slice ``j`` is crossed for a fraction
    ``w_j = clip(depth / dz - j, 0, 1)`` (:func:`slice_fractions`): transmission
    ``exp(i w_j sigma V_j)`` and propagation over ``w_j dz``. Whole slices (``w = 1``) are the
    ordinary multislice step, slices below the exit plane (``w = 0``) leave the wave unchanged,
    and the one partial slice takes that fraction of its projected potential, i.e. the potential
    within the slice is taken as uniform along z (the phase-grating approximation of Kirkland
    2010, eq. 6.86, applied to a slab of thickness ``w dz``; exact at whole slices, continuous in
    ``depth`` with a kink at each slice boundary). At ``depth = n_slices dz`` the result equals
    :func:`multislice_potential`.

    Args:
        wave: entrance wave ``[..., nx, ny]`` complex (real space).
        potential_slices: ``[n_slices, nx, ny]`` projected potential [V Å].
        energy: [eV]; wavelength: [Å] (both may be traced).
        slice_thickness: ``dz`` [Å]; depth: exit-plane depth in ``[0, n_slices dz]`` [Å] (traced).
        tilt: beam tilt ``(tx, ty)`` [mrad].
        grid: grid of the slices (``None``: square pixels); checkpoint: ``jax.checkpoint`` each slice.
    """
    psi, lead, (nx, ny), grid, mask = _wave_setup(wave, grid)
    V = jnp.asarray(potential_slices, dtype=jnp.float32)
    # Phase of the propagator over one whole slice; a fraction w of the slice is w times it.
    kx, ky = spatial_frequencies(grid)
    lam = jnp.asarray(wavelength, dtype=jnp.float32)
    dz = jnp.asarray(slice_thickness, dtype=jnp.float32)
    t = jnp.asarray(tilt, dtype=jnp.float32)
    k2 = kx[:, None] ** 2 + ky[None, :] ** 2
    shift = kx[:, None] * jnp.tan(t[0] * 1e-3) + ky[None, :] * jnp.tan(t[1] * 1e-3)
    chi = -jnp.pi * lam * dz * k2 - 2.0 * jnp.pi * dz * shift  # as fresnel_propagator
    sigma = interaction_parameter(jnp.asarray(energy, dtype=jnp.float32))
    w_all = slice_fractions(depth, dz, V.shape[0])

    def step(psi, vw):
        v, w = vw
        phase = w * sigma * v
        tr = jnp.fft.ifft2(jnp.fft.fft2(jax.lax.complex(jnp.cos(phase), jnp.sin(phase))) * mask)
        prop = jax.lax.complex(jnp.cos(w * chi), jnp.sin(w * chi)) * mask
        new = jnp.fft.fft2(psi * tr.reshape(lead + (nx, ny)), axes=(-2, -1))
        new = jnp.fft.ifft2(new * prop.reshape(lead + (nx, ny)), axes=(-2, -1))
        return jnp.where(w > 0, new, psi), None

    if checkpoint:
        step = jax.checkpoint(step)
    psi, _ = jax.lax.scan(step, psi, (V, w_all))
    return psi
