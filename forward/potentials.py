"""Projected potentials of a specimen, slice by slice, from atoms placed by exact Fourier phase ramps.

Each atom contributes the infinite projection of its radially symmetric potential (Lobato or
Kirkland parameterisation, :mod:`forward.parametrizations`) to the slice that contains it
(slicing along z, DESIGN 3.5), or, with ``projection="finite"``, its 3D potential integrated over
the z-extent of every slice (:mod:`forward.finite_projection`, closed form). In Fourier space an
atom at ``r_a`` is ``V_z(k) exp(-2 pi i k.r_a)`` exactly, so the potential is a smooth function
of the in-plane positions (differentiable in x and y) and periodic with the cell (the hybrid
Fourier method of Van den Broek et al., Ultramicroscopy 158 (2015) 89, without its real-space
pixel deposition):

    V_slice(r) = 1/(Lx Ly) sum_k sum_{a in slice} V_z,Z_a(k) exp(2 pi i k.(r - r_a))   [V Å]

Arrays are indexed ``[slice, x, y]``. The structure factors are accumulated on the half plane
``ky >= 0`` (the potential is real) in chunks of atoms of one (slice, species) channel, so the
work is ``O(n_atoms * nx * ny)`` whatever the slicing, with static shapes for ``jit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from forward.errors import InputError
from forward.finite_projection import finite_projection_kernel
from forward.grid import Grid
from forward.guards import check_specimen_grid
from forward.parametrizations import PARAMETRIZATIONS, coefficients, projected_scattering_factor
from forward.specimen import Specimen

__all__ = ["make_potential_fn", "slice_count", "PROJECTIONS"]

#: Supported projections: ``"infinite"`` assigns each atom wholly to the slice containing it;
#: ``"finite"`` integrates its 3D potential over every slice it overlaps (abTEM's names).
PROJECTIONS: tuple[str, ...] = ("infinite", "finite")

#: Atoms this many slice thicknesses below a slice boundary count as on it (float32 round-off;
#: abTEM 1.0.11 nudges its bin edges in the same direction).
_BOUNDARY_TOLERANCE = 1e-5


def slice_count(thickness: float, slice_thickness: float) -> tuple[int, float]:
    """``(n_slices, dz)``: the number of slices ``ceil(thickness / slice_thickness)`` and the
    actual equal slice thickness ``thickness / n_slices`` [Å], as abTEM 1.0.11 slices."""
    n = max(1, math.ceil(thickness / slice_thickness - 1e-9))
    return n, thickness / n


def _check_geometry(grid: Grid, thickness, slice_thickness) -> tuple[float, float]:
    if not isinstance(grid, Grid):
        raise InputError(f"grid must be a forward.Grid (see make_grid), got {type(grid).__name__}")
    try:
        t, s = float(thickness), float(slice_thickness)
    except (TypeError, ValueError):
        raise InputError(
            f"thickness and slice_thickness must be numbers [Å], got {thickness!r} and {slice_thickness!r}"
        ) from None
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"thickness must be a positive length [Å], got {thickness!r}")
    if not (math.isfinite(s) and s > 0):
        raise InputError(f"slice_thickness must be a positive length [Å], got {slice_thickness!r}")
    if s > t * (1 + 1e-9):
        raise InputError(
            f"slice_thickness {s:g} Å is thicker than the specimen ({t:g} Å): use slices of at most "
            f"{t:g} Å (typically 1-2 Å, or half a unit cell)"
        )
    return t, s


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _species_of(numbers, species: tuple[int, ...] | None) -> tuple[int, ...]:
    if species is not None:
        return species
    if not _is_concrete(numbers):
        raise InputError(
            "the atomic numbers are traced (inside jit/vmap/grad), so the set of species is not "
            "known: pass species=(Z1, Z2, ...) to make_potential_fn (or the simulator factory)"
        )
    return tuple(int(z) for z in np.unique(np.asarray(numbers)))


def _check_specimen(specimen: Specimen, grid: Grid, thickness: float, species: tuple[int, ...]) -> None:
    """Checks of a concrete specimen against the static geometry (skipped for traced input)."""
    if _is_concrete(specimen.cell):
        check_specimen_grid(grid, specimen, thickness)
    numbers = specimen.numbers
    if _is_concrete(numbers):
        missing = sorted(set(int(z) for z in np.unique(np.asarray(numbers))) - set(species))
        if missing:
            raise InputError(
                f"the specimen contains atomic numbers {missing} that are not in species={species}: "
                "add them to species (or leave species=None outside jit)"
            )


def make_potential_fn(
    grid: Grid,
    thickness: float,
    slice_thickness: float,
    parametrization: str = "lobato",
    projection: str = "infinite",
    *,
    species: Sequence[int] | None = None,
    chunk_size: int | None = None,
    fourier_space: bool = False,
    periodic_z: bool = True,
) -> Callable[[Specimen], jnp.ndarray]:
    """A function ``potential(specimen) -> [n_slices, nx, ny]`` projected potential per slice [V Å].

    Args:
        grid: simulation grid; its extent must equal the specimen cell in x and y.
        thickness: specimen thickness along the beam [Å] (usually ``cell[2]``).
        slice_thickness: requested slice thickness [Å]; the slices actually used are
            ``n_slices = ceil(thickness / slice_thickness)`` equal slices (see :func:`slice_count`).
        parametrization: ``"lobato"`` (Lobato & Van Dyck 2014, default) or ``"kirkland"``.
        projection: ``"infinite"`` (default; each atom in the slice containing its centre) or
            ``"finite"`` (the 3D potential integrated over each slice's z-extent, exact closed
            form; :mod:`forward.finite_projection`). abTEM's ``projection=`` names.
        species: atomic numbers the specimens may contain (static). Required when the function
            is called inside ``jit``/``vmap``/``grad`` with traced ``numbers``; atoms of other species
            contribute nothing there (eager calls raise instead).
        chunk_size: atoms per chunk of the structure-factor accumulation (performance and memory
            only; default 16 infinite, 2 finite, where a chunk holds
            ``chunk x (2 m + 1) x terms x nx x ny / 2`` floats, ``m`` slices followed each side).
        fourier_space: return the spectrum on the half plane, ``[n_slices, nx, ny // 2 + 1]``
            complex64 (``numpy.fft.rfft2`` layout and normalisation of the real-space result)
            instead of the real-space slices; lets a multislice transform one slice at a time.
        periodic_z: finite projection only: the potential leaving the top or bottom of the cell
            re-enters at the other side (abTEM pads atoms with their periodic images along z; the
            sum over slices is then the infinite projection). ``False``: it is dropped.

    Returns:
        ``potential(specimen)``: infinite projection: an atom with ``z`` in ``[i dz, (i+1) dz)`` goes
        to slice ``i`` (clipped to the first/last slice). Works under ``jit``, ``vmap`` and ``grad``
        (differentiable in the x, y positions; piecewise constant in z, except with the finite
        projection, which is smooth in z too).
    """
    t, s = _check_geometry(grid, thickness, slice_thickness)
    if parametrization not in PARAMETRIZATIONS:
        raise InputError(
            f"unknown parametrization {parametrization!r}: expected one of {PARAMETRIZATIONS}"
        )
    if projection not in PROJECTIONS:
        raise InputError(
            f"unknown projection {projection!r}: expected one of {PROJECTIONS} (abTEM's names)"
        )
    if species is not None:
        species = tuple(sorted({int(z) for z in species}))
        for z in species:
            coefficients(parametrization, z)  # raises InputError for unknown Z
    if chunk_size is None:
        chunk_size = 16 if projection == "infinite" else 2
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or int(chunk_size) < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    B = int(chunk_size)
    n_slices, dz = slice_count(t, s)
    nx, ny = grid.gpts
    dx, dy = grid.sampling
    lx, ly = grid.extent
    nyh = ny // 2 + 1
    kx_idx = np.fft.fftfreq(nx, 1.0 / nx)  # integer frequency indices
    ky_idx = np.fft.rfftfreq(ny, 1.0 / ny)
    k2 = (kx_idx[:, None] / lx) ** 2 + (ky_idx[None, :] / ly) ** 2

    def form_factors(spc: tuple[int, ...]) -> jnp.ndarray:
        f = np.stack([np.asarray(projected_scattering_factor(parametrization, z, k2)) for z in spc])
        return jnp.asarray((f / (dx * dy)).astype(np.float32))  # [n_species, nx, nyh]

    nxh = nx // 2 + 1
    kxh_c = jnp.asarray(np.arange(nxh, dtype=np.float32))
    ky_c = jnp.asarray(ky_idx.astype(np.float32))

    def potential(specimen: Specimen) -> jnp.ndarray:
        spc = _species_of(specimen.numbers, species)
        _check_specimen(specimen, grid, t, spc)
        return _compiled(specimen.positions, specimen.numbers, spc)

    def _finite(positions, numbers, spc: tuple[int, ...]) -> jnp.ndarray:
        kernel = finite_projection_kernel(
            gpts=grid.gpts, extent=grid.extent, n_slices=n_slices, dz=dz,
            parametrization=parametrization, species=spc, chunk_size=B, periodic_z=bool(periodic_z),
            boundary_tolerance=_BOUNDARY_TOLERANCE,
        )  # fmt: skip
        Vk = kernel(positions, numbers)
        if fourier_space:
            return Vk
        return jnp.fft.irfft2(Vk, s=(nx, ny), axes=(-2, -1)).astype(jnp.float32)

    def _potential(positions, numbers, spc: tuple[int, ...]) -> jnp.ndarray:
        ns = len(spc)
        n_c = n_slices * ns
        pos = jnp.asarray(positions, dtype=jnp.float32)
        numbers = jnp.asarray(numbers)
        n_a = pos.shape[0]
        match = numbers[:, None] == jnp.asarray(spc, dtype=numbers.dtype)[None, :]
        sp_idx = jnp.argmax(match, axis=1)
        known = jnp.any(match, axis=1)
        sl_idx = jnp.clip(jnp.floor(pos[:, 2] / dz + _BOUNDARY_TOLERANCE), 0, n_slices - 1)
        key = jnp.where(known, sl_idx.astype(jnp.int32) * ns + sp_idx.astype(jnp.int32), n_c)
        # Sort atoms by channel and pad every channel to whole chunks: static bound on chunks.
        order = jnp.argsort(key, stable=True)
        ks = key[order]
        counts = jnp.zeros(n_c + 1, jnp.int32).at[key].add(1)
        starts = jnp.cumsum(counts) - counts
        rank = jnp.arange(n_a, dtype=jnp.int32) - starts[ks]
        n_chunk = (counts + B - 1) // B
        chunk_end = jnp.cumsum(n_chunk)
        slot = (chunk_end - n_chunk)[ks] * B + rank
        n_chunks_max = -(-n_a // B) + n_c + 1
        length = n_chunks_max * B
        u = jnp.zeros(length, jnp.float32).at[slot].set(pos[order, 0] / lx)
        v = jnp.zeros(length, jnp.float32).at[slot].set(pos[order, 1] / ly)
        w = jnp.zeros(length, jnp.float32).at[slot].set((ks < n_c).astype(jnp.float32))
        chunk_channel = jnp.searchsorted(chunk_end, jnp.arange(n_chunks_max), side="right")
        # Phase ramps exp(-2 pi i k.r) = (cx - i sx)(cy - i sy) with the fractional coordinates
        # reduced mod 1 first, for kx >= 0 only: cos is even and sin odd in kx, so the rows
        # kx < 0 follow from the same four real products (one real matmul per chunk, 4x fewer
        # flops than a complex matmul over all rows).
        u = (u - jnp.floor(u)).reshape(n_chunks_max, B)
        v = (v - jnp.floor(v)).reshape(n_chunks_max, B)
        ph_x = 2.0 * jnp.pi * (u[:, :, None] * kxh_c[None, None, :])
        ph_y = 2.0 * jnp.pi * (v[:, :, None] * ky_c[None, None, :])
        wc = w.reshape(n_chunks_max, B)[:, :, None]
        lhs = jnp.concatenate([jnp.cos(ph_x), jnp.sin(ph_x)], axis=-1)  # [chunks, B, 2 nxh]
        rhs = jnp.concatenate([jnp.cos(ph_y), jnp.sin(ph_y)], axis=-1) * wc  # [chunks, B, 2 nyh]

        def accumulate(P, chunk):
            lc, rc, ch = chunk
            # Padding chunks (past the last channel) carry zero weight: adding them to the last
            # channel is harmless, and cheaper than branching (a cond copies the carry).
            idx = jnp.minimum(ch, n_c - 1)
            prod = jnp.matmul(lc.T, rc, precision=jax.lax.Precision.HIGHEST)
            return P.at[idx].add(prod), None

        P0 = jnp.zeros((n_c, 2 * nxh, 2 * nyh), jnp.float32)
        P, _ = jax.lax.scan(accumulate, P0, (lhs, rhs, chunk_channel))
        cc, cs = P[:, :nxh, :nyh], P[:, :nxh, nyh:]
        sc, ss = P[:, nxh:, :nyh], P[:, nxh:, nyh:]
        # kx >= 0 (row kx): S = (cc - ss) - i (cs + sc); kx = -m: S = (cc + ss) - i (cs - sc).
        pos_re, pos_im = cc - ss, -(cs + sc)
        neg_re, neg_im = cc + ss, -(cs - sc)
        if nx % 2 == 0:
            # Row kx = -nx/2 is its own partner: Re(ifft2) of the full spectrum keeps the cosine
            # part of its x ramp, cos(2 pi q x) exp(-2 pi i ky y). The corner (ky = ny/2, even ny)
            # is its own partner in both axes and keeps Re(ramp) = cc - ss, which irfft2 takes
            # from the unmodified value.
            m = nyh - 1 if ny % 2 == 0 else nyh
            pos_re = pos_re.at[:, -1, :m].set(cc[:, -1, :m])
            pos_im = pos_im.at[:, -1, :m].set(-cs[:, -1, :m])
        n_neg = nx - nxh  # rows kx = -n_neg .. -1
        re = jnp.concatenate([pos_re, neg_re[:, 1 : n_neg + 1][:, ::-1]], axis=1)
        im = jnp.concatenate([pos_im, neg_im[:, 1 : n_neg + 1][:, ::-1]], axis=1)
        F = form_factors(spc)  # [ns, nx, nyh]
        # An unrolled sum over the few species: one fused elementwise pass (XLA on the CPU runs an
        # einsum or a broadcast-and-reduce over this axis 15-100x slower).
        re = re.reshape(n_slices, ns, nx, nyh)
        im = im.reshape(n_slices, ns, nx, nyh)
        re_k = re[:, 0] * F[0][None]
        im_k = im[:, 0] * F[0][None]
        for j in range(1, ns):
            re_k = re_k + re[:, j] * F[j][None]
            im_k = im_k + im[:, j] * F[j][None]
        re, im = re_k, im_k
        Vk = jax.lax.complex(re, im)
        if fourier_space:
            return Vk
        return jnp.fft.irfft2(Vk, s=(nx, ny), axes=(-2, -1)).astype(jnp.float32)

    # Compiled once per (shape, species); inside an outer jit it is inlined. Nothing is stored
    # on a pickled object: the factory's closure is rebuilt wherever it is needed (DESIGN 6).
    _compiled = jax.jit(_potential if projection == "infinite" else _finite, static_argnums=2)
    return potential
