"""Fresnel propagator, transmission functions and the multislice loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forward.constants import interaction_parameter, wavelength
from forward.grid import make_grid
from forward.potentials import make_potential_fn, slice_count
from forward.propagation import (
    antialias,
    fresnel_propagator,
    multislice,
    multislice_potential,
    transmission_function,
)
from forward.reciprocal import antialias_mask, polar_frequencies, spatial_frequencies
from forward.specimen import make_specimen
from forward.waves import plane_wave

GRID = make_grid(extent=(6.0, 5.0), gpts=(36, 30))


def test_reciprocal_coordinates_match_abtem():
    from abtem.antialias import antialias_aperture
    from abtem.core.grid import polar_spatial_frequencies

    kx, ky = spatial_frequencies(GRID)
    np.testing.assert_allclose(kx, np.fft.fftfreq(36, GRID.sampling[0]), rtol=1e-6)
    np.testing.assert_allclose(ky, np.fft.fftfreq(30, GRID.sampling[1]), rtol=1e-6)
    lam = float(wavelength(200e3))
    alpha, phi = polar_frequencies(GRID, lam)
    k, p = polar_spatial_frequencies(GRID.gpts, GRID.sampling)
    np.testing.assert_allclose(alpha, k * lam, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(phi, p, atol=1e-6)
    # abTEM uses 0.6666666 for 2/3; the mask differs only on the taper, by < 1e-5.
    np.testing.assert_allclose(antialias_mask(GRID), antialias_aperture(GRID.gpts, GRID.sampling, np), atol=2e-5)
    # 2/3 of the Nyquist frequency of the coarser axis (DESIGN 3.2).
    k_c = (2 / 3) / (2 * max(GRID.sampling))
    r = np.sqrt(np.asarray(kx)[:, None] ** 2 + np.asarray(ky)[None] ** 2)
    m = np.asarray(antialias_mask(GRID))
    assert np.all(m[r >= k_c] == 0) and np.all(m[r <= k_c - 0.01 / max(GRID.sampling)] == 1)


@settings(max_examples=20, deadline=None)
@given(
    a=st.floats(-5.0, 5.0),
    b=st.floats(-5.0, 5.0),
    energy=st.sampled_from([80e3, 200e3, 300e3]),
    tilt=st.tuples(st.floats(-20, 20), st.floats(-20, 20)),
)
def test_propagator_unitary_and_composable(a, b, energy, tilt):
    lam = wavelength(energy)
    mask = np.asarray(antialias_mask(GRID))
    Pa = np.asarray(fresnel_propagator(GRID, lam, a, tilt))
    Pb = np.asarray(fresnel_propagator(GRID, lam, b, tilt))
    Pab = np.asarray(fresnel_propagator(GRID, lam, a + b, tilt))
    np.testing.assert_allclose(np.abs(Pa), mask, atol=1e-6)
    inside = mask == 1
    np.testing.assert_allclose((Pa * Pb)[inside], Pab[inside], atol=2e-5)
    # Unitary on band-limited waves: the norm of a wave inside the aperture is kept.
    rng = np.random.default_rng(0)
    spec = (rng.normal(size=GRID.gpts) + 1j * rng.normal(size=GRID.gpts)) * inside
    psi = np.fft.ifft2(spec).astype(np.complex64)
    out = np.asarray(multislice(psi, np.ones((1, *GRID.gpts), np.complex64), Pa))
    assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(psi), rel=1e-5)


def test_propagator_matches_abtem_with_tilt():
    from abtem.antialias import antialias_aperture
    from abtem.multislice import _apply_tilt_to_fresnel_propagator_array, _fresnel_propagator_array

    ref = _fresnel_propagator_array(1.7, GRID.gpts, GRID.sampling, 300e3, "cpu")
    ref = ref * antialias_aperture(GRID.gpts, GRID.sampling, np)
    ref = _apply_tilt_to_fresnel_propagator_array(ref, GRID.sampling, 1.7, (4.0, -7.0))
    P = fresnel_propagator(GRID, wavelength(300e3), 1.7, (4.0, -7.0))
    np.testing.assert_allclose(P, ref, atol=3e-5)


def test_tilt_shifts_the_wave_laterally():
    # Propagating dz with tilt t moves the wave by dz tan(t) (here an exact number of pixels).
    grid = make_grid(extent=(8.0, 8.0), gpts=(64, 64))
    dz = 2 * grid.sampling[0] / np.tan(5e-3)
    rng = np.random.default_rng(1)
    spec = (rng.normal(size=grid.gpts) + 1j * rng.normal(size=grid.gpts)) * (np.asarray(antialias_mask(grid)) == 1)
    psi = np.fft.ifft2(spec).astype(np.complex64)
    P0 = fresnel_propagator(grid, wavelength(300e3), dz)
    Pt = fresnel_propagator(grid, wavelength(300e3), dz, (5.0, 0.0))
    ones = np.ones((1, *grid.gpts), np.complex64)
    a = np.asarray(multislice(psi, ones, P0))
    b = np.asarray(multislice(psi, ones, Pt))
    np.testing.assert_allclose(b, np.roll(a, 2, axis=0), atol=1e-4 * np.abs(a).max())


def test_phase_object_conserves_norm():
    # exp(i sigma V) has unit modulus; antialiasing can only remove intensity, and for a smooth
    # potential it removes almost none.
    x = np.arange(36)[:, None] / 36
    y = np.arange(30)[None, :] / 30
    V = (20.0 * np.cos(2 * np.pi * x) * np.cos(4 * np.pi * y))[None].astype(np.float32)
    t = np.asarray(transmission_function(V, 200e3, grid=GRID))
    sigma = float(interaction_parameter(200e3))
    np.testing.assert_allclose(t[0], np.exp(1j * sigma * V[0]), atol=1e-5)
    psi = np.ones(GRID.gpts, np.complex64)
    out = multislice(psi, np.repeat(t, 5, axis=0), fresnel_propagator(GRID, wavelength(200e3), 1.0))
    assert float(jnp.linalg.norm(out)) == pytest.approx(np.linalg.norm(psi), rel=1e-5)
    # A rough potential loses intensity to the antialias aperture, never gains.
    rough = np.random.default_rng(0).normal(size=(3, *GRID.gpts)).astype(np.float32) * 300
    out = multislice(psi, transmission_function(rough, 200e3, grid=GRID), fresnel_propagator(GRID, wavelength(200e3), 1.0))
    assert float(jnp.linalg.norm(out)) < np.linalg.norm(psi)


def test_transmission_matches_abtem():
    from abtem.potentials.iam import PotentialArray
    from abtem.antialias import AntialiasAperture

    rng = np.random.default_rng(2)
    V = rng.uniform(0, 30, (2, *GRID.gpts)).astype(np.float32)
    pa = PotentialArray(V, slice_thickness=1.0, sampling=GRID.sampling)
    ref = np.stack([
        AntialiasAperture().bandlimit(s.transmission_function(energy=300e3)).array[0] for s in pa
    ])  # fmt: skip
    np.testing.assert_allclose(transmission_function(V, 300e3, grid=GRID), ref, atol=5e-5)
    # Square pixels: the grid can be left out.
    sq = make_grid(extent=(5.0, 5.0), gpts=(30, 30))
    np.testing.assert_allclose(transmission_function(V[:, :30], 300e3), transmission_function(V[:, :30], 300e3, grid=sq), atol=1e-6)
    np.testing.assert_allclose(antialias(V[0, :30, :30]), antialias(V[0, :30, :30], sq), atol=1e-6)


def _thick_specimen():
    rng = np.random.default_rng(0)
    cell = (5.0, 5.0, 16.0)
    return make_specimen(rng.uniform(0, 1, (12, 3)) * cell, [8] * 12, cell, min_distance=0)


def _exit(sp, slice_thickness, energy=100e3):
    grid = make_grid(extent=sp.cell[:2], gpts=(32, 32))
    _, dz = slice_count(float(sp.cell[2]), slice_thickness)
    V = make_potential_fn(grid, float(sp.cell[2]), slice_thickness)(sp)
    t = transmission_function(V, energy, grid=grid)
    return np.asarray(multislice(jnp.ones(grid.gpts, jnp.complex64), t, fresnel_propagator(grid, wavelength(energy), dz)))


def test_error_falls_with_slice_thickness_at_first_order():
    # Transmit-then-propagate with each atom projected into its slice is a first-order splitting
    # in dz (Kirkland 2010, sec. 6.4): halving the slices halves the error.
    sp = _thick_specimen()
    ref = _exit(sp, 0.0625)
    dzs = np.array([2.0, 1.0, 0.5])
    err = np.array([np.linalg.norm(_exit(sp, d) - ref) / np.linalg.norm(ref) for d in dzs])
    slope = np.polyfit(np.log(dzs), np.log(err), 1)[0]
    assert 0.7 < slope < 1.4, (err, slope)
    assert np.all(np.diff(err) < 0)


def test_batched_waves_vmap_jit_and_checkpoint():
    rng = np.random.default_rng(3)
    t = np.exp(1j * rng.uniform(0, 0.5, (4, *GRID.gpts))).astype(np.complex64)
    P = fresnel_propagator(GRID, wavelength(200e3), 1.3)
    psis = (rng.normal(size=(3, *GRID.gpts)) + 1j * rng.normal(size=(3, *GRID.gpts))).astype(np.complex64)
    loop = np.stack([np.asarray(multislice(p, t, P)) for p in psis])
    np.testing.assert_allclose(multislice(psis, t, P), loop, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda p: multislice(p, t, P))(psis), loop, atol=1e-5)
    np.testing.assert_allclose(jax.jit(multislice, static_argnums=3)(psis, t, P, True), loop, atol=1e-5)

    def loss(phase, checkpoint):
        tt = jnp.exp(1j * phase).astype(jnp.complex64)
        return jnp.sum(jnp.abs(multislice(psis, tt, P, checkpoint)) ** 4)

    phase = jnp.asarray(np.angle(t), jnp.float32)
    g0 = jax.grad(loss)(phase, False)
    g1 = jax.grad(loss)(phase, True)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-3 * float(jnp.abs(g0).max()))


def test_fused_multislice_equals_transmit_then_propagate():
    rng = np.random.default_rng(4)
    V = rng.uniform(0, 40, (3, *GRID.gpts)).astype(np.float32)
    P = fresnel_propagator(GRID, wavelength(80e3), 1.1, (2.0, 1.0))
    psi = np.stack([np.asarray(plane_wave(GRID)), np.exp(1j * rng.uniform(0, 1, GRID.gpts))]).astype(np.complex64)
    ref = multislice(psi, transmission_function(V, 80e3, grid=GRID), P)
    np.testing.assert_allclose(multislice_potential(psi, V, 80e3, P, grid=GRID), ref, atol=2e-5)
    np.testing.assert_allclose(multislice_potential(psi, V, 80e3, P, grid=GRID, checkpoint=True), ref, atol=2e-5)
    assert plane_wave(GRID).shape == GRID.gpts and float(jnp.abs(plane_wave(GRID)).min()) == 1.0
