"""Each reader on a small real-format file written here (by ASE or pymatgen where they can write
the format; vasprun.xml and pw.x output, which they only read, are written as minimal files in
the formats' own layout), and each bad input with its message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from forward import InputError
from library import Provenance, read_structures
from library.build import make_entries, oriented
from library.ingest import detect_format, file_sha256
from library.orient import as_is_view, identity_orientation

VASPRUN = """<?xml version="1.0" encoding="ISO-8859-1"?>
<modeling>
 <generator>
  <i name="program" type="string">vasp </i>
  <i name="version" type="string">6.4.2 </i>
 </generator>
 <incar>
  <i type="string" name="GGA">PE</i>
 </incar>
 <atominfo>
  <atoms>       2 </atoms>
  <types>       1 </types>
  <array name="atoms" >
   <set>
    <rc><c>Cu</c><c>   1</c></rc>
    <rc><c>Cu</c><c>   1</c></rc>
   </set>
  </array>
 </atominfo>
 <kpoints>
  <varray name="kpointlist" >
   <v>       0.00000000       0.00000000       0.00000000 </v>
  </varray>
  <varray name="weights" >
   <v>       1.00000000 </v>
  </varray>
 </kpoints>
 <structure name="initialpos" >
  <crystal>
   <varray name="basis" >
    <v>       3.60000000       0.00000000       0.00000000 </v>
    <v>       0.00000000       3.60000000       0.00000000 </v>
    <v>       0.00000000       0.00000000       3.60000000 </v>
   </varray>
  </crystal>
  <varray name="positions" >
   <v>       0.00000000       0.00000000       0.00000000 </v>
   <v>       0.50000000       0.50000000       0.00000000 </v>
  </varray>
 </structure>
 <calculation>
  <scstep>
   <energy>
    <i name="e_fr_energy">    -7.25000000 </i>
    <i name="e_wo_entrp">     -7.25000000 </i>
    <i name="e_0_energy">     -7.25000000 </i>
   </energy>
  </scstep>
  <structure>
   <crystal>
    <varray name="basis" >
     <v>       3.61000000       0.00000000       0.00000000 </v>
     <v>       0.00000000       3.61000000       0.00000000 </v>
     <v>       0.00000000       0.00000000       3.61000000 </v>
    </varray>
   </crystal>
   <varray name="positions" >
    <v>       0.00000000       0.00000000       0.00000000 </v>
    <v>       0.50000000       0.50000000       0.00000000 </v>
   </varray>
  </structure>
  <varray name="forces" >
   <v>       0.00000000       0.00000000       0.00000000 </v>
   <v>       0.00000000       0.00000000       0.00000000 </v>
  </varray>
  <energy>
   <i name="e_fr_energy">    -7.25000000 </i>
   <i name="e_wo_entrp">     -7.25000000 </i>
   <i name="e_0_energy">     -7.25000000 </i>
  </energy>
 </calculation>
</modeling>
"""

PW_OUT = """
     Program PWSCF v.7.2 starts on  1Jan2026 at 10:00:00

     bravais-lattice index     =            0
     lattice parameter (alat)  =      10.2612  a.u.
     unit-cell volume          =    1080.4470 (a.u.)^3
     number of atoms/cell      =            2
     number of atomic types    =            1
     number of electrons       =         8.00
     Exchange-correlation= PBE
                           (   1   4   3   4   0   0   0)

     celldm(1)=  10.261200  celldm(2)=   0.000000  celldm(3)=   0.000000
     celldm(4)=   0.000000  celldm(5)=   0.000000  celldm(6)=   0.000000

     crystal axes: (cart. coord. in units of alat)
               a(1) = (   1.000000   0.000000   0.000000 )
               a(2) = (   0.000000   1.000000   0.000000 )
               a(3) = (   0.000000   0.000000   1.000000 )

   Cartesian axes

     site n.     atom                  positions (alat units)
         1        Si     tau(   1) = (   0.0000000   0.0000000   0.0000000  )
         2        Si     tau(   2) = (   0.2500000   0.2500000   0.2500000  )

     number of k points=     1  Gaussian smearing, width (Ry)=  0.0010
                       cart. coord. in units 2pi/alat
        k(    1) = (   0.0000000   0.0000000   0.0000000), wk =   2.0000000

     End of self-consistent calculation

          k = 0.0000 0.0000 0.0000 (   375 PWs)   bands (ev):

    -5.7174   5.0283   5.0283   5.0283

     the Fermi energy is     5.7451 ev

