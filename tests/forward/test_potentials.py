"""Projected potentials: abTEM agreement, exact integrals, symmetries, transforms and errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from forward.errors import InputError
from forward.grid import make_grid
from forward.parametrizations import coefficients, projected_scattering_factor
from forward.potentials import make_potential_fn, slice_count
from forward.specimen import make_specimen, stack_specimens

from ._abtem_ref import SRTIO3_A, abtem_potential, rel_l2, srtio3

#: Tolerances (float32): abTEM agreement measured at ~7e-6; the issue asks for <= 1e-3.
TOL_ABTEM = 1e-4


def _specimen(atoms):
    return make_specimen(atoms.positions, atoms.numbers, atoms.cell.lengths())


def _small(seed=0, n=6, cell=(6.0, 5.0, 4.0)):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1, (n, 3)) * np.asarray(cell)
    return make_specimen(pos, rng.choice([8, 22, 38], n), cell, min_distance=0)


@pytest.mark.parametrize("parametrization", ["lobato", "kirkland"])
def test_matches_abtem(parametrization):
    atoms = srtio3((2, 2, 2))
    gpts = (64, 64)  # atoms on grid points: 2*3.905 Å / 64 = 0.122 Å, positions at 0, 16, 32, 48 px
    V_abtem, V_ref, sampling, st_ = abtem_potential(atoms, gpts, SRTIO3_A / 2, parametrization)
    grid = make_grid(extent=atoms.cell.lengths()[:2], gpts=gpts)
    V = make_potential_fn(grid, atoms.cell[2, 2], SRTIO3_A / 2, parametrization)(_specimen(atoms))
    assert V.shape == V_ref.shape == (4, 64, 64) and V.dtype == jnp.float32
    assert rel_l2(V, V_ref) < TOL_ABTEM
    # abTEM's own pixel (sinc) correction is a 0.5 % effect on the potential, far above the match.
    assert rel_l2(V, V_abtem) > 10 * rel_l2(V, V_ref)


def test_integral_is_the_forward_scattering_factor():
    # sum_r V dx dy = sum_atoms h^2/(2 pi m0 e) f_e(0) exactly (zero-frequency term of the ramp sum).
    sp = _small(3)
    grid = make_grid(extent=sp.cell[:2], gpts=(40, 36))
    V = np.asarray(make_potential_fn(grid, sp.cell[2], 1.0)(sp), dtype=np.float64)
    total = V.sum() * grid.sampling[0] * grid.sampling[1]
    want = sum(float(projected_scattering_factor("lobato", int(z), 0.0)) for z in sp.numbers)
    assert total == pytest.approx(want, rel=1e-5)


def test_slicing_by_z():
    # An atom at z goes to slice floor(z / dz); on a boundary it belongs to the slice above.
    grid = make_grid(extent=(5.0, 5.0), gpts=(32, 32))
    n, dz = slice_count(6.0, 2.0)
    assert (n, dz) == (3, 2.0)
    assert slice_count(5.0, 2.0) == (3, pytest.approx(5.0 / 3))
    fn = make_potential_fn(grid, 6.0, 2.0)
    for z, want in [(0.0, 0), (1.99, 0), (2.0, 1), (3.5, 1), (5.9, 2), (6.0, 2)]:
        sp = make_specimen([[1.0, 1.0, z]], [14], [5.0, 5.0, 6.0])
        V = np.asarray(fn(sp))
        assert np.argmax(np.abs(V).sum(axis=(1, 2))) == want
        assert np.abs(np.delete(V, want, axis=0)).max() == 0.0


@pytest.mark.parametrize("gpts", [(32, 28), (25, 21), (27, 30)])
def test_matches_direct_fourier_sum_off_grid(gpts):
    # Brute force: V = Re ifft2( sum_a V_z,Z(k) exp(-2 pi i k.r_a) ) / (dx dy) over the full plane.
    sp = _small(4, n=5)
    grid = make_grid(extent=sp.cell[:2], gpts=gpts)
    n, dz = slice_count(float(sp.cell[2]), 2.0)
    kx = np.fft.fftfreq(gpts[0], grid.sampling[0])[:, None]
    ky = np.fft.fftfreq(gpts[1], grid.sampling[1])[None, :]
    ref = np.zeros((n, *gpts))
    for r, z in zip(sp.positions, sp.numbers):
        f = projected_scattering_factor("lobato", int(z), kx**2 + ky**2)
        spec = f * np.exp(-2j * np.pi * (kx * r[0] + ky * r[1]))
        ref[min(int(r[2] // dz), n - 1)] += np.fft.ifft2(spec).real / (grid.sampling[0] * grid.sampling[1])
    V = make_potential_fn(grid, float(sp.cell[2]), 2.0, chunk_size=2)(sp)
    assert rel_l2(V, ref) < 2e-5


@pytest.mark.parametrize("gpts", [(48, 40), (25, 21)])
def test_whole_pixel_shift_is_a_roll(gpts):
    sp = _small(1)
    grid = make_grid(extent=sp.cell[:2], gpts=gpts)
    fn = make_potential_fn(grid, sp.cell[2], 2.0)
    shift = np.array([3 * grid.sampling[0], -5 * grid.sampling[1], 0.0])
    V0 = fn(sp)
    V1 = fn(make_specimen(sp.positions + shift, sp.numbers, sp.cell, min_distance=0))
    np.testing.assert_allclose(V1, np.roll(V0, (3, -5), axis=(1, 2)), atol=2e-4 * np.abs(V0).max())


@functools.cache
def _small_fn():
    sp = _small(0)
    return make_potential_fn(make_grid(extent=sp.cell[:2], gpts=(24, 20)), sp.cell[2], 2.0, species=(8, 22, 38))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.tuples(st.integers(-3, 3), st.integers(-3, 3)))
def test_cell_translation_and_atom_order_are_no_ops(seed, shift):
    sp = _small(seed % 7)
    fn = _small_fn()
    V0 = np.asarray(fn(sp))
    moved = sp.positions + np.array([shift[0] * sp.cell[0], shift[1] * sp.cell[1], 0.0])
    V1 = fn(make_specimen(moved, sp.numbers, sp.cell, min_distance=0))
    perm = np.random.default_rng(seed).permutation(sp.n_atoms)
    V2 = fn(make_specimen(sp.positions[perm], sp.numbers[perm], sp.cell, min_distance=0))
    scale = np.abs(V0).max()
    np.testing.assert_allclose(V1, V0, atol=3e-5 * scale)
    np.testing.assert_allclose(V2, V0, atol=3e-5 * scale)


@pytest.mark.parametrize("chunk_size", [1, 2, 64])
def test_chunking_does_not_change_the_result(chunk_size):
    sp = _small(5, n=9)
    grid = make_grid(extent=sp.cell[:2], gpts=(20, 24))
    ref = make_potential_fn(grid, sp.cell[2], 1.5, chunk_size=3)(sp)
    V = make_potential_fn(grid, sp.cell[2], 1.5, chunk_size=chunk_size)(sp)
    np.testing.assert_allclose(V, ref, atol=1e-5 * np.abs(ref).max())


def test_jit_vmap_grad():
    sps = [_small(s) for s in range(3)]
    grid = make_grid(extent=sps[0].cell[:2], gpts=(24, 20))
    fn = make_potential_fn(grid, 4.0, 2.0, species=(8, 22, 38))
    eager = [np.asarray(fn(s)) for s in sps]
    np.testing.assert_allclose(jax.jit(fn)(sps[0]), eager[0], rtol=1e-5, atol=1e-4)
    batch = jax.vmap(fn)(stack_specimens(sps))
    for b, e in zip(batch, eager):
        np.testing.assert_allclose(b, e, rtol=1e-5, atol=1e-4)

    weights = np.random.default_rng(0).normal(size=eager[0].shape).astype(np.float32)

    def loss(xy):
        pos = jnp.concatenate([xy, jnp.asarray(sps[0].positions[:, 2:], jnp.float32)], axis=1)
        sp = make_specimen(sps[0].positions, sps[0].numbers, sps[0].cell, min_distance=0)
        sp = type(sp)(positions=pos, numbers=sp.numbers, cell=sp.cell, dw_sigmas=sp.dw_sigmas)
        return jnp.sum(fn(sp) * weights) * 1e-3

    xy = jnp.asarray(sps[0].positions[:, :2], jnp.float32)
    check_grads(loss, (xy,), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_errors():
    grid = make_grid(extent=(5.0, 5.0), gpts=(16, 16))
    with pytest.raises(InputError, match="thicker than the specimen"):
        make_potential_fn(grid, 2.0, 3.0)
    with pytest.raises(InputError, match="unknown parametrization 'peng'"):
        make_potential_fn(grid, 2.0, 1.0, "peng")
    with pytest.raises(InputError, match=r"unknown projection 'exact': expected one of \('infinite', 'finite'\)"):
        make_potential_fn(grid, 2.0, 1.0, projection="exact")
    with pytest.raises(InputError, match="chunk_size must be a positive integer, got 0"):
        make_potential_fn(grid, 2.0, 1.0, projection="finite", chunk_size=0)
    with pytest.raises(InputError, match="positive length"):
        make_potential_fn(grid, -2.0, 1.0)
    with pytest.raises(InputError, match="no coefficients for Z=200"):
        make_potential_fn(grid, 2.0, 1.0, species=(8, 200))
    with pytest.raises(InputError, match=r"unknown parametrization 'peng': expected one of \('lobato', 'kirkland'\)"):
        coefficients("peng", 8)
    with pytest.raises(InputError, match="must be a forward.Grid"):
        make_potential_fn((16, 16), 2.0, 1.0)
    fn = make_potential_fn(grid, 2.0, 1.0, species=(8,))
    sp = make_specimen([[1, 1, 1]], [14], [5.0, 5.0, 2.0])
    with pytest.raises(InputError, match=r"atomic numbers \[14\] that are not in species"):
        fn(sp)
    with pytest.raises(InputError, match="does not match the specimen cell"):
        make_potential_fn(grid, 2.0, 1.0)(make_specimen([[1, 1, 1]], [14], [6.0, 5.0, 2.0]))
    with pytest.raises(InputError, match="with thickness=specimen.cell"):
        make_potential_fn(grid, 2.0, 1.0)(make_specimen([[1, 1, 1]], [14], [5.0, 5.0, 3.0]))
    with pytest.raises(InputError, match="pass species="):
        jax.jit(make_potential_fn(grid, 2.0, 1.0))(sp)
