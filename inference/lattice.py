"""Lattice registration of a frame of any field of view: the affine map from frame pixels to the
host crystal, found from the frame itself.

A frame pixel ``p = (i, j)`` (array index ``[i, j]``, ``i`` along x) images the specimen point

    r = M p + t,      M [2, 2] in Å/pixel,   t [2] in Å,

in the coordinates of the host's simulation cell. ``M`` holds the in-plane rotation, the true pixel
size along each scan axis and any shear (scan distortion), ``t`` the offset (drift, frame to frame).
The host's simulated image is periodic; it is represented by its Fourier series

    I(r) = Re sum_G c_G exp(2 pi i G . r)

over the reciprocal vectors ``G`` of its cell (:func:`host_series`), so the tiled host image through
the map is ``I(M p + t) = Re sum_G c_G e^{2 pi i G.t} e^{2 pi i (M^T G) . p}``: every ``G`` appears
in the frame as a Fourier peak at ``q_G = M^T G`` cycles/pixel, and the sum is separable over the
two pixel axes (two ``[n, N_G]`` phase tables and one matrix product per evaluation).

Registration (:func:`register_lattice`) has two stages:

1. **Coarse**, from the Fourier peaks of the frame (Hann-windowed, zero-padded): the strongest
   peak in the annulus where the host's strongest reflection must fall at the nominal pixel size
   (within :data:`CALIBRATION_RANGE`) gives scale and rotation; the predicted peaks of the next
   strongest reflections are then located and ``M`` fitted to them by least squares. Peaks fix
   ``M`` only up to the lattice's point group; for each of its operations the offset ``t`` is the
   maximum of the correlation of the frame with the tiled host image over one primitive cell
   (computed from the frame's Fourier components at the predicted peaks), and the best
   (operation, offset) is kept: that is where the structure, not the lattice, decides.
2. **Fine**: the MAP of ``(M, t, scale, background)`` under the detector's noise model
   (:mod:`inference.noise`; Poisson for counting detectors) of the frame given the tiled host
   image ``mu = E (scale I(M p + t) + background)``, by damped Newton steps with the exact Hessian
   (autodiff), on the whole frame or on a regular sub-lattice of its pixels for large frames (the
   sub-lattice keeps the lever arm of the whole field of view). The covariance is the inverse
   Hessian at the MAP (Laplace), from which the calibration's uncertainties follow by the delta
   method. Defects are a small fraction of the frame and barely move the fit.

A frame with no host lattice (amorphous, another material, or a nominal pixel size off by more
than :data:`CALIBRATION_RANGE`) raises :class:`forward.InputError` saying what was expected and
what periodicity the frame does hold.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from forward import InputError

__all__ = [
    "HostSeries",
    "LatticeFit",
    "host_series",
    "primitive_reciprocal",
    "lattice_point_group",
    "evaluate_series",
    "register_lattice",
    "CALIBRATION_RANGE",
    "PEAK_SIGNIFICANCE",
]

#: The true pixel size may differ from the nominal (BEAM.json ``sampling``) by this fraction.
CALIBRATION_RANGE = 0.08
#: A lattice peak must exceed the median power of its annulus by this factor (pure Poisson noise:
#: the largest of ~1e4 exponential variates is ~10 means, ~14 medians).
PEAK_SIGNIFICANCE = 40.0
#: Point-group candidates within this fraction of the score range of the best tie (host symmetries).
TIE_FRACTION = 0.02
#: The fine stage uses at most this many pixels (a regular sub-lattice of larger frames).
FINE_MAX_PIXELS = 256 * 256


@dataclasses.dataclass(frozen=True)
class HostSeries:
    """The Fourier series of a periodic host image: ``I(r) = Re sum_G c[G] exp(2 pi i g[G] . r)``.

    Attributes:
        g: ``[N, 2]`` reciprocal vectors [1/Å] (half-plane plus the mean: real image).
        c: ``[N]`` complex coefficients (the non-zero-frequency ones doubled, so the real part of the
            half-plane sum is the image).
        lattice: ``[2, 2]`` primitive lattice vectors of the host as columns [Å].
    """

    g: np.ndarray
    c: np.ndarray
    lattice: np.ndarray

    @property
    def first_order(self) -> float:
        """|G| [1/Å] of the strongest non-zero reflection."""
        gnorm = np.hypot(*self.g.T)
        return float(gnorm[np.argmax(np.where(gnorm > 1e-9, np.abs(self.c), -1.0))])

    @property
    def mean(self) -> float:
        return float(self.c[np.argmin(np.hypot(*self.g.T))].real)


def host_series(image, cell, lattice, rel_threshold: float = 1e-4, primitive: bool = True) -> HostSeries:
    """:class:`HostSeries` of ``image [gx, gy]``, sampled on a grid over the orthogonal ``cell [2]``
    [Å] from (0, 0) (endpoint excluded), above Nyquist. Coefficients below ``rel_threshold`` of the
    mean are dropped; with ``primitive`` so are those off the primitive reciprocal lattice of
    ``lattice`` (a host image has none but aliasing residue; a defect supercell's image keeps them)."""
    img = np.asarray(image, np.float64)
    gx, gy = img.shape
    f = np.fft.rfft2(img) / img.size
    kx = np.fft.fftfreq(gx, d=cell[0] / gx)
    ky = np.fft.rfftfreq(gy, d=cell[1] / gy)
    c = f.copy()
    c[:, 1:] *= 2.0  # the rfft's dropped half
    if gy % 2 == 0:
        c[:, -1] /= 2.0  # the Nyquist column is its own mirror
    c[0, 0] = f[0, 0]
    # the ky = 0 column holds both halves of kx: keep kx >= 0 there, doubled
    neg = (kx < 0)[:, None] & (np.arange(c.shape[1]) == 0)[None, :]
    c[:, 0] = np.where(kx > 0, 2.0 * f[:, 0], c[:, 0])
    keep = (np.abs(c) > rel_threshold * abs(f[0, 0])) & ~neg
    i, j = np.nonzero(keep)
    g = np.stack([kx[i], ky[j]], axis=1)
    lat = np.asarray(lattice, np.float64)
    if primitive:  # the host's image is periodic on its primitive lattice: keep G with integer G . a
        n = g @ lat
        on = np.abs(n - np.round(n)).max(axis=1) < 1e-6
        i, j, g = i[on], j[on], g[on]
    return HostSeries(g=g, c=c[i, j].astype(np.complex128), lattice=lat)


def primitive_reciprocal(lattice) -> np.ndarray:
    """``[2, 2]`` reciprocal vectors (columns, 1/Å) of the lattice vectors ``lattice`` (columns):
    ``B^T A = 1``."""
    return np.linalg.inv(np.asarray(lattice, np.float64)).T


def lattice_point_group(lattice, tol: float = 1e-3) -> list[np.ndarray]:
    """The orthogonal ``[2, 2]`` maps (rotations and mirrors) that carry the lattice onto itself."""
    a = np.asarray(lattice, np.float64)
    inv = np.linalg.inv(a)
    ops = []
    for u in itertools.product((-1, 0, 1), repeat=4):
        uu = np.asarray(u, float).reshape(2, 2)
        if abs(abs(np.linalg.det(uu)) - 1) > 1e-9:
            continue
        r = a @ uu @ inv
        if np.abs(r.T @ r - np.eye(2)).max() < tol:
            ops.append(r)
    return ops


def evaluate_series(g, c, m, t, ii, jj, xp=np):
    """``I(M p + t)`` on the pixel grid ``p = (ii[a], jj[b])`` → ``[len(ii), len(jj)]``, separably."""
    q = g @ m  # [N, 2]: q_G = M^T G as rows
    ph = xp.exp(2j * math.pi * (g @ t))
    u = xp.exp(2j * math.pi * ii[:, None] * q[None, :, 0])  # [nx, N]
    v = xp.exp(2j * math.pi * jj[:, None] * q[None, :, 1])  # [ny, N]
    return xp.real((u * (c * ph)[None, :]) @ v.T)


@dataclasses.dataclass(frozen=True)
class LatticeFit:
    """The registered affine map of one frame and what it implies.

    Attributes:
        m: ``[2, 2]`` Å/pixel; ``t``: ``[2]`` Å (``r = m @ p + t``).
        scale, background: the frame's intensity scale and background (intensity units).
        cov: ``[8, 8]`` Laplace covariance of ``(m00, m01, m10, m11, t0, t1, scale, background)``.
        n_pixels: pixels used by the fine stage (``stride`` the sub-lattice step).
        coarse_m, coarse_t: the coarse estimate; ``peak_ratio``: the first peak's significance.
    """

    m: np.ndarray
    t: np.ndarray
    scale: float
    background: float
    cov: np.ndarray
    n_pixels: int
    stride: int
    coarse_m: np.ndarray
    coarse_t: np.ndarray
    peak_ratio: float
    nominal: tuple[float, float]
    n_iter: int

    def calibration(self) -> dict:
        """Pixel sizes, rotation, shear and offset with 1-sigma uncertainties (delta method)."""
        theta = np.concatenate([self.m.ravel(), self.t])

        def derived(th):
            m = th[:4].reshape(2, 2)
            sx, sy = np.linalg.norm(m[:, 0]), np.linalg.norm(m[:, 1])
            rot = math.degrees(math.atan2(m[1, 0], m[0, 0]))
            shear = math.degrees(math.asin(np.clip(np.dot(m[:, 0], m[:, 1]) / (sx * sy), -1, 1)))
            return np.array([sx, sy, rot, shear, th[4], th[5]])

        val = derived(theta)
        h = 1e-7 * np.maximum(np.abs(theta), 1e-3)
        jac = np.stack([(derived(theta + h[k] * e) - derived(theta - h[k] * e)) / (2 * h[k])
                        for k, e in enumerate(np.eye(6))], axis=1)  # fmt: skip
        cov = jac @ self.cov[:6, :6] @ jac.T
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        names = ("pixel_x_A", "pixel_y_A", "rotation_deg", "shear_deg", "offset_x_A", "offset_y_A")
        out = {k: float(v) for k, v in zip(names, val)}
        out.update({f"{k}_sd": float(s) for k, s in zip(names, sd)})
        out["handedness"] = "mirrored" if np.linalg.det(self.m) < 0 else "proper"
        out["nominal_pixel_A"] = [float(x) for x in self.nominal]
        out["pixel_error_rel"] = [float(val[0] / self.nominal[0] - 1), float(val[1] / self.nominal[1] - 1)]
        return out

    def to_json_dict(self) -> dict:
        cal = self.calibration()
        return {
            "affine_A_per_px": self.m.tolist(),
            "offset_A": self.t.tolist(),
            "covariance": self.cov[:6, :6].tolist(),
            "parameters": ["m00", "m01", "m10", "m11", "t0", "t1"],
            "calibration": cal,
            "summary": (
                f"pixel {cal['pixel_x_A']:.5f} ± {cal['pixel_x_A_sd']:.5f} x {cal['pixel_y_A']:.5f} ± "
                f"{cal['pixel_y_A_sd']:.5f} Å, nominal {self.nominal[0]:g} x {self.nominal[1]:g}; rotation "
                f"{cal['rotation_deg']:.3f} ± {cal['rotation_deg_sd']:.3f}°; shear {cal['shear_deg']:.3f} ± "
                f"{cal['shear_deg_sd']:.3f}°"
            ),
            "scale": self.scale,
            "background": self.background,
            "fine_pixels": self.n_pixels,
            "fine_stride": self.stride,
            "peak_significance": self.peak_ratio,
        }


def _hann(n):
    return 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n)


