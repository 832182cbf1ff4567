"""HRTEM simulation: abTEM agreement (exit wave, CTF, envelopes), camera, transforms and guards."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from forward._pytree import replace
from forward.beam import make_beam, make_detector
from forward.constants import wavelength
from forward.errors import InputError
from forward.grid import make_grid
from forward.hrtem import (
    ctf,
    detector_mtf,
    make_hrtem_simulator,
    resample_to_camera,
    spatial_envelope,
    temporal_envelope,
)
from forward.reciprocal import polar_frequencies
from forward.specimen import make_specimen, stack_specimens

from ._abtem_ref import SRTIO3_A, abtem_exit_wave, abtem_image, abtem_potential, rel_l2, srtio3

#: float32 agreement with abTEM, measured at ~1.5e-6; the issue asks for <= 1e-3.
TOL_ABTEM = 1e-4

ABERRATIONS = {"C10": -50.0, "C12": 20.0, "phi12": 0.3, "C21": 300.0, "phi21": 1.1, "C23": 150.0,
               "phi23": -0.4, "C30": -1e5}  # fmt: skip


@functools.cache
def _case(parametrization="lobato", energy=300e3, tilt=(0.0, 0.0)):
    atoms = srtio3((2, 2, 3))
    gpts = (64, 64)
    _, V_ref, sampling, st = abtem_potential(atoms, gpts, SRTIO3_A / 2, parametrization)
    grid = make_grid(extent=atoms.cell.lengths()[:2], gpts=gpts)
    sp = make_specimen(atoms.positions, atoms.numbers, atoms.cell.lengths())
    sim = make_hrtem_simulator(grid, atoms.cell[2, 2], SRTIO3_A / 2, parametrization=parametrization, species=(8, 22, 38))
    return atoms, grid, sp, sim, V_ref, sampling, st


@pytest.mark.parametrize(
    "parametrization, energy, tilt",
    [("lobato", 300e3, (0.0, 0.0)), ("kirkland", 80e3, (3.0, -2.0))],
)
def test_exit_wave_intensity_matches_abtem(parametrization, energy, tilt):
    atoms, grid, sp, sim, V_ref, sampling, st = _case(parametrization)
    beam = make_beam(energy, tilt=tilt)
    ref = abtem_exit_wave(V_ref, sampling, st, energy, tilt)
    psi = np.asarray(sim.exit_wave(sp, beam))
    assert rel_l2(np.abs(psi) ** 2, np.abs(ref) ** 2) < TOL_ABTEM
    assert rel_l2(psi, ref) < TOL_ABTEM


def test_image_with_ctf_and_envelopes_matches_abtem():
    atoms, grid, sp, sim, V_ref, sampling, st = _case()
    tilt = (2.0, 1.0)
    ref = abtem_image(
        V_ref, sampling, st, 300e3, tilt, semiangle_cutoff=25.0, focal_spread=40.0,
        angular_spread=0.6, aberration_coefficients=ABERRATIONS,
    )  # fmt: skip
    beam = make_beam(300e3, semiangle_cutoff=25.0, aberrations=ABERRATIONS, tilt=tilt,
                     focal_spread=40.0, angular_spread=0.6)  # fmt: skip
    image = np.asarray(sim(sp, beam))
    assert rel_l2(image, ref) < TOL_ABTEM  # both relative to the incident beam (vacuum = 1)
    # The fraction of the beam through the aperture: below 1, above 0.9 for this thin crystal.
    assert 0.9 < image.mean() < 1.0


def test_ctf_components_match_abtem():
    from abtem.transfer import CTF, SpatialEnvelope, TemporalEnvelope

    grid = make_grid(extent=(12.0, 10.0), gpts=(48, 40))
    beam = make_beam(200e3, semiangle_cutoff=18.0, aberrations={**ABERRATIONS, "C50": 5e6},
                     focal_spread=25.0, angular_spread=0.8)  # fmt: skip
    lam = wavelength(200e3)
    alpha, phi = (np.asarray(a, np.float64) for a in polar_frequencies(grid, lam))
    kw = dict(energy=200e3, extent=grid.extent, gpts=grid.gpts)
    et = TemporalEnvelope(focal_spread=25.0, **kw)._evaluate_from_angular_grid(alpha, phi)
    np.testing.assert_allclose(temporal_envelope(alpha, lam, 25.0), et, atol=1e-6)
    es = SpatialEnvelope(angular_spread=0.8, aberration_coefficients={**ABERRATIONS, "C50": 5e6}, **kw)
    es = es._evaluate_from_angular_grid(alpha, phi)
    np.testing.assert_allclose(spatial_envelope(alpha, phi, lam, beam.aberrations, 0.8), es, atol=2e-5)
    ref = CTF(semiangle_cutoff=18.0, focal_spread=25.0, angular_spread=0.8,
              aberration_coefficients={**ABERRATIONS, "C50": 5e6}, **kw)._evaluate_kernel()  # fmt: skip
    np.testing.assert_allclose(ctf(grid, beam), ref, atol=5e-5)


def test_defocus_needs_one_fft_pair_after_the_exit_wave():
    atoms, grid, sp, sim, *_ = _case()
    beams = [make_beam(300e3, semiangle_cutoff=20.0, defocus=d, focal_spread=20.0) for d in (-40.0, 0.0, 60.0)]
    psi = sim.exit_wave(sp, beams[0])
    for b in beams:
        np.testing.assert_allclose(sim.image_from_exit_wave(psi, b), sim(sp, b), rtol=1e-5, atol=1e-9)
    # vmap over a batch of beams equals the loop; jit equals eager.
    batch = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *beams)
    images = jax.vmap(sim.image_from_exit_wave, in_axes=(None, 0))(psi, batch)
    for img, b in zip(images, beams):
        np.testing.assert_allclose(img, sim.image_from_exit_wave(psi, b), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(jax.jit(sim)(sp, beams[2]), sim(sp, beams[2]), rtol=1e-4, atol=1e-8)


def test_camera_binning_mtf_and_fourier_resampling():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(12, 18)).astype(np.float32)
    binned = np.asarray(resample_to_camera(img, (4, 6)))
    np.testing.assert_allclose(binned, img.reshape(4, 3, 6, 3).mean(axis=(1, 3)), rtol=1e-6)
    four = np.asarray(resample_to_camera(img, (10, 14)))
    assert four.shape == (10, 14) and four.mean() == pytest.approx(img.mean(), rel=1e-5)
    # A band-limited image is Fourier-resampled exactly.
    x = np.arange(16)[:, None] / 16
    smooth = (1 + 0.5 * np.cos(2 * np.pi * 2 * x) * np.ones((1, 16))).astype(np.float32)
    up = np.asarray(resample_to_camera(smooth, (10, 10)))
    xs = np.arange(10)[:, None] / 10
    np.testing.assert_allclose(up, (1 + 0.5 * np.cos(2 * np.pi * 2 * xs)) * np.ones((1, 10)), rtol=1e-5)
    # MTF (Thust 2009, eq. 6): 1 for a perfect detector; a at zero frequency; b + (a-b)/2 at q = 2c.
    np.testing.assert_allclose(detector_mtf((8, 8), (1.0, 1.0, 1.0, 1.0)), 1.0)
    m = np.asarray(detector_mtf((8, 8), (1.0, 0.2, 0.5, 3.0)))
    assert m[0, 0] == pytest.approx(1.0) and m[4, 0] == pytest.approx(0.2 + 0.8 / 2, rel=1e-6)
    assert np.all(np.diff(m[:5, 0]) < 0)


def test_camera_and_mtf_in_the_simulator():
    atoms, grid, sp, sim, *_ = _case()
    cam = make_hrtem_simulator(grid, atoms.cell[2, 2], SRTIO3_A / 2, camera_gpts=(32, 16))
    beam = make_beam(300e3, semiangle_cutoff=20.0, defocus=30.0)
    full = np.asarray(sim(sp, beam))
    binned = np.asarray(cam(sp, beam))
    np.testing.assert_allclose(binned, full.reshape(32, 2, 16, 4).mean(axis=(1, 3)), rtol=2e-5, atol=1e-7)
    soft = replace(beam, detector=make_detector(mtf=(1.0, 0.3, 0.4, 2.5)))
    blurred = np.asarray(cam(sp, soft))
    assert blurred.mean() == pytest.approx(binned.mean(), rel=1e-5)  # MTF(0) = a = 1 keeps the dose
    assert blurred.std() < binned.std()


def test_gradients_positions_defocus_tilt():
    cell = (4.0, 4.0, 4.0)
    grid = make_grid(extent=cell[:2], gpts=(24, 24))
    sim = make_hrtem_simulator(grid, cell[2], 2.0, species=(8, 38))
    sp = make_specimen([[1.1, 1.3, 0.5], [2.9, 2.6, 2.5]], [38, 8], cell)
    beam = make_beam(200e3, semiangle_cutoff=25.0, defocus=40.0, tilt=(1.0, 2.0), focal_spread=20.0,
                     angular_spread=0.3, aberrations=None)  # fmt: skip
    w = jnp.asarray(np.random.default_rng(0).normal(size=grid.gpts), jnp.float32)

    def f(xy, defocus, tilt):
        pos = jnp.concatenate([xy, jnp.asarray(sp.positions[:, 2:], jnp.float32)], axis=1)
        s = replace(sp, positions=pos)
        ab = replace(beam.aberrations, C10=-defocus)
        b = replace(beam, aberrations=ab, tilt=tilt)
        return jnp.sum(sim(s, b) * w) * 1e3

    args = (jnp.asarray(sp.positions[:, :2], jnp.float32), jnp.float32(40.0), jnp.asarray([1.0, 2.0], jnp.float32))
    check_grads(f, args, order=1, modes=("rev",), eps=2e-2, atol=3e-2, rtol=3e-2)


def test_vmap_over_specimens_equals_loop():
    cell = (4.0, 4.0, 4.0)
    grid = make_grid(extent=cell[:2], gpts=(20, 20))
    sim = make_hrtem_simulator(grid, cell[2], 2.0, species=(8, 38))
    sps = [make_specimen([[1.0 + d, 1.0, 0.5], [3.0, 2.5 - d, 2.5]], [38, 8], cell) for d in (0.0, 0.2, 0.5)]
    beam = make_beam(200e3, semiangle_cutoff=25.0, defocus=20.0)
    loop = np.stack([np.asarray(sim(s, beam)) for s in sps])
    batch = jax.jit(jax.vmap(sim, in_axes=(0, None)))(stack_specimens(sps), beam)
    np.testing.assert_allclose(batch, loop, rtol=1e-4, atol=1e-8)


def test_guards():
    cell = (4.0, 4.0, 4.0)
    grid = make_grid(extent=cell[:2], gpts=(16, 16))
    sim = make_hrtem_simulator(grid, cell[2], 2.0)
    sp = make_specimen([[1.0, 1.0, 0.5]], [38], cell)
    with pytest.raises(InputError, match="sampling too coarse for the objective aperture semiangle of 40 mrad"):
        sim(sp, make_beam(200e3, semiangle_cutoff=40.0))
    with pytest.raises(InputError, match=r"beam energy must be in .* got 200 eV; did you give kV"):
        sim(sp, replace(make_beam(200e3), energy=np.asarray(200.0)))
    with pytest.raises(InputError, match="does not match the specimen cell"):
        sim(make_specimen([[1.0, 1.0, 0.5]], [38], (5.0, 4.0, 4.0)), make_beam(200e3))
    with pytest.raises(InputError, match="specimen is 6 Å thick"):
        sim(make_specimen([[1.0, 1.0, 0.5]], [38], (4.0, 4.0, 6.0)), make_beam(200e3))
    with pytest.raises(InputError, match="detector is in mode 'stem_annular'"):
        stem = make_detector("stem_annular", inner=50.0, outer=150.0)
        sim(sp, make_beam(200e3, semiangle_cutoff=20.0, detector=stem))
    with pytest.raises(InputError, match="thicker than the specimen"):
        make_hrtem_simulator(grid, 4.0, 5.0)
    with pytest.raises(InputError, match="finer than the simulation grid"):
        make_hrtem_simulator(grid, 4.0, 2.0, camera_gpts=(32, 32))
    with pytest.raises(InputError, match="camera_gpts must be a positive integer"):
        make_hrtem_simulator(grid, 4.0, 2.0, camera_gpts=(0, 4))


def _thickness_case():
    cell = (4.0, 4.0, 4.0)
    grid = make_grid(extent=cell[:2], gpts=(24, 24))
    sim = make_hrtem_simulator(grid, cell[2], 1.0, species=(8, 38))
    sp = make_specimen([[1.1, 1.3, 0.5], [2.9, 2.6, 1.5], [2.0, 0.4, 3.2]], [38, 8, 38], cell)
    beam = make_beam(200e3, semiangle_cutoff=25.0, defocus=40.0, tilt=(1.0, 2.0), focal_spread=20.0)
    return cell, grid, sim, sp, beam


def test_thickness_is_a_continuous_exit_plane():
    cell, grid, sim, sp, beam = _thickness_case()
    full = np.asarray(sim(sp, beam))
    np.testing.assert_allclose(sim(sp, beam, 4.0), full, rtol=1e-5, atol=1e-6)  # whole specimen
    # At a whole number of slices: the simulator of the lower two slices alone.
    lower = make_specimen(sp.positions[:2], sp.numbers[:2], (*cell[:2], 2.0))
    two = make_hrtem_simulator(grid, 2.0, 1.0, species=(8, 38))
    np.testing.assert_allclose(sim(sp, beam, 2.0), two(lower, beam), rtol=1e-5, atol=1e-6)
    # Continuous across the boundary into the slice of the upper Sr atom, which a partial slice
    # crosses in part: its image differs from both whole-slice neighbours.
    below, above = np.asarray(sim(sp, beam, 3.0 - 1e-3)), np.asarray(sim(sp, beam, 3.0 + 1e-3))
    assert rel_l2(below, above) < 1e-3
    mid = np.asarray(sim(sp, beam, 3.5))
    assert min(rel_l2(mid, below), rel_l2(mid, full)) > 5e-3
    # jit with a traced thickness, and vmap over thicknesses.
    ts = jnp.asarray([1.5, 2.0, 3.7], jnp.float32)
    batch = jax.jit(jax.vmap(sim.simulate, in_axes=(None, None, 0)))(sp, beam, ts)
    for img, t in zip(batch, ts):
        np.testing.assert_allclose(img, sim(sp, beam, float(t)), rtol=1e-4, atol=1e-6)


def test_gradient_thickness():
    cell, grid, sim, sp, beam = _thickness_case()
    w = jnp.asarray(np.random.default_rng(1).normal(size=grid.gpts), jnp.float32)

    def f(thickness):
        return jnp.sum(sim(sp, beam, thickness) * w) * 1e2

    for t0 in (1.4, 3.3):  # inside slices with atoms (the image has a kink at each slice boundary)
        check_grads(f, (jnp.float32(t0),), order=1, modes=("fwd", "rev"), eps=2e-2, atol=3e-2, rtol=3e-2)
    assert abs(float(jax.grad(f)(jnp.float32(3.3)))) > 1.0


def test_thickness_guards():
    cell, grid, sim, sp, beam = _thickness_case()
    for bad in (0.0, -1.0, 4.5, np.array([1.0, 2.0])):
        with pytest.raises(InputError, match=r"thickness must be a single number in \(0, 4\] Å"):
            sim(sp, beam, bad)
