"""ADF-STEM optics learned from the host lattice of a frame: the effective source size and the
annular detector's inner angle.

An ADF image is incoherent: the intensity is the object function convolved with the probe's
intensity, and a finite source, the scan's position noise and slow drift convolve it once more,
with an (effective) Gaussian of covariance ``S`` [Å²] (Nellist & Pennycook, Ultramicroscopy 78
(1999) 111; the source-size convolution in abTEM's ``Probe``). On the host's Fourier series that
is a factor per reflection,

    c_G -> c_G exp(-2 pi^2 G^T S G),

so a blur costs no simulation. The detector's inner angle sets how the columns' intensities scale
with atomic number (a Mo column against an S2 column), which no blur can mimic; it needs a
simulation per value and is chosen from a few.

The frame's own lattice coefficients ``c^_G`` are measured by least squares through the registered
map (:func:`measure_series`; the lattice average of the field of view, defects and noise
averaged over thousands of cells), with their noise variance. For each simulated host image the
model ``s c_G exp(-2 pi^2 G^T S G)`` (``s`` the intensity scale, profiled) is fitted to them by
weighted least squares over the three entries of ``S`` (:func:`fit_source_size`); the value of
chi-squared ranks the inner angles. The reduced chi-squared is reported: it says how much of the
lattice the optics model does not describe (it is 1 when the model is exact).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from forward import InputError

__all__ = ["LatticeCoefficients", "SourceSizeFit", "measure_series", "fit_source_size", "series_at", "blur_series"]


@dataclasses.dataclass(frozen=True)
class LatticeCoefficients:
    """The frame's lattice series: ``g [K, 2]`` 1/Å (one of each ``±G``), ``c [K]`` complex (the
    HostSeries convention: ``I = mean + Re sum c exp(2 pi i G.r)``), ``var`` the variance of the
    real and of the imaginary part of each, ``mean`` the constant term, ``n_pixels`` used."""

    g: np.ndarray
    c: np.ndarray
    var: float
    mean: float
    n_pixels: int


def measure_series(frame, m, t, lattice, g_max: float, mask=None, max_pixels: int = 1 << 18) -> LatticeCoefficients:
    """Least-squares lattice series of ``frame [nx, ny]`` through ``r = m p + t`` over the primitive
    reflections with ``|G| <= g_max`` [1/Å], on a regular sub-lattice of at most ``max_pixels``."""
    from inference.detector_calibration import _reflections

    y = np.asarray(frame, np.float64)
    w = np.isfinite(y) if mask is None else (np.asarray(mask, bool) & np.isfinite(y))
    hk, b = _reflections(np.asarray(lattice, float), g_max)
    g = hk @ b
    stride = max(1, int(math.ceil(math.sqrt(y.size / max_pixels))))
    ii, jj = np.meshgrid(np.arange(0, y.shape[0], stride), np.arange(0, y.shape[1], stride), indexing="ij")
    keep = w[::stride, ::stride].ravel()
    p = np.stack([ii.ravel(), jj.ravel()], 1)[keep].astype(float)
    if len(p) < 10 * (2 * len(g) + 1):
        raise InputError(f"too few valid pixels ({len(p)}) to measure the frame's lattice series")
    ph = 2 * np.pi * (p @ np.asarray(m, float).T + np.asarray(t, float)) @ g.T
    x = np.concatenate([np.ones((len(p), 1)), np.cos(ph), np.sin(ph)], 1)
    yy = y[::stride, ::stride].ravel()[keep]
    coef, *_ = np.linalg.lstsq(x, yy, rcond=None)
    k = len(g)
    res = yy - x @ coef
    var = float(np.mean(res**2) * 2.0 / len(yy))  # cos/sin columns are near-orthogonal: var(a) = 2 sigma^2 / n
    return LatticeCoefficients(g=g, c=coef[1 : 1 + k] - 1j * coef[1 + k :], var=var, mean=float(coef[0]), n_pixels=len(yy))


def series_at(series, g) -> np.ndarray:
    """The coefficients of a :class:`inference.lattice.HostSeries` at reflections ``g [K, 2]``
    (its half-plane or the conjugate of the mirror; 0 where it has none)."""
    out = np.zeros(len(g), complex)
    for k, gk in enumerate(np.asarray(g, float)):
        d = np.linalg.norm(series.g - gk[None, :], axis=1)
        dm = np.linalg.norm(series.g + gk[None, :], axis=1)
        tol = 1e-6 * max(1.0, float(np.linalg.norm(gk)))
        if d.min() < tol:
            out[k] = series.c[int(np.argmin(d))]
        elif dm.min() < tol:
            out[k] = np.conj(series.c[int(np.argmin(dm))])
    return out


def blur_series(series, cov):
    """``series`` convolved with a Gaussian of covariance ``cov [2, 2]`` Å² (a new HostSeries)."""
    g = np.asarray(series.g, float)
    q = np.einsum("ki,ij,kj->k", g, np.asarray(cov, float), g)
    return dataclasses.replace(series, c=series.c * np.exp(-2 * np.pi**2 * q))


@dataclasses.dataclass(frozen=True)
class SourceSizeFit:
    """``cov [2, 2]`` Å² of the effective Gaussian (``sd_A``: the rms widths along x and y and
    ``corr``), ``cov_sd [3]`` the 1-sigma of ``(sxx, syy, sxy)``, the profiled ``scale``,
    ``chi2`` and ``dof``."""

    cov: np.ndarray
    cov_sd: np.ndarray
    scale: float
    chi2: float
    dof: int

    @property
    def sd_A(self) -> tuple[float, float]:
        return float(math.sqrt(max(self.cov[0, 0], 0))), float(math.sqrt(max(self.cov[1, 1], 0)))

    @property
    def chi2_dof(self) -> float:
        return self.chi2 / max(self.dof, 1)


def _cov(p):
    sx, sy, rho = p[0], p[1], math.tanh(p[2])
    return np.array([[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]])


def fit_source_size(meas: LatticeCoefficients, c_sim, start_A: float = 0.3) -> SourceSizeFit:
    """Weighted least squares of ``meas.c`` on ``scale * c_sim * exp(-2 pi^2 G^T S G)`` over the
    Gaussian ``S`` (rms widths and correlation; the scale profiled). ``c_sim``: the simulated
    host's coefficients at ``meas.g`` (:func:`series_at`)."""
    from scipy.optimize import least_squares

    g, c_hat, sd = meas.g, meas.c, math.sqrt(meas.var)
    c_sim = np.asarray(c_sim, complex)
    if not np.any(np.abs(c_sim) > 0):
        raise InputError("the simulated host has no lattice contrast at the frame's reflections")

    def model(p):
        q = np.einsum("ki,ij,kj->k", g, _cov(p), g)
        mdl = c_sim * np.exp(-2 * np.pi**2 * q)
        s = float(np.real(np.vdot(mdl, c_hat)) / max(np.real(np.vdot(mdl, mdl)), 1e-300))
        return mdl, s

    def resid(p):
        mdl, s = model(p)
        d = (c_hat - s * mdl) / sd
        return np.concatenate([d.real, d.imag])

    best = None
    for s0 in (0.5 * start_A, start_A, 2 * start_A):  # a few starts: the widths are positive, near 0 flat
        r = least_squares(resid, [s0, s0, 0.0], bounds=([0.0, 0.0, -3.0], [3.0, 3.0, 3.0]))
        if best is None or r.cost < best.cost:
            best = r
    p = best.x
    cov = _cov(p)
    # the 1-sigma of (sxx, syy, sxy) from the Jacobian in the entries of S (delta method)
    jac = best.jac
    try:
        pc = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        pc = np.full((3, 3), np.nan)
    h = 1e-6
    dj = np.stack([(np.array([_cov(p + h * e)[0, 0], _cov(p + h * e)[1, 1], _cov(p + h * e)[0, 1]])
                    - np.array([cov[0, 0], cov[1, 1], cov[0, 1]])) / h for e in np.eye(3)], 1)  # fmt: skip
    cov_sd = np.sqrt(np.maximum(np.diag(dj @ pc @ dj.T), 0.0))
    _, s = model(p)
    chi2 = float(2 * best.cost)
    return SourceSizeFit(cov=cov, cov_sd=cov_sd, scale=s, chi2=chi2, dof=2 * len(g) - 4)
