"""Bayesian online change-point detection: exact marginal on tiny streams, segmentation."""

import itertools

import numpy as np
import pytest

from forward import InputError
from inference import bocpd, segment, sum_segments


def _brute_marginal(prior, le, hazard):
    t_max = le.shape[0]
    lp = np.log(prior / prior.sum())
    total = -np.inf
    for cuts in itertools.product([0, 1], repeat=t_max - 1):
        logp = sum(np.log(hazard) if c else np.log1p(-hazard) for c in cuts)
        starts = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [t_max]
        for a, b in zip(starts[:-1], starts[1:]):
            logp += np.logaddexp.reduce(lp + le[a:b].sum(0))
        total = np.logaddexp(total, logp)
    return total


def test_marginal_matches_enumeration():
    rng = np.random.default_rng(3)
    prior = np.array([1.0, 2.0, 1.0])
    le = rng.normal(-4, 2, size=(5, 3))
    lrl, lm = bocpd(prior, le, expected_run_length=4.0)
    assert float(lm) == pytest.approx(_brute_marginal(prior, le, 0.25), abs=1e-4)
    rl = np.exp(np.asarray(lrl))
    np.testing.assert_allclose(rl.sum(1), 1.0, atol=1e-5)
    assert np.all(rl[2, 3:] == 0)  # r_t <= t + 1


def test_segments_found():
    le = np.full((40, 3), -4.0)
    truth = np.r_[np.zeros(15, int), np.full(10, 2), np.ones(15, int)]
    le[np.arange(40), truth] = 0.0
    segs = segment(np.ones(3), le, expected_run_length=50.0)
    assert [(s.start, s.stop, s.best) for s in segs] == [(0, 15, 0), (15, 25, 2), (25, 40, 1)]
    frames = np.arange(40)[:, None, None] * np.ones((40, 2, 2))
    summed = sum_segments(frames, segs)
    assert summed.shape == (3, 2, 2) and summed[1, 0, 0] == sum(range(15, 25))


def test_changepoint_bad_input():
    with pytest.raises(InputError, match="expected_run_length must be > 1 frame"):
        bocpd([1.0], np.zeros((3, 1)), expected_run_length=1.0)
    with pytest.raises(InputError, match=r"2 prior weights for log_evidence with H=3"):
        bocpd([1.0, 1.0], np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"must be \[T, H\] with T >= 1"):
        bocpd([1.0], np.zeros((3,)))
