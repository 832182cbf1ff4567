"""Electron scattering factors of neutral atoms: Lobato (default) and Kirkland parameterisations.

The published coefficients are data (``forward/data/lobato.json``, ``forward/data/kirkland.json``,
keyed by atomic number); this module turns them into the Fourier transform of an atom's infinitely
projected potential, which is all the infinite-projection multislice needs:

    V_z(k) = (h^2 / (2 pi m0 e)) f_e(|k|)        [V Å^3]

(Kirkland 2010, ch. 5: first Born approximation, f_e(q) = (2 pi m0 e / h^2) * FT[V](q), and
h^2 / (2 pi m0 e) = 2 pi a0 e = 47.878 V Å^2). The projected potential of an atom at the origin
is then V_z(r) = integral d^2k V_z(k) exp(2 pi i k.r) [V Å]. The rest mass m0 is used (the
relativistic correction is in the interaction parameter, Kirkland 2010 sec. 5.2), as abTEM 1.0.11.

- Lobato & Van Dyck, Acta Cryst. A70 (2014) 636 (their 5-term fit):
  ``f_e(g) = sum_{i=1..5} a_i (2 + b_i g^2) / (1 + b_i g^2)^2``.
- Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed. (2010), Appendix C:
  ``f_e(q) = sum_{i=1..3} a_i / (q^2 + b_i) + c_i exp(-d_i q^2)``.

Here ``g = q = |k|`` is the reciprocal distance [1/Å] (no 2 pi) and ``f_e`` is in [Å].

Finite projection (:func:`partially_projected_scattering_factor`). The 3D Fourier transform of an
atom's potential is ``V(k, kz) = (h^2 / (2 pi m0 e)) f_e(sqrt(|k|^2 + kz^2))`` [V Å^3]; transforming
back along ``kz`` only gives the mixed representation ``V(k, z)`` [V Å^2] (2D transform in x, y at
height ``z`` above the atom), whose integral over all ``z`` is the infinite projection. Both
parameterisations are sums of terms whose 1D transforms are elementary (e.g. Gradshteyn & Ryzhik
3.723.2; the Fourier transform of a Gaussian), so the integral over ``z`` in ``[0, s]`` is closed
form, ``G(k, s) = sign(s) sum_i G_i(k, |s|)``, and a slice ``[z0, z1]`` of an atom at height
``za`` receives ``G(k, z1 - za) - G(k, z0 - za)``:

- Lobato, with ``c = 1 + b_i k^2`` and ``mu = 2 pi sqrt(c / b_i)``, ``E = exp(-mu s)``:
  ``a_i (2 + b_i g^2) / (1 + b_i g^2)^2 = a_i / b_i [1 / (l^2 + kz^2) + 1 / (b_i (l^2 + kz^2)^2)]``
  with ``l^2 = c / b_i``; ``int exp(2 pi i kz z) / (l^2 + kz^2) dkz = (pi / l) exp(-2 pi l |z|)``
  and ``int exp(2 pi i kz z) / (l^2 + kz^2)^2 dkz = pi / (2 l^3) (1 + 2 pi l |z|) exp(-2 pi l |z|)``
  give ``G_i = a_i [(1 - E) / (2 c) + (2 - E (2 + mu s)) / (4 c^2)]``.
- Kirkland, Lorentzian terms (``mu = 2 pi sqrt(k^2 + b_i)``): ``G_i = a_i (1 - E) / (2 (k^2 + b_i))``;
  Gaussian terms: ``G_i = c_i exp(-d_i k^2) erf(pi s / sqrt(d_i)) / 2``.

(times ``h^2 / (2 pi m0 e)``). As ``s -> infinity`` each ``2 G_i`` tends to the term of ``f_e``:
the infinite projection is recovered exactly.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from forward.constants import ELECTRON_MASS, ELEMENTARY_CHARGE, PLANCK
from forward.errors import InputError

__all__ = [
    "PARAMETRIZATIONS",
    "scattering_factor",
    "projected_scattering_factor",
    "partially_projected_scattering_factor",
    "coefficients",
]

#: Names of the available parameterisations.
PARAMETRIZATIONS: tuple[str, ...] = ("lobato", "kirkland")

#: h^2 / (2 pi m0 e) [V Å^2]: converts f_e [Å] into the 2D Fourier transform of V_z [V Å^3].
_FE_TO_POTENTIAL = PLANCK**2 / (2.0 * math.pi * ELECTRON_MASS * ELEMENTARY_CHARGE) * 1e20

_DATA = Path(__file__).parent / "data"


def _check_name(parametrization: str) -> str:
    if parametrization not in PARAMETRIZATIONS:
        raise InputError(
            f"unknown parametrization {parametrization!r}: expected one of {PARAMETRIZATIONS} "
            "(Lobato & Van Dyck 2014 is the default)"
        )
    return parametrization


@functools.cache
def _table(parametrization: str) -> dict[int, np.ndarray]:
    # Read-only published constants: cached per process like an import, never mutated.
    with open(_DATA / f"{parametrization}.json") as fh:
        raw = json.load(fh)["coefficients"]
    return {int(z): np.asarray(v, dtype=np.float64) for z, v in raw.items()}


def coefficients(parametrization: str, Z: int) -> np.ndarray:
    """The published coefficients of element ``Z``: Lobato ``[2, 5]`` (a, b), Kirkland ``[4, 3]``
    (a, b, c, d), units as in the module docstring."""
    table = _table(_check_name(parametrization))
    z = int(Z)
    if z not in table:
        raise InputError(
            f"the {parametrization} parametrization has no coefficients for Z={z}; "
            f"it covers Z = {min(table)}..{max(table)}"
        )
    return table[z]


def scattering_factor(parametrization: str, Z: int, k2):
    """Electron scattering factor f_e [Å] of element ``Z`` at squared reciprocal distance
    ``k2 = |k|^2`` [1/Å^2] (any shape). NumPy in, NumPy (float64) out; a JAX array in gives a JAX
    array out (traceable in ``k2``)."""
    p = coefficients(parametrization, Z)
    xp = np if isinstance(k2, (np.ndarray, float, int)) else jnp
    k2 = xp.asarray(k2)
    if parametrization == "lobato":
        a, b = p
        terms = [a[i] * (2.0 + b[i] * k2) / (1.0 + b[i] * k2) ** 2 for i in range(5)]
    else:
        a, b, c, d = p
        terms = [a[i] / (k2 + b[i]) + c[i] * xp.exp(-d[i] * k2) for i in range(3)]
    return functools.reduce(lambda x, y: x + y, terms)


def projected_scattering_factor(parametrization: str, Z: int, k2):
    """2D Fourier transform of the infinitely projected potential of one atom [V Å^3] at
    ``k2 = |k|^2`` [1/Å^2]: ``h^2 / (2 pi m0 e) * f_e(|k|)`` (see the module docstring)."""
    return _FE_TO_POTENTIAL * scattering_factor(parametrization, Z, k2)


def partially_projected_scattering_factor(parametrization: str, Z: int, k2, s):
    """``G(k, s)`` [V Å^3]: the 2D Fourier transform at ``k2 = |k|^2`` [1/Å^2] of the potential of
    one atom integrated along z over ``[0, s]`` [Å] measured from the atom (odd in ``s``; the module
    docstring gives the closed forms). ``G(k, z1 - za) - G(k, z0 - za)`` is the finite projection of
    an atom at height ``za`` onto the slab ``[z0, z1]``; ``2 G(k, inf)`` is
    :func:`projected_scattering_factor`. NumPy float64 (the reference for the JAX kernels of
    :mod:`forward.finite_projection`); ``k2`` and ``s`` broadcast.
    """
    p = coefficients(parametrization, Z)
    k2 = np.asarray(k2, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    sa = np.abs(s)
    total = np.zeros(np.broadcast_shapes(k2.shape, s.shape))
    if parametrization == "lobato":
        a, b = p
        for i in range(5):
            c = 1.0 + b[i] * k2
            mu = 2.0 * math.pi * np.sqrt(c / b[i])
            e = np.exp(-mu * sa)
            total = total + a[i] * ((1.0 - e) / (2.0 * c) + (2.0 - e * (2.0 + mu * sa)) / (4.0 * c**2))
    else:
        a, b, c, d = p
        for i in range(3):
            mu = 2.0 * math.pi * np.sqrt(k2 + b[i])
            total = total + a[i] * (1.0 - np.exp(-mu * sa)) / (2.0 * (k2 + b[i]))
            total = total + c[i] * np.exp(-d[i] * k2) * 0.5 * erf(math.pi * sa / math.sqrt(d[i]))
    return _FE_TO_POTENTIAL * np.sign(s) * total
