"""Beam conditions: energy, aperture, Krivanek aberrations, tilt, partial coherence, dose, detector.

Units throughout: energy [eV], angles [mrad], lengths [Å], phase angles [rad], dose [e-/Å²].
``defocus = -C10`` (positive defocus is underfocus), as in abTEM; the conversion happens once,
in :func:`make_aberrations`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import numpy as np

from forward._pytree import pytree_dataclass, static_field
from forward._validate import as_float_array, finite_scalar, in_range
from forward.errors import InputError

__all__ = [
    "Aberrations",
    "make_aberrations",
    "ABERRATION_SYMBOLS",
    "ABERRATION_ALIASES",
    "Detector",
    "make_detector",
    "DETECTOR_MODES",
    "BeamCondition",
    "make_beam",
    "ENERGY_RANGE",
]

#: Krivanek polar aberration coefficients C_nm [Å] and their azimuths phi_nm [rad], up to 5th order.
ABERRATION_SYMBOLS: tuple[str, ...] = (
    "C10", "C12", "phi12",
    "C21", "phi21", "C23", "phi23",
    "C30", "C32", "phi32", "C34", "phi34",
    "C41", "phi41", "C43", "phi43", "C45", "phi45",
    "C50", "C52", "phi52", "C54", "phi54", "C56", "phi56",
)  # fmt: skip

#: The one alias table (display names and common input names -> Krivanek symbols).
#: ``defocus`` is not here: it is ``-C10`` and handled explicitly.
ABERRATION_ALIASES: Mapping[str, str] = {
    "astigmatism": "C12", "astigmatism_angle": "phi12",
    "coma": "C21", "coma_angle": "phi21",
    "Cs": "C30", "spherical_aberration": "C30",
    "C5": "C50",
}  # fmt: skip


@pytree_dataclass
class Aberrations:
    """Krivanek polar aberration coefficients; every field is a scalar leaf (C_nm [Å], phi_nm [rad])."""

    C10: np.ndarray
    C12: np.ndarray
    phi12: np.ndarray
    C21: np.ndarray
    phi21: np.ndarray
    C23: np.ndarray
    phi23: np.ndarray
    C30: np.ndarray
    C32: np.ndarray
    phi32: np.ndarray
    C34: np.ndarray
    phi34: np.ndarray
    C41: np.ndarray
    phi41: np.ndarray
    C43: np.ndarray
    phi43: np.ndarray
    C45: np.ndarray
    phi45: np.ndarray
    C50: np.ndarray
    C52: np.ndarray
    phi52: np.ndarray
    C54: np.ndarray
    phi54: np.ndarray
    C56: np.ndarray
    phi56: np.ndarray

    @property
    def defocus(self):
        """Defocus [Å] = -C10 (positive is underfocus)."""
        return -self.C10

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ABERRATION_SYMBOLS}


def make_aberrations(
    coefficients: Mapping[str, float] | None = None, *, defocus: float | None = None
) -> Aberrations:
    """Validated aberrations from Krivanek symbols (or aliases in :data:`ABERRATION_ALIASES`).

    ``defocus`` [Å] is accepted as ``-C10``; giving both is an error. Unknown names are errors,
    never ignored.
    """
    values = dict.fromkeys(ABERRATION_SYMBOLS, 0.0)
    seen: dict[str, str] = {}
    for key, value in (coefficients or {}).items():
        sym = ABERRATION_ALIASES.get(key, key)
        if sym == "defocus":
            if defocus is not None:
                raise InputError("defocus given twice")
            defocus = value
            continue
        if sym not in values:
            close = difflib.get_close_matches(key, [*ABERRATION_SYMBOLS, *ABERRATION_ALIASES], n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise InputError(
                f"unknown aberration {key!r}: expected Krivanek symbols C10..phi56 "
                f"(C_nm in Å, phi_nm in rad) or 'defocus'.{hint}"
            )
        if sym in seen:
            raise InputError(f"aberration {sym} given twice (as {seen[sym]!r} and {key!r})")
        seen[sym] = key
        unit = "rad" if sym.startswith("phi") else "Å"
        values[sym] = finite_scalar(value, f"aberration {key}", unit)
    if defocus is not None:
        if "C10" in seen:
            raise InputError("give either defocus or C10 (defocus = -C10), not both")
        values["C10"] = -finite_scalar(defocus, "defocus", "Å")
    return Aberrations(**{k: np.asarray(v, dtype=np.float64) for k, v in values.items()})


#: Detector modes: HRTEM camera, STEM annular (BF/ABF/ADF/HAADF by angles), segmented, pixelated.
DETECTOR_MODES: tuple[str, ...] = ("hrtem", "stem_annular", "stem_segmented", "4dstem")


@pytree_dataclass
class Detector:
    """Detector geometry and response.

    Attributes:
        mode: one of :data:`DETECTOR_MODES` (static).
        n_segments: azimuthal segments of a segmented detector (static; 1 otherwise).
        inner, outer: collection semiangles [mrad] (STEM annular and segmented).
        rotation: azimuth of the first segment [rad].
        gain: recorded counts per incident electron.
        read_noise: Gaussian read noise, standard deviation [counts].
        mtf: ``[4]`` parameters ``(a, b, c, d)`` of the camera MTF
            ``(a - b) / (1 + (q / 2c)^d) + b`` with q in units of Nyquist (Thust,
            Ultramicroscopy 109 (2009) 1451, eq. 6); ``(1, 1, 1, 1)`` is a perfect detector.
    """

    inner: np.ndarray
    outer: np.ndarray
    rotation: np.ndarray
    gain: np.ndarray
    read_noise: np.ndarray
    mtf: np.ndarray
    mode: str = static_field(default="hrtem")
    n_segments: int = static_field(default=1)


def make_detector(
    mode: str = "hrtem",
    *,
    inner: float = 0.0,
    outer: float = 0.0,
    n_segments: int = 1,
    rotation: float = 0.0,
    gain: float = 1.0,
    read_noise: float = 0.0,
    mtf=(1.0, 1.0, 1.0, 1.0),
) -> Detector:
    """A validated :class:`Detector` (angles [mrad], gain [counts/e-], read noise [counts])."""
    if mode not in DETECTOR_MODES:
        close = difflib.get_close_matches(str(mode), DETECTOR_MODES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown detector mode {mode!r}: expected one of {DETECTOR_MODES}.{hint}")
    inner = in_range(inner, "detector inner angle", "mrad", 0.0, 1000.0)
    outer = in_range(outer, "detector outer angle", "mrad", 0.0, 1000.0)
    if mode in ("stem_annular", "stem_segmented") and not outer > inner:
        raise InputError(
            f"{mode} detector needs outer > inner collection angle, got inner={inner:g} mrad, "
            f"outer={outer:g} mrad (HAADF is typically 70-200 mrad at 200 kV)"
        )
    if isinstance(n_segments, bool) or int(n_segments) != n_segments or n_segments < 1:
        raise InputError(f"n_segments must be a positive integer, got {n_segments!r}")
    if mode != "stem_segmented" and n_segments != 1:
        raise InputError(f"n_segments={n_segments} only applies to mode 'stem_segmented', not {mode!r}")
    m = as_float_array(mtf, "detector mtf", (4,))
    if m[2] <= 0:
        raise InputError(f"detector mtf parameter c (the frequency scale) must be > 0, got {m[2]:g}")
    return Detector(
        inner=np.asarray(inner),
        outer=np.asarray(outer),
        rotation=np.asarray(finite_scalar(rotation, "detector rotation", "rad")),
        gain=np.asarray(in_range(gain, "detector gain", "counts/e-", 0.0, 1e6, lo_open=True)),
        read_noise=np.asarray(in_range(read_noise, "detector read noise", "counts", 0.0, 1e6)),
        mtf=m,
        mode=str(mode),
        n_segments=int(n_segments),
    )


#: Accepted acceleration energies [eV]: low-voltage SEM/TEM to high-voltage TEM.
ENERGY_RANGE = (1e3, 3e6)


@pytree_dataclass
class BeamCondition:
    """Everything about the illumination and recording of one frame.

    Attributes:
        energy: electron energy [eV].
        semiangle_cutoff: probe convergence (STEM) or objective aperture (HRTEM) semiangle
            [mrad]; 0 means no aperture.
        aberrations: :class:`Aberrations`.
        tilt: ``[2]`` beam tilt (x, y) [mrad].
        focal_spread: focal spread (standard deviation of defocus) from chromatic aberration
            and energy spread [Å]; sets the temporal-coherence envelope.
        angular_spread: illumination convergence (standard deviation) [mrad]; sets the
            spatial-coherence envelope of HRTEM.
        source_size: Gaussian source size (standard deviation) [Å]; blurs STEM images.
        dose: electron dose of the frame [e-/Å²].
        detector: :class:`Detector`.
    """

    energy: np.ndarray
    semiangle_cutoff: np.ndarray
    aberrations: Aberrations
    tilt: np.ndarray
    focal_spread: np.ndarray
    angular_spread: np.ndarray
    source_size: np.ndarray
    dose: np.ndarray
    detector: Detector


def make_beam(
    energy: float,
    *,
    semiangle_cutoff: float = 0.0,
    aberrations: Aberrations | Mapping[str, float] | None = None,
    defocus: float | None = None,
    tilt=(0.0, 0.0),
    focal_spread: float = 0.0,
    angular_spread: float = 0.0,
    source_size: float = 0.0,
    dose: float = 1e3,
    detector: Detector | None = None,
) -> BeamCondition:
    """A validated :class:`BeamCondition` (DESIGN units: eV, mrad, Å, e-/Å²)."""
    e = finite_scalar(energy, "energy", "eV")
    lo, hi = ENERGY_RANGE
    if e <= 0:
        raise InputError(f"energy must be positive [eV], got {e:g} eV (e.g. 300e3 for 300 kV)")
    if e < lo:
        hint = f"; did you give kV? {e:g} kV is {e * 1e3:g} eV" if e <= 3000 else ""
        raise InputError(f"energy {e:g} eV is below the supported range [{lo:g}, {hi:g}] eV{hint}")
    if e > hi:
        raise InputError(f"energy {e:g} eV is above the supported range [{lo:g}, {hi:g}] eV")
    if isinstance(aberrations, Aberrations):
        if defocus is not None:
            raise InputError("give defocus inside aberrations or as an argument, not both")
        ab = aberrations
    else:
        ab = make_aberrations(aberrations, defocus=defocus)
    t = as_float_array(tilt, "tilt", (2,))
    if np.abs(t).max() > 200:
        raise InputError(f"tilt must be within ±200 mrad (small-angle multislice), got {t.tolist()} mrad")
    det = make_detector() if detector is None else detector
    if not isinstance(det, Detector):
        raise InputError(f"detector must be a Detector (see make_detector), got {type(det).__name__}")
    sa = in_range(
        semiangle_cutoff, "semiangle_cutoff", "mrad", 0.0, 300.0,
        hint="the multislice is paraxial; typical probes are 10-40 mrad",
    )  # fmt: skip
    if det.mode != "hrtem" and sa <= 0:
        raise InputError(f"a STEM probe ({det.mode}) needs semiangle_cutoff > 0 mrad, got {sa:g}")
    return BeamCondition(
        energy=np.asarray(e),
        semiangle_cutoff=np.asarray(sa),
        aberrations=ab,
        tilt=t,
        focal_spread=np.asarray(in_range(focal_spread, "focal_spread", "Å", 0.0, 1e4)),
        angular_spread=np.asarray(in_range(angular_spread, "angular_spread", "mrad", 0.0, 50.0)),
        source_size=np.asarray(in_range(source_size, "source_size", "Å", 0.0, 100.0)),
        dose=np.asarray(
            in_range(dose, "dose", "e-/Å²", 0.0, 1e9, lo_open=True, hint="dose is per frame, > 0")
        ),
        detector=det,
    )
