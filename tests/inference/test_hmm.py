"""HMM forward filter against brute-force enumeration; switching states come back."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import InputError
from inference import hmm_filter, hmm_step, init_hmm, make_rejection_rule, make_transition_matrix, rejection_events
from tests.pytree_checks import check_pickle


def _brute(prior, a, le):
    t_max, h = le.shape
    total = -np.inf
    filt_last = np.full(h, -np.inf)
    for path in itertools.product(range(h), repeat=t_max):
        lp = np.log(prior[path[0]]) + le[0, path[0]]
        for t in range(1, t_max):
            lp += np.log(a[path[t - 1], path[t]]) + le[t, path[t]]
        total = np.logaddexp(total, lp)
        filt_last[path[-1]] = np.logaddexp(filt_last[path[-1]], lp)
    return total, filt_last - total


def test_filter_matches_enumeration():
    rng = np.random.default_rng(1)
    prior = np.array([0.5, 0.3, 0.2])
    a = np.array([[0.8, 0.15, 0.05], [0.1, 0.85, 0.05], [0.2, 0.2, 0.6]])
    le = rng.normal(-5, 2, size=(5, 3))
    final, lf, info = hmm_filter(prior, np.log(a), le)
    total, filt = _brute(prior, a, le)
    assert float(final.log_marginal) == pytest.approx(total, abs=1e-4)
    np.testing.assert_allclose(np.asarray(lf[-1]), filt, atol=1e-4)
    assert float(np.sum(info.log_predictive)) == pytest.approx(total, abs=1e-4)


def test_step_plain_equals_jit():
    la = make_transition_matrix(3, 0.1)
    state = init_hmm([1.0, 2.0, 3.0])
    le = jnp.array([-1.0, -2.0, -0.5])
    a, ia = hmm_step(state, la, le)
    b, ib = jax.jit(hmm_step)(state, la, le)
    np.testing.assert_allclose(np.asarray(a.log_filtered), np.asarray(b.log_filtered), rtol=1e-6)
    np.testing.assert_allclose(float(ia.log_predictive), float(ib.log_predictive), rtol=1e-6)
    check_pickle(a)


def test_no_switching_is_the_static_posterior():
    le = np.array([[-1.0, -3.0], [-2.0, -1.0], [-1.5, -4.0]])
    _, lf, _ = hmm_filter([1.0, 1.0], make_transition_matrix(2, 0.0), le)
    a = le.sum(0)
    np.testing.assert_allclose(np.asarray(lf[-1]), a - np.logaddexp.reduce(a), atol=1e-5)


def test_switch_is_tracked_and_rejected_state_comes_back():
    """State 0 for 10 frames, then 1 for 10, then 0 again: 0 is rejected then reinstated."""
    le = np.zeros((30, 3))
    truth = np.r_[np.zeros(10, int), np.ones(10, int), np.zeros(10, int)]
    for t, h in enumerate(truth):
        le[t] = -3.0
        le[t, h] = 0.0
        le[t, 2] = -6.0
    _, lf, _ = hmm_filter(np.ones(3), make_transition_matrix(3, 0.01), le)
    np.testing.assert_array_equal(np.argmax(np.asarray(lf), axis=1)[np.r_[2:10, 13:20, 23:30]], truth[np.r_[2:10, 13:20, 23:30]])
    ev = rejection_events(lf, make_rejection_rule("bayes_factor", 1e-3))
    zero = [(e.frame, e.kind) for e in ev if e.index == 0]
    kinds = [k for _, k in zero]
    assert kinds[:2] == ["rejected", "reinstated"]
    assert 10 <= zero[0][0] < 20 and 20 <= zero[1][0] < 25


def test_hmm_bad_input():
    with pytest.raises(InputError, match=r"must be square \[H, H\]"):
        hmm_filter([1.0, 1.0], np.zeros((2, 3)), np.zeros((4, 2)))
    with pytest.raises(InputError, match="row 0 sums to"):
        hmm_filter([1.0, 1.0], np.log(np.array([[0.5, 0.6], [0.5, 0.5]])), np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"log_evidence must be \[T, H\] with H=2"):
        hmm_filter([1.0, 1.0], make_transition_matrix(2, 0.1), np.zeros((4, 3)))
    with pytest.raises(InputError, match=r"switch_prob must be in \[0, 1\)"):
        make_transition_matrix(3, 1.0)
