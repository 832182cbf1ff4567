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
    "apply_rule",
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
    """One rejection decision, or a return (plain data: recorded, serialised, never jitted).

    The one record type of the rule, in batch scoring (:func:`find_rejections`) and in the live
    session (:func:`apply_rule`; the session record's ``rejection`` and ``return`` lines).

    Attributes:
        index: hypothesis index in the library order; hypothesis_id, name: its id and name ("" if
            not given).
        log10_bayes_factor: log10 B against the best hypothesis at the decision.
        posterior: its posterior probability at the decision.
        best_index, best_name: the best hypothesis.
        n_frames: frames in the evidence; dose: their dose [e-/Å²].
        rule: the rule, as text.
        reason: one human-readable sentence.
        event: ``"rejected"`` or ``"returned"`` (its Bayes factor rose above the rule again).
        step: the live step of the decision (None in batch scoring); frames: the frame indices of
            that step.
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
    name: str = ""
    best_name: str = ""
    event: str = "rejected"
    step: int | None = None
    frames: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_record(self) -> dict:
        """The session record's form (``rejection`` / ``return`` line fields)."""
        d = {"id": self.hypothesis_id, "name": self.name, "step": self.step,
             "log10_bayes_factor": self.log10_bayes_factor, "posterior": self.posterior, "best": self.best_name,
             "frames": list(self.frames), "n_frames": self.n_frames, "dose_e_per_A2": self.dose, "rule": self.rule,
             "reason": self.reason}  # fmt: skip
        return d


def rule_text(rule: RejectionRule) -> str:
    """The rule in words, e.g. ``Bayes factor vs best < 0.001``."""
    name = "Bayes factor vs best" if rule.kind == "bayes_factor" else "posterior"
    return f"{name} < {float(rule.threshold):g}"


def _below(rule: RejectionRule, log_bf: np.ndarray, log_post: np.ndarray) -> np.ndarray:
    if rule.kind == "posterior":
        return log_post < math.log(float(rule.threshold))
    return log_bf < math.log(float(rule.threshold))


def apply_rule(rule: RejectionRule, log_bf, log_post, rejected=(), *, ids=None, names=None, active=None,
               n_frames: int = 0, dose: float = 0.0, step: int | None = None, frames=()) -> tuple[frozenset, list[Rejection]]:  # fmt: skip
    """The rejection rule applied to the current evidence: ``(rejected now, events)``.

    ``log_bf [H]``: log Bayes factors against the best [nats]; ``log_post [H]``: log posterior;
    ``rejected``: indices rejected before. A hypothesis below the rule that was not rejected gives
    a ``"rejected"`` :class:`Rejection`; one rejected before that is above it again gives a
    ``"returned"`` one (new evidence or, in a live session, a new segment). ``active [H]`` bool:
    hypotheses the rule looks at (dropped ones are neither rejected nor returned). ``n_frames``,
    ``dose`` [e-/Å²]: the evidence the decision rests on, for the reason."""
    lbf = np.asarray(log_bf, dtype=np.float64)
    lpost = np.asarray(log_post, dtype=np.float64)
    h = lbf.shape[0]
    ids = [""] * h if ids is None else [str(i) for i in ids]
    names = ids if names is None else [str(n) for n in names]
    act = np.ones(h, bool) if active is None else np.asarray(active, bool)
    best = int(np.argmax(np.where(act, lpost, -np.inf)))
    below = _below(rule, lbf, lpost) & act
    before = set(int(i) for i in rejected)
    now, events = set(), []
    post = np.exp(lpost)
    rt = rule_text(rule)
    best_name = names[best] if names[best] else f"hypothesis {best}"
    for i in range(h):
        if not act[i]:
            continue
        l10 = float(lbf[i] / math.log(10))
        common = dict(index=i, hypothesis_id=ids[i], log10_bayes_factor=l10, posterior=float(post[i]), best_index=best,
                      n_frames=int(n_frames), dose=float(dose), rule=rt, name=names[i], best_name=best_name,
                      step=step, frames=tuple(int(f) for f in frames))  # fmt: skip
        if below[i]:
            now.add(i)
            if i not in before:
                reason = (f"Bayes factor 10^{l10:.1f} against {best_name} (posterior {post[i]:.2e}) after {int(n_frames)} "
                          f"frames, {float(dose):g} e-/Å²; rule: {rt}")  # fmt: skip
                events.append(Rejection(**common, reason=reason, event="rejected"))
        elif i in before:
            reason = f"Bayes factor 10^{l10:.1f} against {best_name} rose above the rule ({rt}) again: new evidence or a new segment"
            events.append(Rejection(**common, reason=reason, event="returned"))
    return frozenset(now), events


def find_rejections(state: PosteriorState, rule: RejectionRule, ids=None, names=None) -> list[Rejection]:
    """The :class:`Rejection` records for every hypothesis ``rule`` rejects in ``state``."""
    lbf = np.asarray(log_bayes_factors(state), dtype=np.float64)
    lpost = np.asarray(log_posterior(state), dtype=np.float64)
    _, events = apply_rule(rule, lbf, lpost, ids=ids, names=names, n_frames=int(state.n_frames), dose=float(state.dose))
    return events
