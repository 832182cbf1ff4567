"""Prior weights over the hypotheses of a family: Boltzmann from energies, user weights, uniform.

Boltzmann weights (canonical ensemble over the candidate structures, each treated as one
state, i.e. harmonic vibrational and configurational entropy differences neglected):

    p_i = exp(-ΔG_i / k_B T) / Σ_j exp(-ΔG_j / k_B T),   ΔG_i = G_i - min_j G_j,

with G_i the total energy E_i [eV] when all members have the same composition, and otherwise the
grand-potential (formation) energy

    G_i = E_i - Σ_s N_{s,i} μ_s

with the chemical potentials μ_s [eV/atom] of the species whose counts differ (the defect
formation-energy formalism of Zhang & Northrup, PRL 67, 2339 (1991), Eq. (1); Freysoldt et al.,
Rev. Mod. Phys. 86, 253 (2014), Eq. (1) for neutral defects; Reuter & Scheffler, PRB 65, 035406
(2001), Eq. (1) for surfaces in contact with a gas). Species present in equal numbers in every
member cancel and need no μ. k_B = 8.617333262e-5 eV/K (CODATA 2018).

Weights are normalised within the family and every call returns a sentence explaining them;
both are stored in the library.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from forward import InputError

__all__ = ["K_B", "PriorConfig", "prior_weights", "boltzmann_weights"]

#: Boltzmann constant [eV/K] (CODATA 2018, exact).
K_B = 8.617333262e-5


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """How a family's prior weights are set.

    Attributes:
        kind: "uniform", "boltzmann" or "user".
        temperature: [K], for "boltzmann".
        chemical_potentials: ``(element, μ [eV/atom])`` pairs, for "boltzmann" when compositions
            differ.
        weights: ``(name, weight)`` pairs, for "user" (need not be normalised).
    """

    kind: str = "uniform"
    temperature: float = 300.0
    chemical_potentials: tuple[tuple[str, float], ...] = ()
    weights: tuple[tuple[str, float], ...] = ()


def boltzmann_weights(
    energies: Sequence[float | None],
    compositions: Sequence[dict[str, int]],
    temperature: float,
    chemical_potentials: dict[str, float] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Boltzmann weights and the relative grand-potential energies ΔG [eV].

    Args:
        energies: total energy of each member [eV] (None is an error: name the member).
        compositions: element -> count of each member.
        temperature: [K], > 0.
        chemical_potentials: element -> μ [eV/atom] for elements whose counts differ.
        names: member names, for error messages.
    """
    n = len(energies)
    names = list(names) if names is not None else [f"#{i}" for i in range(n)]
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"Boltzmann priors need a temperature > 0 K, got {temperature!r}")
    missing = [names[i] for i, e in enumerate(energies) if e is None or not math.isfinite(float(e))]
    if missing:
        raise InputError(
            f"Boltzmann priors need an energy for every member; none for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}: relax them, ingest files with energies, or use "
            "uniform/user priors"
        )
    mu = dict(chemical_potentials or {})
    elements = sorted({el for c in compositions for el in c})
    counts = np.array([[c.get(el, 0) for el in elements] for c in compositions], dtype=np.float64)
    varying = [el for k, el in enumerate(elements) if np.ptp(counts[:, k]) > 0]
    lacking = [el for el in varying if el not in mu]
    if lacking:
        raise InputError(
            f"compositions differ in {varying} within the family, so Boltzmann priors need chemical "
            f"potentials [eV/atom] for {lacking} (e.g. chemical_potentials = {{ {lacking[0]} = -4.9 }}); "
            f"given: {sorted(mu)}"
        )
    g = np.asarray(energies, dtype=np.float64).copy()
    for k, el in enumerate(elements):
        if el in varying:
            g -= counts[:, k] * float(mu[el])
    dg = g - g.min()
    w = np.exp(-dg / (K_B * float(temperature)))
    return w / w.sum(), dg


def prior_weights(
    config: PriorConfig,
    names: Sequence[str],
    energies: Sequence[float | None],
    compositions: Sequence[dict[str, int]],
) -> tuple[np.ndarray, str]:
    """Normalised prior weights for one family and a sentence explaining them."""
    n = len(names)
    if n == 0:
        raise InputError("a family with no members has no priors")
    if config.kind == "uniform":
        return np.full(n, 1.0 / n), f"uniform: each of the {n} hypotheses has prior 1/{n}"
    if config.kind == "boltzmann":
        mu = dict(config.chemical_potentials)
        w, dg = boltzmann_weights(energies, compositions, config.temperature, mu, names)
        used = {k: v for k, v in mu.items()}
        text = (
            f"Boltzmann at T = {config.temperature:g} K: p ∝ exp(-ΔG/k_B T), "
            + ("ΔG from G = E - Σ_s N_s μ_s with μ [eV/atom] = " + str(used) if used else "ΔG from total energies E")
            + f"; ΔG range 0..{dg.max():.4g} eV (Zhang & Northrup 1991; Reuter & Scheffler 2001)"
        )
        return w, text
    if config.kind == "user":
        given = dict(config.weights)
        missing = [nm for nm in names if nm not in given]
        if missing:
            raise InputError(
                f"user priors give no weight for {missing[:5]}; give a weight for every hypothesis name "
                f"of the family (known names: {list(names)[:8]}{' ...' if n > 8 else ''})"
            )
        w = np.array([float(given[nm]) for nm in names])
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InputError(f"user prior weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        return w / w.sum(), f"user weights {dict(zip(names, w.tolist()))}, normalised to sum 1"
    raise InputError(f"prior kind must be 'uniform', 'boltzmann' or 'user', got {config.kind!r}")
