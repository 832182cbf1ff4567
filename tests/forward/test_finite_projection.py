"""Finite projection: closed forms against quadrature, abTEM 1.0.11, the infinite limit, transforms."""

import math

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.integrate import quad

import abtem
from forward.finite_projection import z_cutoff
from forward.grid import make_grid
from forward.parametrizations import (
    _FE_TO_POTENTIAL,
    partially_projected_scattering_factor,
    projected_scattering_factor,
    scattering_factor,
)
from forward.potentials import make_potential_fn
from forward.specimen import make_specimen, stack_specimens

from ._abtem_ref import ABTEM_CONFIG, rel_l2

CELL = (4.0, 4.0, 4.0)
GPTS = (24, 24)


def _specimen(positions=((1.0, 1.0, 1.3), (3.0, 2.5, 2.05)), numbers=(38, 8), cell=CELL):
    return make_specimen(np.asarray(positions), list(numbers), cell)


@pytest.mark.parametrize("parametrization, Z", [("lobato", 8), ("lobato", 38), ("kirkland", 22), ("kirkland", 79)])
def test_closed_form_matches_quadrature(parametrization, Z):
    # G(k, s) = int_0^s dz int dkz V(k, kz) exp(2 pi i kz z) = int_0^inf V(k, kz) sin(2 pi kz s) / (pi kz) dkz,
    # with V(k, kz) = h^2/(2 pi m0 e) f_e(sqrt(k^2 + kz^2)) (scipy quad, Fourier-sine weight for the tail).
    for k2 in (0.0, 0.7, 4.0):
        for s in (0.1, 0.5, 2.0, -0.3):
            f = lambda kz: _FE_TO_POTENTIAL * scattering_factor(parametrization, Z, k2 + kz**2)  # noqa: E731
            head = quad(lambda kz: f(kz) * np.sinc(2 * s * kz) * s, 0, 20, limit=4000, epsabs=1e-12, epsrel=1e-12)[0]
            tail = quad(lambda kz: f(kz) / (2 * math.pi * kz), 20, np.inf, weight="sin", wvar=2 * math.pi * s)[0]
            want = 2 * (head + tail)
            got = partially_projected_scattering_factor(parametrization, Z, k2, s)
            assert got == pytest.approx(want, rel=1e-8)
    # Both half-lines together are the infinite projection.
    k2 = np.linspace(0, 9, 7)
    np.testing.assert_allclose(
        2 * partially_projected_scattering_factor(parametrization, Z, k2, 1e3),
        projected_scattering_factor(parametrization, Z, k2),
        rtol=1e-12,
    )


def _crop(V, n):
    """Band-limit ``V [..., N, N]`` to the lowest ``n x n`` frequencies (same mean)."""
    N = V.shape[-1]
    idx = np.mod(np.round(np.fft.fftfreq(n) * n).astype(int), N)
    F = np.fft.fft2(V)[..., idx[:, None], idx[None, :]]
    return np.fft.ifft2(F).real * (n * n) / (N * N)


def test_matches_abtem_finite_projection():
    # abTEM samples the finitely projected potential in real space, an error of second order in
    # its sampling (the projected potential is log-singular at the cores). Its potential on grids
    # 4x and 8x finer than ours, band-limited to our grid, approaches ours as 1/f^2 (measured:
    # 2.1e-2, 5.4e-3); the Richardson extrapolation (4 V_8 - V_4) / 3 agrees to 6.1e-4.
    atoms = ase.Atoms("SrO", positions=[(1.0, 1.0, 1.3), (3.0, 2.5, 2.05)], cell=CELL, pbc=True)
    grid = make_grid(extent=CELL[:2], gpts=GPTS)
    ours = np.asarray(make_potential_fn(grid, CELL[2], 1.0, projection="finite")(_specimen()))
    ref = {}
    with abtem.config.set(ABTEM_CONFIG):
        for f in (4, 8):
            pot = abtem.Potential(atoms, gpts=(GPTS[0] * f, GPTS[1] * f), slice_thickness=1.0, projection="finite")
            ref[f] = _crop(np.asarray(pot.build().compute().array, np.float64), GPTS[0])
    assert ours.shape == ref[4].shape == (4, *GPTS)
    e4, e8 = rel_l2(ours, ref[4]), rel_l2(ours, ref[8])
    assert 3.0 < e4 / e8 < 5.0  # second-order convergence of abTEM towards ours
    assert rel_l2(ours, (4 * ref[8] - ref[4]) / 3) < 1e-3
    # The infinite projection differs from both by ~30 % on these 1 Å slices.
    inf = np.asarray(make_potential_fn(grid, CELL[2], 1.0)(_specimen()))
    assert rel_l2(inf, ref[8]) > 0.1


