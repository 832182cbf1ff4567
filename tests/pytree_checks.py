"""Shared checks that a data-model type behaves as a frozen pytree (pickle, tree.map, vmap, grad)."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np


def float_leaves_sum(tree) -> jax.Array:
    """A scalar that depends on every floating leaf (so grad touches all of them)."""
    total = jnp.zeros(())
    for leaf in jax.tree.leaves(tree):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            total = total + jnp.sum(jnp.sin(leaf) * leaf)
    return total


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def check_pickle(obj) -> None:
    back = pickle.loads(pickle.dumps(obj))
    assert type(back) is type(obj)
    assert_trees_equal(obj, back)


def check_tree_map(obj) -> None:
    same = jax.tree.map(lambda x: x, obj)
    assert type(same) is type(obj)
    assert_trees_equal(obj, same)


def check_vmap_over_stack(objs) -> None:
    """vmap over ``jax.tree.map(np.stack, *objs)`` equals a Python loop."""
    batch = jax.tree.map(lambda *xs: np.stack(xs), *objs)
    assert type(batch) is type(objs[0])
    got = jax.vmap(float_leaves_sum)(batch)
    want = jnp.stack([float_leaves_sum(o) for o in objs])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def check_grad_same_type(obj) -> None:
    """``jax.grad`` of a scalar function of ``obj`` returns an object of the same type and structure."""
    g = jax.grad(float_leaves_sum, allow_int=True)(obj)
    assert type(g) is type(obj)
    assert jax.tree.structure(g) == jax.tree.structure(obj)
    # d/dx sum(sin(x) x) = sin(x) + x cos(x), checked on every floating leaf
    for leaf, dleaf in zip(jax.tree.leaves(obj), jax.tree.leaves(g)):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating):
            want = np.sin(leaf) + leaf * np.cos(leaf)
            np.testing.assert_allclose(np.asarray(dleaf), want, rtol=1e-4, atol=1e-4)


def check_all(make) -> None:
    """Run every check on objects built by ``make(i)`` (i = 0, 1, 2 give distinct leaf values)."""
    objs = [make(i) for i in range(3)]
    check_pickle(objs[0])
    check_tree_map(objs[0])
    check_vmap_over_stack(objs)
    check_grad_same_type(objs[0])
