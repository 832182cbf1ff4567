"""Finite projection of atomic potentials: each atom's 3D potential integrated over every slice.

The infinite projection (:mod:`forward.potentials`) puts an atom's whole projected potential into
the slice that contains its centre. The finite projection integrates the 3D potential over the
z-extent of each slice, so an atom near a slice boundary feeds both neighbours (Kirkland 2010,
sec. 6.4, eq. 6.85 with finite limits; abTEM 1.0.11 ``projection="finite"``). Here the integral
is exact and closed form in the mixed representation (2D Fourier in x, y, real z;
:func:`forward.parametrizations.partially_projected_scattering_factor` gives the formulas and the
derivation): an atom at ``(xa, ya, za)`` contributes to slice ``[z0, z1]``

    V_slice(k) += [G(k, z1 - za) - G(k, z0 - za)] exp(-2 pi i k.(xa, ya)) / (dx dy)

so the potential stays exact in x and y (Fourier phase ramps, no pixel deposit) and becomes a
smooth function of z as well (differentiable in all three coordinates). Summed over the slices,
the contributions add up to the infinite projection.

Along z the potential of an atom is followed over ``m`` slices up and down (enough that the part
left out is below ``TAIL_TOLERANCE`` of its forward scattering, computed from the slowest-decaying
term, :func:`z_cutoff`). With ``periodic_z`` (the default, as abTEM, which pads the atoms with
their periodic images along z) the part of the potential that leaves the top or the bottom of the
cell re-enters at the other side, as in a crystal periodic along z, so the sum over slices is
exactly the infinite projection; without it that part is dropped (an isolated slab in vacuum).

Arrays are indexed ``[slice, x, y]``; the accumulation is on the half plane ``ky >= 0``
(``numpy.fft.rfft2`` layout) in a ``lax.scan`` over chunks of atoms. The work is
``O(n_atoms x (window + 1) x terms x nx x ny / 2)`` exponentials, far more than the infinite
projection's structure-factor matrix products (measured on the loaded 2-core machine: ~6 ms per
atom on a 160 x 160 grid with an 11-slice window, against ~0.1 ms): use it where the slicing
matters (thick slices, atoms near slice boundaries, gradients in z), not in the live loop.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from forward.parametrizations import _FE_TO_POTENTIAL, coefficients, partially_projected_scattering_factor

__all__ = ["TAIL_TOLERANCE", "z_cutoff", "finite_projection_kernel"]

#: Fraction of an atom's forward scattering (the k = 0 projection) that may be left out by
#: following its potential only over a finite window of slices (float32 resolves ~1e-7).
TAIL_TOLERANCE = 1e-6


def _tail(parametrization: str, Z: int, s: float) -> float:
    """Upper bound of the fraction of the k = 0 projection beyond ``|z| > s`` [Å] on one side,
    with every term taken in absolute value (the Lobato terms partly cancel)."""
    p = coefficients(parametrization, Z)
    total = abs(float(partially_projected_scattering_factor(parametrization, Z, 0.0, 1e4)))
    tail = 0.0
    if parametrization == "lobato":
        a, b = p
        for i in range(5):
            mu = 2.0 * math.pi / math.sqrt(b[i])
            e = math.exp(-mu * s)
            tail += abs(a[i]) * (e / 2.0 + e * (2.0 + mu * s) / 4.0)
    else:
        a, b, c, d = p
        for i in range(3):
            tail += abs(a[i]) * math.exp(-2.0 * math.pi * math.sqrt(b[i]) * s) / (2.0 * b[i])
            tail += abs(c[i]) * 0.5 * math.erfc(math.pi * s / math.sqrt(d[i]))
    return _FE_TO_POTENTIAL * tail / total


def z_cutoff(parametrization: str, species: tuple[int, ...], tolerance: float = TAIL_TOLERANCE) -> float:
    """The distance along z [Å] beyond which less than ``tolerance`` of the forward scattering of
    any of ``species`` remains (bisection on the closed-form tail, :func:`_tail`)."""
    worst = 0.0
    for z in species:
        lo, hi = 0.0, 1.0
        while _tail(parametrization, z, hi) > tolerance:
            hi *= 2.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _tail(parametrization, z, mid) > tolerance else (lo, mid)
        worst = max(worst, hi)
    return worst


def _term_tables(parametrization: str, species: tuple[int, ...], k2: np.ndarray, pixel_area: float):
    """Per species, the k-dependent factors of the closed forms on the half plane, float32.

    Lobato: ``(w1, w2, mu)`` ``[ns, 5, nx, nyh]`` with ``G = sum w1 (1 - E) + w2 (2 - E (2 + mu s))``.
    Kirkland: ``(w1, mu)`` ``[ns, 3, nx, nyh]`` and ``(g, r)`` (``[ns, 3, nx, nyh]``, ``[ns, 3]``)
    with ``G = sum w1 (1 - E) + sum g erf(r s)``. All include ``h^2/(2 pi m0 e) / (dx dy)``.
    """
    scale = _FE_TO_POTENTIAL / pixel_area
    w1s, w2s, mus, gs, rs = [], [], [], [], []
    for z in species:
        p = coefficients(parametrization, z)
        if parametrization == "lobato":
            a, b = p
            c = 1.0 + b[:, None, None] * k2[None]
            w1s.append(scale * a[:, None, None] / (2.0 * c))
            w2s.append(scale * a[:, None, None] / (4.0 * c**2))
            mus.append(2.0 * math.pi * np.sqrt(c / b[:, None, None]))
        else:
            a, b, c, d = p
            q = k2[None] + b[:, None, None]
            w1s.append(scale * a[:, None, None] / (2.0 * q))
            mus.append(2.0 * math.pi * np.sqrt(q))
            gs.append(scale * c[:, None, None] * np.exp(-d[:, None, None] * k2[None]) / 2.0)
            rs.append(math.pi / np.sqrt(d))
    f32 = lambda xs: jnp.asarray(np.stack(xs).astype(np.float32))  # noqa: E731
    if parametrization == "lobato":
        return (f32(w1s), f32(w2s), f32(mus))
    return (f32(w1s), f32(mus), f32(gs), f32(rs))


def _partial_projection(parametrization: str, tables, s):
    """``G(k, s)`` ``[edges, nx, nyh]`` for one atom's tables and edge offsets ``s`` ``[edges]`` [Å].

    ``G`` is odd and smooth in ``s``; it is evaluated as ``+-G(|s|)`` with ``|s|`` and the sign
    taken by ``where`` on ``s >= 0``, so that autodiff gets ``dG/ds = V(k, 0)`` at ``s = 0`` too
    (``sign(s) G(abs(s))`` would give 0 there: atoms on a slice boundary are common in crystals).
    """
    pos = s >= 0
    s_abs = jnp.where(pos, s, -s)
    sa = s_abs[:, None, None, None]  # [edges, 1 (term), 1, 1]
    if parametrization == "lobato":
        w1, w2, mu = (a[None] for a in tables)
        e = jnp.exp(-mu * sa)
        g = jnp.sum(w1 * (1.0 - e) + w2 * (2.0 - e * (2.0 + mu * sa)), axis=-3)
    else:
        w1, mu, gk, r = tables
        w1, mu, gk = w1[None], mu[None], gk[None]
        erf = jax.scipy.special.erf(r[None, :] * s_abs[:, None])  # [edges, 3]
        g = jnp.sum(w1 * (1.0 - jnp.exp(-mu * sa)) + gk * erf[:, :, None, None], axis=-3)
    return jnp.where(pos[:, None, None], g, -g)


def finite_projection_kernel(
    *,
    gpts: tuple[int, int],
    extent: tuple[float, float],
    n_slices: int,
    dz: float,
    parametrization: str,
    species: tuple[int, ...],
    chunk_size: int,
    periodic_z: bool,
    boundary_tolerance: float,
):
    """A traceable ``spectrum(positions [n, 3], numbers [n]) -> [n_slices, nx, ny // 2 + 1]``
    complex64: the rfft2 of the finitely projected slices [V Å] (see the module docstring).

    Atoms of other species than ``species`` contribute nothing (callers check concrete input).
    """
    nx, ny = gpts
    lx, ly = extent
    nyh = ny // 2 + 1
    kx_idx = np.fft.fftfreq(nx, 1.0 / nx)
    ky_idx = np.fft.rfftfreq(ny, 1.0 / ny)
    k2 = (kx_idx[:, None] / lx) ** 2 + (ky_idx[None, :] / ly) ** 2
    tables = _term_tables(parametrization, species, k2, (lx / nx) * (ly / ny))
    m = int(math.ceil(z_cutoff(parametrization, species) / dz))
    window = 2 * m + 1  # slices followed per atom: its own and m on each side
    offsets = np.arange(-m, m + 2, dtype=np.float32)  # slice edges relative to the home slice
    kxc = jnp.asarray(kx_idx.astype(np.float32))
    kyc = jnp.asarray(ky_idx.astype(np.float32))
    # Even nx: the row kx = -nx/2 is its own partner; the real-space result keeps the cosine part
    # of its x ramp (as forward.potentials, so that both projections agree to round-off).
    nyq_row = None
    if nx % 2 == 0:
        mcols = nyh - 1 if ny % 2 == 0 else nyh
        mask = np.zeros((nx, nyh), bool)
        mask[nx // 2, :mcols] = True
        nyq_row = jnp.asarray(mask)
    B = int(chunk_size)

    def one_atom(x, y, z, sp, w):
        t = jax.tree.map(lambda a: a[sp], tables)
        home = jnp.clip(jnp.floor(z / dz + boundary_tolerance), 0, n_slices - 1)
        edges = (home + jnp.asarray(offsets)) * dz - z  # [window + 1]
        G = _partial_projection(parametrization, t, edges)  # [window + 1, nx, nyh]
        S = (G[1:] - G[:-1]) * w
        u = x / lx
        v = y / ly
        u = u - jnp.floor(u)
        v = v - jnp.floor(v)
        px = -2.0 * jnp.pi * kxc * u
        py = -2.0 * jnp.pi * kyc * v
        ey = jax.lax.complex(jnp.cos(py), jnp.sin(py))[None, :]
        ramp = jax.lax.complex(jnp.cos(px), jnp.sin(px))[:, None] * ey
        if nyq_row is not None:
            ramp = jnp.where(nyq_row, jnp.cos(px).astype(jnp.complex64)[:, None] * ey, ramp)
        return home.astype(jnp.int32), S * ramp[None]

    def spectrum(positions, numbers) -> jnp.ndarray:
        pos = jnp.asarray(positions, dtype=jnp.float32)
        numbers = jnp.asarray(numbers)
        n_a = pos.shape[0]
        match = numbers[:, None] == jnp.asarray(species, dtype=numbers.dtype)[None, :]
        sp_idx = jnp.argmax(match, axis=1).astype(jnp.int32)
        weight = jnp.any(match, axis=1).astype(jnp.float32)
        n_chunks = -(-n_a // B)
        pad = n_chunks * B - n_a
        padded = lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])  # noqa: E731
        xs = (
            padded(pos[:, 0]).reshape(n_chunks, B),
            padded(pos[:, 1]).reshape(n_chunks, B),
            padded(pos[:, 2]).reshape(n_chunks, B),
            padded(sp_idx).reshape(n_chunks, B),
            padded(weight).reshape(n_chunks, B),  # padding atoms weigh 0
        )

        # Slices -m .. n_slices + m - 1 (a margin of m each side), so that every atom's window is one
        # in-place dynamic slice update; the margins are folded back (or dropped) at the end.
        def accumulate(P, chunk):
            home, contrib = jax.vmap(one_atom)(*chunk)  # [B], [B, window, nx, nyh]
            for b in range(B):
                start = (home[b], 0, 0)
                old = jax.lax.dynamic_slice(P, start, (window, nx, nyh))
                P = jax.lax.dynamic_update_slice(P, old + contrib[b], start)
            return P, None

        P0 = jnp.zeros((n_slices + 2 * m, nx, nyh), jnp.complex64)
        P, _ = jax.lax.scan(accumulate, P0, xs)
        if not periodic_z:
            return P[m : m + n_slices]
        # Periodic along z: padded slice i is slice (i - m) mod n_slices.
        target = jnp.asarray(np.mod(np.arange(n_slices + 2 * m) - m, n_slices))
        return jax.ops.segment_sum(P, target, num_segments=n_slices)

    return spectrum
