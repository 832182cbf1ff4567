"""Absolute goodness of fit: exact Poisson-deviance cumulants, calibration by simulation, power, input checks."""

import json
import pickle

import mpmath
import numpy as np
import pytest
import scipy.stats as st

from forward import InputError
from inference import make_noise_model
from inference.fitcheck import DEFAULT_RATE, FitCheck, _poisson_cumulants, fit_check, fit_checks

N_FRAMES = 1000  # calibration frames per case: P(p < 0.01) in [0.002, 0.025] is a ~3.5 sigma band


def _mu_field(mean: float, seed: int, shape=(64, 64)) -> np.ndarray:
    """A smooth, log-normally structured field [electrons per pixel] with the given mean."""
    rng = np.random.default_rng(seed)
    kx, ky = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    f = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * np.exp(-(kx**2 + ky**2) / 0.0128)))
    m = np.exp(0.7 * f / f.std())
    return mean * m / m.mean()


def _draw(noise_args, mu, n_frames, seed):
    """``n_frames`` frames [counts] under ``counts = gain * Poisson(mu) + Normal(0, read²)`` (numpy)."""
    kind, gain, read = noise_args
    rng = np.random.default_rng(seed)
    shape = (n_frames, *mu.shape)
    if kind == "gaussian":
        return gain * mu + read * rng.standard_normal(shape)
    y = gain * rng.poisson(mu, shape).astype(np.float64)
    return y + read * rng.standard_normal(shape) if kind == "poisson_gaussian" else y


def _mp_cumulants(mu: float, dps: int = 30):
    """Brute-force mean, variance, third cumulant of ``2 [y log(y/mu) - (y - mu)]``, y ~ Poisson(mu)."""
    with mpmath.workdps(dps):
        m = mpmath.mpf(mu)
        sd = mpmath.sqrt(m)
        ks = range(int(max(0, mu - 20 * float(sd) - 10)), int(mu + 20 * float(sd) + 60))
        p = [mpmath.exp(k * mpmath.log(m) - m - mpmath.loggamma(k + 1)) if k else mpmath.exp(-m) for k in ks]
        d = [2 * ((k * mpmath.log(k / m) if k else 0) - (k - m)) for k in ks]
        total = mpmath.fsum(p)
        k1 = mpmath.fsum(pi * di for pi, di in zip(p, d)) / total
        k2 = mpmath.fsum(pi * (di - k1) ** 2 for pi, di in zip(p, d)) / total
        k3 = mpmath.fsum(pi * (di - k1) ** 3 for pi, di in zip(p, d)) / total
        return np.array([float(k1), float(k2), float(k3)])


@pytest.mark.parametrize("mu", [1e-8, 1e-4, 0.01, 0.3, 1.0, 5.0, 30.0, 500.0, 999.0, 1001.0, 1e5])
def test_poisson_deviance_cumulants_match_brute_force(mu):
    # table (1e-6..1e3), direct sums below it and the asymptotic series above, across both joins;
    # measured agreement is ~1e-9, the spec asks 1e-3
    got = _poisson_cumulants(np.array([mu]))[:, 0]
    np.testing.assert_allclose(got, _mp_cumulants(mu), rtol=1e-6)


def test_poisson_deviance_large_mu_limit():
    # chi²(1) cumulants 1, 2, 8 as mu -> inf (McCullagh & Nelder 1989, sec. 6.2.4)
    np.testing.assert_allclose(_poisson_cumulants(np.array([1e7]))[:, 0], [1.0, 2.0, 8.0], rtol=1e-6)


CASES = [("poisson", 1.0, 0.0), ("poisson", 2.5, 0.0), ("poisson_gaussian", 2.0, 1.5), ("poisson_gaussian", 1.0, 0.3)]


@pytest.mark.parametrize("dose", [0.02, 0.5, 20.0, 2000.0])
@pytest.mark.parametrize("noise_args", CASES, ids=lambda c: f"{c[0]}-g{c[1]}-r{c[2]}")
def test_calibration_at_true_mu(noise_args, dose):
    noise = make_noise_model(noise_args[0], gain=noise_args[1], read_noise=noise_args[2])
    mu = _mu_field(dose, seed=11)
    p = np.array([c.p_value for c in fit_checks(noise, _draw(noise_args, mu, N_FRAMES, seed=12), mu)])
    assert 0.002 <= np.mean(p < DEFAULT_RATE) <= 0.025
    assert st.kstest(p, "uniform").pvalue > 1e-3


def test_calibration_gaussian_is_exact_chi_squared():
    noise = make_noise_model("gaussian", gain=1.5, read_noise=2.0)
    mu = _mu_field(20.0, seed=13)
    checks = fit_checks(noise, _draw(("gaussian", 1.5, 2.0), mu, N_FRAMES, seed=14), mu)
    p = np.array([c.p_value for c in checks])
    np.testing.assert_allclose(p, st.chi2.sf([c.deviance for c in checks], mu.size), rtol=1e-8)
    assert 0.002 <= np.mean(p < DEFAULT_RATE) <= 0.025
    assert st.kstest(p, "uniform").pvalue > 1e-3


def _square_wave(shape, amplitude, period=8):
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return 1.0 + amplitude * np.sign(np.cos(2 * np.pi * x / period) * np.cos(2 * np.pi * y / period) + 1e-9)


