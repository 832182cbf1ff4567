"""Batch refinement of the top hypotheses across Ray workers, one Ray task per hypothesis: the
Python API behind ``python -m workflows.refine`` (:mod:`workflows.refine`, its command line).

Each surviving hypothesis is refined in its own Ray task: the task builds the forward simulator
for the spec (:func:`forward.hrtem.make_hrtem_simulator`) and the log posterior of the in-plane
atom positions ``xy [n, 2]`` [Å] given one frame,

    log p(xy | y) = log p(y | E * I(xy)) + sum_i log N(xy_i; xy_i^0, sd² I) + c

(noise model of the detector, :func:`inference.refine.make_log_density`; a Gaussian prior of
standard deviation ``displacement_sd`` [Å] around the library positions), and maximises it with
:func:`inference.refine.map_refine` (optax L-BFGS, Liu & Nocedal 1989). z is kept: the projected
potential is piecewise constant in z, so HRTEM carries no gradient along the beam.
Optionally the posterior around the MAP is sampled with NUTS (:func:`inference.refine.nuts_refine`,
Hoffman & Gelman 2014); each hypothesis then draws with its own key
``fold_in(rng_key, stable digest of its id)`` (:func:`workflows.keys.task_key`), so its draws do
not depend on which worker ran it, in which order, or how often it was retried.
Tasks are retried (``max_retries``) when a worker dies; jitted functions are built in the task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from forward import InputError, Specimen
from workflows.spec import SimulationSpec, check_specimen, forward_simulator, output_shape
from workflows.specimens import Pair, check_pairs

__all__ = ["RefineResult", "refine_one", "refine_batch", "top_ids"]


@dataclasses.dataclass(frozen=True)
class RefineResult:
    """MAP refinement of one hypothesis.

    Attributes:
        id: hypothesis id.
        positions: ``[n, 3]`` refined positions [Å] (z unchanged).
        initial_positions: ``[n, 3]`` library positions [Å].
        log_density: log posterior at the MAP [nats] (up to a constant).
        initial_log_density: at the library positions.
        grad_norm: |gradient| at the MAP (convergence diagnostic).
        draws: ``[chains * draws, n, 2]`` NUTS draws of the in-plane positions [Å], or None
            when no sampler was asked for.
    """

    id: str
    positions: np.ndarray
    initial_positions: np.ndarray
    log_density: float
    initial_log_density: float
    grad_norm: float
    draws: np.ndarray | None = None


def refine_one(
    spec: SimulationSpec,
    hyp_id: str,
    specimen: Specimen,
    counts,
    *,
    steps: int = 30,
    displacement_sd: float = 0.3,
    sampler=None,
    rng_key=None,
) -> RefineResult:
    """MAP of the in-plane positions of one hypothesis given one frame ``counts`` (camera grid);
    with ``sampler`` (:class:`inference.refine.SamplerConfig`) and ``rng_key`` also NUTS draws
    started at the MAP, keyed by ``task_key(rng_key, hyp_id)``."""
    import jax
    import jax.numpy as jnp

    from inference.noise import noise_from_detector
    from inference.refine import make_log_density, map_refine, nuts_refine
    from workflows.keys import task_key

    if spec.kind != "hrtem":
        raise InputError(f"refinement is implemented for HRTEM specs, got kind {spec.kind!r}")
    check_specimen(spec, specimen, hyp_id)
    sd = float(displacement_sd)
    if not (np.isfinite(sd) and sd > 0):
        raise InputError(f"displacement_sd must be positive [Å], got {displacement_sd!r}")
    if sampler is not None and rng_key is None:
        raise InputError("NUTS sampling needs rng_key (e.g. jax.random.key(0)); each hypothesis folds in its id")
    if isinstance(rng_key, np.ndarray) and rng_key.dtype == np.uint32:
        rng_key = jax.random.wrap_key_data(rng_key)
    cam = output_shape(spec)
    c = np.asarray(counts, dtype=np.float32)
    if c.shape != cam:
        raise InputError(f"frame shape {list(c.shape)} does not match the spec's camera {list(cam)}")
    sim = forward_simulator(spec)
    pos0 = np.asarray(specimen.positions, dtype=np.float32)
    z = jnp.asarray(pos0[:, 2:3])
    numbers = jnp.asarray(specimen.numbers)
    cell = jnp.asarray(specimen.cell, jnp.float32)
    dw = jnp.asarray(specimen.dw_sigmas, jnp.float32)

    def simulate_fn(params, beam):
        s = Specimen(positions=jnp.concatenate([params["xy"], z], axis=1), numbers=numbers, cell=cell, dw_sigmas=dw)
        return sim.simulate(s, beam)

    xy0 = jnp.asarray(pos0[:, :2])

    def log_prior_fn(free):
        return -0.5 * jnp.sum(((free["xy"] - xy0) / sd) ** 2)

    pixel_area = spec.grid.extent[0] * spec.grid.extent[1] / (cam[0] * cam[1])
    exposure = float(spec.beam.dose) * pixel_area
    noise = noise_from_detector(spec.beam.detector)
    log_density, free0, _ = make_log_density(
        simulate_fn, {"xy": xy0}, spec.beam, c, noise, exposure, free=("xy",), log_prior_fn=log_prior_fn
    )
    ld0 = float(jax.jit(log_density)(free0))
    state, info = map_refine(log_density, free0, steps=int(steps))
    xy = np.asarray(state.params["xy"], dtype=np.float64)
    draws = None
    if sampler is not None:
        idata = nuts_refine(task_key(rng_key, hyp_id), log_density, state.params, sampler)
        d = np.asarray(idata.posterior["xy"].values, dtype=np.float64)
        draws = d.reshape((-1,) + d.shape[2:])
    return RefineResult(
        id=hyp_id,
        positions=np.column_stack([xy, np.asarray(specimen.positions)[:, 2]]),
        initial_positions=np.asarray(specimen.positions, dtype=np.float64),
        log_density=float(state.log_density),
        initial_log_density=ld0,
        grad_norm=float(info.grad_norm),
        draws=draws,
    )


def top_ids(ids: Sequence[str], posterior, k: int) -> tuple[str, ...]:
    """The ``k`` ids of highest posterior (ties broken by order)."""
    p = np.asarray(posterior, dtype=np.float64)
    if p.shape != (len(ids),):
        raise InputError(f"got {p.size} posterior values for {len(ids)} ids")
    if int(k) < 1:
        raise InputError(f"k must be >= 1, got {k}")
    order = np.argsort(-p, kind="stable")[: int(k)]
    return tuple(ids[i] for i in order)


def refine_batch(
    pairs: Sequence[Pair],
    spec: SimulationSpec,
    counts,
    *,
    steps: int = 30,
    displacement_sd: float = 0.3,
    sampler=None,
    rng_key=None,
    max_retries: int = 3,
) -> list[RefineResult]:
    """Refine every hypothesis in ``pairs`` against one frame, one Ray task each (in parallel
    across workers); results in the order of ``pairs``. ``sampler``/``rng_key``: optional NUTS
    draws per hypothesis (see :func:`refine_one`). Needs a running Ray."""
    import jax
    import ray

    if not ray.is_initialized():
        raise InputError("refine_batch needs Ray: run it inside `with workflows.local_ray(): ...`")
    pairs = check_pairs(pairs)
    for hid, sp in pairs:
        check_specimen(spec, sp, hid)
    if rng_key is not None and jax.dtypes.issubdtype(jax.numpy.asarray(rng_key).dtype, jax.dtypes.prng_key):
        rng_key = np.asarray(jax.random.key_data(rng_key))  # plain uint32 data travels safely
    task = ray.remote(num_cpus=1, max_retries=int(max_retries))(refine_one)
    cref = ray.put(np.asarray(counts, dtype=np.float32))
    refs = [
        task.remote(
            spec, hid, sp, cref, steps=steps, displacement_sd=displacement_sd, sampler=sampler, rng_key=rng_key
        )
        for hid, sp in pairs
    ]
    return list(ray.get(refs))
