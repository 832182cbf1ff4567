"""A candidate structure before it is turned into a microscope specimen.

Ingest, the generators and relaxation pass candidates along: a periodic ASE ``Atoms`` (any cell)
with a name, tags and its :class:`~library.provenance.Provenance`. Orientation
(:mod:`library.orient`) turns a candidate into a :class:`forward.Specimen`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ase import Atoms

from forward import InputError
from forward.elements import MAX_Z
from library.provenance import Provenance

__all__ = ["Candidate", "make_candidate", "check_atoms"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One structure on its way into a library.

    Attributes:
        atoms: the structure, periodic in its cell (positions [Å]); never mutated in place:
            every step copies it.
        name: human-readable name ("V_S at site 3").
        tags: short labels ("vacancy", "S", "adsorbate:O", ...).
        provenance: where it came from, its energy [eV] and relaxation settings.
    """

    atoms: Atoms
    name: str
    tags: tuple[str, ...] = ()
    provenance: Provenance = Provenance()

    def with_atoms(self, atoms: Atoms, **changes) -> Candidate:
        """A copy holding ``atoms`` (and any other field changes)."""
        return dataclasses.replace(self, atoms=atoms, **changes)


def check_atoms(atoms: Atoms, where: str) -> None:
    """Reject structures no specimen can be made of, naming ``where`` (the file) in the message.

    Checks: at least one atom, finite positions, known elements (Z = 1..103), a 3-D cell of
    positive volume.
    """
    if len(atoms) == 0:
        raise InputError(f"{where}: the structure has no atoms; expected at least one")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    bad = ~np.isfinite(pos)
    if bad.any():
        i = int(np.argwhere(bad)[0, 0])
        raise InputError(
            f"{where}: atom {i} ({atoms[i].symbol}) has a non-finite position {pos[i].tolist()} [Å]; "
            "fix or remove that atom in the file"
        )
    z = np.asarray(atoms.numbers)
    unknown = (z < 1) | (z > MAX_Z)
    if unknown.any():
        i = int(np.argmax(unknown))
        raise InputError(
            f"{where}: atom {i} has an unknown element (atomic number {int(z[i])}, symbol "
            f"{atoms[i].symbol!r}); expected a chemical element H..Lr (Z = 1..{MAX_Z})"
        )
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if not np.isfinite(cell).all():
        raise InputError(f"{where}: the cell has non-finite entries {cell.tolist()} [Å]")
    vol = abs(float(np.linalg.det(cell)))
    if vol < 1e-6:
        raise InputError(
            f"{where}: the structure has no (or a degenerate) cell: lengths {atoms.cell.lengths().round(4).tolist()} Å. "
            "A specimen needs a periodic 3-D cell; give one in the file (extxyz Lattice=, CIF cell) "
            "or put the molecule in a box with vacuum"
        )


def make_candidate(
    atoms: Atoms, name: str, *, tags=(), provenance: Provenance | None = None, where: str = ""
) -> Candidate:
    """A validated :class:`Candidate` holding a copy of ``atoms`` with periodic boundaries."""
    if not isinstance(atoms, Atoms):
        raise InputError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    prov = provenance or Provenance()
    check_atoms(atoms, where or prov.source or name or "structure")
    a = atoms.copy()
    a.calc = None
    a.pbc = True
    return Candidate(atoms=a, name=str(name), tags=tuple(str(t) for t in tags), provenance=prov)
