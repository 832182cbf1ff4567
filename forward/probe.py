"""The STEM probe: aperture times aberration phase, placed by Fourier phase ramps.

In reciprocal space the probe is ``psi(k) = A(k) exp(-i chi(k))`` (Kirkland, *Advanced Computing
in Electron Microscopy*, 2nd ed. (2010), eq. 5.47), normalised so that the diffraction-space
intensity sums to 1 (DESIGN 3.4; abTEM 1.0.11 ``Waves.normalize(space="reciprocal")``): detector
values are then fractions of the beam. A probe centred at ``r0`` is ``psi(k) exp(-2 pi i k.r0)``
(Fourier shift theorem; abTEM ``fft_shift_kernel``), exact and differentiable in ``r0``.

Layouts: reciprocal arrays ``[nx, ny]`` in FFT order (zero frequency at ``[0, 0]``); real-space
waves ``[..., nx, ny]`` with the numpy FFT convention, so ``fft2`` of a probe gives back the
normalised spectrum (``sum |fft2(psi)|² = 1``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from forward.beam import BeamCondition
from forward.constants import wavelength
from forward.errors import InputError
from forward.grid import Grid
from forward.reciprocal import polar_frequencies, spatial_frequencies
from forward.transfer import aberration_phase, aperture

__all__ = [
    "probe_spectrum",
    "shift_phase",
    "probe_waves",
    "angular_sampling",
    "antialias_cutoff_angle",
    "check_probe",
]


def angular_sampling(grid: Grid, energy: float) -> tuple[float, float]:
    """Angular size of one Fourier pixel ``lambda / extent`` [mrad] along x and y."""
    lam = float(wavelength(float(energy)))
    return (lam / grid.extent[0] * 1e3, lam / grid.extent[1] * 1e3)


def antialias_cutoff_angle(grid: Grid, energy: float) -> float:
    """Largest scattering angle the multislice keeps [mrad] (abTEM 1.0.11 ``cutoff_angles``).

    The 2/3 antialias disc (DESIGN 3.2) keeps ``n_c = floor(2/3 / max(dx, dy) * extent)`` Fourier
    pixels per axis (rounded to the parity of the grid); the cutoff angle is
    ``min over axes of (n_c // 2) * angular sampling``.
    """
    da = angular_sampling(grid, energy)
    kcut = 2.0 / 3.0 / max(grid.sampling)
    out = []
    for n, e, d in zip(grid.gpts, grid.extent, da):
        nc = int(np.floor(kcut * e + 1e-9))
        if (nc % 2) != (n % 2):
            nc += 1
        out.append(nc // 2 * d)
    return min(out)


def probe_spectrum(grid: Grid, beam: BeamCondition, *, soft: bool = True):
    """The normalised probe in reciprocal space, ``A(k) exp(-i chi(k)) / norm`` [nx, ny].

    Args:
        grid: simulation grid (static).
        beam: :class:`forward.beam.BeamCondition`; uses energy [eV], semiangle_cutoff [mrad]
            and aberrations (all may be traced).
        soft: abTEM's soft aperture edge (the default of ``abtem.Probe``) instead of a hard one.

    Returns:
        complex64 ``[nx, ny]`` in FFT order with ``sum |psi|² = 1``.
    """
    lam = wavelength(beam.energy)
    alpha, phi = polar_frequencies(grid, lam)
    da = (lam / grid.extent[0] * 1e3, lam / grid.extent[1] * 1e3) if soft else None
    amp = aperture(alpha, beam.semiangle_cutoff, soft=soft, phi=phi, angular_sampling=da)
    chi = aberration_phase(alpha, phi, lam, beam.aberrations)
    psi = amp * jnp.exp(-1j * chi.astype(jnp.float32))
    norm = jnp.sqrt(jnp.sum(jnp.abs(psi) ** 2))
    return (psi / norm).astype(jnp.complex64)


def shift_phase(grid: Grid, positions):
    """Fourier phase ramps ``exp(-2 pi i k.r0)`` that move a wave to ``positions`` [Å].

    Args:
        grid: simulation grid.
        positions: ``[..., 2]`` probe positions (x, y) [Å] (may be traced).

    Returns:
        complex64 ``[..., nx, ny]``.
    """
    kx, ky = spatial_frequencies(grid)
    p = jnp.asarray(positions, dtype=jnp.float32)
    # Separable ramps: exp(-2 pi i kx x) [..., nx, 1] * exp(-2 pi i ky y) [..., 1, ny].
    lead = (None,) * (p.ndim - 1)
    ex = jnp.exp(-2j * jnp.pi * kx[lead] * p[..., 0:1])
    ey = jnp.exp(-2j * jnp.pi * ky[lead] * p[..., 1:2])
    return (ex[..., :, None] * ey[..., None, :]).astype(jnp.complex64)


def probe_waves(grid: Grid, spectrum, positions):
    """Real-space probes at ``positions`` [Å]: ``ifft2(spectrum * exp(-2 pi i k.r0))``.

    Args:
        grid: simulation grid.
        spectrum: ``[nx, ny]`` normalised probe from :func:`probe_spectrum`.
        positions: ``[..., 2]`` (x, y) [Å].

    Returns:
        complex64 ``[..., nx, ny]`` real-space waves (numpy FFT normalisation).
    """
    ramps = shift_phase(grid, positions)
    return jnp.fft.ifft2(ramps * spectrum[(None,) * (ramps.ndim - 2)])


def check_probe(grid: Grid, beam: BeamCondition) -> None:
    """Guards for a STEM probe on ``grid`` (concrete input only; raises InputError).

    - the aperture must lie inside the antialias cutoff (else the sampling is too coarse);
    - the aperture must span at least 2 Fourier pixels in radius (else the cell is too small
      to hold the probe: its real-space width ``~ lambda / alpha`` exceeds half the cell).
    """
    e = float(beam.energy)
    sa = float(beam.semiangle_cutoff)
    if sa <= 0:
        raise InputError(f"a STEM probe needs semiangle_cutoff > 0 mrad, got {sa:g}")
    cut = antialias_cutoff_angle(grid, e)
    if sa >= cut:
        need = max(grid.sampling) * sa / cut
        raise InputError(
            f"sampling too coarse for the probe: the {sa:g} mrad aperture reaches the antialias "
            f"cutoff {cut:.4g} mrad of a grid with sampling {max(grid.sampling):.4g} Å at "
            f"{e / 1e3:g} kV; use sampling below {need:.3g} Å"
        )
    da = max(angular_sampling(grid, e))
    if sa < 2.0 * da:
        lam = float(wavelength(e))
        raise InputError(
            f"grid too small for the probe: the {sa:g} mrad aperture spans {sa / da:.2f} Fourier "
            f"pixels of {da:.3g} mrad (need >= 2); enlarge the cell to at least "
            f"{2.0 * lam / (sa * 1e-3):.3g} Å (tile the structure) or raise semiangle_cutoff"
        )

