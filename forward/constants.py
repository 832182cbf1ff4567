"""Electron-optical constants: relativistic wavelength, interaction parameter, Scherzer defocus.

All functions accept Python floats or JAX arrays (they are traceable: jit, vmap and grad work);
Python/NumPy input gives NumPy output, computed in float64 without touching JAX (so they are safe
in eager checks that run while a JAX trace is active). They
use the CODATA 2014 physical constants, the set ASE (and therefore abTEM 1.0.11) uses, so that our
values agree with abTEM to float precision.

Energies are kinetic energies of the beam electrons [eV]; lengths [Å].
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

__all__ = [
    "PLANCK",
    "SPEED_OF_LIGHT",
    "ELECTRON_MASS",
    "ELEMENTARY_CHARGE",
    "wavelength",
    "interaction_parameter",
    "relativistic_mass_correction",
    "scherzer_defocus",
]

#: Planck constant h [J s] (CODATA 2014, as ASE 3.29 ``ase.units._hplanck``).
PLANCK = 6.62607004e-34
#: Speed of light c [m/s].
SPEED_OF_LIGHT = 299792458.0
#: Electron rest mass m0 [kg] (CODATA 2014).
ELECTRON_MASS = 9.10938356e-31
#: Elementary charge e [C] (CODATA 2014).
ELEMENTARY_CHARGE = 1.6021766208e-19

#: Electron rest energy m0 c^2 / e [eV].
_REST_ENERGY_EV = ELECTRON_MASS * SPEED_OF_LIGHT**2 / ELEMENTARY_CHARGE
#: h c / e [V m]: numerator of the wavelength formula.
_HC_OVER_E = PLANCK * SPEED_OF_LIGHT / ELEMENTARY_CHARGE
#: 2 pi m0 e / h^2 in units of 1/(V Å^2), folded in float64 here so float32 never sees h^2.
_SIGMA_PREFACTOR = 2.0 * math.pi * ELECTRON_MASS * ELEMENTARY_CHARGE / PLANCK**2 * 1e-20


def _xp(x):
    """NumPy for Python/NumPy input, jax.numpy otherwise (tracers, JAX arrays)."""
    return np if isinstance(x, (int, float, np.ndarray, np.generic)) else jnp


def relativistic_mass_correction(energy):
    """gamma = 1 + eE / (m0 c^2) for kinetic energy ``energy`` [eV] (dimensionless)."""
    xp = _xp(energy)
    return 1.0 + xp.asarray(energy) / _REST_ENERGY_EV


def wavelength(energy):
    """Relativistic de Broglie wavelength of an electron [Å].

    lambda = h c / sqrt(eE (2 m0 c^2 + eE)), Kirkland, *Advanced Computing in Electron
    Microscopy*, 2nd ed. (2010), eq. 2.5. lambda(300 keV) = 0.019687 Å.

    Args:
        energy: kinetic energy [eV] (scalar or array).
    """
    xp = _xp(energy)
    e = xp.asarray(energy)
    return _HC_OVER_E / xp.sqrt(e * (2.0 * _REST_ENERGY_EV + e)) * 1e10


def interaction_parameter(energy):
    """Interaction parameter sigma = 2 pi m e lambda / h^2 [rad/(V Å)].

    The relativistic mass ``m = gamma m0`` is used, Kirkland (2010) eq. 5.6; this is abTEM's
    ``energy2sigma``. sigma(300 keV) = 6.5262e-4 rad/(V Å).

    Args:
        energy: kinetic energy [eV] (scalar or array).
    """
    return _SIGMA_PREFACTOR * relativistic_mass_correction(energy) * wavelength(energy)


def scherzer_defocus(C30, energy):
    """Scherzer defocus [Å] in the ``defocus = -C10`` convention (positive = underfocus).

    defocus = sign(C30) sqrt(3/2 |C30| lambda): the "extended" Scherzer condition that makes the
    phase-contrast transfer function flat at -1 over the widest band, Scherzer, J. Appl. Phys. 20
    (1949) 20; Kirkland (2010) ch. 3 uses the same sqrt(1.5 Cs lambda). abTEM 1.0.11's
    ``transfer.scherzer_defocus`` uses this formula too. The aberration to set is
    ``C10 = -scherzer_defocus(C30, energy)``.

    Args:
        C30: spherical aberration Cs [Å] (1.3 mm = 1.3e7 Å).
        energy: kinetic energy [eV].
    """
    xp = np if _xp(C30) is np and _xp(energy) is np else jnp
    c = xp.asarray(C30)
    return xp.sign(c) * xp.sqrt(1.5 * xp.abs(c) * wavelength(energy))
