"""The fast scorer's stages as jitted XLA (:mod:`inference.screen`): any device, any noise model.

``lax.map`` over blocks of hypotheses (~256 KB of image per block, so that the Newton passes over
one block hit the cache); each hypothesis's (scale, background) Laplace evidence is the one
Newton-Laplace step of :mod:`inference.newton` with the sums of :func:`inference.evidence.dense_lik`
(or, for sparse Poisson frames, of :func:`_sparse_poisson_lik`). The number ``K`` of exactly
scored hypotheses is rounded up to a power of two (one compilation per bucket), and the sparse
path pads the counted pixels to a power-of-two capacity.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from inference.evidence import dense_lik, fourier_shift
from inference.newton import newton_laplace, total_count_start
from inference.noise import NoiseModel, _saturated_part
from inference.screen import (
    MAX_DECREMENT,
    FastFit,
    ScreenCache,
    _block,
    _log_prior_at_3sd,
    _merged,
    _pow2_at_least,
    _screen_bound,
    screen_margin,
)

__all__ = ["score_jax"]


def _bin_sum(x, f: int):
    nx, ny = x.shape
    return jnp.sum(x.reshape(nx // f, f, ny // f, f), axis=(1, 3))


@functools.partial(jax.jit, static_argnames=("f", "n_newton"))
def _screen_stage(counts, binned, exposure, shift, noise_b, prior, alpha, f, n_newton):
    """Binned Laplace evidence of every hypothesis, the margin and its bound."""
    cb = _bin_sum(counts, f)
    has_shift = jnp.any(shift != 0)
    sat = jnp.sum(_saturated_part(noise_b, cb))

    def one(image):
        image = jax.lax.cond(has_shift, lambda im: fourier_shift(im, shift / f), lambda im: im, image)
        e = exposure * f * f
        theta0 = total_count_start(jnp.sum(cb) / noise_b.gain, jnp.sum(image), jnp.float32(cb.size), e, prior)
        return newton_laplace(dense_lik(noise_b, cb, image, e), theta0, prior, sat, n_newton)

    ev = jax.lax.map(one, binned, batch_size=_block(cb.size))
    best = jnp.argmax(ev.log_evidence)
    occam = ev.laplace_term[best] + _log_prior_at_3sd(prior)
    h = binned.shape[0]
    margin = screen_margin(h, alpha, occam)
    keep = ev.log_evidence >= ev.log_evidence[best] - margin
    return ev, margin, jnp.sum(keep), _screen_bound(h, margin, occam)


def _sparse_poisson_lik(z, img, img_sum, n_pix, exposure):
    """:func:`inference.evidence.dense_lik` for Poisson counts over a subset of ``n`` pixels that
    holds every counted one (the rest of the subset: pixels with zero counts, used as padding).

    ``z [n]`` counts / gain and ``img [n]`` the image at those pixels; the pixels outside the
    subset all have zero counts and enter through ``img_sum - sum(img)`` (:mod:`inference.screen`):
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
        return total_count_start(total, cache.sums[i], n_pix, exposure, prior)

    def image(i):
        return jax.lax.cond(has_shift, lambda im: fourier_shift(im, shift), lambda im: im, cache.images[i])

    if sparse:
        z = counts.reshape(-1)[pix] / noise.gain

        def one(i):
            img = jax.lax.cond(
                has_shift, lambda: image(i).reshape(-1)[pix], lambda: cache.images[i].reshape(-1)[pix]
            )
            lik = _sparse_poisson_lik(z, img, cache.sums[i], n_pix, exposure)
            return newton_laplace(lik, start(i), prior, sat, n_newton)

        ev = jax.lax.map(one, idx, batch_size=_block(pix.size))
    else:

        def one(i):
            return newton_laplace(dense_lik(noise, counts, image(i), exposure), start(i), prior, sat, n_newton)

        ev = jax.lax.map(one, idx, batch_size=_block(counts.size))
    return idx, ev, ev.decrement <= MAX_DECREMENT


_merge = jax.jit(_merged)


def score_jax(c: np.ndarray, pix: np.ndarray, sparse: bool, skip: bool, cache: ScreenCache, exposure: float,
              sh: np.ndarray, noise: NoiseModel, binned_noise: NoiseModel, prior, alpha: float, *, min_exact: int,
              n_newton: int, n_screen: int, n_refine: int) -> FastFit:  # fmt: skip
    """The fast scorer on the jitted stages (arguments as prepared by :func:`inference.screen.make_fast_scorer`)."""
    h = int(cache.images.shape[0])
    n_pix = c.size
    if sparse:
        # the counted pixels, padded with zero-count pixels to a power-of-two capacity
        nnz = pix.size
        cap = min(n_pix, max(64, _pow2_at_least(nnz)))
        pad = np.flatnonzero(c.reshape(-1) <= 0)[: cap - nnz]
        pix = np.concatenate([pix, pad]).astype(np.int32)
    else:
        pix = np.zeros(1, np.int32)
    cj, shj, ex = jnp.asarray(c), jnp.asarray(sh), jnp.asarray(exposure, jnp.float32)
    if skip:
        zeros = jnp.zeros((h,), jnp.float32)
        idx, ev, conv = _exact_stage(
            cj, pix, cache, zeros, jnp.zeros((h, 2), jnp.float32), ex, shj, noise, prior, h, True, n_newton, False
        )
        order = jnp.argsort(idx)
        ev, conv = jax.tree.map(lambda x: x[order], (ev, conv))
        return FastFit(ev, conv, ev.log_evidence, jnp.asarray(jnp.inf, jnp.float32), h, jnp.zeros((), jnp.float32), False)
    f = cache.bin_factor
    scr, margin, n_keep, bound = _screen_stage(cj, cache.binned, ex, shj, binned_noise, prior, jnp.float32(alpha), f, n_screen)
    k = min(h, max(int(min_exact), _pow2_at_least(int(n_keep))))
    theta = jnp.stack([scr.scale, scr.background], axis=1)
    idx, ev, conv = _exact_stage(cj, pix, cache, scr.log_evidence, theta, ex, shj, noise, prior, k, bool(sparse), n_refine, True)
    fit, mask = _merge(idx, ev, conv, scr)
    return FastFit(fit, mask, scr.log_evidence, margin, int(n_keep), bound, True)
