"""forward.noise: dose -> expected electrons -> Poisson-Gaussian counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward.beam import make_detector
from forward.errors import InputError
from forward.noise import count_moments, expected_electrons, pixel_area, sample_frame


def test_expected_electrons_is_dose_times_area_times_fraction():
    signal = jnp.array([[0.0, 0.25], [0.5, 1.0]])
    lam = expected_electrons(signal, 1e4, pixel_area((0.2, 0.3)))
    np.testing.assert_allclose(np.asarray(lam), 1e4 * 0.06 * np.asarray(signal), rtol=1e-6)
    # float round-off below zero is clipped, never a negative Poisson mean
    assert float(expected_electrons(jnp.array([-1e-9]), 10.0, 1.0)[0]) == 0.0


def test_poisson_mean_and_variance(rng_key):
    # 200k draws at lambda = 3.7: standard error of the mean 0.0043, of the variance ~0.013.
    det = make_detector()
    frame = sample_frame(rng_key, jnp.full((400, 500), 3.7), det)
    assert float(frame.mean()) == pytest.approx(3.7, abs=0.03)
    assert float(frame.var()) == pytest.approx(3.7, abs=0.08)
    assert np.all(np.asarray(frame) == np.round(np.asarray(frame)))  # integer counts


def test_gain_and_read_noise_moments(rng_key):
    det = make_detector(gain=2.5, read_noise=1.5)
    lam = jnp.full((400, 500), 0.8)
    frame = sample_frame(rng_key, lam, det)
    mean, var = count_moments(lam, det)
    assert float(mean[0, 0]) == pytest.approx(2.0)
    assert float(var[0, 0]) == pytest.approx(2.5**2 * 0.8 + 1.5**2)
    assert float(frame.mean()) == pytest.approx(2.0, abs=0.03)  # se 0.0066
    assert float(frame.var()) == pytest.approx(float(var[0, 0]), abs=0.15)  # se ~0.03


def test_fixed_key_is_reproducible_and_keys_differ(rng_key):
    det = make_detector()
    lam = jnp.full((16, 16), 5.0)
    a = sample_frame(rng_key, lam, det)
    b = jax.jit(sample_frame)(rng_key, lam, det)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = sample_frame(jax.random.fold_in(rng_key, 1), lam, det)
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_zero_dose_gives_zero_counts(rng_key):
    frame = sample_frame(rng_key, expected_electrons(jnp.ones((8, 8)), 1e-12, 1e-4), make_detector())
    assert float(jnp.abs(frame).max()) == 0.0


def test_pixel_area_guard():
    with pytest.raises(InputError, match=r"sampling must be one or two positive pixel sizes \(dx, dy\)"):
        pixel_area((0.1, -0.2))
