"""Hidden Markov model over the library: the specimen may switch between metastable structures.

State ``h_t`` in the library, transition matrix ``A[i, j] = P(h_t = j | h_{t-1} = i)``,
emission ``p(y_t | h_t)`` = the per-frame evidence. Forward filtering in log space (Rabiner,
Proc. IEEE 77 (1989) 257, eqs. 19-20, with log-sum-exp instead of scaling):

    log alpha_t(j) = log p(y_t | j) + logsumexp_i [log alpha_{t-1}(i) + log A[i, j]]

``filter`` returns the normalised filtered posteriors ``p(h_t | y_1..t)`` and the log marginal
likelihood ``log p(y_1..T)``. Rejection in the HMM case is a statement about the *current*
state; a hypothesis rejected at one frame comes back when later frames favour it
(:func:`rejection_events` records both directions).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError, pytree_dataclass
from inference.posterior import RejectionRule, log_prior_from_weights

__all__ = [
    "HMMState",
    "HMMInfo",
    "make_transition_matrix",
    "init_hmm",
    "hmm_step",
    "hmm_filter",
    "RejectionEvent",
    "rejection_events",
]


def make_transition_matrix(n_states: int, switch_prob: float):
    """``[H, H]`` log transition matrix: stay with ``1 - switch_prob``, else move uniformly to
    one of the other states (the metastable-switching model)."""
    if int(n_states) < 1:
        raise InputError(f"n_states must be >= 1, got {n_states}")
    p = float(switch_prob)
    if not (0 <= p < 1):
        raise InputError(f"switch_prob must be in [0, 1), got {switch_prob!r}")
    n = int(n_states)
    if n == 1:
        return jnp.zeros((1, 1), jnp.float32)
    a = np.full((n, n), p / (n - 1))
    np.fill_diagonal(a, 1 - p)
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(a), jnp.float32)


def _check_log_transition(log_a) -> jnp.ndarray:
    a = np.asarray(log_a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise InputError(f"log transition matrix must be square [H, H], got shape {list(a.shape)}")
    rows = np.exp(a).sum(axis=1)
    if not np.allclose(rows, 1.0, atol=1e-4):
        i = int(np.argmax(np.abs(rows - 1)))
        raise InputError(
            f"rows of the transition matrix must sum to 1 (pass log probabilities), row {i} sums to {rows[i]:.6g}"
        )
    return jnp.asarray(a, jnp.float32)


@pytree_dataclass
class HMMState:
    """Filtered state: ``log_filtered`` ``[H]`` = log p(h_t | y_1..t); ``log_marginal`` = log p(y_1..t)."""

    log_filtered: jax.Array
    log_marginal: jax.Array


@pytree_dataclass
class HMMInfo:
    """Per-step information: ``log_predictive`` = log p(y_t | y_1..t-1)."""

    log_predictive: jax.Array


def init_hmm(prior_weights) -> HMMState:
    """Filter state before any frame (prior over the initial structure)."""
    lp = jnp.asarray(log_prior_from_weights(prior_weights), jnp.float32)
    return HMMState(log_filtered=lp - jax.scipy.special.logsumexp(lp), log_marginal=jnp.zeros((), jnp.float32))


def _predict(log_filtered, log_a):
    return jax.scipy.special.logsumexp(log_filtered[:, None] + log_a, axis=0)


def hmm_step(state: HMMState, log_a, log_evidence_frame, first: bool = False) -> tuple[HMMState, HMMInfo]:
    """One forward-filter step with frame log-evidences ``[H]``; ``first`` skips the transition."""
    pred = state.log_filtered if first else _predict(state.log_filtered, log_a)
    joint = pred + jnp.asarray(log_evidence_frame, jnp.float32)
    lpred = jax.scipy.special.logsumexp(joint)
    return HMMState(joint - lpred, state.log_marginal + lpred), HMMInfo(lpred)


def hmm_filter(prior_weights, log_a, log_evidence) -> tuple[HMMState, jax.Array, HMMInfo]:
    """Filter a stream ``log_evidence [T, H]``: ``(final state, log_filtered [T, H], info)``."""
    log_a = _check_log_transition(log_a)
    le = jnp.asarray(log_evidence, jnp.float32)
    if le.ndim != 2 or le.shape[1] != log_a.shape[0]:
        raise InputError(
            f"log_evidence must be [T, H] with H={log_a.shape[0]} (the transition matrix size), "
            f"got shape {list(le.shape)}"
        )
    state0 = init_hmm(prior_weights)
    if state0.log_filtered.shape[0] != log_a.shape[0]:
        raise InputError(
            f"{state0.log_filtered.shape[0]} prior weights for a {log_a.shape[0]}-state transition matrix"
        )
    state1, info0 = hmm_step(state0, log_a, le[0], first=True)

    def body(s, x):
        s, info = hmm_step(s, log_a, x)
        return s, (s.log_filtered, info.log_predictive)

    final, (lf, lpr) = jax.lax.scan(body, state1, le[1:])
    lf = jnp.concatenate([state1.log_filtered[None, :], lf], axis=0)
    lpr = jnp.concatenate([info0.log_predictive[None], lpr], axis=0)
    return final, lf, HMMInfo(lpr)


@dataclasses.dataclass(frozen=True)
class RejectionEvent:
    """A hypothesis crossing the rejection rule in the filtered posterior: ``kind`` is
    ``"rejected"`` or ``"reinstated"``, at frame ``frame`` (0-based) with filtered probability
    ``probability`` and log10 ratio to the best state ``log10_ratio``."""

    frame: int
    index: int
    kind: str
    probability: float
    log10_ratio: float


def rejection_events(log_filtered, rule: RejectionRule) -> list[RejectionEvent]:
    """Rejections and reinstatements along a filtered stream ``[T, H]``. For the HMM the
    Bayes-factor rule compares filtered probabilities (the state-specific evidence ratio)."""
    lf = np.asarray(log_filtered, dtype=np.float64)
    thr = np.log(float(rule.threshold))
    ratio = lf - lf.max(axis=1, keepdims=True)
    stat = lf if rule.kind == "posterior" else ratio
    rej = stat < thr
    events = []
    prev = np.zeros(lf.shape[1], dtype=bool)
    for t in range(lf.shape[0]):
        for i in np.flatnonzero(rej[t] != prev):
            events.append(
                RejectionEvent(
                    frame=t,
                    index=int(i),
                    kind="rejected" if rej[t, i] else "reinstated",
                    probability=float(np.exp(lf[t, i])),
                    log10_ratio=float(ratio[t, i] / np.log(10)),
                )
            )
        prev = rej[t]
    return events
