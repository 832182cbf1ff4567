"""A hypothesis: one candidate atomic structure with its identity, prior and provenance.

:func:`load_hypotheses` is the one way from a library to hypotheses, for every command and the
notebooks: a built-in library name, a library file (``.h5``, :mod:`library.format`) or a
directory or glob of structure files (one hypothesis per file, id = file stem).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forward import InputError, Specimen, pytree_dataclass, static_field
from library.entry import check_candidate_fields
from library.provenance import Provenance, content_id

if TYPE_CHECKING:
    from library.entry import LibraryEntry

__all__ = ["Hypothesis", "make_hypothesis", "hypothesis_from_entry", "load_hypotheses"]


@pytree_dataclass
class Hypothesis:
    """One candidate structure.

    The specimen and the prior weight are leaves; id, name, family and provenance are static
    metadata. Hypotheses with different ids therefore cannot be stacked into one pytree: batch
    their specimens with :func:`forward.stack_specimens` and keep the metadata beside the batch.

    Attributes:
        specimen: the atoms, oriented for the microscope.
        prior: prior weight (>= 0, need not be normalised).
        id: content hash of species, positions and cell (:func:`content_id`); a hypothesis read
            from a structure file by :func:`load_hypotheses` has the file's stem instead.
        name: human-readable name ("V_S at site 3").
        family: hypotheses of one family share a cell and are compared pixel for pixel.
        provenance: :class:`Provenance`.
    """

    specimen: Specimen
    prior: np.ndarray
    id: str = static_field()
    name: str = static_field(default="")
    family: str = static_field(default="")
    provenance: Provenance = static_field(default=Provenance())


def make_hypothesis(
    specimen: Specimen,
    *,
    name: str = "",
    family: str = "",
    prior: float = 1.0,
    provenance: Provenance | None = None,
    id: str | None = None,  # noqa: A002 - the field's name
) -> Hypothesis:
    """A validated :class:`Hypothesis` whose id is the content hash of ``specimen`` (or ``id``)."""
    p, provenance = check_candidate_fields(specimen, prior, provenance, name)
    if id is not None and not (isinstance(id, str) and id):
        raise InputError(f"a hypothesis id must be a non-empty string (or None for the content hash), got {id!r}")
    return Hypothesis(
        specimen=specimen,
        prior=np.asarray(p),
        id=content_id(specimen) if id is None else id,
        name=str(name),
        family=str(family),
        provenance=provenance,
    )


def hypothesis_from_entry(entry: LibraryEntry) -> Hypothesis:
    """The :class:`Hypothesis` of a library entry (:class:`library.LibraryEntry`): its specimen,
    name, family, prior and provenance; the entry's id must be the content hash of its structure."""
    h = make_hypothesis(entry.specimen, name=entry.name, family=entry.family, prior=float(entry.prior),
                        provenance=entry.provenance)  # fmt: skip
    if h.id != entry.id:
        raise InputError(
            f"library entry {entry.name!r} has id {entry.id} but its structure hashes to {h.id}; the file was "
            "written by another version of library.content_id: rebuild it with `hypotest library build`"
        )
    return h


def load_hypotheses(lib: str | os.PathLike, family: str | None = None) -> list[Hypothesis]:
    """The hypotheses of a library, in library order.

    Args:
        lib: a built-in library name (:data:`library.builtin.NAMES`: ``"mos2_defects"``, ...),
            a library file (``.h5``/``.hdf5``, ``hypotest library build``), or a directory or glob
            of structure files (CIF, POSCAR, extxyz, ... as :func:`library.ingest.read_structures`
            reads them): one structure per file, taken as it is oriented (beam along z, an
            orthogonal cell), id and name = the file stem, prior 1.
        family: only the hypotheses of this family (built-in libraries and library files).

    Raises:
        InputError: an unknown name, a file that is neither a library nor a structure file, an
            empty library, no structure files, a dangling symbolic link, a structure file holding
            several structures, duplicate file stems, an entry whose id is not its content hash.
    """
    from library.builtin import NAMES

    text = os.fspath(lib)
    path = Path(text)
    if text in NAMES:
        from library.builtin import load

        return [hypothesis_from_entry(e) for e in load(text, family)]
    if path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
        from library.format import open_library

        with open_library(path) as f:
            entries = f.family(family) if family is not None else f.entries()
        if not entries:
            raise InputError(f"{path}: the library is empty; add hypotheses with `hypotest library add`")
        return [hypothesis_from_entry(e) for e in entries]
    expected = (
        f"expected a built-in library name (one of {list(NAMES)}), a library file (.h5) or a directory or glob "
        "of structure files (one hypothesis per file, id = file stem)"
    )
    if path.is_file():
        from library.ingest import detect_format

        try:
            detect_format(path)
        except InputError as exc:
            raise InputError(
                f"{expected}, got {text!r}, which is a file that is not .h5 and not a structure file ({exc})"
            ) from None
    if family is not None:
        raise InputError(
            f"family={family!r} selects within a built-in library or a library file; {text!r} names structure "
            "files, which have no families: leave family out"
        )
    return _structure_file_hypotheses(text, expected)


def _structure_file_hypotheses(text: str, expected: str) -> list[Hypothesis]:
    """One hypothesis per structure file named by ``text`` (a file, a directory or a glob)."""
    from library.ingest import list_sources, read_structures
    from library.orient import as_is_view, to_specimen

    files = list_sources(text)
    if not files:
        path = Path(text)
        if path.is_dir():
            raise InputError(f"{text}: no structure files found: the directory holds no files; {expected}")
        if any(c in text for c in "*?["):
            raise InputError(f"{text}: no structure files found: the glob pattern matches no files; {expected}")
        raise InputError(
            f"{expected}, got {text!r}, which is neither a built-in name nor an existing file or directory; "
            "build a library file with `hypotest library build SPEC.toml --out LIB.h5`"
        )
    hyps = []
    for f in files:
        cands = read_structures(f)
        if len(cands) != 1:
            raise InputError(f"{f}: holds {len(cands)} structures; give one hypothesis per file (id = file stem)")
        atoms = cands[0].atoms
        spec = to_specimen(atoms, as_is_view(atoms, where=str(f)), where=str(f))
        hyps.append(make_hypothesis(spec, name=f.stem, prior=1.0, provenance=cands[0].provenance, id=f.stem))
    ids = [h.id for h in hyps]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"{text}: file stems must be unique hypothesis ids, got duplicates {dup}")
    return hyps
