"""Experiment design: which beam condition to use next.

Hypothesis identity. The expected information gain of condition ``c`` about the hypothesis
``h`` is the mutual information between ``h`` and the next frame ``y`` (Lindley, Ann. Math.
Stat. 27 (1956) 986; Chaloner & Verdinelli, Stat. Sci. 10 (1995) 273, sec. 2.2):

    EIG(c) = H[p(h)] - E_{h ~ p(h), y ~ p(y | h, c)} H[p(h | y, c)]       [bits]

estimated by Monte Carlo: ``n_samples`` draws of ``h`` from the current posterior and of
``y`` from the noise model (fixed ``rng_key``, common random numbers across conditions so
rankings are not noise; the counts are drawn by numpy, seeded from the key). The nuisance
parameters are held at their current values (scale 1, background 0 unless given) inside the
design; this is the usual plug-in design approximation.
Conditions are ranked by EIG per electron (``EIG / (dose x field area)``), since dose is what
the specimen pays. Each proposal lists the pairs of live hypotheses it separates: those whose
expected log Bayes factor in one frame, the Kullback-Leibler divergence between their count
distributions, exceeds ``separation_nats`` (default ln 10, "strong" on Jeffreys' scale) in both
directions.

Deciding with the fewest electrons. One-frame EIG is myopic: once a few hypotheses remain, the
frame that maximises the expected entropy drop is not the condition that reaches the decision
threshold soonest, and its Monte Carlo estimate is noisy exactly there (EIG of a near-decided
posterior is small). :func:`allocate_conditions` instead solves Chernoff's sequential design
(Chernoff, Ann. Math. Stat. 30 (1959) 755; Naghshvar & Javidi, Ann. Stat. 41 (2013) 2703): if
``i`` is true, the log Bayes factor against ``j`` grows per e-/Å² at condition ``c`` by the rate
``r_c(i, j) = KL_c(i || j) / dose_c``, and it still has to grow by

    need_ij = max(0, tau - (log p_i - log p_j)),   tau = log(target / (1 - target)) + log(H - 1)

to reach the posterior ``target``. Spending the fractions ``w_c`` of the remaining dose ``D`` on
the conditions, the decision needs ``D sum_c w_c r_c(i, j) >= need_ij`` for every ``j``; the
fewest electrons come from the linear programme

    maximise t   subject to   sum_c w_c r_c(i, j) / need_ij >= t  (every j with need_ij > 0),
                              sum_c w_c = 1,  w >= 0,

with ``D_i = 1 / t`` [e-/Å²]. The allocation is averaged over the plausible truths with their
posterior weights (``p_i >= min_prob``), and the condition with the largest share is used next;
as frames arrive the needs shrink and the shares move, so the sequence of conditions tracks the
optimal mixture. The rates assume the nuisance parameters known (the plug-in approximation above);
Chernoff's procedure is asymptotically optimal (expected sample size to the threshold) as the
target tends to 1. The same LP with every condition gives the bound that no policy over the
candidate set beats asymptotically, :func:`decision_dose_bound`.

Conditions with different frames. ``images`` is ``[C, H, nx, ny]`` when every condition gives
the same frame, or a sequence of ``C`` arrays ``[H, ..., nx, ny]`` when they do not (an HRTEM
camera frame beside a 4D-STEM frame ``[H, kx, ky, sx, sy]``, channels first, last two axes
spatial); ``pixel_area`` is then one value per condition (camera pixel, scan step). A frame's
electrons are dose x pixel area x its spatial pixels; every pixel of every channel is a count.

Refinement. :func:`rank_d_optimal` ranks conditions by ``log det F`` (D-optimality; Van Aert
et al., Adv. Imaging Electron Phys. 130 (2004) 1, sec. 4) from :mod:`inference.fisher`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError
from inference.fisher import log_det_fisher
from inference.noise import _MU_FLOOR, NoiseModel, _shift

__all__ = [
    "Allocation",
    "allocate_conditions",
    "decision_dose_bound",
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


def _conditions(images) -> list:
    """``images`` as a list of ``C`` float32 arrays ``[H, ..., nx, ny]`` sharing ``H`` (module
    docstring: one ``[C, H, nx, ny]`` array or a sequence of per-condition arrays)."""
    if isinstance(images, (list, tuple)):
        out = [np.asarray(a, np.float32) for a in images]
    else:
        a = np.asarray(images, np.float32)
        if a.ndim != 4:
            raise InputError(f"images must be [C, H, nx, ny] (conditions, hypotheses, frame) or a list of per-condition "
                             f"[H, ..., nx, ny] arrays, got shape {list(a.shape)}")  # fmt: skip
        out = list(a)
    if not out:
        raise InputError("no candidate beam conditions given")
    for c, a in enumerate(out):
        if a.ndim < 3:
            raise InputError(f"condition {c}: images must be [H, ..., nx, ny], got shape {list(a.shape)}")
    hs = {a.shape[0] for a in out}
    if len(hs) != 1:
        raise InputError(f"every condition needs images of the same hypotheses, got {sorted(hs)} hypotheses")
    if out[0].shape[0] == 0:
        raise InputError("the library is empty: got 0 hypotheses in the design images")
    return out


def _per_condition(value, n_c: int, name: str, unit: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, n_c)):
        raise InputError(f"{name} must be one value or one per condition ({n_c}), got shape {list(v.shape)}")
    v = np.broadcast_to(v.reshape(-1), (n_c,))
    if (v <= 0).any() or not np.all(np.isfinite(v)):
        raise InputError(f"{name} must be finite and > 0 [{unit}], got {v.tolist()}")
    return v


@jax.jit
def _mean_entropy_after(ys, mus, lp, noise):
    """Mean over the draws ``ys [S, ...]`` of the posterior entropy after each [nats].

    The log-likelihoods of every draw under every hypothesis, up to terms of the draw alone
    (which cancel in the posterior), are one matrix product: Poisson (shifted by the read noise)
    ``z . log m_h - sum m_h`` (:func:`inference.noise._data_part`), Gaussian
    ``(g / r²) y . mu_h - g² / (2 r²) |mu_h|²``."""
    n_s, n_h = ys.shape[0], mus.shape[0]
    y = ys.reshape(n_s, -1)
    mu = mus.reshape(n_h, -1)
    hi = jax.lax.Precision.HIGHEST
    if noise.kind == "gaussian":
        c = noise.gain / noise.read_noise**2
        ll = c * jnp.matmul(y, mu.T, precision=hi) - 0.5 * c * noise.gain * jnp.sum(mu * mu, axis=1)[None, :]
    else:
        z = jnp.maximum(y / noise.gain + _shift(noise), 0.0)
        m = jnp.maximum(mu + _shift(noise), _MU_FLOOR)
        ll = jnp.matmul(z, jnp.log(m).T, precision=hi) - jnp.sum(m, axis=1)[None, :]
    lq = lp[None, :] + ll
    lq = lq - jax.scipy.special.logsumexp(lq, axis=1, keepdims=True)
    return jnp.mean(-jnp.sum(jnp.where(lq > -jnp.inf, jnp.exp(lq) * lq, 0.0), axis=1))


def _sample_counts_np(rng: np.random.Generator, noise: NoiseModel, mu: np.ndarray) -> np.ndarray:
    """:func:`inference.noise.sample_counts` drawn by numpy: the design draws ``n_samples``
    frames per condition, and ``jax.random.poisson`` on the CPU takes ~15x longer (5 s against
    0.3 s for 32 sparse 4D-STEM frames of 3e5 pixels)."""
    mu = np.maximum(np.asarray(mu, np.float64), 0.0)
    gain, read = float(noise.gain), float(noise.read_noise)
    if noise.kind == "gaussian":
        return (gain * mu + read * rng.standard_normal(mu.shape)).astype(np.float32)
    out = gain * rng.poisson(mu).astype(np.float64)
    if noise.kind == "poisson_gaussian":
        out = out + read * rng.standard_normal(mu.shape)
    return out.astype(np.float32)


def expected_information_gain(rng_key, images, exposures, log_posterior, noise: NoiseModel, *, n_samples: int = 64):
    """``[C]`` EIG [bits] for ``images`` (``[C, H, nx, ny]`` or a list of ``[H, ..., nx, ny]``,
    module docstring) at ``exposures [C]`` (dose x pixel area).

    The same draws of ``h`` and of the noise keys are used for every condition (common random
    numbers), so differences between conditions are not Monte Carlo noise."""
    conds = _conditions(images)
    n_h = conds[0].shape[0]
    lp = jnp.asarray(log_posterior, jnp.float32)
    if lp.shape != (n_h,):
        raise InputError(f"log_posterior must be [H] with H={n_h}, got shape {list(lp.shape)}")
    lp = lp - jax.scipy.special.logsumexp(lp)
    ex = np.broadcast_to(np.asarray(exposures, np.float32), (len(conds),))
    h_prior = float(-jnp.sum(jnp.where(lp > -jnp.inf, jnp.exp(lp) * lp, 0.0)))
    k_h, k_y = jax.random.split(rng_key)
    hs = np.asarray(jax.random.categorical(k_h, lp, shape=(int(n_samples),)))
    seed = [int(v) for v in np.asarray(jax.random.key_data(k_y)).ravel()]
    out = np.zeros(len(conds))
    for c, imgs in enumerate(conds):
        rng = np.random.default_rng(seed)  # the same stream for every condition: common random numbers
        mus = ex[c] * imgs
        ys = np.stack([_sample_counts_np(rng, noise, mus[h]) for h in hs])
        out[c] = h_prior - float(_mean_entropy_after(jnp.asarray(ys), jnp.asarray(mus), lp, noise))
    return jnp.asarray(out / _LN2, jnp.float32)


@jax.jit
def pairwise_kl(images, exposure, noise: NoiseModel):
    """``[H, H]`` KL(p(y | i) || p(y | j)) [nats] for one condition (``images [H, ..., nx, ny]``):
    the expected log Bayes factor of ``i`` over ``j`` in one frame when ``i`` is true."""
    mu = jnp.asarray(exposure, jnp.float32) * jnp.asarray(images, jnp.float32)  # [H, ..., nx, ny]
    axes = tuple(range(2, mu.ndim + 1))
    if noise.kind == "gaussian":
        d = noise.gain * (mu[:, None] - mu[None, :]) / noise.read_noise
        return 0.5 * jnp.sum(d * d, axis=axes)
    m = jnp.maximum(mu + _shift(noise), 1e-6)
    mi, mj = m[:, None], m[None, :]
    return jnp.sum(mi * (jnp.log(mi) - jnp.log(mj)) - (mi - mj), axis=axes)


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

    ``images`` (intensity; ``[C, H, nx, ny]`` or a list of ``[H, ..., nx, ny]``, module
    docstring), ``doses [C]`` [e-/Å²] of the next frame under each condition, ``pixel_area``
    [Å²] (one, or one per condition). Live hypotheses (posterior >= ``live_threshold``) are
    checked for separation.
    """
    images = _conditions(images)
    n_c = len(images)
    d = _per_condition(doses, n_c, "doses", "e-/Å²")
    if labels is not None and len(labels) != n_c:
        raise InputError(f"{len(labels)} labels for {n_c} conditions")
    exposures = d * _per_condition(pixel_area, n_c, "pixel_area", "Å²")
    eig = np.asarray(expected_information_gain(rng_key, images, exposures, log_posterior, noise, n_samples=n_samples))
    electrons = exposures * np.array([np.prod(a.shape[-2:]) for a in images], np.float64)
    lp = np.asarray(log_posterior, dtype=np.float64)
    post = np.exp(lp - np.logaddexp.reduce(lp))
    live = np.flatnonzero(post >= live_threshold)
    out = []
    for c in range(n_c):
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


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Chernoff's allocation of the remaining dose over the candidate conditions (plain data).

    Attributes:
        weights: ``[C]`` share of the remaining dose per condition (sums to 1; all 0 when decided).
        expected_dose: expected dose still needed to reach the target under the optimal mixture,
            posterior-weighted over the plausible truths [e-/Å²].
        expected_dose_alone: ``[C]`` the same if only condition ``c`` were used from now on
            [e-/Å²] (``inf`` where ``c`` cannot separate some plausible pair).
        order: condition indices, largest share first (ties: smaller ``expected_dose_alone``).
    """

    weights: np.ndarray
    expected_dose: float
    expected_dose_alone: np.ndarray
    order: tuple[int, ...]


def _rates(images, doses, pixel_area, noise) -> np.ndarray:
    """``[C, H, H]`` KL divergence per e-/Å² of dose: the growth rate of the expected log Bayes factor."""
    d = np.asarray(doses, dtype=np.float64)
    pa = _per_condition(pixel_area, len(images), "pixel_area", "Å²")
    return np.stack([
        np.asarray(pairwise_kl(images[c], d[c] * pa[c], noise), np.float64) / d[c]
        for c in range(len(images))
    ])  # fmt: skip


def _max_min_rate(rates_i: np.ndarray) -> tuple[float, np.ndarray]:
    """``(t, w)`` maximising ``min_j sum_c w_c rates_i[c, j]`` over the simplex (linear programme)."""
    from scipy.optimize import linprog

    n_c, n_j = rates_i.shape
    if n_j == 0:
        return math.inf, np.full(n_c, 1.0 / n_c)
    cost = np.zeros(n_c + 1)
    cost[-1] = -1.0
    a_ub = np.concatenate([-rates_i.T, np.ones((n_j, 1))], axis=1)
    a_eq = np.concatenate([np.ones((1, n_c)), np.zeros((1, 1))], axis=1)
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(n_j), A_eq=a_eq, b_eq=[1.0],
                  bounds=[(0, None)] * n_c + [(None, None)], method="highs")  # fmt: skip
    if not res.success:
        raise RuntimeError(f"the allocation linear programme failed: {res.message}")
    return float(-res.fun), np.clip(res.x[:n_c], 0.0, None)


def _check_design_inputs(images, doses, log_posterior):
    images = _conditions(images)
    d = _per_condition(doses, len(images), "doses", "e-/Å²")
    lp = np.asarray(log_posterior, dtype=np.float64)
    n_h = images[0].shape[0]
    if lp.shape != (n_h,):
        raise InputError(f"log_posterior must be [H] with H={n_h}, got shape {list(lp.shape)}")
    return images, d, lp - np.logaddexp.reduce(lp)


def allocate_conditions(images, doses, pixel_area: float, log_posterior, noise: NoiseModel, *,
                        target: float = 0.99, min_prob: float = 1e-3) -> Allocation:  # fmt: skip
    """Chernoff's allocation (module docstring) of the remaining dose over ``images``
    (``[C, H, nx, ny]`` or a list of ``[H, ..., nx, ny]``) at ``doses [C]`` [e-/Å²] per frame and
    ``pixel_area`` [Å²] (one, or one per condition), for the posterior ``log_posterior [H]``."""
    if not 0.5 <= target < 1.0:
        raise InputError(f"target posterior must be in [0.5, 1), got {target!r}")
    images, d, lp = _check_design_inputs(images, doses, log_posterior)
    rates = _rates(images, d, pixel_area, noise)
    p = np.exp(lp)
    live = np.flatnonzero(p >= min_prob)
    tau = math.log(target / (1.0 - target)) + math.log(max(len(p) - 1, 1))
    n_c = len(images)
    weights, alone, dose = np.zeros(n_c), np.zeros(n_c), 0.0
    mass = float(p[live].sum())
    for i in live:
        others = np.array([j for j in range(len(p)) if j != i])
        need = tau - (lp[i] - lp[others])
        js = others[need > 0]
        if js.size == 0:
            continue  # i would already be decided
        r = rates[:, i, js] / need[need > 0][None, :]
        t, w = _max_min_rate(r)
        wi = p[i] / mass
        weights += wi * w
        dose += wi / t
        with np.errstate(divide="ignore"):
            alone += wi / np.min(r, axis=1)
    if weights.sum() > 0:
        weights /= weights.sum()
    order = tuple(int(c) for c in sorted(range(n_c), key=lambda c: (-round(weights[c], 9), alone[c])))
    return Allocation(weights=weights, expected_dose=float(dose), expected_dose_alone=alone, order=order)


def decision_dose_bound(images, doses, pixel_area: float, noise: NoiseModel, *, target: float = 0.99,
                        priors=None, conditions=None) -> np.ndarray:  # fmt: skip
    """``[H]`` the least dose [e-/Å²] to reach ``target`` from the prior when hypothesis ``i`` is
    true, over any mixture of ``conditions`` (default all): the asymptotic bound of the module
    docstring (the known-truth allocation; a policy must also learn which ``i`` holds)."""
    images = _conditions(images)
    n_h = images[0].shape[0]
    images, d, _ = _check_design_inputs(images, doses, np.zeros(n_h))
    pr = np.ones(n_h) if priors is None else np.asarray(priors, np.float64)
    lp = np.log(pr / pr.sum())
    sel = np.arange(len(images)) if conditions is None else np.asarray(conditions, int)
    pa = _per_condition(pixel_area, len(images), "pixel_area", "Å²")
    rates = _rates([images[c] for c in sel], d[sel], pa[sel], noise)
    tau = math.log(target / (1.0 - target)) + math.log(max(n_h - 1, 1))
    out = np.zeros(n_h)
    for i in range(n_h):
        others = np.array([j for j in range(n_h) if j != i])
        need = np.maximum(tau - (lp[i] - lp[others]), 1e-12)
        t, _ = _max_min_rate(rates[:, i, others] / need[None, :])
        out[i] = 1.0 / t
    return out
