"""STEM detectors: annular (BF/ABF/ADF/HAADF), segmented, and pixelated (4D-STEM).

A detector acts on the diffraction-plane intensity ``|fft2(psi_exit)|²`` ``[..., nx, ny]`` (FFT
order) of probes normalised so that it sums to 1 (DESIGN 3.4); its values are therefore
fractions of the beam (Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed. (2010),
eq. 5.53: the STEM signal is the diffraction intensity integrated over the detector area).

Geometry follows abTEM 1.0.11 exactly, so results agree pixel for pixel:
- annular: pixels with ``inner <= alpha < outer`` [mrad] (``_annular_detector_mask``), where
  ``alpha = lambda |k|``;
- segmented: the same annulus split into ``n_segments`` azimuthal segments, segment
  ``floor(n (phi - rotation mod 2 pi) / 2 pi)`` with ``phi = atan2(ky, kx)``
  (``_polar_detector_bins`` with one radial bin);
- pixelated: the pattern cropped to the antialias cutoff (``'cutoff'``), to the largest
  rectangle inside it (``'valid'``) or not at all (``'full'``), then fft-shifted so the zero
  frequency sits at ``[n // 2, m // 2]`` (``Waves.diffraction_patterns``, ``fft_crop``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from forward.beam import Detector
from forward.errors import InputError
from forward.grid import Grid
from forward.probe import antialias_cutoff_angle
from forward.reciprocal import polar_frequencies

__all__ = ["make_detector_fn", "cbed_gpts", "check_detector", "CBED_CROPS"]

#: Crops of a pixelated (4D-STEM) detector, as abTEM's ``max_angle`` strings.
CBED_CROPS = ("cutoff", "valid", "full")


def _parity(n: int, like: int) -> int:
    return n if (n % 2) == (like % 2) else n + 1


def cbed_gpts(grid: Grid, crop: str = "cutoff") -> tuple[int, int]:
    """Shape ``(kx, ky)`` of a pixelated-detector pattern on ``grid`` (abTEM ``_gpts_within_angle``)."""
    if crop not in CBED_CROPS:
        raise InputError(f"unknown 4D-STEM crop {crop!r}: expected one of {CBED_CROPS}")
    if crop == "full":
        return grid.gpts
    kcut = 2.0 / 3.0 / max(grid.sampling)
    cut = tuple(_parity(int(np.floor(kcut * e + 1e-9)), n) for e, n in zip(grid.extent, grid.gpts))
    if crop == "cutoff":
        return cut
    valid = tuple(int(np.floor(c / np.sqrt(2.0) + 1e-9)) for c in cut)
    return tuple(_parity(v, n) for v, n in zip(valid, grid.gpts))


def _crop_indices(n_in: int, n_out: int) -> np.ndarray:
    """Indices of the ``n_out`` lowest frequencies of an FFT axis of length ``n_in``, in fftshift order."""
    freq = np.round(np.fft.fftshift(np.fft.fftfreq(n_out)) * n_out).astype(int)
    return np.mod(freq, n_in)


def make_detector_fn(
    grid: Grid, detector: Detector, *, cbed_crop: str = "cutoff", cbed_shape: tuple[int, int] | None = None
):
    """A pure function that applies a detector of ``detector``'s mode to diffraction intensities.

    Args:
        grid: grid of the waves being detected (static).
        detector: a template :class:`forward.beam.Detector`; its static ``mode`` and
            ``n_segments`` fix the output layout, its leaves are read at call time.
        cbed_crop: 4D-STEM crop, one of :data:`CBED_CROPS` (static).
        cbed_shape: explicit 4D-STEM pattern shape overriding ``cbed_crop`` (PRISM windows).

    Returns:
        ``detect(intensity, detector, wavelength)``: ``intensity`` ``[..., nx, ny]`` in FFT order,
        ``wavelength`` [Å]; returns ``[...]`` (annular), ``[..., n_segments]`` (segmented) or
        ``[..., kx, ky]`` (4D-STEM, zero frequency at the centre), fractions of the beam.
    """
    mode = detector.mode
    if mode == "hrtem":
        raise InputError(
            "detector mode 'hrtem' is a camera, not a STEM detector: use make_detector("
            "'stem_annular' | 'stem_segmented' | '4dstem', ...) for a STEM simulation"
        )
    if mode == "4dstem":
        shape = cbed_gpts(grid, cbed_crop) if cbed_shape is None else tuple(cbed_shape)
        if any(c > g for c, g in zip(shape, grid.gpts)):
            raise InputError(f"cbed_shape {shape} exceeds the grid {grid.gpts}")
        ix = _crop_indices(grid.gpts[0], shape[0])
        iy = _crop_indices(grid.gpts[1], shape[1])

        def detect_pixelated(intensity, det: Detector, wavelength):
            return intensity[..., ix[:, None], iy[None, :]]

        return detect_pixelated
    n_seg = detector.n_segments

    def detect_annular(intensity, det: Detector, wavelength):
        alpha, phi = polar_frequencies(grid, wavelength)
        alpha = alpha * 1e3
        ring = (alpha >= det.inner) & (alpha < det.outer)
        if mode == "stem_annular":
            return jnp.sum(jnp.where(ring, intensity, 0.0), axis=(-2, -1))
        p = jnp.mod(phi - det.rotation, 2.0 * jnp.pi)
        seg = jnp.clip(jnp.floor(n_seg * p / (2.0 * jnp.pi)), 0, n_seg - 1).astype(jnp.int32)
        masks = (seg[None] == jnp.arange(n_seg)[:, None, None]) & ring[None]
        return jnp.einsum("...xy,sxy->...s", intensity, masks.astype(intensity.dtype))

    return detect_annular


def check_detector(grid: Grid, detector: Detector, energy: float) -> None:
    """Guards for a STEM detector on ``grid`` at ``energy`` [eV] (concrete input; InputError).

    The outer collection angle of an annular or segmented detector must lie within the
    antialias cutoff of the grid: scattering beyond it is removed by the multislice, so a
    larger outer angle would silently under-count (HAADF needs fine sampling).
    """
    if detector.mode not in ("stem_annular", "stem_segmented"):
        return
    cut = antialias_cutoff_angle(grid, float(energy))
    outer = float(detector.outer)
    if outer > cut + 1e-6:
        need = max(grid.sampling) * cut / outer
        raise InputError(
            f"sampling too coarse for the detector: outer angle {outer:g} mrad exceeds the antialias "
            f"cutoff {cut:.4g} mrad of a grid with sampling {max(grid.sampling):.4g} Å at "
            f"{float(energy) / 1e3:g} kV; use sampling below {need:.3g} Å or lower the outer angle"
        )
