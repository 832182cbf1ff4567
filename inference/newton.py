"""The one Newton–Laplace step over ``theta = (scale, background)``, written once over an array
namespace ``xp`` (numpy or jax.numpy).

For a frame ``y`` and a registered image ``I`` the log-likelihood is a function of the two linear
nuisance parameters through ``mu = E (scale I + background)`` only, so its gradient and Hessian in
``theta`` are six sums over the pixels (:func:`inference.evidence._mu_derivs`); the Gaussian prior
on ``theta`` (:class:`inference.evidence.NuisancePrior`) adds its own. Every scorer that
marginalises ``theta`` with the shift known — the linear scorer, the fast scorer's screen and
exact stage, on XLA (any device) and in the fused CPU kernel (:mod:`inference._kernels`) — calls
the functions below; only the way the six sums are computed differs.

- :func:`total_count_start`: the start, background at its prior mean and scale matching the
  total counts;
- :func:`newton_step`: one Newton step on the log joint (scale kept positive);
- :func:`laplace_at`: the Laplace evidence (Tierney & Kadane, J. Am. Stat. Assoc. 81 (1986) 82)

      log p(y) ~= log p(y | theta*) + log p(theta*) + log 2pi - 1/2 log det(-H)

  with the last Newton step taken in closed form: the log joint at the maximum is ``f + delta``,
  ``delta = g^T (-H)^-1 g / 2`` the Newton decrement (Boyd & Vandenberghe, Convex Optimization
  (2004) eq. 9.28), exact to second order (error ``~ (2 delta)^1.5 / sqrt(N)`` nats for a Poisson
  likelihood of ``N`` electrons);
- :func:`newton_laplace` (jax: ``lax.scan`` over the steps) and :func:`newton_laplace_host`
  (numpy: a Python loop, the sums from a callback) put them together.

A likelihood callback returns ``(g [..., 2], (H_ss, H_sb, H_bb), data)``: the gradient, the three
Hessian entries and the data part of the log-likelihood (without the prior).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["LaplaceFit", "total_count_start", "newton_step", "laplace_at", "newton_laplace", "newton_laplace_host"]

_LOG_2PI = math.log(2 * math.pi)


class LaplaceFit(NamedTuple):
    """The Laplace evidence over ``(scale, background)`` of one image or a batch ``[...]``.

    Attributes:
        log_evidence: ``log_likelihood + log_prior + laplace_term`` (+ the Newton decrement).
        log_likelihood: log p(y | theta*) (including the data-only saturated part).
        log_prior: log p(theta*).
        laplace_term: ``log 2pi - 1/2 log det(-H)`` (the Occam factor).
        scale, background: the MAP; ``scale_sd``, ``background_sd``: Laplace standard deviations.
        grad_norm: |gradient of the log joint| at the last evaluation (convergence diagnostic).
        decrement: the Newton decrement there [nats].
    """

    log_evidence: jax.Array
    log_likelihood: jax.Array
    log_prior: jax.Array
    laplace_term: jax.Array
    scale: jax.Array
    background: jax.Array
    scale_sd: jax.Array
    background_sd: jax.Array
    grad_norm: jax.Array
    decrement: jax.Array


def _gauss_logpdf(x, mean, sd, xp=jnp):
    """log N(x; mean, sd²)."""
    return -0.5 * ((x - mean) / sd) ** 2 - xp.log(sd) - 0.5 * _LOG_2PI


def total_count_start(total, img_sum, n_pix, exposure, prior, xp=jnp):
    """``theta0 [..., 2]``: background at its prior mean, scale matching the total counts
    ``total`` [electrons] (``img_sum`` may be ``[K]``: one start per hypothesis)."""
    s0 = (total / exposure - prior.background_mean * n_pix) / xp.maximum(img_sum, 1e-12)
    s0 = xp.clip(s0, 1e-3 * prior.scale_mean, 1e3 * prior.scale_mean)
    return xp.stack([s0, xp.broadcast_to(prior.background_mean, xp.shape(s0))], axis=-1)


def _with_prior(theta, g, h, prior):
    """Gradient and Hessian ``(H_ss, H_sb, H_bb)`` of the log joint: the log-likelihood's plus
    the Gaussian prior's on (scale, background)."""
    sv, bv = prior.scale_sd**2, prior.background_sd**2
    g0 = g[..., 0] - (theta[..., 0] - prior.scale_mean) / sv
    g1 = g[..., 1] - (theta[..., 1] - prior.background_mean) / bv
    return g0, g1, h[0] - 1.0 / sv, h[1], h[2] - 1.0 / bv