@pytest.mark.parametrize("parametrization", ["lobato", "kirkland"])
def test_slices_add_up_to_the_infinite_projection(parametrization):
    grid = make_grid(extent=CELL[:2], gpts=(20, 18))
    sp = _specimen(((1.0, 1.0, 0.2), (3.0, 2.5, 2.05), (2.0, 0.5, 3.9)), (38, 8, 22))
    fin = np.asarray(make_potential_fn(grid, CELL[2], 0.5, parametrization, "finite")(sp), np.float64)
    inf = np.asarray(make_potential_fn(grid, CELL[2], 0.5, parametrization)(sp), np.float64)
    assert fin.shape == inf.shape == (8, 20, 18)
    # Periodic along z (abTEM's convention): nothing is lost, the slices add up exactly.
    assert rel_l2(fin.sum(0), inf.sum(0)) < 2e-5
    # The atoms near the bottom (z = 0.2 Å) and top (3.9 Å) feed the opposite end of the cell.
    assert np.abs(fin[-1]).max() > 0.05 * np.abs(fin).max()
    slab = np.asarray(make_potential_fn(grid, CELL[2], 0.5, parametrization, "finite", periodic_z=False)(sp))
    lost = 1 - slab.sum() / fin.sum()
    assert 0.05 < lost < 0.5
    # Without the wrap: the same atoms in a cell padded with 8 Å of vacuum above and below.
    pad = 8.0
    tall = make_specimen(sp.positions + np.array([0.0, 0.0, pad]), sp.numbers, (*CELL[:2], CELL[2] + 2 * pad))
    padded = np.asarray(make_potential_fn(grid, CELL[2] + 2 * pad, 0.5, parametrization, "finite")(tall))
    np.testing.assert_allclose(slab, padded[16:24], atol=2e-5 * np.abs(fin).max())


def test_thick_slice_limit_is_the_infinite_projection():
    # A slice much thicker than the range of the potential (a tail of 9e-5 of the Sr projection lies
    # beyond 6 Å, 3e-6 beyond 8 Å): the finite projection of atoms in its middle is the infinite
    # projection; thin slices split the atoms between slices.
    cell = (4.0, 4.0, 48.0)
    grid = make_grid(extent=cell[:2], gpts=GPTS)
    sp = _specimen(((1.0, 1.0, 12.0), (3.0, 2.5, 36.5)), (38, 8), cell)  # mid-slice
    for periodic_z in (True, False):
        fin = make_potential_fn(grid, cell[2], 24.0, projection="finite", periodic_z=periodic_z)(sp)
        inf = make_potential_fn(grid, cell[2], 24.0)(sp)
        assert rel_l2(fin, inf) < 2e-5
    fin = make_potential_fn(grid, cell[2], 1.0, projection="finite")(sp)
    inf = make_potential_fn(grid, cell[2], 1.0)(sp)
    assert rel_l2(fin, inf) > 0.2
    # The window of slices followed per atom reaches the stated tail tolerance.
    assert 3.0 < z_cutoff("lobato", (8,)) < z_cutoff("lobato", (8, 38)) < 12.0