def _spacings(lattice) -> tuple[float, float]:
    return tuple(float(np.linalg.norm(v)) for v in np.asarray(lattice).T)


def _strongest_periodicity(power, nfft) -> float:
    """Period [pixels] of the strongest non-DC peak of a power spectrum (fftshifted axes)."""
    p = power.copy()
    cx, cy = nfft[0] // 2, nfft[1] // 2
    p[cx - 2 : cx + 3, cy - 2 : cy + 3] = 0
    i, j = np.unravel_index(int(np.argmax(p)), p.shape)
    q = math.hypot((i - cx) / nfft[0], (j - cy) / nfft[1])
    return 1.0 / q if q > 0 else float("inf")


def _peak_near(power, q, nfft, radius):
    """Sub-bin position (cycles/pixel) and power of the maximum of ``power`` within ``radius``
    bins of frequency ``q``; ``None`` if out of the spectrum."""
    cx, cy = nfft[0] // 2, nfft[1] // 2
    bx, by = q[0] * nfft[0] + cx, q[1] * nfft[1] + cy
    r = int(math.ceil(radius))
    i0, j0 = int(round(bx)), int(round(by))
    if not (r + 1 <= i0 < nfft[0] - r - 1 and r + 1 <= j0 < nfft[1] - r - 1):
        return None
    sub = power[i0 - r : i0 + r + 1, j0 - r : j0 + r + 1]
    a, b = np.unravel_index(int(np.argmax(sub)), sub.shape)
    i, j = i0 - r + a, j0 - r + b
    fine = []
    for axis in (0, 1):
        lo = power[i - 1, j] if axis == 0 else power[i, j - 1]
        hi = power[i + 1, j] if axis == 0 else power[i, j + 1]
        c0 = power[i, j]
        lo, hi, c0 = (np.log(max(x, 1e-300)) for x in (lo, hi, c0))  # Gaussian peak: parabola in log
        den = lo - 2 * c0 + hi
        fine.append(float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5)) if den < 0 else 0.0)
    return np.array([(i + fine[0] - cx) / nfft[0], (j + fine[1] - cy) / nfft[1]]), float(power[i, j])


