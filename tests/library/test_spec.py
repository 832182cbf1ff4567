"""The TOML spec: parsing, its errors, and builds from hosts, slabs, files and supercells."""

from __future__ import annotations

import pytest
from ase.build import bulk
from ase.io import write

from forward import InputError
from library import build_family, build_library, load_spec, open_library, parse_spec


def _fam(**kw):
    base = {"name": "f", "host": {"builder": "bulk", "name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}
    base.update(kw)
    return {"family": [base]}


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, r"the spec has no \[\[family\]\] tables"),
        ({"library": {"name": "x"}, "families": []}, r"unknown key\(s\) \['families'\] in the spec"),
        (_fam(host={"builder": "crystal"}), r"host builder must be one of"),
        (_fam(generate=[{"kind": "divacancy"}]), r"kind must be one of"),
        (_fam(generate=[{"kind": "vacancy", "element": "O"}]), r"unknown key\(s\) \['element'\] in family 'f' generate #0"),
        (_fam(orientation={"zone": [0, 0, 1]}), r"unknown key\(s\) \['zone'\] in family 'f' orientation"),
        (_fam(orientation={"mode": "rotated"}), r"orientation mode must be 'zone_axis' or 'as_is'"),
        ({"family": [{"name": "f"}]}, r"family 'f' needs a host table or sources"),
        (_fam(generate=[{"kind": "substitution"}]), r"generate #0 \(substitution\) needs \['mapping'\]"),
        (_fam(host={"builder": "cell", "lattice": [3, 3, 3]}), r"host \(cell\) needs \['frac_coords', 'species'\]"),
        ({"family": [{"host": {}}]}, r"family #0 needs a name"),
        ({"family": [_fam()["family"][0], _fam()["family"][0]]}, r"family names must be unique, \['f'\] repeat"),
    ],
)
def test_spec_errors_name_the_file_and_the_problem(data, message):
    with pytest.raises(InputError, match=r"my\.toml: .*" + message):
        parse_spec(data, source="my.toml")


def test_spec_file_errors(tmp_path):
    (tmp_path / "bad.toml").write_text("[library\nname=")
    with pytest.raises(InputError, match=r"bad\.toml: not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(InputError, match=r"none\.toml: no such spec file"):
        load_spec(tmp_path / "none.toml")


def test_family_from_files_with_supercell_and_zone_axis(tmp_path):
    for k, d in enumerate([0.0, 0.15]):
        a = bulk("Cu", "fcc", a=3.61, cubic=True)
        a.positions[0] += [d, 0.0, 0.0]
        a.info["energy"] = -14.0 + 0.05 * k
        write(tmp_path / f"cu{k}.extxyz", a, format="extxyz")
    spec = parse_spec(
        {
            "family": [
                {
                    "name": "files",
                    "sources": ["cu*.extxyz"],
                    "orientation": {"zone_axis": [0, 0, 1], "min_lengths": [7.0, 7.0], "vacuum": 2.0},
                    "priors": {"kind": "boltzmann", "temperature": 600.0},
                }
            ]
        },
        source=str(tmp_path / "s.toml"),
        base_dir=str(tmp_path),
    )
    entries, info = build_family(spec.families[0], base_dir=str(tmp_path))
    assert [e.name for e in entries] == ["cu0", "cu1"]
    assert all(e.specimen.n_atoms == 16 for e in entries)
    # energies scale with the 2 x 2 supercell: ΔE = 4 x 0.05 eV
    kt = 8.617333262e-5 * 600.0
    import numpy as np

    assert float(entries[0].prior) / float(entries[1].prior) == pytest.approx(np.exp(0.2 / kt))
    assert "Boltzmann at T = 600 K" in info.prior_explanation


def test_family_cells_must_agree_named(tmp_path):
    write(tmp_path / "a.extxyz", bulk("Cu", "fcc", a=3.61, cubic=True), format="extxyz")
    write(tmp_path / "b.extxyz", bulk("Cu", "fcc", a=3.70, cubic=True), format="extxyz")
    (tmp_path / "s.toml").write_text(
        '[[family]]\nname = "mixed"\nsources = ["a.extxyz", "b.extxyz"]\norientation = { zone_axis = [0, 0, 1] }\n'
    )
    with pytest.raises(InputError, match=r"b\.extxyz: its cell .* disagrees with the family's cell"):
        build_library(tmp_path / "s.toml", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_slab_family_in_profile_view(tmp_path):
    (tmp_path / "s.toml").write_text(
        """
[[family]]
name = "STO(001)"
host = { builder = "cell", name = "SrTiO3", lattice = [3.905, 3.905, 3.905], species = ["Sr", "Ti", "O", "O", "O"], frac_coords = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]] }
slab = { miller = [0, 0, 1], min_slab_size = 6.0, min_vacuum_size = 8.0, all_terminations = true }
orientation = { zone_axis = [1, 0, 0], beam_repeats = 1, vacuum = 2.0 }
"""
    )
    out = build_library(tmp_path / "s.toml", tmp_path / "sto.h5")
    with open_library(out) as lib:
        (e,) = lib.family("STO(001)")
        assert e.specimen.n_atoms == 10
        assert "slab" in e.tags


def test_every_defect_generator_through_a_spec():
    spec = parse_spec(
        {
            "family": [
                {
                    "name": "MoS2",
                    "host": {"builder": "mx2", "formula": "MoS2", "kind": "2H", "a": 3.16, "thickness": 3.17, "vacuum": 5.0},
                    "orientation": {"zone_axis": [0, 0, 1], "min_lengths": [6.0, 5.0]},
                    "generate": [
                        {"kind": "vacancy", "elements": ["S"]},
                        {"kind": "column_vacancy", "element": "S", "count": 2},
                        {"kind": "substitution", "mapping": {"S": ["O", "Se"]}},
                        {"kind": "antisite"},
                        {"kind": "interstitial", "species": ["Mo"], "min_distance": 1.7},
                    ],
                    "priors": {"kind": "user", "weights": {}},
                }
            ]
        },
        source="inline",
    )
    with pytest.raises(InputError, match=r"user priors give no weight for \['MoS2 monolayer'"):
        build_family(spec.families[0])
    import dataclasses

    fam = dataclasses.replace(spec.families[0], priors=dataclasses.replace(spec.families[0].priors, kind="uniform"))
    entries, info = build_family(fam)
    kinds = [e.tags[1] for e in entries[1:]]
    assert {"V_S", "V_S2", "O_S", "Se_S", "Mo_S", "S_Mo", "Mo_i"} <= set(kinds)
    assert len({e.id for e in entries}) == len(entries)
    assert len({tuple(e.specimen.cell.tolist()) for e in entries}) == 1
