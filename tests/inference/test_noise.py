"""Noise models: likelihoods against scipy, sampling moments, the shifted-Poisson approximation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from forward import InputError, make_detector
from inference import make_noise_model, noise_from_detector, sample_counts
from inference.noise import _check_counts, log_likelihood, pixel_log_likelihood, poisson_fisher_weight
from tests.pytree_checks import check_pickle, check_tree_map


def test_poisson_matches_scipy():
    noise = make_noise_model("poisson")
    mu = np.array([[0.3, 2.0], [15.0, 400.0]])
    y = np.array([[0.0, 3.0], [11.0, 390.0]])
    want = st.poisson.logpmf(y, mu).sum()
    # float32 throughout: lgamma(391) and 390 log(400) each carry ~1e-4 absolute rounding
    np.testing.assert_allclose(float(log_likelihood(noise, y, mu)), want, atol=1e-3)
    np.testing.assert_allclose(np.asarray(pixel_log_likelihood(noise, y, mu)), st.poisson.logpmf(y, mu), rtol=1e-4, atol=1e-5)


def test_poisson_with_gain_is_poisson_of_counts_over_gain():
    noise = make_noise_model("poisson", gain=4.0)
    mu = np.array([[1.0, 7.0]])
    y = 4.0 * np.array([[2.0, 5.0]])
    want = st.poisson.logpmf(y / 4.0, mu).sum() - 2 * np.log(4.0)
    np.testing.assert_allclose(float(log_likelihood(noise, y, mu)), want, rtol=1e-5)


def test_gaussian_matches_scipy():
    noise = make_noise_model("gaussian", gain=2.0, read_noise=3.0)
    mu = np.array([[10.0, 20.0], [5.0, 0.0]])
    y = np.array([[18.0, 44.0], [7.0, -2.0]])
    want = st.norm.logpdf(y, 2.0 * mu, 3.0).sum()
    np.testing.assert_allclose(float(log_likelihood(noise, y, mu)), want, rtol=1e-5)


def test_batch_axes_and_jit():
    noise = make_noise_model("poisson_gaussian", gain=1.5, read_noise=0.8)
    y = np.array([[0.0, 3.1], [-0.5, 12.0]])
    mus = np.stack([np.full((2, 2), m) for m in (0.5, 2.0, 8.0)])
    got = log_likelihood(noise, y, mus)
    loop = jnp.stack([log_likelihood(noise, y, m) for m in mus])
    np.testing.assert_allclose(np.asarray(got), np.asarray(loop), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(log_likelihood)(noise, y, mus)), np.asarray(got), rtol=1e-6)


@pytest.mark.parametrize(
    ("kind", "gain", "read"), [("poisson", 1.0, 0.0), ("poisson", 3.0, 0.0), ("poisson_gaussian", 2.0, 1.5), ("gaussian", 1.0, 2.0)]
)
def test_sampling_moments(rng_key, kind, gain, read):
    noise = make_noise_model(kind, gain=gain, read_noise=read)
    mu = jnp.full((200, 200), 3.0)
    y = np.asarray(sample_counts(rng_key, noise, mu))
    var = (gain**2 * 3.0 if kind != "gaussian" else 0.0) + read**2
    # 40,000 draws: mean to ~4 standard errors, variance to 5%
    assert abs(y.mean() - gain * 3.0) < 4 * np.sqrt(var / y.size)
    assert abs(y.var() / var - 1) < 0.05


def _exact_poisson_gaussian_loglik(y, mu, gain, read):
    n = np.arange(0, 200)
    terms = st.poisson.logpmf(n[:, None], mu) + st.norm.logpdf(y[None, :], gain * n[:, None], read)
    return np.logaddexp.reduce(terms, axis=0).sum()


def test_shifted_poisson_maximum_likelihood_close_to_exact(rng_key):
    """Snyder et al. (1993): the ML dose estimate from the shifted-Poisson likelihood agrees with
    the exact Poisson-Gaussian one to <2% at 2 electrons per pixel, gain 1, read noise 1."""
    noise = make_noise_model("poisson_gaussian", gain=1.0, read_noise=1.0)
    y = np.asarray(sample_counts(rng_key, noise, jnp.full((400,), 2.0)), dtype=np.float64)
    grid = np.linspace(1.5, 2.5, 101)
    approx = [float(log_likelihood(noise, y, jnp.full((400,), m))) for m in grid]
    exact = [_exact_poisson_gaussian_loglik(y, m, 1.0, 1.0) for m in grid]
    m_a, m_e = grid[int(np.argmax(approx))], grid[int(np.argmax(exact))]
    assert abs(m_a - m_e) / m_e < 0.02


def test_fisher_weight():
    noise = make_noise_model("poisson_gaussian", gain=2.0, read_noise=2.0)
    np.testing.assert_allclose(np.asarray(poisson_fisher_weight(noise, jnp.array([3.0]))), [1 / 4.0], rtol=1e-6)
    assert float(poisson_fisher_weight(make_noise_model("poisson"), jnp.array([4.0]))[0]) == pytest.approx(0.25)


def test_from_detector_and_pytree():
    n = noise_from_detector(make_detector("hrtem", gain=2.0, read_noise=1.0))
    assert n.kind == "poisson_gaussian" and float(n.gain) == 2.0
    assert noise_from_detector(make_detector("hrtem")).kind == "poisson"
    check_pickle(n)
    check_tree_map(n)


def test_bad_noise_input():
    with pytest.raises(InputError, match="unknown noise model 'poison'"):
        make_noise_model("poison")
    with pytest.raises(InputError, match="gaussian noise model needs read_noise > 0"):
        make_noise_model("gaussian")
    with pytest.raises(InputError, match="poisson noise model has no read noise"):
        make_noise_model("poisson", read_noise=1.0)
    with pytest.raises(InputError, match=r"gain must be in \(0, 1e\+06\]"):
        make_noise_model("poisson", gain=0.0)


def test_bad_counts():
    noise = make_noise_model("poisson")
    with pytest.raises(InputError, match=r"frame shape \[4, 5\] does not match the simulated images \[4, 4\]"):
        _check_counts(np.zeros((4, 5)), (4, 4), noise)
    y = np.zeros((4, 4))
    y[1, 2] = np.nan
    with pytest.raises(InputError, match=r"must be finite, got nan at pixel \(1, 2\)"):
        _check_counts(y, (4, 4), noise)
    y = np.zeros((4, 4))
    y[3, 0] = -2
    with pytest.raises(InputError, match=r">= 0 under the poisson noise model, got -2 at pixel \(3, 0\)"):
        _check_counts(y, (4, 4), noise)
    # negative counts are fine with read noise
    _check_counts(y, (4, 4), make_noise_model("poisson_gaussian", read_noise=1.0))


def test_expected_electrons_is_the_one_definition_of_forward():
    """inference and forward share one expected_electrons: dose x area x intensity, round-off
    negatives clipped to 0 (a Poisson mean cannot be negative)."""
    import forward.noise
    import inference

    assert inference.expected_electrons is forward.noise.expected_electrons
    lam = inference.expected_electrons(jnp.array([[-1e-7, 0.5], [1.0, 2.0]]), 40.0, 0.01)
    np.testing.assert_allclose(np.asarray(lam), [[0.0, 0.2], [0.4, 0.8]], rtol=1e-6)
