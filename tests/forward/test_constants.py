"""Electron wavelength, interaction parameter and Scherzer defocus against published values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward.constants import interaction_parameter, scherzer_defocus, wavelength

# Kirkland, Advanced Computing in Electron Microscopy, 2nd ed. (2010), eq. 2.5 (wavelength) and
# eq. 5.6 (sigma) evaluated with CODATA 2014 constants, to the digits usually tabulated
# (lambda: 0.04176 / 0.02508 / 0.01969 Å at 80 / 200 / 300 kV in Kirkland's and Williams & Carter's
# tables; DESIGN 3.3 fixes 0.019687 Å at 300 kV; sigma(300 kV) = 0.65262e-3 rad/(V Å) in Kirkland).
REFERENCE = [
    # energy [eV], lambda [Å], sigma [rad/(V Å)]
    (80e3, 0.041757, 1.0087e-3),
    (200e3, 0.025079, 7.2884e-4),
    (300e3, 0.019687, 6.5262e-4),
]


@pytest.mark.parametrize("energy, lam, sigma", REFERENCE)
def test_published_values(energy, lam, sigma):
    assert float(wavelength(energy)) == pytest.approx(lam, abs=1e-6)
    assert float(interaction_parameter(energy)) == pytest.approx(sigma, rel=1e-4)


@pytest.mark.parametrize("energy", [20e3, 80e3, 200e3, 300e3, 1e6])
def test_matches_abtem(energy):
    from abtem.core.energy import energy2sigma, energy2wavelength

    assert float(wavelength(energy)) == pytest.approx(energy2wavelength(energy), rel=2e-7)
    assert float(interaction_parameter(energy)) == pytest.approx(energy2sigma(energy), rel=2e-7)


def test_scherzer_defocus():
    # sqrt(1.5 Cs lambda): Cs = 1.3 mm at 300 kV -> 619.6 Å underfocus; abTEM agrees.
    from abtem.transfer import scherzer_defocus as abtem_scherzer

    assert float(scherzer_defocus(1.3e7, 300e3)) == pytest.approx(619.60, abs=0.01)
    for cs, e in [(1.3e7, 300e3), (-2e5, 200e3), (5e6, 80e3)]:
        assert float(scherzer_defocus(cs, e)) == pytest.approx(abtem_scherzer(cs, e), rel=1e-6)


def test_scherzer_defocus_flattens_the_ctf():
    # At Scherzer defocus (C10 = -Df) chi(alpha) = pi/lambda (-Df a^2 + Cs a^4 / 2) turns at
    # alpha^2 = Df/Cs with chi = -pi Df^2 / (2 Cs lambda); Df = sqrt(1.5 Cs lambda) makes that
    # -3 pi / 4, so sin(chi) stays below -1/sqrt(2) over the broad passband around it.
    cs, e = 1.3e7, 300e3
    lam = float(wavelength(e))
    df = float(scherzer_defocus(cs, e))
    a = np.linspace(0, np.sqrt(2 * df / cs), 2001)
    chi = np.pi / lam * (-df * a**2 + 0.5 * cs * a**4)
    assert chi.min() == pytest.approx(-3 * np.pi / 4, rel=1e-5)


def test_traceable():
    e = jnp.asarray([80e3, 300e3])
    np.testing.assert_allclose(jax.jit(wavelength)(e), wavelength(e), rtol=1e-7)
    np.testing.assert_allclose(jax.vmap(interaction_parameter)(e), interaction_parameter(e), rtol=1e-7)
    g = jax.grad(wavelength)(300e3)
    h = 1.0
    fd = (float(wavelength(300e3 + h)) - float(wavelength(300e3 - h))) / (2 * h)
    assert float(g) == pytest.approx(fd, rel=1e-2)
    assert float(jax.grad(lambda c: scherzer_defocus(c, 300e3))(1e7)) > 0
