"""The detector's gain, dark level and read noise, estimated from a frame of a crystal.

A scanning detector (a scintillator and photomultiplier behind a DigiScan, say) reports values
in its own units, not electrons. If ``N`` electrons reach it during a pixel's dwell,

    y = g N + d + e,     N ~ Poisson(lambda),   e ~ Normal(0, sigma^2),

so over pixels of equal expected value the variance is linear in the mean (the photon-transfer or
variance-mean relation; Janesick, *Photon Transfer*, SPIE 2007, ch. 4). A scan adds one more term:
the probe lands a little off its nominal position (line-to-line jitter, local drift), by a random
``delta`` of rms ``s_x, s_y`` pixels, so a pixel on a slope of the image varies by its gradient
times ``delta`` (Jones & Nellist, Microsc. Microanal. 19 (2013) 1050):

    Var y = g (E y - d) + sigma^2 + s_x^2 (d E y / d i)^2 + s_y^2 (d E y / d j)^2 + (s^4 / 2) |H|^2,

the last term (``|H|^2 = H_ii^2 + 2 H_ij^2 + H_jj^2`` of the Hessian of ``E y``, ``s^2`` the mean of
``s_x^2, s_y^2``) the second order of a Gaussian shift, which matters at the columns' peaks
when ``s`` is a fair fraction of a column's width. Only the first order is fitted: the second,
tied to the first, overshot (the series is truncated at ``g_max``, where a shift of 0.1 Å already
turns a phase by most of a radian, so neither order is exact there). For position noise beyond
~0.3 px the gain is then biased high.

``g`` is an effective gain: the spread of the scintillator's pulse heights multiplies the
variance by an excess-noise factor, which ``g`` absorbs, so that ``(y - d) / g`` is a count whose
variance equals its mean (plus the read noise). That is what the Poisson noise model needs.

Pixels of equal expected value are found through the lattice: on each tile of the frame
(:data:`TILE` pixels square) the crystal is the lattice's Fourier series, fitted by least squares
through the registered affine map (:func:`inference.lattice.register_lattice`), which gives every
pixel its expected value without assuming a probe or a detector; the residuals, binned by that
expected value over all tiles, give the variance at each mean (robustly: defects, contamination and
the scan's line jumps are clipped). A robust least-squares fit of the squared residuals on the
expected value and the squared gradients (analytic, from the fitted series) gives ``g``, the
intercept ``sigma^2 - g d`` and the position noise ``s_x, s_y``.

``d`` and ``sigma`` need one more fact. Where the frame shows vacuum (a hole: a region darker than
the darkest point of the lattice, no electron scattered onto the detector) its mean is ``d`` and its
variance ``sigma^2``; the line is then fitted through that point and the free fit's intercept is a
check. The hole and a rim of three lattice spacings around it are left out of the lattice fits. Without vacuum the read noise is taken as zero and ``d`` follows from the intercept
(stated as such in the result).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from forward import InputError

__all__ = ["DetectorCalibration", "calibrate_detector", "correlation_factor", "lattice_residuals", "pixel_variance", "TILE"]

#: Tile side [pixels] of the per-tile lattice fits (a few cells wide, small next to slow variations).
TILE = 128
#: Bins of expected value over which the variance-mean relation is sampled.
N_BINS = 24
#: Vacuum: at least this many pixels darker than the lattice's darkest point (after smoothing).
MIN_VACUUM_PIXELS = 200
#: Largest lag [pixels] of the residual autocorrelation kept.
MAX_LAG = 12


@dataclasses.dataclass(frozen=True)
class DetectorCalibration:
    """What :func:`calibrate_detector` found, in the detector's units.

    ``gain`` (units per electron, sd ``gain_sd``), ``dark`` (units), ``read_noise`` (units, sd of
    the dark signal); ``dark_source``: ``"vacuum"`` (measured on ``n_vacuum_pixels`` pixels) or
    ``"intercept"`` (read noise taken as 0); ``position_noise_px``: the scan's rms position error per
    axis. ``bins``: the relation sampled on the flattest third of the pixels ``(mean, variance,
    variance sd, pixels)``; ``line_chi2_dof``: the mean squared standardised deviation of those bins
    from the fitted model (about 1 when the model holds); ``free_intercept``: the unconstrained fit's ``sigma^2 - g d``
    and ``constrained_intercept`` the value the vacuum implies."""

    gain: float
    gain_sd: float
    dark: float
    read_noise: float
    dark_source: str
    n_vacuum_pixels: int
    bins: np.ndarray
    line_chi2_dof: float
    free_gain: float
    free_intercept: float
    constrained_intercept: float
    n_tiles: int
    mean_electrons: float
    position_noise_px: tuple[float, float] = (0.0, 0.0)
    flicker: float = 0.0
    dispersion: float = 1.0
    autocorrelation: np.ndarray | None = None
    g_max: float = float("nan")

    def pixel_variance(self, mu_e, grad2_e) -> np.ndarray:
        """:func:`pixel_variance` under this calibration."""
        return pixel_variance(mu_e, grad2_e, self.read_noise / self.gain, self.position_noise_px, self.flicker)

    def correlation_factor(self, radius_px: float) -> float:
        """:func:`correlation_factor` of this calibration's residuals (1 without them)."""
        return 1.0 if self.autocorrelation is None else correlation_factor(self.autocorrelation, radius_px)

    def electrons(self, frame) -> np.ndarray:
        """``(frame - dark) / gain``: the frame in (effective) electrons."""
        return (np.asarray(frame, np.float64) - self.dark) / self.gain

    def to_json_dict(self) -> dict:
        return {
            "gain_units_per_e": self.gain, "gain_sd": self.gain_sd, "dark_units": self.dark,
            "read_noise_units": self.read_noise, "read_noise_e": self.read_noise / self.gain,
            "dark_source": self.dark_source, "n_vacuum_pixels": self.n_vacuum_pixels,
            "line_chi2_dof": self.line_chi2_dof, "free_fit": {"gain": self.free_gain, "intercept": self.free_intercept},
            "constrained_intercept": self.constrained_intercept, "n_tiles": self.n_tiles,
            "mean_electrons_per_pixel": self.mean_electrons,
            "position_noise_px": list(self.position_noise_px), "flicker": self.flicker,
            "dispersion": self.dispersion, "g_max_per_A": self.g_max,
            "autocorrelation_lag1": None if self.autocorrelation is None else [
                float(self.autocorrelation[MAX_LAG + 1, MAX_LAG]), float(self.autocorrelation[MAX_LAG, MAX_LAG + 1])],
            "bins": [{"mean": float(a), "variance": float(b), "variance_sd": float(c), "pixels": int(n)}
                     for a, b, c, n in self.bins],
            "model": "y = gain * Poisson + dark + Normal(0, read_noise^2), scan position noise (rms px per axis) on slopes",
            "summary": self.summary(),
        }  # fmt: skip

    def summary(self) -> str:
        src = "dark and read noise from vacuum" if self.dark_source == "vacuum" else "read noise taken as 0 (no vacuum)"
        sx, sy = self.position_noise_px
        return (f"gain {self.gain:.4g} ± {self.gain_sd:.2g} units/e-, dark {self.dark:.6g}, read noise "
                f"{self.read_noise / self.gain:.2f} e- ({src}); scan position noise {sx:.2f} x {sy:.2f} px rms; "
                f"{self.mean_electrons:.2f} e-/pixel on average")


