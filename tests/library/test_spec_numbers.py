"""Numbers in a TOML library spec: lattice constants and other lengths positive and finite,
counts whole, booleans not numbers; the error names the file and the field path."""

from __future__ import annotations

import pytest

from forward import InputError
from library import load_spec, parse_spec

HOST = {"builder": "bulk", "name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}


def _fam(**kw):
    base = {"name": "f", "host": dict(HOST)}
    base.update(kw)
    return {"family": [base]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_fam(host={**HOST, "a": -3.61}), r"family 'f' host\.a must be a positive finite number \[Å\], got -3\.61"),
        (_fam(host={**HOST, "a": 0}), r"host\.a must be a positive finite number \[Å\], got 0"),
        (_fam(host={**HOST, "a": float("nan")}), r"host\.a must be a positive finite number \[Å\], got nan"),
        (_fam(host={**HOST, "a": float("inf")}), r"host\.a must be a positive finite number \[Å\], got inf"),
        (_fam(host={**HOST, "a": True}), r"host\.a must be a positive finite number \[Å\], got True"),
        (_fam(host={**HOST, "a": "3.61"}), r"host\.a must be a positive finite number \[Å\], got '3\.61'"),
        (_fam(host={**HOST, "c": -1.0}), r"host\.c must be a positive finite number"),
        (_fam(host={**HOST, "cubic": 1}), r"host\.cubic must be true or false, got 1"),
        (_fam(host={"builder": "mx2", "a": 3.16, "thickness": -3.17}), r"host\.thickness must be a positive finite number"),
        (_fam(host={"builder": "mx2", "a": 3.16, "vacuum": -1}), r"host\.vacuum must be a finite number >= 0 \[Å\]"),
        (_fam(host={"builder": "cell", "lattice": [3, -3, 3], "species": ["Cu"], "frac_coords": [[0, 0, 0]]}),
         r"host\.lattice\[1\] must be a positive finite number \[Å\], got -3"),
        (_fam(host={"builder": "cell", "lattice": [[3, 0, 0], [0, 0, 0], [0, 0, 3]], "species": ["Cu"],
                    "frac_coords": [[0, 0, 0]]}), r"host\.lattice\[1\] is a lattice vector of length 0"),
        (_fam(host={"builder": "cell", "lattice": [[3, 0, 0], [0, 3, float("nan")], [0, 0, 3]], "species": ["Cu"],
                    "frac_coords": [[0, 0, 0]]}), r"host\.lattice\[1\]\[2\] must be a finite number \[Å\], got nan"),
        (_fam(slab={"miller": [1, 1, 1], "min_slab_size": -6.0}), r"slab\.min_slab_size must be a positive finite number"),
        (_fam(orientation={"vacuum": -3.0}), r"orientation\.vacuum must be a finite number >= 0 \[Å\], got -3\.0"),
        (_fam(orientation={"min_lengths": [9.0, -1.0]}), r"orientation\.min_lengths\[1\] must be a finite number >= 0"),
        (_fam(orientation={"beam_repeats": 1.5}), r"orientation\.beam_repeats must be a whole number >= 1, got 1\.5"),
        (_fam(orientation={"zone_axis": [0, 0, 0]}), r"orientation\.zone_axis must not be \[0, 0, 0\]"),
        (_fam(supercell=[2, 0, 1]), r"family 'f' supercell\[1\] must be a whole number >= 1, got 0"),
        (_fam(supercell=[2, True, 1]), r"supercell\[1\] must be a whole number >= 1, got True"),
        (_fam(generate=[{"kind": "adsorbate", "distance": -1.8}]), r"generate #0 \(adsorbate\)\.distance must be a positive"),
        (_fam(generate=[{"kind": "column_vacancy", "element": "S", "count": 0}]), r"\(column_vacancy\)\.count must be a whole"),
        (_fam(dw_sigmas={"Cu": -0.1}), r"dw_sigmas\.Cu must be a finite number >= 0 \[Å\], got -0\.1"),
        (_fam(priors={"kind": "boltzmann", "temperature": -300.0}), r"priors\.temperature must be a positive finite number \[K\]"),
        (_fam(relax={"calculator": "emt", "fmax": -0.05}), r"relax\.fmax must be a positive finite number \[eV/Å\]"),
    ],
)
def test_spec_numbers_are_checked_with_the_field_named(data, message):
    with pytest.raises(InputError, match=r"my\.toml: .*" + message):
        parse_spec(data, source="my.toml")


def test_negative_lattice_constant_in_a_toml_file(tmp_path):
    """`a = -3.16` in the MoS2 spec was accepted and built a library."""
    from library.builtin import spec_path

    text = spec_path("mos2_defects").read_text().replace("a = 3.16", "a = -3.16")
    (tmp_path / "neg.toml").write_text(text)
    with pytest.raises(InputError, match=r"neg\.toml: family 'MoS2 \[001\] point defects' host\.a must be a positive"):
        load_spec(tmp_path / "neg.toml")


def test_valid_numbers_still_parse():
    spec = parse_spec(_fam(supercell=[2, 2, 1], orientation={"min_lengths": [9, 0], "vacuum": 0}, dw_sigmas={"Cu": 0.08}))
    assert spec.families[0].supercell == (2, 2, 1)
