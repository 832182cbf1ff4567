"""Per-frame scoring fast enough for the live loop: a binned screen, then the exact scorer.

The exact real-time scorer (:func:`inference.evidence.make_linear_scorer`: registered frame,
``(scale, background)`` marginalised by Laplace) reads every pixel of every cached image five
times (four Newton steps and the final evaluation), with a logarithm and a division per pixel
each time: about 3e8 of them for 1,000 hypotheses on 256x256 frames. The fast scorer
(:func:`make_fast_scorer`) returns the same evidence for the hypotheses that matter and a
bounded approximation for the others, in two stages.

**1. Screen.** The frame and the cached images are summed over ``f x f`` pixel blocks
(``bin_factor``). A sum of independent Poisson counts is Poisson with the summed mean, so the
binned counts ``T = bin(y)`` follow the same observation model exactly, with block-mean images
``Ibar_h``, exposure ``E f²`` and read noise ``f sigma`` (variances add):

    T_b ~ Poisson(E f² (scale * Ibar_hb + background))            (shifted-Poisson / Gaussian alike)

and the exact linear scorer of :mod:`inference.evidence` on ``T`` gives the Laplace evidence
``Z_h(T)`` of the binned data at ``1/f²`` of the cost. Every hypothesis whose screen evidence
lies within ``margin`` nats of the best is then scored exactly (stage 2); the others keep the
screen's Bayes factor against the screen-best hypothesis ``r`` (always scored exactly):

    log Z_h ~= log Z_r(y) + log Z_h(T) - log Z_r(T)            (h screened out)

Binning discards information, so in expectation under the truth ``t`` the screen's log Bayes
factor of a wrong ``h`` is less negative than the full one (``E_t log Z_h(T)/Z_t(T) = -KL_T >=
-KL_y``, data-processing inequality; Cover & Thomas, Elements of Information Theory (2006)
eq. 2.125): a screened-out hypothesis is never pushed further down than the full data would
push it, on average.

**The bound on what the screen can get wrong.** The truth ``t`` is screened out only if some
``h`` has ``Z_h(T) / Z_t(T) >= e^m``. ``Z_h(T)`` is a probability density of ``T``, so for the
true nuisance ``phi`` ``E_t[Z_h(T) / p(T | t, phi)] = 1`` and Markov's inequality gives
``P_t(Z_h / p(T | t, phi) >= e^m) <= e^-m`` (Royall, J. Am. Stat. Assoc. 95 (2000) 760: the
universal bound on misleading evidence). The Laplace evidence of the truth is
``Z_t = p(T | t, phi*) exp(log p(phi*) + L_t) >= p(T | t, phi) exp(O_t)`` (``phi*`` its MAP,
``L_t`` its ``laplace_term``, :class:`inference.evidence.Evidence`), so with a union over the
``H - 1`` others

    P(truth screened out) <= (H - 1) exp(-(m + min(0, O_t))),    O_t = log p(phi*) + L_t.

``O_t`` is bounded below with two stated approximations: ``L_t`` (the posterior volume, set by
the Fisher information, i.e. by dose and contrast) is taken from the screen-best hypothesis, and
the truth's MAP nuisance lies within 3 prior standard deviations of the prior mean per
parameter (``log p(phi*) >= log N(3 sd) summed``). The margin is chosen per frame from the
allowed error ``alpha`` (default 1e-6): ``m = log((H - 1) / alpha) - min(0, O)``, and the bound
is returned (``FastScore.screen_error_bound``). With the nuisance drawn from its prior the
Occam term drops out (``p(T | t) = Z_t``) and the bound is ``(H - 1) e^-m`` (tested). All of it
holds up to the Laplace error of the evidences (< 0.05 nats at 10 e-/Å² in tests/inference) and
when the model holds (as every Bayes factor does). With a known sub-pixel ``shift`` the screen
shifts the block-mean images by ``shift / f`` (a Fourier shift of the binned image: exact for
images band-limited below the binned Nyquist frequency), while the exact stage shifts the full
images exactly as the exact scorer does.

**2. Exact.** The survivors (the top ``K`` by screen evidence, ``K`` the next power of two above
the number within the margin, at least ``min_exact``) are scored with the model, prior and
Laplace term of :func:`inference.evidence.make_linear_scorer`, by Newton from the screen's MAP
(``n_refine`` steps, default 1) completed by a closed-form last step (the Newton decrement,
:func:`_newton_laplace`). A survivor is flagged exact (``FastScore.exact_mask``) when the
decrement at its last evaluation is below 0.05 nats (then within ~1e-4 nats of the maximum);
its log evidence then matches the exact scorer to float32 rounding of the absolute log
evidence: 1e-2 nats or two units in the last place, whichever is larger (tested to 1e-2 nats,
log Bayes factors included, at 10 to 1e4 e-/Å² on 32x32 frames; 0.016 nats = 1 ulp at the
-2e5 nats of a 256x256 frame at 1e4 e-/Å², benchmarks/inference_latency.py). Survivors that are not flagged (hypotheses that fit
so badly that their binned and full MAPs differ by many standard deviations) keep their
refined values, which are better than the screen's.

For Poisson counts (no read noise) the pixels with zero counts enter the log-likelihood, its
gradient and its Hessian in ``(scale, background)`` only through the image sums (``-mu`` per
pixel, Fisher weight ``z / mu² = 0``), so the sums run over the ``nnz`` counted pixels only and
the zero pixels are one precomputed image sum per hypothesis (the low-dose case: at 0.1
e-/pixel a frame has ~10% counted pixels). This path is taken when ``nnz <= nx ny / 4``; when
the sparse exact pass over all hypotheses is cheaper than the screen (``nnz <= nx ny / f²`` and
no shift) the screen is skipped and every hypothesis is scored exactly. The sparse sums differ
from the dense ones in float32 rounding (tested to 1e-2 nats at 0.02 to 0.1 electrons per
pixel), plus at most ``1e-6`` electrons per zero pixel where the model predicts less than that
floor (:mod:`inference.evidence`).

**Two implementations of the passes.** On the CPU (``backend="auto"`` when the cached images
live there) every pass over a hypothesis's pixels is one fused, vectorised loop
(:mod:`inference._kernels`, numba) that returns the six sums, with the 2-parameter Newton
algebra on the host in float64 and known shifts applied by pocketfft; elsewhere (or with
``backend="jax"``) the same stages run as jitted XLA (``lax.map`` over blocks of hypotheses,
~256 KB of image per block, so that the Newton passes over one block hit the cache). XLA's CPU
code for these many-output reductions measured 3-7x slower than the fused loop; both paths are
tested against each other and against the exact scorer.

Use: prepare the cache once per beam condition (:func:`prepare_screen_cache`), then call the
scorer once per frame. Jitted stages are shared by every scorer with the same shapes, noise kind,
``K`` and sparse capacity (powers of two: a few compilations per session).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from forward import InputError, pytree_dataclass, static_field
from inference.evidence import (
    Evidence,
    NuisancePrior,
    _check_inputs,
    _gauss_logpdf,
    _mu_derivs,
    fourier_shift,
    shift_phase,
)
from inference._kernels import gather, lik_sums, n_workers
from inference.noise import NoiseModel, _check_counts, _saturated_part, _shift, _z

__all__ = ["ScreenCache", "prepare_screen_cache", "FastScore", "make_fast_scorer", "screen_margin"]

_LOG_2PI = math.log(2 * math.pi)

#: Pixels per block of hypotheses processed together (~256 KB of float32 per array, so the
#: Newton passes over a block of images hit the cache; measured 2-3x faster than one fused pass
#: over all hypotheses at 1,000 x 64² on this CPU).
_BLOCK_ELEMENTS = 65536

#: An exactly scored hypothesis counts as exact (``FastScore.exact_mask``) when the Newton
#: decrement at its last evaluation is below this [nats]: after the closed-form final step its
#: log joint is then within ``(2 x 0.05)^1.5 / sqrt(N) <= 0.03 / sqrt(N)`` nats of the maximum
#: (:func:`_newton_laplace`).
_MAX_DECREMENT = 0.05


@pytree_dataclass
class ScreenCache:
    """Cached images of one beam condition, prepared for :func:`make_fast_scorer`.

    Attributes:
        images: ``[H, nx, ny]`` intensity relative to the incident beam, indexed ``[x, y]``.
        binned: ``[H, nx / f, ny / f]`` block means of ``images`` over ``f x f`` pixels.
        sums: ``[H]`` sum of each image over its pixels.
        bin_factor: ``f`` (static).
    """

    images: jax.Array
    binned: jax.Array
    sums: jax.Array
    bin_factor: int = static_field(default=4)


def _bin_mean(x, f: int):
    """Block means over ``f x f`` pixels of ``[..., nx, ny]``."""
    *lead, nx, ny = x.shape
    return jnp.mean(x.reshape(*lead, nx // f, f, ny // f, f), axis=(-3, -1))


def _bin_sum(x, f: int):
    nx, ny = x.shape
    return jnp.sum(x.reshape(nx // f, f, ny // f, f), axis=(1, 3))


@functools.partial(jax.jit, static_argnames=("f",))
def _prepare(images, f):
    return _bin_mean(images, f), jnp.sum(images, axis=(1, 2))


def prepare_screen_cache(images, *, bin_factor: int = 4) -> ScreenCache:
    """A :class:`ScreenCache` from cached images ``[H, nx, ny]`` (one pass; once per beam).

    ``bin_factor`` must divide both frame axes (e.g. 4 for 256x256 frames: a 64x64 screen).
    """
    f = int(bin_factor)
    if f != bin_factor or f < 1:
        raise InputError(f"bin_factor must be a positive integer (pixels per block side), got {bin_factor!r}")
    shape = tuple(np.shape(images))
    if len(shape) != 3:
        raise InputError(f"images must be [H, nx, ny] (one cached image per hypothesis), got shape {list(shape)}")
    if shape[0] == 0:
        raise InputError("the library is empty: got 0 hypothesis images; add at least one hypothesis")
    if shape[1] % f or shape[2] % f:
        raise InputError(
            f"bin_factor {f} must divide the frame shape {list(shape[1:])}; "
            "choose a bin_factor that divides both axes (1 disables the screen's binning)"
        )
    ims = jnp.asarray(images, jnp.float32)
    binned, sums = _prepare(ims, f)
    if not isinstance(sums, jax.core.Tracer):  # NaN or inf anywhere in an image makes its sum non-finite
        bad = np.flatnonzero(~np.isfinite(np.asarray(sums)))
        if bad.size:
            raise InputError(
                f"cached images must be finite: hypothesis {int(bad[0])} has NaN or infinite pixels"
                + (f" (and {bad.size - 1} more)" if bad.size > 1 else "")
                + "; re-simulate it"
            )
    return ScreenCache(images=ims, binned=binned, sums=sums, bin_factor=f)


@pytree_dataclass
class FastScore:
    """One frame scored against ``H`` hypotheses (leading axis ``[H]``).

    Attributes:
        log_evidence: log p(frame | h) [nats]: exact (as :func:`inference.make_linear_scorer`)
            where ``exact_mask``, else the screen's Bayes factor against the screen-best
            hypothesis added to that hypothesis's exact evidence.
        exact_mask: ``[H]`` bool: scored by the exact stage and converged (Newton decrement
            <= 0.05 nats), so ``log_evidence`` equals the exact scorer's to float32 rounding.
        screen_log_evidence: ``[H]`` Laplace evidence of the binned frame [nats] (equal to
            ``log_evidence`` when the screen was skipped).
        scale, background, scale_sd, background_sd, laplace_term, grad_norm: ``[H]`` MAP values,
            Laplace standard deviations, Occam term and convergence diagnostic (exact stage
            where ``exact_mask``, screen otherwise).
        shift: ``[2]`` the known shift used [pixels].
        margin_nats: the screen margin used in this frame.
        n_within_margin: hypotheses the screen kept (all of them go to the exact stage).
        screen_error_bound: upper bound on the probability that the true hypothesis was
            screened out in this frame (module docstring); 0 when the screen was skipped.
        screened: whether the screen ran.
    """

    log_evidence: jax.Array
    exact_mask: jax.Array
    screen_log_evidence: jax.Array
    scale: jax.Array
    background: jax.Array
    scale_sd: jax.Array
    background_sd: jax.Array
    laplace_term: jax.Array
    grad_norm: jax.Array
    shift: jax.Array
    margin_nats: jax.Array
    n_within_margin: jax.Array
    screen_error_bound: jax.Array
    screened: jax.Array


def screen_margin(n_hypotheses, alpha, occam, xp=jnp):
    """Margin [nats] with ``P(truth screened out) <= alpha``:
    ``log((H - 1) / alpha) - min(0, occam)``, ``occam`` the truth's Occam term [nats] or a
    lower bound on it (module docstring; 0 for nuisance drawn from its prior). ``xp``: jax.numpy
    (float32) or numpy (float64)."""
    h1 = xp.maximum(xp.asarray(n_hypotheses, _real(xp)) - 1.0, 1.0)
    return xp.log(h1) - xp.log(alpha) - xp.minimum(0.0, occam)


def _screen_bound(n_hypotheses, margin, occam, xp=jnp):
    h1 = xp.maximum(xp.asarray(n_hypotheses, _real(xp)) - 1.0, 0.0)
    return xp.minimum(1.0, h1 * xp.exp(-(margin + xp.minimum(0.0, occam))))


def _real(xp):
    return np.float64 if xp is np else jnp.float32


def _log_prior_at_3sd(prior: NuisancePrior):
    """``log p(phi)`` of the (scale, background) prior with each 3 sd from its mean."""
    return _gauss_logpdf(3.0 * prior.scale_sd, 0.0, prior.scale_sd) + _gauss_logpdf(
        3.0 * prior.background_sd, 0.0, prior.background_sd
    )


def _block(n_pixels: int) -> int:
    """Hypotheses per block so one block's image is ~256 KB (stays in cache across Newton passes)."""
    return max(1, _BLOCK_ELEMENTS // int(n_pixels))


@functools.partial(jax.jit, static_argnames=("f", "n_newton"))
def _screen_stage(counts, binned, exposure, shift, noise_b, prior, alpha, f, n_newton):
    """Binned Laplace evidence of every hypothesis, the margin and its bound."""
    cb = _bin_sum(counts, f)
    has_shift = jnp.any(shift != 0)
    sat = jnp.sum(_saturated_part(noise_b, cb))

    def one(image):
        image = jax.lax.cond(has_shift, lambda im: fourier_shift(im, shift / f), lambda im: im, image)
        e = exposure * f * f
        theta0 = _total_count_start(jnp.sum(cb) / noise_b.gain, jnp.sum(image), jnp.float32(cb.size), e, prior)
        return _newton_laplace(_dense_lik(noise_b, cb, image, e), theta0, prior, sat, n_newton)[0]

    ev = jax.lax.map(one, binned, batch_size=_block(cb.size))
    best = jnp.argmax(ev.log_evidence)
    occam = ev.laplace_term[best] + _log_prior_at_3sd(prior)
    h = binned.shape[0]
    margin = screen_margin(h, alpha, occam)
    keep = ev.log_evidence >= ev.log_evidence[best] - margin
    return ev, margin, jnp.sum(keep), _screen_bound(h, margin, occam)


def _total_count_start(total, img_sum, n_pix, exposure, prior: NuisancePrior, xp=jnp):
    """The exact scorer's start: background at its prior mean, scale matching the total counts
    (``img_sum`` may be ``[K]``: one start per hypothesis, ``[..., 2]``)."""
    s0 = (total / exposure - prior.background_mean * n_pix) / xp.maximum(img_sum, 1e-12)
    s0 = xp.clip(s0, 1e-3 * prior.scale_mean, 1e3 * prior.scale_mean)
    return xp.stack([s0, xp.broadcast_to(prior.background_mean, xp.shape(s0))], axis=-1)


def _newton_laplace(lik_fn, theta0, prior: NuisancePrior, sat, n_newton: int) -> tuple[Evidence, jax.Array]:
    """``(evidence, decrement)``: Laplace evidence over ``theta = (scale, background)`` after
    ``n_newton`` Newton steps from ``theta0``, as :func:`inference.evidence._linear_one` (same
    prior, floor, Laplace term), completed by one more Newton step taken in closed form
    (:func:`_laplace_at`). ``lik_fn(theta) -> (gradient [2], (H_ss, H_sb, H_bb), data)`` of the
    log-likelihood alone."""

    def step(theta, _):
        g, h, _ = lik_fn(theta)
        return _newton_step(jnp, theta, g, h, prior), None

    theta, _ = jax.lax.scan(step, theta0, None, length=n_newton)
    g, h, data = lik_fn(theta)
    return _laplace_at(jnp, theta, g, h, data + sat, prior)


def _with_prior(theta, g, h, prior: NuisancePrior):
    """Gradient ``[..., 2]`` and Hessian ``(H_ss, H_sb, H_bb)`` of the log joint: the
    log-likelihood's plus the Gaussian prior's on (scale, background)."""
    sv, bv = prior.scale_sd**2, prior.background_sd**2
    g0 = g[..., 0] - (theta[..., 0] - prior.scale_mean) / sv
    g1 = g[..., 1] - (theta[..., 1] - prior.background_mean) / bv
    return g0, g1, h[0] - 1.0 / sv, h[1], h[2] - 1.0 / bv


def _newton_step(xp, theta, g, h, prior: NuisancePrior):
    """One Newton step on the log joint from ``theta [..., 2]`` (scale kept positive)."""
    g0, g1, hss, hsb, hbb = _with_prior(theta, g, h, prior)
    det = hss * hbb - hsb * hsb
    s = theta[..., 0] - (hbb * g0 - hsb * g1) / det
    b = theta[..., 1] - (hss * g1 - hsb * g0) / det
    return xp.stack([xp.maximum(s, 1e-6 * prior.scale_mean), b], axis=-1)


def _laplace_at(xp, theta, g, h, ll, prior: NuisancePrior) -> tuple[Evidence, jax.Array]:
    """Laplace evidence from the log-likelihood ``ll``, its gradient and Hessian at ``theta``,
    with the last Newton step in closed form: the log joint at the maximum is ``f + delta``,
    ``delta = g^T (-H)^-1 g / 2`` the Newton decrement (Boyd & Vandenberghe, Convex Optimization
    (2004) eq. 9.28), exact to second order: the error is of the order of the third derivative
    times ``dtheta³``, ``~ (2 delta)^1.5 / sqrt(N)`` nats for a Poisson likelihood of ``N``
    electrons. The returned MAP is the Newton-updated point; ``delta`` is returned as the
    convergence diagnostic. Works on one hypothesis or a batch ``[K]`` (``xp``: numpy or
    jax.numpy)."""
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
    zeros = xp.zeros(xp.shape(s) + (2,), theta.dtype)
    ev = Evidence(
        log_evidence=ll + lp + lap + decrement,
        log_likelihood=ll,
        log_prior=lp,
        laplace_term=lap,
        scale=xp.maximum(s + d0, 1e-6 * prior.scale_mean),
        background=b + d1,
        shift=zeros,
        scale_sd=xp.sqrt(c00),
        background_sd=xp.sqrt(c11),
        shift_sd=zeros,
        grad_norm=xp.sqrt(g0 * g0 + g1 * g1),
    )
    return ev, decrement


def _dense_lik(noise: NoiseModel, counts, image, exposure):
    """Gradient, Hessian and data part of the log-likelihood in (scale, background), one
    fused pass over the pixels (:func:`inference.evidence._mu_derivs`)."""

    def lik(theta):
        a, w, data = _mu_derivs(noise, counts, exposure * (theta[0] * image + theta[1]))
        ea = exposure * a
        ew = exposure * exposure * w
        h = (-jnp.sum(ew * image * image), -jnp.sum(ew * image), -jnp.sum(ew))
        return jnp.stack([jnp.sum(ea * image), jnp.sum(ea)]), h, jnp.sum(data)

    return lik


def _sparse_poisson_lik(z, img, img_sum, n_pix, exposure):
    """:func:`_dense_lik` for Poisson counts over a subset of ``n`` pixels that holds every
    counted one (the rest of the subset: pixels with zero counts, used as padding).

    ``z [n]`` counts / gain and ``img [n]`` the image at those pixels; the pixels outside the
    subset all have zero counts and enter through ``img_sum - sum(img)`` (module docstring):
    each adds ``-mu`` to the log-likelihood, ``-E I`` and ``-E`` to the gradient, 0 to the
    Hessian. A zero-count pixel inside the subset gives the same by the formulas below.
    """
    zero_sum = img_sum - jnp.sum(img)
    n_zero = n_pix - img.shape[0]

    def lik(theta):
        s, b = theta[0], theta[1]
        m = jnp.maximum(exposure * (s * img + b), 1e-6)
        inv = 1.0 / m
        r = z * inv
        data = -z * jnp.log(jnp.maximum(r, 1e-30)) - (m - z)
        ea = exposure * (r - 1.0)
        ew = exposure * exposure * r * inv
        g = jnp.stack([jnp.sum(ea * img) - exposure * zero_sum, jnp.sum(ea) - exposure * n_zero])
        h = (-jnp.sum(ew * img * img), -jnp.sum(ew * img), -jnp.sum(ew))
        return g, h, jnp.sum(data) - exposure * (s * zero_sum + b * n_zero)

    return lik


@functools.partial(jax.jit, static_argnames=("n_exact", "sparse", "n_newton", "from_screen"))
def _exact_stage(
    counts, pix, cache, screen_ev, screen_theta, exposure, shift, noise, prior, n_exact, sparse, n_newton, from_screen
):
    """Exact evidence of the top ``n_exact`` hypotheses by ``screen_ev`` ``[H]`` (descending),
    Newton started at the screen's MAP ``screen_theta [H, 2]`` (``from_screen``) or at the
    exact scorer's start."""
    h = cache.images.shape[0]
    if n_exact == h:
        idx = jnp.argsort(-screen_ev)
    else:
        _, idx = jax.lax.top_k(screen_ev, n_exact)
    sat = jnp.sum(_saturated_part(noise, counts))
    has_shift = jnp.any(shift != 0)
    n_pix = jnp.float32(counts.size)
    total = jnp.sum(counts) / noise.gain

    def start(i):
        if from_screen:
            return screen_theta[i]
        return _total_count_start(total, cache.sums[i], n_pix, exposure, prior)

    def image(i):
        return jax.lax.cond(has_shift, lambda im: fourier_shift(im, shift), lambda im: im, cache.images[i])

    if sparse:
        z = counts.reshape(-1)[pix] / noise.gain

        def one(i):
            img = jax.lax.cond(
                has_shift, lambda: image(i).reshape(-1)[pix], lambda: cache.images[i].reshape(-1)[pix]
            )
            lik = _sparse_poisson_lik(z, img, cache.sums[i], n_pix, exposure)
            return _newton_laplace(lik, start(i), prior, sat, n_newton)

        ev, dec = jax.lax.map(one, idx, batch_size=_block(pix.size))
    else:

        def one(i):
            return _newton_laplace(_dense_lik(noise, counts, image(i), exposure), start(i), prior, sat, n_newton)

        ev, dec = jax.lax.map(one, idx, batch_size=_block(counts.size))
    return idx, ev, dec <= _MAX_DECREMENT


def _merged(idx, ev: Evidence, converged, screen: Evidence, xp=jnp):
    """Scatter the exact evidences into ``[H]`` and place the rest by the screen's Bayes factor."""
    ref = idx[0]  # the screen-best hypothesis, scored exactly

    def put(full, part):
        if xp is np:
            out = np.array(full, copy=True)
            out[idx] = part
            return out
        return full.at[idx].set(part)

    log_ev = ev.log_evidence[0] + screen.log_evidence - screen.log_evidence[ref]
    return (
        put(log_ev, ev.log_evidence),
        put(xp.zeros(screen.log_evidence.shape, bool), converged),
        put(screen.scale, ev.scale),
        put(screen.background, ev.background),
        put(screen.scale_sd, ev.scale_sd),
        put(screen.background_sd, ev.background_sd),
        put(screen.laplace_term, ev.laplace_term),
        put(screen.grad_norm, ev.grad_norm),
    )


_merge = jax.jit(_merged)


# ---------------------------------------------------------------------------------------------
# CPU kernels (inference._kernels): the same stages with the per-pixel passes in one fused,
# vectorised loop per hypothesis, and the 2-parameter Newton algebra in numpy (float64).

_NO_PIX = np.zeros(0, np.int64)


def _host_prior(prior: NuisancePrior) -> NuisancePrior:
    return dataclasses.replace(prior, **{f.name: np.float64(getattr(prior, f.name)) for f in dataclasses.fields(prior)})


def _noise_shift(noise: NoiseModel) -> float:
    return float(_shift(noise))


def _z_host(noise: NoiseModel, counts: np.ndarray) -> np.ndarray:
    return np.asarray(_z(noise, counts), np.float32)


@jax.jit
def _saturated_sum(noise: NoiseModel, counts):
    return jnp.sum(_saturated_part(noise, counts))


def _shift_host(images, shift) -> np.ndarray:
    """:func:`inference.evidence.fourier_shift` of ``[K, nx, ny]`` images on the host (pocketfft
    over the process's CPUs; the same phase ramp, :func:`inference.evidence.shift_phase`)."""
    nx, ny = images.shape[-2:]
    phase = shift_phase((nx, ny), np.asarray(shift, np.float64), xp=np)
    w = n_workers()
    spec = scipy.fft.rfft2(np.asarray(images, np.float32), workers=w)
    spec *= phase
    return scipy.fft.irfft2(spec, s=(nx, ny), workers=w).astype(np.float32, copy=False)


def _newton_host(sums_fn, theta, prior: NuisancePrior, sat: float, n_newton: int, zeros=None):
    """:func:`_newton_laplace` for a batch ``theta [K, 2]`` with the sums from the CPU kernel.

    ``zeros = (image sums [K], number of pixels outside the subset, exposure)``: the
    zero-count pixels outside the summed subset (sparse Poisson path, module docstring).
    """

    def split(sums, theta):
        g = sums[:, 0:2].copy()
        h = (-sums[:, 2], -sums[:, 3], -sums[:, 4])
        data = sums[:, 5]
        if zeros is not None:
            img_sums, n_zero, e = zeros
            zero_sum = img_sums - sums[:, 6]
            g[:, 0] -= e * zero_sum
            g[:, 1] -= e * n_zero
            data = data - e * (theta[:, 0] * zero_sum + theta[:, 1] * n_zero)
        return g, h, data

    for _ in range(n_newton):
        g, h, _ = split(sums_fn(theta, False), theta)
        theta = _newton_step(np, theta, g, h, prior)
    g, h, data = split(sums_fn(theta, True), theta)
    return _laplace_at(np, theta, g, h, data + sat, prior)


def _screen_cpu(c, cache: ScreenCache, ex, sh, noise_b: NoiseModel, prior, hprior, alpha, f, n_newton):
    """:func:`_screen_stage` with the CPU kernel."""
    nx, ny = c.shape
    cb = c.reshape(nx // f, f, ny // f, f).sum(axis=(1, 3), dtype=np.float64).astype(np.float32)
    binned = np.asarray(cache.binned) if not np.any(sh != 0) else _shift_host(cache.binned, sh / f)
    ims = binned.reshape(binned.shape[0], -1)
    h = ims.shape[0]
    e = float(ex) * f * f
    z = _z_host(noise_b, cb).reshape(-1)
    total = float(np.sum(cb, dtype=np.float64)) / float(noise_b.gain)
    theta0 = _total_count_start(total, np.asarray(cache.sums, np.float64) / (f * f), cb.size, e, hprior, xp=np)
    rows = np.arange(h)
    shift_b = _noise_shift(noise_b)
    ev, _ = _newton_host(
        lambda th, wd: lik_sums(ims, rows, _NO_PIX, z, th, e, shift_b, wd),
        theta0,
        hprior,
        float(_saturated_sum(noise_b, jnp.asarray(cb))),
        n_newton,
    )
    best = int(np.argmax(ev.log_evidence))
    occam = float(ev.laplace_term[best]) + float(_log_prior_at_3sd(prior))
    margin = float(screen_margin(h, alpha, occam, xp=np))
    n_keep = int(np.sum(ev.log_evidence >= ev.log_evidence[best] - margin))
    return ev, margin, n_keep, float(_screen_bound(h, margin, occam, xp=np))


def _exact_cpu(c, pix, sparse, cache: ScreenCache, order, theta_screen, ex, sh, noise, hprior, k, n_newton, from_screen):
    """:func:`_exact_stage` with the CPU kernel: the top ``k`` hypotheses by ``order`` [H]."""
    h = int(cache.images.shape[0])
    idx = np.argsort(-np.asarray(order), kind="stable")[:k]
    n_pix = c.size
    if np.any(sh != 0):  # shift only the selected images
        ims = _shift_host(np.asarray(cache.images)[idx], sh).reshape(k, -1)
        rows = np.arange(k)
    else:
        ims = np.asarray(cache.images).reshape(h, -1)
        rows = idx
    z_all = _z_host(noise, c).reshape(-1)
    sums = np.asarray(cache.sums, np.float64)[idx]
    zeros, z, pixels = None, z_all, _NO_PIX
    if sparse:
        z, zeros = z_all[pix], (sums, float(n_pix - pix.size), float(ex))
        if n_newton >= 2:  # the counted pixels, gathered once for the 3+ passes (measured faster)
            ims, rows = gather(ims, rows, pix), np.arange(k)
        else:
            pixels = pix.astype(np.int64)
    if from_screen:
        theta0 = np.asarray(theta_screen, np.float64)[idx]
    else:
        total = float(np.sum(c, dtype=np.float64)) / float(noise.gain)
        theta0 = _total_count_start(total, sums, float(n_pix), float(ex), hprior, xp=np)
    shift_n = _noise_shift(noise)
    ev, dec = _newton_host(
        lambda th, wd: lik_sums(ims, rows, pixels, z, th, float(ex), shift_n, wd),
        theta0,
        hprior,
        float(_saturated_sum(noise, jnp.asarray(c))),
        n_newton,
        zeros,
    )
    return idx, ev, dec <= _MAX_DECREMENT


def _on_cpu(x) -> bool:
    try:
        return all(d.platform == "cpu" for d in x.devices())
    except AttributeError:  # a numpy array
        return True


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _check_shift(shift) -> np.ndarray:
    if shift is None:
        return np.zeros(2, np.float32)
    s = np.asarray(shift, dtype=np.float64)
    if s.shape != (2,) or not np.all(np.isfinite(s)):
        raise InputError(
            f"shift must be a finite (shift_x, shift_y) [pixels] with image(x - shift) matching the frame, got {shift!r}"
        )
    return s.astype(np.float32)


def make_fast_scorer(
    noise: NoiseModel,
    prior: NuisancePrior,
    *,
    alpha: float = 1e-6,
    bin_factor: int = 4,
    min_exact: int = 16,
    n_newton: int = 4,
    n_screen: int = 3,
    n_refine: int = 1,
    backend: str = "auto",
):
    """``score(counts [nx, ny], images, exposure, shift=None) -> FastScore`` (module docstring).

    Args:
        noise, prior: as :func:`inference.make_linear_scorer` (the exact scorer it matches).
        alpha: allowed probability of screening out the true hypothesis per frame; sets the
            margin ``log((H - 1) / alpha) - min(0, Occam)`` [nats].
        bin_factor: ``f``: the screen sums ``f x f`` pixel blocks (must divide the frame shape).
        min_exact: at least this many hypotheses (the screen's best) are scored exactly.
        n_newton: Newton iterations of the exact stage when the screen is skipped (from the
            exact scorer's start; its default).
        n_screen: Newton iterations of the screen (from the exact scorer's start).
        n_refine: Newton iterations of the exact stage from the screen's MAP, which lies within
            a few posterior standard deviations of the full-data MAP for the hypotheses that
            fit: one step leaves Newton decrements of ~1e-3 nats (3e3 e-/Å²), which the
            closed-form final step (:func:`_newton_laplace`) removes to ~1e-6 nats; tested
            against the exact scorer. Each iteration is one pass over the survivors' pixels
            (a division per pixel), plus the final pass (a division and a logarithm). 0 skips
            the step (one pass, ~20% faster on 256x256 frames), but then fewer survivors reach
            the decrement that flags them exact (benchmarks/inference_latency.py --n-refine 0).
        backend: ``"cpu"``: the per-pixel passes run in the fused CPU kernel of
            :mod:`inference._kernels` (Poisson and Poisson-Gaussian noise); ``"jax"``: jitted
            XLA stages (any device, any noise model); ``"auto"`` (default): ``"cpu"`` when the
            cached images live on the CPU and the noise model is not Gaussian, else ``"jax"``.
            Both compute the same sums (float32 per pixel; the CPU path accumulates chunks in
            float64 and does the 2-parameter Newton algebra in float64).

    The returned ``score`` takes ``images`` as a :class:`ScreenCache` (prepare it once per
    beam with :func:`prepare_screen_cache` and the same ``bin_factor``) or as raw
    ``[H, nx, ny]`` images (prepared on every call: one extra pass), ``exposure`` = dose
    [e-/Å²] x pixel area [Å²], and the frame's known shift against the images [pixels]
    (registration upstream; ``image(x - shift)`` matches the frame).

    ``score`` is a thin Python function around the stages (screen, exact, merge): it makes
    the decisions that set array shapes on the host (sparse path and its capacity, the number
    ``K`` of exactly scored hypotheses). The jitted JAX stages round ``K`` up to a power of two
    and compile once per bucket; the CPU path takes any ``K`` without compiling.
    """
    if backend not in ("auto", "jax", "cpu"):
        raise InputError(f"backend must be 'auto', 'jax' or 'cpu', got {backend!r}")
    if backend == "cpu" and noise.kind == "gaussian":
        raise InputError(
            "the cpu kernels cover the poisson and poisson_gaussian noise models; use backend='jax' for gaussian noise"
        )
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise InputError(f"alpha (allowed probability of screening out the truth) must be in (0, 1), got {alpha!r}")
    if int(min_exact) < 1:
        raise InputError(f"min_exact must be >= 1 (the screen-best is always scored exactly), got {min_exact!r}")
    f = int(bin_factor)
    binned_noise = dataclasses.replace(noise, read_noise=noise.read_noise * f)
    sparse_ok = noise.kind == "poisson"
    n_new, n_scr, n_ref = int(n_newton), int(n_screen), int(n_refine)
    if min(n_new, n_scr) < 1 or n_ref < 0:
        raise InputError(
            f"n_newton and n_screen must be >= 1 Newton iterations and n_refine >= 0, got {n_newton!r}, {n_screen!r} "
            f"and {n_refine!r}"
        )

    def score(counts, images, exposure, shift=None) -> FastScore:
        cache = images if isinstance(images, ScreenCache) else prepare_screen_cache(images, bin_factor=f)
        if cache.bin_factor != f:
            raise InputError(
                f"the screen cache was prepared with bin_factor {cache.bin_factor}, this scorer uses {f}; "
                "prepare it with prepare_screen_cache(images, bin_factor=...) to match"
            )
        _check_inputs(counts, cache.images, exposure)
        c = _check_counts(counts, tuple(cache.images.shape[1:]), noise)
        sh = _check_shift(shift)
        ex = jnp.asarray(float(exposure), jnp.float32)
        h = int(cache.images.shape[0])
        n_pix = c.size
        pix = np.flatnonzero(c.reshape(-1) > 0) if sparse_ok else np.zeros(0, np.int64)
        nnz = pix.size
        sparse = sparse_ok and nnz <= n_pix // 4
        skip = sparse and nnz <= n_pix // (f * f) and not np.any(sh != 0)
        if backend == "cpu" or (backend == "auto" and noise.kind != "gaussian" and _on_cpu(cache.images)):
            return _score_cpu(c, pix, sparse, skip, cache, float(exposure), sh, h)
        if sparse:
            # the counted pixels, padded with zero-count pixels to a power-of-two capacity
            cap = min(n_pix, max(64, _pow2_at_least(nnz)))
            pad = np.flatnonzero(c.reshape(-1) <= 0)[: cap - nnz]
            pix = np.concatenate([pix, pad]).astype(np.int32)
        else:
            pix = np.zeros(1, np.int32)
        cj, shj = jnp.asarray(c), jnp.asarray(sh)
        if skip:
            zeros = jnp.zeros((h,), jnp.float32)
            idx, ev, conv = _exact_stage(
                cj, pix, cache, zeros, jnp.zeros((h, 2), jnp.float32), ex, shj, noise, prior, h, True, n_new, False
            )
            order = jnp.argsort(idx)
            ev, conv = jax.tree.map(lambda x: x[order], (ev, conv))
            return FastScore(
                log_evidence=ev.log_evidence,
                exact_mask=conv,
                screen_log_evidence=ev.log_evidence,
                scale=ev.scale,
                background=ev.background,
                scale_sd=ev.scale_sd,
                background_sd=ev.background_sd,
                laplace_term=ev.laplace_term,
                grad_norm=ev.grad_norm,
                shift=shj,
                margin_nats=jnp.asarray(jnp.inf, jnp.float32),
                n_within_margin=jnp.asarray(h, jnp.int32),
                screen_error_bound=jnp.zeros((), jnp.float32),
                screened=jnp.asarray(False),
            )
        scr, margin, n_keep, bound = _screen_stage(
            cj, cache.binned, ex, shj, binned_noise, prior, jnp.float32(a), f, n_scr
        )
        k = min(h, max(int(min_exact), _pow2_at_least(int(n_keep))))
        theta = jnp.stack([scr.scale, scr.background], axis=1)
        idx, ev, conv = _exact_stage(
            cj, pix, cache, scr.log_evidence, theta, ex, shj, noise, prior, k, bool(sparse), n_ref, True
        )
        log_ev, mask, s, b, s_sd, b_sd, lap, gn = _merge(idx, ev, conv, scr)
        return FastScore(
            log_evidence=log_ev,
            exact_mask=mask,
            screen_log_evidence=scr.log_evidence,
            scale=s,
            background=b,
            scale_sd=s_sd,
            background_sd=b_sd,
            laplace_term=lap,
            grad_norm=gn,
            shift=shj,
            margin_nats=margin,
            n_within_margin=jnp.asarray(n_keep, jnp.int32),
            screen_error_bound=bound,
            screened=jnp.asarray(True),
        )

    hprior = _host_prior(prior)

    def _score_cpu(c, pix, sparse, skip, cache, ex, sh, h) -> FastScore:
        if skip:
            # equal order keys: the stable sort keeps hypothesis order, so the result is already [H]
            _, ev, conv = _exact_cpu(c, pix, sparse, cache, np.zeros(h), None, ex, sh, noise, hprior, h, n_new, False)
            scr, margin, n_keep, bound, screened = ev, np.inf, h, 0.0, False
            log_ev, mask = ev.log_evidence, conv
            rest = (ev.scale, ev.background, ev.scale_sd, ev.background_sd, ev.laplace_term, ev.grad_norm)
        else:
            scr, margin, n_keep, bound = _screen_cpu(c, cache, ex, sh, binned_noise, prior, hprior, a, f, n_scr)
            k = min(h, max(int(min_exact), n_keep))
            theta = np.stack([scr.scale, scr.background], axis=1)
            idx, ev, conv = _exact_cpu(
                c, pix, sparse, cache, scr.log_evidence, theta, ex, sh, noise, hprior, k, n_ref, True
            )
            log_ev, mask, *rest = _merged(idx, ev, conv, scr, xp=np)
            screened = True
        f32 = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
        return FastScore(
            log_evidence=f32(log_ev),
            exact_mask=jnp.asarray(mask),
            screen_log_evidence=f32(scr.log_evidence),
            scale=f32(rest[0]),
            background=f32(rest[1]),
            scale_sd=f32(rest[2]),
            background_sd=f32(rest[3]),
            laplace_term=f32(rest[4]),
            grad_norm=f32(rest[5]),
            shift=jnp.asarray(sh),
            margin_nats=jnp.asarray(margin, jnp.float32),
            n_within_margin=jnp.asarray(n_keep, jnp.int32),
            screen_error_bound=jnp.asarray(bound, jnp.float32),
            screened=jnp.asarray(screened),
        )

    return score