def test_power_matches_noncentrality_at_20_electrons():
    # A +-5% pattern at 20 e-/pixel on 64x64 adds 2 sum KL(mu || mu') ~ sum mu eps² ~ 205 to a
    # statistic with sd ~ 90: the expected z is ~2.3. No omnibus test can do much better there,
    # so this checks the shift against its prediction rather than a p threshold.
    noise = make_noise_model("poisson")
    mu = _mu_field(20.0, seed=15)
    wrong = mu * _square_wave(mu.shape, 0.05)
    checks = fit_checks(noise, _draw(("poisson", 1.0, 0.0), mu, 200, seed=16), wrong)
    ref = fit_check(noise, mu, wrong)  # only its expected and sd are used
    true_mean = _poisson_cumulants(mu)[0].sum()
    predicted = (true_mean + 2 * np.sum(mu * np.log(mu / wrong) + wrong - mu) - ref.expected) / ref.sd
    assert 2.0 < predicted < 2.6
    assert abs(np.mean([c.z for c in checks]) - predicted) < 0.25  # 3.4 standard errors


def test_power_detects_5_percent_at_200_electrons():
    noise = make_noise_model("poisson")
    mu = _mu_field(200.0, seed=17)
    counts = _draw(("poisson", 1.0, 0.0), mu, 1, seed=18)[0]
    assert fit_check(noise, counts, mu * _square_wave(mu.shape, 0.05)).p_value < 1e-6
    assert not fit_check(noise, counts, mu).unexplained()


def test_n_params_reduces_expected_and_matches_a_fitted_scale():
    noise = make_noise_model("poisson")
    mu = _mu_field(20.0, seed=19, shape=(8, 8))
    counts = _draw(("poisson", 1.0, 0.0), mu, 20000, seed=20)
    base, fitted = fit_check(noise, counts[0], mu), fit_check(noise, counts[0], mu, n_params=3)
    assert fitted.expected == pytest.approx(base.expected - 3)
    assert fitted.sd**2 == pytest.approx(base.sd**2 - 6)
    # the same deviance is less typical of a fitted model, which should have absorbed some of it
    assert fitted.deviance == base.deviance and fitted.p_value < base.p_value
    # the maximum-likelihood scale removes one chi²(1) from the deviance on average (Wilks)
    scale = counts.sum(axis=(1, 2)) / mu.sum()
    d = np.array([c.deviance for c in fit_checks(noise, counts, scale[:, None, None] * mu[None])])
    assert abs(d.mean() - (base.expected - 1)) < 0.35  # standard error 0.08


def test_mask_excludes_pixels_and_batch_equals_loop():
    noise = make_noise_model("poisson_gaussian", gain=2.0, read_noise=1.5)
    mu = _mu_field(3.0, seed=21, shape=(16, 16))
    counts = _draw(("poisson_gaussian", 2.0, 1.5), mu, 3, seed=22)
    mask = np.ones(mu.shape, bool)
    mask[3, 4] = False
    spoiled = counts.copy()
    spoiled[:, 3, 4] = 1e9  # a saturated / hot pixel
    batch = fit_checks(noise, spoiled, mu, mask=mask)
    assert batch == [fit_check(noise, c, mu, mask=mask) for c in spoiled]
    assert batch[0].n_pixels == mu.size - 1 and not batch[0].unexplained()
    assert fit_check(noise, spoiled[0], mu).unexplained()


def test_json_and_pickle():
    noise = make_noise_model("poisson")
    mu = _mu_field(1.0, seed=23, shape=(8, 8))
    check = fit_check(noise, _draw(("poisson", 1.0, 0.0), mu, 1, seed=24)[0], mu)
    out = json.loads(json.dumps(check.to_json()))
    assert out["statistic"] == "poisson deviance" and out["n_pixels"] == 64
    assert out["p_value"] == pytest.approx(check.p_value, rel=1e-3)
    assert isinstance(check, FitCheck) and pickle.loads(pickle.dumps(check)) == check


@pytest.mark.parametrize(
    ("counts", "mu", "kind", "message"),
    [
        (np.ones((4, 4)), np.ones((4, 5)), "poisson", r"mu shape \[4, 5\] does not match the counts shape \[4, 4\]"),
        (np.ones((3, 3)), np.where(np.eye(3, k=1) > 0, 0.0, 1.0), "poisson", r"positive and finite, got 0.0 at index \(0, 1\)"),
        (np.ones((3, 3)), np.where(np.eye(3) > 0, np.nan, 1.0), "poisson", r"positive and finite, got nan at index \(0, 0\)"),
        (np.ones((3, 3)), -np.ones((3, 3)), "poisson_gaussian", r"positive and finite, got -1.0 at index \(0, 0\)"),
        (np.where(np.eye(3, k=-1) > 0, np.inf, 1.0), np.ones((3, 3)), "poisson", r"finite, got inf at index \(1, 0\)"),
        (np.where(np.eye(3) > 0, -2.0, 1.0), np.ones((3, 3)), "poisson", r">= 0 under the poisson noise model, got -2.0"),
    ],
)
def test_bad_input(counts, mu, kind, message):
    noise = make_noise_model(kind, read_noise=0.0 if kind == "poisson" else 1.0)
    with pytest.raises(InputError, match=message):
        fit_check(noise, counts, mu)


def test_bad_mask_n_params_and_batch_index():
    noise = make_noise_model("poisson")
    with pytest.raises(InputError, match=r"mask must be a boolean array of the frame shape \[2, 2\]"):
        fit_check(noise, np.ones((2, 2)), np.ones((2, 2)), mask=np.ones((2, 3), bool))
    with pytest.raises(InputError, match=r"n_params must be in \[0, 4\)"):
        fit_check(noise, np.ones((2, 2)), np.ones((2, 2)), n_params=4)
    mu = np.ones((2, 2))
    mu[1, 0] = -1.0
    with pytest.raises(InputError, match=r"at index \(2, 1, 0\)"):  # (frame, *pixel)
        fit_checks(noise, np.ones((3, 2, 2)), np.stack([np.ones((2, 2))] * 2 + [mu]))
