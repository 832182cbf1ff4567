"""Lens transfer: the Krivanek aberration phase chi(alpha, phi) and the objective/condenser aperture.

Both act in reciprocal space on the angular grid of a :class:`forward.grid.Grid`: ``alpha`` is the
scattering angle ``lambda * |k|`` [rad] (small-angle, as abTEM 1.0.11 ``_angular_grid``) and
``phi = atan2(ky, kx)`` [rad], arrays indexed ``[x, y]``. Both are pure JAX and differentiable in
the aberration coefficients (and, for the soft aperture, in the cutoff).
"""

from __future__ import annotations

import jax.numpy as jnp

from forward.beam import Aberrations
from forward.errors import InputError

__all__ = ["aberration_phase", "aperture"]


def aberration_phase(alpha, phi, wavelength, aberrations: Aberrations):
    """Phase error chi [rad] of a lens with Krivanek polar aberrations up to 5th order.

    Krivanek, Dellby & Lupini, Ultramicroscopy 78 (1999) 1, eq. 1 in polar form, as abTEM 1.0.11
    ``transfer.Aberrations._evaluate_from_angular_grid`` evaluates it:

        chi = 2 pi / lambda * sum_n alpha^(n+1) / (n+1) * sum_m C_nm cos(m (phi - phi_nm))

    with n = 1..5 and m = n+1, n-1, ... >= 0 of matching parity. The wave (or probe) is
    multiplied by ``exp(-i chi)``; ``C10 = -defocus`` so a positive defocus (underfocus) lowers
    chi.

    Args:
        alpha: scattering angles [rad], any shape (typically ``[nx, ny]``).
        phi: azimuths [rad], the same shape as ``alpha``.
        wavelength: relativistic electron wavelength [Å] (scalar).
        aberrations: :class:`forward.beam.Aberrations`, C_nm [Å] and phi_nm [rad] (scalar
            leaves; batch with ``jax.vmap``).

    Returns:
        chi [rad], the shape of ``alpha``.
    """
    ab = aberrations
    a = jnp.asarray(alpha)
    p = jnp.asarray(phi)
    a2 = a * a
    a3 = a2 * a
    a4 = a2 * a2
    a5 = a4 * a
    a6 = a3 * a3
    chi = 0.5 * a2 * (ab.C10 + ab.C12 * jnp.cos(2.0 * (p - ab.phi12)))
    chi = chi + a3 / 3.0 * (ab.C21 * jnp.cos(p - ab.phi21) + ab.C23 * jnp.cos(3.0 * (p - ab.phi23)))
    chi = chi + 0.25 * a4 * (
        ab.C30 + ab.C32 * jnp.cos(2.0 * (p - ab.phi32)) + ab.C34 * jnp.cos(4.0 * (p - ab.phi34))
    )
    chi = chi + 0.2 * a5 * (
        ab.C41 * jnp.cos(p - ab.phi41)
        + ab.C43 * jnp.cos(3.0 * (p - ab.phi43))
        + ab.C45 * jnp.cos(5.0 * (p - ab.phi45))
    )
    chi = chi + a6 / 6.0 * (
        ab.C50
        + ab.C52 * jnp.cos(2.0 * (p - ab.phi52))
        + ab.C54 * jnp.cos(4.0 * (p - ab.phi54))
        + ab.C56 * jnp.cos(6.0 * (p - ab.phi56))
    )
    return (2.0 * jnp.pi / wavelength) * chi


def aperture(alpha, semiangle_cutoff, *, soft: bool = False, phi=None, angular_sampling=None):
    """A circular aperture of semiangle ``semiangle_cutoff`` [mrad] on the angular grid.

    Hard: ``1`` where ``alpha <= cutoff``, else ``0`` (abTEM 1.0.11 ``hard_aperture``).
    Soft (abTEM 1.0.11 ``soft_aperture``, the default of ``abtem.Probe``): the edge is a linear
    ramp one reciprocal pixel wide, ``clip((cutoff - alpha) / d(phi) + 1/2, 0, 1)`` with
    ``d(phi) = sqrt((cos(phi) dax)^2 + (sin(phi) day)^2)`` the angular pixel size along the
    azimuth; the zero-frequency pixel is always 1. This anti-aliases the aperture edge and makes
    the aperture differentiable in ``semiangle_cutoff``.

    Args:
        alpha: scattering angles [rad], ``[nx, ny]`` (the zero frequency at index ``[0, 0]``).
        semiangle_cutoff: aperture semiangle [mrad] (scalar; may be traced).
        soft: taper the edge (needs ``phi`` and ``angular_sampling``).
        phi: azimuths [rad], the shape of ``alpha`` (soft only).
        angular_sampling: ``(dax, day)`` angular pixel size [mrad] = ``lambda / extent * 1e3``
            (may be traced).

    Returns:
        float ``[nx, ny]`` transmission in [0, 1].
    """
    a = jnp.asarray(alpha)
    cutoff = jnp.asarray(semiangle_cutoff, dtype=a.dtype) * 1e-3
    if not soft:
        return (a <= cutoff).astype(a.dtype)
    if phi is None or angular_sampling is None:
        raise InputError(
            "a soft aperture needs phi [rad] and angular_sampling (dax, day) [mrad], got "
            f"phi={'None' if phi is None else 'array'}, angular_sampling={angular_sampling!r}; "
            "pass both or use soft=False"
        )
    if len(tuple(angular_sampling)) != 2:
        raise InputError(f"angular_sampling must be a pair (dax, day) [mrad], got {angular_sampling!r}")
    p = jnp.asarray(phi)
    dax, day = (jnp.asarray(s, dtype=a.dtype) * 1e-3 for s in angular_sampling)
    denom = jnp.sqrt((jnp.cos(p) * dax) ** 2 + (jnp.sin(p) * day) ** 2)
    origin = _origin_mask(a.shape)
    denom = jnp.where(origin, 1.0, denom)
    out = jnp.clip((cutoff - a) / denom + 0.5, 0.0, 1.0)
    return jnp.where(origin, 1.0, out).astype(a.dtype)


def _origin_mask(shape: tuple[int, ...]):
    """Boolean ``shape`` array that is True only at the zero frequency ``[0, ..., 0]``."""
    return jnp.zeros(shape, dtype=bool).at[(0,) * len(shape)].set(True)
