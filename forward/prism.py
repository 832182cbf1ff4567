"""PRISM: STEM from a scattering matrix built once per specimen (Ophus, Adv. Struct. Chem.
Imaging 3 (2017) 13).

The probe is a sum of plane waves ``exp(2 pi i k.r)`` with ``k`` on the reciprocal lattice of a
cell ``interpolation`` times smaller than the simulation cell (Ophus 2017, eqs. 4-7, sec. "PRISM
interpolation"), restricted to the expansion aperture. Each plane wave goes once through the
multislice: these exit waves are the S-matrix ``S_k(r)``. A probe at ``r0`` with aberrations
``chi`` is then

    psi(r; r0) = sum_k c_k exp(-2 pi i k.r0) S_k(r),   c_k = A(k) exp(-i chi(k)) / norm

evaluated in a window of ``1/interpolation`` of the cell around ``r0`` (Ophus 2017, eq. 9 and
Fig. 3), so new aberrations, probe positions and scan windows cost no multislice. The
conventions are abTEM 1.0.11's (``abtem.prism.s_matrix``): plane waves scaled by
``f² / (nx ny)`` with ``f = fx fy``, exit waves downsampled in Fourier space to the antialias
cutoff (rounded up to a multiple of the interpolation), windows cornered at
``rint(r0 / sampling - window // 2)``, coefficients normalised to ``sum |c_k|² = 1`` so detector
values are fractions of the beam.

Layouts: S-matrix ``[n_waves, mx, my]`` (real space, ``[x, y]``); outputs as
:mod:`forward.stem` (``[sx, sy]``, ``[sx, sy, segment]``, ``[sx, sy, kx, ky]``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from forward._pytree import pytree_dataclass, static_field
from forward.beam import BeamCondition
from forward.constants import wavelength
from forward.detectors import cbed_gpts, check_detector, make_detector_fn
from forward.errors import InputError
from forward.grid import Grid
from forward.potentials import make_potential_fn, slice_count
from forward.probe import antialias_cutoff_angle
from forward.propagation import fresnel_propagator, multislice, transmission_function
from forward.specimen import Specimen
from forward.stem import Scan, _check_cell, _sharded_map, _species, scan_positions, source_blur
from forward.transfer import aberration_phase, aperture

__all__ = ["SMatrix", "PrismFunctions", "make_prism", "prism_wave_vectors"]


@pytree_dataclass
class SMatrix:
    """A built scattering matrix.

    Attributes:
        array: ``[n_waves, mx, my]`` complex64 exit waves on the downsampled grid.
        wave_vectors: ``[n_waves, 2]`` plane-wave vectors (kx, ky) [1/Å].
        grid: the downsampled grid of ``array`` (static; same extent as the simulation).
        window_gpts: probe window ``(wx, wy)`` = downsampled gpts / interpolation (static).
        interpolation: ``(fx, fy)`` (static).
        energy: beam energy [eV] the S-matrix was built for (static).
        expansion_cutoff: semiangle of the plane-wave expansion [mrad] (static).
    """

    array: jnp.ndarray
    wave_vectors: jnp.ndarray
    grid: Grid = static_field()
    window_gpts: tuple[int, int] = static_field()
    interpolation: tuple[int, int] = static_field()
    energy: float = static_field()
    expansion_cutoff: float = static_field()


class PrismFunctions(NamedTuple):
    """``build(specimen) -> SMatrix`` (the multislice, once) and ``apply(smatrix, beam, scan)``."""

    build: Callable[[Specimen], SMatrix]
    apply: Callable[[SMatrix, BeamCondition, Scan], jnp.ndarray]


def _downsampled_gpts(grid: Grid, interpolation: tuple[int, int]) -> tuple[int, int]:
    """abTEM's ``SMatrix.downsampled_gpts``: antialias cutoff gpts rounded up to the interpolation."""
    cut = cbed_gpts(grid, "cutoff")
    out = tuple(n + (-n) % f for n, f in zip(cut, interpolation))
    return tuple(min(o, g) for o, g in zip(out, grid.gpts))


