"""Host structures a family is generated from: ASE's crystal builders, an explicit cell with
fractional coordinates, a file, and supercells of any of them.

A host is a :class:`~library.candidate.Candidate`; builders record what built them in the
provenance so a library can be rebuilt from its spec.
"""

from __future__ import annotations

import numpy as np

from forward import InputError, atomic_number
from library.candidate import Candidate, make_candidate
from library.provenance import Provenance

__all__ = ["bulk_host", "mx2_host", "cell_host", "supercell"]


def bulk_host(name: str, crystalstructure: str | None = None, *, a=None, c=None, cubic: bool = False) -> Candidate:
    """A bulk crystal from ``ase.build.bulk`` (lattice constants ``a``, ``c`` [Å])."""
    from ase.build import bulk

    try:
        atoms = bulk(name, crystalstructure, a=a, c=c, cubic=cubic)
    except Exception as exc:  # noqa: BLE001 - ASE raises several types for unknown input
        raise InputError(
            f"ase.build.bulk could not build {name!r} ({crystalstructure or 'default structure'}): {exc}; "
            "give crystalstructure and the lattice constant a [Å]"
        ) from None
    prov = Provenance(source=f"ase.build.bulk({name!r}, {crystalstructure!r}, a={a}, c={c}, cubic={cubic})")
    return make_candidate(atoms, name, tags=("host",), provenance=prov)


def mx2_host(formula: str = "MoS2", kind: str = "2H", *, a: float = 3.18, thickness: float = 3.19, vacuum: float = 8.0) -> Candidate:
    """A transition-metal dichalcogenide monolayer from ``ase.build.mx2`` (a, thickness [Å];
    ``vacuum`` on each side [Å])."""
    from ase.build import mx2

    try:
        atoms = mx2(formula, kind, a=a, thickness=thickness, vacuum=vacuum)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"ase.build.mx2 could not build {formula!r} ({kind}): {exc}") from None
    prov = Provenance(source=f"ase.build.mx2({formula!r}, {kind!r}, a={a}, thickness={thickness}, vacuum={vacuum})")
    return make_candidate(atoms, f"{formula} monolayer", tags=("host",), provenance=prov)


def cell_host(name: str, lattice, species, frac_coords) -> Candidate:
    """A crystal from its lattice (3 lengths [Å] of an orthogonal cell, or a 3x3 matrix of row
    vectors) and fractional coordinates of each species."""
    from ase import Atoms

    lat = np.asarray(lattice, dtype=np.float64)
    if lat.shape == (3,):
        lat = np.diag(lat)
    if lat.shape != (3, 3) or not np.isfinite(lat).all() or abs(np.linalg.det(lat)) < 1e-6:
        raise InputError(f"host {name!r}: lattice must be 3 lengths or a 3x3 matrix with volume > 0 [Å], got {lattice!r}")
    frac = np.asarray(frac_coords, dtype=np.float64)
    if frac.ndim != 2 or frac.shape[1] != 3 or len(frac) != len(species):
        raise InputError(
            f"host {name!r}: need one fractional coordinate triple per species, got {len(species)} "
            f"species and coordinates of shape {list(frac.shape)}"
        )
    for s in species:
        atomic_number(str(s))
    atoms = Atoms(symbols=[str(s) for s in species], scaled_positions=frac, cell=lat, pbc=True)
    prov = Provenance(source=f"cell: lattice {lat.round(4).tolist()} Å")
    return make_candidate(atoms, name, tags=("host",), provenance=prov)


def supercell(host: Candidate, repeats) -> Candidate:
    """``host`` repeated ``(n1, n2, n3)`` times along its lattice vectors."""
    reps = tuple(int(r) for r in np.asarray(repeats).reshape(-1))
    if len(reps) != 3 or min(reps) < 1:
        raise InputError(f"supercell repeats must be 3 positive integers, got {repeats!r}")
    import dataclasses

    atoms = host.atoms.repeat(reps)
    prov = dataclasses.replace(
        host.provenance,
        supercell=tuple(a * b for a, b in zip(host.provenance.supercell, reps)),
        energy=None if host.provenance.energy is None else host.provenance.energy * int(np.prod(reps)),
    )
    return host.with_atoms(atoms, provenance=prov)
