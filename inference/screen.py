"""Per-frame scoring fast enough for the live loop: a binned screen, then the exact scorer.

The exact real-time scorer (the linear scorer, :func:`inference.evidence.linear_fit`: registered frame,
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
is returned (``Score.screen_error_bound``). With the nuisance drawn from its prior the
Occam term drops out (``p(T | t) = Z_t``) and the bound is ``(H - 1) e^-m`` (tested). All of it
holds up to the Laplace error of the evidences (< 0.05 nats at 10 e-/Å² in tests/inference) and
when the model holds (as every Bayes factor does). With a known sub-pixel ``shift`` the screen
shifts the block-mean images by ``shift / f`` (a Fourier shift of the binned image: exact for
images band-limited below the binned Nyquist frequency), while the exact stage shifts the full
images exactly as the exact scorer does.

**2. Exact.** The survivors (the top ``K`` by screen evidence, ``K`` the next power of two above
the number within the margin, at least ``min_exact``) are scored with the model, prior and
Laplace term of the linear scorer (:func:`inference.evidence.linear_fit`), by Newton from the screen's MAP
(``n_refine`` steps, default 1) completed by a closed-form last step (the Newton decrement,
:func:`inference.newton.laplace_at`). A survivor is flagged exact (``Score.exact``) when the
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

**Two implementations of the passes**, in their own modules, both calling the one
Newton-Laplace step of :mod:`inference.newton`: on the CPU (``backend="auto"`` when the cached
images live there) every pass over a hypothesis's pixels is one fused, vectorised loop
(:mod:`inference.screen_cpu` over :mod:`inference._kernels`, numba) that returns the six sums,
with the 2-parameter Newton algebra on the host in float64 and known shifts applied by
pocketfft; elsewhere (or with ``backend="jax"``) the same stages run as jitted XLA
(:mod:`inference.screen_jax`: ``lax.map`` over blocks of hypotheses, ~256 KB of image per block,
so that the Newton passes over one block hit the cache). XLA's CPU
code for these many-output reductions measured 3-7x slower than the fused loop; both paths are
tested against each other and against the exact scorer.

Use it through :func:`inference.make_scorer` (``ScorerConfig(kind="fast")``): its ``prepare``
builds the cache once per beam condition (:func:`prepare_screen_cache`), its ``score`` runs once
per frame. Jitted stages are shared by every scorer with the same shapes, noise kind,
``K`` and sparse capacity (powers of two: a few compilations per session).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError, pytree_dataclass, static_field
from inference.evidence import NuisancePrior, _check_inputs
from inference.newton import LaplaceFit, _gauss_logpdf
from inference.noise import NoiseModel, _check_counts

__all__ = ["ScreenCache", "prepare_screen_cache", "FastFit", "make_fast_scorer", "screen_margin", "MAX_DECREMENT"]

_LOG_2PI = math.log(2 * math.pi)

#: Pixels per block of hypotheses processed together (~256 KB of float32 per array, so the
#: Newton passes over a block of images hit the cache; measured 2-3x faster than one fused pass
#: over all hypotheses at 1,000 x 64² on this CPU).
_BLOCK_ELEMENTS = 65536

#: An exactly scored hypothesis counts as exact (``Score.exact``) when the Newton decrement at
#: its last evaluation is below this [nats]: after the closed-form final step its log joint is
#: then within ``(2 x 0.05)^1.5 / sqrt(N) <= 0.03 / sqrt(N)`` nats of the maximum
#: (:func:`inference.newton.laplace_at`).
MAX_DECREMENT = 0.05


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


class FastFit(NamedTuple):
    """What the fast scorer's stages return for one frame (read by :func:`inference.make_scorer`).

    Attributes:
        fit: ``[H]`` :class:`inference.newton.LaplaceFit`: the exact stage's where ``exact``, else
            the screen's values with ``log_evidence`` placed by the screen's Bayes factor against
            the screen-best hypothesis (scored exactly).
        exact: ``[H]`` bool: scored by the exact stage and converged (Newton decrement <= 0.05 nats).
        screen_log_evidence: ``[H]`` Laplace evidence of the binned frame (``fit.log_evidence``
            when the screen was skipped).
        margin: the screen margin used [nats] (inf when skipped); n_within: hypotheses the screen
            kept; bound: P(true hypothesis screened out) bound (0 when skipped); screened: whether
            the screen ran.
    """

    fit: LaplaceFit
    exact: Any
    screen_log_evidence: Any
    margin: Any
    n_within: int
    bound: Any
    screened: bool


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


def _merged(idx, ev: LaplaceFit, converged, screen: LaplaceFit, xp=jnp) -> tuple[LaplaceFit, Any]:
    """Scatter the exact fits into ``[H]`` and place the rest by the screen's Bayes factor."""
    ref = idx[0]  # the screen-best hypothesis, scored exactly

    def put(full, part):
        if xp is np:
            out = np.array(full, copy=True)
            out[idx] = part
            return out
        return full.at[idx].set(part)

    placed = ev.log_evidence[0] + screen.log_evidence - screen.log_evidence[ref]
    fit = LaplaceFit(*(put(placed if name == "log_evidence" else getattr(screen, name), getattr(ev, name))
                       for name in LaplaceFit._fields))  # fmt: skip
    return fit, put(xp.zeros(screen.log_evidence.shape, bool), converged)


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
    """``score(counts [nx, ny], cache: ScreenCache, exposure, shift=None) -> FastFit`` (module
    docstring). Called by :func:`inference.make_scorer`, which documents the arguments
    (:class:`inference.ScorerConfig`); ``prior`` is the nuisance prior as used (already relative
    to the signal level where the config says so).

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
    from inference.screen_cpu import host_prior, score_cpu
    from inference.screen_jax import score_jax

    hprior = host_prior(prior)
    steps = {"min_exact": int(min_exact), "n_newton": n_new, "n_screen": n_scr, "n_refine": n_ref}

    def score(counts, cache: ScreenCache, exposure, shift=None) -> FastFit:
        if cache.bin_factor != f:
            raise InputError(
                f"the screen cache was prepared with bin_factor {cache.bin_factor}, this scorer uses {f}; "
                "prepare it with the same bin_factor"
            )
        _check_inputs(counts, cache.images, exposure)
        c = _check_counts(counts, tuple(cache.images.shape[1:]), noise)
        sh = _check_shift(shift)
        n_pix = c.size
        pix = np.flatnonzero(c.reshape(-1) > 0) if sparse_ok else np.zeros(0, np.int64)
        nnz = pix.size
        sparse = sparse_ok and nnz <= n_pix // 4
        skip = sparse and nnz <= n_pix // (f * f) and not np.any(sh != 0)
        if backend == "cpu" or (backend == "auto" and noise.kind != "gaussian" and _on_cpu(cache.images)):
            return score_cpu(c, pix, sparse, skip, cache, float(exposure), sh, noise, binned_noise, prior, hprior, a, **steps)
        return score_jax(c, pix, sparse, skip, cache, float(exposure), sh, noise, binned_noise, prior, a, **steps)

    return score
