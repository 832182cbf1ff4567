"""Laplace approximation of an evidence integral around an optax MAP, for any continuous
nuisance parameters (defocus, thickness, small tilt ... through ``simulate_fn``).

    log Z = log int exp(f(theta)) d theta ~= f(theta*) + d/2 log(2 pi) - 1/2 log det(-H(theta*))

with ``f`` the log joint (log-likelihood + log prior, a proper prior), ``theta*`` its maximum
(found by :func:`inference.refine.map_refine`, L-BFGS) and ``H`` its Hessian by autodiff
(Tierney & Kadane, J. Am. Stat. Assoc. 81 (1986) 82; MacKay (2003) eq. 27.10). The
correction term and the curvature are returned so the approximation can be reported.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from forward import pytree_dataclass
from inference.refine import map_refine

__all__ = ["LaplaceInfo", "laplace_log_evidence"]


@pytree_dataclass
class LaplaceInfo:
    """Attributes: ``params`` (MAP pytree), ``log_joint`` at the MAP, ``laplace_term``
    (``d/2 log 2pi - 1/2 log det(-H)``), ``cov`` ``[d, d]`` (``(-H)^-1``, flat order of
    ``jax.flatten_util.ravel_pytree``), ``grad_norm`` at the MAP, ``positive_definite``."""

    params: dict
    log_joint: jax.Array
    laplace_term: jax.Array
    cov: jax.Array
    grad_norm: jax.Array
    positive_definite: jax.Array


def laplace_log_evidence(log_joint_fn, init: dict, *, steps: int = 100) -> tuple[jax.Array, LaplaceInfo]:
    """``(log Z, info)`` for ``log_joint_fn(params) -> log p(y, params)`` started at ``init``."""
    state, info = map_refine(log_joint_fn, init, steps=steps)
    flat, unravel = ravel_pytree(state.params)
    h = jax.hessian(lambda v: log_joint_fn(unravel(v)))(flat)
    sign, logdet = jnp.linalg.slogdet(-h)
    d = flat.shape[0]
    lap = 0.5 * d * math.log(2 * math.pi) - 0.5 * logdet
    pd = sign > 0
    log_z = jnp.where(pd, state.log_density + lap, jnp.nan)
    return log_z, LaplaceInfo(
        params=state.params,
        log_joint=state.log_density,
        laplace_term=lap,
        cov=jnp.linalg.inv(-h),
        grad_norm=info.grad_norm,
        positive_definite=pd,
    )
