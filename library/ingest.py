"""Ingest structures from DFT and structure files: one candidate per structure, with its energy.

All parsing is done by ASE (``ase.io.read``, ``ase.db``) and pymatgen (``Structure``,
``ComputedStructureEntry``); this module only chooses the reader, pulls out the energy and writes
the provenance (source path, sha256 of the file's bytes, code, functional, energy [eV]).

Supported (format name in brackets, detected from the file name or given explicitly):
CIF [cif]; VASP POSCAR/CONTCAR [vasp]; vasprun.xml, final ionic step and its energy
[vasp-xml]; Quantum ESPRESSO pw.x output, final step and energy [espresso-out]; extended XYZ,
every frame, energy from ``info`` or the calculator [extxyz]; an ASE database, every row [db];
pymatgen ``Structure`` / ``ComputedStructureEntry`` JSON, one object or a list [pymatgen-json].
A directory (its files, sorted, not recursive) or a glob pattern reads each file it matches.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from ase import Atoms

from forward import InputError
from forward.elements import SYMBOLS
from library.candidate import Candidate, make_candidate
from library.provenance import Provenance

__all__ = ["FORMATS", "detect_format", "read_structures", "list_sources", "expand_sources", "file_sha256"]

#: Format name -> program recorded as provenance ``code`` when the file does not say.
FORMATS = {
    "cif": "",
    "vasp": "VASP",
    "vasp-xml": "VASP",
    "espresso-out": "Quantum ESPRESSO",
    "extxyz": "",
    "db": "",
    "pymatgen-json": "",
}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its name (see module docstring)."""
    name = Path(path).name
    low = name.lower()
    if low.endswith(".cif"):
        return "cif"
    if low.startswith(("poscar", "contcar")) or low.endswith((".vasp", ".poscar")):
        return "vasp"
    if low.endswith(".xml") and "vasprun" in low:
        return "vasp-xml"
    if low.endswith((".pwo", ".pw.out", ".qe.out")) or (low.endswith(".out") and _looks_like_pw(path)):
        return "espresso-out"
    if low.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if low.endswith(".db"):
        return "db"
    if low.endswith(".json"):
        return "pymatgen-json"
    raise InputError(
        f"{path}: cannot tell the format from the file name; expected one of *.cif, POSCAR*/CONTCAR*/"
        "*.vasp, vasprun*.xml, *.pwo/*.out (pw.x), *.xyz/*.extxyz, *.db (ASE database), *.json "
        "(pymatgen); rename the file or pass fmt= one of " + ", ".join(sorted(FORMATS))
    )


def _looks_like_pw(path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"PWSCF" in head or b"Program PWSCF" in head


def _files(paths) -> list[Path]:
    """The plain files among ``paths``, sorted (directories skipped); a symbolic link whose target
    does not exist is an error naming the link and its target, never skipped silently."""
    out = []
    for q in paths:
        if q.is_symlink() and not q.exists():
            raise InputError(
                f"{q}: a symbolic link to {os.readlink(q)}, which does not exist; fix the link or remove it"
            )
        if q.is_file():
            out.append(q)
    return sorted(out)


def list_sources(source: str | os.PathLike) -> list[Path]:
    """Files named by ``source``: a file, a directory (its files, sorted, hidden ones skipped) or a
    glob pattern (its matching files, sorted); ``[]`` when there are none or ``source`` does not
    exist. A dangling symbolic link among them is an :class:`InputError` naming it and its target."""
    s = str(source)
    if any(c in s for c in "*?["):
        return _files(Path(p) for p in _glob.glob(s))
    p = Path(s)
    if p.is_dir():
        return _files(q for q in p.iterdir() if not q.name.startswith("."))
    return _files([p])


def expand_sources(source: str | os.PathLike) -> list[Path]:
    """Files named by ``source`` (:func:`list_sources`); an error when there are none."""
    s = str(source)
    hits = list_sources(s)
    if hits:
        return hits
    if any(c in s for c in "*?["):
        raise InputError(f"{s}: the glob pattern matches no files; check the path and pattern")
    if Path(s).is_dir():
        raise InputError(f"{s}: the directory holds no files to read")
    raise InputError(f"{s}: no such file or directory")


_VASP_GGA = {"PE": "PBE", "PS": "PBEsol", "RP": "RPBE", "91": "PW91", "AM": "AM05", "CA": "LDA"}


def _functional(path: Path, fmt: str) -> str:
    """The exchange-correlation functional named in a VASP or pw.x output header, if any (a
    one-line lookup; the readers do not expose it)."""
    import re

    if fmt not in ("vasp-xml", "espresso-out"):
        return ""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16).decode("utf-8", "replace")
    if fmt == "espresso-out":
        m = re.search(r"Exchange-correlation\s*=\s*(\S+)", head)
        return m.group(1) if m else ""
    m = re.search(r'name="GGA"\s*>\s*([A-Za-z0-9]+)', head)
    if m:
        return _VASP_GGA.get(m.group(1).upper(), m.group(1))
    return ""


def _energy(atoms: Atoms) -> float | None:
    for key in ("energy", "free_energy", "total_energy"):
        if key in atoms.info:
            try:
                e = float(atoms.info[key])
            except (TypeError, ValueError):
                continue
            return e if np.isfinite(e) else None
    if atoms.calc is not None:
        try:
            e = float(atoms.get_potential_energy())
        except Exception:  # noqa: BLE001 - a calculator without a stored energy has none
            return None
        return e if np.isfinite(e) else None
    return None


