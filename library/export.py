"""Export a library to extended XYZ (one multi-frame file per family) or CIF (one file per
hypothesis), written by ASE, with ids, names, families, priors and energies in the metadata."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from ase import Atoms

from forward import InputError
from library.entry import LibraryEntry
from library.format import open_library

__all__ = ["EXPORT_FORMATS", "entry_to_atoms", "export_library"]

EXPORT_FORMATS = ("extxyz", "cif")


def entry_to_atoms(entry: LibraryEntry) -> Atoms:
    """The specimen of ``entry`` as ASE ``Atoms`` (orthogonal cell, periodic in x and y), with
    id, name, family, prior and energy [eV] in ``info``."""
    s = entry.specimen
    atoms = Atoms(
        numbers=np.asarray(s.numbers),
        positions=np.asarray(s.positions),
        cell=np.diag(np.asarray(s.cell)),
        pbc=(True, True, False),
    )
    atoms.info.update(
        {
            "hypothesis_id": entry.id,
            "name": entry.name,
            "family": entry.family,
            "prior": float(entry.prior),
            "tags": ",".join(entry.tags),
            "source": entry.provenance.source,
        }
    )
    if entry.provenance.energy is not None:
        atoms.info["energy_eV"] = float(entry.provenance.energy)
    return atoms


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "family"


def export_library(
    path: str | os.PathLike, fmt: str, out_dir: str | os.PathLike, *, family: str | None = None
) -> list[Path]:
    """Write the library (or one ``family``) as ``fmt`` files into ``out_dir``; returns the paths."""
    from ase.io import write

    if fmt not in EXPORT_FORMATS:
        raise InputError(f"export format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open_library(path) as lib:
        fams = [family] if family is not None else lib.families
        for f in fams:
            entries = lib.family(f)
            if fmt == "extxyz":
                p = out / f"{_slug(f)}.extxyz"
                write(p, [entry_to_atoms(e) for e in entries], format="extxyz")
                written.append(p)
            else:
                for e in entries:
                    p = out / f"{_slug(f)}__{e.id}.cif"
                    write(p, entry_to_atoms(e), format="cif")
                    written.append(p)
    return written
