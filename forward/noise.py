"""Dose and detector noise: from a noise-free simulation to the counts a camera records.

A simulation gives, per pixel, the *fraction of the beam* it receives: for STEM the detector
value (fractions of the probe, DESIGN 3.4), for HRTEM the image intensity relative to vacuum
(a plane wave has intensity 1 in every pixel). With a dose ``D`` [e-/Å²] spread over a pixel (or
scan-step) of area ``A`` [Å²], the number of electrons that pixel receives is Poisson with mean

    lambda = D * A * signal                                   (expected_electrons)

and the camera records ``gain * N + read`` with ``N ~ Poisson(lambda)`` and Gaussian read noise
``read ~ Normal(0, read_noise^2)`` [counts]: the Poisson–Gaussian model of a counting/integrating
detector (Snyder, Hammoud & White, J. Opt. Soc. Am. A 10 (1993) 1014, eq. 3; for electron
cameras see Vulović et al., Acta Cryst. D 66 (2010) 1251). Low dose is the normal case here:
counts are never approximated as Gaussian.

All functions are pure JAX; ``rng_key`` is the explicit first argument of the sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from forward.beam import Detector
from forward.errors import InputError

__all__ = ["expected_electrons", "count_moments", "sample_frame", "pixel_area"]


def pixel_area(sampling) -> float:
    """Area of one pixel or scan step ``dx * dy`` [Å²] from ``sampling = (dx, dy)`` [Å]."""
    s = tuple(float(v) for v in (sampling if hasattr(sampling, "__len__") else (sampling, sampling)))
    if len(s) != 2 or min(s) <= 0:
        raise InputError(
            f"sampling must be one or two positive pixel sizes (dx, dy) [Å], got {sampling!r}"
        )
    return s[0] * s[1]


def expected_electrons(signal, dose, area):
    """Mean number of electrons per pixel, ``dose * area * max(signal, 0)``.

    The one definition: :mod:`inference.noise` imports it. Negative intensities are clipped to 0:
    a Poisson mean cannot be negative, and a simulated intensity is negative only through float
    round-off (FFT resampling, band-limited interpolation, ~1e-7 of the beam), where clipping
    changes nothing physical and keeps the likelihoods and the sampler defined. For the
    non-negative intensities of a simulation it is exactly ``dose * area * signal``; the gradient
    with respect to a positive intensity is unchanged.

    Args:
        signal: noise-free simulation, fractions of the beam per pixel (any shape, e.g.
            ``[sx, sy]``, ``[sx, sy, segment]``, ``[sx, sy, kx, ky]`` or an HRTEM ``[nx, ny]``
            image normalised to vacuum = 1).
        dose: electron dose of the frame [e-/Å²] (scalar, may be traced).
        area: pixel or scan-step area [Å²] (see :func:`pixel_area`).

    Returns:
        ``lambda`` [electrons], the shape of ``signal``.
    """
    return jnp.maximum(jnp.asarray(signal), 0.0) * (jnp.asarray(dose) * jnp.asarray(area))


def count_moments(expected, detector: Detector):
    """Mean and variance of the recorded counts: ``gain * lambda`` and ``gain² lambda + read²``.

    The moments of the Poisson–Gaussian model (module docstring) for use in likelihoods.

    Args:
        expected: ``lambda`` [electrons] from :func:`expected_electrons`.
        detector: :class:`forward.beam.Detector` (``gain`` [counts/e-], ``read_noise`` [counts]).

    Returns:
        ``(mean, variance)`` [counts, counts²], each the shape of ``expected``.
    """
    lam = jnp.asarray(expected)
    g = jnp.asarray(detector.gain)
    r = jnp.asarray(detector.read_noise)
    return g * lam, g * g * lam + r * r


def sample_frame(rng_key, expected, detector: Detector):
    """Draw one noisy frame [counts]: ``gain * Poisson(expected) + Normal(0, read_noise²)``.

    Works for any simulation (STEM annular/segmented/4D-STEM or HRTEM) once its signal has been
    turned into expected electrons by :func:`expected_electrons`.

    Args:
        rng_key: a ``jax.random`` key.
        expected: ``lambda`` [electrons] per pixel (any shape, >= 0).
        detector: :class:`forward.beam.Detector` with gain [counts/e-] and read noise [counts].

    Returns:
        float32 counts, the shape of ``expected``.
    """
    lam = jnp.maximum(jnp.asarray(expected, dtype=jnp.float32), 0.0)
    k_shot, k_read = jax.random.split(rng_key)
    electrons = jax.random.poisson(k_shot, lam, dtype=jnp.int32).astype(jnp.float32)
    read = jax.random.normal(k_read, lam.shape, dtype=jnp.float32)
    return jnp.asarray(detector.gain, jnp.float32) * electrons + jnp.asarray(
        detector.read_noise, jnp.float32
    ) * read