def _coarse_m(frame, series: HostSeries, nominal):
    """``(M, peak_ratio)`` from the Fourier peaks, up to the lattice point group."""
    nx, ny = frame.shape
    nfft = (max(nx, min(4 * nx, 2048)), max(ny, min(4 * ny, 2048)))
    y = (frame - frame.mean()) * _hann(nx)[:, None] * _hann(ny)[None, :]
    power = np.abs(np.fft.fftshift(np.fft.fft2(y, s=nfft))) ** 2
    gnorm = np.hypot(*series.g.T)
    order = np.argsort(-np.abs(series.c) * (gnorm > 1e-9))
    g1 = series.g[order[0]]
    s_nom = math.sqrt(nominal[0] * nominal[1])
    q_nom = s_nom * float(np.linalg.norm(g1))
    fx = (np.arange(nfft[0]) - nfft[0] // 2) / nfft[0]
    fy = (np.arange(nfft[1]) - nfft[1] // 2) / nfft[1]
    qq = np.hypot(fx[:, None], fy[None, :])
    ring = (qq > q_nom * (1 - CALIBRATION_RANGE)) & (qq < q_nom * (1 + CALIBRATION_RANGE))
    a, b = _spacings(series.lattice)
    if not ring.any() or q_nom >= 0.5:
        raise InputError(
            f"no host lattice found: expected spacings {a:.4g}, {b:.4g} Å, but at the nominal pixel size "
            f"{s_nom:.4g} Å the host's strongest periodicity ({1 / np.linalg.norm(g1):.4g} Å) is finer than 2 pixels"
        )
    ring_power = np.where(ring, power, 0.0)
    k = int(np.argmax(ring_power))
    peak = float(ring_power.ravel()[k])
    ratio = peak / max(float(np.median(power[ring])), 1e-300)
    # a peak, not the flank of one outside the annulus: the largest power within a main lobe
    ip, jp = np.unravel_index(k, power.shape)
    lobe = (int(math.ceil(1.5 * nfft[0] / nx)), int(math.ceil(1.5 * nfft[1] / ny)))
    around = power[max(ip - lobe[0], 0) : ip + lobe[0] + 1, max(jp - lobe[1], 0) : jp + lobe[1] + 1]
    if ratio < PEAK_SIGNIFICANCE or around.max() > peak * (1 + 1e-9):
        found = _strongest_periodicity(power, nfft)
        raise InputError(
            f"no host lattice found: expected spacings {a:.4g}, {b:.4g} Å (the strongest reflection at "
            f"{1 / np.linalg.norm(g1):.4g} Å, i.e. {1 / q_nom:.4g} pixels at the nominal {s_nom:.4g} Å/pixel, "
            f"within ±{CALIBRATION_RANGE:.0%}), strongest periodicity found {found:.4g} px "
            f"({found * s_nom:.4g} Å at the nominal pixel size); the frame's peak there is only {ratio:.3g}x its "
            f"annulus's median power (needed {PEAK_SIGNIFICANCE:g}x). Check the frame shows the host and that BEAM.json "
            "sampling is the pixel size"
        )
    i, j = np.unravel_index(k, power.shape)
    q1, _ = _peak_near(power, ((i - nfft[0] // 2) / nfft[0], (j - nfft[1] // 2) / nfft[1]), nfft, 1)
    s = float(np.linalg.norm(q1)) / float(np.linalg.norm(g1))
    ang = math.atan2(q1[1], q1[0]) - math.atan2(g1[1], g1[0])
    # q = M^T g with M = s R(phi): q = s R(-phi) g, so phi = -ang
    rot = np.array([[math.cos(-ang), -math.sin(-ang)], [math.sin(-ang), math.cos(-ang)]])
    m = s * rot
    # refine on the next strongest reflections: least squares q_meas = M^T g
    for n_use in (6, 16, 32):
        gs, qs = [], []
        for idx in order[: n_use + 1]:
            g = series.g[idx]
            if np.linalg.norm(g) < 1e-9:
                continue
            q = g @ m
            if np.abs(q).max() > 0.45:
                continue
            radius = max(2.0, 0.02 * np.linalg.norm(q) * max(nfft))
            hit = _peak_near(power, q, nfft, radius)
            if hit is None:
                continue
            gs.append(g)
            qs.append(hit[0])
        if len(gs) >= 2 and np.linalg.matrix_rank(np.asarray(gs)) == 2:
            mt, *_ = np.linalg.lstsq(np.asarray(gs), np.asarray(qs), rcond=None)
            m = mt  # rows of q = g @ M  <=>  q = M^T g
    return m, ratio


def _frame_components(y, series, m, ii, jj):
    """``Y_G = sum_p y(p) exp(-2 pi i q_G . p)`` for every ``G`` of the series."""
    q = series.g @ m
    u = np.exp(-2j * np.pi * ii[:, None] * q[None, :, 0])
    v = np.exp(-2j * np.pi * jj[:, None] * q[None, :, 1])
    return np.einsum("ij,ig,jg->g", y, u, v, optimize=True)


def _best_offset(y, series, m, ii, jj, n_grid=36):
    """The offset ``t`` maximising the correlation of ``y`` with the tiled host image, over one
    primitive cell; and that correlation."""
    gnorm = np.hypot(*series.g.T)
    g1 = series.first_order
    low = (gnorm > 1e-9) & (gnorm < 2.05 * g1)  # low orders: robust to the coarse M's error
    sub = HostSeries(series.g[low], series.c[low], series.lattice)
    yg = _frame_components(y - y.mean(), sub, m, ii, jj)
    f = (np.arange(n_grid) + 0.5) / n_grid
    t = (series.lattice @ np.stack(np.meshgrid(f, f, indexing="ij")).reshape(2, -1)).T  # [n², 2]
    score = np.real(np.exp(2j * np.pi * (t @ sub.g.T)) @ (sub.c * np.conj(yg)))
    k = int(np.argmax(score))
    return t[k], float(score[k])


def _noise_terms(noise):
    """``(gain, shift, gaussian_var)`` of a noise model, as floats: counts ``y`` are scored as the
    shifted Poisson variate ``z = y / gain + shift`` of mean ``mu + shift`` (:mod:`inference.noise`),
    or as Gaussian with variance ``gaussian_var`` [electrons²]."""
    g = float(noise.gain)
    r = float(noise.read_noise)
    if noise.kind == "gaussian":
        return g, 0.0, (r / g) ** 2
    return g, (r / g) ** 2 if noise.kind == "poisson_gaussian" else 0.0, 0.0


def _fine(y, w, series, m0, t0, exposure, noise, n_iter=40, max_move=0.5):
    """Fisher scoring (Levenberg-Marquardt damped) of ``(M, t, scale, background)``; returns the
    parameters, the inverse Fisher information at the MAP and the iterations taken."""
    gain, shift, gvar = _noise_terms(noise)
    z = np.maximum(y / gain + shift, 0.0)
    ii = np.arange(y.shape[0], dtype=float)
    jj = np.arange(y.shape[1], dtype=float)
    pi_, pj_ = np.meshgrid(ii, jj, indexing="ij")
    keep = w > 0
    c2 = 2j * np.pi * series.c

    def model(th):
        m, t = th[:4].reshape(2, 2), th[4:6]
        img = evaluate_series(series.g, series.c, m, t, ii, jj, np)
        ix = evaluate_series(series.g, c2 * series.g[:, 0], m, t, ii, jj, np)
        iy = evaluate_series(series.g, c2 * series.g[:, 1], m, t, ii, jj, np)
        mu = exposure * (th[6] * img + th[7])
        s = exposure * th[6]
        jac = np.stack([s * ix * pi_, s * ix * pj_, s * iy * pi_, s * iy * pj_, s * ix, s * iy,
                        exposure * img, np.full_like(img, exposure)], axis=-1)  # fmt: skip
        return mu, jac

    def terms(th):
        mu, jac = model(th)
        mu, jac, zz, ww = mu[keep], jac[keep], z[keep], w[keep]
        if gvar:
            res = zz - mu
            return float(np.sum(ww * 0.5 * res**2 / gvar)), jac.T @ (ww * res / gvar), (jac * (ww / gvar)[:, None]).T @ jac
        m = np.maximum(mu + shift, 1e-9)
        nll = -np.sum(ww * (np.where(zz > 0, zz * np.log(m / np.maximum(zz, 1e-30)), 0.0) - (m - zz)))
        return float(nll), jac.T @ (ww * (zz / m - 1.0)), (jac * (ww / m)[:, None]).T @ jac

    img0 = evaluate_series(series.g, series.c, m0, t0, ii, jj, np)
    a = np.stack([img0[keep], np.ones(int(keep.sum()))], 1)
    s0, b0 = np.linalg.lstsq(a, (z[keep] - shift) / exposure, rcond=None)[0]
    th = np.concatenate([np.asarray(m0, float).ravel(), np.asarray(t0, float), [max(s0, 1e-6), b0]])
    f, g, fisher = terms(th)
    lam, it = 1e-4, 0
    for it in range(1, n_iter + 1):
        d = np.diag(fisher)
        step = np.linalg.solve(fisher + lam * np.diag(d + 1e-300), g)
        # trust region: the map moves by at most a quarter of the host's shortest spacing at the
        # frame's far corner per step, the scale stays positive
        corner = np.array([y.shape[0], y.shape[1]], float)
        move = np.linalg.norm(step[:4].reshape(2, 2) @ corner) + np.linalg.norm(step[4:6])
        step = step * min(1.0, max_move / max(move, 1e-300))
        new = th + step
        if new[6] <= 0:
            lam *= 10
            continue
        f_new, g_new, fisher_new = terms(new)
        if np.isfinite(f_new) and f_new <= f:
            done = f - f_new < 1e-9 * max(1.0, abs(f)) + 1e-6
            th, f, g, fisher = new, f_new, g_new, fisher_new
            lam = max(lam / 10, 1e-12)
            if done:
                break
        else:
            lam *= 10
            if lam > 1e8:
                break
    return th, np.linalg.pinv(fisher), it


def register_lattice(frame, series: HostSeries, nominal, *, exposure: float = 1.0, noise=None,
                     mask=None, prior_m=None) -> LatticeFit:
    """Register ``frame [nx, ny]`` (counts) against the periodic host image ``series`` (module
    docstring). ``nominal``: the nominal pixel size [Å] per axis; ``exposure`` = dose x nominal
    pixel area (electrons per unit intensity); ``noise`` a :class:`inference.NoiseModel`
    (default Poisson); ``mask [nx, ny]`` True where a pixel is scored. ``prior_m``: a known
    affine map to start from (a previous frame of the series), skipping the coarse stage's
    scale and rotation search."""
    from inference.noise import make_noise_model

    y = np.asarray(frame, np.float64)
    nx, ny = y.shape
    w = np.ones_like(y) if mask is None else np.asarray(mask, np.float64)
    yf = np.where(w > 0, y, (y * w).sum() / max(w.sum(), 1))
    noise = noise or make_noise_model("poisson")
    if prior_m is None:
        m, ratio = _coarse_m(yf, series, nominal)
    else:
        m, ratio = np.asarray(prior_m, np.float64), float("nan")
    ii, jj = np.arange(nx, dtype=float), np.arange(ny, dtype=float)
    cands = []
    for op in lattice_point_group(series.lattice) if prior_m is None else [np.eye(2)]:
        mc = op @ m
        t, score = _best_offset(yf, series, mc, ii, jj)
        cands.append((mc, t, score))
    # operations that are symmetries of the host's image tie (to the noise): among them the proper
    # map (no mirror) with the smallest rotation, so a symmetric host reports one canonical map
    scores = np.array([c[2] for c in cands])
    tie = scores >= scores.max() - TIE_FRACTION * (scores.max() - scores.min())
    m_c, t_c, _ = min((c for c, k in zip(cands, tie) if k),
                      key=lambda c: (np.linalg.det(c[0]) < 0, abs(math.atan2(c[0][1, 0], c[0][0, 0]))))  # fmt: skip
    stride = max(1, int(math.ceil(math.sqrt(nx * ny / FINE_MAX_PIXELS))))
    ys, ws = y[::stride, ::stride], w[::stride, ::stride]
    m_s = m_c * stride  # pixel index of the sub-lattice k -> k * stride
    # coarse to fine: the first orders alone (a basin of half their period at the far corner), then all
    gnorm = np.hypot(*series.g.T)
    g1 = series.first_order
    n_it = 0
    th = np.concatenate([m_s.ravel(), t_c])
    for cut in (1.05 * g1, 2.05 * g1, np.inf):
        keep = gnorm <= cut
        sub = HostSeries(series.g[keep], series.c[keep], series.lattice)
        th_full, cov, k = _fine(ys, ws, sub, th[:4].reshape(2, 2), th[4:6], exposure, noise,
                                max_move=0.25 / max(float(g1), 1e-12) if np.isfinite(cut) else 0.1 / float(g1))  # fmt: skip
        th = th_full
        n_it += k
    jac = np.diag([1 / stride] * 4 + [1.0] * 4)  # back to whole-frame pixels
    m_f = th[:4].reshape(2, 2) / stride
    return LatticeFit(
        m=m_f, t=th[4:6], scale=float(th[6]), background=float(th[7]), cov=jac @ cov @ jac.T,
        n_pixels=int((ws > 0).sum()), stride=stride, coarse_m=m_c, coarse_t=t_c, peak_ratio=ratio,
        nominal=(float(nominal[0]), float(nominal[1])), n_iter=n_it,
    )  # fmt: skip
