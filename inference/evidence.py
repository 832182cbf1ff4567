"""The numeric kernels of the scorer (:mod:`inference.scorer`): the evidence of one frame for each
cached hypothesis image, with the nuisance parameters removed.

The observation model for hypothesis ``h`` with cached intensity ``I_h [nx, ny]`` (relative to
the incident beam, see :mod:`inference.noise`) is

    mu = E * (scale * I_h(x - shift) + background),     E = dose [e-/Å²] * pixel area [Å²]

with nuisance parameters ``scale`` (beam current / detector efficiency), ``background``
(intensity units, e.g. amorphous carbon or dark level) and a sub-pixel ``shift`` [pixels]
(drift), all with Gaussian priors (:class:`NuisancePrior`). Continuous beam parameters
(defocus, thickness, tilt) enter through ``simulate_fn`` and are handled by
:func:`inference.laplace.laplace_log_evidence` / :mod:`inference.refine`.

The nuisance parameters are **marginalised with the Laplace approximation** around their MAP
(Tierney & Kadane, J. Am. Stat. Assoc. 81 (1986) 82; MacKay, Information Theory, Inference and
Learning Algorithms (2003) eq. 27.10):

    log p(y | h) ~= log p(y | phi*, h) + log p(phi*) + d/2 log(2 pi) - 1/2 log det(-H(phi*))

(the last two terms: ``laplace_term``, the "Occam factor"). For the Gaussian noise model and known
shift the model is linear-Gaussian and the approximation is exact.

Two kernels, both ``[H]``-batched and jitted:

- :func:`linear_fit`: shift known (frames registered upstream), only the linear ``(scale,
  background)`` marginalised by the Newton-Laplace step of :mod:`inference.newton` with
  closed-form gradient and Hessian, one fused pass over the pixels per iteration.
- :func:`laplace_fit`: ``(shift_x, shift_y, scale, background)`` marginalised, shift by exact
  Fourier phase ramps, Hessian by autodiff; one FFT pair per hypothesis and iteration.

Both take frames with detector channels (4D-STEM, one image over the scan per diffraction pixel)
as ``[..., nx, ny]``, channels leading: a drift moves the last two (scan) axes of every channel
alike, and every pixel of every channel is one count of the likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError, pytree_dataclass
from forward._validate import finite_scalar, in_range
from inference.newton import LaplaceFit, _gauss_logpdf, newton_laplace, total_count_start
from inference.noise import NoiseModel, _data_part, _saturated_part, _shift

__all__ = [
    "NuisancePrior",
    "make_nuisance_prior",
    "signal_relative_prior",
    "fourier_shift",
    "shift_phase",
    "dense_lik",
    "linear_fit",
    "laplace_fit",
]

_LOG_2PI = math.log(2 * math.pi)


@pytree_dataclass
class NuisancePrior:
    """Independent Gaussian priors on the nuisance parameters.

    Attributes:
        scale_mean, scale_sd: intensity scale (1 = the simulation's absolute intensity).
        background_mean, background_sd: additive background [intensity units, i.e. fraction of
            the incident beam per pixel area].
        shift_sd: standard deviation of the sub-pixel shift [pixels] per axis (mean 0). Keep it
            below half a lattice period: the likelihood is periodic in shift.
    """

    scale_mean: jax.Array
    scale_sd: jax.Array
    background_mean: jax.Array
    background_sd: jax.Array
    shift_sd: jax.Array


def make_nuisance_prior(
    *,
    scale_mean: float = 1.0,
    scale_sd: float = 0.2,
    background_mean: float = 0.0,
    background_sd: float = 0.1,
    shift_sd: float = 0.5,
) -> NuisancePrior:
    """A validated :class:`NuisancePrior` (scale dimensionless, background [intensity], shift [pixels])."""
    sm = in_range(scale_mean, "scale_mean", "", 0.0, 1e6, lo_open=True)
    ss = in_range(scale_sd, "scale_sd", "", 0.0, 1e6, lo_open=True)
    bm = finite_scalar(background_mean, "background_mean", "intensity")
    bs = in_range(background_sd, "background_sd", "intensity", 0.0, 1e6, lo_open=True)
    ds = in_range(shift_sd, "shift_sd", "pixels", 0.0, 1e3, lo_open=True)
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return NuisancePrior(f(sm), f(ss), f(bm), f(bs), f(ds))


def signal_relative_prior(prior: NuisancePrior, images) -> NuisancePrior:
    """``prior`` with its background (mean and sd) taken relative to the mean level of ``images``
    ``[..., nx, ny]`` instead of the incident beam: unchanged in HRTEM (level ~1), scaled to the
    detected fraction (~1e-2) in annular STEM, where a background prior in units of the beam would
    span ten times the whole signal and the Laplace approximation breaks down (negative expected
    counts at the MAP)."""
    m = jnp.maximum(jnp.mean(jnp.asarray(images, jnp.float32)), 1e-12)
    return dataclasses.replace(prior, background_mean=prior.background_mean * m, background_sd=prior.background_sd * m)


def shift_phase(shape, shift, xp=jnp):
    """The phase ramp ``[nx, ny // 2 + 1]`` of :func:`fourier_shift` on the ``rfft2`` grid.

    ``exp(-2 pi i (kx sx + ky sy))`` per frequency (``kx`` from ``fftfreq``, ``ky`` from
    ``rfftfreq``), except at the Nyquist frequency of an even axis, where the factor is
    ``cos(pi s)``: the real band-limited interpolant's Nyquist term ``a cos(pi (x - s))`` sampled
    at integer ``x`` (``sin(pi x) = 0``). This keeps the product Hermitian, so the shifted image
    is real and the same for the full and the real FFT (``xp``: numpy or jax.numpy)."""
    nx, ny = shape

    def axis(freq, n, s):
        ramp = xp.exp(-2j * xp.pi * freq * s)
        if n % 2:
            return ramp
        nyq = xp.abs(freq) == 0.5
        return xp.where(nyq, xp.cos(xp.pi * s) + 0j, ramp)

    px = axis(xp.asarray(np.fft.fftfreq(nx), np.float32), nx, shift[0])
    py = axis(xp.asarray(np.fft.rfftfreq(ny), np.float32), ny, shift[1])
    return (px[:, None] * py[None, :]).astype(xp.complex64)


def fourier_shift(image, shift):
    """``image(x - shift)`` for a periodic ``[..., nx, ny]`` image, ``shift`` ``[2]`` [pixels], by an
    exact Fourier phase ramp (the shift theorem; :func:`shift_phase`); differentiable in ``shift``."""
    image = jnp.asarray(image)
    nx, ny = image.shape[-2:]
    phase = shift_phase((nx, ny), shift)
    phase = phase.reshape((1,) * (image.ndim - 2) + phase.shape)  # leading (channel) axes explicit
    return jnp.fft.irfft2(jnp.fft.rfft2(image) * phase, s=(nx, ny))


def _mu_derivs(noise: NoiseModel, counts, mu):
    """``(a, w, data)`` per pixel: d loglik / d mu, -d² loglik / d mu² (observed information)
    and the hypothesis-dependent log-likelihood (:func:`inference.noise._data_part`), sharing
    one division and one logarithm per pixel (the real-time path is bound by them)."""
    if noise.kind == "gaussian":
        res = counts - noise.gain * mu
        a = noise.gain * res / noise.read_noise**2
        w = jnp.broadcast_to(noise.gain**2 / noise.read_noise**2, jnp.shape(mu))
        return a, w, -0.5 * (res / noise.read_noise) ** 2
    z = jnp.maximum(counts / noise.gain + _shift(noise), 0.0)
    m = jnp.maximum(mu + _shift(noise), 1e-6)
    inv = 1.0 / m
    r = z * inv
    # z log(m / z) - (m - z) = -z log(r) - (m - z): the Poisson deviance / -2, O(1) per pixel.
    # The logarithm sees 1 where z = 0 (the double-where pattern): its value there is discarded
    # anyway, and a clamp instead makes second derivatives (the optics' Hessian through this
    # evidence, inference.optics) 0 * inf = NaN on zero-count pixels.
    data = jnp.where(z > 0, -z * jnp.log(jnp.where(z > 0, r, 1.0)), 0.0) - (m - z)
    return r - 1.0, r * inv, data


def _check_inputs(counts, images, exposure):
    """Concrete shape and exposure checks (shapes only: no copy of the cached images)."""
    cs, ims = tuple(jnp.shape(counts)), tuple(jnp.shape(images))
    if len(ims) < 3:
        raise InputError(
            f"images must be [H, nx, ny] (one cached image per hypothesis) or [H, ..., nx, ny] (detector channels "
            f"first, e.g. 4D-STEM [H, kx, ky, sx, sy]), got shape {list(ims)}"
        )
    if ims[0] == 0:
        raise InputError("the library is empty: got 0 hypothesis images; add at least one hypothesis")
    if cs != ims[1:]:
        raise InputError(
            f"frame shape {list(cs)} does not match the cached images {list(ims[1:])}; "
            "simulate on the frame's grid (pixel (0, 0) at the cell origin)"
        )
    e = float(exposure)
    if not (math.isfinite(e) and e > 0):
        raise InputError(
            f"exposure (dose [e-/Å²] x pixel area [Å²]) must be finite and > 0, got {exposure!r} electrons per unit intensity"
        )


def dense_lik(noise: NoiseModel, counts, image, exposure):
    """The likelihood callback of :mod:`inference.newton` for one registered image: gradient,
    Hessian and data part of the log-likelihood in (scale, background), one fused pass over the
    pixels (:func:`_mu_derivs`)."""

    def lik(theta):
        a, w, data = _mu_derivs(noise, counts, exposure * (theta[0] * image + theta[1]))
        ea = exposure * a
        ew = exposure * exposure * w
        h = (-jnp.sum(ew * image * image), -jnp.sum(ew * image), -jnp.sum(ew))
        return jnp.stack([jnp.sum(ea * image), jnp.sum(ea)]), h, jnp.sum(data)

    return lik


def _linear_one(counts, image, exposure, sat, noise: NoiseModel, prior: NuisancePrior, n_newton: int) -> LaplaceFit:
    """Laplace evidence of one registered image over (scale, background) (:mod:`inference.newton`)."""
    total = jnp.sum(counts) / noise.gain
    theta0 = total_count_start(total, jnp.sum(image), jnp.float32(image.size), exposure, prior)
    return newton_laplace(dense_lik(noise, counts, image, exposure), theta0, prior, sat, n_newton)


@functools.partial(jax.jit, static_argnames=("n_newton",))
def _linear_fit(counts, images, exposure, shift, noise, prior, n_newton):
    counts = jnp.asarray(counts, jnp.float32)
    images = jnp.asarray(images, jnp.float32)
    shift = jnp.asarray(shift, jnp.float32)
    images = jax.lax.cond(
        jnp.any(shift != 0),
        lambda im: jax.vmap(fourier_shift, in_axes=(0, None))(im, shift),
        lambda im: im,
        images,
    )
    sat = jnp.sum(_saturated_part(noise, counts))
    return jax.vmap(_linear_one, in_axes=(None, 0, None, None, None, None, None))(
        counts, images, exposure, sat, noise, prior, n_newton
    )


def linear_fit(counts, images, exposure, shift, noise: NoiseModel, prior: NuisancePrior, *, n_newton: int = 4) -> LaplaceFit:
    """``[H]`` Laplace evidence over (scale, background) of ``counts [..., nx, ny]`` against
    ``images [H, ..., nx, ny]`` registered up to the known ``shift [2]`` [pixels] (applied to the
    images when nonzero): ``n_newton`` Newton steps from the total-count match. ``exposure`` =
    dose [e-/Å²] x pixel area [Å²]. The compiled program is shared by every call with the same
    shapes and noise kind."""
    _check_inputs(counts, images, exposure)
    ex = jnp.asarray(exposure, jnp.float32)
    return _linear_fit(counts, images, ex, jnp.asarray(shift, jnp.float32), noise, prior, int(n_newton))


def _laplace_log_joint(phi, counts, image, exposure, noise, prior):
    shifted = fourier_shift(image, phi[:2])
    mu = exposure * (phi[2] * shifted + phi[3])
    ll = jnp.sum(_data_part(noise, counts, mu))
    lp = (
        jnp.sum(_gauss_logpdf(phi[:2], 0.0, prior.shift_sd))
        + _gauss_logpdf(phi[2], prior.scale_mean, prior.scale_sd)
        + _gauss_logpdf(phi[3], prior.background_mean, prior.background_sd)
    )
    return ll + lp, (ll, lp)


def _laplace_one(counts, image, exposure, shift0, s0, b0, sat, noise, prior, n_newton):
    f = lambda phi: _laplace_log_joint(phi, counts, image, exposure, noise, prior)[0]  # noqa: E731
    grad_fn, hess_fn = jax.grad(f), jax.hessian(f)

    def step(phi, _):
        g, h = grad_fn(phi), hess_fn(phi)
        # Levenberg damping: shift -H to positive definite where the log joint is not concave.
        evals = jnp.linalg.eigvalsh(-h)
        lam = jnp.maximum(0.0, 1e-3 * jnp.max(jnp.abs(evals)) - jnp.min(evals))
        delta = jnp.linalg.solve(-h + lam * jnp.eye(4), g)
        # Trust region on the shift: at most half a pixel per iteration.
        dmax = jnp.max(jnp.abs(delta[:2]))
        delta = delta * jnp.minimum(1.0, 0.5 / jnp.maximum(dmax, 1e-12))
        new = phi + delta
        return new.at[2].set(jnp.maximum(new[2], 1e-6 * prior.scale_mean)), None

    phi, _ = jax.lax.scan(step, jnp.stack([shift0[0], shift0[1], s0, b0]), None, length=n_newton)
    _, (ll, lp) = _laplace_log_joint(phi, counts, image, exposure, noise, prior)
    g, h = grad_fn(phi), hess_fn(phi)
    sign, logdet = jnp.linalg.slogdet(-h)
    lap = 2.0 * _LOG_2PI - 0.5 * jnp.where(sign > 0, logdet, jnp.inf)
    sd = jnp.sqrt(jnp.abs(jnp.diagonal(jnp.linalg.inv(-h))))
    fit = LaplaceFit(
        log_evidence=ll + sat + lp + lap,
        log_likelihood=ll + sat,
        log_prior=lp,
        laplace_term=lap,
        scale=phi[2],
        background=phi[3],
        scale_sd=sd[2],
        background_sd=sd[3],
        grad_norm=jnp.linalg.norm(g),
        decrement=jnp.zeros((), jnp.float32),
    )
    return fit, phi[:2], sd[:2]


@functools.partial(jax.jit, static_argnames=("n_newton",))
def _laplace_fit(counts, images, exposure, shift0, noise, prior, n_newton):
    counts = jnp.asarray(counts, jnp.float32)
    images = jnp.asarray(images, jnp.float32)
    # scale and background start from the linear fit at each hypothesis's start shift (a fit at
    # zero shift of a drifted frame is far from the joint MAP and sent the Newton astray)
    shifted = jax.vmap(fourier_shift)(images, shift0)
    lin = _linear_fit(counts, shifted, exposure, jnp.zeros((2,), jnp.float32), noise, prior, 4)
    sat = jnp.sum(_saturated_part(noise, counts))
    return jax.vmap(_laplace_one, in_axes=(None, 0, None, 0, 0, 0, None, None, None, None))(
        counts, images, exposure, shift0, lin.scale, lin.background, sat, noise, prior, n_newton
    )


def laplace_fit(counts, images, exposure, noise: NoiseModel, prior: NuisancePrior, *, shift0=(0.0, 0.0),
                n_newton: int = 6) -> tuple[LaplaceFit, jax.Array, jax.Array]:  # fmt: skip
    """``(fit [H], shift [H, 2], shift_sd [H, 2])``: the shift [pixels], scale and background all
    marginalised (Laplace around a damped-Newton MAP started at ``shift0`` (``[2]``, or ``[H, 2]``
    one start per hypothesis) and the linear kernel's scale and background; Hessian by autodiff).
    The Newton moves the shift by at most half a pixel per iteration, so the start must lie within
    a few pixels of the MAP: at high dose the log joint is sharply peaked and far from concave a
    pixel or two away (:func:`inference.register_shift` finds such a start).

    The damped Newton is not invariant to the units of the images, so it runs on the images
    divided by their mean level ``m`` (exposure times ``m``, background prior divided by ``m``:
    the same expected counts and the same prior), and the result is mapped back (background
    times ``m``; ``log_prior`` and ``laplace_term`` by the Jacobian ``log m``; the evidence is
    unchanged). Without this, images at an annular-detector level (~1e-2 of the beam) gave log
    evidences 2-34 nats off (tests/inference/test_evidence.py)."""
    _check_inputs(counts, images, exposure)
    images = jnp.asarray(images, jnp.float32)
    m = jnp.maximum(jnp.mean(images), 1e-12)
    unit = dataclasses.replace(prior, background_mean=prior.background_mean / m, background_sd=prior.background_sd / m)
    ex = jnp.asarray(exposure, jnp.float32) * m
    h = images.shape[0]
    s0 = jnp.broadcast_to(jnp.asarray(shift0, jnp.float32).reshape(-1, 2), (h, 2))
    fit, shift, shift_sd = _laplace_fit(counts, images / m, ex, s0, noise, unit, int(n_newton))
    log_m = jnp.log(m)
    fit = fit._replace(background=fit.background * m, background_sd=fit.background_sd * m,
                       log_prior=fit.log_prior - log_m, laplace_term=fit.laplace_term + log_m)  # fmt: skip
    return fit, shift, shift_sd
