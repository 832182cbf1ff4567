"""Refinement of continuous parameters: MAP with optax L-BFGS, then the posterior with NumPyro NUTS.

The log posterior of free parameters ``theta`` (any subset of ``simulate_fn``'s params: atom
positions, occupancies, defocus, thickness, tilt ...) for one or more frames is

    log p(theta | y) = sum_frames log p(y | E * simulate_fn(theta, beam)) + log_prior_fn(theta) + c

(:func:`make_log_density`). :func:`map_refine` maximises it with ``optax.lbfgs`` (Liu & Nocedal,
Math. Program. 45 (1989) 503) and a zoom line search; :func:`nuts_refine` samples it with the
No-U-Turn sampler (Hoffman & Gelman, JMLR 15 (2014) 1593) as implemented in NumPyro, started at
the MAP, and returns the ArviZ 1.x posterior, an ``xarray.DataTree`` (save it with ``dt.to_netcdf(path)``).
"""

from __future__ import annotations

import arviz as az
import xarray as xr
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC, NUTS

from forward import InputError, pytree_dataclass, static_field
from inference.fisher import split_params
from inference.noise import NoiseModel, _check_counts, log_likelihood

__all__ = [
    "make_log_density",
    "MapState",
    "MapInfo",
    "map_refine",
    "make_map_refiner",
    "SamplerConfig",
    "nuts_refine",
]


def make_log_density(simulate_fn, params: dict, beam, counts, noise: NoiseModel, exposure, *, free=None, log_prior_fn=None):
    """``(log_density(free_params), free_params0, merge)`` for one frame ``counts [nx, ny]``.

    ``params`` supplies the starting values (and the fixed values of non-free entries);
    ``log_prior_fn(free_params)`` defaults to flat (improper) priors.
    """
    free_params, merge = split_params(params, free)
    mu0 = simulate_fn(params, beam)
    counts = jnp.asarray(_check_counts(counts, tuple(mu0.shape), noise))
    exposure = jnp.asarray(exposure, jnp.float32)

    def log_density(theta):
        mu = exposure * simulate_fn(merge(theta), beam)
        lp = 0.0 if log_prior_fn is None else log_prior_fn(theta)
        return log_likelihood(noise, counts, mu) + lp

    return log_density, free_params, merge


@pytree_dataclass
class MapState:
    """``params``: the MAP free parameters; ``log_density`` there."""

    params: dict
    log_density: jax.Array


@pytree_dataclass
class MapInfo:
    """``grad_norm`` at the MAP (convergence diagnostic) and ``history`` ``[steps]`` of log density."""

    grad_norm: jax.Array
    history: jax.Array


def make_map_refiner(log_density_fn, init: dict, *, steps: int = 100):
    """``refine(init) -> (MapState, MapInfo)``: ``steps`` L-BFGS iterations maximising
    ``log_density_fn``, compiled once for params shaped like ``init`` (reuse it across starts)."""
    if int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    _, unravel = ravel_pytree(init)

    def neg(v):
        return -log_density_fn(unravel(v))

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(neg)

    @jax.jit
    def run(v0):
        def step(carry, _):
            v, state = carry
            value, grad = vg(v, state=state)
            updates, state = opt.update(grad, state, v, value=value, grad=grad, value_fn=neg)
            return (optax.apply_updates(v, updates), state), -value

        (v, _), hist = jax.lax.scan(step, (v0, opt.init(v0)), None, length=int(steps))
        value, grad = jax.value_and_grad(neg)(v)
        return v, -value, jnp.linalg.norm(grad), hist

    def refine(start: dict) -> tuple[MapState, MapInfo]:
        v, ld, gn, hist = run(ravel_pytree(start)[0])
        return MapState(params=unravel(v), log_density=ld), MapInfo(grad_norm=gn, history=hist)

    return refine


def map_refine(log_density_fn, init: dict, *, steps: int = 100) -> tuple[MapState, MapInfo]:
    """Maximise ``log_density_fn`` from ``init`` with ``steps`` L-BFGS iterations (jit-compiled)."""
    return make_map_refiner(log_density_fn, init, steps=steps)(init)


@pytree_dataclass
class SamplerConfig:
    """NUTS settings (all static): warmup and kept draws per chain, chains, target acceptance."""

    num_warmup: int = static_field(default=500)
    num_samples: int = static_field(default=500)
    num_chains: int = static_field(default=2)
    target_accept: float = static_field(default=0.8)


def nuts_refine(rng_key, log_density_fn, init: dict, config: SamplerConfig = SamplerConfig()) -> xr.DataTree:
    """Sample ``log_density_fn`` with NUTS from ``init`` (e.g. the MAP); chains are vectorised.

    Returns the ArviZ 1.x posterior, an ``xarray.DataTree``: group ``posterior`` (one variable
    per free parameter, dims ``chain, draw, ...``) and group ``sample_stats`` (``diverging``,
    ``lp``). Save it with ``dt.to_netcdf(path)`` (read back with ``arviz.from_netcdf``) or
    ``dt.to_zarr(path)``.
    """
    if config.num_chains < 1 or config.num_samples < 1:
        raise InputError(f"need num_chains >= 1 and num_samples >= 1, got {config}")
    kernel = NUTS(potential_fn=lambda p: -log_density_fn(p), target_accept_prob=config.target_accept)
    mcmc = MCMC(
        kernel,
        num_warmup=config.num_warmup,
        num_samples=config.num_samples,
        num_chains=config.num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    init_params = init
    if config.num_chains > 1:  # NumPyro takes one init per chain for several chains, a bare pytree for one
        init_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.num_chains, *jnp.shape(x))), init)
    mcmc.run(rng_key, init_params=init_params, extra_fields=("diverging", "potential_energy"))
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    posterior = {k: np.asarray(v) for k, v in samples.items()}
    stats = {"diverging": np.asarray(extra["diverging"]), "lp": -np.asarray(extra["potential_energy"])}
    return az.from_dict({"posterior": posterior, "sample_stats": stats})
