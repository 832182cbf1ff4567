"""Optics as nuisance: defocus, two-fold astigmatism and thickness learned from the frames and
marginalised in every hypothesis's evidence.

The optics the operator typed are a guess: the defocus drifts by nanometres, the thickness is
known to a unit cell or two, some two-fold astigmatism is left. For a hypothesis ``h`` the frames
``y_1..T`` of a session share one optics ``theta = (d, a12, b12)`` — the defocus offset from the
nominal and the astigmatism ``C12 (cos 2 phi12, sin 2 phi12)`` [Å] — and one thickness, ``k``
extra host unit cells (a discrete choice among ``extra_cells``):

    p(y | h) = sum_k p(k) int p(theta) prod_t p(y_t | h, theta, k) d theta

- ``p(y_t | h, theta, k)`` is the one scorer's per-frame evidence with scale and background
  marginalised (the ``"linear"`` scorer, :func:`inference.evidence.linear_fit`: frames registered
  up to a known shift), a smooth function of the image, which is a smooth function of ``theta``
  (one FFT pair per exit wave, :func:`forward.make_optics_image_fn`).
- The integral over ``theta`` is Laplace's method around the MAP (Tierney & Kadane 1986):
  ``log Z_hk = f(theta*) + 3/2 log 2 pi - 1/2 log det(-H)``, ``f`` the log joint summed over the
  frames and ``H`` its Hessian by autodiff. The MAP is found in two stages because the image is
  oscillatory in defocus (the phase at the aperture edge turns by ~1 rad per ``lambda /
  alpha_max^2`` of defocus): a grid over ``nominal +- defocus_range`` at ``search_step`` scored
  on the summed frames, then damped Newton steps on all frames jointly.
- The sum over ``k`` is exact (uniform prior over ``extra_cells`` unless weights are given).

The prior (:class:`OpticsPrior`): the defocus offset Gaussian, mean 0 and sd ``defocus_range / 2``
(the search covers +-2 sd); each astigmatism component Gaussian, mean 0 and sd ``c12_sd``.

This marginalises the optics per hypothesis: each hypothesis is judged under the optics that suit
it best, weighted by how plausible they are, and pays the Occam factor of having them free. The
session's estimate of the optics is the one under the most probable hypothesis
(:meth:`OpticsFit.estimate`), with its Laplace standard deviations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError
from inference.evidence import _linear_one
from inference.noise import NoiseModel

__all__ = ["OpticsPrior", "make_optics_prior", "OpticsFit", "fit_optics", "N_OPTICS"]

#: The continuous optics parameters: defocus offset, a12, b12 [Å].
N_OPTICS = 3
_NEWTON = 10
_MAX_STEP = 4.0  # Å per Newton step (a trust region: the likelihood is oscillatory in defocus)


@dataclasses.dataclass(frozen=True)
class OpticsPrior:
    """The optics nuisance's prior and search (:func:`make_optics_prior`).

    Attributes:
        nominal_defocus: the defocus the operator set [Å] (positive = underfocus).
        defocus_range: the search half-width [Å]; the offset's prior sd is half of it.
        c12_sd: prior sd of each two-fold astigmatism component [Å] (0: astigmatism fixed at the
            nominal beam's).
        extra_cells: host unit cells that may be added at the exit surface (the thickness
            choices), e.g. ``(0, 1, 2)``.
        cell_weights: prior weight of each thickness choice (normalised).
        search_step: defocus grid step of the first stage [Å].
    """

    nominal_defocus: float
    defocus_range: float = 50.0
    c12_sd: float = 10.0
    extra_cells: tuple[int, ...] = (0,)
    cell_weights: tuple[float, ...] = (1.0,)
    search_step: float = 2.5

    @property
    def defocus_sd(self) -> float:
        return 0.5 * self.defocus_range

    def describe(self) -> str:
        cells = ", ".join(str(k) for k in self.extra_cells)
        return (f"defocus {self.nominal_defocus:.1f} Å nominal, offset ~ N(0, {self.defocus_sd:.3g} Å) searched over "
                f"+-{self.defocus_range:.3g} Å in {self.search_step:g} Å steps; C12 components ~ N(0, {self.c12_sd:g} Å); "
                f"extra unit cells at the exit in {{{cells}}}")  # fmt: skip


def make_optics_prior(nominal_defocus: float, *, defocus_range: float = 50.0, c12_sd: float = 10.0,
                      extra_cells: Sequence[int] = (0,), cell_weights: Sequence[float] | None = None,
                      search_step: float | None = None) -> OpticsPrior:  # fmt: skip
    """A validated :class:`OpticsPrior`; errors say which setting is wrong and why."""
    f0 = float(nominal_defocus)
    if not math.isfinite(f0):
        raise InputError(f"the nominal defocus must be finite [Å], got {nominal_defocus!r}")
    r = float(defocus_range)
    if not math.isfinite(r) or r <= 0:
        raise InputError(
            f"the defocus range must be a positive half-width [Å], got {defocus_range!r}: a range of zero width is the "
            "nominal defocus taken as exact; score without optics estimation for that"
        )
    if r > 5000:
        raise InputError(f"the defocus range +-{r:g} Å is beyond any objective-lens error (at most 5000 Å)")
    c = float(c12_sd)
    if not math.isfinite(c) or c < 0 or c > 1000:
        raise InputError(f"the astigmatism prior sd must be in [0, 1000] Å, got {c12_sd!r}")
    cells = [k for k in extra_cells]
    if not cells:
        raise InputError("the thickness choices (extra unit cells) are empty: give at least one, e.g. 0")
    for k in cells:
        if isinstance(k, bool) or not float(k).is_integer() or k < 0 or k > 50:
            raise InputError(
                f"extra unit cells must be whole numbers from 0 to 50 (cells added at the exit surface), got {k!r}: the "
                "thickness cannot be less than the hypotheses' own cell"
            )
    cells = tuple(int(k) for k in cells)
    if len(set(cells)) != len(cells):
        raise InputError(f"the thickness choices repeat: {list(cells)}")
    w = np.ones(len(cells)) if cell_weights is None else np.asarray(cell_weights, float)
    if w.shape != (len(cells),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"cell_weights must be {len(cells)} non-negative weights, not all zero, got {cell_weights!r}")
    step = min(2.5, r / 4) if search_step is None else float(search_step)
    if not math.isfinite(step) or step <= 0 or step > r:
        raise InputError(f"the defocus search step must be in (0, {r:g}] Å, got {search_step!r}")
    return OpticsPrior(f0, r, c, cells, tuple(float(v) for v in w / w.sum()), step)


@dataclasses.dataclass(frozen=True)
class OpticsFit:
    """The optics fitted for every hypothesis and thickness (numpy; order = the inputs').

    Attributes:
        prior: the :class:`OpticsPrior` used.
        theta: ``[H, K, 3]`` MAP (defocus offset, a12, b12) [Å].
        cov: ``[H, K, 3, 3]`` Laplace covariance ``(-H)^-1`` [Å²].
        log_joint: ``[H, K]`` log p(y, theta* | h, k); ``laplace_term``: ``[H, K]``.
        log_z: ``[H, K]`` log p(y | h, k) (Laplace); ``log_evidence``: ``[H]`` summed over k with
            the prior weights.
        positive_definite: ``[H, K]`` whether ``-H`` was positive definite at the MAP (else the
            evidence is the MAP's log joint with a flat Occam factor of the search's width,
            flagged here).
        grad_norm: ``[H, K]`` gradient norm at the MAP (convergence).
    """

    prior: OpticsPrior
    theta: np.ndarray
    cov: np.ndarray
    log_joint: np.ndarray
    laplace_term: np.ndarray
    log_z: np.ndarray
    log_evidence: np.ndarray
    positive_definite: np.ndarray
    grad_norm: np.ndarray

    def best_cells(self, h: int) -> int:
        """The index (into ``prior.extra_cells``) of the most probable thickness for ``h``."""
        return int(np.argmax(self.log_z[h] + np.log(np.maximum(self.prior.cell_weights, 1e-300))))

    def cells_posterior(self, h: int) -> np.ndarray:
        lz = self.log_z[h] + np.log(np.maximum(self.prior.cell_weights, 1e-300))
        p = np.exp(lz - lz.max())
        return p / p.sum()

    def estimate(self, h: int) -> dict:
        """The optics under hypothesis ``h`` at its most probable thickness, JSON-ready."""
        k = self.best_cells(h)
        th, cv = self.theta[h, k], self.cov[h, k]
        sd = np.sqrt(np.maximum(np.diag(cv), 0.0))
        c12 = float(math.hypot(th[1], th[2]))
        if c12 > 0:
            g = np.array([th[1], th[2]]) / c12
            c12_sd = float(math.sqrt(max(g @ cv[1:, 1:] @ g, 0.0)))
        else:
            c12_sd = float(math.sqrt(max(np.trace(cv[1:, 1:]) / 2, 0.0)))
        return {
            "defocus_A": round(self.prior.nominal_defocus + float(th[0]), 3),
            "defocus_sd_A": round(float(sd[0]), 3),
            "nominal_defocus_A": round(self.prior.nominal_defocus, 3),
            "c12_A": round(c12, 3),
            "c12_sd_A": round(c12_sd, 3),
            "phi12_rad": round(0.5 * math.atan2(th[2], th[1]), 4),
            "a12_A": round(float(th[1]), 3),
            "b12_A": round(float(th[2]), 3),
            "extra_cells": int(self.prior.extra_cells[k]),
            "extra_cells_posterior": {str(c): round(float(p), 6) for c, p in zip(self.prior.extra_cells, self.cells_posterior(h))},
            "laplace_positive_definite": bool(self.positive_definite[h, k]),
        }

    def text(self, h: int) -> str:
        e = self.estimate(h)
        return (f"defocus {e['defocus_A']:.1f} ± {e['defocus_sd_A']:.1f} Å (nominal {e['nominal_defocus_A']:.1f}), "
                f"C12 {e['c12_A']:.1f} ± {e['c12_sd_A']:.1f} Å at {e['phi12_rad']:.2f} rad, "
                f"+{e['extra_cells']} unit cell(s) (P = {max(e['extra_cells_posterior'].values()):.3f})")  # fmt: skip


def _log_prior(theta, prior_sd, free):
    z = theta / prior_sd
    return jnp.sum(free * (-0.5 * z * z - jnp.log(prior_sd) - 0.5 * math.log(2 * math.pi)))


def _frames_log_evidence(theta, psi, counts, image_fn, exposure, sat, noise, nprior):
    img = image_fn(psi, theta)
    fits = jax.vmap(_linear_one, in_axes=(0, None, None, 0, None, None, None))(counts, img, exposure, sat, noise, nprior, 4)
    return jnp.sum(fits.log_evidence)


@functools.lru_cache(maxsize=16)
def _programs(image_fn: Callable):
    """The compiled search and Newton-Laplace for one image function."""

    def search(psi_hk, offsets, total, exposure_total, noise):
        # [G] log-likelihood of the summed frames over the defocus grid (astigmatism 0), scale and
        # background by least squares: robust far from the optimum, where the Laplace evidence's
        # Newton steps from the total-count start need not converge
        y = total / noise.gain

        def one(d):
            img = image_fn(psi_hk, jnp.stack([d, 0.0, 0.0])).ravel()
            n = img.size
            a = jnp.array([[jnp.sum(img * img), jnp.sum(img)], [jnp.sum(img), n]])
            rhs = jnp.array([jnp.sum(img * y.ravel()), jnp.sum(y)]) / exposure_total
            sb = jnp.linalg.solve(a, rhs)
            mu = jnp.maximum(exposure_total * (sb[0] * img + sb[1]), 1e-3 * jnp.mean(y) + 1e-6)
            return jnp.sum(y.ravel() * jnp.log(mu) - mu)

        return jax.lax.map(one, offsets)

    def newton(psi_hk, theta0, counts, exposure, sat, noise, nprior, prior_sd):
        free = (prior_sd > 0).astype(jnp.float32)
        sd = jnp.where(prior_sd > 0, prior_sd, 1.0)

        def f(th):
            th = th * free
            return _frames_log_evidence(th, psi_hk, counts, image_fn, exposure, sat, noise, nprior) + _log_prior(th, sd, free)

        def step(th, _):
            g = jax.grad(f)(th) * free
            h = jax.hessian(f)(th)
            h = h * free[:, None] * free[None, :] - jnp.diag(1.0 - free)
            a = -h
            lam_min = jnp.linalg.eigvalsh(a)[0]
            damp = jnp.maximum(0.0, -lam_min) + 1e-3 * jnp.max(jnp.abs(jnp.diag(a)))
            dx = jnp.linalg.solve(a + damp * jnp.eye(a.shape[0]), g)
            n = jnp.linalg.norm(dx)
            dx = dx * jnp.minimum(1.0, _MAX_STEP / jnp.maximum(n, 1e-12))
            new = th + dx
            better = f(new) >= f(th)
            return jnp.where(better, new, th + 0.25 * dx * (f(th + 0.25 * dx) >= f(th))), None

        th, _ = jax.lax.scan(step, theta0, None, length=_NEWTON)
        val = f(th)
        g = jax.grad(f)(th) * free
        h = jax.hessian(f)(th) * free[:, None] * free[None, :]
        a = -h + jnp.diag(1.0 - free)  # fixed directions: unit curvature, no Occam factor
        sign, logdet = jnp.linalg.slogdet(a)
        nfree = jnp.sum(free)
        lap = 0.5 * nfree * math.log(2 * math.pi) - 0.5 * logdet
        cov = jnp.linalg.inv(a) * free[:, None] * free[None, :]
        return th * free, val, lap, cov, sign > 0, jnp.linalg.norm(g)

    return jax.jit(search), jax.jit(newton)


def fit_optics(counts, waves, image_fn: Callable, exposure: float, noise: NoiseModel, nuisance_prior,
               prior: OpticsPrior, *, progress=None) -> OpticsFit:  # fmt: skip
    """Fit and marginalise the optics of frames ``counts [T, mx, my]`` for every hypothesis.

    Args:
        waves: ``[H, K, nx, ny]`` complex exit waves, hypothesis ``h`` with ``prior.extra_cells[k]``
            extra unit cells.
        image_fn: ``(psi, theta) -> image [mx, my]`` relative to the beam
            (:func:`forward.make_optics_image_fn` of the nominal beam).
        exposure: dose [e-/Å²] x pixel area [Å²] per frame.
        noise: the detector's noise model; nuisance_prior: the scale/background prior (as prepared
            for the images: :func:`inference.evidence.signal_relative_prior`).
        progress: optional ``tqdm``-like wrapper over the hypotheses.
    """
    c = jnp.asarray(counts, jnp.float32)
    if c.ndim == 2:
        c = c[None]
    w = jnp.asarray(waves)
    if w.ndim != 4:
        raise InputError(f"exit waves must be [H, K, nx, ny] (hypotheses x thickness choices), got shape {list(w.shape)}")
    if w.shape[1] != len(prior.extra_cells):
        raise InputError(f"got exit waves for {w.shape[1]} thicknesses but the prior has {len(prior.extra_cells)} choices")
    from inference.noise import _saturated_part

    search, newton = _programs(image_fn)
    ex = jnp.float32(exposure)
    sat = jax.vmap(lambda y: jnp.sum(_saturated_part(noise, y)))(c)
    total = jnp.sum(c, axis=0)
    exposure_total = ex * c.shape[0]
    n_grid = int(round(prior.defocus_range / prior.search_step))
    offsets = jnp.asarray(np.arange(-n_grid, n_grid + 1) * prior.search_step, jnp.float32)
    prior_sd = jnp.asarray([prior.defocus_sd, prior.c12_sd, prior.c12_sd], jnp.float32)
    H, K = int(w.shape[0]), int(w.shape[1])
    theta = np.zeros((H, K, 3))
    cov = np.zeros((H, K, 3, 3))
    lj, lap, pd, gn = (np.zeros((H, K)) for _ in range(4))
    pd = pd.astype(bool)
    hs = range(H) if progress is None else progress(range(H))
    for h in hs:
        for k in range(K):
            grid_ev = np.asarray(search(w[h, k], offsets, total, exposure_total, noise))
            grid_ev = grid_ev - 0.5 * (np.asarray(offsets) / prior.defocus_sd) ** 2
            d0 = float(offsets[int(np.nanargmax(grid_ev))])
            th, val, lt, cv, ok, g = newton(w[h, k], jnp.asarray([d0, 0.0, 0.0], jnp.float32), c, ex, sat, noise,
                                            nuisance_prior, prior_sd)  # fmt: skip
            theta[h, k], lj[h, k], lap[h, k], cov[h, k], pd[h, k], gn[h, k] = th, val, lt, cv, ok, g
    # where -H is not positive definite the Laplace term is meaningless: use the flat Occam factor
    # of the search box (the prior's density at the MAP times its width), and flag it
    flat = -np.log(2 * prior.defocus_range) if prior.c12_sd == 0 else -np.log(2 * prior.defocus_range) - 2 * np.log(4 * prior.c12_sd)
    lap = np.where(pd, lap, flat)
    log_z = lj + lap
    lw = np.log(np.maximum(np.asarray(prior.cell_weights), 1e-300))
    m = np.max(log_z + lw, axis=1, keepdims=True)
    log_ev = (m + np.log(np.sum(np.exp(log_z + lw - m), axis=1, keepdims=True)))[:, 0]
    return OpticsFit(prior, theta, cov, lj, lap, log_z, log_ev, pd, gn)


def score_frames_optics(counts, waves, image_fn: Callable, priors, beam, sampling, prior: OpticsPrior, *,
                        ids=None, names=None, noise: NoiseModel | None = None, rule=None,
                        fit_rate: float | None = None, progress=None):  # fmt: skip
    """:func:`inference.score_frames` with the optics learned and marginalised (module docstring).

    ``counts [T, mx, my]`` registered to the cell (pixel (0, 0) at its origin), ``waves [H, K, nx,
    ny]`` (:func:`fit_optics`), ``image_fn`` the nominal beam's :func:`forward.make_optics_image_fn`.
    The result's posterior, log evidence, Bayes factors and rejections are the optics-marginal
    ones; its per-frame nuisance, scores and fit check are those of each hypothesis at its own MAP
    optics and thickness; ``result.optics`` holds the estimate under the most probable hypothesis
    and under every hypothesis.
    """
    from inference.evidence import make_nuisance_prior, signal_relative_prior
    from inference.fitcheck import DEFAULT_RATE
    from inference.noise import noise_from_detector
    from inference.posterior import (
        absolute_log_evidence, find_rejections, init_posterior, log_bayes_factors, make_rejection_rule,
        posterior_probs, rule_text, update_posterior,
    )  # fmt: skip
    from inference.score import _as_frames, attach_fit_check, score_frames
    from inference.scorer import ScorerConfig

    c, beam, sampling = _as_frames(counts, beam, sampling)
    noise = noise_from_detector(beam.detector) if noise is None else noise
    exposure = float(beam.dose) * sampling[0] * sampling[1]
    w = jnp.asarray(waves)
    H = int(w.shape[0])
    pr = np.asarray(priors, np.float64)
    if pr.shape != (H,):
        raise InputError(f"got {pr.size} prior weights for {H} hypotheses' exit waves")
    # the nuisance prior relative to the images' level, as the fixed-optics scorer prepares it
    nominal = np.stack([np.asarray(image_fn(w[h, 0], jnp.zeros(3))) for h in range(H)])
    nprior = signal_relative_prior(make_nuisance_prior(), jnp.asarray(nominal))
    fit = fit_optics(c, w, image_fn, exposure, noise, nprior, prior, progress=progress)
    at_map = np.stack([np.asarray(image_fn(w[h, fit.best_cells(h)], jnp.asarray(fit.theta[h, fit.best_cells(h)], jnp.float32)))
                       for h in range(H)])  # fmt: skip
    rate = DEFAULT_RATE if fit_rate is None else fit_rate
    base = score_frames(c, at_map, pr, beam, sampling, ids=ids, names=names, rule=rule, fit_rate=rate,
                        scorer=ScorerConfig(kind="linear", noise=noise), signal_level=float(np.mean(nominal)))  # fmt: skip
    state = init_posterior(pr)
    state = update_posterior(state, jnp.asarray(fit.log_evidence, jnp.float32), float(beam.dose) * len(c))
    state = dataclasses.replace(state, n_frames=jnp.asarray(len(c), jnp.int32))
    rule = make_rejection_rule() if rule is None else rule
    rej = {r.index: r for r in find_rejections(state, rule, base.ids, names)}
    post = np.asarray(posterior_probs(state), np.float64)
    res = dataclasses.replace(
        base,
        posterior=post,
        log_evidence=np.asarray(absolute_log_evidence(state), np.float64),
        laplace_term=base.laplace_term + np.array([fit.laplace_term[h, fit.best_cells(h)] for h in range(H)]),
        log10_bayes_factor=np.asarray(log_bayes_factors(state), np.float64) / math.log(10),
        rejected=np.asarray([h in rej for h in range(H)]),
        reasons=tuple(rej[h].reason if h in rej else "" for h in range(H)),
        rule=rule_text(rule),
        method=("optics marginalised per hypothesis (Laplace over defocus and two-fold astigmatism around the MAP, a "
                "sum over the thickness choices; inference.optics) with scale and background marginalised per frame "
                f"(linear scorer, frames registered to the cell); prior: {prior.describe()}"),
    )  # fmt: skip
    best = int(np.argmax(post))
    res = attach_fit_check(res, c, at_map, noise, exposure, n_params=2, rate=rate, extra_params=N_OPTICS)
    optics = {"hypothesis": res.ids[best], **fit.estimate(best), "text": fit.text(best),
              "prior": {"nominal_defocus_A": prior.nominal_defocus, "defocus_range_A": prior.defocus_range,
                        "defocus_sd_A": prior.defocus_sd, "c12_sd_A": prior.c12_sd, "extra_cells": list(prior.extra_cells),
                        "cell_weights": list(prior.cell_weights), "search_step_A": prior.search_step},
              "per_hypothesis": {res.ids[h]: fit.estimate(h) for h in range(H)}}  # fmt: skip
    return dataclasses.replace(res, optics=optics), fit
