"""Frozen phonons: displacement statistics, explicit keys, intensity averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward.beam import make_beam
from forward.errors import InputError
from forward.grid import make_grid
from forward.hrtem import make_hrtem_simulator
from forward.phonons import displace_atoms, frozen_phonon_average, make_frozen_phonon_simulator
from forward.specimen import make_specimen


def test_displacement_statistics(rng_key):
    # sigma per Cartesian direction: sample std of each coordinate matches dw_sigmas.
    n = 4000
    pos = np.zeros((n, 3)) + [5.0, 5.0, 5.0]
    sig = np.where(np.arange(n) < n // 2, 0.05, 0.12)
    sp = make_specimen(pos, [8] * n, (10.0, 10.0, 10.0), sig, min_distance=0)
    d = np.asarray(displace_atoms(rng_key, sp).positions) - pos
    for sel, s in [(slice(0, n // 2), 0.05), (slice(n // 2, n), 0.12)]:
        np.testing.assert_allclose(d[sel].std(axis=0), s, rtol=0.06)
        np.testing.assert_allclose(d[sel].mean(axis=0), 0.0, atol=4 * s / np.sqrt(n / 2))
    # Independent directions.
    assert abs(np.corrcoef(d[:, 0], d[:, 1])[0, 1]) < 0.06


def test_keys_are_explicit_and_reproducible(rng_key):
    sp = make_specimen([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], [8, 8], (4.0, 4.0, 4.0), 0.1)
    a = displace_atoms(rng_key, sp).positions
    b = displace_atoms(rng_key, sp).positions
    c = displace_atoms(jax.random.fold_in(rng_key, 1), sp).positions
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    static = make_specimen([[1.0, 1.0, 1.0]], [8], (4.0, 4.0, 4.0), 0.0)
    np.testing.assert_array_equal(displace_atoms(rng_key, static).positions, static.positions)


def _setup():
    cell = (4.0, 4.0, 4.0)
    grid = make_grid(extent=cell[:2], gpts=(24, 24))
    sim = make_hrtem_simulator(grid, cell[2], 2.0, species=(8, 38))
    sp = make_specimen([[1.0, 1.0, 0.5], [3.0, 2.5, 2.5]], [38, 8], cell, [0.08, 0.1])
    beam = make_beam(200e3, semiangle_cutoff=25.0, defocus=30.0)
    return sim, sp, beam


def test_intensities_are_averaged_not_waves(rng_key):
    sim, sp, beam = _setup()
    fp = make_frozen_phonon_simulator(sim, 4)
    avg = np.asarray(fp(rng_key, sp, beam))
    manual = np.mean([np.asarray(sim(displace_atoms(jax.random.fold_in(rng_key, i), sp), beam)) for i in range(4)], axis=0)
    np.testing.assert_allclose(avg, manual, rtol=1e-4, atol=1e-9)
    # Averaging waves first would give |<psi>|^2 <= <|psi|^2>: the diffuse part is kept here.
    waves = [sim.exit_wave(displace_atoms(jax.random.fold_in(rng_key, i), sp), beam) for i in range(4)]
    coherent = np.asarray(sim.image_from_exit_wave(jnp.mean(jnp.stack(waves), axis=0), beam))
    assert avg.sum() > coherent.sum()
    # Deterministic for a fixed key; jit equals eager.
    np.testing.assert_allclose(jax.jit(fp)(rng_key, sp, beam), avg, rtol=1e-4, atol=1e-9)
    # Zero sigmas reproduce the static image.
    static = type(sp)(positions=sp.positions, numbers=sp.numbers, cell=sp.cell, dw_sigmas=np.zeros(2))
    np.testing.assert_allclose(fp(rng_key, static, beam), sim(static, beam), rtol=1e-5, atol=1e-9)


def test_frozen_phonon_average_of_any_function(rng_key):
    sp = make_specimen([[1.0, 1.0, 1.0]], [8], (4.0, 4.0, 4.0), 0.2)
    mean_x = frozen_phonon_average(rng_key, sp, lambda s: s.positions[0, 0], 64)
    assert float(mean_x) == pytest.approx(1.0, abs=4 * 0.2 / 8)


def test_n_configs_error():
    with pytest.raises(InputError, match="n_configs must be a positive integer"):
        make_frozen_phonon_simulator(lambda s, b: s, 0)
    with pytest.raises(InputError, match="n_configs must be a positive integer"):
        frozen_phonon_average(None, None, lambda s: s, 2.5)