def test_fourier_space_jit_vmap_and_gradients_in_all_three_coordinates():
    grid = make_grid(extent=CELL[:2], gpts=(16, 20))
    fn = make_potential_fn(grid, CELL[2], 1.0, projection="finite", species=(8, 38))
    # The O atom of the first specimen sits on a slice boundary (z = 2 Å): the gradient is exact there.
    sps = [_specimen(((1.0 + d, 1.0, 1.3), (3.0, 2.5 - d, 2.0 + d)), (38, 8)) for d in (0.0, 0.3)]
    eager = np.asarray(fn(sps[0]))
    np.testing.assert_allclose(jax.jit(fn)(sps[0]), eager, rtol=1e-5, atol=1e-3)
    batch = jax.vmap(fn)(stack_specimens(sps))
    np.testing.assert_allclose(batch[1], fn(sps[1]), rtol=1e-5, atol=1e-3)
    spec = make_potential_fn(grid, CELL[2], 1.0, projection="finite", fourier_space=True)(sps[0])
    np.testing.assert_allclose(np.fft.irfft2(np.asarray(spec), s=grid.gpts), eager, atol=1e-4 * np.abs(eager).max())
    weights = jnp.asarray(np.random.default_rng(0).normal(size=eager.shape), jnp.float32)

    def loss(pos):
        s = type(sps[0])(positions=pos, numbers=sps[0].numbers, cell=sps[0].cell, dw_sigmas=sps[0].dw_sigmas)
        return jnp.sum(fn(s) * weights) * 1e-3

    grad = jax.jit(jax.grad(loss))
    pos = jnp.asarray(sps[1].positions, jnp.float32)
    # Smooth in z too (the infinite projection is piecewise constant there).
    assert float(jnp.abs(grad(pos)[:, 2]).min()) > 0
    check_grads(loss, (pos,), order=1, modes=("rev",), eps=3e-3, atol=2e-2, rtol=2e-2)
    # On a slice boundary the potential is C1 in z (V(k, z) has a cusp at the atom, so finite
    # differences are poor there): the gradient is continuous across it.
    on = jnp.asarray(sps[0].positions, jnp.float32)
    shift = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 1e-3]], jnp.float32)
    g0, g_below, g_above = grad(on), grad(on - shift), grad(on + shift)
    np.testing.assert_allclose(g0, g_below, rtol=2e-2, atol=1e-3 * float(jnp.abs(g0).max()))
    np.testing.assert_allclose(g0, g_above, rtol=2e-2, atol=1e-3 * float(jnp.abs(g0).max()))
    assert abs(float(g0[1, 2])) > 1e-2 * float(jnp.abs(g0).max())


def test_hrtem_simulator_uses_the_finite_projection():
    from forward.beam import make_beam
    from forward.constants import wavelength
    from forward.hrtem import make_hrtem_simulator
    from forward.propagation import fresnel_propagator, multislice_potential
    from forward.waves import plane_wave

    grid = make_grid(extent=CELL[:2], gpts=GPTS)
    sp, beam = _specimen(), make_beam(200e3, semiangle_cutoff=20.0, defocus=30.0)
    V = make_potential_fn(grid, CELL[2], 1.0, projection="finite")(sp)
    prop = fresnel_propagator(grid, wavelength(200e3), 1.0)
    want = multislice_potential(plane_wave(grid), V, 200e3, prop, grid=grid)
    fin = make_hrtem_simulator(grid, CELL[2], 1.0, projection="finite")
    np.testing.assert_allclose(fin.exit_wave(sp, beam), want, atol=2e-5)
    inf = make_hrtem_simulator(grid, CELL[2], 1.0)
    assert float(jnp.abs(fin.exit_wave(sp, beam) - inf.exit_wave(sp, beam)).max()) > 1e-3
