"""Frozen phonons: thermal diffuse scattering by averaging intensities over displaced configurations.

Each configuration displaces every atom by an independent Gaussian of standard deviation
``specimen.dw_sigmas`` per Cartesian direction (sigma = sqrt(B / 8 pi^2), the Einstein model;
Loane, Xu & Silcox, Acta Cryst. A47 (1991) 267; Kirkland 2010, sec. 7.4). Intensities, not waves,
are averaged (DESIGN 3.7). Randomness is explicit: ``rng_key`` is the first argument.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from forward._pytree import replace
from forward.errors import InputError
from forward.specimen import Specimen

__all__ = ["displace_atoms", "frozen_phonon_average", "make_frozen_phonon_simulator"]


def displace_atoms(rng_key, specimen: Specimen) -> Specimen:
    """One frozen-phonon configuration: positions ``+ sigma_i * N(0, 1)`` in x, y and z [Å]."""
    pos = jnp.asarray(specimen.positions, dtype=jnp.float32)
    sig = jnp.asarray(specimen.dw_sigmas, dtype=jnp.float32)
    noise = jax.random.normal(rng_key, pos.shape, dtype=jnp.float32)
    return replace(specimen, positions=pos + sig[..., None] * noise)


def _check_n(n_configs) -> int:
    if isinstance(n_configs, bool) or int(n_configs) != n_configs or int(n_configs) < 1:
        raise InputError(
            f"n_configs must be a positive integer (number of phonon configurations), got {n_configs!r}"
        )
    return int(n_configs)


def frozen_phonon_average(rng_key, specimen: Specimen, intensity_fn: Callable, n_configs: int, *args):
    """Mean of ``intensity_fn(displaced_specimen, *args)`` over ``n_configs`` configurations.

    Configurations are evaluated one after another (``lax.map``) so memory does not grow with
    ``n_configs``; configuration ``i`` uses ``jax.random.fold_in(rng_key, i)``.
    """
    n = _check_n(n_configs)

    def one(i):
        return intensity_fn(displace_atoms(jax.random.fold_in(rng_key, i), specimen), *args)

    return jnp.mean(jax.lax.map(one, jnp.arange(n)), axis=0)


def make_frozen_phonon_simulator(simulate_fn: Callable, n_configs: int) -> Callable:
    """``simulate(rng_key, specimen, beam)``: ``simulate_fn(specimen, beam)`` averaged over
    ``n_configs`` frozen-phonon configurations (``simulate_fn`` must return intensities)."""
    n = _check_n(n_configs)

    def simulate(rng_key, specimen: Specimen, beam):
        return frozen_phonon_average(rng_key, specimen, simulate_fn, n, beam)

    return simulate
