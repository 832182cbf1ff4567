"""Fisher information and Cramér-Rao lower bounds by autodiff through ``simulate_fn``.

For independent pixels with Poisson counts of mean ``mu_i(theta)`` [electrons] the Fisher
information is (Van Aert, den Dekker, van den Bos & Van Dyck, "Statistical experimental
design for quantitative atomic resolution transmission electron microscopy", Adv. Imaging
Electron Phys. 130 (2004) 1, eq. 3.38; Kay, Fundamentals of Statistical Signal Processing I
(1993), eq. 3.31 specialised to Poisson):

    F_jk = sum_i (d mu_i / d theta_j) (d mu_i / d theta_k) / mu_i

and any unbiased estimator has ``cov(theta_hat) >= F^-1`` (Cramér-Rao). The shifted-Poisson
model replaces ``mu_i`` by ``mu_i + (read_noise / gain)²`` in the denominator; the Gaussian
model uses the constant weight ``gain² / read_noise²`` (:func:`inference.noise.poisson_fisher_weight`).
``d mu / d theta`` is a forward-mode Jacobian of ``exposure * simulate_fn(params, beam)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from forward import InputError
from inference.noise import NoiseModel, poisson_fisher_weight

__all__ = ["fisher_information", "crlb", "log_det_fisher", "split_params"]


def split_params(params: dict, free):
    """``(free_params, merge)`` where ``merge(free_params)`` rebuilds the full params dict."""
    if not isinstance(params, dict):
        raise InputError(f"params must be a dict of arrays to select free parameters, got {type(params).__name__}")
    names = tuple(params) if free is None else tuple(free)
    missing = [n for n in names if n not in params]
    if missing:
        raise InputError(f"free parameters {missing} are not in params (which has {sorted(params)})")
    fixed = {k: v for k, v in params.items() if k not in names}

    def merge(free_params):
        return {**fixed, **free_params}

    return {k: params[k] for k in names}, merge


def fisher_information(simulate_fn, params: dict, beam, noise: NoiseModel, exposure, free=None):
    """``(F [d, d], unravel)``: Fisher information of the free parameters (``free`` = names in
    ``params``, default all) for one frame at ``exposure`` = dose [e-/Å²] x pixel area [Å²].
    ``unravel`` maps a flat ``[d]`` vector back to the free-params pytree."""
    free_params, merge = split_params(params, free)
    flat, unravel = ravel_pytree(free_params)

    def mean_fn(v):
        return (jnp.asarray(exposure) * simulate_fn(merge(unravel(v)), beam)).ravel()

    mu = mean_fn(flat)
    jac = jax.jacfwd(mean_fn)(flat)  # [P, d]
    w = poisson_fisher_weight(noise, mu)
    return jnp.einsum("pi,p,pj->ij", jac, w, jac), unravel


def crlb(simulate_fn, params: dict, beam, noise: NoiseModel, exposure, free=None):
    """Cramér-Rao lower bounds on the standard deviations of the free parameters, as a pytree
    like ``params`` restricted to ``free`` (units of each parameter)."""
    f, unravel = fisher_information(simulate_fn, params, beam, noise, exposure, free)
    cov = jnp.linalg.inv(f)
    return unravel(jnp.sqrt(jnp.diagonal(cov)))


def log_det_fisher(simulate_fn, params: dict, beam, noise: NoiseModel, exposure, free=None):
    """``log det F`` [nats]: the D-optimality criterion (larger is better; Van Aert et al. 2004, sec. 4)."""
    f, _ = fisher_information(simulate_fn, params, beam, noise, exposure, free)
    return jnp.linalg.slogdet(f)[1]
