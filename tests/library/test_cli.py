"""``hypotest library`` subcommands, run in-process through hypotest.cli.main."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ase.build import fcc111
from ase.io import read, write

from hypotest.cli import main
from library import open_library
from library.builtin import library_path, spec_path

SPEC = """
[library]
name = "cu_test"
description = "tiny Cu(001) plan view"

[[family]]
name = "Cu [001]"
host = {{ builder = "bulk", name = "Cu", crystalstructure = "fcc", a = 3.61, cubic = true }}
orientation = {{ zone_axis = [0, 0, 1], beam_repeats = 2, vacuum = 2.0 }}
relax = {{ calculator = "emt", steps = {steps} }}
# EMT energies are relative to the bulk metal, so mu_Cu (bulk Cu reservoir) is ~0 eV/atom.
priors = {{ kind = "boltzmann", temperature = 300.0, chemical_potentials = {{ Cu = 0.0 }} }}

[[family.generate]]
kind = "vacancy"
"""


def test_build_list_show(tmp_path, capsys):
    (tmp_path / "spec.toml").write_text(SPEC.format(steps=0))
    out = tmp_path / "lib.h5"
    assert main(["library", "build", str(tmp_path / "spec.toml"), "--out", str(out), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["library", "list", str(out)]) == 0
    text = capsys.readouterr().out
    # 4 (001) planes; the slab's mirror plane makes the outer two and the inner two equivalent
    assert "family 'Cu [001]': 3 hypotheses, shared cell" in text  # pristine, V_Cu outer, V_Cu inner
    assert "Boltzmann at T = 300 K" in text
    with open_library(out) as lib:
        eid = lib.family("Cu [001]")[1].id
    assert main(["library", "show", str(out), eid]) == 0
    shown = capsys.readouterr().out
    assert f"id:          {eid}" in shown and "V_Cu" in shown and "calculator = EMT (ASE)" in shown


def test_add_and_export(tmp_path, capsys):
    lib = tmp_path / "lib.h5"
    slab = fcc111("Cu", (2, 2, 3), a=3.61, orthogonal=True, vacuum=5.0)
    slab.info.clear()
    write(tmp_path / "clean.xyz", slab, format="extxyz")
    ad = slab.copy()
    ad.append("O")
    ad.positions[-1] = ad.positions[-2] + [0, 0, 1.9]
    ad.info["energy"] = -3.0
    write(tmp_path / "o_top.xyz", ad, format="extxyz")
    assert main(["library", "add", str(lib), str(tmp_path / "clean.xyz"), "--family", "Cu(111)"]) == 0
    assert main(["library", "add", str(lib), str(tmp_path / "o_top.xyz"), "--family", "Cu(111)"]) == 0
    assert capsys.readouterr().out.count("added") == 2
    with open_library(lib) as f:
        fam = f.family("Cu(111)")
        assert [e.name for e in fam] == ["clean", "o_top"]
        assert f.family_info("Cu(111)").shared_cell
        np.testing.assert_allclose([float(e.prior) for e in fam], [0.5, 0.5])
    assert main(["library", "export", str(lib), "--format", "extxyz", "--out", str(tmp_path / "x")]) == 0
    frames = read(tmp_path / "x" / "Cu_111.extxyz", index=":")
    assert [a.info["name"] for a in frames] == ["clean", "o_top"]
    assert frames[1].info["energy_eV"] == pytest.approx(-3.0)
    assert main(["library", "export", str(lib), "--format", "cif", "--out", str(tmp_path / "c")]) == 0
    cifs = sorted((tmp_path / "c").glob("*.cif"))
    assert len(cifs) == 2
    assert len(read(cifs[0])) in (12, 13)


def test_add_errors_exit_2_with_message(tmp_path, capsys):
    lib = tmp_path / "lib.h5"
    slab = fcc111("Cu", (2, 2, 3), a=3.61, orthogonal=True, vacuum=5.0)
    slab.info.clear()
    write(tmp_path / "a.xyz", slab, format="extxyz")
    assert main(["library", "add", str(lib), str(tmp_path / "a.xyz"), "--family", "f"]) == 0
    before = lib.read_bytes()
    assert main(["library", "add", str(lib), str(tmp_path / "a.xyz"), "--family", "f"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hypotest library: error: duplicate id") and "a.xyz" in err
    big = fcc111("Cu", (3, 2, 3), a=3.61, orthogonal=True, vacuum=5.0)
    big.info.clear()
    write(tmp_path / "big.xyz", big, format="extxyz")
    assert main(["library", "add", str(lib), str(tmp_path / "big.xyz"), "--family", "f"]) == 2
    assert "big.xyz: its specimen cell" in capsys.readouterr().err
    assert lib.read_bytes() == before  # failed adds leave the library as it was
    assert main(["library", "add", str(lib), str(tmp_path / "big.xyz"), "--family", "f", "--allow-mixed-cells"]) == 0
    with open_library(lib) as f:
        assert f.family_info("f").shared_cell is False
    assert main(["library", "add", str(lib), str(tmp_path / "a.xyz"), "--family", "g", "--mu", "O"]) == 2
    assert "--mu expects ELEMENT=VALUE" in capsys.readouterr().err


def test_failed_build_leaves_no_library(tmp_path, capsys):
    bad = SPEC.format(steps=0).replace('name = "Cu", crystalstructure', 'name = "Cu", crystal_structure')
    (tmp_path / "bad.toml").write_text(bad)
    out = tmp_path / "lib.h5"
    assert main(["library", "build", str(tmp_path / "bad.toml"), "--out", str(out), "--no-progress"]) == 2
    assert "unknown key(s) ['crystal_structure']" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "bad.toml"]
    # a failure late in the build (Boltzmann priors without energies) also writes nothing
    (tmp_path / "late.toml").write_text(SPEC.format(steps=0).replace('relax = { calculator = "emt", steps = 0 }\n', ""))
    assert main(["library", "build", str(tmp_path / "late.toml"), "--out", str(out), "--no-progress"]) == 2
    assert "need an energy for every member" in capsys.readouterr().err
    assert not out.exists()


def test_show_unknown_id_and_not_a_library(tmp_path, capsys):
    shutil.copy(library_path("srtio3_vacancy"), tmp_path / "sto.h5")
    assert main(["library", "show", str(tmp_path / "sto.h5"), "hdeadbeef"]) == 2
    assert "no hypothesis with id 'hdeadbeef'" in capsys.readouterr().err
    assert main(["library", "list", str(spec_path("srtio3_vacancy"))]) == 2
    assert "not a readable HDF5 library file" in capsys.readouterr().err


def test_add_with_zone_axis_orients_and_adds_vacuum(tmp_path, capsys):
    from ase.build import bulk

    write(tmp_path / "cu.cif", bulk("Cu", "fcc", a=3.61, cubic=True))
    lib = tmp_path / "lib.h5"
    args = ["library", "add", str(lib), str(tmp_path / "cu.cif"), "--family", "Cu[001]", "--zone-axis", "0", "0", "1"]
    assert main(args + ["--min-lengths", "7", "7", "--beam-repeats", "2", "--vacuum", "2.5"]) == 0
    with open_library(lib) as f:
        (e,) = f.family("Cu[001]")
    assert e.specimen.n_atoms == 4 * 4 * 2
    z = np.asarray(e.specimen.positions)[:, 2]
    assert z.min() == pytest.approx(2.5) and float(e.specimen.cell[2]) == pytest.approx(z.max() + 2.5)
