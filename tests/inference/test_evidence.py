"""Evidence with nuisance parameters: Laplace against exact integrals, shifts, consistency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from forward import InputError
from inference import (
    fourier_shift,
    make_noise_model,
    make_nuisance_prior,
    sample_counts,
    signal_relative_prior,
)
from inference.noise import log_likelihood
from tests.inference import _model as M
from tests.inference._scorers import make_laplace_scorer, make_linear_scorer
from tests.pytree_checks import check_pickle


SIM = M.make_simulate_fn()
IMAGES = M.library_images(SIM, M.beam())


def test_fourier_shift_integer_is_roll_and_composes():
    img = IMAGES[1]
    np.testing.assert_allclose(np.asarray(fourier_shift(img, jnp.array([3.0, -2.0]))), np.roll(np.asarray(img), (3, -2), (0, 1)), atol=1e-5)
    a = fourier_shift(fourier_shift(img, jnp.array([0.3, 0.1])), jnp.array([0.2, -0.4]))
    b = fourier_shift(img, jnp.array([0.5, -0.3]))
    # exact but for the Nyquist row/column of the even grid (a real image keeps only cos there)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3)


def test_fourier_shift_matches_moving_the_columns():
    """The analytic model is nearly band-limited (column width 1.25 px): a Fourier shift of its
    image equals the image of shifted columns to 1% of the column peak."""
    p = M.base_params()
    d = jnp.array([0.37, -0.21])  # [pixels]
    moved = dict(p, positions=p["positions"] + d[None, :] * M.SAMPLING)
    np.testing.assert_allclose(np.asarray(fourier_shift(SIM(p, M.beam()), d)), np.asarray(SIM(moved, M.beam())), atol=1e-2)


def test_linear_gaussian_evidence_is_exact(rng_key):
    """Gaussian noise, known shift: the model is linear-Gaussian and Laplace is exact."""
    noise = make_noise_model("gaussian", gain=2.0, read_noise=4.0)
    prior = make_nuisance_prior(scale_mean=1.0, scale_sd=0.2, background_mean=0.05, background_sd=0.03)
    e = M.exposure(100.0)
    y = sample_counts(rng_key, noise, e * (1.1 * IMAGES[2] + 0.04))
    ev = make_linear_scorer(noise, prior)(y, IMAGES, e)
    for h in range(IMAGES.shape[0]):
        a = 2.0 * e * np.stack([np.asarray(IMAGES[h], np.float64).ravel(), np.ones(IMAGES[h].size)], axis=1)
        m = a @ np.array([1.0, 0.05])
        cov = 16.0 * np.eye(a.shape[0]) + a @ np.diag([0.2**2, 0.03**2]) @ a.T
        want = st.multivariate_normal(m, cov).logpdf(np.asarray(y, np.float64).ravel())
        assert float(ev.log_evidence[h]) == pytest.approx(want, abs=0.02)


def _brute_force_evidence(noise, y, image, e, prior, s_grid, b_grid):
    s, b = np.meshgrid(s_grid, b_grid, indexing="ij")
    mu = np.maximum(e * (s[..., None, None] * np.asarray(image, np.float64) + b[..., None, None]), 1e-12)
    yy = np.asarray(y, np.float64)
    ll = (st.poisson.logpmf(yy, mu)).sum(axis=(-2, -1))
    lp = st.norm.logpdf(s, float(prior.scale_mean), float(prior.scale_sd)) + st.norm.logpdf(
        b, float(prior.background_mean), float(prior.background_sd)
    )
    f = ll + lp
    fmax = f.max()
    z = np.trapezoid(np.trapezoid(np.exp(f - fmax), b_grid, axis=1), s_grid)
    return fmax + np.log(z)


@pytest.mark.parametrize(("dose", "tol"), [(10.0, 0.05), (200.0, 0.02)])
def test_linear_poisson_laplace_matches_quadrature(rng_key, dose, tol):
    """Laplace over (scale, background) against 2-D quadrature of the exact Poisson integral."""
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior(scale_mean=1.0, scale_sd=0.2, background_mean=0.05, background_sd=0.03)
    e = M.exposure(dose)
    y = sample_counts(rng_key, noise, e * (0.9 * IMAGES[0] + 0.06))
    ev = make_linear_scorer(noise, prior)(y, IMAGES, e)
    for h in (0, 3):
        s0, b0 = float(ev.scale[h]), float(ev.background[h])
        ss, bs = float(ev.scale_sd[h]), float(ev.background_sd[h])
        s_grid = np.linspace(max(s0 - 7 * ss, 1e-3), s0 + 7 * ss, 161)
        b_grid = np.linspace(max(b0 - 7 * bs, -0.099), b0 + 7 * bs, 161)
        want = _brute_force_evidence(noise, y, IMAGES[h], e, prior, s_grid, b_grid)
        assert float(ev.log_evidence[h]) == pytest.approx(want, abs=tol)


def test_laplace_scorer_recovers_shift_and_nuisance(rng_key):
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior(scale_sd=0.2, background_mean=0.05, background_sd=0.03, shift_sd=0.5)
    e = M.exposure(2000.0)
    truth = jnp.array([0.3, -0.2])
    y = sample_counts(rng_key, noise, e * (1.1 * fourier_shift(IMAGES[4], truth) + 0.05))
    ev = make_laplace_scorer(noise, prior)(y, IMAGES, e)
    assert int(jnp.argmax(ev.log_evidence)) == 4
    assert np.all(np.abs(np.asarray(ev.shift[4] - truth)) < 4 * np.asarray(ev.shift_sd[4]))
    assert abs(float(ev.scale[4]) - 1.1) < 4 * float(ev.scale_sd[4])
    assert float(ev.grad_norm[4]) < 1e-2 * float(jnp.sqrt(jnp.sum(y)))
    check_pickle(ev)


def test_laplace_scorer_with_pinned_shift_equals_linear(rng_key):
    """With a vanishing shift prior the 4-parameter Laplace reduces to the 2-parameter one
    (the pinned shift contributes log N(0; 0, sd) + 1/2 log(2 pi sd²) = 0 per axis)."""
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior(background_mean=0.05, background_sd=0.03, shift_sd=1e-4)
    e = M.exposure(50.0)
    y = sample_counts(rng_key, noise, e * (IMAGES[1] + 0.05))
    a = make_laplace_scorer(noise, prior)(y, IMAGES, e)
    b = make_linear_scorer(noise, prior)(y, IMAGES, e)
    np.testing.assert_allclose(np.asarray(a.log_evidence), np.asarray(b.log_evidence), atol=0.02)


def test_scorer_vmap_equals_loop_and_known_shift(rng_key):
    noise = make_noise_model("poisson_gaussian", gain=2.0, read_noise=1.0)
    prior = make_nuisance_prior()
    e = M.exposure(30.0)
    y = sample_counts(rng_key, noise, e * IMAGES[3])
    score = make_linear_scorer(noise, prior)
    batch = score(y, IMAGES, e, shift=(0.5, 0.0))
    for h in range(IMAGES.shape[0]):
        one = score(y, IMAGES[h : h + 1], e, shift=(0.5, 0.0))
        np.testing.assert_allclose(float(one.log_evidence[0]), float(batch.log_evidence[h]), rtol=1e-5)
    shifted = jax.vmap(fourier_shift, in_axes=(0, None))(IMAGES, jnp.array([0.5, 0.0]))
    np.testing.assert_allclose(np.asarray(score(y, shifted, e).log_evidence), np.asarray(batch.log_evidence), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(batch.shift[2]), [0.5, 0.0])


def test_profile_loglik_at_map_is_consistent():
    """The reported log-likelihood is the full likelihood at the reported MAP values."""
    noise = make_noise_model("poisson")
    e = M.exposure(100.0)
    y = jnp.round(e * IMAGES[0])
    ev = make_linear_scorer(noise, make_nuisance_prior())(y, IMAGES, e)
    h = 2
    mu = e * (ev.scale[h] * IMAGES[h] + ev.background[h])
    assert float(ev.log_likelihood[h]) == pytest.approx(float(log_likelihood(noise, y, mu)), rel=1e-5)


def test_evidence_bad_input():
    noise = make_noise_model("poisson")
    score = make_linear_scorer(noise, make_nuisance_prior())
    with pytest.raises(InputError, match="the library is empty"):
        score(jnp.zeros((16, 16)), jnp.zeros((0, 16, 16)), 1.0)
    with pytest.raises(InputError, match=r"frame shape \[16, 8\] does not match the cached images \[16, 16\]"):
        score(jnp.zeros((16, 8)), IMAGES, 1.0)
    with pytest.raises(InputError, match=r"images must be \[H, nx, ny\]"):
        score(jnp.zeros((16, 16)), IMAGES[0], 1.0)
    with pytest.raises(InputError, match=r"exposure \(dose \[e-/Å²\] x pixel area \[Å²\]\) must be finite and > 0, got 0.0"):
        score(jnp.zeros((16, 16)), IMAGES, 0.0)
    with pytest.raises(InputError, match=r"scale_sd must be in \(0"):
        make_nuisance_prior(scale_sd=0.0)


@pytest.mark.parametrize("dose", [1e4, 1e6])
def test_high_dose_is_numerically_stable(rng_key, dose):
    """Up to 1e6 e-/Å² (1.6e5 electrons per pixel) in float32: finite evidences, the truth
    wins, MAP nuisance within 4 sd (the deviance form keeps per-pixel terms O(1))."""
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior(background_mean=0.05, background_sd=0.03)
    e = M.exposure(dose)
    truth = jnp.array([0.1, 0.05])
    y = sample_counts(rng_key, noise, e * (1.02 * fourier_shift(IMAGES[5], truth) + 0.05))
    lin = make_linear_scorer(noise, prior)(y, IMAGES, e)
    lap = make_laplace_scorer(noise, prior)(y, IMAGES, e)
    for ev in (lin, lap):
        assert np.all(np.isfinite(np.asarray(ev.log_evidence))) and int(jnp.argmax(ev.log_evidence)) == 5
    assert abs(float(lap.scale[5]) - 1.02) < 4 * float(lap.scale_sd[5])
    assert np.all(np.abs(np.asarray(lap.shift[5] - truth)) < 4 * np.asarray(lap.shift_sd[5]))


def test_laplace_evidence_does_not_depend_on_the_image_units(rng_key):
    """The same expected counts written as images x 1e-2 (an annular-detector level) and
    exposure x 100, with the background prior scaled alike (:func:`signal_relative_prior`):
    the same evidence, scale and (rescaled) background. With the prior in beam units instead,
    the evidence differs: the prior's meaning changed."""
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior()
    e = M.exposure(200.0)
    y = np.asarray(sample_counts(rng_key, noise, e * (1.05 * IMAGES[2] + 0.02)))
    imgs = np.asarray(IMAGES)
    small = imgs * 1e-2
    ref = make_laplace_scorer(noise, signal_relative_prior(prior, imgs))(y, imgs, e)
    got = make_laplace_scorer(noise, signal_relative_prior(prior, small))(y, small, e * 100)
    np.testing.assert_allclose(got.log_evidence, ref.log_evidence, atol=0.02)
    np.testing.assert_allclose(got.scale, ref.scale, rtol=1e-3)
    np.testing.assert_allclose(got.background, 1e-2 * np.asarray(ref.background), rtol=1e-2, atol=1e-7)
    np.testing.assert_allclose(got.laplace_term - ref.laplace_term, np.log(1e-2), atol=0.02)
    beam_units = make_laplace_scorer(noise, prior)(y, small, e * 100)
    assert np.max(np.abs(np.asarray(beam_units.log_evidence) - np.asarray(ref.log_evidence))) > 1.0
    assert float(signal_relative_prior(prior, imgs).background_sd) == pytest.approx(0.1 * float(np.mean(imgs)), rel=1e-5)
