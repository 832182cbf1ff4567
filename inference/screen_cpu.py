"""The fast scorer's stages on the CPU (:mod:`inference.screen`): every pass over a hypothesis's
pixels is one fused, vectorised numba loop (:func:`inference._kernels.lik_sums`) that returns the
six sums of the (scale, background) likelihood, the Newton-Laplace algebra of
:mod:`inference.newton` runs on the host in float64, and known shifts are applied by pocketfft.
No compilation per shape: ``K`` (the number of exactly scored hypotheses) is taken as it is.
Poisson and Poisson-Gaussian noise only (the Gaussian model goes to :mod:`inference.screen_jax`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from inference._kernels import gather, lik_sums, n_workers
from inference.evidence import NuisancePrior, shift_phase
from inference.newton import newton_laplace_host, total_count_start
from inference.noise import NoiseModel, _saturated_part, _shift, _z
from inference.screen import (
    MAX_DECREMENT,
    FastFit,
    ScreenCache,
    _log_prior_at_3sd,
    _merged,
    _screen_bound,
    screen_margin,
)

__all__ = ["score_cpu", "host_prior"]

_NO_PIX = np.zeros(0, np.int64)


def host_prior(prior: NuisancePrior) -> NuisancePrior:
    """``prior`` with float64 numpy leaves (the host-side Newton algebra runs in float64)."""
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


def _kernel_lik(sums_fn, zeros=None):
    """The likelihood callback of :func:`inference.newton.newton_laplace_host` from the kernel's
    sums ``sums_fn(theta, with_data) -> [K, 7]``.

    ``zeros = (image sums [K], number of pixels outside the subset, exposure)``: the zero-count
    pixels outside the summed subset (sparse Poisson path, :mod:`inference.screen`), each adding
    ``-mu`` to the log-likelihood and ``-E I``, ``-E`` to the gradient.
    """

    def lik(theta, with_data):
        sums = sums_fn(theta, with_data)
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

    return lik


def _screen_cpu(c, cache: ScreenCache, ex, sh, noise_b: NoiseModel, prior, hprior, alpha, f, n_newton):
    """The screen (binned Laplace evidence of every hypothesis, margin and bound) with the CPU kernel."""
    nx, ny = c.shape
    cb = c.reshape(nx // f, f, ny // f, f).sum(axis=(1, 3), dtype=np.float64).astype(np.float32)
    binned = np.asarray(cache.binned) if not np.any(sh != 0) else _shift_host(cache.binned, sh / f)
    ims = binned.reshape(binned.shape[0], -1)
    h = ims.shape[0]
    e = float(ex) * f * f
    z = _z_host(noise_b, cb).reshape(-1)
    total = float(np.sum(cb, dtype=np.float64)) / float(noise_b.gain)
    theta0 = total_count_start(total, np.asarray(cache.sums, np.float64) / (f * f), cb.size, e, hprior, xp=np)
    rows = np.arange(h)
    shift_b = _noise_shift(noise_b)
    ev = newton_laplace_host(
        _kernel_lik(lambda th, wd: lik_sums(ims, rows, _NO_PIX, z, th, e, shift_b, wd)),
        theta0,
        hprior,
        float(_saturated_sum(noise_b, jnp.asarray(cb))),
        n_newton,
    )
    best = int(np.argmax(ev.log_evidence))
    occam = float(ev.laplace_term[best]) + float(_log_prior_at_3sd(prior))
    margin = float(screen_margin(h, alpha, occam, xp=np))
    n_keep = int(np.sum(ev.log_evidence >= ev.log_evidence[best] - margin))
    # the margin is the one that makes the bound alpha (screen_margin): float64 rounding of
    # log/exp may put it one ulp above, so the bound stated is alpha itself
    return ev, margin, n_keep, min(float(_screen_bound(h, margin, occam, xp=np)), float(alpha))


def _exact_cpu(c, pix, sparse, cache: ScreenCache, order, theta_screen, ex, sh, noise, hprior, k, n_newton, from_screen):
    """The exact stage with the CPU kernel: the top ``k`` hypotheses by ``order`` [H]."""
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
        theta0 = total_count_start(total, sums, float(n_pix), float(ex), hprior, xp=np)
    shift_n = _noise_shift(noise)
    ev = newton_laplace_host(
        _kernel_lik(lambda th, wd: lik_sums(ims, rows, pixels, z, th, float(ex), shift_n, wd), zeros),
        theta0,
        hprior,
        float(_saturated_sum(noise, jnp.asarray(c))),
        n_newton,
    )
    return idx, ev, ev.decrement <= MAX_DECREMENT


def score_cpu(c: np.ndarray, pix: np.ndarray, sparse: bool, skip: bool, cache: ScreenCache, exposure: float,
              sh: np.ndarray, noise: NoiseModel, binned_noise: NoiseModel, prior, hprior, alpha: float, *,
              min_exact: int, n_newton: int, n_screen: int, n_refine: int) -> FastFit:  # fmt: skip
    """The fast scorer with the CPU kernel (arguments as prepared by :func:`inference.screen.make_fast_scorer`)."""
    h = int(cache.images.shape[0])
    if skip:
        # equal order keys: the stable sort keeps hypothesis order, so the result is already [H]
        _, ev, conv = _exact_cpu(c, pix, sparse, cache, np.zeros(h), None, exposure, sh, noise, hprior, h, n_newton, False)
        return FastFit(ev, conv, ev.log_evidence, np.inf, h, 0.0, False)
    f = cache.bin_factor
    scr, margin, n_keep, bound = _screen_cpu(c, cache, exposure, sh, binned_noise, prior, hprior, alpha, f, n_screen)
    k = min(h, max(int(min_exact), n_keep))
    theta = np.stack([scr.scale, scr.background], axis=1)
    idx, ev, conv = _exact_cpu(c, pix, sparse, cache, scr.log_evidence, theta, exposure, sh, noise, hprior, k, n_refine, True)
    fit, mask = _merged(idx, ev, conv, scr, xp=np)
    return FastFit(fit, mask, scr.log_evidence, margin, n_keep, bound, True)
