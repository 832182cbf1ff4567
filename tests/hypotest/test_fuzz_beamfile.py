"""Fuzzing BEAM.json parsing (:func:`hypotest.beamfile.parse_beam` and the file loader).

Random JSON (wrong types, NaN/inf, booleans, nested junk, huge numbers, unknown and missing
fields) and random bytes must give either a valid :class:`BeamFile` or an ``InputError`` whose
message starts with the file it concerns, names the field when a field has the wrong type, and
stays short (never an echo of a large input); never another exception type.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forward import InputError
from hypotest.beamfile import BEAM_FIELDS, BeamFile, parse_beam, read_beam_file

VALID = {
    "schema": "hypotest.beam/1", "energy": 80e3, "dose": 40, "sampling": [0.0988, 0.0978], "semiangle_cutoff": 25,
    "aberrations": {"C30": -1.5e5, "defocus": 97}, "tilt": [0, 0], "focal_spread": 20, "angular_spread": 0.1,
    "source_size": 0, "detector": {"mode": "hrtem", "gain": 1, "read_noise": 0, "mtf": [1, 1, 1, 1]},
    "simulation": {"sampling": 0.05, "slice_thickness": 1.0, "parametrization": "lobato"},
}  # fmt: skip
STEM = {**VALID, "detector": {"mode": "stem_annular", "inner": 70, "outer": 200}}
#: Every field a mutation may target: (path, the key named in its error).
PATHS = [(k,) for k in VALID] + [("aberrations", "C30"), ("aberrations", "defocus")] + [
    ("detector", k) for k in ("mode", "gain", "read_noise", "mtf", "inner", "outer", "n_segments", "rotation")
] + [("simulation", k) for k in ("sampling", "slice_thickness", "parametrization")]  # fmt: skip
MAX_MESSAGE = 600  # characters: an error names the field and shows a short excerpt of the value

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["hrtem", "stem_annular", "4dstem", "stem_segmented", "lobato", "kirkland", "hypotest.beam/1", "NaN"]),
)  # fmt: skip
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5),
        st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e3, max_value=1e3), min_size=1, max_size=5),
    ),
    max_leaves=20,
)  # fmt: skip


def _check_result(bf: BeamFile) -> None:
    """A parsed beam is usable: finite, positive geometry; known parametrization."""
    assert isinstance(bf, BeamFile)
    assert len(bf.sampling) == 2 and all(math.isfinite(s) and s > 0 for s in bf.sampling)
    assert math.isfinite(bf.sim_sampling) and bf.sim_sampling > 0
    assert math.isfinite(bf.slice_thickness) and bf.slice_thickness > 0
    assert bf.parametrization in ("lobato", "kirkland")
    for leaf in (bf.beam.energy, bf.beam.dose, bf.beam.semiangle_cutoff, bf.beam.tilt, bf.beam.detector.mtf):
        assert np.all(np.isfinite(np.asarray(leaf)))


def _outcome(d, where="BEAM.json"):
    """Parse ``d``; returns the BeamFile or the InputError's message (any other exception fails)."""
    try:
        bf = parse_beam(d, where=where)
    except InputError as exc:
        msg = str(exc)
        assert msg.startswith(f"{where}: "), msg
        assert len(msg) <= MAX_MESSAGE and "\n" not in msg, msg
        return msg
    _check_result(bf)
    return bf


def _set(d: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(d))
    if len(path) == 1:
        out[path[0]] = value
    else:
        sub = out.setdefault(path[0], {})
        sub[path[1]] = value
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([VALID, STEM]), path=st.sampled_from(PATHS), value=junk)
@example(base=VALID, path=("aberrations",), value={"": 0})  # an unknown aberration's error names the field
def test_a_field_replaced_by_random_json(base, path, value):
    out = _outcome(_set(base, path, value))
    if isinstance(out, str) and not _is_number(value) and path[-1] not in ("mode", "parametrization", "schema"):
        # a value of the wrong JSON type: the error names the field
        assert path[-1] in out, out


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from([VALID, STEM]), drop=st.sets(st.sampled_from(sorted(VALID))),
       extra=st.dictionaries(st.text(min_size=1, max_size=8), junk, max_size=2))  # fmt: skip
