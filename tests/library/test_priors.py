"""Priors: Boltzmann weights (with chemical potentials where compositions differ), user weights,
uniform; each explained."""

from __future__ import annotations

import numpy as np
import pytest

from forward import InputError
from library.priors import K_B, PriorConfig, boltzmann_weights, prior_weights


def test_boltzmann_ratio_is_exp_of_energy_difference():
    t = 300.0
    de = K_B * t * np.log(2.0)  # twice as likely
    w, dg = boltzmann_weights([-10.0, -10.0 + de], [{"Pt": 4}, {"Pt": 4}], t)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(dg, [0.0, de])


def test_boltzmann_high_and_low_temperature_limits():
    e = [0.0, 0.1, 0.3]
    comp = [{"Cu": 1}] * 3
    hot, _ = boltzmann_weights(e, comp, 1e7)
    cold, _ = boltzmann_weights(e, comp, 10.0)
    np.testing.assert_allclose(hot, 1 / 3, atol=1e-4)
    assert cold[0] == pytest.approx(1.0)


def test_formation_energies_with_chemical_potentials():
    # clean slab E0 (Pt4) and O-covered E1 (Pt4 O): G1 - G0 = E1 - E0 - mu_O
    e0, e1, mu_o = -20.0, -25.0, -4.8
    w, dg = boltzmann_weights([e0, e1], [{"Pt": 4}, {"Pt": 4, "O": 1}], 500.0, {"O": mu_o})
    # G0 = -20.0, G1 = -25.0 + 4.8 = -20.2: the covered slab is lower by 0.2 eV
    np.testing.assert_allclose(dg, [e0 - (e1 - mu_o), 0.0], atol=1e-12)
    assert w[1] / w[0] == pytest.approx(np.exp(-((e1 - mu_o) - e0) / (K_B * 500.0)))


def test_missing_chemical_potential_named():
    with pytest.raises(InputError, match=r"compositions differ in \['O'\].*chemical potentials .* for \['O'\]"):
        boltzmann_weights([-1.0, -2.0], [{"Pt": 4}, {"Pt": 4, "O": 1}], 300.0)


def test_missing_energy_and_bad_temperature_named():
    with pytest.raises(InputError, match=r"need an energy for every member; none for \['V_O'\]"):
        boltzmann_weights([-1.0, None], [{"O": 1}, {"O": 1}], 300.0, names=["pristine", "V_O"])
    with pytest.raises(InputError, match=r"temperature > 0 K, got -5"):
        boltzmann_weights([-1.0], [{"O": 1}], -5.0)


def test_uniform_user_and_explanations():
    w, text = prior_weights(PriorConfig(), ["a", "b", "c", "d"], [None] * 4, [{}] * 4)
    np.testing.assert_allclose(w, 0.25)
    assert "uniform" in text
    w, text = prior_weights(PriorConfig(kind="user", weights=(("a", 3.0), ("b", 1.0))), ["a", "b"], [None, None], [{}, {}])
    np.testing.assert_allclose(w, [0.75, 0.25])
    assert "user weights" in text
    w, text = prior_weights(PriorConfig(kind="boltzmann", temperature=300.0), ["a", "b"], [0.0, 0.0], [{"X": 1}, {"X": 1}])
    np.testing.assert_allclose(w, 0.5)
    assert "Boltzmann at T = 300 K" in text


def test_user_weight_errors():
    with pytest.raises(InputError, match=r"user priors give no weight for \['b'\]"):
        prior_weights(PriorConfig(kind="user", weights=(("a", 1.0),)), ["a", "b"], [None] * 2, [{}] * 2)
    with pytest.raises(InputError, match=r"must be finite, >= 0 and not all 0"):
        prior_weights(PriorConfig(kind="user", weights=(("a", -1.0),)), ["a"], [None], [{}])
    with pytest.raises(InputError, match=r"prior kind must be 'uniform', 'boltzmann' or 'user', got 'flat'"):
        prior_weights(PriorConfig(kind="flat"), ["a"], [None], [{}])