def prism_wave_vectors(
    grid: Grid, energy: float, expansion_cutoff: float, interpolation: tuple[int, int], soft: bool = True
) -> np.ndarray:
    """Plane-wave vectors ``[n_waves, 2]`` [1/Å] of the PRISM expansion (abTEM 1.0.11 ``wave_vectors``).

    The reciprocal lattice of the probe window, ``k = (n fx / Lx, m fy / Ly)``, where the window
    aperture of ``expansion_cutoff`` [mrad] is nonzero (soft edge: ``alpha < cutoff + d(phi)/2``).
    """
    wgpts = tuple(g // f for g, f in zip(grid.gpts, interpolation))
    lam = float(wavelength(float(energy)))
    n = np.fft.fftfreq(wgpts[0], 1.0 / wgpts[0])
    m = np.fft.fftfreq(wgpts[1], 1.0 / wgpts[1])
    kx = n / grid.extent[0] * interpolation[0]
    ky = m / grid.extent[1] * interpolation[1]
    alpha = np.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2) * lam
    phi = np.arctan2(ky[None, :], kx[:, None])
    cut = expansion_cutoff * 1e-3
    if soft:
        d = lam * np.asarray(interpolation, float) / np.asarray(grid.extent)
        edge = np.sqrt((np.cos(phi) * d[0]) ** 2 + (np.sin(phi) * d[1]) ** 2)
        inside = alpha < cut + 0.5 * edge
    else:
        inside = alpha <= cut
    inside[0, 0] = True
    ii, jj = np.nonzero(inside)
    return np.stack([kx[ii], ky[jj]], axis=-1).astype(np.float32)


