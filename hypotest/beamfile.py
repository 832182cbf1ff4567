"""BEAM.json: a beam condition and the frame geometry, in DESIGN units, for ``hypotest score``.

Schema (``hypotest.beam/1``, the only one supported; ``"schema"`` may be left out; unknown fields
are errors, never ignored; every number is a JSON number: booleans, strings, null, NaN and
infinities are refused with the field named)::

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
import math
import numbers
from pathlib import Path

import numpy as np

from forward import BeamCondition, InputError, make_aberrations, make_beam, make_detector
from forward.beam import DETECTOR_MODES
from forward.parametrizations import PARAMETRIZATIONS

__all__ = ["BeamFile", "read_beam_file", "parse_beam", "BEAM_FIELDS", "BEAM_SCHEMAS", "MAX_BEAM_FILE_BYTES"]

BEAM_FIELDS = {
    "energy": "eV", "dose": "e-/Å² per frame", "sampling": "Å/pixel", "semiangle_cutoff": "mrad",
    "aberrations": "Å, rad", "tilt": "mrad", "focal_spread": "Å", "angular_spread": "mrad",
    "source_size": "Å", "detector": "", "simulation": "", "schema": "",
}  # fmt: skip
#: The BEAM.json schemas this version reads.
BEAM_SCHEMAS = ("hypotest.beam/1",)
REQUIRED = ("energy", "dose", "sampling")
#: Detector fields and their units; ``mode`` is a string, ``n_segments`` a whole number, ``mtf`` [a, b, c, d].
DETECTOR_FIELDS = {
    "mode": "", "inner": "mrad", "outer": "mrad", "gain": "counts/e-", "read_noise": "counts", "mtf": "",
    "n_segments": "", "rotation": "rad",
}  # fmt: skip
SIMULATION_FIELDS = {"sampling": 0.05, "slice_thickness": 1.0, "parametrization": "lobato"}
#: A BEAM.json is a few hundred bytes; a larger file is not one (and is not read whole).
MAX_BEAM_FILE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class BeamFile:
    """What BEAM.json describes: the beam, the frame sampling and the simulation settings."""

    beam: BeamCondition
    sampling: tuple[float, float]  # [Å/pixel]
    sim_sampling: float  # [Å]
    slice_thickness: float  # [Å]
    parametrization: str


def _kind(v) -> str:
    """The JSON type of ``v`` as a user reads it ("a boolean", "a string", ...)."""
    if isinstance(v, (bool, np.bool_)):
        return "a boolean"
    if v is None:
        return "null"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "a list"
    if isinstance(v, numbers.Number):
        return "a number"
    return type(v).__name__


def _show(v) -> str:
    """A short excerpt of ``v`` in JSON notation, for error messages (never a whole large input)."""
    try:
        s = json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o))
    except (TypeError, ValueError, RecursionError, OverflowError):
        s = repr(type(v).__name__)
    if isinstance(v, str):
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _got(v) -> str:
    return f"got {_show(v)} ({_kind(v)})"


def _is_real(v) -> bool:
    """A JSON number (or a numpy scalar from a Python caller); booleans are not numbers."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and v.dtype.kind in "iuf"
    return isinstance(v, numbers.Real)


def _number(v, name: str, unit: str) -> float:
    """``v`` as a finite float; anything else is an error naming the field ``name``."""
    if not _is_real(v):
        raise InputError(f"{name!r} must be a number [{unit}], {_got(v)}")
    try:
        x = float(v)
    except OverflowError:  # an integer beyond float range
        x = math.inf
    if not math.isfinite(x):
        raise InputError(f"{name!r} must be a finite number [{unit}], got {x}")
    return x


def _numbers(v, name: str, unit: str, n: int, shape: str) -> list[float]:
    """A list of ``n`` finite numbers (``shape`` describes it in messages, e.g. "[tx, ty]")."""
    if isinstance(v, np.ndarray):
        v = v.tolist() if v.ndim == 1 else v
    if not (isinstance(v, (list, tuple)) and len(v) == n and all(_is_real(x) for x in v)):
        raise InputError(f"{name!r} must be {shape} [{unit}] ({n} numbers), {_got(v)}")
    return [_number(x, name, unit) for x in v]


def _positive(v, name: str, unit: str) -> float:
    if not _is_real(v):
        raise InputError(f"{name!r} must be a positive number [{unit}], {_got(v)}")
    x = _number(v, name, unit)
    if x <= 0:
        raise InputError(f"{name!r} must be a positive number [{unit}], got {x:g}")
    return x


def _object(v, name: str, example: str) -> dict:
    if not isinstance(v, dict):
        raise InputError(f"{name!r} must be an object like {example}, {_got(v)}")
    bad = [k for k in v if not isinstance(k, str)]
    if bad:
        raise InputError(f"{name!r}: field names must be strings, got {_show(bad[0])}")
    return v


def _unknown(d: dict, allowed, where: str) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        shown = [_show(k) for k in extra[:5]] + (["..."] if len(extra) > 5 else [])
        raise InputError(f"{where}unknown field(s) [{', '.join(shown)}]; allowed: {sorted(allowed)}")


