"""Posterior over the library: sequential = batch, rejection records, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import InputError
from inference import (
    find_rejections,
    init_posterior,
    log_bayes_factors,
    make_rejection_rule,
    posterior_probs,
    rejected_mask,
    update_posterior,
)
from tests.pytree_checks import check_pickle, check_tree_map

LE = np.array([[-10.0, -12.0, -30.0, -11.0], [-9.0, -13.0, -25.0, -9.5], [-8.0, -14.0, -40.0, -8.2]])
W = np.array([1.0, 2.0, 1.0, 0.5])


def test_sequential_equals_batch():
    state = init_posterior(W)
    for t in range(3):
        state = update_posterior(state, LE[t], dose=10.0)
    a = np.log(W / W.sum()) + LE.sum(0)
    want = np.exp(a - np.logaddexp.reduce(a))
    np.testing.assert_allclose(np.asarray(posterior_probs(state)), want, rtol=1e-5)
    assert int(state.n_frames) == 3 and float(state.dose) == 30.0
    scanned, _ = jax.lax.scan(lambda s, x: (update_posterior(s, x, 10.0), None), init_posterior(W), jnp.asarray(LE))
    np.testing.assert_allclose(np.asarray(posterior_probs(scanned)), want, rtol=1e-5)
    check_pickle(state)
    check_tree_map(state)


def test_zero_prior_stays_zero():
    state = update_posterior(init_posterior([1.0, 0.0]), np.array([-100.0, 0.0]))
    np.testing.assert_allclose(np.asarray(posterior_probs(state)), [1.0, 0.0])


def test_rejection_rule_and_records():
    state = init_posterior(W)
    for t in range(3):
        state = update_posterior(state, LE[t], dose=10.0)
    rule = make_rejection_rule()
    lbf = np.asarray(log_bayes_factors(state))
    assert lbf.max() == 0.0
    mask = np.asarray(rejected_mask(state, rule))
    np.testing.assert_array_equal(mask, lbf < np.log(1e-3))
    recs = find_rejections(state, rule, ids=["a", "b", "c", "d"])
    assert [r.hypothesis_id for r in recs] == ["b", "c"]
    c = recs[1]
    assert c.log10_bayes_factor == pytest.approx(lbf[2] / np.log(10), rel=1e-5)
    assert c.n_frames == 3 and c.dose == 30.0 and c.best_index == 0
    assert "Bayes factor 10^" in c.reason and "after 3 frames, 30 e-/Å²" in c.reason
    # the posterior rule rejects by posterior probability
    post = np.asarray(posterior_probs(state))
    prule = make_rejection_rule("posterior", 0.05)
    np.testing.assert_array_equal(np.asarray(rejected_mask(state, prule)), post < 0.05)


def test_posterior_bad_input():
    with pytest.raises(InputError, match="the library is empty: got 0 prior weights"):
        init_posterior([])
    with pytest.raises(InputError, match=r"finite and >= 0, got -1.0 at hypothesis 1"):
        init_posterior([1.0, -1.0])
    with pytest.raises(InputError, match="prior weights are all zero"):
        init_posterior([0.0, 0.0])
    with pytest.raises(InputError, match=r"1-D array \[H\]"):
        init_posterior([[1.0]])
    with pytest.raises(InputError, match=r"threshold must be in \(0, 1\)"):
        make_rejection_rule(threshold=2.0)
    with pytest.raises(InputError, match="unknown rejection rule 'odds'"):
        make_rejection_rule("odds")
