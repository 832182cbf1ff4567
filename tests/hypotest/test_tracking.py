"""The live posterior with change points: it neither decides on a chance run of frames nor
misses a real switch."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from hypotest.live.tracking import SegmentTracker


def _steps(rng, truth, n, kl=0.6, h=3):
    """Per-step log evidence: Gaussian log Bayes factors with the Poisson-like mean/variance
    relation (mean -kl, variance 2 kl against the truth)."""
    out = []
    for _ in range(n):
        e = -kl + np.sqrt(2 * kl) * rng.standard_normal(h)
        e[truth] = 0.0
        out.append(e)
    return out


def test_without_switches_the_posterior_is_the_pooled_posterior():
    rng = np.random.default_rng(0)
    t = SegmentTracker(np.zeros(3), expected_run_length=1e12)  # hazard ~ 0
    steps = _steps(rng, 1, 30)
    for e in steps:
        v = t.update(e)
    pooled = np.sum(steps, axis=0)
    np.testing.assert_allclose(v["posterior"], np.exp(pooled - logsumexp(pooled)), atol=1e-9)
    assert v["segment_start"] == 0


def test_a_chance_run_of_frames_is_not_decided_on():
    """Evidence that slightly favours A over 60 steps, then five steps that favour B by 1.5 nats
    each: the most probable run length is the short one, whose posterior alone would decide B
    (> 0.99), but the run-length posterior still gives the long segment > 1%, so no switch is
    declared (a longer run of such steps is a switch, and decides B, as it should)."""
    t = SegmentTracker(np.zeros(3), expected_run_length=200.0)
    for _ in range(60):
        t.update(np.array([0.0, -0.15, -0.6]))
    for _ in range(5):
        v = t.update(np.array([-1.5, 0.0, -3.0]))
    assert int(np.argmax(t._lj)) == 4  # the most probable run: the last five steps ...
    short = np.sum(np.asarray(t._le[-5:]), axis=0)
    assert np.exp(short - logsumexp(short))[1] > 0.99  # ... whose posterior alone would decide B
    assert np.exp(logsumexp(t._lj[:64])) < 0.99  # a change inside the 65-step segment: not yet sure
    assert v["segment_start"] == 0 and not v["change_point"] and v["posterior"][1] < 0.5
    for _ in range(3):
        v = t.update(np.array([-1.5, 0.0, -3.0]))
    assert v["segment_start"] == 60 and v["posterior"][1] > 0.99


def test_a_real_switch_moves_the_posterior_within_a_few_steps():
    rng = np.random.default_rng(1)
    t = SegmentTracker(np.zeros(3), expected_run_length=200.0)
    for e in _steps(rng, 0, 40, kl=2.0):
        t.update(e)
    assert t.view()["posterior"][0] > 0.99
    switched = None
    for k, e in enumerate(_steps(rng, 2, 12, kl=2.0)):
        v = t.update(e)
        if switched is None and v["posterior"][2] > 0.99:
            switched = k + 1
    assert switched is not None and switched <= 8, switched
    assert v["segment_start"] >= 40
    assert v["log10_bayes_factor"][0] < -3  # the old state is now rejected by the rule
