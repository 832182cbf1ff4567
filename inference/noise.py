"""Noise models: how recorded counts scatter around the expected number of electrons.

Contract with the forward model: ``simulate_fn(params, beam) -> intensity [nx, ny]`` is the
image relative to the incident beam (vacuum = 1 in HRTEM; the detected fraction of the probe in
STEM), so the expected number of electrons in a pixel is

    mu = intensity * dose [e-/Å²] * pixel area [Å²]      (:func:`forward.noise.expected_electrons`)

and the recorded counts are ``gain * electrons + read noise``. Three models
(:data:`NOISE_KINDS`):

- ``"poisson"``: ``counts / gain ~ Poisson(mu)`` (a counting detector; exact for gain 1).
- ``"gaussian"``: ``counts ~ Normal(gain * mu, read_noise²)``: read noise only, fixed variance.
  Only valid when shot noise is negligible next to read noise; never the low-dose default.
- ``"poisson_gaussian"``: ``counts = gain * Poisson(mu) + Normal(0, read_noise²)``. Its exact
  likelihood is an infinite sum; we use the shifted-Poisson approximation of Snyder, Hammoud &
  White, J. Opt. Soc. Am. A 10 (1993) 1014, eq. (9) (also Chakrabarti & Zickler, and Luisier,
  Vonesch, Blu & Unser, Signal Processing 90 (2010) 415, sec. 2):

      z = counts / gain + s,  z ~ Poisson(mu + s),  s = (read_noise / gain)²

  which matches the first two moments exactly and stays accurate at low counts, where a Gaussian
  approximation fails. ``z`` is clipped at 0 (a pixel whose read noise pushed it below ``-s`` in
  electron units carries no information about ``mu`` beyond "about zero").

Non-integer ``z`` use the continuous extension ``z log mu - mu - lgamma(z + 1)``, the same
density up to normalisation for every hypothesis, so Bayes factors are unaffected. Sums are
written in deviance form (data-only "saturated" part kept separate) so float32 sums over large
frames keep differences between hypotheses to ~1e-3 nats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from forward import Detector, InputError, pytree_dataclass, static_field
from forward._validate import in_range
from forward.noise import expected_electrons  # the one definition (clips round-off negatives)

__all__ = [
    "NOISE_KINDS",
    "NoiseModel",
    "make_noise_model",
    "noise_from_detector",
    "expected_electrons",
    "pixel_log_likelihood",
    "log_likelihood",
    "log_likelihood_split",
    "sample_counts",
    "poisson_fisher_weight",
]

#: The supported noise models.
NOISE_KINDS: tuple[str, ...] = ("poisson", "gaussian", "poisson_gaussian")

#: Smallest expected electrons per pixel used in a logarithm (a model predicting exactly zero
#: electrons where one was counted would otherwise have log-likelihood -inf).
_MU_FLOOR = 1e-6


@pytree_dataclass
class NoiseModel:
    """How counts scatter around ``gain * mu``.

    Attributes:
        gain: recorded counts per electron [counts/e-].
        read_noise: Gaussian read-noise standard deviation [counts].
        kind: one of :data:`NOISE_KINDS` (static).
    """

    gain: jax.Array
    read_noise: jax.Array
    kind: str = static_field(default="poisson")


def make_noise_model(kind: str = "poisson", *, gain: float = 1.0, read_noise: float = 0.0) -> NoiseModel:
    """A validated :class:`NoiseModel` (gain [counts/e-] > 0, read noise [counts] >= 0)."""
    if kind not in NOISE_KINDS:
        raise InputError(f"unknown noise model {kind!r}: expected one of {NOISE_KINDS}")
    g = in_range(gain, "gain", "counts/e-", 0.0, 1e6, lo_open=True)
    r = in_range(read_noise, "read_noise", "counts", 0.0, 1e6)
    if kind == "gaussian" and r == 0:
        raise InputError(
            "the gaussian noise model needs read_noise > 0 [counts], got 0; "
            "use kind='poisson' for shot noise only"
        )
    if kind == "poisson" and r != 0:
        raise InputError(
            f"the poisson noise model has no read noise, got read_noise={r:g} counts; "
            "use kind='poisson_gaussian'"
        )
    return NoiseModel(gain=jnp.asarray(g, jnp.float32), read_noise=jnp.asarray(r, jnp.float32), kind=kind)


def noise_from_detector(detector: Detector) -> NoiseModel:
    """The noise model a :class:`forward.Detector` implies: Poisson, or Poisson-Gaussian with read noise."""
    r = float(detector.read_noise)
    kind = "poisson_gaussian" if r > 0 else "poisson"
    return make_noise_model(kind, gain=float(detector.gain), read_noise=r)


def _shift(noise: NoiseModel):
    """The shifted-Poisson offset ``s = (read_noise / gain)²`` [electrons] (0 for pure Poisson)."""
    if noise.kind == "poisson":
        return jnp.zeros((), jnp.float32)
    return (noise.read_noise / noise.gain) ** 2


def _z(noise: NoiseModel, counts):
    return jnp.maximum(jnp.asarray(counts) / noise.gain + _shift(noise), 0.0)


def _lift(x, ref):
    """``x`` with leading unit axes so its rank matches ``ref`` (explicit broadcasting)."""
    x = jnp.asarray(x)
    extra = jnp.ndim(ref) - x.ndim
    return x.reshape((1,) * extra + x.shape) if extra > 0 else x


def _data_part(noise: NoiseModel, counts, mu):
    """Hypothesis-dependent part per pixel: ``z log(m / z) - (m - z)`` (Poisson deviance / -2)."""
    mu = jnp.asarray(mu)
    counts = _lift(counts, mu)
    mu = _lift(mu, counts)
    if noise.kind == "gaussian":
        r = (jnp.asarray(counts) - noise.gain * mu) / noise.read_noise
        return -0.5 * r * r
    z = _z(noise, counts)
    m = jnp.maximum(mu + _shift(noise), _MU_FLOOR)
    # one division and one logarithm per pixel; 0 log 0 = 0
    return jnp.where(z > 0, z * jnp.log(m / jnp.maximum(z, 1e-30)), 0.0) - (m - z)


def _saturated_part(noise: NoiseModel, counts):
    """Data-only part per pixel: ``z log z - z - lgamma(z + 1) - log gain`` (or the Gaussian norm)."""
    if noise.kind == "gaussian":
        return jnp.broadcast_to(-0.5 * jnp.log(2 * jnp.pi * noise.read_noise**2), jnp.shape(counts))
    z = _z(noise, counts)
    return (
        jax.scipy.special.xlogy(z, jnp.maximum(z, _MU_FLOOR))
        - z
        - jax.scipy.special.gammaln(z + 1.0)
        - jnp.log(noise.gain)
    )


def pixel_log_likelihood(noise: NoiseModel, counts, mu):
    """log p(counts | mu) per pixel; ``mu`` [electrons] broadcasts against ``counts``."""
    return _data_part(noise, counts, mu) + _saturated_part(noise, counts)


def log_likelihood_split(noise: NoiseModel, counts, mu):
    """``(data_part, saturated_part)`` of the log-likelihood summed over the frame axes.

    ``counts`` has the frame shape; ``mu`` may carry leading batch axes (e.g. ``[H, nx, ny]``).
    The data part depends on ``mu`` and is 0 at ``mu == z`` (the saturated model); the
    saturated part depends on the counts only. Their sum is :func:`log_likelihood`.
    """
    counts = jnp.asarray(counts)
    axes = tuple(range(-counts.ndim, 0))
    data = jnp.sum(_data_part(noise, counts, mu), axis=axes)
    sat = jnp.sum(_saturated_part(noise, counts))
    return data, sat


def log_likelihood(noise: NoiseModel, counts, mu):
    """log p(counts | mu) summed over the frame axes (``counts.ndim`` trailing axes of ``mu``)."""
    data, sat = log_likelihood_split(noise, counts, mu)
    return data + sat


def sample_counts(rng_key, noise: NoiseModel, mu):
    """Draw counts with mean ``gain * mu`` under ``noise`` (float32; ``mu`` [electrons] >= 0)."""
    mu = jnp.maximum(jnp.asarray(mu, jnp.float32), 0.0)
    k1, k2 = jax.random.split(rng_key)
    if noise.kind == "gaussian":
        return noise.gain * mu + noise.read_noise * jax.random.normal(k2, mu.shape)
    n = jax.random.poisson(k1, mu, mu.shape).astype(jnp.float32)
    out = noise.gain * n
    if noise.kind == "poisson_gaussian":
        out = out + noise.read_noise * jax.random.normal(k2, mu.shape)
    return out


def poisson_fisher_weight(noise: NoiseModel, mu):
    """Per-pixel Fisher weight ``w`` with ``F = sum_pixels w (d mu / d theta)²`` [1/electrons].

    Poisson: ``1 / mu`` (e.g. Van Aert, den Dekker, van den Bos & Van Dyck, in Advances in
    Imaging and Electron Physics 130 (2004), eq. 3.38); shifted Poisson: ``1 / (mu + s)``;
    Gaussian with fixed variance: ``gain² / read_noise²``.
    """
    mu = jnp.asarray(mu)
    if noise.kind == "gaussian":
        return jnp.broadcast_to(noise.gain**2 / noise.read_noise**2, mu.shape)
    return 1.0 / jnp.maximum(mu + _shift(noise), _MU_FLOOR)


def _check_counts(counts, frame_shape: tuple[int, ...], noise: NoiseModel) -> np.ndarray:
    """Concrete check of a frame against the expected shape and the noise model (not in jit)."""
    c = np.asarray(counts)
    if c.dtype.kind not in "uif":
        raise InputError(f"frame counts must be numeric, got dtype {c.dtype}")
    if tuple(c.shape) != tuple(frame_shape):
        raise InputError(
            f"frame shape {list(c.shape)} does not match the simulated images {list(frame_shape)}; "
            "crop or bin the frame to the simulation grid (pixel (0, 0) at the cell origin)"
        )
    bad = ~np.isfinite(c)
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise InputError(f"frame counts must be finite, got {c[i]} at pixel {i}; mask or repair bad pixels")
    if noise.kind == "poisson" and c.min() < 0:
        i = tuple(int(k) for k in np.unravel_index(np.argmin(c), c.shape))
        raise InputError(
            f"frame counts must be >= 0 under the poisson noise model, got {c.min():g} at pixel {i}; "
            "use a poisson_gaussian noise model with read noise for dark-subtracted frames"
        )
    return c.astype(np.float32)