def _ase_read(path: Path, fmt: str, index) -> list[Atoms]:
    from ase.io import read

    try:
        out = read(str(path), index=index, format=fmt)
    except Exception as exc:  # noqa: BLE001 - every parser failure becomes one clear InputError
        key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
        if isinstance(key, str) and key not in SYMBOLS and 0 < len(key) <= 3 and key[:1].isalpha():
            raise InputError(
                f"{path}: unknown element {key!r}; expected a chemical element symbol H..Lr "
                "(as written on the periodic table, e.g. 'Mo', 'S'): fix the species in the file"
            ) from None
        raise InputError(
            f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc}); is the file truncated, "
            "corrupt or of another format?"
        ) from None
    return list(out) if isinstance(out, list) else [out]


def _read_db(path: Path) -> list[tuple[Atoms, str, float | None]]:
    import ase.db

    try:
        db = ase.db.connect(str(path), type="db")
        rows = list(db.select())
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read it as an ASE database ({type(exc).__name__}: {exc})") from None
    out = []
    for row in rows:
        atoms = row.toatoms()
        e = row.get("energy")
        name = row.get("name") or f"{atoms.get_chemical_formula()} (row {row.id})"
        out.append((atoms, str(name), None if e is None else float(e)))
    return out


def _read_pymatgen_json(path: Path) -> list[tuple[Atoms, str, float | None, str]]:
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        with open(path) as fh:
            data = json.load(fh)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read it as JSON ({type(exc).__name__}: {exc}); truncated?") from None
    items = data if isinstance(data, list) else [data]
    out = []
    for k, d in enumerate(items):
        cls = d.get("@class") if isinstance(d, dict) else None
        try:
            if cls == "Structure":
                st, e, func = Structure.from_dict(d), None, ""
            elif cls == "ComputedStructureEntry":
                ent = ComputedStructureEntry.from_dict(d)
                st, e = ent.structure, float(ent.energy)
                func = str(ent.parameters.get("run_type", "") or "")
            else:
                raise InputError(
                    f"{path}: item {k} is {cls or type(d).__name__!r}, expected a pymatgen Structure "
                    "or ComputedStructureEntry (as written by .as_dict() / .to(filename=...))"
                )
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: item {k} is not a valid pymatgen {cls} ({type(exc).__name__}: {exc})") from None
        if not st.is_ordered:
            raise InputError(f"{path}: item {k} is a disordered structure; expected one atom per site")
        atoms = AseAtomsAdaptor.get_atoms(st)
        out.append((atoms, f"{st.composition.reduced_formula} ({path.stem}#{k})", e, func))
    return out


def _read_one(path: Path, fmt: str) -> list[Candidate]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; expected a {fmt} structure file")
    sha = file_sha256(path)
    rows: list[tuple[Atoms, str, float | None, str]] = []
    if fmt == "db":
        rows = [(a, n, e, "") for a, n, e in _read_db(path)]
    elif fmt == "pymatgen-json":
        rows = _read_pymatgen_json(path)
    elif fmt in ("vasp-xml", "espresso-out"):
        frames = _ase_read(path, fmt, -1)  # the final ionic step
        rows = [(frames[-1], path.stem, _energy(frames[-1]), _functional(path, fmt))]
    elif fmt == "extxyz":
        frames = _ase_read(path, fmt, ":")
        rows = [
            (a, str(a.info.get("name") or (path.stem if len(frames) == 1 else f"{path.stem}#{k}")), _energy(a), "")
            for k, a in enumerate(frames)
        ]
    elif fmt in ("cif", "vasp"):
        frames = _ase_read(path, fmt, ":" if fmt == "cif" else 0)
        rows = [(a, path.stem if len(frames) == 1 else f"{path.stem}#{k}", None, "") for k, a in enumerate(frames)]
    else:
        raise InputError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(sorted(FORMATS))}")
    if not rows:
        raise InputError(f"{path}: the file holds no structures")
    out = []
    for k, (atoms, name, energy, functional) in enumerate(rows):
        where = str(path) if len(rows) == 1 else f"{path} (structure {k})"
        if not np.asarray(atoms.pbc).all() and abs(np.linalg.det(atoms.cell.array)) < 1e-6:
            raise InputError(
                f"{where}: the structure has no cell (missing lattice); a specimen needs a periodic "
                "cell: add Lattice=\"...\" (extxyz) or the cell parameters to the file"
            )
        prov = Provenance(
            source=str(path),
            source_sha256=sha,
            code=FORMATS[fmt],
            functional=functional,
            energy=energy,
            notes=(("format", fmt), ("index", str(k))),
        )
        out.append(make_candidate(atoms, name, tags=("ingested", fmt), provenance=prov, where=where))
    return out


def read_structures(source: str | os.PathLike, *, fmt: str | None = None) -> list[Candidate]:
    """Candidates from a file, a directory or a glob pattern: one per structure.

    Args:
        source: a path, a directory (each file, sorted) or a glob pattern ("relaxed/*.cif").
        fmt: force a format (see :data:`FORMATS`); by default detected per file from its name.

    Raises :class:`InputError` naming the file for unreadable or truncated files, missing cells,
    unknown elements and non-finite positions.
    """
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(sorted(FORMATS))}")
    out: list[Candidate] = []
    for path in expand_sources(source):
        out.extend(_read_one(path, fmt or detect_format(path)))
    return out
