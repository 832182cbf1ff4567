"""Experiment design: which beam condition to use next.

Hypothesis identity. The expected information gain of condition ``c`` about the hypothesis
``h`` is the mutual information between ``h`` and the next frame ``y`` (Lindley, Ann. Math.
Stat. 27 (1956) 986; Chaloner & Verdinelli, Stat. Sci. 10 (1995) 273, sec. 2.2):

    EIG(c) = H[p(h)] - E_{h ~ p(h), y ~ p(y | h, c)} H[p(h | y, c)]       [bits]

estimated by Monte Carlo: ``n_samples`` draws of ``h`` from the current posterior and of
``y`` from the noise model (fixed ``rng_key``, common random numbers across conditions so
rankings are not noise). The nuisance parameters are held at their current values (scale 1,
background 0 unless given) inside the design; this is the usual plug-in design approximation.
Conditions are ranked by EIG per electron (``EIG / (dose x field area)``), since dose is what
the specimen pays. Each proposal lists the pairs of live hypotheses it separates: those whose
expected log Bayes factor in one frame, the Kullback-Leibler divergence between their count
distributions, exceeds ``separation_nats`` (default ln 10, "strong" on Jeffreys' scale) in both
directions.

Refinement. :func:`rank_d_optimal` ranks conditions by ``log det F`` (D-optimality; Van Aert
et al., Adv. Imaging Electron Phys. 130 (2004) 1, sec. 4) from :mod:`inference.fisher`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError
from inference.fisher import log_det_fisher
from inference.noise import NoiseModel, _shift, log_likelihood, sample_counts

__all__ = [
    "Proposal",
    "expected_information_gain",
    "pairwise_kl",
    "rank_conditions",
    "rank_d_optimal",
    "design_images",
]

_LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Proposal:
    """A ranked candidate condition (plain data).

    Attributes:
        index: index into the candidate list.
        expected_gain_bits: EIG about the hypothesis identity in one frame [bits].
        gain_bits_per_electron: EIG per electron in the frame [bits/e-].
        dose: dose of the frame [e-/Å²].
        separates: pairs ``(i, j)`` of live hypotheses with expected |log B| > threshold both ways.
        label: free text describing the condition (e.g. "defocus 0 Å").
    """

    index: int
    expected_gain_bits: float
    gain_bits_per_electron: float
    dose: float
    separates: tuple[tuple[int, int], ...]
    label: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["separates"] = [list(p) for p in self.separates]
        return d


def design_images(simulate_fn, params_per_hypothesis, beams) -> jnp.ndarray:
    """``[C, H, nx, ny]`` images of every hypothesis under every candidate beam (a loop; cache it)."""
    if len(params_per_hypothesis) == 0:
        raise InputError("the library is empty: got 0 hypotheses to design for")
    if len(beams) == 0:
        raise InputError("no candidate beam conditions given")
    return jnp.stack([jnp.stack([simulate_fn(p, b) for p in params_per_hypothesis]) for b in beams])


def _posterior_entropy_after(noise, counts, mus, log_post):
    ll = log_likelihood(noise, counts, mus)  # [H]
    lq = log_post + ll
    lq = lq - jax.scipy.special.logsumexp(lq)
    return -jnp.sum(jnp.where(lq > -jnp.inf, jnp.exp(lq) * lq, 0.0))


@functools.partial(jax.jit, static_argnames=("n_samples",))
def _eig_nats(rng_key, images, exposures, lp, noise, n_samples):
    h_prior = -jnp.sum(jnp.where(lp > -jnp.inf, jnp.exp(lp) * lp, 0.0))
    k_h, k_y = jax.random.split(rng_key)
    hs = jax.random.categorical(k_h, lp, shape=(n_samples,))
    ykeys = jax.random.split(k_y, n_samples)

    def one_condition(imgs, e):
        mus = e * imgs

        def one(h, key):
            y = sample_counts(key, noise, mus[h])
            return _posterior_entropy_after(noise, y, mus, lp)

        return h_prior - jnp.mean(jax.vmap(one)(hs, ykeys))

    return jax.lax.map(lambda a: one_condition(*a), (images, exposures))


def expected_information_gain(rng_key, images, exposures, log_posterior, noise: NoiseModel, *, n_samples: int = 64):
    """``[C]`` EIG [bits] for ``images [C, H, nx, ny]`` at ``exposures [C]`` (dose x pixel area).

    The same draws of ``h`` and of the noise keys are used for every condition (common random
    numbers), so differences between conditions are not Monte Carlo noise."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise InputError(f"images must be [C, H, nx, ny] (conditions, hypotheses, frame), got shape {list(images.shape)}")
    if images.shape[1] == 0:
        raise InputError("the library is empty: got 0 hypotheses in the design images")
    lp = jnp.asarray(log_posterior, jnp.float32)
    if lp.shape != (images.shape[1],):
        raise InputError(f"log_posterior must be [H] with H={images.shape[1]}, got shape {list(lp.shape)}")
    lp = lp - jax.scipy.special.logsumexp(lp)
    ex = jnp.broadcast_to(jnp.asarray(exposures, jnp.float32), (images.shape[0],))
    return _eig_nats(rng_key, images, ex, lp, noise, int(n_samples)) / _LN2


