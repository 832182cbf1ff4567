"""Built-in example libraries: load by name, contents, shared cells, wrap into Hypotheses, and
the shipped files match a rebuild from their specs."""

from __future__ import annotations

import numpy as np
import pytest

from forward import InputError
from hypotest.hypothesis import hypothesis_from_entry
from library import build_family, load_spec
from library.builtin import NAMES, library_path, load, spec_path


@pytest.mark.parametrize("name", NAMES)
def test_load_each_and_wrap_as_hypotheses(name):
    entries = load(name)
    assert len(entries) >= 7
    cells = {tuple(np.asarray(e.specimen.cell)) for e in entries}
    assert len(cells) == 1  # one family, one cell
    total = 0.0
    for e in entries:
        h = hypothesis_from_entry(e)
        assert (h.id, h.name, h.family, float(h.prior)) == (e.id, e.name, e.family, float(e.prior))
        total += float(e.prior)
        assert e.specimen.n_atoms <= 64  # small enough for seconds on a laptop
    assert total == pytest.approx(1.0)
    assert library_path(name).stat().st_size < 1_000_000


def test_mos2_has_the_defects_asked_for():
    kinds = {e.tags[1] if len(e.tags) > 1 else e.tags[0] for e in load("mos2_defects")}
    assert {"V_S", "V_S2", "V_Mo", "Mo_S", "O_S"} <= kinds
    names = [e.name for e in load("mos2_defects")]
    assert "MoS2 monolayer" in names


def test_pt_adsorbates_relaxed_with_boltzmann_priors():
    es = load("pt111_adsorbates")
    sites = {t for e in es for t in e.tags if t.startswith("site:")}
    assert {"site:ontop", "site:hollow-fcc", "site:hollow-hcp"} <= sites and any("bridge" in s for s in sites)
    species = {t for e in es for t in e.tags if t.startswith("adsorbate:")}
    assert species == {"adsorbate:O", "adsorbate:CO"}
    for e in es:
        assert e.provenance.energy is not None
        assert dict(e.provenance.relaxation)["calculator"] == "EMT (ASE)"
    # the weights are Boltzmann factors of the stored energies (same composition within O and CO)
    o = {e.name: e for e in es if "adsorbate:O" in e.tags}
    a, b = o["O @ ontop"], o["O @ hollow-fcc"]
    kt = 8.617333262e-5 * 300.0
    ratio = np.exp(-(a.provenance.energy - b.provenance.energy) / kt)
    assert float(a.prior) / float(b.prior) == pytest.approx(ratio, rel=1e-6)


def test_sto_vacancies_in_both_column_kinds():
    names = [e.name for e in load("srtio3_vacancy")]
    assert sum("O-Ti column" in n for n in names) == 3 and sum("@ O column" in n for n in names) == 3


def test_mos2_se_holds_the_worked_example_defects():
    kinds = sorted(e.tags[1] if len(e.tags) > 1 else e.tags[0] for e in load("mos2_se"))
    assert kinds == sorted(["pristine", "V_S", "V_S2", "Se_S", "Se2_S2", "V_Mo", "S_Mo"]), kinds


@pytest.mark.parametrize("name", ["mos2_defects", "srtio3_vacancy", "mos2_se"])
def test_shipped_file_matches_a_rebuild(name):
    spec = load_spec(spec_path(name))
    rebuilt = [e for fam in spec.families for e in build_family(fam, base_dir=spec.base_dir)[0]]
    shipped = load(name)
    assert [e.id for e in rebuilt] == [e.id for e in shipped]
    assert [e.name for e in rebuilt] == [e.name for e in shipped]


@pytest.mark.slow
def test_pt_shipped_file_matches_a_rebuild():
    spec = load_spec(spec_path("pt111_adsorbates"))
    rebuilt = build_family(spec.families[0], base_dir=spec.base_dir)[0]
    shipped = load("pt111_adsorbates")
    assert [e.name for e in rebuilt] == [e.name for e in shipped]
    np.testing.assert_allclose([e.provenance.energy for e in rebuilt], [e.provenance.energy for e in shipped], atol=1e-4)


def test_unknown_builtin_named():
    with pytest.raises(InputError, match=r"no built-in library 'graphene'; the built-in libraries are"):
        load("graphene")