def make_prism(
    grid: Grid,
    thickness: float,
    slice_thickness: float,
    *,
    energy: float,
    expansion_cutoff: float,
    interpolation: int | tuple[int, int] = 1,
    parametrization: str = "lobato",
    species=None,
    soft_aperture: bool = True,
    build_batch: int = 16,
    tile: tuple[int, int] = (4, 4),
    cbed_crop: str = "cutoff",
    potential_fn: Callable[[Specimen], jnp.ndarray] | None = None,
    devices=None,
) -> PrismFunctions:
    """PRISM build/apply functions for one grid, thickness, energy and expansion.

    Args:
        grid: simulation grid; gpts must be divisible by ``interpolation``.
        thickness, slice_thickness: specimen thickness and requested slice thickness [Å].
        energy: beam energy [eV] (static: it fixes the plane waves).
        expansion_cutoff: semiangle of the plane-wave expansion [mrad]; probes with
            ``semiangle_cutoff <= expansion_cutoff`` can be formed from the S-matrix.
        interpolation: PRISM interpolation factor ``f`` (or ``(fx, fy)``); 1 reproduces the
            multislice.
        parametrization, species, potential_fn: as :func:`forward.stem.make_stem_simulator`.
        soft_aperture: abTEM's soft aperture edge for the probe coefficients.
        build_batch: plane waves per multislice batch while building.
        tile: scan positions per reduction block ``(bx, by)``: one matrix product per block over
            the union of its windows (abTEM's ``minimum_crop``), then one crop per position.
        cbed_crop: 4D-STEM crop of the window patterns.
        devices: optional JAX devices to split the plane-wave batches (build) and position
            blocks (apply) over, as :func:`forward.stem.make_stem_simulator`.

    Returns:
        :class:`PrismFunctions` ``(build, apply)``. ``build(specimen) -> SMatrix``;
        ``apply(smatrix, beam, scan) -> [sx, sy, ...]`` by ``beam.detector.mode``, with
        ``beam.source_size`` applied as in :mod:`forward.stem`. Both are jit/vmap/grad-able
        (``apply`` in the aberrations, positions and source size; ``build`` in atom positions).
    """
    f = (interpolation, interpolation) if np.ndim(interpolation) == 0 else tuple(interpolation)
    if len(f) != 2 or any(isinstance(x, bool) or int(x) != x or x < 1 for x in f):
        raise InputError(f"interpolation must be a positive integer or a pair of them, got {interpolation!r}")
    f = (int(f[0]), int(f[1]))
    if any(g % x for g, x in zip(grid.gpts, f)):
        raise InputError(
            f"grid gpts {grid.gpts} must be divisible by the interpolation {f}: choose gpts as a "
            "multiple of the interpolation (e.g. make_grid(gpts=...)) so the probe windows tile the cell"
        )
    if len(tuple(tile)) != 2 or any(isinstance(t, bool) or int(t) != t or t < 1 for t in tile):
        raise InputError(f"tile must be a pair of positive integers (bx, by), got {tile!r}")
    e = float(energy)
    cut = float(expansion_cutoff)
    aa = antialias_cutoff_angle(grid, e)
    if not 0 < cut < aa:
        raise InputError(
            f"expansion_cutoff must be in (0, {aa:.4g}) mrad (the antialias cutoff of this grid at "
            f"{e / 1e3:g} kV), got {cut:g} mrad; refine the sampling or lower the cutoff"
        )
    default_fn = make_potential_fn(grid, thickness, slice_thickness, parametrization, species=species)
    _, dz = slice_count(float(thickness), float(slice_thickness))
    custom = potential_fn is not None
    if devices is not None and len(devices) < 1:
        raise InputError("devices must be None or a non-empty sequence of jax devices")
    n_dev = 1 if devices is None else len(devices)
    mesh = None if devices is None else jax.sharding.Mesh(np.asarray(devices), ("blocks",))
    lam = float(wavelength(e))
    ds_gpts = _downsampled_gpts(grid, f)
    ds_grid = Grid(gpts=ds_gpts, sampling=(grid.extent[0] / ds_gpts[0], grid.extent[1] / ds_gpts[1]))
    window = (ds_gpts[0] // f[0], ds_gpts[1] // f[1])
    window_grid = Grid(gpts=window, sampling=ds_grid.sampling)
    # abTEM 1.0.11 crops PRISM patterns with the window gpts at the *simulation* sampling
    # (``adjusted_antialias_cutoff_gpts``); kept so 4D-STEM agrees with it.
    # A crop given as an angle [mrad] counts the window's own diffraction pixels (lambda / window
    # extent) within it.
    if isinstance(cbed_crop, str):
        cbed_shape = cbed_gpts(Grid(gpts=window, sampling=grid.sampling), cbed_crop)
    else:
        cbed_shape = cbed_gpts(window_grid, cbed_crop, energy=e)
    kvec = prism_wave_vectors(grid, e, cut, f, soft=soft_aperture)
    n_waves = kvec.shape[0]
    nb = -(-n_waves // (int(build_batch) * n_dev)) * n_dev
    ix = np.mod(np.round(np.fft.fftfreq(ds_gpts[0]) * ds_gpts[0]).astype(int), grid.gpts[0])
    iy = np.mod(np.round(np.fft.fftfreq(ds_gpts[1]) * ds_gpts[1]).astype(int), grid.gpts[1])
    x = np.arange(grid.gpts[0], dtype=np.float32) * np.float32(grid.sampling[0])
    y = np.arange(grid.gpts[1], dtype=np.float32) * np.float32(grid.sampling[1])
    scale = np.float32(f[0] * f[1] / (grid.gpts[0] * grid.gpts[1]))

    def run_build(pot_fn, specimen: Specimen) -> SMatrix:
        trans = transmission_function(pot_fn(specimen), e, grid=grid)
        prop = fresnel_propagator(grid, lam, dz)
        k = jnp.asarray(np.concatenate([kvec, np.repeat(kvec[-1:], nb * build_batch - n_waves, 0)]))

        def one_batch(kb, trans, prop):
            ex = jnp.exp(2j * jnp.pi * kb[:, 0:1] * x[None, :])  # [b, nx]
            ey = jnp.exp(2j * jnp.pi * kb[:, 1:2] * y[None, :])  # [b, ny]
            waves = (ex[:, :, None] * ey[:, None, :] * scale).astype(jnp.complex64)
            psi = multislice(waves, trans[:-1], prop)
            exit_k = jnp.fft.fft2(psi * trans[-1][None], axes=(-2, -1)) * prop[None]
            return jnp.fft.ifft2(exit_k[:, ix[:, None], iy[None, :]], axes=(-2, -1))

        arr = _sharded_map(one_batch, k.reshape(nb, int(build_batch), 2), (trans, prop), mesh)
        arr = arr.reshape((nb * int(build_batch),) + ds_gpts)[:n_waves]
        return SMatrix(
            array=arr.astype(jnp.complex64), wave_vectors=jnp.asarray(kvec), grid=ds_grid,
            window_gpts=window, interpolation=f, energy=e, expansion_cutoff=cut,
        )  # fmt: skip

    @functools.lru_cache(maxsize=8)
    def compiled_build(spc):
        pot_fn = potential_fn if custom else (
            default_fn if spc == species else make_potential_fn(grid, thickness, slice_thickness, parametrization, species=spc)
        )  # fmt: skip
        return jax.jit(functools.partial(run_build, pot_fn))

    def build(specimen: Specimen) -> SMatrix:
        _check_cell(grid, specimen)
        return compiled_build(species if custom else _species(specimen, species))(specimen)

    def run_apply(scan_gpts, tiles, region, smatrix: SMatrix, beam: BeamCondition, scan: Scan):
        bx, by = tiles
        detect = make_detector_fn(window_grid, beam.detector, cbed_shape=cbed_shape)
        kv = smatrix.wave_vectors
        alpha = jnp.sqrt(kv[:, 0] ** 2 + kv[:, 1] ** 2) * lam
        phi = jnp.arctan2(kv[:, 1], kv[:, 0])
        da = (lam / window_grid.extent[0] * 1e3, lam / window_grid.extent[1] * 1e3)
        amp = aperture(alpha, beam.semiangle_cutoff, soft=soft_aperture, phi=phi, angular_sampling=da)
        c = amp * jnp.exp(-1j * aberration_phase(alpha, phi, lam, beam.aberrations))
        c = (c / jnp.sqrt(jnp.sum(jnp.abs(c) ** 2))).astype(jnp.complex64)
        nx_t, ny_t = -(-scan_gpts[0] // bx), -(-scan_gpts[1] // by)
        padded = Scan(
            start=scan.start,
            end=jnp.asarray(scan.start) + scan.sampling * jnp.asarray([nx_t * bx, ny_t * by], jnp.float32),
            gpts=(nx_t * bx, ny_t * by),
        )
        pos = scan_positions(padded).reshape(nx_t, bx, ny_t, by, 2).transpose(0, 2, 1, 3, 4)
        pos = pos.reshape(nx_t * ny_t, bx * by, 2)
        n_tiles = nx_t * ny_t
        n_pad = -(-n_tiles // n_dev) * n_dev - n_tiles
        pos = jnp.concatenate([pos, jnp.broadcast_to(pos[-1:], (n_pad,) + pos.shape[1:])])
        half = jnp.asarray([window[0] // 2, window[1] // 2], jnp.float32)
        s_ds = jnp.asarray(ds_grid.sampling, jnp.float32)
        mx, my = ds_gpts
        B = bx * by
        # Real and imaginary parts apart (two real matrix products beat XLA's complex one on
        # CPUs), each padded once by periodic wrap so a window is a contiguous dynamic slice
        # (much cheaper than a modular gather per block).
        pad = ((0, 0), (0, region[0]), (0, region[1]))
        parts = tuple(jnp.pad(a, pad, mode="wrap") for a in (jnp.real(smatrix.array), jnp.imag(smatrix.array)))

        def one_tile(p, parts, c, kv, beam, lam):
            corners = jnp.rint(p / s_ds[None] - half[None]).astype(jnp.int32)  # [B, 2]
            c0 = jnp.min(corners, axis=0)
            start = (0, jnp.mod(c0[0], mx), jnp.mod(c0[1], my))
            sub_r, sub_i = (
                jax.lax.dynamic_slice(a, start, (a.shape[0],) + region).reshape(a.shape[0], -1) for a in parts
            )
            coef = c[None, :] * jnp.exp(-2j * jnp.pi * (p @ kv.T))  # [B, K]
            cc = jnp.concatenate([jnp.real(coef), jnp.imag(coef)], axis=0).astype(jnp.float32)
            a, b = cc @ sub_r, cc @ sub_i  # [2B, Ux Uy]
            t = jax.lax.complex(a[:B] - b[B:], a[B:] + b[:B]).reshape((B,) + region)
            off = jnp.clip(corners - c0[None], 0, (jnp.asarray(region) - jnp.asarray(window))[None])
            win = jax.vmap(lambda a, o: jax.lax.dynamic_slice(a, (o[0], o[1]), window))(t, off)
            fk = jnp.fft.fft2(win, axes=(-2, -1))
            return detect(jnp.real(fk) ** 2 + jnp.imag(fk) ** 2, beam.detector, lam)

        out = _sharded_map(one_tile, pos, (parts, c, kv, beam, lam), mesh)[:n_tiles]  # [tiles, B, ...]
        rest = out.shape[2:]
        out = out.reshape((nx_t, ny_t, bx, by) + rest)
        out = jnp.moveaxis(out, 2, 1).reshape((nx_t * bx, ny_t * by) + rest)
        out = out[: scan_gpts[0], : scan_gpts[1]]
        return source_blur(out, beam.source_size, scan.sampling)

    @functools.lru_cache(maxsize=16)
    def compiled_apply(scan_gpts, tiles, region):
        return jax.jit(functools.partial(run_apply, scan_gpts, tiles, region))

    def apply(smatrix: SMatrix, beam: BeamCondition, scan: Scan):
        if not isinstance(scan, Scan):
            raise InputError(f"scan must be a forward.stem.Scan (see make_scan), got {type(scan).__name__}")
        _validate(beam, e, cut, grid)
        step = _concrete_step(scan)
        if step is None:  # traced scan window: one position per block, region = window
            tiles, region = (1, 1), window
        else:
            tiles = (min(int(tile[0]), scan.gpts[0]), min(int(tile[1]), scan.gpts[1]))
            region = tuple(
                w + int(math.ceil((b - 1) * st / s)) + 2
                for w, b, st, s in zip(window, tiles, step, ds_grid.sampling)
            )
        return compiled_apply(scan.gpts, tiles, region)(smatrix, beam, scan)

    return PrismFunctions(build=build, apply=apply)


def _concrete_step(scan: Scan):
    if isinstance(scan.start, jax.core.Tracer) or isinstance(scan.end, jax.core.Tracer):
        return None
    return tuple(float(v) for v in np.asarray(scan.sampling))


def _validate(beam: BeamCondition, energy: float, cutoff: float, grid: Grid) -> None:
    if isinstance(beam.energy, jax.core.Tracer) or isinstance(beam.semiangle_cutoff, jax.core.Tracer):
        return
    if abs(float(beam.energy) - energy) > 1e-6 * energy:
        raise InputError(
            f"the S-matrix was built for {energy:g} eV but the beam has {float(beam.energy):g} eV: "
            "build a new S-matrix (make_prism(energy=...)) for another energy"
        )
    sa = float(beam.semiangle_cutoff)
    if not 0 < sa <= cutoff + 1e-9:
        raise InputError(
            f"probe semiangle_cutoff {sa:g} mrad must be in (0, {cutoff:g}] mrad, the S-matrix "
            "expansion cutoff; rebuild with a larger expansion_cutoff"
        )
    if not isinstance(beam.tilt, jax.core.Tracer) and np.any(np.asarray(beam.tilt) != 0):
        raise InputError(
            f"PRISM builds its S-matrix for an untilted beam, got tilt {np.asarray(beam.tilt).tolist()} "
            "mrad; use forward.stem.make_stem_simulator for a tilted probe"
        )
    if not isinstance(beam.detector.outer, jax.core.Tracer):
        check_detector(grid, beam.detector, energy)
