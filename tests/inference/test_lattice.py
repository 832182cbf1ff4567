"""Lattice registration (inference.lattice) on frames made from abTEM's HAADF image of a graphene
cell (tests/data/graphene_haadf.npz, made by tests/data/make_graphene_haadf.py), tiled through a
known affine map with Poisson noise; and the refusals of frames with no host lattice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forward import InputError
from inference.lattice import evaluate_series, host_series, lattice_point_group, register_lattice

DATA = Path(__file__).parents[1] / "data" / "graphene_haadf.npz"
A = 2.46
CELL = (3 * A, 2 * A * np.sqrt(3))
LATTICE = np.array([[A, A / 2], [0.0, A * np.sqrt(3) / 2]])


def _affine(theta_deg=17.3, sx=0.16 * 1.015, sy=0.16 * 1.012, k=0.0008):
    th = np.radians(theta_deg)
    r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return r @ np.array([[sx, k], [0.0, sy]])


@pytest.fixture(scope="module")
def host():
    d = np.load(DATA)
    return host_series(d["images"][0, 0].astype(np.float64), CELL, LATTICE)


def _frame(series, m, t, shape=(128, 128), dose=2e5, seed=0):
    ii, jj = np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float)
    expected = evaluate_series(series.g, series.c, m, t, ii, jj)
    exposure = dose * 0.16 * 0.16
    return np.random.default_rng(seed).poisson(exposure * expected).astype(float), exposure


def test_series_reproduces_the_grid():
    """The full series is the sampled image (exact band-limited interpolation); the host series,
    projected on graphene's primitive reciprocal lattice, drops abTEM's grid residue (the potential
    is sampled at 0.05 Å, incommensurate with the 1.23 Å translation: 1.5% of the strongest
    coefficient off the lattice)."""
    img = np.load(DATA)["images"][0, 0].astype(np.float64)
    m = np.diag([CELL[0] / img.shape[0], CELL[1] / img.shape[1]])
    ii, jj = np.arange(img.shape[0], dtype=float), np.arange(img.shape[1], dtype=float)
    full = host_series(img, CELL, LATTICE, primitive=False)
    assert np.abs(evaluate_series(full.g, full.c, m, np.zeros(2), ii, jj) - img).max() < 1e-3 * img.max()
    prim = host_series(img, CELL, LATTICE)
    assert np.all(np.abs(prim.g @ LATTICE - np.round(prim.g @ LATTICE)) < 1e-6)
    assert np.abs(evaluate_series(prim.g, prim.c, m, np.zeros(2), ii, jj) - img).max() < 0.1 * img.max()


def test_point_group_of_the_hexagonal_lattice():
    ops = lattice_point_group(LATTICE)
    assert len(ops) == 12  # 6 rotations, 6 mirrors
    for r in ops:
        assert np.allclose(r.T @ r, np.eye(2), atol=1e-9)


@pytest.mark.parametrize("theta, seed", [(17.3, 0), (-41.7, 1), (73.1, 2)])
def test_registration_recovers_calibration_and_rotation(host, theta, seed):
    m = _affine(theta)
    t = np.array([2.1, 4.4])
    y, exposure = _frame(host, m, t, seed=seed)
    fit = register_lattice(y, host, (0.16, 0.16), exposure=exposure)
    cal = fit.calibration()
    assert cal["pixel_x_A"] == pytest.approx(np.linalg.norm(m[:, 0]), rel=2e-3)
    assert cal["pixel_y_A"] == pytest.approx(np.linalg.norm(m[:, 1]), rel=2e-3)
    # the map is defined up to the host image's symmetries (graphene: 6mm): fit = R @ truth for an
    # operation R of the lattice's point group, to within 0.1 degree
    q = fit.m @ np.linalg.inv(m)
    resid = min(abs(np.degrees(np.arctan2(*(r.T @ q)[::-1, 0]))) for r in lattice_point_group(LATTICE))
    assert resid < 0.1
    assert np.abs(q.T @ q - np.eye(2)).max() < 4e-3
    # the stated uncertainties cover the truth (within 4 sigma) and are small
    assert abs(cal["pixel_x_A"] - np.linalg.norm(m[:, 0])) < 4 * cal["pixel_x_A_sd"] + 1e-5
    assert cal["pixel_x_A_sd"] < 2e-4
    # the map reproduces the frame's lattice: the model at the fit equals the model at the truth
    ii = np.arange(128.0)
    a = evaluate_series(host.g, host.c, fit.m, fit.t, ii, ii)
    b = evaluate_series(host.g, host.c, m, t, ii, ii)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.995


def test_amorphous_frame_has_no_host_lattice(host):
    rng = np.random.default_rng(3)
    y = rng.poisson(20.0, size=(128, 128)).astype(float)
    with pytest.raises(InputError, match=r"no host lattice found: expected spacings 2\.46, 2\.46 Å.*strongest periodicity found"):
        register_lattice(y, host, (0.16, 0.16), exposure=2e5 * 0.0256)


def test_nominal_pixel_size_off_by_20_percent(host):
    y, exposure = _frame(host, _affine(), np.array([1.0, 1.0]))
    with pytest.raises(InputError, match="no host lattice found"):
        register_lattice(y, host, (0.2, 0.2), exposure=exposure)
