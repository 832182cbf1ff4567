"""Surface candidates: slabs with each of their terminations, and adsorbates at top, bridge and
hollow sites.

Slabs come from pymatgen's ``SlabGenerator`` (Tran et al., Sci. Data 3, 160080 (2016); Sun &
Ceder, Surf. Sci. 617, 53 (2013)), one per distinct termination, with the c axis made
perpendicular to the surface. Adsorption sites come from pymatgen's ``AdsorbateSiteFinder``
(Montoya & Persson, npj Comput. Mater. 3, 14 (2017)): the Delaunay triangulation of the surface
atoms gives on-top (vertices), bridge (edge midpoints) and hollow (triangle centroids) sites,
reduced by the symmetry of the slab.

Adsorbates are placed on a slab already in the family's orthogonal cell
(:mod:`library.orient`), so every member shares it; the surface normal is that cell's axis with
the widest vacuum gap (y in a profile view, z in a plan view).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ase import Atoms

from forward import InputError
from library._symmetry import quiet_spglib, to_structure, vacuum_axis
from library.candidate import Candidate, make_candidate

__all__ = ["ADSORBATES", "SITE_KINDS", "slabs", "adsorbates"]

#: Adsorbate geometries [Å]: the first atom binds to the surface, the rest point away from it
#: along +z. Bond lengths: O-H 0.97 Å, C-O 1.13 Å (CO), H2O with O-H 0.96 Å and H-O-H 104.5°
#: (NIST CCCBDB experimental geometries).
ADSORBATES: dict[str, tuple[tuple[str, ...], tuple[tuple[float, float, float], ...]]] = {
    "H": (("H",), ((0.0, 0.0, 0.0),)),
    "O": (("O",), ((0.0, 0.0, 0.0),)),
    "OH": (("O", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.97))),
    "CO": (("C", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.13))),
    "H2O": (("O", "H", "H"), ((0.0, 0.0, 0.0), (0.759, 0.0, 0.588), (-0.759, 0.0, 0.588))),
}

#: Site kinds understood by :func:`adsorbates`, in pymatgen's names.
SITE_KINDS = ("ontop", "bridge", "hollow")


def slabs(
    bulk: Candidate,
    miller=(1, 1, 1),
    *,
    min_slab_size: float = 6.0,
    min_vacuum_size: float = 12.0,
    symmetric: bool = False,
) -> list[Candidate]:
    """One slab per termination of the ``miller`` surface of ``bulk``.

    Args:
        bulk: the bulk crystal.
        miller: Miller indices (h, k, l) of the surface.
        min_slab_size: smallest slab thickness [Å].
        min_vacuum_size: smallest vacuum between periodic images of the slab [Å].
        symmetric: keep only terminations whose two surfaces are equivalent.
    """
    from pymatgen.core.surface import SlabGenerator
    from pymatgen.io.ase import AseAtomsAdaptor

    hkl = tuple(int(h) for h in miller)
    if len(hkl) != 3 or not any(hkl):
        raise InputError(f"miller indices must be 3 integers, not all zero, got {miller!r}")
    if min_vacuum_size < 5.0:
        raise InputError(
            f"min_vacuum_size {min_vacuum_size} Å is too little vacuum between slab images; give >= 5 Å"
        )
    st = AseAtomsAdaptor.get_structure(bulk.atoms)
    with quiet_spglib():
        gen = SlabGenerator(st, hkl, min_slab_size, min_vacuum_size, center_slab=True, primitive=True, lll_reduce=True)
        found = gen.get_slabs(symmetrize=symmetric)
    if not found:
        raise InputError(f"SlabGenerator found no {list(hkl)} slab of {bulk.name!r}")
    out = []
    for k, slab in enumerate(found):
        slab = slab.get_orthogonal_c_slab()
        atoms = AseAtomsAdaptor.get_atoms(slab)
        shift = float(slab.shift)
        prov = dataclasses.replace(
            bulk.provenance,
            energy=None,
            relaxation=(),
            notes=bulk.provenance.notes
            + (("generator", "slab"), ("miller", str(list(hkl))), ("termination", f"{k} (shift {shift:.4f})")),
        )
        name = f"{bulk.name}({''.join(str(h) for h in hkl)}) termination {k}"
        out.append(make_candidate(atoms, name, tags=("slab", f"termination:{k}"), provenance=prov))
    return out


def _molecule(name: str):
    from pymatgen.core import Molecule

    if name not in ADSORBATES:
        raise InputError(f"unknown adsorbate {name!r}; expected one of {sorted(ADSORBATES)}")
    species, coords = ADSORBATES[name]
    return Molecule(list(species), [list(c) for c in coords])


def _hollow_kind(st, site: np.ndarray, height_tol: float = 0.7) -> str:
    """'hcp' if an atom of the second layer lies below a hollow site, 'fcc' if one of the third
    does (close-packed surfaces), otherwise 'hollow'."""
    c = st.cart_coords[:, 2]
    layers = np.unique(np.round(np.sort(c)[::-1] / height_tol))[::-1] * height_tol
    a, b = st.lattice.abc[:2]
    dxy = np.abs(st.cart_coords[:, :2] - site[None, :2])
    dxy = np.minimum(dxy, np.array([a, b])[None, :] - dxy)
    below = np.hypot(dxy[:, 0], dxy[:, 1]) < 0.5
    for k, z in enumerate(layers[:3]):
        if np.any(below & (np.abs(c - z) < height_tol / 2)):
            return {1: "hcp", 2: "fcc"}.get(k, "hollow")
    return "hollow"


def adsorbates(
    slab: Candidate,
    species=("O",),
    sites=SITE_KINDS,
    *,
    distance: float = 1.8,
    normal_axis: int | None = None,
) -> list[Candidate]:
    """One candidate per adsorbate species and symmetry-distinct site on the top surface.

    Args:
        slab: a slab in an orthogonal periodic cell (beam along z), vacuum along its normal.
        species: adsorbate names from :data:`ADSORBATES`.
        sites: site kinds from :data:`SITE_KINDS`.
        distance: height of the binding atom above the surface plane [Å] (relaxation refines it).
        normal_axis: 0, 1 or 2; default: the axis with the widest vacuum gap.
    """
    specs = [species] if isinstance(species, str) else list(species)
    mols = {s: _molecule(str(s)) for s in specs}
    kinds = [sites] if isinstance(sites, str) else list(sites)
    for k in kinds:
        if k not in SITE_KINDS:
            raise InputError(f"unknown adsorption site kind {k!r}; expected one of {list(SITE_KINDS)}")
    ax, gap = vacuum_axis(slab.atoms)
    ax = ax if normal_axis is None else int(normal_axis)
    if gap < 5.0 and normal_axis is None:
        raise InputError(
            f"adsorbates: {slab.name!r} has no vacuum gap (widest empty gap {gap:.2f} Å); adsorbates "
            "need a slab with vacuum above its surface (use a slab generator or add vacuum)"
        )
    order = [(ax + 1) % 3, (ax + 2) % 3, ax]  # cyclic: the normal becomes c, handedness kept
    inverse = np.argsort(order)
    st = to_structure(slab.atoms, order)
    from pymatgen.analysis.adsorption import AdsorbateSiteFinder

    with quiet_spglib():
        asf = AdsorbateSiteFinder(st)
        found = asf.find_adsorption_sites(distance=float(distance), positions=tuple(kinds))
    out = []
    lengths = np.diag(np.asarray(slab.atoms.cell.array))
    for kind in kinds:
        for k, site in enumerate(found.get(kind, [])):
            label = kind
            if kind == "hollow":
                hk = _hollow_kind(st, site)
                label = "hollow" if hk == "hollow" else f"hollow-{hk}"
            if len(found[kind]) > 1 and kind != "hollow":
                label = f"{kind} {k + 1}"
            for s, mol in mols.items():
                with quiet_spglib():
                    new = asf.add_adsorbate(mol, site, reorient=True)
                ads = new.cart_coords[len(st):][:, inverse]
                atoms = slab.atoms.copy()
                atoms += Atoms([sp.symbol for sp in new.species[len(st):]], positions=ads)
                atoms.positions[:] = np.mod(atoms.positions, lengths[None, :])
                prov = dataclasses.replace(
                    slab.provenance,
                    energy=None,
                    relaxation=(),
                    notes=slab.provenance.notes
                    + (("generator", "adsorbate"), ("adsorbate", s), ("site", f"{label} {np.round(site, 3).tolist()}")),
                )
                out.append(
                    Candidate(
                        atoms=atoms,
                        name=f"{s} @ {label}",
                        tags=("adsorbate", f"adsorbate:{s}", f"site:{label}"),
                        provenance=prov,
                    )
                )
    if not out:
        raise InputError(f"adsorbates: no {kinds} sites found on {slab.name!r}")
    return out
