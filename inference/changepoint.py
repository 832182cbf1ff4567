"""Bayesian online change-point detection over a frame stream (Adams & MacKay, arXiv:0710.3742
(2007), Algorithm 1), with the discrete library as the observation model.

Within a segment the structure ``h`` is fixed; its predictive for the next frame is the library
posterior predictive given the segment's frames so far:

    p(y_t | run) = sum_h p(h | run frames) p(y_t | h)

The run length ``r_t`` (frames in the current segment, including ``y_t``) follows eq. (3)-(5)
of the paper with a constant hazard ``H = 1 / expected_run_length``:

    P(r_t = r + 1, y_1..t) = P(r_{t-1} = r, y_1..t-1) p(y_t | run r) (1 - H)
    P(r_t = 1,     y_1..t) = sum_r P(r_{t-1} = r, y_1..t-1) p(y_t | prior) H

everything in log space. :func:`segment` backtracks the maximum-a-posteriori run length from
the last frame to give segments of one state, whose frames can then be summed for signal
(:func:`sum_segments`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from forward import InputError
from inference.posterior import log_prior_from_weights

__all__ = ["bocpd", "Segment", "segment", "sum_segments"]


def bocpd(prior_weights, log_evidence, expected_run_length: float = 100.0):
    """Run-length filtering of ``log_evidence [T, H]`` (per-frame, per-hypothesis).

    Returns ``(log_run_length [T, T], log_marginal)``: ``log_run_length[t, r - 1]`` =
    log P(r_t = r | y_1..t) (``-inf`` for impossible ``r > t + 1``) and log p(y_1..T).
    """
    le = jnp.asarray(log_evidence, jnp.float32)
    if le.ndim != 2 or le.shape[0] < 1:
        raise InputError(f"log_evidence must be [T, H] with T >= 1, got shape {list(le.shape)}")
    lp = jnp.asarray(log_prior_from_weights(prior_weights), jnp.float32)
    if lp.shape[0] != le.shape[1]:
        raise InputError(f"{lp.shape[0]} prior weights for log_evidence with H={le.shape[1]} hypotheses")
    lam = float(expected_run_length)
    if not lam > 1:
        raise InputError(f"expected_run_length must be > 1 frame, got {expected_run_length!r}")
    t_max, n_h = le.shape
    log_h, log_1mh = jnp.log(1.0 / lam), jnp.log1p(-1.0 / lam)
    neg = jnp.float32(-jnp.inf)

    lse = jax.scipy.special.logsumexp
    prior_pred0 = lse(lp + le[0])
    joint0 = jnp.full((t_max,), neg).at[0].set(prior_pred0)
    stats0 = jnp.broadcast_to(lp[None, :], (t_max, n_h)).at[0].add(le[0])

    def body(carry, e):
        joint, stats = carry  # joint[r-1] = log P(r_{t-1} = r, y_1..t-1); stats[r-1] = log prior + run evidences
        pred = lse(stats + e[None, :], axis=1) - lse(stats, axis=1)  # log p(y_t | run r)
        growth = joint + pred + log_1mh
        cp = lse(joint) + lse(lp + e) + log_h
        new_joint = jnp.concatenate([cp[None], growth[:-1]])
        new_stats = jnp.concatenate([(lp + e)[None, :], stats[:-1] + e[None, :]], axis=0)
        norm = lse(new_joint)
        return (new_joint, new_stats), (new_joint - norm, norm)

    (_, _), (lrl, norms) = jax.lax.scan(body, (joint0, stats0), le[1:])
    lrl = jnp.concatenate([(joint0 - prior_pred0)[None, :], lrl], axis=0)
    log_marginal = norms[-1] if t_max > 1 else prior_pred0
    return lrl, log_marginal


@dataclasses.dataclass(frozen=True)
class Segment:
    """Frames ``start .. stop - 1`` of one state; ``best`` = MAP hypothesis of the summed evidence."""

    start: int
    stop: int
    best: int


def segment(prior_weights, log_evidence, expected_run_length: float = 100.0) -> list[Segment]:
    """Segments of the stream: backtrack the MAP run length from the last frame."""
    lrl, _ = bocpd(prior_weights, log_evidence, expected_run_length)
    lrl = np.asarray(lrl)
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
