"""Relaxation through any ASE calculator, with the energy and settings recorded in provenance.

- ``"emt"`` (default, embedded): ASE's effective-medium theory (Jacobsen, Stoltze & Nørskov,
  Surf. Sci. 366, 394 (1996)), in-process and fast; parameters exist for Al, Ni, Cu, Pd, Ag, Pt,
  Au with H, C, N, O.
- ``"chgnet"``: the CHGNet universal potential (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)),
  available with the ``mlip`` extra (``pip install hypotest[mlip]``).
- any callable returning an ASE calculator, or a ``"package.module:factory"`` string naming one:
  the hook for the DFT calculators (VASP, Quantum ESPRESSO, GPAW ...) HPC users bring.

Minimisation: ASE's BFGS or FIRE (Bitzek et al., PRL 97, 170201 (2006)) until the largest force
is below ``fmax`` [eV/Å] or ``steps`` are taken. Atoms can be held fixed below a fraction of the
slab along its vacuum direction (bulk-like bottom layers).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np

from forward import InputError
from library._symmetry import vacuum_axis
from library.candidate import Candidate

__all__ = ["EMT_ELEMENTS", "RelaxConfig", "get_calculator", "relax", "gas_chemical_potentials"]

#: Elements ASE's EMT has parameters for.
EMT_ELEMENTS = frozenset({"H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"})


@dataclasses.dataclass(frozen=True)
class RelaxConfig:
    """Relaxation settings.

    Attributes:
        calculator: "emt", "chgnet", or "package.module:factory" (a function returning an ASE
            calculator); :func:`relax` also accepts a callable directly.
        fmax: force convergence threshold [eV/Å].
        steps: largest number of optimiser steps (0: energy only, no relaxation).
        optimizer: "BFGS" or "FIRE".
        fix_fraction: hold atoms in this bottom fraction of the slab (along its vacuum axis)
            fixed; 0 fixes none.
    """

    calculator: str = "emt"
    fmax: float = 0.05
    steps: int = 200
    optimizer: str = "BFGS"
    fix_fraction: float = 0.0


def get_calculator(calculator: str | Callable) -> tuple[object, str]:
    """An ASE calculator and the name recorded in provenance."""
    if callable(calculator):
        return calculator(), getattr(calculator, "__name__", type(calculator).__name__)
    name = str(calculator)
    if name.lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT(), "EMT (ASE)"
    if name.lower() == "chgnet":
        try:
            from chgnet.model.dynamics import CHGNetCalculator
        except ImportError:
            raise InputError(
                "calculator 'chgnet' needs the optional CHGNet package, which is not installed: "
                "pip install hypotest[mlip] (or use calculator='emt', or your own ASE calculator)"
            ) from None
        return CHGNetCalculator(), "CHGNet"
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"calculator {name!r}: cannot import {fn!r} from {mod!r} ({exc}); give "
                "'package.module:function' where the function returns an ASE calculator"
            ) from None
        return factory(), name
    raise InputError(
        f"unknown calculator {name!r}; expected 'emt', 'chgnet', 'package.module:factory' or a "
        "callable returning an ASE calculator"
    )


def _fixed(atoms, fraction: float) -> np.ndarray:
    if fraction <= 0:
        return np.zeros(len(atoms), dtype=bool)
    ax, _ = vacuum_axis(atoms)
    length = atoms.cell.array[ax, ax]
    x = np.mod(atoms.positions[:, ax], length)
    xs = np.sort(x)
    gaps = np.diff(np.concatenate([xs, xs[:1] + length]))
    k = int(np.argmax(gaps))
    start = xs[(k + 1) % len(xs)]
    rel = np.mod(x - start, length)
    span = length - gaps[k]
    return rel < fraction * span


def relax(candidate: Candidate, config: RelaxConfig = RelaxConfig(), *, calculator=None) -> Candidate:
    """``candidate`` relaxed (or just evaluated, ``steps=0``); energy [eV] and settings in provenance.

    Args:
        candidate: the structure (its cell is kept fixed: family members share it).
        config: :class:`RelaxConfig`.
        calculator: overrides ``config.calculator`` with a callable returning an ASE calculator.
    """
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS, FIRE

    calc_spec = calculator if calculator is not None else config.calculator
    if isinstance(calc_spec, str) and calc_spec.lower() == "emt":
        bad = sorted(set(candidate.atoms.get_chemical_symbols()) - EMT_ELEMENTS)
        if bad:
            raise InputError(
                f"{candidate.name!r}: EMT has no parameters for {bad} (it covers {sorted(EMT_ELEMENTS)}); "
                "use calculator='chgnet' (pip install hypotest[mlip]) or your own ASE calculator"
            )
    if config.optimizer not in ("BFGS", "FIRE"):
        raise InputError(f"optimizer must be 'BFGS' or 'FIRE', got {config.optimizer!r}")
    if not (config.fmax > 0 and int(config.steps) >= 0 and 0 <= config.fix_fraction < 1):
        raise InputError(
            f"relaxation needs fmax > 0 [eV/Å], steps >= 0 and 0 <= fix_fraction < 1, got {config}"
        )
    calc, calc_name = get_calculator(calc_spec)
    atoms = candidate.atoms.copy()
    fixed = _fixed(atoms, config.fix_fraction)
    if fixed.any():
        atoms.set_constraint(FixAtoms(mask=fixed))
    atoms.calc = calc
    try:
        e0 = float(atoms.get_potential_energy())
        taken, converged = 0, None
        if config.steps > 0:
            opt = (BFGS if config.optimizer == "BFGS" else FIRE)(atoms, logfile=None)
            converged = bool(opt.run(fmax=config.fmax, steps=int(config.steps)))
            taken = int(opt.nsteps)
        e1 = float(atoms.get_potential_energy())
        fmax_final = float(np.sqrt((atoms.get_forces() ** 2).sum(1)).max())
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user calculator may fail in any way
        raise InputError(f"{candidate.name!r}: the calculator {calc_name} failed ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(e1):
        raise InputError(f"{candidate.name!r}: the calculator {calc_name} returned a non-finite energy {e1}")
    out = atoms.copy()
    out.set_constraint()
    out.calc = None
    settings = (
        ("calculator", calc_name),
        ("optimizer", config.optimizer if config.steps > 0 else "none (single point)"),
        ("fmax_eV_per_A", f"{config.fmax:g}"),
        ("max_steps", str(int(config.steps))),
        ("steps_taken", str(taken)),
        ("converged", str(converged)),
        ("final_fmax_eV_per_A", f"{fmax_final:.4g}"),
        ("fixed_atoms", str(int(fixed.sum()))),
        ("initial_energy_eV", f"{e0:.6f}"),
        ("final_energy_eV", f"{e1:.6f}"),
    )
    prov = dataclasses.replace(candidate.provenance, code=calc_name, energy=e1, relaxation=settings)
    return candidate.with_atoms(out, provenance=prov)


def gas_chemical_potentials(
    molecules: tuple[str, ...],
    config: RelaxConfig = RelaxConfig(),
    *,
    delta_mu: dict[str, float] | None = None,
    box: float = 12.0,
) -> tuple[dict[str, float], dict[str, float]]:
    """Chemical potentials [eV/atom] referenced to gas-phase molecules, with the same calculator.

    Each molecule (``ase.build.molecule`` name, e.g. "O2", "CO", "H2", "H2O") is relaxed in a
    ``box`` [Å] of vacuum; then Σ_s n_{s,m} μ_s = E_m is solved for the μ_s, one molecule per
    element (e.g. O2 and CO give μ_O = E(O2)/2 and μ_C = E(CO) - μ_O). ``delta_mu`` adds the
    temperature/pressure dependent part Δμ_s(T, p) (Reuter & Scheffler, PRB 65, 035406 (2001),
    Eq. (5)). Returns (μ, molecule energies).
    """
    from ase.build import molecule as ase_molecule

    energies: dict[str, float] = {}
    rows = []
    elements: list[str] = []
    for name in molecules:
        try:
            mol = ase_molecule(str(name))
        except KeyError:
            raise InputError(f"unknown reference molecule {name!r}; use an ase.build.molecule name (O2, CO, H2, H2O)") from None
        mol.set_cell([box, box, box])
        mol.center()
        mol.pbc = True
        from library.candidate import make_candidate

        cand = relax(make_candidate(mol, str(name)), dataclasses.replace(config, fix_fraction=0.0))
        energies[str(name)] = float(cand.provenance.energy)
        counts = {}
        for sym in mol.get_chemical_symbols():
            counts[sym] = counts.get(sym, 0) + 1
            if sym not in elements:
                elements.append(sym)
        rows.append(counts)
    a = np.array([[r.get(el, 0) for el in elements] for r in rows], dtype=np.float64)
    if a.shape[0] != a.shape[1] or abs(np.linalg.det(a)) < 1e-9:
        raise InputError(
            f"reference molecules {list(molecules)} do not fix one chemical potential per element "
            f"{elements}: give as many independent molecules as elements"
        )
    mu = np.linalg.solve(a, np.array([energies[str(m)] for m in molecules]))
    out = {el: float(v) for el, v in zip(elements, mu)}
    for el, d in (delta_mu or {}).items():
        if el not in out:
            raise InputError(f"delta_mu given for {el!r}, which no reference molecule contains ({elements})")
        out[el] += float(d)
    return out, energies
