"""Posterior over a discrete library, updated frame by frame, and the rejection rule.

Bayes' theorem over hypotheses ``h`` with prior weights ``w_h`` and per-frame evidences
``p(y_t | h)`` (nuisance parameters marginalised per frame, so frames are conditionally
independent given ``h``):

    log p(h | y_1..T) = log w_h + sum_t log p(y_t | h) - log sum_k w_k prod_t p(y_t | k)

The sequential update adds one frame's log-evidence; the result equals the batch posterior
exactly (tested). The state is a frozen pytree and the update a pure function, so it runs
under ``jit`` / ``lax.scan``.

Rejection (:class:`RejectionRule`): hypothesis ``h`` is rejected when its Bayes factor against
the current best, ``B_h = p(y | h) / p(y | best)``, or (``kind="posterior"``) its posterior
probability falls below ``threshold``. The default, ``B < 1e-3``, is beyond "decisive" on
Jeffreys' scale (Jeffreys, Theory of Probability, 3rd ed. (1961), App. B; Kass & Raftery,
J. Am. Stat. Assoc. 90 (1995) 773, sec. 3.2). With calibrated posteriors the true hypothesis is
wrongly rejected with probability at most about ``(prior odds) x threshold`` per decision.
Each rejection is recorded (:class:`Rejection`) with its Bayes factor, frames and dose used.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError, pytree_dataclass, static_field

__all__ = [
    "PosteriorState",
    "init_posterior",
    "update_posterior",
    "posterior_probs",
    "log_bayes_factors",
    "absolute_log_evidence",
    "RejectionRule",
    "make_rejection_rule",
    "Rejection",
    "rejected_mask",
    "find_rejections",
    "log_prior_from_weights",
    "rule_text",
]

REJECTION_KINDS = ("bayes_factor", "posterior")


def log_prior_from_weights(weights) -> np.ndarray:
    """Validated, normalised log prior ``[H]`` from non-negative weights (not all zero)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise InputError(f"prior weights must be a 1-D array [H], got shape {list(w.shape)}")
    if w.size == 0:
        raise InputError("the library is empty: got 0 prior weights; add at least one hypothesis")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        i = int(np.argmax(~np.isfinite(w) | (w < 0)))
        raise InputError(f"prior weights must be finite and >= 0, got {w[i]} at hypothesis {i}")
    if w.sum() <= 0:
        raise InputError("prior weights are all zero: at least one hypothesis needs a positive prior")
    with np.errstate(divide="ignore"):
        return np.log(w / w.sum())


@pytree_dataclass
class PosteriorState:
    """Running posterior over ``H`` hypotheses.

    Per-frame log-evidences of Poisson frames are large (about -1e5 nats for 1e4 pixels), and
    float32 resolves only ~0.25 nats at the -3e6 that thirty of them add up to. The state
    therefore accumulates each frame's log-evidence *relative to that frame's best*
    (``log_evidence``), which is all posteriors and Bayes factors depend on, and keeps the sum
    of the subtracted maxima apart (``log_offset``): the absolute log p(y_1..t | h) is
    ``log_evidence + log_offset`` (:func:`absolute_log_evidence`).

    Attributes:
        log_prior: ``[H]`` normalised log prior weights.
        log_evidence: ``[H]`` accumulated log p(y_1..t | h) - log_offset [nats].
        log_offset: accumulated per-frame maximum log-evidence [nats].
        n_frames: frames used so far.
        dose: accumulated dose [e-/Å²].
    """

    log_prior: jax.Array
    log_evidence: jax.Array
    log_offset: jax.Array
    n_frames: jax.Array
    dose: jax.Array


def init_posterior(prior_weights) -> PosteriorState:
    """The state before any frame: the normalised prior."""
    lp = jnp.asarray(log_prior_from_weights(prior_weights), jnp.float32)
    return PosteriorState(
        log_prior=lp,
        log_evidence=jnp.zeros_like(lp),
        log_offset=jnp.zeros((), jnp.float32),
        n_frames=jnp.zeros((), jnp.int32),
        dose=jnp.zeros((), jnp.float32),
    )


def update_posterior(state: PosteriorState, log_evidence_frame, dose=0.0) -> PosteriorState:
    """Add one frame's per-hypothesis log-evidence ``[H]`` (and its dose [e-/Å²]).

    The frame's maximum is subtracted before accumulating (in float64 when the input is a
    concrete array), so the relative values that decide the posterior keep float32 precision.
    """
    if isinstance(log_evidence_frame, jax.core.Tracer):
        le = jnp.asarray(log_evidence_frame, jnp.float32)
        ref = jnp.max(le)
        rel = le - ref
    else:
        le64 = np.asarray(log_evidence_frame, dtype=np.float64)
        ref64 = float(np.max(le64))
        rel, ref = jnp.asarray(le64 - ref64, jnp.float32), jnp.asarray(ref64, jnp.float32)
    return PosteriorState(
        log_prior=state.log_prior,
        log_evidence=state.log_evidence + rel,
        log_offset=state.log_offset + ref,
        n_frames=state.n_frames + 1,
        dose=state.dose + jnp.asarray(dose, jnp.float32),
    )