def _detector(det) -> dict:
    det = _object(det, "detector", '{"mode": "hrtem"}')
    _unknown(det, DETECTOR_FIELDS, "detector: ")
    out: dict = {}
    for k, v in det.items():
        name = f"detector.{k}"
        if k == "mode":
            if not isinstance(v, str):
                raise InputError(f"{name!r} must be a string, one of {list(DETECTOR_MODES)}, {_got(v)}")
            out[k] = v
        elif k == "mtf":
            out[k] = _numbers(v, name, "a, b, c, d", 4, "[a, b, c, d]")
        elif k == "n_segments":
            x = _number(v, name, "segments")
            if x != int(x):
                raise InputError(f"{name!r} must be a whole number of segments, got {x:g}")
            out[k] = int(x)
        else:
            out[k] = _number(v, name, DETECTOR_FIELDS[k])
    return out


def _aberrations(ab) -> dict:
    ab = _object(ab, "aberrations", '{"C30": -1.5e5, "defocus": 97}')
    return {k: _number(v, f"aberrations.{k}", "rad" if k.startswith("phi") else "Å") for k, v in ab.items()}


def _parse(d) -> BeamFile:
    if not isinstance(d, dict):
        raise InputError(f"expected a JSON object, {_got(d)}")
    _object(d, "BEAM.json", '{"energy": 80000, ...}')
    _unknown(d, BEAM_FIELDS, "")
    if "schema" in d and d["schema"] not in BEAM_SCHEMAS:
        raise InputError(f"schema {_show(d['schema'])} is not supported; supported: {list(BEAM_SCHEMAS)} (or leave it out)")
    for k in REQUIRED:
        if k not in d:
            raise InputError(f"missing required field {k!r} [{BEAM_FIELDS[k]}]")
    sim = _object(d.get("simulation", {}), "simulation", '{"sampling": 0.05}')
    _unknown(sim, SIMULATION_FIELDS, "simulation: ")
    sim = {**SIMULATION_FIELDS, **sim}
    sim_sampling = _positive(sim["sampling"], "simulation.sampling", "Å")
    slice_thickness = _positive(sim["slice_thickness"], "simulation.slice_thickness", "Å")
    par = sim["parametrization"]
    if not (isinstance(par, str) and par in PARAMETRIZATIONS):
        raise InputError(f"'simulation.parametrization' must be one of {sorted(PARAMETRIZATIONS)}, {_got(par)}")
    s = d["sampling"]
    if _is_real(s):
        s = [_positive(s, "sampling", "Å/pixel")] * 2
    else:
        if isinstance(s, np.ndarray):
            s = s.tolist() if s.ndim == 1 else s
        if not (isinstance(s, (list, tuple)) and len(s) == 2 and all(_is_real(v) for v in s)):
            raise InputError(f"'sampling' must be a positive number or [dx, dy] [Å/pixel], {_got(s)}")
        s = [_positive(v, "sampling", "Å/pixel") for v in s]
    kw = {k: _number(d[k], k, BEAM_FIELDS[k])
          for k in ("energy", "dose", "semiangle_cutoff", "focal_spread", "angular_spread", "source_size") if k in d}  # fmt: skip
    if "tilt" in d:
        kw["tilt"] = _numbers(d["tilt"], "tilt", "mrad", 2, "[tx, ty]")
    aberrations = _aberrations(d["aberrations"]) if "aberrations" in d else None
    if aberrations is not None:
        try:
            aberrations = make_aberrations(aberrations)
        except InputError as exc:
            raise InputError(f"aberrations: {exc}") from None
    detector = make_detector(**_detector(d.get("detector", {"mode": "hrtem"})))
    beam = make_beam(
        kw["energy"],
        semiangle_cutoff=kw.get("semiangle_cutoff", 0.0),
        aberrations=aberrations,
        tilt=kw.get("tilt", (0.0, 0.0)),
        focal_spread=kw.get("focal_spread", 0.0),
        angular_spread=kw.get("angular_spread", 0.0),
        source_size=kw.get("source_size", 0.0),
        dose=kw["dose"],
        detector=detector,
    )
    return BeamFile(
        beam=beam, sampling=(float(s[0]), float(s[1])), sim_sampling=sim_sampling, slice_thickness=slice_thickness,
        parametrization=par,
    )  # fmt: skip


def parse_beam(d: dict, where: str = "BEAM.json") -> BeamFile:
    """A :class:`BeamFile` from the parsed JSON object ``d``.

    Every problem is an :class:`InputError` that starts with ``where`` and names the field
    (dotted for nested ones: ``detector.gain``); a value of the wrong JSON type (a boolean, a
    string or null where a number belongs, a list for a number, ...) never reaches the physics.
    """
    try:
        return _parse(d)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def read_beam_file(path) -> BeamFile:
    """Read and parse BEAM.json. JSON's own grammar applies: ``NaN``/``Infinity`` are refused."""
    p = Path(path)

    def _no_constant(name):
        raise ValueError(f"{name} is not JSON; give a finite number")

    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BEAM_FILE_BYTES + 1)
        if len(data) > MAX_BEAM_FILE_BYTES:
            raise InputError(f"{p}: larger than {MAX_BEAM_FILE_BYTES} bytes: not a BEAM.json (a few hundred bytes)")
        d = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"beam file {p} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory; give the BEAM.json file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the beam file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise InputError(f"{p}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError, as is _no_constant's
        raise InputError(f"{p}: not valid JSON ({str(exc)[:200]})") from None
    return parse_beam(d, where=str(p))
