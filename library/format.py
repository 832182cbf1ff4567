"""The library file: one portable HDF5 file per library (schema version 1).

Why HDF5 rather than an ASE/SQLite database
-------------------------------------------
An ASE database (SQLite) stores one row per structure with its atoms as pickled/JSON blobs and
key-value pairs; it is convenient for browsing DFT results and ASE reads it directly. But a
library is written once and then read many times by the live loop and by Ray workers that need
*arrays*: a whole family as numpy arrays (zero-copy into the object store), or one hypothesis
picked at random. In HDF5 the atoms of all hypotheses are a few contiguous, chunked numeric
datasets (positions ``[M, 3]``, numbers ``[M]``, Debye–Waller sigmas ``[M]``) with a per-entry
index (offset, count, cell, prior, id, family); one entry or one family is a single slice read,
never a query that decodes every row. The index for 100,000 hypotheses is a few MB; SQLite's
per-row blobs and JSON decoding cost more per structure and the file does not map onto arrays.
HDF5 is self-describing, portable across platforms and languages (h5py, HDF5 C, Julia, MATLAB),
carries attributes for the schema version and per-family explanations, and is already a
dependency (h5py). ``hypotest library export`` writes extxyz/CIF for tools that want those.

Layout (all lengths [Å], energies [eV])::

    /                    attrs: format="hypotest-library", schema_version=1, metadata (JSON)
    /entries/id          [N] ascii content-hash ids (library.content_id)
    /entries/id_order    [N] int64, argsort of id (binary search for one id)
    /entries/name        [N] utf-8
    /entries/family      [N] int32, index into /families/name
    /entries/prior       [N] float64, normalised within the family
    /entries/cell        [N, 3] float64, orthogonal cell side lengths
    /entries/offset      [N] int64, first row of the entry in /atoms
    /entries/count       [N] int64, number of atoms
    /entries/tags        [N] utf-8 JSON list
    /entries/provenance  [N] utf-8 JSON (library.Provenance fields)
    /atoms/positions     [M, 3] float64, beam along z, [x, y, z]
    /atoms/numbers       [M] uint8, atomic numbers
    /atoms/dw_sigmas     [M] float64, Debye–Waller sigma per direction
    /families/name       [F] utf-8; entries of family f are rows start[f]:stop[f]
    /families/start, /families/stop   [F] int64
    /families/shared_cell             [F] bool (False: the family's cells disagree)
    /families/prior_explanation       [F] utf-8
    /families/notes                   [F] utf-8 JSON (orientation, view, generators)

Writes are atomic: the file is written under a temporary name in the same directory and renamed
over the target only when complete, so a failed build leaves no half-written library.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forward import InputError
from library.provenance import Provenance

if TYPE_CHECKING:
    from library.entry import LibraryEntry

__all__ = ["SCHEMA_VERSION", "FamilyInfo", "LibraryFile", "write_library", "open_library", "read_entries"]

SCHEMA_VERSION = 1
_FORMAT = "hypotest-library"
_CHUNK_ROWS = 1 << 14


@dataclasses.dataclass(frozen=True)
class FamilyInfo:
    """What a library says about one family.

    Attributes:
        name: family name.
        prior_explanation: how its priors were set (see :mod:`library.priors`).
        notes: ``(key, value)`` pairs: orientation, view, generators ...
        shared_cell: whether every member has the same cell (set by the writer).
        size: number of members (set by the reader).
    """

    name: str
    prior_explanation: str = ""
    notes: tuple[tuple[str, str], ...] = ()
    shared_cell: bool = True
    size: int = 0


def provenance_to_json(p: Provenance) -> str:
    return json.dumps(dataclasses.asdict(p), separators=(",", ":"))


def provenance_from_json(s: str) -> Provenance:
    d = json.loads(s)
    d["supercell"] = tuple(int(x) for x in d.get("supercell", (1, 1, 1)))
    for k in ("notes", "relaxation"):
        d[k] = tuple((str(a), str(b)) for a, b in d.get(k, ()))
    known = {f.name for f in dataclasses.fields(Provenance)}
    return Provenance(**{k: v for k, v in d.items() if k in known})


def _check_unique(entries: Sequence[LibraryEntry]) -> None:
    seen: dict[str, LibraryEntry] = {}
    for e in entries:
        if e.id in seen:
            o = seen[e.id]
            src = f" (from {e.provenance.source})" if e.provenance.source else ""
            osrc = f" (from {o.provenance.source})" if o.provenance.source else ""
            raise InputError(
                f"duplicate id {e.id}: {e.name!r} in family {e.family!r}{src} has the same species, "
                f"positions and cell as {o.name!r} in family {o.family!r}{osrc}; remove one of them"
            )
        seen[e.id] = e


def write_library(
    path: str | os.PathLike,
    entries: Iterable[LibraryEntry],
    families: Sequence[FamilyInfo] = (),
    *,
    metadata: dict | None = None,
) -> Path:
    """Write ``entries`` to the HDF5 library at ``path`` atomically (temp file + rename).

    Entries are grouped by family (first-seen family order, member order kept). ``families``
    gives explanations and notes per family; families without one get an empty record.
    Raises :class:`InputError` on duplicate ids (the existing file, if any, is left untouched).
    """
    import h5py

    from library.entry import LibraryEntry

    entries = list(entries)
    if not entries:
        raise InputError("a library needs at least one entry")
    for e in entries:
        if not isinstance(e, LibraryEntry):
            raise InputError(f"library entries must be LibraryEntry (see library.make_entry), got {type(e).__name__}")
    _check_unique(entries)
    order_f: dict[str, list[LibraryEntry]] = {}
    for e in entries:
        order_f.setdefault(e.family, []).append(e)
    info = {f.name: f for f in families}
    fam_names = list(order_f)
    ordered = [e for f in fam_names for e in order_f[f]]
    n = len(ordered)
    counts = np.array([e.specimen.n_atoms for e in ordered], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    m = int(counts.sum())
    cells = np.stack([np.asarray(e.specimen.cell, dtype=np.float64) for e in ordered])
    ids = np.array([e.id for e in ordered], dtype="S")
    sizes = np.array([len(order_f[f]) for f in fam_names], dtype=np.int64)
    stops = np.cumsum(sizes)
    starts = stops - sizes
    shared = np.array(
        [bool(np.all(np.abs(cells[s:t] - cells[s][None, :]) < 1e-6)) for s, t in zip(starts, stops)], dtype=bool
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    str_t = h5py.string_dtype("utf-8")
    try:
        with h5py.File(tmp, "w") as h:
            h.attrs["format"] = _FORMAT
            h.attrs["schema_version"] = SCHEMA_VERSION
            h.attrs["metadata"] = json.dumps(metadata or {}, default=str)
            g = h.create_group("entries")
            g["id"] = ids
            g["id_order"] = np.argsort(ids, kind="stable").astype(np.int64)
            g.create_dataset("name", data=[e.name for e in ordered], dtype=str_t)
            g["family"] = np.repeat(np.arange(len(fam_names), dtype=np.int32), sizes)
            g["prior"] = np.array([float(e.prior) for e in ordered], dtype=np.float64)
            g["cell"] = cells
            g["offset"] = offsets
            g["count"] = counts
            g.create_dataset("tags", data=[json.dumps(list(e.tags)) for e in ordered], dtype=str_t)
            g.create_dataset("provenance", data=[provenance_to_json(e.provenance) for e in ordered], dtype=str_t)
            a = h.create_group("atoms")
            chunk = min(_CHUNK_ROWS, m)
            pos = a.create_dataset("positions", shape=(m, 3), dtype=np.float64, chunks=(chunk, 3))
            num = a.create_dataset("numbers", shape=(m,), dtype=np.uint8, chunks=(chunk,))
            dw = a.create_dataset("dw_sigmas", shape=(m,), dtype=np.float64, chunks=(chunk,))
            block = 1 << 20  # write in blocks of ~1 M atoms to bound memory
            i = 0
            while i < n:
                j = i
                while j < n and offsets[j] + counts[j] - offsets[i] <= block:
                    j += 1
                j = max(j, i + 1)
                lo, hi = int(offsets[i]), int(offsets[j - 1] + counts[j - 1])
                pos[lo:hi] = np.concatenate([np.asarray(e.specimen.positions, np.float64) for e in ordered[i:j]])
                num[lo:hi] = np.concatenate([np.asarray(e.specimen.numbers) for e in ordered[i:j]]).astype(np.uint8)
                dw[lo:hi] = np.concatenate([np.asarray(e.specimen.dw_sigmas, np.float64) for e in ordered[i:j]])
                i = j
            f = h.create_group("families")
            f.create_dataset("name", data=fam_names, dtype=str_t)
            f["start"] = starts
            f["stop"] = stops
            f["shared_cell"] = shared
            f.create_dataset(
                "prior_explanation", data=[info.get(k, FamilyInfo(k)).prior_explanation for k in fam_names], dtype=str_t
            )
            f.create_dataset(
                "notes", data=[json.dumps(list(info.get(k, FamilyInfo(k)).notes)) for k in fam_names], dtype=str_t
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class LibraryFile:
    """Read access to a library file; reads only what is asked for.

    Opening reads the small per-entry index columns on demand (ids for :meth:`get`, family
    ranges for :meth:`family`); atoms are read one slice per entry or per family. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such library file")
        try:
            self._h = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: not a readable HDF5 library file ({exc}); truncated or of another format?") from None
        fmt = self._h.attrs.get("format", "")
        ver = int(self._h.attrs.get("schema_version", -1))
        if fmt != _FORMAT or ver != SCHEMA_VERSION:
            self._h.close()
            raise InputError(
                f"{self.path}: not a hypotest library of schema version {SCHEMA_VERSION} (format "
                f"{fmt!r}, version {ver}); rebuild it with `hypotest library build`"
            )
        self._ids = None
        self._id_order = None
        # dataset handles, opened once (h5py's per-lookup cost dominates single-entry reads)
        self._d = {k: self._h[f"entries/{k}"] for k in ("offset", "count", "id", "family", "prior", "cell")}
        for k in ("name", "tags", "provenance"):
            self._d[k] = self._h[f"entries/{k}"].asstr()
        for k in ("positions", "numbers", "dw_sigmas"):
            self._d[k] = self._h[f"atoms/{k}"]
        fam = self._h["families"]
        self._fam_names = [s.decode() if isinstance(s, bytes) else s for s in fam["name"][()]]
        self._fam_start = fam["start"][()]
        self._fam_stop = fam["stop"][()]

    def __enter__(self) -> LibraryFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h.close()

    def __len__(self) -> int:
        return int(self._h["entries/count"].shape[0])

    @property
    def metadata(self) -> dict:
        return json.loads(self._h.attrs.get("metadata", "{}"))

    @property
    def families(self) -> list[str]:
        return list(self._fam_names)

    def family_info(self, name: str) -> FamilyInfo:
        k = self._family_index(name)
        f = self._h["families"]
        return FamilyInfo(
            name=name,
            prior_explanation=f["prior_explanation"].asstr()[k],
            notes=tuple((str(a), str(b)) for a, b in json.loads(f["notes"].asstr()[k])),
            shared_cell=bool(f["shared_cell"][k]),
            size=int(self._fam_stop[k] - self._fam_start[k]),
        )

    def _family_index(self, name: str) -> int:
        try:
            return self._fam_names.index(name)
        except ValueError:
            raise InputError(
                f"{self.path}: no family {name!r}; it has {self._fam_names[:10]}{' ...' if len(self._fam_names) > 10 else ''}"
            ) from None

    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self._h["entries/id"][()]
        return [s.decode() for s in self._ids]

    def index_of(self, entry_id: str) -> int:
        """Row of ``entry_id`` (binary search in the sorted id column)."""
        if self._id_order is None:
            if self._ids is None:
                self._ids = self._h["entries/id"][()]
            self._id_order = self._h["entries/id_order"][()]
            self._sorted_ids = self._ids[self._id_order]
        key = str(entry_id).encode()
        sorted_ids = self._sorted_ids
        k = int(np.searchsorted(sorted_ids, key))
        if k >= len(sorted_ids) or sorted_ids[k] != key:
            raise InputError(f"{self.path}: no hypothesis with id {entry_id!r}; `hypotest library list` shows the ids")
        return int(self._id_order[k])

    def get(self, entry_id: str) -> LibraryEntry:
        """The entry with id ``entry_id``."""
        return self.entry_at(self.index_of(entry_id))

    def entry_at(self, i: int) -> LibraryEntry:
        """The entry in row ``i``."""
        return self._read_rows(int(i), int(i) + 1)[0]

    def family(self, name: str) -> list[LibraryEntry]:
        """Every entry of family ``name`` (one contiguous read)."""
        k = self._family_index(name)
        return self._read_rows(int(self._fam_start[k]), int(self._fam_stop[k]))

    def entries(self) -> list[LibraryEntry]:
        """Every entry (loads the whole library)."""
        return self._read_rows(0, len(self))

    def _read_rows(self, lo: int, hi: int) -> list[LibraryEntry]:
        from forward import make_specimen  # JAX: only when entries (Specimens) are built
        from library.entry import LibraryEntry

        d = self._d
        offs = d["offset"][lo:hi]
        cnts = d["count"][lo:hi]
        a0, a1 = int(offs[0]), int(offs[-1] + cnts[-1])
        pos = d["positions"][a0:a1]
        num = d["numbers"][a0:a1].astype(np.int32)
        dw = d["dw_sigmas"][a0:a1]
        ids = d["id"][lo:hi]
        names = d["name"][lo:hi]
        fams = d["family"][lo:hi]
        priors = d["prior"][lo:hi]
        cells = d["cell"][lo:hi]
        tags = d["tags"][lo:hi]
        provs = d["provenance"][lo:hi]
        out = []
        for k in range(hi - lo):
            s, t = int(offs[k]) - a0, int(offs[k] + cnts[k]) - a0
            spec = make_specimen(pos[s:t], num[s:t], cells[k], dw[s:t], min_distance=0.0)
            out.append(
                LibraryEntry(
                    specimen=spec,
                    prior=np.asarray(float(priors[k])),
                    id=ids[k].decode(),
                    name=str(names[k]),
                    family=self._fam_names[int(fams[k])],
                    tags=tuple(json.loads(tags[k])),
                    provenance=provenance_from_json(provs[k]),
                )
            )
        return out


def open_library(path: str | os.PathLike) -> LibraryFile:
    """Open a library file for reading (see :class:`LibraryFile`)."""
    return LibraryFile(path)


def read_entries(path: str | os.PathLike) -> tuple[list[LibraryEntry], list[FamilyInfo], dict]:
    """Every entry, family record and the metadata of a library (for ``add``, ``export``)."""
    with open_library(path) as lib:
        return lib.entries(), [lib.family_info(f) for f in lib.families], lib.metadata