def pixel_variance(mu_e, grad2_e, read_noise_e: float, position_noise_px, flicker: float) -> np.ndarray:
    """The model's variance [electrons²] of a pixel of expected value ``mu_e`` [e-] and squared
    gradient ``grad2_e`` [(e-/pixel)²]: shot noise, read noise, scan position noise (first order,
    the mean of the two axes' variances), flicker."""
    sx, sy = position_noise_px
    mu = np.asarray(mu_e)
    return mu + read_noise_e**2 + 0.5 * (sx * sx + sy * sy) * np.asarray(grad2_e) + flicker**2 * mu**2


def correlation_factor(rho, radius_px: float) -> float:
    """``F = sum_lag rho(lag)^2 overlap(lag)`` over a disk window of ``radius_px``, ``rho [2L+1, 2L+1]``
    the residuals' autocorrelation: the variance of a sum of ``n`` squared standardised residuals
    over the window is ``2 n F`` (Gaussian, correlated); at least 1."""
    rho = np.asarray(rho, float)
    lag = (rho.shape[0] - 1) // 2
    dx, dy = np.meshgrid(np.arange(-lag, lag + 1), np.arange(-lag, lag + 1), indexing="ij")
    d = np.hypot(dx, dy)
    r = max(float(radius_px), 1.0)
    # the fraction of a disk's pixels whose partner at distance d is inside it too
    frac = np.where(d < 2 * r, (2 * r * r * np.arccos(np.minimum(d / (2 * r), 1)) - 0.5 * d * np.sqrt(np.maximum(4 * r * r - d * d, 0)))
                    / (math.pi * r * r), 0.0)  # fmt: skip
    return float(max(np.sum(rho**2 * frac), 1.0))


