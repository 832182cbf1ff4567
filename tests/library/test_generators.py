"""Generators: vacancies, column vacancies, substitutions, antisites, interstitials, supercells,
slabs with terminations, adsorbates at top/bridge/hollow sites."""

from __future__ import annotations

import numpy as np
import pytest

from forward import InputError
from library import build, defects, hosts, surfaces
from library.orient import find_orientation, make_view


def _oriented_host(host, zone=(0, 0, 1), min_lengths=(6.0, 6.0), beam_repeats=1, vacuum=3.0):
    ori = find_orientation(host.atoms, zone, min_lengths=min_lengths, beam_repeats=beam_repeats)
    h = build.oriented(host, ori)
    return h, make_view(h.atoms, vacuum=vacuum)


@pytest.fixture(scope="module")
def mos2():
    return _oriented_host(hosts.mx2_host("MoS2", "2H", a=3.16, thickness=3.17, vacuum=6.0))


@pytest.fixture(scope="module")
def sto():
    h = hosts.cell_host(
        "SrTiO3", [3.905] * 3, ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    return _oriented_host(h, min_lengths=(3.9, 3.9), beam_repeats=2, vacuum=2.0)


def test_vacancies_mos2(mos2):
    host, view = mos2
    out = defects.vacancies(host, view)
    kinds = sorted(c.tags[1] for c in out)
    # top and bottom S are related by the mirror plane of the monolayer: one V_S
    assert kinds == ["V_Mo", "V_S"]
    for c in out:
        assert len(c.atoms) == len(host.atoms) - 1
        np.testing.assert_array_equal(c.atoms.cell.array, host.atoms.cell.array)


def test_vacancies_distinguish_columns_and_depths(sto):
    host, view = sto
    out = defects.vacancies(host, view, ["O"])
    names = [c.name for c in out]
    # 2 unit cells along the beam, cut into a 4-plane slab: O in 2 SrO planes (Ti-O column) and
    # 2 TiO2 planes (pure O columns), each depth distinct
    assert len(out) == 4
    assert sum("O-Ti column" in n for n in names) == 2
    assert sum(n.startswith("V_O @ O column") for n in names) == 2


def test_column_vacancy_removes_both_sulfurs(mos2):
    host, view = mos2
    (c,) = defects.column_vacancies(host, view, "S", count=2)
    assert c.tags[1] == "V_S2"
    assert c.atoms.get_chemical_symbols().count("S") == host.atoms.get_chemical_symbols().count("S") - 2
    with pytest.raises(InputError, match=r"no projected column .* holds 3 S atoms"):
        defects.column_vacancies(host, view, "S", count=3)


def test_column_substitution_replaces_both_sulfurs_of_one_column(mos2):
    host, view = mos2
    (c,) = defects.column_substitutions(host, view, "S", "Se", count=2)
    assert c.tags[1] == "Se2_S2"
    sym, hs = c.atoms.get_chemical_symbols(), host.atoms.get_chemical_symbols()
    assert sym.count("Se") == 2 and sym.count("S") == hs.count("S") - 2 and len(sym) == len(hs)
    se = c.atoms.positions[[i for i, s in enumerate(sym) if s == "Se"]]
    # one projected column: same (x, y), the two heights of the monolayer's S planes
    np.testing.assert_allclose(se[0, :2], se[1, :2], atol=1e-6)
    assert abs(se[0, 2] - se[1, 2]) == pytest.approx(3.17, abs=1e-6)
    np.testing.assert_allclose(c.atoms.positions, host.atoms.positions)
    with pytest.raises(InputError, match=r"column_substitutions: no projected column .* holds 3 S"):
        defects.column_substitutions(host, view, "S", "Se", count=3)
    with pytest.raises(InputError, match=r"Sx"):
        defects.column_substitutions(host, view, "S", "Sx")


def test_substitutions_and_antisites(mos2):
    host, view = mos2
    subs = defects.substitutions(host, view, {"S": ["O", "Se"]})
    assert sorted(c.tags[1] for c in subs) == ["O_S", "Se_S"]
    anti = defects.antisites(host, view)
    assert sorted(c.tags[1] for c in anti) == ["Mo_S", "S_Mo"]
    mo_s = next(c for c in anti if c.tags[1] == "Mo_S")
    assert mo_s.atoms.get_chemical_symbols().count("Mo") == host.atoms.get_chemical_symbols().count("Mo") + 1


def test_generator_input_errors(mos2):
    host, view = mos2
    with pytest.raises(InputError, match=r"element 'Pt' is not in the host"):
        defects.vacancies(host, view, ["Pt"])
    with pytest.raises(InputError, match=r"unknown element symbol 'Xx'"):
        defects.substitutions(host, view, {"S": "Xx"})
    with pytest.raises(InputError, match=r"antisites need a host with two or more elements"):
        defects.antisites(hosts.bulk_host("Cu", "fcc", a=3.61, cubic=True), view)


def test_interstitials_inside_the_layer(mos2):
    host, view = mos2
    # the empty hexagon centre of the Mo plane is a/sqrt(3) = 1.82 Å from three Mo atoms
    out = defects.interstitials(host, view, ["Mo"], min_distance=1.7)
    assert out
    z = host.atoms.positions[:, 2]
    for c in out:
        new = c.atoms.positions[-1]
        assert z.min() - 1e-6 <= new[2] <= z.max() + 1e-6  # not floating in the vacuum
        assert np.min(c.atoms.get_distances(len(c.atoms) - 1, range(len(host.atoms)), mic=True)) >= 1.7 - 1e-9
    with pytest.raises(InputError, match=r"no empty site .* at least 9.0 Å"):
        defects.interstitials(host, view, ["Mo"], min_distance=9.0)


def test_supercell_scales_energy():
    import dataclasses

    h = hosts.bulk_host("Cu", "fcc", a=3.61, cubic=True)
    h = h.with_atoms(h.atoms, provenance=dataclasses.replace(h.provenance, energy=-14.0))
    s = hosts.supercell(h, (2, 1, 3))
    assert len(s.atoms) == 24
    assert s.provenance.supercell == (2, 1, 3)
    assert s.provenance.energy == pytest.approx(-84.0)
    with pytest.raises(InputError, match=r"supercell repeats must be 3 positive integers"):
        hosts.supercell(h, (0, 1, 1))


def test_slab_terminations():
    sto = hosts.cell_host(
        "SrTiO3", [3.905] * 3, ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    terms = surfaces.slabs(sto, (0, 0, 1), min_slab_size=6.0, min_vacuum_size=10.0, symmetric=True)
    assert len(terms) == 2  # symmetric SrO- and TiO2-terminated slabs
    tops = set()
    for t in terms:
        a = t.atoms
        cell = a.cell.array
        assert abs(np.dot(cell[2], cell[0])) < 1e-6 and abs(np.dot(cell[2], cell[1])) < 1e-6
        top = a.positions[:, 2].max()
        tops.add(tuple(sorted(set(np.asarray(a.get_chemical_symbols())[a.positions[:, 2] > top - 0.5]))))
    assert tops == {("O", "Sr"), ("O", "Ti")}
    with pytest.raises(InputError, match=r"min_vacuum_size 2.0 Å is too little vacuum"):
        surfaces.slabs(sto, (0, 0, 1), min_vacuum_size=2.0)


@pytest.fixture(scope="module")
def pt_profile():
    bulk = hosts.bulk_host("Pt", "fcc", a=3.92)
    (slab,) = surfaces.slabs(bulk, (1, 1, 1), min_slab_size=6.0, min_vacuum_size=8.0)
    return _oriented_host(slab, zone=(1, 0, 0), min_lengths=(5.0, 0.0), beam_repeats=2, vacuum=2.0)


def test_adsorbates_top_bridge_hollow(pt_profile):
    slab, view = pt_profile
    out = surfaces.adsorbates(slab, ["O", "OH", "CO", "H", "H2O"], ["ontop", "bridge", "hollow"])
    labels = {c.tags[2] for c in out}
    assert {"site:ontop", "site:hollow-fcc", "site:hollow-hcp"} <= labels
    assert any(lab.startswith("site:bridge") for lab in labels)
    normal = 1  # profile view: the surface normal is y
    top = slab.atoms.positions[:, normal].max()
    for c in out:
        ads = c.atoms[len(slab.atoms):]
        assert ads[0].position[normal] > top + 0.5  # the binding atom sits above the surface
        assert c.atoms.get_chemical_symbols()[len(slab.atoms):] == list(surfaces.ADSORBATES[c.tags[1].split(":")[1]][0])
        np.testing.assert_array_equal(c.atoms.cell.array, slab.atoms.cell.array)


def test_adsorbate_errors(pt_profile, sto):
    slab, _ = pt_profile
    with pytest.raises(InputError, match=r"unknown adsorbate 'N2'"):
        surfaces.adsorbates(slab, ["N2"])
    with pytest.raises(InputError, match=r"unknown adsorption site kind 'atop'"):
        surfaces.adsorbates(slab, ["O"], ["atop"])
    bulkish = hosts.bulk_host("Cu", "fcc", a=3.61, cubic=True)
    with pytest.raises(InputError, match=r"has no vacuum gap"):
        surfaces.adsorbates(bulkish, ["O"])