def newton_step(xp, theta, g, h, prior):
    """One Newton step on the log joint from ``theta [..., 2]`` (scale kept positive)."""
    g0, g1, hss, hsb, hbb = _with_prior(theta, g, h, prior)
    det = hss * hbb - hsb * hsb
    s = theta[..., 0] - (hbb * g0 - hsb * g1) / det
    b = theta[..., 1] - (hss * g1 - hsb * g0) / det
    return xp.stack([xp.maximum(s, 1e-6 * prior.scale_mean), b], axis=-1)


def laplace_at(xp, theta, g, h, ll, prior) -> LaplaceFit:
    """The Laplace evidence from the log-likelihood ``ll``, its gradient and Hessian at ``theta``,
    with the last Newton step in closed form (module docstring). The returned MAP is the
    Newton-updated point."""
    g0, g1, hss, hsb, hbb = _with_prior(theta, g, h, prior)
    a, c, d = -hss, -hsb, -hbb  # -H
    det = a * d - c * c
    c00, c01, c11 = d / det, -c / det, a / det  # (-H)^-1
    d0, d1 = c00 * g0 + c01 * g1, c01 * g0 + c11 * g1
    decrement = 0.5 * (g0 * d0 + g1 * d1)
    s, b = theta[..., 0], theta[..., 1]
    lp = _gauss_logpdf(s, prior.scale_mean, prior.scale_sd, xp) + _gauss_logpdf(
        b, prior.background_mean, prior.background_sd, xp
    )
    lap = _LOG_2PI - 0.5 * xp.where(det > 0, xp.log(xp.where(det > 0, det, 1.0)), xp.inf)
    return LaplaceFit(
        log_evidence=ll + lp + lap + decrement,
        log_likelihood=ll,
        log_prior=lp,
        laplace_term=lap,
        scale=xp.maximum(s + d0, 1e-6 * prior.scale_mean),
        background=b + d1,
        scale_sd=xp.sqrt(c00),
        background_sd=xp.sqrt(c11),
        grad_norm=xp.sqrt(g0 * g0 + g1 * g1),
        decrement=decrement,
    )


def newton_laplace(lik_fn, theta0, prior, sat, n_newton: int) -> LaplaceFit:
    """``n_newton`` Newton steps from ``theta0`` then :func:`laplace_at` (jax.numpy, traceable).
    ``lik_fn(theta) -> (g, (H_ss, H_sb, H_bb), data)``; ``sat`` the data-only saturated part."""

    def step(theta, _):
        g, h, _ = lik_fn(theta)
        return newton_step(jnp, theta, g, h, prior), None

    theta, _ = jax.lax.scan(step, theta0, None, length=n_newton)
    g, h, data = lik_fn(theta)
    return laplace_at(jnp, theta, g, h, data + sat, prior)


def newton_laplace_host(lik_fn, theta0, prior, sat: float, n_newton: int) -> LaplaceFit:
    """:func:`newton_laplace` in numpy for a batch ``theta0 [K, 2]`` (float64): ``lik_fn(theta,
    with_data)`` returns the sums of the CPU kernel (:mod:`inference._kernels`), the data part
    only when ``with_data``."""
    import numpy as np

    # corrupt counts (an overflowing pixel) make the sums infinite: the scorer reports the
    # non-finite evidence that results (inference.scorer.NonFiniteEvidence), numpy need not warn
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        theta = theta0
        for _ in range(n_newton):
            g, h, _ = lik_fn(theta, False)
            theta = newton_step(np, theta, g, h, prior)
        g, h, data = lik_fn(theta, True)
        return laplace_at(np, theta, g, h, data + sat, prior)
