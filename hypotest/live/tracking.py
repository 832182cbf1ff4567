"""Online posterior over the library with change points, for the live loop (numpy, float64).

Each step brings the log evidence ``e_t[h] = log p(y_t | h)`` of every hypothesis (nuisance
marginalised, :mod:`inference.evidence`). The specimen may switch between metastable states, so
the stream is segmented online with Bayesian change-point detection (Adams & MacKay,
arXiv:0710.3742 (2007), Algorithm 1; the batch form is :func:`inference.changepoint.bocpd`):
with hazard ``H = 1/lambda`` and run length ``r`` (steps in the current segment, this one
included),

    P(r_t = r + 1, y_1..t) = P(r_{t-1} = r, y_1..t-1) p(y_t | run r) (1 - H)
    P(r_t = 1,     y_1..t) = sum_r P(r_{t-1} = r, y_1..t-1) p(y_t | prior) H
    p(y_t | run r) = sum_h p(h | last r-1 steps) p(y_t | h)

A change point is declared only when the run-length posterior puts at least ``confidence``
(default 0.99, the decision target) on runs shorter than the current segment; the new segment then
starts at the most probable of those run lengths. Declaring a switch at the most probable run
length alone (without that confidence) decided on chance runs of weak frames: five frames of
sparse annular dark-field counts that happen to favour another state make a short run the most
probable one while the run-length posterior still gives the long segment ~5-10%. Averaging the
state over run lengths instead would cap the confidence in any state near ``1 - H x`` (the
frames needed to tell the states apart), below the decision target for weak frames. The posterior
shown and acted on is the library posterior over the declared segment:

    log p(h | segment) = log prior(h) + sum_{s in segment} e_s[h] - log Z

so the frames of one state are pooled, and after a switch the old evidence stops counting: a
hypothesis rejected in one state comes back when the data say so. The rejection rule is that of
:mod:`inference.posterior` (Bayes factor against the best below a threshold).

Run lengths are kept up to ``max_run`` steps; the mass beyond is merged into the longest run
(negligible for ``max_run >> lambda``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

__all__ = ["SegmentTracker"]


class SegmentTracker:
    """Online BOCPD + segment posterior (module docstring).

    Args:
        log_prior: ``[H]`` log prior weights (normalised here).
        expected_run_length: ``lambda`` [steps] between switches (hazard ``1/lambda``).
        max_run: longest run length kept.
        confidence: run-length posterior mass on runs shorter than the current segment needed to
            declare a change point.
    """

    def __init__(self, log_prior, *, expected_run_length: float = 200.0, max_run: int = 400,
                 confidence: float = 0.99):  # fmt: skip
        lp = np.asarray(log_prior, dtype=np.float64)
        self._lp = lp - logsumexp(lp)
        self._hazard = 1.0 / float(expected_run_length)
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"change-point confidence must be in [0.5, 1), got {confidence!r}")
        self._confidence = float(confidence)
        self._max_run = int(max_run)
        self._le: list[np.ndarray] = []  # per step [H]; -inf for a dropped hypothesis
        self._lj = np.zeros(0)  # log P(r_t = r + 1 | y_1..t), r = 0..len-1
        self.segment_start = 0
        self._active = np.ones(lp.shape[0], dtype=bool)

    @property
    def n_steps(self) -> int:
        return len(self._le)

    @property
    def n_hypotheses(self) -> int:
        return self._lp.shape[0]

    def _lp_active(self) -> np.ndarray:
        lp = np.where(self._active, self._lp, -np.inf)
        return lp - logsumexp(lp)

    def _run_stats(self, n: int) -> np.ndarray:
        """``[n, H]``: log prior + evidence of the last r steps, r = 0..n-1 (before this step)."""
        lp = self._lp_active()
        if n == 0:
            return np.zeros((0, lp.shape[0]))
        le = np.asarray(self._le[::-1][: n - 1]) if n > 1 else np.zeros((0, lp.shape[0]))
        cum = np.concatenate([np.zeros((1, lp.shape[0])), np.cumsum(np.where(np.isfinite(le), le, -np.inf), axis=0)])
        return lp[None, :] + cum[:n]

    def update(self, log_evidence) -> dict:
        """Add one step's ``[H]`` log evidence; returns the tracker's view after it."""
        e = np.where(self._active, np.asarray(log_evidence, dtype=np.float64), -np.inf)
        if e.shape != self._lp.shape:
            raise ValueError(f"log evidence of {e.shape[0]} hypotheses, the tracker has {self._lp.shape[0]}")
        lp = self._lp_active()
        log_h, log_1mh = math.log(self._hazard), math.log1p(-self._hazard)
        prior_pred = logsumexp(lp + e)
        if self._lj.size == 0:
            lj = np.array([0.0])
        else:
            stats = self._run_stats(self._lj.size + 1)[1:]  # runs r = 1..n (steps before this one)
            with np.errstate(invalid="ignore"):
                pred = logsumexp(stats + e[None, :], axis=1) - logsumexp(stats, axis=1)
            growth = self._lj + pred + log_1mh
            cp = logsumexp(self._lj) + prior_pred + log_h
            lj = np.concatenate([[cp], growth])
            if lj.size > self._max_run:
                lj = np.concatenate([lj[: self._max_run - 1], [logsumexp(lj[self._max_run - 1 :])]])
            lj = lj - logsumexp(lj)
        self._lj = lj
        self._le.append(e)
        t = len(self._le) - 1
        previous = self.segment_start
        current = t - previous + 1  # steps in the declared segment, this one included
        # runs r = 1..current-1: a change inside the segment (the last kept entry merges every run
        # >= max_run, the current one included, so it never counts as shorter)
        shorter = lj[: min(current - 1, self._max_run - 1)]
        if shorter.size and logsumexp(shorter) >= math.log(self._confidence):
            self.segment_start = t - int(np.argmax(shorter))
        return {**self.view(), "change_point": self.segment_start > previous}

    def segment_log_evidence(self) -> np.ndarray:
        le = np.asarray(self._le[self.segment_start :])
        if le.size == 0:
            return np.zeros(self.n_hypotheses)
        return np.sum(le, axis=0)

    def view(self) -> dict:
        """Posterior over the current segment, log10 Bayes factors against the best, MAP index."""
        lp = self._lp_active()
        lpost = lp + self.segment_log_evidence()
        lpost = np.where(self._active, lpost, -np.inf)
        lpost = lpost - logsumexp(lpost)
        best = int(np.argmax(lpost))
        with np.errstate(invalid="ignore"):
            l10 = (self.segment_log_evidence() - self.segment_log_evidence()[best]) / math.log(10)
        l10 = np.where(self._active, l10, -np.inf)
        return {"log_posterior": lpost, "posterior": np.exp(lpost), "log10_bayes_factor": l10, "best": best,
                "segment_start": self.segment_start}  # fmt: skip

    def add(self, log_prior_weight: float, past_log_evidence) -> None:
        """A new hypothesis with prior weight ``exp(log_prior_weight)`` relative to the original
        normalised prior, and its log evidence for every past step (re-scored from the record)."""
        past = np.asarray(past_log_evidence, dtype=np.float64)
        if past.shape != (len(self._le),):
            raise ValueError(f"need the new hypothesis' evidence for all {len(self._le)} past steps, got {past.shape}")
        self._lp = np.concatenate([self._lp, [float(log_prior_weight)]])
        self._lp = self._lp - logsumexp(self._lp)
        self._le = [np.concatenate([row, [v]]) for row, v in zip(self._le, past)]
        self._active = np.concatenate([self._active, [True]])

    def drop(self, index: int) -> None:
        self._active[index] = False
