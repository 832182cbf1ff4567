"""CPU kernels for the fast scorer's per-pixel passes (:mod:`inference.screen`).

Each pass of the fast scorer reads every pixel of every scored image once and needs six sums
per hypothesis: the gradient and Hessian of the (shifted-)Poisson log-likelihood in
``(scale, background)`` and, in the final pass, its data part (a logarithm per pixel). XLA on
CPU (jaxlib 0.10) emits one loop per reduction and does not vectorise reductions along rows:
on the 2-core development machine one such pass over 640 images of 256x256 pixels took ~150 ms
as jitted ``lax.map`` stages, against 46 ms (20 ms without the logarithm) for the single fused,
vectorised loop below on two threads. ``benchmarks/inference_latency.py`` runs the fast scorer
with both (``--backend both``). On other devices the jitted stages of :mod:`inference.screen`
run unchanged; both paths compute the same sums (tests/inference/test_screen.py).

The logarithm is evaluated in the vectorisable form of Cody & Waite (Software Manual for the
Elementary Functions, 1980, ch. 5): ``x = 2^e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` read
from the float's bits, and ``log m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, summed to ``s^9``
(``|s| <= 0.1716``: truncation ``2 s^11 / 11 < 1e-9``), so the loop has no library call. It is
taken of ``r = z / mu`` (the deviance form of :mod:`inference.noise`), whose logarithm is small
where the model fits, so its absolute error is ~1e-7 x ``|log r|`` per pixel.

Sums are accumulated in float32 over chunks of ``_CHUNK`` pixels and in float64 across chunks
(the float32 error of a chunk sum is ~``_CHUNK`` x 6e-8 relative).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

__all__ = ["lik_sums", "gather", "n_workers", "N_SUMS"]

#: Pixels per chunk (float32 partial sums; buffers stay in L1).
_CHUNK = 512

#: Columns of :func:`lik_sums`' output: g_s, g_b, -H_ss, -H_sb, -H_bb, data, sum of image.
N_SUMS = 7

_LN2 = np.float32(0.6931471805599453)
_SQRT2 = np.float32(1.4142135623730951)

_jit = nb.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)


@_jit
def _rows(images, rows, pix, z, theta, exposure, shift, with_data, out):
    """Sums for ``rows`` of ``images [H, P]`` (see :func:`lik_sums`), one thread."""
    n = z.shape[0]
    dense = pix.shape[0] == 0
    e = np.float32(exposure)
    e2 = e * e
    sh = np.float32(shift)
    one = np.float32(1.0)
    xb = np.empty(_CHUNK, np.float32)
    rb = np.empty(_CHUNK, np.float32)
    ri = rb.view(np.int32)
    qi = np.empty(_CHUNK, np.int32)
    qf = qi.view(np.float32)
    eb = np.empty(_CHUNK, np.float32)
    for k in range(rows.shape[0]):
        h = rows[k]
        s = np.float32(theta[k, 0])
        b = np.float32(theta[k, 1])
        t0 = 0.0
        t1 = 0.0
        t2 = 0.0
        t3 = 0.0
        t4 = 0.0
        t5 = 0.0
        t6 = 0.0
        for st in range(0, n, _CHUNK):
            c = min(_CHUNK, n - st)
            if dense:
                xc = images[h, st : st + c]
            else:
                for i in range(c):
                    xb[i] = images[h, pix[st + i]]
                xc = xb
            c0 = np.float32(0.0)
            c1 = np.float32(0.0)
            c2 = np.float32(0.0)
            c3 = np.float32(0.0)
            c4 = np.float32(0.0)
            c5 = np.float32(0.0)
            c6 = np.float32(0.0)
            zc = z[st : st + c]
            for i in range(c):
                x = xc[i]
                zi = zc[i]
                m = max(e * (s * x + b) + sh, np.float32(1e-6))
                inv = one / m
                r = zi * inv
                ea = e * (r - one)
                ew = e2 * r * inv
                c0 += ea * x
                c1 += ea
                c2 += ew * x * x
                c3 += ew * x
                c4 += ew
                c5 -= m - zi
                c6 += x
                rb[i] = max(r, np.float32(1e-30))
            if with_data:
                # log r = e ln 2 + log m, m the mantissa in [sqrt(1/2), sqrt(2)) (module docstring)
                for i in range(c):
                    bits = ri[i]
                    eb[i] = np.float32(((bits >> 23) & 0xFF) - 127)
                    qi[i] = (bits & 0x7FFFFF) | 0x3F800000
                for i in range(c):
                    mm = qf[i]
                    big = np.float32(mm > _SQRT2)
                    mm = mm * (one - np.float32(0.5) * big)
                    f = mm - one
                    u = f / (np.float32(2.0) + f)
                    u2 = u * u
                    p = u * (
                        np.float32(2.0)
                        + u2
                        * (
                            np.float32(0.6666666666666666)
                            + u2 * (np.float32(0.4) + u2 * (np.float32(0.2857142857142857) + u2 * np.float32(0.2222222222222222)))
                        )
                    )
                    c5 -= z[st + i] * (p + (eb[i] + big) * _LN2)
            t0 += c0
            t1 += c1
            t2 += c2
            t3 += c3
            t4 += c4
            t5 += c5
            t6 += c6
        out[k, 0] = t0
        out[k, 1] = t1
        out[k, 2] = t2
        out[k, 3] = t3
        out[k, 4] = t4
        out[k, 5] = t5 if with_data else 0.0
        out[k, 6] = t6


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """A forked child inherits the pool object but not its threads: start a new one there."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def n_workers() -> int:
    """CPUs this process may use (the kernel's and the host FFTs' threads)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=n_workers(), thread_name_prefix="hypotest-kernels")
    return _POOL


def _split_rows(kernel, k: int, args_for):
    """Run ``kernel(*args_for(a, c))`` over row ranges ``[a, c)`` of ``k`` rows on the pool."""
    n_work = min(n_workers(), max(1, k // 8))
    if n_work == 1:
        kernel(*args_for(0, k))
        return
    bounds = np.linspace(0, k, n_work + 1).astype(int)
    futures = [_pool().submit(kernel, *args_for(a, c)) for a, c in zip(bounds[:-1], bounds[1:]) if c > a]
    for f in futures:
        f.result()


@_jit
def _gather(images, rows, pix, out):
    for k in range(rows.shape[0]):
        h = rows[k]
        for j in range(pix.shape[0]):
            out[k, j] = images[h, pix[j]]


def gather(images, rows, pix) -> np.ndarray:
    """``images[rows][:, pix]`` as a new ``[K, len(pix)]`` float32 array (threads over rows)."""
    images = np.ascontiguousarray(images, np.float32)
    rows = np.ascontiguousarray(rows, np.int64)
    pix = np.ascontiguousarray(pix, np.int64)
    out = np.empty((rows.shape[0], pix.shape[0]), np.float32)
    _split_rows(_gather, rows.shape[0], lambda a, c: (images, rows[a:c], pix, out[a:c]))
    return out


def lik_sums(images, rows, pix, z, theta, exposure: float, shift: float, with_data: bool) -> np.ndarray:
    """Per-hypothesis sums of the shifted-Poisson log-likelihood at ``theta``, ``[K, 7]`` float64.

    For hypothesis ``rows[k]`` of ``images [H, P]`` (float32) at ``(s, b) = theta[k]``, over the
    pixels ``pix`` (all ``P`` when ``pix`` is empty), with ``z`` the counts / gain plus the
    read-noise shift clipped at 0 (one per summed pixel), ``x`` the image and
    ``m = max(E (s x + b) + shift, 1e-6)``, ``r = z / m``:

    ``[sum E (r - 1) x, sum E (r - 1), sum E² r/m x², sum E² r/m x, sum E² r/m,
    sum -z log r - (m - z) (with_data; else 0), sum x]``

    (:func:`inference.evidence._mu_derivs`: gradient, minus the Hessian, data part). The rows are
    split over the CPUs this process may use; the kernel releases the GIL. Gathering ``pix``
    inside the loop is slower than a dense pass: for repeated passes over the same subset,
    :func:`gather` it once.
    """
    images = np.ascontiguousarray(images, np.float32)
    rows = np.ascontiguousarray(rows, np.int64)
    pix = np.ascontiguousarray(pix, np.int64)
    z = np.ascontiguousarray(z, np.float32)
    theta = np.ascontiguousarray(theta, np.float64)
    out = np.zeros((rows.shape[0], N_SUMS), np.float64)
    e, sh, wd = float(exposure), float(shift), bool(with_data)
    _split_rows(_rows, rows.shape[0], lambda a, c: (images, rows[a:c], pix, z, theta[a:c], e, sh, wd, out[a:c]))
    return out
