"""Bayesian online change-point detection: exact marginal on tiny streams, segmentation."""

import itertools

import numpy as np
import pytest

from forward import InputError
from scipy.special import logsumexp

from inference import bocpd, init_tracker, segment, sum_segments, tracker_add, tracker_drop, tracker_update, tracker_view


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


def _brute_run_length(prior, le, hazard):
    """P(r_T = r | y_1..T) by enumerating every segmentation (the product-partition form of the
    model: a change before each step with probability ``hazard``, a segment's steps share one h)."""
    t_max = le.shape[0]
    lp = np.log(prior / prior.sum())
    out = np.full(t_max, -np.inf)
    for cuts in itertools.product([0, 1], repeat=t_max - 1):
        logp = sum(np.log(hazard) if c else np.log1p(-hazard) for c in cuts)
        starts = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [t_max]
        for a, b in zip(starts[:-1], starts[1:]):
            logp += np.logaddexp.reduce(lp + le[a:b].sum(0))
        r = t_max - starts[-2]
        out[r - 1] = np.logaddexp(out[r - 1], logp)
    return out - np.logaddexp.reduce(out)


def test_online_tracker_run_lengths_match_enumeration():
    """The online tracker (the live session's) and the batch filter are one recursion: its
    run-length posterior after every step equals the enumeration over all segmentations."""
    rng = np.random.default_rng(5)
    prior = np.array([1.0, 3.0, 1.0, 2.0])
    le = rng.normal(-3, 2, size=(6, 4))
    state = init_tracker(prior, expected_run_length=3.0)
    lrl, _ = bocpd(prior, le, expected_run_length=3.0)
    for t in range(le.shape[0]):
        state, info = tracker_update(state, le[t])
        want = _brute_run_length(prior, le[: t + 1], 1 / 3.0)
        np.testing.assert_allclose(np.exp(info.log_run), np.exp(want), atol=1e-12)
        np.testing.assert_allclose(lrl[t, : t + 1], info.log_run, atol=1e-12)


def _steps(rng, truth, n, kl=0.6, h=3):
    """Per-step log evidence: Gaussian log Bayes factors with the Poisson-like mean/variance
    relation (mean -kl, variance 2 kl against the truth)."""
    out = []
    for _ in range(n):
        e = -kl + np.sqrt(2 * kl) * rng.standard_normal(h)
        e[truth] = 0.0
        out.append(e)
    return out


def _run(state, steps):
    info = None
    for e in steps:
        state, info = tracker_update(state, e)
    return state, info


def test_without_switches_the_posterior_is_the_pooled_posterior():
    rng = np.random.default_rng(0)
    steps = _steps(rng, 1, 30)
    _, v = _run(init_tracker(np.ones(3), expected_run_length=1e12), steps)  # hazard ~ 0
    pooled = np.sum(steps, axis=0)
    np.testing.assert_allclose(v.posterior, np.exp(pooled - logsumexp(pooled)), atol=1e-9)
    assert v.segment_start == 0


def test_a_chance_run_of_frames_is_not_decided_on():
    """Evidence that slightly favours A over 60 steps, then five steps that favour B by 1.5 nats
    each: the most probable run length is the short one, whose posterior alone would decide B
    (> 0.99), but the run-length posterior still gives the long segment > 1%, so no switch is
    declared (a longer run of such steps is a switch, and decides B, as it should)."""
    state, _ = _run(init_tracker(np.ones(3), expected_run_length=200.0), [np.array([0.0, -0.15, -0.6])] * 60)
    state, v = _run(state, [np.array([-1.5, 0.0, -3.0])] * 5)
    assert int(np.argmax(state.log_run)) == 4  # the most probable run: the last five steps ...
    short = np.sum(np.asarray(state.log_evidence[-5:]), axis=0)
    assert np.exp(short - logsumexp(short))[1] > 0.99  # ... whose posterior alone would decide B
    assert np.exp(logsumexp(state.log_run[:64])) < 0.99  # a change inside the 65-step segment: not yet sure
    assert v.segment_start == 0 and not v.change_point and v.posterior[1] < 0.5
    state, v = _run(state, [np.array([-1.5, 0.0, -3.0])] * 3)
    assert v.segment_start == 60 and v.posterior[1] > 0.99


def test_a_real_switch_moves_the_posterior_within_a_few_steps():
    rng = np.random.default_rng(1)
    state, v = _run(init_tracker(np.ones(3), expected_run_length=200.0), _steps(rng, 0, 40, kl=2.0))
    assert v.posterior[0] > 0.99
    switched = None
    for k, e in enumerate(_steps(rng, 2, 12, kl=2.0)):
        state, v = tracker_update(state, e)
        if switched is None and v.posterior[2] > 0.99:
            switched = k + 1
    assert switched is not None and switched <= 8, switched
    assert v.segment_start >= 40
    assert v.log10_bayes_factor[0] < -3  # the old state is now rejected by the rule


def test_tracker_add_drop_and_purity():
    """Adding and dropping hypotheses between steps; every function returns a new state and
    leaves its input as it was (the live step and the replay rely on it)."""
    s0 = init_tracker(np.ones(2))
    s1, _ = tracker_update(s0, np.array([-1.0, -2.0]))
    assert s0.n_steps == 0 and s1.n_steps == 1
    s2 = tracker_add(s1, 0.0, [-0.5])
    assert s2.n_hypotheses == 3 and s1.n_hypotheses == 2
    v = tracker_view(s2)
    assert v.best == 2
    s3 = tracker_drop(s2, 2)
    assert s2.active.all() and not s3.active[2]
    assert tracker_view(s3).best == 0 and tracker_view(s3).posterior[2] == 0.0
    with pytest.raises(InputError, match="evidence for all 1 past steps"):
        tracker_add(s1, 0.0, [])
    with pytest.raises(InputError, match="log evidence of"):
        tracker_update(s1, np.zeros(5))
