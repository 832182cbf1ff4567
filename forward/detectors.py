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
  rectangle inside it (``'valid'``), not at all (``'full'``) or to a maximum angle [mrad] (a
  number: ``2 ceil(angle / d_alpha) + 1`` pixels per axis, parity of the grid, as abTEM's
  ``_gpts_within_angle``), then fft-shifted so the zero frequency sits at ``[n // 2, m // 2]``
  (``Waves.diffraction_patterns``, ``fft_crop``). Optionally binned by an integer factor ``b``:
  output pixel ``q`` (zero frequency at ``q = n_out // 2``) sums the ``b x b`` input pixels of
  frequency index ``q b + d``, ``d = -(b // 2) .. b - 1 - b // 2`` (centred on the zero frequency
  for odd ``b``, fftshift-like for even ``b``); only whole bins inside the crop are kept, so the
  binned pattern is still a fraction of the beam and its angular sampling is ``b`` times the
  grid's, ``lambda / extent`` [rad] (:func:`cbed_geometry` reports it).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from forward.beam import Detector
from forward.constants import wavelength
from forward.errors import InputError
from forward.grid import Grid
from forward.probe import antialias_cutoff_angle
from forward.reciprocal import polar_frequencies

__all__ = [
    "make_detector_fn",
    "cbed_gpts",
    "cbed_geometry",
    "CBEDGeometry",
    "angular_sampling",
    "check_detector",
    "CBED_CROPS",
]

#: Crops of a pixelated (4D-STEM) detector, as abTEM's ``max_angle`` strings.
CBED_CROPS = ("cutoff", "valid", "full")


def _parity(n: int, like: int) -> int:
    return n if (n % 2) == (like % 2) else n + 1


def angular_sampling(grid: Grid, energy: float) -> tuple[float, float]:
    """Angular size of one diffraction pixel ``lambda / extent`` [mrad] per axis."""
    lam = float(wavelength(float(energy)))
    return (lam / grid.extent[0] * 1e3, lam / grid.extent[1] * 1e3)


def cbed_gpts(grid: Grid, crop: str | float = "cutoff", *, energy: float | None = None) -> tuple[int, int]:
    """Shape ``(kx, ky)`` of a pixelated-detector pattern on ``grid`` (abTEM ``_gpts_within_angle``).

    ``crop`` is one of :data:`CBED_CROPS` or a maximum angle [mrad], which needs ``energy`` [eV].
    """
    if not isinstance(crop, str):
        return _gpts_within_angle(grid, crop, energy)
    if crop not in CBED_CROPS:
        raise InputError(
            f"unknown 4D-STEM crop {crop!r}: expected one of {CBED_CROPS} or a maximum angle in mrad"
        )
    if crop == "full":
        return grid.gpts
    kcut = 2.0 / 3.0 / max(grid.sampling)
    cut = tuple(_parity(int(np.floor(kcut * e + 1e-9)), n) for e, n in zip(grid.extent, grid.gpts))
    if crop == "cutoff":
        return cut
    valid = tuple(int(np.floor(c / np.sqrt(2.0) + 1e-9)) for c in cut)
    return tuple(_parity(v, n) for v, n in zip(valid, grid.gpts))


def _gpts_within_angle(grid: Grid, angle, energy) -> tuple[int, int]:
    try:
        a = float(angle)
    except (TypeError, ValueError):
        raise InputError(
            f"4D-STEM crop must be one of {CBED_CROPS} or a maximum angle in mrad, got {angle!r}"
        ) from None
    if not (math.isfinite(a) and a > 0):
        raise InputError(f"4D-STEM maximum angle must be a positive number of mrad, got {angle!r}")
    if energy is None:
        raise InputError(
            f"a 4D-STEM crop given as an angle ({a:g} mrad) needs the beam energy to convert it to "
            "pixels: pass energy=... [eV]"
        )
    d = angular_sampling(grid, energy)
    n = tuple(_parity(2 * int(math.ceil(a / di - 1e-9)) + 1, g) for di, g in zip(d, grid.gpts))
    if any(ni > g for ni, g in zip(n, grid.gpts)):
        largest = min(g // 2 * di for g, di in zip(grid.gpts, d))
        raise InputError(
            f"4D-STEM maximum angle {a:g} mrad exceeds the largest angle of the grid, {largest:.4g} mrad "
            f"at {float(energy) / 1e3:g} kV (sampling {max(grid.sampling):.4g} Å); use a finer sampling, "
            "a smaller angle or crop='full'"
        )
    return n


def _bin_ranges(n_crop: int, b: int) -> tuple[int, int]:
    """Bins ``q = -lo .. hi`` of factor ``b`` that lie wholly inside a crop of ``n_crop`` pixels
    (frequencies ``-(n_crop // 2) .. n_crop - 1 - n_crop // 2``), with the zero bin at ``n_out // 2``."""
    f_lo, f_hi = -(n_crop // 2), n_crop - 1 - n_crop // 2
    d_lo, d_hi = -(b // 2), b - 1 - b // 2
    lo = -math.ceil((f_lo - d_lo) / b)  # smallest q with q b + d_lo >= f_lo, negated
    hi = math.floor((f_hi - d_hi) / b)
    lo = min(lo, hi + 1)  # zero bin at n_out // 2: at most one more bin below than above
    hi = min(hi, lo)
    return lo, hi


def _bin_indices(n_in: int, n_crop: int, b: int) -> np.ndarray:
    """FFT-order indices ``[n_out, b]`` of the input pixels summed into each output bin."""
    lo, hi = _bin_ranges(n_crop, b)
    q = np.arange(-lo, hi + 1)
    d = np.arange(-(b // 2), b - b // 2)
    return np.mod(q[:, None] * b + d[None, :], n_in)


@dataclasses.dataclass(frozen=True)
class CBEDGeometry:
    """Layout of a pixelated-detector (4D-STEM) pattern; static information, not a pytree.

    Attributes:
        gpts: pattern shape ``(kx, ky)`` after crop and binning.
        angular_sampling: angle per output pixel ``(dx, dy)`` [mrad] (``bin_factor`` x the grid's).
        center: index ``(ix, iy)`` of the zero-frequency pixel (``gpts // 2``).
        max_angles: largest angle covered along each axis from the centre [mrad].
        bin_factor: pixels binned per output pixel and axis.
    """

    gpts: tuple[int, int]
    angular_sampling: tuple[float, float]
    center: tuple[int, int]
    max_angles: tuple[float, float]
    bin_factor: int


def _check_bin(bin_factor) -> int:
    if isinstance(bin_factor, bool) or int(bin_factor) != bin_factor or int(bin_factor) < 1:
        raise InputError(f"4D-STEM bin factor must be a positive integer, got {bin_factor!r}")
    return int(bin_factor)


def cbed_geometry(grid: Grid, energy: float, crop: str | float = "cutoff", bin_factor: int = 1) -> CBEDGeometry:
    """The shape and angular sampling [mrad] of a 4D-STEM pattern on ``grid`` at ``energy`` [eV],
    cropped by ``crop`` (:data:`CBED_CROPS` or a maximum angle [mrad]) and binned by ``bin_factor``."""
    b = _check_bin(bin_factor)
    crop_gpts = cbed_gpts(grid, crop, energy=energy)
    if b > min(crop_gpts):
        raise InputError(
            f"4D-STEM bin factor {b} is larger than the cropped pattern {crop_gpts}: use a factor of at "
            f"most {min(crop_gpts)} or a larger crop"
        )
    d = angular_sampling(grid, energy)
    ranges = [_bin_ranges(n, b) for n in crop_gpts]
    gpts = tuple(lo + hi + 1 for lo, hi in ranges)
    center = tuple(lo for lo, _ in ranges)
    # Bin q covers frequencies up to q b + b - 1 - b // 2 (pixel centres), on the far side -q b - b // 2.
    max_angles = tuple(max(hi * b + b - 1 - b // 2, lo * b + b // 2) * di for (lo, hi), di in zip(ranges, d))
    return CBEDGeometry(
        gpts=gpts, angular_sampling=(d[0] * b, d[1] * b), center=center, max_angles=max_angles, bin_factor=b
    )


def _crop_indices(n_in: int, n_out: int) -> np.ndarray:
    """Indices of the ``n_out`` lowest frequencies of an FFT axis of length ``n_in``, in fftshift order."""
    freq = np.round(np.fft.fftshift(np.fft.fftfreq(n_out)) * n_out).astype(int)
    return np.mod(freq, n_in)


def make_detector_fn(
    grid: Grid,
    detector: Detector,
    *,
    cbed_crop: str | float = "cutoff",
    cbed_shape: tuple[int, int] | None = None,
    cbed_bin: int = 1,
    energy: float | None = None,
):
    """A pure function that applies a detector of ``detector``'s mode to diffraction intensities.

    Args:
        grid: grid of the waves being detected (static).
        detector: a template :class:`forward.beam.Detector`; its static ``mode`` and
            ``n_segments`` fix the output layout, its leaves are read at call time.
        cbed_crop: 4D-STEM crop, one of :data:`CBED_CROPS` or a maximum angle [mrad] (static).
        cbed_shape: explicit 4D-STEM pattern shape overriding ``cbed_crop`` (PRISM windows).
        cbed_bin: 4D-STEM binning factor per axis (static; see the module docstring).
        energy: beam energy [eV], needed (static) when ``cbed_crop`` is an angle.

    Returns:
        ``detect(intensity, detector, wavelength)``: ``intensity`` ``[..., nx, ny]`` in FFT order,
        ``wavelength`` [Å]; returns ``[...]`` (annular), ``[..., n_segments]`` (segmented) or
        ``[..., kx, ky]`` (4D-STEM, zero frequency at ``[kx // 2, ky // 2]``; shape and angular
        sampling from :func:`cbed_geometry`), fractions of the beam.
    """
    mode = detector.mode
    if mode == "hrtem":
        raise InputError(
            "detector mode 'hrtem' is a camera, not a STEM detector: use make_detector("
            "'stem_annular' | 'stem_segmented' | '4dstem', ...) for a STEM simulation"
        )
    if mode == "4dstem":
        b = _check_bin(cbed_bin)
        shape = cbed_gpts(grid, cbed_crop, energy=energy) if cbed_shape is None else tuple(cbed_shape)
        if any(c > g for c, g in zip(shape, grid.gpts)):
            raise InputError(f"cbed_shape {shape} exceeds the grid {grid.gpts}")
        if b == 1:
            ix = _crop_indices(grid.gpts[0], shape[0])
            iy = _crop_indices(grid.gpts[1], shape[1])

            def detect_pixelated(intensity, det: Detector, wavelength):
                return intensity[..., ix[:, None], iy[None, :]]

            return detect_pixelated
        if b > min(shape):
            raise InputError(
                f"4D-STEM bin factor {b} is larger than the cropped pattern {shape}: use a factor of at "
                f"most {min(shape)} or a larger crop"
            )
        bx = _bin_indices(grid.gpts[0], shape[0], b)  # [mx, b]
        by = _bin_indices(grid.gpts[1], shape[1], b)  # [my, b]

        def detect_binned(intensity, det: Detector, wavelength):
            blocks = intensity[..., bx[:, :, None, None], by[None, None, :, :]]  # [..., mx, b, my, b]
            return jnp.sum(blocks, axis=(-3, -1))

        return detect_binned
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