!    total energy              =     -15.80000000 Ry
     estimated scf accuracy    <          1.5E-09 Ry

     convergence has been achieved in  11 iterations

     Forces acting on atoms (cartesian axes, Ry/au):

     atom    1 type  1   force =     0.00000000    0.00000000    0.00000000
     atom    2 type  1   force =     0.00000000    0.00000000    0.00000000

     Total force =     0.000000     Total SCF correction =     0.000007

     JOB DONE.
"""

RY_EV = 13.605693122994  # CODATA 2018 Rydberg energy [eV], as ASE's units


def _cu():
    return bulk("Cu", "fcc", a=3.61, cubic=True)


def test_cif_roundtrip(tmp_path):
    a = _cu()
    write(tmp_path / "cu.cif", a)
    (c,) = read_structures(tmp_path / "cu.cif")
    assert len(c.atoms) == 4
    assert c.atoms.get_chemical_symbols() == ["Cu"] * 4
    np.testing.assert_allclose(c.atoms.cell.lengths(), [3.61] * 3, atol=1e-6)
    assert c.provenance.source_sha256 == file_sha256(tmp_path / "cu.cif")
    assert c.provenance.energy is None


@pytest.mark.parametrize("name", ["POSCAR", "CONTCAR", "slab.vasp"])
def test_poscar_contcar(tmp_path, name):
    a = fcc111("Pt", (1, 1, 3), a=3.92, vacuum=5.0)
    write(tmp_path / name, a, format="vasp")
    (c,) = read_structures(tmp_path / name)
    assert detect_format(tmp_path / name) == "vasp"
    assert c.provenance.code == "VASP"
    np.testing.assert_allclose(c.atoms.positions, a.positions, atol=1e-6)


def test_vasprun_final_structure_and_energy(tmp_path):
    p = tmp_path / "vasprun.xml"
    p.write_text(VASPRUN)
    (c,) = read_structures(p)
    np.testing.assert_allclose(c.atoms.cell.lengths(), [3.61] * 3)  # the final step, not the initial
    assert c.provenance.energy == pytest.approx(-7.25)
    assert c.provenance.code == "VASP"
    assert c.provenance.functional == "PBE"


def test_quantum_espresso_output(tmp_path):
    p = tmp_path / "si.pwo"
    p.write_text(PW_OUT)
    (c,) = read_structures(p)
    assert c.provenance.energy == pytest.approx(-15.8 * RY_EV, rel=1e-6)
    assert c.provenance.code == "Quantum ESPRESSO"
    assert c.provenance.functional == "PBE"
    np.testing.assert_allclose(c.atoms.cell.lengths(), [10.2612 * 0.529177210903] * 3, rtol=1e-5)


def test_extxyz_energy_from_info_and_calculator(tmp_path):
    a1 = _cu()
    a1.info["energy"] = -14.5
    a2 = _cu()
    a2.positions[1] += 0.05
    a2.calc = SinglePointCalculator(a2, energy=-14.2)
    write(tmp_path / "frames.extxyz", [a1, a2], format="extxyz")
    cs = read_structures(tmp_path / "frames.extxyz")
    assert [c.provenance.energy for c in cs] == [pytest.approx(-14.5), pytest.approx(-14.2)]
    assert cs[0].name != cs[1].name


def test_ase_database(tmp_path):
    import ase.db

    db = ase.db.connect(tmp_path / "structs.db")
    a = _cu()
    a.calc = SinglePointCalculator(a, energy=-3.3)
    db.write(a, name="cu_bulk")
    db.write(bulk("Au", "fcc", a=4.08, cubic=True))
    cs = read_structures(tmp_path / "structs.db")
    assert [c.name for c in cs][0] == "cu_bulk"
    assert cs[0].provenance.energy == pytest.approx(-3.3)
    assert cs[1].provenance.energy is None
    assert cs[1].atoms.get_chemical_symbols()[0] == "Au"


def test_pymatgen_structure_and_computed_entry_json(tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    st = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                   [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])  # fmt: skip
    st.to(filename=str(tmp_path / "sto.json"))
    ent = ComputedStructureEntry(st, -40.1, parameters={"run_type": "PBE"})
    (tmp_path / "entries.json").write_text(json.dumps([ent.as_dict()]))
    (c1,) = read_structures(tmp_path / "sto.json")
    (c2,) = read_structures(tmp_path / "entries.json")
    assert c1.atoms.get_chemical_formula() == c2.atoms.get_chemical_formula() == "O3SrTi"
    assert c1.provenance.energy is None
    assert c2.provenance.energy == pytest.approx(-40.1)
    assert c2.provenance.functional == "PBE"


def test_directory_and_glob(tmp_path):
    for k in range(3):
        a = _cu()
        a.positions[0, 0] += 0.1 * k
        write(tmp_path / f"s{k}.cif", a)
    write(tmp_path / "POSCAR", _cu(), format="vasp")
    assert len(read_structures(tmp_path)) == 4
    assert [c.name for c in read_structures(str(tmp_path / "s*.cif"))] == ["s0", "s1", "s2"]


def test_dangling_symlink_in_a_directory_or_glob_is_named_with_its_target(tmp_path):
    write(tmp_path / "s0.cif", _cu())
    (tmp_path / "s1.cif").symlink_to(tmp_path / "gone" / "s1.cif")  # a moved file: the link dangles
    for source in (tmp_path, str(tmp_path / "*.cif"), tmp_path / "s1.cif"):
        with pytest.raises(InputError, match=r"s1\.cif: a symbolic link to .*gone/s1\.cif, which does not exist; fix the "
                                             r"link or remove it"):
            read_structures(source)


# --- bad input ----------------------------------------------------------------------------------


def _to_entries(cs):
    """Orient as given and make entries (where overlaps and cells are checked)."""
    ori = identity_orientation(cs[0].atoms, cs[0].provenance.source)
    members = [oriented(c, ori) for c in cs]
    view = as_is_view(members[0].atoms, where=cs[0].provenance.source)
    return make_entries(members, view, "f")[0]


def _slab_file(path, shift=0.0):
    a = fcc111("Cu", (2, 2, 2), a=3.61, orthogonal=True, vacuum=5.0)
    a.info.clear()
    a.positions[:, 0] += shift
    write(path, a, format="extxyz")
    return a


def test_ingest_then_entries_as_is(tmp_path):
    _slab_file(tmp_path / "ok.xyz")
    (e,) = _to_entries(read_structures(tmp_path / "ok.xyz"))
    assert e.specimen.n_atoms == 8
    assert e.provenance.source.endswith("ok.xyz")


def test_overlapping_atoms_named(tmp_path):
    a = fcc111("Cu", (2, 2, 2), a=3.61, orthogonal=True, vacuum=5.0)
    a.info.clear()
    a.positions[1] = a.positions[0] + [0.2, 0, 0]
    write(tmp_path / "overlap.xyz", a, format="extxyz")
    with pytest.raises(InputError, match=r"overlap\.xyz.*atoms 0 and 1 overlap: 0\.200 Å apart"):
        _to_entries(read_structures(tmp_path / "overlap.xyz"))


def test_unknown_element_named(tmp_path):
    p = tmp_path / "bad.xyz"
    p.write_text('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nCu 0 0 0\nQq 1 1 1\n')
    with pytest.raises(InputError, match=r"bad\.xyz: unknown element 'Qq'; expected a chemical element symbol"):
        read_structures(p)
    (tmp_path / "bad.cif").write_text(
        "data_x\n_cell_length_a 5\n_cell_length_b 5\n_cell_length_c 5\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
        "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nCu1 Cu 0 0 0\nZz1 Zz 0.5 0.5 0.5\n"
    )
    with pytest.raises(InputError, match=r"bad\.cif: unknown element 'Zz'"):
        read_structures(tmp_path / "bad.cif")


def test_unknown_element_dummy_atom_named(tmp_path):
    a = Atoms("CuX", positions=[[0, 0, 0], [1, 1, 1]], cell=[5, 5, 5], pbc=True)
    write(tmp_path / "dummy.cif", a)
    with pytest.raises(InputError, match=r"dummy\.cif.*unknown element.*atomic number 0"):
        read_structures(tmp_path / "dummy.cif")


def test_nan_position_named(tmp_path):
    p = tmp_path / "nan.xyz"
    p.write_text('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nCu 0 0 0\nCu nan 1 1\n')
    with pytest.raises(InputError, match=r"nan\.xyz: atom 1 \(Cu\) has a non-finite position"):
        read_structures(p)


def test_inf_position_named(tmp_path):
    p = tmp_path / "inf.xyz"
    p.write_text('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nCu 0 0 0\nCu 1 inf 1\n')
    with pytest.raises(InputError, match=r"inf\.xyz: atom 1 \(Cu\) has a non-finite position"):
        read_structures(p)


def test_missing_cell_named(tmp_path):
    p = tmp_path / "molecule.xyz"
    p.write_text("2\nCO molecule\nC 0 0 0\nO 0 0 1.13\n")
    with pytest.raises(InputError, match=r"molecule\.xyz: the structure has no cell"):
        read_structures(p)


def test_missing_vacuum_named(tmp_path):
    write(tmp_path / "bulk.xyz", _cu(), format="extxyz")
    with pytest.raises(InputError, match=r"bulk\.xyz: no vacuum along the beam \(z\)"):
        _to_entries(read_structures(tmp_path / "bulk.xyz"))


def test_cells_disagree_within_family_named(tmp_path):
    _slab_file(tmp_path / "a.xyz")
    b = fcc111("Cu", (3, 2, 2), a=3.61, orthogonal=True, vacuum=5.0)
    b.info.clear()
    write(tmp_path / "b.xyz", b, format="extxyz")
    cs = read_structures(tmp_path / "a.xyz") + read_structures(tmp_path / "b.xyz")
    with pytest.raises(InputError, match=r"b\.xyz: its cell .* disagrees with the family's cell"):
        _to_entries(cs)


def test_duplicate_id_named(tmp_path):
    _slab_file(tmp_path / "a.xyz")
    _slab_file(tmp_path / "shifted.xyz", shift=2.0 * 3.61 / np.sqrt(2))  # a whole lattice vector
    cs = read_structures(tmp_path / "a.xyz") + read_structures(tmp_path / "shifted.xyz")
    with pytest.raises(InputError, match=r"duplicate id h[0-9a-f]{16}: .*shifted\.xyz.* same structure"):
        _to_entries(cs)


def test_truncated_vasprun_named(tmp_path):
    p = tmp_path / "vasprun.xml"
    p.write_text(VASPRUN[: len(VASPRUN) // 2])
    with pytest.raises(InputError, match=r"vasprun\.xml: cannot read it as vasp-xml .*truncated"):
        read_structures(p)


def test_truncated_pw_output_named(tmp_path):
    p = tmp_path / "si.pwo"
    p.write_text(PW_OUT[:900])
    with pytest.raises(InputError, match=r"si\.pwo: cannot read it as espresso-out"):
        read_structures(p)


def test_truncated_extxyz_named(tmp_path):
    write(tmp_path / "full.xyz", _cu(), format="extxyz")
    text = (tmp_path / "full.xyz").read_text().splitlines()
    (tmp_path / "cut.xyz").write_text("\n".join(text[:-2]) + "\n")
    with pytest.raises(InputError, match=r"cut\.xyz: cannot read it as extxyz"):
        read_structures(tmp_path / "cut.xyz")


def test_unreadable_and_empty_files_named(tmp_path):
    (tmp_path / "garbage.cif").write_bytes(b"\x00\x01\x02 not a cif \xff")
    with pytest.raises(InputError, match=r"garbage\.cif: cannot read it as cif"):
        read_structures(tmp_path / "garbage.cif")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(InputError, match=r"empty\.json: the file is empty"):
        read_structures(tmp_path / "empty.json")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: cannot tell the format"):
        read_structures(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"nothing\*\.cif: the glob pattern matches no files"):
        read_structures(str(tmp_path / "nothing*.cif"))
    with pytest.raises(InputError, match=r"missing\.cif: no such file or directory"):
        read_structures(tmp_path / "missing.cif")


def test_wrong_json_object_named(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"@class": "Molecule"}))
    with pytest.raises(InputError, match=r"x\.json: item 0 is 'Molecule', expected a pymatgen Structure"):
        read_structures(tmp_path / "x.json")


def test_provenance_keeps_energy_through_orientation(tmp_path):
    a = _cu()
    a.info["energy"] = -14.0
    write(tmp_path / "e.extxyz", a, format="extxyz")
    (c,) = read_structures(tmp_path / "e.extxyz")
    from library.orient import find_orientation

    ori = find_orientation(c.atoms, (0, 0, 1), min_lengths=(7.0, 7.0))
    o = oriented(c, ori)
    assert len(o.atoms) == 16
    assert o.provenance.energy == pytest.approx(-56.0)  # four cells: energy is extensive
    assert isinstance(o.provenance, Provenance)