def test_missing_and_unknown_fields(base, drop, extra):
    d = {k: v for k, v in base.items() if k not in drop}
    extra = {k: v for k, v in extra.items() if k not in BEAM_FIELDS}
    d.update(extra)
    out = _outcome(d)
    missing = {"energy", "dose", "sampling"} & drop
    if missing or extra:
        assert isinstance(out, str), f"accepted {d}"
    if extra:
        assert "unknown field" in out or any(m in out for m in missing), out
    elif missing:
        assert "missing required field" in out, out


@settings(max_examples=300, deadline=None)
@given(value=junk)
def test_any_json_value_as_the_whole_file(value):
    _outcome(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), junk),
    st.builds(lambda d: json.dumps(d).replace("80000.0", "NaN").encode(), st.just(VALID)),
    st.builds(lambda d: json.dumps(d).replace("80000.0", "1e400").encode(), st.just(VALID)),
    st.builds(lambda n: ("[" * n + "]" * n).encode(), st.integers(min_value=1, max_value=200_000)),
))  # fmt: skip
def test_read_beam_file_on_random_bytes(tmp_path, data):
    p = tmp_path / "beam.json"
    p.write_bytes(data)
    try:
        bf = read_beam_file(p)
    except InputError as exc:
        msg = str(exc)
        assert msg.startswith(str(p)), msg
        assert len(msg) <= MAX_MESSAGE + len(str(p)), msg
        return
    _check_result(bf)


def test_valid_examples_parse():
    assert isinstance(_outcome(VALID), BeamFile) and isinstance(_outcome(STEM), BeamFile)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("schema",), "hypotest.beam/99", r"schema 'hypotest.beam/99' is not supported; supported: \['hypotest.beam/1'\]"),
        (("sampling",), True, r"'sampling' must be a positive number or \[dx, dy\] \[Å/pixel\], got true \(a boolean"),
        (("sampling",), [0.1, True], r"'sampling' must be"),
        (("energy",), True, r"'energy' must be a number \[eV\], got true \(a boolean"),
        (("energy",), "80000", r"'energy' must be a number \[eV\], got '80000' \(a string"),
        (("dose",), float("nan"), r"'dose' must be a finite number \[e-/Å² per frame\], got nan"),
        (("dose",), 10**400, r"'dose' must be a finite number"),
        (("detector", "gain"), False, r"'detector.gain' must be a number"),
        (("detector", "n_segments"), 1.5, r"'detector.n_segments' must be a whole number"),
        (("aberrations", "C30"), True, r"'aberrations.C30' must be a number"),
        (("tilt",), [0, None], r"'tilt' must be \[tx, ty\] \[mrad\]"),
        (("simulation", "sampling"), True, r"'simulation.sampling' must be a positive number"),
        (("simulation", "parametrization"), "peng", r"'simulation.parametrization' must be one of \['kirkland', 'lobato'\]"),
        (("detector",), [1], r"'detector' must be an object"),
    ],
)
def test_precise_errors(path, value, match):
    import re

    out = _outcome(_set(VALID, path, value))
    assert isinstance(out, str) and re.search(match, out), out


def test_nan_literal_in_the_file_is_refused(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(VALID).replace("80000.0", "NaN"))
    with pytest.raises(InputError, match=r"not valid JSON.*NaN"):
        read_beam_file(p)


def test_numpy_values_from_python_callers_still_parse():
    d = {**VALID, "energy": np.float64(80e3), "dose": np.float32(40.0), "sampling": np.array([0.1, 0.1]), "tilt": (0.0, 0.0)}
    assert isinstance(_outcome(d), BeamFile)
