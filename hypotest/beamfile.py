"""BEAM.json: a beam condition and the frame geometry, in DESIGN units, for ``hypotest score``.

Schema (``hypotest.beam/1``; unknown fields are errors, never ignored)::

    {
      "energy": 80000,                      eV                              required
      "dose": 40,                           e-/Å² per frame                 required
      "sampling": 0.099 | [dx, dy],         frame pixel (or scan step) Å    required
      "semiangle_cutoff": 25,               mrad (objective aperture / probe convergence)
      "aberrations": {"C30": -1.5e5, "defocus": 97, ...},
                                            Krivanek C_nm in Å, phi_nm in rad; defocus = -C10 [Å]
      "tilt": [0, 0],                       mrad
      "focal_spread": 20,                   Å
      "angular_spread": 0.1,                mrad
      "source_size": 0,                     Å (STEM)
      "detector": {"mode": "hrtem" | "stem_annular", "inner": mrad, "outer": mrad,
                   "gain": counts/e-, "read_noise": counts, "mtf": [a, b, c, d]},
      "simulation": {"sampling": 0.05, "slice_thickness": 1.0, "parametrization": "lobato"}
    }

The frame spans exactly the shared periodic cell of the hypotheses, pixel (0, 0) at the cell
origin, arrays indexed [x, y].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from forward import BeamCondition, InputError, make_beam, make_detector

__all__ = ["BeamFile", "read_beam_file", "parse_beam", "BEAM_FIELDS"]

BEAM_FIELDS = {
    "energy": "eV", "dose": "e-/Å² per frame", "sampling": "Å/pixel", "semiangle_cutoff": "mrad",
    "aberrations": "Å, rad", "tilt": "mrad", "focal_spread": "Å", "angular_spread": "mrad",
    "source_size": "Å", "detector": "", "simulation": "", "schema": "",
}  # fmt: skip
REQUIRED = ("energy", "dose", "sampling")
DETECTOR_FIELDS = ("mode", "inner", "outer", "gain", "read_noise", "mtf", "n_segments", "rotation")
SIMULATION_FIELDS = {"sampling": 0.05, "slice_thickness": 1.0, "parametrization": "lobato"}


@dataclasses.dataclass(frozen=True)
class BeamFile:
    """What BEAM.json describes: the beam, the frame sampling and the simulation settings."""

    beam: BeamCondition
    sampling: tuple[float, float]  # [Å/pixel]
    sim_sampling: float  # [Å]
    slice_thickness: float  # [Å]
    parametrization: str


def _unknown(d: dict, allowed, where: str) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise InputError(f"{where}: unknown field(s) {extra}; allowed: {sorted(allowed)}")


def parse_beam(d: dict, where: str = "BEAM.json") -> BeamFile:
    """A :class:`BeamFile` from the parsed JSON object ``d`` (errors name ``where`` and the field)."""
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(d).__name__}")
    _unknown(d, BEAM_FIELDS, where)
    for k in REQUIRED:
        if k not in d:
            raise InputError(f"{where}: missing required field {k!r} [{BEAM_FIELDS[k]}]")
    det = d.get("detector", {"mode": "hrtem"})
    if not isinstance(det, dict):
        raise InputError(f"{where}: 'detector' must be an object like {{\"mode\": \"hrtem\"}}")
    _unknown(det, DETECTOR_FIELDS, f"{where} detector")
    sim = d.get("simulation", {})
    if not isinstance(sim, dict):
        raise InputError(f"{where}: 'simulation' must be an object")
    _unknown(sim, SIMULATION_FIELDS, f"{where} simulation")
    sim = {**SIMULATION_FIELDS, **sim}
    try:
        detector = make_detector(**det)
        beam = make_beam(
            d["energy"],
            semiangle_cutoff=d.get("semiangle_cutoff", 0.0),
            aberrations=d.get("aberrations"),
            tilt=d.get("tilt", (0.0, 0.0)),
            focal_spread=d.get("focal_spread", 0.0),
            angular_spread=d.get("angular_spread", 0.0),
            source_size=d.get("source_size", 0.0),
            dose=d["dose"],
            detector=detector,
        )
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    except TypeError as exc:  # a field of the wrong JSON type
        raise InputError(f"{where}: {exc}") from None
    s = d["sampling"]
    s = (s, s) if isinstance(s, (int, float)) else s
    if not (isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in s)):
        raise InputError(f"{where}: 'sampling' must be a positive number or [dx, dy] [Å/pixel], got {d['sampling']!r}")
    for k in ("sampling", "slice_thickness"):
        if not (isinstance(sim[k], (int, float)) and sim[k] > 0):
            raise InputError(f"{where}: simulation {k!r} must be a positive length [Å], got {sim[k]!r}")
    return BeamFile(
        beam=beam,
        sampling=(float(s[0]), float(s[1])),
        sim_sampling=float(sim["sampling"]),
        slice_thickness=float(sim["slice_thickness"]),
        parametrization=str(sim["parametrization"]),
    )


def read_beam_file(path) -> BeamFile:
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"beam file {p} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    return parse_beam(d, where=str(p))