def log_posterior(state: PosteriorState):
    """``[H]`` normalised log posterior."""
    a = state.log_prior + state.log_evidence
    return a - jax.scipy.special.logsumexp(a)


def posterior_probs(state: PosteriorState):
    """``[H]`` posterior probabilities."""
    return jnp.exp(log_posterior(state))


def log_marginal(state: PosteriorState):
    """log p(y_1..t) = log sum_h w_h p(y | h): the evidence of the whole library [nats]."""
    return jax.scipy.special.logsumexp(state.log_prior + state.log_evidence) + state.log_offset


def absolute_log_evidence(state: PosteriorState) -> np.ndarray:
    """``[H]`` log p(y_1..t | h) [nats] as float64 (the offset carries float32 rounding of
    the per-frame maxima, ~1e-7 relative; posteriors never use it)."""
    return np.asarray(state.log_evidence, np.float64) + float(state.log_offset)


def log_bayes_factors(state: PosteriorState):
    """``[H]`` log Bayes factor of each hypothesis against the maximum-posterior one [nats]."""
    best = jnp.argmax(state.log_prior + state.log_evidence)
    return state.log_evidence - state.log_evidence[best]


@pytree_dataclass
class RejectionRule:
    """Reject ``h`` when its Bayes factor against the best (``kind="bayes_factor"``) or its
    posterior probability (``kind="posterior"``) is below ``threshold``."""

    threshold: jax.Array
    kind: str = static_field(default="bayes_factor")


def make_rejection_rule(kind: str = "bayes_factor", threshold: float = 1e-3) -> RejectionRule:
    """A validated :class:`RejectionRule`; threshold in (0, 1)."""
    if kind not in REJECTION_KINDS:
        raise InputError(f"unknown rejection rule {kind!r}: expected one of {REJECTION_KINDS}")
    t = float(threshold)
    if not (0 < t < 1):
        raise InputError(f"rejection threshold must be in (0, 1), got {threshold!r} (default 1e-3)")
    return RejectionRule(threshold=jnp.asarray(t, jnp.float32), kind=kind)


def rejected_mask(state: PosteriorState, rule: RejectionRule):
    """``[H]`` bool: which hypotheses the rule rejects now."""
    if rule.kind == "posterior":
        return log_posterior(state) < jnp.log(rule.threshold)
    return log_bayes_factors(state) < jnp.log(rule.threshold)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """One rejection decision (plain data: recorded, serialised, never jitted).

    Attributes:
        index: hypothesis index in the library order.
        hypothesis_id: its id ("" if not given).
        log10_bayes_factor: log10 B against the best hypothesis at the decision.
        posterior: its posterior probability at the decision.
        best_index: index of the best hypothesis.
        n_frames: frames used; dose: accumulated dose [e-/Å²].
        rule: the rule, as text.
        reason: one human-readable sentence.
    """

    index: int
    hypothesis_id: str
    log10_bayes_factor: float
    posterior: float
    best_index: int
    n_frames: int
    dose: float
    rule: str
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rule_text(rule: RejectionRule) -> str:
    """The rule in words, e.g. ``Bayes factor vs best < 0.001``."""
    name = "Bayes factor vs best" if rule.kind == "bayes_factor" else "posterior"
    return f"{name} < {float(rule.threshold):g}"


def find_rejections(state: PosteriorState, rule: RejectionRule, ids=None) -> list[Rejection]:
    """The :class:`Rejection` records for every hypothesis ``rule`` rejects in ``state``."""
    mask = np.asarray(rejected_mask(state, rule))
    lbf = np.asarray(log_bayes_factors(state), dtype=np.float64)
    post = np.asarray(posterior_probs(state), dtype=np.float64)
    best = int(np.argmax(np.asarray(state.log_prior + state.log_evidence)))
    n, dose = int(state.n_frames), float(state.dose)
    out = []
    for i in np.flatnonzero(mask):
        l10 = float(lbf[i] / math.log(10))
        hid = "" if ids is None else str(ids[i])
        out.append(
            Rejection(
                index=int(i),
                hypothesis_id=hid,
                log10_bayes_factor=l10,
                posterior=float(post[i]),
                best_index=best,
                n_frames=n,
                dose=dose,
                rule=rule_text(rule),
                reason=(
                    f"Bayes factor 10^{l10:.1f} against hypothesis {best} "
                    f"(posterior {post[i]:.2e}) after {n} frames, {dose:g} e-/Å²; rule: {rule_text(rule)}"
                ),
            )
        )
    return out