def _reflections(lattice, g_max):
    """Integer ``(h, k)``, one of each ``±`` pair, with ``0 < |G| <= g_max`` [1/Å]."""
    b = np.linalg.inv(lattice)  # rows: reciprocal primitive vectors (b_i . a_j = delta_ij), 1/Å
    n = int(math.ceil(g_max / min(np.linalg.norm(b, axis=1)))) + 1
    out = []
    for h in range(-n, n + 1):
        for k in range(-n, n + 1):
            if (h, k) > (0, 0) and 0 < np.linalg.norm(h * b[0] + k * b[1]) <= g_max:
                out.append((h, k))
    return np.array(out, float), b


def _tile_fits(y, w, m, t, hk, b, tile):
    """Per tile: expected values (lattice series by least squares) and residuals of the valid pixels."""
    nx, ny = y.shape
    mus, grads, res, ntile = [], [], [], 0
    img = np.full((3, nx, ny), np.nan)  # expected value, residual, |grad|² as images (NaN: not fitted)
    for a in range(0, nx - tile // 2, tile):
        for c in range(0, ny - tile // 2, tile):
            ys, ws = y[a : a + tile, c : c + tile], w[a : a + tile, c : c + tile]
            ii, jj = np.meshgrid(np.arange(a, a + ys.shape[0]), np.arange(c, c + ys.shape[1]), indexing="ij")
            keep = ws.ravel()
            if keep.sum() < 4 * (2 * len(hk) + 1):
                continue
            r = np.stack([ii.ravel(), jj.ravel()], 1)[keep] @ m.T + t
            ph = 2 * np.pi * (r @ b.T) @ hk.T  # [n, K]
            x = np.concatenate([np.ones((len(r), 1)), np.cos(ph), np.sin(ph)], 1)
            yy = ys.ravel()[keep]
            coef, *_ = np.linalg.lstsq(x, yy, rcond=None)
            mu = x @ coef
            k = len(hk)
            dph = 2 * np.pi * (hk @ b @ m)  # d phase / d pixel [K, 2]
            grad = (-np.sin(ph) * coef[1 : 1 + k] + np.cos(ph) * coef[1 + k :]) @ dph
            dof_scale = len(yy) / max(len(yy) - x.shape[1], 1)
            mus.append(mu)
            grads.append(grad)
            res.append((yy - mu) * math.sqrt(dof_scale))
            sub = img[:, a : a + ys.shape[0], c : c + ys.shape[1]].reshape(3, -1)
            sub[0, keep], sub[1, keep], sub[2, keep] = mu, res[-1], grad[:, 0] ** 2 + grad[:, 1] ** 2
            img[:, a : a + ys.shape[0], c : c + ys.shape[1]] = sub.reshape(3, ys.shape[0], ys.shape[1])
            ntile += 1
    if not mus:
        raise InputError(f"detector calibration: no {tile}x{tile}-pixel tile of the frame has enough valid pixels")
    return np.concatenate(mus), np.concatenate(grads), np.concatenate(res), ntile, img


def lattice_residuals(frame, m, t, lattice, *, g_max: float, mask=None, tile: int = TILE):
    """``(expected, residual, |grad|^2)`` images ``[nx, ny]`` of the per-tile lattice fits of
    ``frame`` through ``r = m p + t`` (NaN where not fitted): a model-free description of the
    crystal, tile by tile, against which local disturbances (contamination, defects) stand out."""
    y = np.asarray(frame, np.float64)
    w = np.isfinite(y) if mask is None else (np.asarray(mask, bool) & np.isfinite(y))
    hk, b = _reflections(np.asarray(lattice, np.float64), g_max)
    *_, img = _tile_fits(np.where(w, y, 0.0), w, np.asarray(m, float), np.asarray(t, float), hk, b, tile)
    return img[0], img[1], img[2]


def _autocorrelation(z, valid, max_lag):
    """``rho [2L+1, 2L+1]`` of the standardised residual image ``z`` over ``valid`` pixels (FFT,
    zero-padded: each lag normalised by the number of valid pairs)."""
    nx, ny = z.shape
    zz = np.where(valid, z, 0.0)
    vv = valid.astype(float)
    shape = (nx + max_lag, ny + max_lag)
    fz, fv = np.fft.rfft2(zz, shape), np.fft.rfft2(vv, shape)
    num = np.fft.irfft2(fz * np.conj(fz), shape)
    den = np.fft.irfft2(fv * np.conj(fv), shape)
    lags = np.r_[0 : max_lag + 1, -max_lag:0]
    num = num[np.ix_(lags % shape[0], lags % shape[1])]
    den = np.maximum(den[np.ix_(lags % shape[0], lags % shape[1])], 1.0)
    rho = np.fft.fftshift(num / den)
    return rho / rho[max_lag, max_lag]


def _clipped_variance(r, k=4.0, n_iter=3):
    """Mean square of ``r`` after iterative ``k``-sigma clipping, corrected for the clip (Gaussian)."""
    keep = np.ones(len(r), bool)
    for _ in range(n_iter):
        s2 = np.mean(r[keep] ** 2)
        keep = np.abs(r) <= k * math.sqrt(s2)
    from scipy.stats import norm

    # E[x^2 | |x| <= k s] / s^2 for a Gaussian: 1 - 2 k phi(k) / (2 Phi(k) - 1)
    corr = 1 - 2 * k * norm.pdf(k) / (2 * norm.cdf(k) - 1)
    v = np.mean(r[keep] ** 2) / corr
    return v, int(keep.sum())


def _vacuum(y, w, spacing_px, floor):
    """Pixels of a hole: the frame smoothed over a lattice spacing lies below the lattice's darkest
    expected value ``floor`` (eroded by a spacing so the hole's rim is not counted)."""
    from scipy import ndimage

    sm = ndimage.gaussian_filter(np.where(w, y, np.median(y[w])), spacing_px / 2)
    low = (sm < floor) & w
    low = ndimage.binary_erosion(low, iterations=max(1, int(round(spacing_px / 2))))
    return low


def calibrate_detector(frame, m, t, lattice, *, g_max: float, mask=None, tile: int = TILE) -> DetectorCalibration:
    """Gain, dark level and read noise of the detector from ``frame [nx, ny]`` (its own units),
    given the registered map ``r = m p + t`` and the host's primitive ``lattice`` (columns, Å).
    ``g_max`` [1/Å]: the highest spatial frequency the image holds (``2 alpha / lambda`` for
    ADF-STEM). Module docstring for the method.

    Accuracy (tests/inference/test_detector_calibration.py, abTEM graphene lattice at 0.16 Å per
    pixel, gain 40): gain within 3% and read noise within 4% without position noise; with scan
    position noise of 0.3 px rms it is measured (0.31 x 0.30 px) and the gain stays within 10%,
    but at 0.6 px the first-order model no longer holds and the gain comes out twice too large
    (79 for 40), since the variance the shifts add at the columns' peaks looks like shot noise."""
    y = np.asarray(frame, np.float64)
    w = np.isfinite(y) if mask is None else (np.asarray(mask, bool) & np.isfinite(y))
    lattice = np.asarray(lattice, np.float64)
    hk, b = _reflections(lattice, g_max)
    px = float(np.sqrt(abs(np.linalg.det(m))))
    spacing_px = min(np.linalg.norm(lattice, axis=0)) / px
    m, t = np.asarray(m, float), np.asarray(t, float)
    mu, grad, res, ntile, img = _tile_fits(np.where(w, y, 0.0), w, m, t, hk, b, tile)
    vac = _vacuum(y, w, spacing_px, floor=float(np.percentile(mu, 0.5)))
    nvac = int(vac.sum())
    if nvac >= MIN_VACUUM_PIXELS:  # the lattice series does not hold in a hole or on its rim: fit without them
        from scipy import ndimage

        rim = ndimage.binary_dilation(vac, iterations=max(1, int(round(3 * spacing_px))))
        mu, grad, res, ntile, img = _tile_fits(np.where(w & ~rim, y, 0.0), w & ~rim, m, t, hk, b, tile)
    g2 = grad**2
    r2 = res**2

    def robust_fit(x, target):
        """Least squares of ``target`` on ``x`` with pixels beyond 16x the predicted variance
        (4 sigma) dropped, iterated; the clip's bias corrected as for a Gaussian."""
        keep = np.ones(len(target), bool)
        sc = np.maximum(np.abs(x).max(0), 1e-300)  # columns of 1e6 and 1 side by side: scale them
        for _ in range(6):
            coef, *_ = np.linalg.lstsq(x[keep] / sc, target[keep], rcond=None)
            coef = coef / sc
            pred = x @ coef
            keep = r2 <= 16 * np.maximum(pred + offset, 1e-12 * np.max(pred + offset))
        return coef, keep

    from scipy.stats import norm

    clip = 1 - 2 * 4.0 * norm.pdf(4.0) / (2 * norm.cdf(4.0) - 1)  # E[x^2 | |x| < 4 sd] / sd^2
    offset = 0.0
    ref = float(np.median(mu))  # centred: the intercept at the median, moved back to 0 below
    free, _ = robust_fit(np.stack([mu - ref, np.ones_like(mu), g2[:, 0], g2[:, 1]], 1), r2 / clip)
    free_gain, free_int = float(free[0]), float(free[1] - free[0] * ref)
    if not free_gain > 0:
        raise InputError(f"detector calibration: the variance does not grow with the mean (slope {free_gain:.3g}): "
                         "the frame is not shot-noise limited, or is already processed (filtered, background-subtracted)")  # fmt: skip
    if nvac >= MIN_VACUUM_PIXELS:
        dark = float(np.mean(y[vac]))
        s2, _ = _clipped_variance(y[vac] - dark)
        offset = s2
        x = np.stack([mu - dark, g2[:, 0], g2[:, 1], (mu - dark) ** 2], 1)
        target = r2 / clip - s2
        coef, keep = robust_fit(x, target)
        gain, jit, flick = float(coef[0]), coef[1:3], float(coef[3])
        source, read = "vacuum", math.sqrt(s2)
    else:
        x = np.stack([mu - ref, np.ones_like(mu), g2[:, 0], g2[:, 1]], 1)
        target = r2 / clip
        coef, keep = robust_fit(x, target)
        gain, jit, flick = float(coef[0]), coef[2:], 0.0
        dark, s2 = ref - float(coef[1]) / gain, 0.0
        source, read = "intercept", 0.0
    # the gain's sd from the spread of tile-wise estimates is what the fit's formal error misses
    # (correlated residuals of neighbouring pixels): the formal sd of the pixel regression, times 3
    xk = x[keep]
    resid = target[keep] - xk @ coef
    cov = np.linalg.inv(xk.T @ xk) * float(np.mean(resid**2))
    gain_sd = 3.0 * float(math.sqrt(cov[0, 0]))
    jitter = np.sqrt(np.maximum(jit, 0.0))
    # the relation on the flattest pixels (a third of them: the position noise adds little there)
    flat = g2.sum(1) <= np.percentile(g2.sum(1), 33)
    lo, hi = np.percentile(mu[flat], [1, 99])
    edges = np.linspace(lo, hi, N_BINS + 1)
    rows, chi = [], []
    for a, c in zip(edges[:-1], edges[1:]):
        sel = flat & (mu >= a) & (mu < c)
        if sel.sum() < 100:
            continue
        v, n = _clipped_variance(res[sel])
        vsd = v * math.sqrt(2.0 / n)
        e = mu[sel] - dark
        pred = float(np.mean(gain * e + s2 + g2[sel] @ (jitter**2) + flick * e**2))
        rows.append((float(mu[sel].mean()), v, vsd, n))
        chi.append(((v - pred) / vsd) ** 2)
    bins = np.array(rows) if rows else np.zeros((0, 4))
    chi2 = float(np.mean(chi)) if chi else float("nan")
    # what the model leaves: the residuals standardised by it, their mean square (the dispersion;
    # 1 if the model is the whole story) and their correlation between pixels (0 for shot noise)
    e_img = img[0] - dark
    var_img = gain * e_img + s2 + img[2] * float(np.mean(jitter**2)) + flick * e_img**2
    z = img[1] / np.sqrt(np.maximum(var_img, 1e-12 * gain**2))
    ok = np.isfinite(z) & (np.abs(np.nan_to_num(z)) < 5)
    dispersion = float(np.mean(z[ok] ** 2))
    rho = _autocorrelation(np.where(ok, z, 0.0), ok, MAX_LAG)
    return DetectorCalibration(
        gain=gain, gain_sd=gain_sd, dark=dark, read_noise=read, dark_source=source, n_vacuum_pixels=nvac, bins=bins,
        line_chi2_dof=chi2, free_gain=free_gain, free_intercept=free_int, constrained_intercept=s2 - gain * dark,
        n_tiles=ntile, mean_electrons=float(np.mean((y[w] - dark) / gain)), position_noise_px=(float(jitter[0]), float(jitter[1])),
        flicker=math.sqrt(max(flick, 0.0)), dispersion=dispersion, autocorrelation=rho, g_max=float(g_max),
    )  # fmt: skip
