"""Relaxation through ASE calculators: EMT (tiny), the CHGNet path without the extra, the user
calculator hook, and gas-phase chemical potentials."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import fcc111

from forward import InputError
from library import Provenance, make_candidate
from library.relax import EMT_ELEMENTS, RelaxConfig, gas_chemical_potentials, get_calculator, relax


def _o_on_cu():
    slab = fcc111("Cu", (1, 1, 3), a=3.61, vacuum=5.0, orthogonal=False)
    slab.info.clear()
    top = slab.positions[:, 2].max()
    slab.append("O")
    slab.positions[-1] = slab.positions[2] + [0.0, 0.0, 2.3 - (slab.positions[2, 2] - top)]
    return make_candidate(slab, "O on Cu(111) top", provenance=Provenance(source="test"))


def test_emt_relaxation_lowers_energy_and_records_settings():
    c = _o_on_cu()
    cfg = RelaxConfig(calculator="emt", fmax=0.05, steps=100, optimizer="BFGS", fix_fraction=0.2)
    r = relax(c, cfg)
    notes = dict(r.provenance.relaxation)
    assert r.provenance.code == "EMT (ASE)"
    assert float(notes["final_energy_eV"]) < float(notes["initial_energy_eV"])
    assert r.provenance.energy == pytest.approx(float(notes["final_energy_eV"]), abs=1e-5)
    assert notes["converged"] == "True"
    assert float(notes["final_fmax_eV_per_A"]) < 0.05
    assert int(notes["fixed_atoms"]) == 1  # the bottom Cu layer
    fixed = np.argmin(c.atoms.positions[:, 2])
    np.testing.assert_allclose(r.atoms.positions[fixed], c.atoms.positions[fixed])
    np.testing.assert_array_equal(r.atoms.cell.array, c.atoms.cell.array)
    assert c.provenance.energy is None  # the input is not touched


def test_single_point_energy_only():
    c = _o_on_cu()
    r = relax(c, RelaxConfig(steps=0))
    np.testing.assert_array_equal(r.atoms.positions, c.atoms.positions)
    assert dict(r.provenance.relaxation)["optimizer"] == "none (single point)"


def test_user_calculator_hook():
    from ase.calculators.emt import EMT

    calls = []

    def my_dft():
        calls.append(1)
        return EMT()

    r = relax(_o_on_cu(), RelaxConfig(steps=0), calculator=my_dft)
    assert calls == [1]
    assert r.provenance.code == "my_dft"
    calc, name = get_calculator("ase.calculators.emt:EMT")
    assert name == "ase.calculators.emt:EMT" and calc.__class__.__name__ == "EMT"


def test_chgnet_without_the_extra_says_how_to_install():
    try:  # the mlip extra is not installed in this environment; if it is, the calculator loads
        import chgnet  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"pip install hypotest\[mlip\]"):
            get_calculator("chgnet")
    else:
        calc, name = get_calculator("chgnet")
        assert name == "CHGNet"


def test_emt_rejects_elements_without_parameters():
    from ase.build import mx2

    c = make_candidate(mx2("MoS2", "2H", vacuum=5.0), "MoS2")
    with pytest.raises(InputError, match=r"EMT has no parameters for \['Mo', 'S'\].*hypotest\[mlip\]"):
        relax(c)
    assert "Pt" in EMT_ELEMENTS


def test_bad_settings_and_calculators():
    with pytest.raises(InputError, match=r"optimizer must be 'BFGS' or 'FIRE'"):
        relax(_o_on_cu(), RelaxConfig(optimizer="LBFGS"))
    with pytest.raises(InputError, match=r"unknown calculator 'vasp'"):
        get_calculator("vasp")
    with pytest.raises(InputError, match=r"cannot import 'Nope' from 'ase.calculators.emt'"):
        get_calculator("ase.calculators.emt:Nope")


def test_gas_chemical_potentials_solve_the_molecule_equations():
    mu, e = gas_chemical_potentials(("O2", "CO"), RelaxConfig(steps=50))
    assert mu["O"] == pytest.approx(e["O2"] / 2)
    assert mu["C"] + mu["O"] == pytest.approx(e["CO"])
    mu2, _ = gas_chemical_potentials(("O2", "CO"), RelaxConfig(steps=50), delta_mu={"O": -0.5})
    assert mu2["O"] == pytest.approx(mu["O"] - 0.5)
    with pytest.raises(InputError, match=r"do not fix one chemical potential per element"):
        gas_chemical_potentials(("CO",), RelaxConfig(steps=0))
