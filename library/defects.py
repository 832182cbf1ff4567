"""Point-defect candidates in a host already oriented for the microscope: vacancies, column
vacancies (e.g. V_S2), substitutions, antisites and interstitials.

Symmetry-distinct sites come from pymatgen-analysis-defects (``VacancyGenerator``,
``SubstitutionGenerator``, ``AntiSiteGenerator``; Shen & Varley, JOSS 9, 5941 (2024)) run on the
host *as the microscope sees it*: cut along the beam by the family's :class:`~library.orient.View`
and padded with vacuum, so a vacancy at another depth or in another projected column is another
hypothesis, while sites related by a symmetry of the specimen are one. The defect is then made in
the periodic host cell, so every member keeps the family's cell.

Interstitial sites are the vertices of the Voronoi tessellation of the host (the centres of its
largest empty spheres; the construction behind pymatgen's ``VoronoiInterstitialGenerator``), kept
where the nearest host atom is at least ``min_distance`` away and inside the host along its
vacuum direction; the Voronoi generator itself rejects cells with vacuum (its Niggli reduction
fails), hence scipy's ``Voronoi`` here.

Every generator returns new :class:`~library.candidate.Candidate` objects (copies; the host is
not touched), named ``V_S``, ``Mo_S``, ``Mo_i`` ... with the site's projected position and depth.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ase import Atoms

from forward import InputError, atomic_number
from library._symmetry import finite_structure, match_index, quiet_spglib, vacuum_axis
from library.candidate import Candidate
from library.orient import View

__all__ = ["vacancies", "column_vacancies", "column_substitutions", "substitutions", "antisites", "interstitials"]


def _where(structure, i: int, tol: float = 0.1) -> str:
    """Projected column (its position and the elements in it) and depth of site ``i``."""
    xyz = np.asarray(structure.cart_coords)
    ab = np.asarray(structure.lattice.abc[:2])
    d = np.abs(xyz[:, :2] - xyz[i, :2][None, :])
    d = np.minimum(d, ab[None, :] - d)
    col = np.hypot(d[:, 0], d[:, 1]) < tol
    els = "-".join(sorted({structure[k].specie.symbol for k in np.flatnonzero(col)}))
    x, y, z = xyz[i]
    return f"{els} column ({x:.2f}, {y:.2f}) Å, depth {z:.2f} Å"


def _derive(host: Candidate, atoms: Atoms, name: str, tags, notes) -> Candidate:
    prov = dataclasses.replace(
        host.provenance,
        energy=None,
        relaxation=(),
        notes=host.provenance.notes + tuple((str(k), str(v)) for k, v in notes),
    )
    return Candidate(atoms=atoms, name=name, tags=tuple(tags), provenance=prov)


def _check_elements(host: Candidate, elements, what: str) -> list[str]:
    present = sorted(set(host.atoms.get_chemical_symbols()))
    out = []
    for el in elements:
        atomic_number(str(el))  # unknown symbols raise with a suggestion
        if str(el) not in present:
            raise InputError(f"{what}: element {el!r} is not in the host {host.name!r} (it has {present})")
        out.append(str(el))
    return out


def vacancies(host: Candidate, view: View, elements=None, *, symprec: float = 0.01) -> list[Candidate]:
    """One candidate per symmetry-distinct vacancy of ``elements`` (default: every element)."""
    from pymatgen.analysis.defects.generators import VacancyGenerator

    els = None if elements is None else _check_elements(host, elements, "vacancies")
    st = finite_structure(host.atoms, view)
    with quiet_spglib():
        defects = list(VacancyGenerator(symprec=symprec).generate(st, rm_species=els))
    out = []
    for d in defects:
        i = match_index(st, d.site.coords)
        el = host.atoms[i].symbol
        atoms = host.atoms.copy()
        del atoms[i]
        name = f"V_{el} @ {_where(st, i)}"
        out.append(_derive(host, atoms, name, ("vacancy", f"V_{el}"), [("generator", "vacancy"), ("site", i)]))
    return sorted(out, key=lambda c: c.name)


def _columns(host: Candidate, view: View, el: str, count: int, tol: float, symprec: float, what: str):
    """``(first site, sorted atom indices)`` of every symmetry-distinct projected column holding
    ``count`` atoms of ``el`` (the ``count`` nearest the beam entrance)."""
    from pymatgen.analysis.defects.generators import VacancyGenerator

    if int(count) < 2:
        raise InputError(f"{what} count must be >= 2 (use the single-atom generator for one), got {count}")
    st = finite_structure(host.atoms, view)
    with quiet_spglib():
        defects = list(VacancyGenerator(symprec=symprec).generate(st, rm_species=[el]))
    xy = np.asarray(st.cart_coords)[:, :2]
    cell_xy = np.asarray(view.cell[:2])
    syms = np.asarray(host.atoms.get_chemical_symbols())
    out, seen = [], set()
    for d in defects:
        i = match_index(st, d.site.coords)
        dxy = np.abs(xy - xy[i][None, :])
        dxy = np.minimum(dxy, cell_xy[None, :] - dxy)
        col = np.flatnonzero((np.hypot(dxy[:, 0], dxy[:, 1]) < tol) & (syms == el))
        if len(col) < count:
            continue
        col = col[np.argsort(st.cart_coords[col, 2])][: int(count)]
        key = tuple(sorted(int(c) for c in col))
        if key not in seen:
            seen.add(key)
            out.append((st, i, key))
    if not out:
        raise InputError(
            f"{what}: no projected column of host {host.name!r} holds {count} {el} atoms "
            f"(within {tol} Å in x, y); lower count or check the zone axis"
        )
    return out


def column_vacancies(
    host: Candidate, view: View, element: str, *, count: int = 2, tol: float = 0.1, symprec: float = 0.01
) -> list[Candidate]:
    """Remove ``count`` atoms of ``element`` sharing one projected column (e.g. V_S2 in MoS2:
    both S of a column). One candidate per symmetry-distinct column (by its first atom's site)."""
    (el,) = _check_elements(host, [element], "column_vacancies")
    out = []
    for st, i, key in _columns(host, view, el, int(count), tol, symprec, "column_vacancies"):
        atoms = host.atoms.copy()
        del atoms[list(key)]
        name = f"V_{el}{count} @ {_where(st, i)}"
        out.append(
            _derive(host, atoms, name, ("vacancy", f"V_{el}{count}"), [("generator", "column_vacancy"), ("sites", key)])
        )
    return out


def column_substitutions(
    host: Candidate, view: View, element: str, by: str, *, count: int = 2, tol: float = 0.1, symprec: float = 0.01
) -> list[Candidate]:
    """Replace ``count`` atoms of ``element`` sharing one projected column by ``by`` (e.g. Se2_S2
    in MoS2: both S of a column by Se). One candidate per symmetry-distinct column."""
    (el,) = _check_elements(host, [element], "column_substitutions")
    atomic_number(str(by))  # an unknown symbol raises with a suggestion
    out = []
    for st, i, key in _columns(host, view, el, int(count), tol, symprec, "column_substitutions"):
        atoms = host.atoms.copy()
        atoms.numbers[list(key)] = atomic_number(str(by))
        tag = f"{by}{count}_{el}{count}"
        name = f"{tag} @ {_where(st, i)}"
        out.append(_derive(host, atoms, name, ("substitution", tag),
                           [("generator", "column_substitution"), ("sites", key)]))  # fmt: skip
    return out


def _substituted(host: Candidate, st, defects, kind: str) -> list[Candidate]:
    out = []
    for d in defects:
        i = match_index(st, d.site.coords)
        old = host.atoms[i].symbol
        new = str(d.site.specie.symbol)
        atoms = host.atoms.copy()
        atoms.numbers[i] = atomic_number(new)
        name = f"{new}_{old} @ {_where(st, i)}"
        out.append(_derive(host, atoms, name, (kind, f"{new}_{old}"), [("generator", kind), ("site", i)]))
    return sorted(out, key=lambda c: c.name)  # pymatgen iterates a set of elements: fix the order


def substitutions(host: Candidate, view: View, mapping: dict, *, symprec: float = 0.01) -> list[Candidate]:
    """Substitute host elements: ``mapping`` {host element: new element or list of them}
    (e.g. ``{"S": ["O", "Se"]}``); one candidate per symmetry-distinct site and substituent."""
    from pymatgen.analysis.defects.generators import SubstitutionGenerator

    if not isinstance(mapping, dict) or not mapping:
        raise InputError(f"substitutions needs a mapping {{host element: new element(s)}}, got {mapping!r}")
    _check_elements(host, list(mapping), "substitutions")
    clean = {}
    for k, v in mapping.items():
        vs = [v] if isinstance(v, str) else list(v)
        for s in vs:
            atomic_number(str(s))
        clean[str(k)] = [str(s) for s in vs]
    st = finite_structure(host.atoms, view)
    with quiet_spglib():
        defects = list(SubstitutionGenerator(symprec=symprec).generate(st, substitution=clean))
    return _substituted(host, st, defects, "substitution")


def antisites(host: Candidate, view: View, *, symprec: float = 0.01) -> list[Candidate]:
    """Every A_B antisite of the host's elements (A on a B site), e.g. Mo_S and S_Mo in MoS2."""
    from pymatgen.analysis.defects.generators import AntiSiteGenerator

    if len(set(host.atoms.get_chemical_symbols())) < 2:
        raise InputError(f"antisites need a host with two or more elements; {host.name!r} has one")
    st = finite_structure(host.atoms, view)
    with quiet_spglib():
        defects = list(AntiSiteGenerator(symprec=symprec).generate(st))
    return _substituted(host, st, defects, "antisite")


def interstitials(
    host: Candidate, view: View, species, *, min_distance: float = 1.6, merge: float = 0.5
) -> list[Candidate]:
    """Interstitial ``species`` at the host's Voronoi vertices (see module docstring).

    Args:
        species: element symbols to insert.
        min_distance: smallest allowed distance from the inserted atom to a host atom [Å].
        merge: vertices closer than this are merged into one site [Å].
    """
    from scipy.spatial import Voronoi

    specs = [str(s) for s in ([species] if isinstance(species, str) else species)]
    for s in specs:
        atomic_number(s)
    atoms = host.atoms
    lengths = np.diag(np.asarray(atoms.cell.array))
    pos = np.mod(np.asarray(atoms.positions, dtype=np.float64), lengths[None, :])
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=np.float64)
    images = (pos[None, :, :] + shifts[:, None, :] * lengths[None, None, :]).reshape(-1, 3)
    verts = Voronoi(images).vertices
    verts = verts[np.all((verts >= 0) & (verts < lengths[None, :]), axis=1)]
    ax, gap = vacuum_axis(atoms)
    if gap > 4.0:  # a slab: keep sites between its outer atomic planes along the vacuum direction
        lo, hi = _span(pos[:, ax], lengths[ax])
        rel = np.mod(verts[:, ax] - lo, lengths[ax])
        verts = verts[rel <= hi]
    from scipy.spatial import cKDTree

    tree = cKDTree(pos, boxsize=lengths * (1 + 1e-12))
    d, _ = tree.query(np.mod(verts, lengths[None, :] * (1 - 1e-12)))
    verts = verts[d >= min_distance]
    sites: list[np.ndarray] = []
    for v in verts[np.argsort(-d[d >= min_distance])]:
        if all(_pdist(v, s, lengths) > merge for s in sites):
            sites.append(v)
    if not sites:
        raise InputError(
            f"interstitials: no empty site in host {host.name!r} is at least {min_distance} Å from "
            "every atom; lower min_distance"
        )
    out = []
    for s in specs:
        for k, v in enumerate(sites):
            new = atoms.copy()
            new.append(s)
            new.positions[-1] = v
            name = f"{s}_i #{k} @ ({v[0]:.2f}, {v[1]:.2f}, {v[2]:.2f}) Å"
            out.append(
                _derive(host, new, name, ("interstitial", f"{s}_i"), [("generator", "interstitial"), ("site", np.round(v, 3).tolist())])
            )
    return out


def _span(x: np.ndarray, period: float) -> tuple[float, float]:
    """Start and length of the shortest periodic interval holding every ``x``."""
    xs = np.sort(np.mod(x, period))
    gaps = np.diff(np.concatenate([xs, xs[:1] + period]))
    k = int(np.argmax(gaps))
    return float(xs[(k + 1) % len(xs)]), float(period - gaps[k])


def _pdist(a, b, lengths) -> float:
    d = np.abs(a - b)
    d = np.minimum(d, lengths - d)
    return float(np.sqrt((d**2).sum()))
