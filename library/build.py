"""Build a library from a spec: host -> slab -> supercell -> orientation -> generators and
ingested files -> relaxation -> specimens -> priors -> one atomic write.

Every member of a family is made in the family's orthogonal periodic cell and cut by the same
:class:`~library.orient.View`, so the family shares one specimen cell. Generated candidates that
a symmetry of the specimen maps onto each other have the same content id and are kept once (the
family notes count them); an ingested structure duplicating another is an error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from forward import InputError
from library import defects, hosts, surfaces
from library.candidate import Candidate
from library.entry import LibraryEntry, make_entry
from library.format import FamilyInfo, write_library
from library.ingest import read_structures
from library.orient import (
    Orientation,
    View,
    apply_orientation,
    as_is_view,
    find_orientation,
    identity_orientation,
    make_view,
    to_specimen,
)
from library.priors import PriorConfig, prior_weights
from library.relax import gas_chemical_potentials, relax
from library.spec import FamilySpec, LibrarySpec, OrientationConfig, load_spec

__all__ = ["add_to_library", "build_family", "build_library", "make_entries", "oriented"]


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def _host(spec: FamilySpec, base_dir: str) -> Candidate | None:
    h = dict(spec.host)
    if not h:
        return None
    b = h.pop("builder")
    if b == "bulk":
        return hosts.bulk_host(h["name"], h.get("crystalstructure"), a=h.get("a"), c=h.get("c"), cubic=bool(h.get("cubic", False)))
    if b == "mx2":
        return hosts.mx2_host(**h)
    if b == "cell":
        return hosts.cell_host(h.get("name", spec.name), h["lattice"], h["species"], h["frac_coords"])
    path = Path(base_dir) / str(h["path"])
    found = read_structures(path, fmt=h.get("format"))
    idx = int(h.get("index", 0))
    if not 0 <= idx < len(found):
        raise InputError(f"{path}: host index {idx} out of range; the file holds {len(found)} structure(s)")
    return found[idx]


def oriented(candidate: Candidate, orientation: Orientation, where: str | None = None) -> Candidate:
    """``candidate`` in the orthogonal cell of ``orientation``; a periodic energy [eV] is scaled by
    the number of source cells in the oriented supercell (energy is extensive)."""
    where = where or candidate.provenance.source or candidate.name
    atoms = apply_orientation(candidate.atoms, orientation, where)
    mult = round(abs(np.linalg.det(np.asarray(orientation.matrix, dtype=np.float64))))
    e = candidate.provenance.energy
    prov = dataclasses.replace(
        candidate.provenance,
        energy=None if e is None else e * mult,
        notes=candidate.provenance.notes + (("orientation", orientation.describe()),),
    )
    return candidate.with_atoms(atoms, provenance=prov)


def _generate(kind: str, params: dict, host: Candidate, view: View) -> list[Candidate]:
    if kind == "vacancy":
        return defects.vacancies(host, view, params.get("elements"))
    if kind == "column_substitution":
        return defects.column_substitutions(host, view, params["element"], params["by"], count=int(params.get("count", 2)),
                                            tol=float(params.get("tol", 0.1)))  # fmt: skip
    if kind == "column_vacancy":
        return defects.column_vacancies(host, view, params["element"], count=int(params.get("count", 2)), tol=float(params.get("tol", 0.1)))
    if kind == "substitution":
        return defects.substitutions(host, view, {k: (list(v) if isinstance(v, tuple) else v) for k, v in params["mapping"]})
    if kind == "antisite":
        return defects.antisites(host, view)
    if kind == "interstitial":
        return defects.interstitials(
            host, view, params["species"], min_distance=float(params.get("min_distance", 1.6)), merge=float(params.get("merge", 0.5))
        )
    if kind == "adsorbate":
        return surfaces.adsorbates(
            host, params.get("species", ("O",)), params.get("sites", surfaces.SITE_KINDS), distance=float(params.get("distance", 1.8))
        )
    raise InputError(f"unknown generator kind {kind!r}")


def _composition(c: Candidate) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in c.atoms.get_chemical_symbols():
        out[s] = out.get(s, 0) + 1
    return out


def make_entries(
    candidates: Sequence[Candidate],
    view: View,
    family: str,
    priors: PriorConfig = PriorConfig(),
    *,
    mu: dict[str, float] | None = None,
    dw_sigmas: dict[str, float] | None = None,
    dedupe: Sequence[bool] | None = None,
) -> tuple[list[LibraryEntry], str, int]:
    """Entries of one family from candidates in its orthogonal cell.

    Returns (entries, prior explanation, number of dropped symmetry duplicates). Candidates
    flagged in ``dedupe`` are dropped silently when their id repeats; others raise.
    """
    dedupe = list(dedupe) if dedupe is not None else [False] * len(candidates)
    kept: list[tuple[Candidate, LibraryEntry]] = []
    seen: dict[str, str] = {}
    dropped = 0
    for c, dd in zip(candidates, dedupe):
        where = f"{c.provenance.source} ({c.name})" if c.provenance.source else c.name
        dw = None
        if dw_sigmas:
            dw = np.array([float(dict(dw_sigmas).get(s, 0.0)) for s in c.atoms.get_chemical_symbols()])
        spec = to_specimen(c.atoms, view, where=where, dw_sigmas=dw)
        e = make_entry(spec, name=c.name, family=family, tags=c.tags, provenance=c.provenance)
        if e.id in seen:
            if dd:
                dropped += 1
                continue
            raise InputError(
                f"duplicate id {e.id}: {where} is the same structure (species, positions, cell) as "
                f"{seen[e.id]!r} in family {family!r}; remove one of them"
            )
        seen[e.id] = c.name
        kept.append((c, e))
    names: list[str] = []
    for c, _ in kept:
        n, k = c.name, 2
        while n in names:
            n, k = f"{c.name} ({k})", k + 1
        names.append(n)
    w, text = prior_weights(
        dataclasses.replace(priors, chemical_potentials=tuple(sorted((mu or dict(priors.chemical_potentials)).items()))),
        names,
        [c.provenance.energy for c, _ in kept],
        [_composition(c) for c, _ in kept],
    )
    out = [dataclasses.replace(e, name=n, prior=np.asarray(float(p))) for (_, e), n, p in zip(kept, names, w)]
    return out, text, dropped


def build_family(
    spec: FamilySpec, *, base_dir: str = ".", progress: bool = False
) -> tuple[list[LibraryEntry], FamilyInfo]:
    """The entries of one family and its :class:`FamilyInfo`."""
    host = _host(spec, base_dir)
    ingested: list[Candidate] = []
    for s in spec.sources:
        pattern = s if os.path.isabs(s) else str(Path(base_dir) / s)
        ingested.extend(read_structures(pattern))
    extra_hosts: list[Candidate] = []
    if spec.slab:
        if host is None:
            raise InputError(f"family {spec.name!r}: a slab needs a host (bulk) table")
        sl = dict(spec.slab)
        terms = surfaces.slabs(
            host,
            sl.get("miller", (1, 1, 1)),
            min_slab_size=float(sl.get("min_slab_size", 6.0)),
            min_vacuum_size=float(sl.get("min_vacuum_size", 12.0)),
        )
        t = int(sl.get("termination", 0))
        if not 0 <= t < len(terms):
            raise InputError(f"family {spec.name!r}: termination {t} does not exist; the slab has {len(terms)}")
        host = terms[t]
        if sl.get("all_terminations", False):
            extra_hosts = [x for k, x in enumerate(terms) if k != t]
    reference = host if host is not None else ingested[0]
    if spec.supercell != (1, 1, 1):
        reference = hosts.supercell(reference, spec.supercell)
        extra_hosts = [hosts.supercell(x, spec.supercell) for x in extra_hosts]
    o = spec.orientation
    if o.mode == "as_is":
        ori = identity_orientation(reference.atoms, reference.provenance.source or reference.name)
    else:
        ori = find_orientation(
            reference.atoms, o.zone_axis, min_lengths=o.min_lengths, beam_repeats=o.beam_repeats
        )
    ref = oriented(reference, ori)
    if o.mode == "as_is":
        view = as_is_view(ref.atoms, min_vacuum=o.min_vacuum, where=ref.provenance.source or ref.name)
    else:
        view = make_view(ref.atoms, vacuum=o.vacuum)
    members: list[Candidate] = []
    dedupe: list[bool] = []
    if host is not None and spec.include_host:
        members.append(dataclasses.replace(ref, tags=ref.tags + ("pristine",)))
        dedupe.append(False)
    for x in extra_hosts:
        members.append(oriented(x, ori))
        dedupe.append(True)
    for kind, params in spec.generators:
        made = _generate(kind, dict(params), ref, view)
        members.extend(made)
        dedupe.extend([True] * len(made))
    for c in ingested:
        if host is None and c is ingested[0] and spec.supercell != (1, 1, 1):
            c = reference
        members.append(oriented(c, ori))
        dedupe.append(False)
    if not members:
        raise InputError(f"family {spec.name!r} has no members: set include_host, add generators or sources")
    mu = dict(spec.priors.chemical_potentials)
    notes = [("orientation", ori.describe()), ("view", str(dataclasses.asdict(view)))]
    if spec.relax is not None:
        members = [relax(c, spec.relax) for c in _progress(members, progress, f"relax {spec.name}")]
        notes.append(("relaxation", str(dataclasses.asdict(spec.relax))))
        if spec.reference_molecules:
            mu_ref, e_mol = gas_chemical_potentials(spec.reference_molecules, spec.relax, delta_mu=dict(spec.delta_mu))
            mu = {**mu_ref, **mu}
            notes.append(("reference_molecules", str({k: round(v, 6) for k, v in e_mol.items()})))
            notes.append(("chemical_potentials_eV", str({k: round(v, 6) for k, v in mu.items()})))
    elif spec.reference_molecules:
        raise InputError(
            f"family {spec.name!r}: reference_molecules need a relax table (the calculator that "
            "gives the molecules' energies)"
        )
    entries, text, dropped = make_entries(
        members, view, spec.name, spec.priors, mu=mu, dw_sigmas=dict(spec.dw_sigmas), dedupe=dedupe
    )
    notes.append(("generators", str([k for k, _ in spec.generators])))
    notes.append(("symmetry_duplicates_dropped", str(dropped)))
    cells = {tuple(np.round(np.asarray(e.specimen.cell), 6)) for e in entries}
    if len(cells) > 1 and not spec.allow_mixed_cells:
        raise InputError(
            f"family {spec.name!r}: its members have {len(cells)} different cells {sorted(cells)}; "
            "a family must share one cell (set allow_mixed_cells = true to accept and flag it)"
        )
    return entries, FamilyInfo(name=spec.name, prior_explanation=text, notes=tuple(notes))


def build_library(
    spec: LibrarySpec | str | os.PathLike,
    out: str | os.PathLike,
    *,
    progress: bool = False,
    on_family: Callable[[str, int], None] | None = None,
) -> Path:
    """Build every family of ``spec`` and write the library to ``out`` atomically."""
    if not isinstance(spec, LibrarySpec):
        spec = load_spec(spec)
    entries: list[LibraryEntry] = []
    infos: list[FamilyInfo] = []
    for fam in _progress(spec.families, progress, "families"):
        es, info = build_family(fam, base_dir=spec.base_dir, progress=progress)
        entries.extend(es)
        infos.append(info)
        if on_family is not None:
            on_family(fam.name, len(es))
    meta = {"name": spec.name, "description": spec.description, "spec": spec.source}
    return write_library(out, entries, infos, metadata=meta)


def _composition_of(entry: LibraryEntry) -> dict[str, int]:
    from forward import symbol

    out: dict[str, int] = {}
    for z in np.asarray(entry.specimen.numbers).tolist():
        s = symbol(int(z))
        out[s] = out.get(s, 0) + 1
    return out


def add_to_library(
    path: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    *,
    family: str,
    orientation: OrientationConfig | None = None,
    priors: PriorConfig = PriorConfig(),
    allow_mixed_cells: bool = False,
) -> tuple[Path, list[LibraryEntry]]:
    """Ingest ``sources`` into family ``family`` of the library at ``path`` (created if absent).

    Structures are oriented with ``orientation`` (default: as given, which needs an orthogonal
    cell with vacuum along z), computed from the first new structure. Joining an existing family,
    their specimen cell must equal the family's. The family's priors are recomputed over old and
    new members with ``priors``. The file is rewritten atomically.
    """
    from library.format import read_entries

    o = orientation or OrientationConfig(mode="as_is")
    new: list[Candidate] = []
    for s in sources:
        new.extend(read_structures(s))
    if not new:
        raise InputError("add: no structures to add")
    first = new[0]
    where0 = first.provenance.source or first.name
    if o.mode == "as_is":
        ori = identity_orientation(first.atoms, where0)
    else:
        ori = find_orientation(first.atoms, o.zone_axis, min_lengths=o.min_lengths, beam_repeats=o.beam_repeats)
    members = [oriented(c, ori) for c in new]
    if o.mode == "as_is":
        view = as_is_view(members[0].atoms, min_vacuum=o.min_vacuum, where=where0)
    else:
        view = make_view(members[0].atoms, vacuum=o.vacuum)
    p = Path(path)
    old, infos, meta = read_entries(p) if p.exists() else ([], [], {})
    fam_old = [e for e in old if e.family == family]
    if fam_old:
        want = np.asarray(fam_old[0].specimen.cell)
        if np.abs(np.asarray(view.cell) - want).max() > 1e-6 and not allow_mixed_cells:
            raise InputError(
                f"{where0}: its specimen cell {np.round(view.cell, 4).tolist()} Å disagrees with family "
                f"{family!r}'s cell {np.round(want, 4).tolist()} Å; add it to another family, or pass "
                "allow_mixed_cells (--allow-mixed-cells) to accept a family whose images cannot be "
                "compared pixel for pixel"
            )
    added, _, _ = make_entries(members, view, family, PriorConfig())
    ids = {e.id: e for e in old}
    for e in added:
        if e.id in ids:
            o_ = ids[e.id]
            raise InputError(
                f"duplicate id {e.id}: {e.provenance.source} ({e.name}) is already in the library as "
                f"{o_.name!r} (family {o_.family!r}); remove it from the files to add"
            )
    fam = fam_old + added
    w, text = prior_weights(
        priors,
        [e.name for e in fam],
        [e.provenance.energy for e in fam],
        [_composition_of(e) for e in fam],
    )
    fam = [dataclasses.replace(e, prior=np.asarray(float(x))) for e, x in zip(fam, w)]
    others = [e for e in old if e.family != family]
    infos = [i for i in infos if i.name != family] + [
        FamilyInfo(
            name=family,
            prior_explanation=text,
            notes=(("orientation", ori.describe()), ("view", str(dataclasses.asdict(view))), ("added", str([str(s) for s in sources]))),
        )
    ]
    out = write_library(p, others + fam, infos, metadata=meta or {"name": p.stem})
    return out, added