@jax.jit
def pairwise_kl(images, exposure, noise: NoiseModel):
    """``[H, H]`` KL(p(y | i) || p(y | j)) [nats] for one condition: the expected log Bayes
    factor of ``i`` over ``j`` in one frame when ``i`` is true."""
    mu = jnp.asarray(exposure, jnp.float32) * jnp.asarray(images, jnp.float32)  # [H, nx, ny]
    if noise.kind == "gaussian":
        d = noise.gain * (mu[:, None] - mu[None, :]) / noise.read_noise
        return 0.5 * jnp.sum(d * d, axis=(-2, -1))
    m = jnp.maximum(mu + _shift(noise), 1e-6)
    mi, mj = m[:, None], m[None, :]
    return jnp.sum(mi * (jnp.log(mi) - jnp.log(mj)) - (mi - mj), axis=(-2, -1))


def rank_conditions(
    rng_key,
    images,
    doses,
    pixel_area: float,
    log_posterior,
    noise: NoiseModel,
    *,
    n_samples: int = 64,
    labels=None,
    live_threshold: float = 1e-3,
    separation_nats: float = math.log(10.0),
) -> list[Proposal]:
    """Candidate conditions ranked by EIG per electron, best first.

    ``images [C, H, nx, ny]`` (intensity), ``doses [C]`` [e-/Å²] of the next frame under each
    condition, ``pixel_area`` [Å²]. Live hypotheses (posterior >= ``live_threshold``) are
    checked for separation.
    """
    images = jnp.asarray(images, jnp.float32)
    d = np.broadcast_to(np.asarray(doses, dtype=np.float64), (images.shape[0],))
    if (d <= 0).any() or not np.all(np.isfinite(d)):
        raise InputError(f"doses must be finite and > 0 [e-/Å²], got {d.tolist()}")
    if labels is not None and len(labels) != images.shape[0]:
        raise InputError(f"{len(labels)} labels for {images.shape[0]} conditions")
    exposures = d * float(pixel_area)
    eig = np.asarray(expected_information_gain(rng_key, images, exposures, log_posterior, noise, n_samples=n_samples))
    n_pix = int(np.prod(images.shape[2:]))
    electrons = exposures * n_pix
    lp = np.asarray(log_posterior, dtype=np.float64)
    post = np.exp(lp - np.logaddexp.reduce(lp))
    live = np.flatnonzero(post >= live_threshold)
    out = []
    for c in range(images.shape[0]):
        kl = np.asarray(pairwise_kl(images[c], exposures[c], noise))
        pairs = tuple(
            (int(i), int(j))
            for a, i in enumerate(live)
            for j in live[a + 1 :]
            if min(kl[i, j], kl[j, i]) > separation_nats
        )
        out.append(
            Proposal(
                index=c,
                expected_gain_bits=float(eig[c]),
                gain_bits_per_electron=float(eig[c] / electrons[c]),
                dose=float(d[c]),
                separates=pairs,
                label="" if labels is None else str(labels[c]),
            )
        )
    return sorted(out, key=lambda p: -p.gain_bits_per_electron)


def rank_d_optimal(simulate_fn, params: dict, beams, noise: NoiseModel, exposures, free=None):
    """``(order, log_det [C])``: candidate beams ranked by D-optimality ``log det F`` of the free
    parameters at ``exposures [C]`` (dose x pixel area), best first."""
    if len(beams) == 0:
        raise InputError("no candidate beam conditions given")
    ex = np.broadcast_to(np.asarray(exposures, dtype=np.float64), (len(beams),))
    ld = np.asarray([float(log_det_fisher(simulate_fn, params, b, noise, e, free)) for b, e in zip(beams, ex)])
    return [int(i) for i in np.argsort(-ld)], ld
