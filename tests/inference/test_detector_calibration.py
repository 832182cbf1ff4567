"""Detector calibration (inference.detector_calibration) and lattice-learned ADF optics
(inference.lattice_optics) on frames made from abTEM's HAADF image of a graphene cell
(tests/data/graphene_haadf.npz), tiled through a known affine map, put through a known detector
(gain, dark level, read noise, optionally scan position noise) and, for the optics, a known source
blur. Fixed seeds; the tolerances hold with margin over seeds 0-4 (gain 39.3-41.0 for 40, read
noise 1.94-2.08 e- for 2, source covariance within 0.001 Å²)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forward import InputError
from inference.detector_calibration import calibrate_detector
from inference.lattice import evaluate_series, host_series
from inference.lattice_optics import blur_series, fit_source_size, measure_series, series_at

DATA = Path(__file__).parents[1] / "data" / "graphene_haadf.npz"
A = 2.46
CELL = (3 * A, 2 * A * np.sqrt(3))
LATTICE = np.array([[A, A / 2], [0.0, A * np.sqrt(3) / 2]])
PX = 0.16
GAIN, DARK, READ_E = 40.0, 3000.0, 2.0


def _m(theta_deg=21.0):
    th = np.radians(theta_deg)
    return PX * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])


@pytest.fixture(scope="module")
def host():
    d = np.load(DATA)
    return host_series(d["images"][0, 0].astype(np.float64), CELL, LATTICE)


def _expected(series, m, t, shape, electrons_per_px, jitter_px=0.0, rng=None):
    ii, jj = np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float)
    if jitter_px == 0:
        e = evaluate_series(series.g, series.c, m, t, ii, jj)
    else:  # each scan line lands off by its own random shift along both axes
        e = np.empty(shape)
        for a in range(shape[0]):
            d = rng.normal(0.0, jitter_px, 2)
            e[a] = evaluate_series(series.g, series.c, m, t + m @ d, ii[a : a + 1], jj)[0]
    return electrons_per_px * e / e.mean()


def _detector(expected_e, rng, hole=None):
    lam = np.array(expected_e)
    if hole is not None:
        (ci, cj), r = hole
        ii, jj = np.meshgrid(np.arange(lam.shape[0]), np.arange(lam.shape[1]), indexing="ij")
        lam[(ii - ci) ** 2 + (jj - cj) ** 2 < r * r] = 0.0
    return GAIN * rng.poisson(lam) + DARK + rng.normal(0.0, READ_E * GAIN, lam.shape)


G_MAX = 1.3  # 1/Å: the graphene image's reflections out to the third order


def test_gain_dark_and_read_noise_from_a_frame_with_a_hole(host):
    rng = np.random.default_rng(0)
    m, t = _m(), np.array([0.3, 1.1])
    y = _detector(_expected(host, m, t, (512, 512), 12.0), rng, hole=((380, 150), 45))
    cal = calibrate_detector(y, m, t, LATTICE, g_max=G_MAX)
    assert cal.dark_source == "vacuum" and cal.n_vacuum_pixels > 2000
    assert cal.gain == pytest.approx(GAIN, rel=0.04)
    assert cal.dark == pytest.approx(DARK, abs=4 * READ_E * GAIN / np.sqrt(cal.n_vacuum_pixels))  # 4 sd of a mean
    assert cal.read_noise / cal.gain == pytest.approx(READ_E, rel=0.08)
    assert max(cal.position_noise_px) < 0.1
    assert cal.dispersion == pytest.approx(1.0, abs=0.05)
    # the converted frame is Poisson-Gaussian in electrons: mean over the lattice as made
    e = cal.electrons(y)
    assert float(np.mean(e[:200, 300:])) == pytest.approx(12.0, rel=0.03)
    # white noise: the window correlation factor is 1
    assert cal.correlation_factor(6.0) == pytest.approx(1.0, abs=0.1)
    d = cal.to_json_dict()
    assert d["dark_source"] == "vacuum" and "units/e-" in d["summary"] and len(d["bins"]) > 5


def test_without_vacuum_the_dark_level_comes_from_the_intercept(host):
    rng = np.random.default_rng(1)
    m, t = _m(33.0), np.array([0.0, 0.0])
    lam = _expected(host, m, t, (384, 384), 20.0)
    y = GAIN * rng.poisson(lam) + DARK  # no read noise: the intercept is -g d exactly
    cal = calibrate_detector(y, m, t, LATTICE, g_max=G_MAX)
    assert cal.dark_source == "intercept" and cal.read_noise == 0.0
    assert cal.gain == pytest.approx(GAIN, rel=0.05)
    assert cal.dark == pytest.approx(DARK, abs=1.0 * GAIN)


def test_scan_position_noise_is_measured_on_the_slopes(host):
    m, t = _m(), np.array([0.2, 0.4])
    rng = np.random.default_rng(2)
    jit = 0.3  # px rms, per scan line
    y = _detector(_expected(host, m, t, (512, 512), 60.0, jitter_px=jit, rng=rng), rng, hole=((100, 100), 45))
    cal = calibrate_detector(y, m, t, LATTICE, g_max=G_MAX)
    sx, sy = cal.position_noise_px
    assert sx == pytest.approx(jit, rel=0.2) and sy == pytest.approx(jit, rel=0.2)
    assert cal.gain == pytest.approx(GAIN, rel=0.1)
    # a shift shared by a whole line correlates the residuals along it
    assert cal.correlation_factor(8.0) > 1.2
    # beyond the first-order model (0.6 px) the gain is biased, and the variance-mean bins say so
    rng = np.random.default_rng(2)
    y = _detector(_expected(host, m, t, (512, 512), 60.0, jitter_px=0.6, rng=rng), rng, hole=((100, 100), 45))
    bad = calibrate_detector(y, m, t, LATTICE, g_max=G_MAX)
    assert bad.gain > 1.5 * GAIN and bad.line_chi2_dof > 50


def test_a_processed_frame_is_refused(host):
    m, t = _m(), np.zeros(2)
    lam = _expected(host, m, t, (256, 256), 10.0)
    y = 1000.0 + 50.0 * lam + np.random.default_rng(3).normal(0.0, 30.0, lam.shape) * (2.0 - lam / lam.max())
    with pytest.raises(InputError, match="the variance does not grow with the mean"):
        calibrate_detector(y, m, t, LATTICE, g_max=G_MAX)


@pytest.mark.parametrize("cov", [np.diag([0.30**2, 0.30**2]), np.array([[0.40**2, 0.01], [0.01, 0.25**2]])])
def test_source_size_recovered_from_the_lattice(host, cov):
    rng = np.random.default_rng(4)
    m, t = _m(), np.array([0.7, -0.2])
    blurred = blur_series(host, cov)
    lam = _expected(blurred, m, t, (512, 512), 30.0)
    y = rng.poisson(lam).astype(float)
    meas = measure_series(y, m, t, LATTICE, G_MAX)
    fit = fit_source_size(meas, series_at(host, meas.g))
    np.testing.assert_allclose(fit.cov, cov, atol=4 * fit.cov_sd.max() + 2e-3)
    assert fit.chi2_dof < 2.5  # 0.9-1.8 over seeds 0-4
    # without the blur (scale alone) the simulation misfits the frame's lattice by far more
    c_sim = series_at(host, meas.g)
    scale = np.real(np.vdot(c_sim, meas.c)) / np.real(np.vdot(c_sim, c_sim))
    chi2_sharp = float(np.sum(np.abs(meas.c - scale * c_sim) ** 2) / meas.var)
    assert chi2_sharp > 20 * fit.chi2
