"""Bayesian online change-point detection over a frame stream, with the discrete library as the
observation model (Adams & MacKay, arXiv:0710.3742 (2007), Algorithm 1).

Each step brings the log evidence ``e_t[h] = log p(y_t | h)`` of every hypothesis (nuisance
marginalised, :mod:`inference.scorer`). The specimen may switch between metastable states.
Within a segment the structure ``h`` is fixed, and its predictive for the next step is the
library posterior predictive given the segment's steps so far. With hazard ``H = 1 / lambda``
and run length ``r`` (steps in the current segment, this one included):

    P(r_t = r + 1, y_1..t) = P(r_{t-1} = r, y_1..t-1) p(y_t | run r) (1 - H)
    P(r_t = 1,     y_1..t) = sum_r P(r_{t-1} = r, y_1..t-1) p(y_t | prior) H
    p(y_t | run r) = sum_h p(h | last r-1 steps) p(y_t | h)

everything in log space, float64. The tracker is a pair of pure functions over a frozen
:class:`TrackerState`: :func:`init_tracker` and :func:`tracker_update` ``(state, e_t) -> (state,
TrackerInfo)`` (the ``(State, Info)`` form of optax and blackjax); :func:`tracker_add` and
:func:`tracker_drop` change the hypothesis set between steps. :func:`bocpd` is the same filter
over a whole ``[T, H]`` array.

**Segments.** A change point is declared only when the run-length posterior puts at least
``confidence`` (default 0.99, the decision target) on runs shorter than the current segment; the
new segment then starts at the most probable of those run lengths. Declaring a switch at the most
probable run length alone (without that confidence) decided on chance runs of weak frames: five
frames of sparse annular dark-field counts that happen to favour another state make a short run
the most probable one while the run-length posterior still gives the long segment ~5-10%.
Averaging the state over run lengths instead would cap the confidence in any state near
``1 - H x`` (the frames needed to tell the states apart), below the decision target for weak
frames. The posterior shown and acted on is the library posterior over the declared segment,

    log p(h | segment) = log prior(h) + sum_{s in segment} e_s[h] - log Z,

so the frames of one state are pooled, and after a switch the old evidence stops counting: a
hypothesis rejected in one state comes back when the data say so (the rule of
:func:`inference.posterior.apply_rule`). Run lengths are kept up to ``max_run`` steps; the mass
beyond is merged into the longest run (negligible for ``max_run >> lambda``).

:func:`segment` backtracks the maximum-a-posteriori run length from the last step of a recorded
stream to give segments of one state, whose frames can then be summed (:func:`sum_segments`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import logsumexp

from forward.errors import InputError
from inference.posterior import log_prior_from_weights

__all__ = [
    "TrackerState",
    "TrackerInfo",
    "init_tracker",
    "tracker_update",
    "tracker_view",
    "tracker_add",
    "tracker_drop",
    "bocpd",
    "Segment",
    "segment",
    "sum_segments",
]


@dataclasses.dataclass(frozen=True)
class TrackerState:
    """The online tracker (module docstring); never mutated: every function returns a new one.

    Attributes:
        log_prior: ``[H]`` normalised log prior of every hypothesis (dropped ones included).
        log_evidence: per step ``[H]`` log evidence (``-inf`` for a hypothesis inactive then).
        log_run: ``[R]`` log P(r_t = r + 1 | y_1..t), ``r = 0..R-1``.
        segment_start: the step the declared segment starts at.
        active: ``[H]`` bool (False: dropped).
        hazard: ``1 / expected_run_length``; max_run, confidence: see :func:`init_tracker`.
    """

    log_prior: np.ndarray
    log_evidence: tuple[np.ndarray, ...]
    log_run: np.ndarray
    segment_start: int
    active: np.ndarray
    hazard: float
    max_run: int
    confidence: float

    @property
    def n_steps(self) -> int:
        return len(self.log_evidence)

    @property
    def n_hypotheses(self) -> int:
        return int(self.log_prior.shape[0])


@dataclasses.dataclass(frozen=True)
class TrackerInfo:
    """The posterior over the current segment after a step.

    Attributes:
        log_posterior, posterior: ``[H]`` over the segment (``-inf`` / 0 for dropped hypotheses).
        log10_bayes_factor: ``[H]`` against the best, over the segment.
        best: index of the most probable hypothesis.
        segment_start: first step of the declared segment.
        change_point: whether this step declared a new segment.
        log_run: ``[R]`` the run-length posterior (module docstring).
    """

    log_posterior: np.ndarray
    posterior: np.ndarray
    log10_bayes_factor: np.ndarray
    best: int
    segment_start: int
    change_point: bool
    log_run: np.ndarray


def init_tracker(prior_weights, *, expected_run_length: float = 200.0, max_run: int = 400,
                 confidence: float = 0.99, log_prior=None) -> TrackerState:  # fmt: skip
    """The tracker before any step. ``prior_weights [H]`` (>= 0; or ``log_prior`` [H] directly),
    ``expected_run_length`` ``lambda`` [steps] between switches (hazard ``1/lambda``), ``max_run``
    the longest run length kept, ``confidence`` the run-length mass on shorter runs needed to
    declare a change point."""
    if log_prior is None:
        lp = log_prior_from_weights(prior_weights)
    else:
        lp = np.asarray(log_prior, dtype=np.float64)
        lp = lp - logsumexp(lp)
    lam = float(expected_run_length)
    if not lam > 1:
        raise InputError(f"expected_run_length must be > 1 frame (step), got {expected_run_length!r}")
    if not 0.5 <= confidence < 1.0:
        raise InputError(f"change-point confidence must be in [0.5, 1), got {confidence!r}")
    if int(max_run) < 2:
        raise InputError(f"max_run must be >= 2 steps, got {max_run!r}")
    return TrackerState(log_prior=lp, log_evidence=(), log_run=np.zeros(0), segment_start=0,
                        active=np.ones(lp.shape[0], dtype=bool), hazard=1.0 / lam, max_run=int(max_run),
                        confidence=float(confidence))  # fmt: skip


def _lp_active(state: TrackerState) -> np.ndarray:
    lp = np.where(state.active, state.log_prior, -np.inf)
    return lp - logsumexp(lp)


def _run_stats(state: TrackerState, lp: np.ndarray, n: int) -> np.ndarray:
    """``[n, H]``: log prior + evidence of the last r steps, r = 0..n-1 (before this step)."""
    if n == 0:
        return np.zeros((0, lp.shape[0]))
    le = np.asarray(state.log_evidence[::-1][: n - 1]) if n > 1 else np.zeros((0, lp.shape[0]))
    cum = np.concatenate([np.zeros((1, lp.shape[0])), np.cumsum(np.where(np.isfinite(le), le, -np.inf), axis=0)])
    return lp[None, :] + cum[:n]


def _segment_log_evidence(state: TrackerState) -> np.ndarray:
    le = state.log_evidence[state.segment_start :]
    if not le:
        return np.zeros(state.n_hypotheses)
    return np.sum(np.asarray(le), axis=0)


def tracker_view(state: TrackerState, change_point: bool = False) -> TrackerInfo:
    """The posterior over the current segment, log10 Bayes factors against the best, MAP index."""
    lp = _lp_active(state)
    seg = _segment_log_evidence(state)
    lpost = np.where(state.active, lp + seg, -np.inf)
    lpost = lpost - logsumexp(lpost)
    best = int(np.argmax(lpost))
    with np.errstate(invalid="ignore"):
        l10 = (seg - seg[best]) / math.log(10)
    l10 = np.where(state.active, l10, -np.inf)
    return TrackerInfo(log_posterior=lpost, posterior=np.exp(lpost), log10_bayes_factor=l10, best=best,
                       segment_start=state.segment_start, change_point=bool(change_point), log_run=state.log_run)  # fmt: skip


def tracker_update(state: TrackerState, log_evidence) -> tuple[TrackerState, TrackerInfo]:
    """Add one step's ``[H]`` log evidence: the run-length recursion (module docstring), then the
    segment rule. Returns the new state and the view after it."""
    e = np.asarray(log_evidence, dtype=np.float64)
    if e.shape != state.log_prior.shape:
        raise InputError(f"log evidence of {e.shape} hypotheses, the tracker has {state.log_prior.shape[0]}")
    e = np.where(state.active, e, -np.inf)
    lp = _lp_active(state)
    log_h, log_1mh = math.log(state.hazard), math.log1p(-state.hazard)
    if state.log_run.size == 0:
        lj = np.array([0.0])
    else:
        prior_pred = logsumexp(lp + e)
        stats = _run_stats(state, lp, state.log_run.size + 1)[1:]  # runs r = 1..n (steps before this one)
        with np.errstate(invalid="ignore"):
            pred = logsumexp(stats + e[None, :], axis=1) - logsumexp(stats, axis=1)
        growth = state.log_run + pred + log_1mh
        cp = logsumexp(state.log_run) + prior_pred + log_h
        lj = np.concatenate([[cp], growth])
        if lj.size > state.max_run:
            lj = np.concatenate([lj[: state.max_run - 1], [logsumexp(lj[state.max_run - 1 :])]])
        lj = lj - logsumexp(lj)
    t = state.n_steps
    current = t - state.segment_start + 1  # steps in the declared segment, this one included
    # runs r = 1..current-1: a change inside the segment (the last kept entry merges every run
    # >= max_run, the current one included, so it never counts as shorter)
    shorter = lj[: min(current - 1, state.max_run - 1)]
    start = state.segment_start
    if shorter.size and logsumexp(shorter) >= math.log(state.confidence):
        start = t - int(np.argmax(shorter))
    new = dataclasses.replace(state, log_evidence=state.log_evidence + (e,), log_run=lj, segment_start=start)
    return new, tracker_view(new, change_point=start > state.segment_start)


def tracker_add(state: TrackerState, log_prior_weight: float, past_log_evidence) -> TrackerState:
    """A new hypothesis with prior weight ``exp(log_prior_weight)`` relative to the current
    normalised prior, and its log evidence for every past step (re-scored from the record)."""
    past = np.asarray(past_log_evidence, dtype=np.float64)
    if past.shape != (state.n_steps,):
        raise InputError(f"need the new hypothesis' evidence for all {state.n_steps} past steps, got {past.shape}")
    lp = np.concatenate([state.log_prior, [float(log_prior_weight)]])
    return dataclasses.replace(
        state, log_prior=lp - logsumexp(lp), active=np.concatenate([state.active, [True]]),
        log_evidence=tuple(np.concatenate([row, [v]]) for row, v in zip(state.log_evidence, past)),
    )  # fmt: skip


def tracker_drop(state: TrackerState, index: int) -> TrackerState:
    """The tracker with hypothesis ``index`` inactive (its evidence no longer counts)."""
    active = state.active.copy()
    active[int(index)] = False
    return dataclasses.replace(state, active=active)


def bocpd(prior_weights, log_evidence, expected_run_length: float = 100.0):
    """The run-length filter (:func:`tracker_update`) over a whole stream ``log_evidence [T, H]``.

    Returns ``(log_run_length [T, T], log_marginal)``: ``log_run_length[t, r - 1]`` =
    log P(r_t = r | y_1..t) (``-inf`` for impossible ``r > t + 1``) and log p(y_1..T) =
    sum_t log p(y_t | y_1..t-1), the one-step predictives mixed over run lengths.
    """
    le = np.asarray(log_evidence, dtype=np.float64)
    if le.ndim != 2 or le.shape[0] < 1:
        raise InputError(f"log_evidence must be [T, H] with T >= 1, got shape {list(le.shape)}")
    w = np.asarray(prior_weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != le.shape[1]:
        raise InputError(f"{w.size} prior weights for log_evidence with H={le.shape[1]} hypotheses")
    t_max = le.shape[0]
    state = init_tracker(w, expected_run_length=expected_run_length, max_run=max(t_max, 2) + 1)
    lp = state.log_prior
    out = np.full((t_max, t_max), -np.inf)
    log_marginal = 0.0
    for t in range(t_max):
        # the one-step predictive p(y_t | y_1..t-1), mixed over the run lengths before this step
        if state.log_run.size == 0:
            log_marginal += float(logsumexp(lp + le[t]))
        else:
            stats = _run_stats(state, lp, state.log_run.size + 1)[1:]
            with np.errstate(invalid="ignore"):
                pred = logsumexp(stats + le[t][None, :], axis=1) - logsumexp(stats, axis=1)
            h = state.hazard
            mix = np.logaddexp(math.log1p(-h) + pred, math.log(h) + logsumexp(lp + le[t]))
            log_marginal += float(logsumexp(state.log_run + mix))
        state, _ = tracker_update(state, le[t])
        out[t, : state.log_run.size] = state.log_run
    return out, log_marginal


@dataclasses.dataclass(frozen=True)
class Segment:
    """Frames ``start .. stop - 1`` of one state; ``best`` = MAP hypothesis of the summed evidence."""

    start: int
    stop: int
    best: int


def segment(prior_weights, log_evidence, expected_run_length: float = 100.0) -> list[Segment]:
    """Segments of the stream: backtrack the MAP run length from the last frame."""
    lrl, _ = bocpd(prior_weights, log_evidence, expected_run_length)
    le = np.asarray(log_evidence, dtype=np.float64)
    lp = log_prior_from_weights(prior_weights)
    segs = []
    t = lrl.shape[0] - 1
    while t >= 0:
        r = int(np.argmax(lrl[t, : t + 1])) + 1
        start = t - r + 1
        best = int(np.argmax(lp + le[start : t + 1].sum(axis=0)))
        segs.append(Segment(start=start, stop=t + 1, best=best))
        t = start - 1
    return segs[::-1]


def sum_segments(frames, segments: list[Segment]) -> np.ndarray:
    """``[n_segments, ...]`` counts summed over each segment's frames (``frames [T, ...]``)."""
    f = np.asarray(frames)
    if not segments or segments[-1].stop > f.shape[0]:
        raise InputError(f"segments must cover frames 0..{f.shape[0] - 1}, got {segments!r}")
    return np.stack([f[s.start : s.stop].sum(axis=0) for s in segments])
