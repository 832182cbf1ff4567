"""Where a structure came from, and its stable content-hash id."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import TYPE_CHECKING

import numpy as np

from forward import InputError

if TYPE_CHECKING:
    from forward import Specimen

__all__ = ["Provenance", "content_id", "ID_DECIMALS"]

#: Positions and cell are rounded to 10^-ID_DECIMALS Å before hashing, so numerically equal
#: structures from different files share an id.
ID_DECIMALS = 4


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a structure came from. Hashable: it is static metadata of a :class:`Hypothesis`.

    Attributes:
        source: file or generator the structure came from ("" if built in code).
        source_sha256: hash of the source file's bytes, when there is a file.
        code: program that produced it ("VASP 6.4", "Quantum ESPRESSO 7.2", "EMT", ...).
        functional: exchange-correlation functional ("PBE", ...), if DFT.
        supercell: repetitions of the host cell, if generated.
        energy: total energy [eV], if known.
        charge: total charge of the cell [e].
        notes: further ``(key, value)`` pairs (generator, site, orientation, ...).
        relaxation: ``(key, value)`` pairs of the relaxation settings (calculator, fmax [eV/Å],
            steps, optimizer, fixed atoms, initial and final energy [eV]); empty if not relaxed.
    """

    source: str = ""
    source_sha256: str = ""
    code: str = ""
    functional: str = ""
    supercell: tuple[int, int, int] = (1, 1, 1)
    energy: float | None = None
    charge: int = 0
    notes: tuple[tuple[str, str], ...] = ()
    relaxation: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.energy is not None and not math.isfinite(self.energy):
            raise InputError(f"provenance energy must be finite or None, got {self.energy}")
        if len(self.supercell) != 3 or any(int(s) < 1 for s in self.supercell):
            raise InputError(f"provenance supercell must be 3 positive integers, got {self.supercell}")


def content_id(specimen: Specimen) -> str:
    """Stable id from species, positions and cell: independent of atom order and of whole-cell
    translations in x and y, stable across processes (sha256, never Python ``hash()``)."""
    cell = np.round(np.asarray(specimen.cell, dtype=np.float64), ID_DECIMALS)
    if cell.ndim != 1:
        raise InputError("content_id takes one specimen, not a stacked batch")
    scale = 10**ID_DECIMALS
    icell = np.rint(cell * scale).astype(np.int64)
    ipos = np.rint(np.asarray(specimen.positions, dtype=np.float64) * scale).astype(np.int64)
    ipos[:, :2] = np.mod(ipos[:, :2], icell[:2])
    z = np.asarray(specimen.numbers, dtype=np.int64)
    rows = np.column_stack([z, ipos])
    rows = rows[np.lexsort(rows.T[::-1])]
    h = hashlib.sha256()
    h.update(b"hypotest-specimen-v1")
    h.update(icell.tobytes())
    h.update(np.ascontiguousarray(rows).tobytes())
    return "h" + h.hexdigest()[:16]
