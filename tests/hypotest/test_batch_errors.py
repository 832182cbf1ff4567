"""Bad input to the batch commands (``hypotest score``, ``hypotest library build|export|add``):
refused up front with ``hypotest <command>: error: ...`` and exit 2, never a traceback, a file
full of NaN or anything half-written left behind."""

import json
import re
import shutil

import numpy as np
import pytest

from hypotest.cli import main
from hypotest.hypothesis import load_hypotheses
from hypotest.scoring import MAX_COUNT, check_result_finite
from library.builtin import library_path

CAM = (32, 36)  # camera pixels over the 9.48 x 10.95 Å MoS2 cell


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    cell = np.asarray(load_hypotheses("mos2_defects")[0].specimen.cell)
    beam = {
        "energy": 80e3, "dose": 400, "sampling": [cell[0] / CAM[0], cell[1] / CAM[1]], "semiangle_cutoff": 25,
        "aberrations": {"C30": -1.5e5, "defocus": 97.0}, "detector": {"mode": "hrtem"},
        "simulation": {"sampling": 0.1, "slice_thickness": 1.5},
    }  # fmt: skip
    (d / "beam.json").write_text(json.dumps(beam))
    frames = np.random.default_rng(0).poisson(40.0, size=(3, *CAM)).astype(np.float64)
    np.save(d / "frames.npy", frames)
    return d, beam, frames


def _score(inputs, out, *, frames=None, beam=None):
    d, _, _ = inputs
    return main(["score", "--library", str(library_path("mos2_defects")), "--frames", str(frames or d / "frames.npy"),
                 "--beam", str(beam or d / "beam.json"), "--out", str(out), "--no-progress"])  # fmt: skip


def _error(capsys, command="score") -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"hypotest {command}: error: ") and "Traceback" not in err, err
    return err


def _no_leftovers(directory, *allowed):
    left = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
    assert left == [], left


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if the command gets as far as loading the library (i.e. did work first)."""

    def boom(*a, **k):
        raise AssertionError("the output path must be checked before any work")

    monkeypatch.setattr("hypotest.hypothesis.load_hypotheses", boom)


# --- hypotest score ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e300, -1e300, 1e39, 2 * MAX_COUNT])
def test_score_refuses_values_that_cannot_be_counts(inputs, tmp_path, capsys, value):
    """1e300 passed the finiteness check, overflowed in float32 and wrote RESULT.json full of NaN."""
    _, _, frames = inputs
    bad = frames.copy()
    bad[1, 3, 4] = value
    np.save(tmp_path / "big.npy", bad)
    assert _score(inputs, tmp_path / "r.json", frames=tmp_path / "big.npy") == 2
    err = _error(capsys)
    assert re.search(r"big\.npy: frame 1 pixel \(3, 4\) holds -?[0-9.e+]+, which cannot be a count", err), err
    assert f"at most {MAX_COUNT:g} counts" in err
    _no_leftovers(tmp_path, "big.npy")


def test_score_refuses_an_empty_stack(inputs, tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, *CAM)))
    assert _score(inputs, tmp_path / "r.json", frames=tmp_path / "empty.npy") == 2
    assert re.search(r"empty\.npy: holds no frames \(a stack of shape \[0, 32, 36\]\)", _error(capsys))
    _no_leftovers(tmp_path, "empty.npy")


def test_score_refuses_a_grid_too_large_with_the_sampling_that_fits(inputs, tmp_path, capsys):
    """simulation.sampling 1e-4 Å asked for a 39 GiB grid."""
    d, beam, _ = inputs
    (tmp_path / "fine.json").write_text(json.dumps({**beam, "simulation": {"sampling": 1e-4}}))
    assert _score(inputs, tmp_path / "r.json", beam=tmp_path / "fine.json") == 2
    err = _error(capsys)
    assert "the simulation grid (BEAM.json simulation.sampling, 0.0001 Å)" in err
    assert re.search(r"beyond the limit of 67108864 points .*the finest sampling that fits this cell is 0\.00125\d Å", err)
    _no_leftovers(tmp_path, "fine.json")


@pytest.mark.parametrize(
    ("make_out", "match"),
    [
        (lambda t: t / "existing_dir", r"--out .*existing_dir is a directory; give a file path, e.g. .*result\.json"),
        (lambda t: t / "a_file" / "r.json", r"cannot create --out .*a_file/r\.json: .*a_file is a file, not a directory"),
        (lambda t: t / "a_file" / "sub" / "r.json", r"cannot create --out .*: .*a_file is a file, not a directory"),
        (lambda t: "/proc/x", r"cannot write --out /proc/x: creating a file in /proc failed"),
        (lambda t: "/dev/null", r"--out /dev/null exists and is not a regular file"),
    ],
)
def test_score_checks_the_output_path_before_any_work(inputs, tmp_path, capsys, no_simulation, make_out, match):
    (tmp_path / "existing_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    assert _score(inputs, make_out(tmp_path)) == 2
    assert re.search(match, _error(capsys))
    _no_leftovers(tmp_path, "existing_dir", "a_file")
    assert list((tmp_path / "existing_dir").iterdir()) == []


def test_score_writes_no_nan_a_non_finite_result_is_an_error(inputs, tmp_path, capsys, monkeypatch):
    """A non-finite score names the hypothesis and the frame; RESULT.json is not written."""
    hid = "h2d67980eeed50c08"  # V_S in the built-in library

    class Fake:
        def to_json_dict(self):
            hyp = {"id": hid, "posterior": 1.0, "log_evidence": float("nan"), "laplace_term": 0.0,
                   "log10_bayes_factor": 0.0, "rejected": False, "reason": "",
                   "nuisance": {"scale": [1.0, float("nan"), 1.0], "shift_px": [[0, 0], [0, 0], [0, 0]]}}  # fmt: skip
            return {"schema": "hypotest.score/1", "best": hid, "n_frames": 3, "dose_e_per_A2": 1200.0, "rule": "",
                    "method": "", "hypotheses": [hyp], "proposals": []}  # fmt: skip

    monkeypatch.setattr("hypotest.scoring.run_score", lambda *a, **k: Fake())
    monkeypatch.setattr("hypotest.hypothesis.load_hypotheses", _one_hypothesis(hid))
    out = tmp_path / "r.json"
    assert _score(inputs, out) == 2
    err = _error(capsys)
    assert re.search(r"the score of hypothesis V_S .*\(h2d67980eeed50c08\) is not finite: log_evidence = nan "
                     r"\(frame 1: nuisance scale\[1\] = nan\); nothing was written", err), err  # fmt: skip
    _no_leftovers(tmp_path)


def _one_hypothesis(hid):
    def load(lib):
        return [h for h in load_hypotheses("mos2_defects") if h.id == hid]

    return load


def test_check_result_finite_names_fields_outside_the_hypotheses():
    ok = {"hypotheses": [{"id": "a", "posterior": 1.0, "nuisance": {"scale": [1.0]}}], "proposals": []}
    check_result_finite(ok)
    with pytest.raises(Exception, match=r"the result is not finite: proposals\[0\]\.gain_bits_per_electron = inf"):
        check_result_finite({**ok, "proposals": [{"gain_bits_per_electron": float("inf")}]})
    with pytest.raises(Exception, match=r"hypothesis a is not finite: posterior = nan; nothing"):
        check_result_finite({"hypotheses": [{"id": "a", "posterior": float("nan")}]})


# --- hypotest library -------------------------------------------------------------------------------------------

SPEC = """
[library]
name = "cu_test"

[[family]]
name = "Cu [001]"
host = { builder = "bulk", name = "Cu", crystalstructure = "fcc", a = 3.61, cubic = true }
orientation = { zone_axis = [0, 0, 1], beam_repeats = 1, vacuum = 2.0 }
"""


def test_library_build_does_not_replace_a_library_without_force(tmp_path, capsys):
    (tmp_path / "spec.toml").write_text(SPEC)
    out = tmp_path / "lib.h5"
    shutil.copy(library_path("srtio3_vacancy"), out)
    before = out.read_bytes()
    assert main(["library", "build", str(tmp_path / "spec.toml"), "--out", str(out), "--no-progress"]) == 2
    err = _error(capsys, "library")
    assert re.search(r"--out .*lib\.h5 already exists; pass --force to replace it", err), err
    assert out.read_bytes() == before
    assert main(["library", "build", str(tmp_path / "spec.toml"), "--out", str(out), "--no-progress", "--force"]) == 0
    assert out.read_bytes() != before
    _no_leftovers(tmp_path, "spec.toml", "lib.h5")


@pytest.mark.parametrize(
    ("make_out", "match"),
    [
        (lambda t: t / "existing_dir", r"--out .*existing_dir is a directory"),
        (lambda t: t / "a_file" / "lib.h5", r"cannot create --out .*: .*a_file is a file, not a directory"),
        (lambda t: "/proc/x", r"cannot write --out /proc/x"),
    ],
)
def test_library_build_bad_output_paths(tmp_path, capsys, make_out, match):
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "existing_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    assert main(["library", "build", str(tmp_path / "spec.toml"), "--out", str(make_out(tmp_path)), "--no-progress"]) == 2
    assert re.search(match, _error(capsys, "library"))
    _no_leftovers(tmp_path, "spec.toml", "existing_dir", "a_file")


@pytest.mark.parametrize(
    ("make_out", "match"),
    [
        (lambda t: t / "a_file", r"--out .*a_file exists and is not a directory"),
        (lambda t: t / "a_file" / "x", r"cannot create --out .*: .*a_file is a file, not a directory"),
        (lambda t: "/proc/x", r"cannot write --out /proc/x"),
    ],
)
def test_library_export_bad_output_paths(tmp_path, capsys, make_out, match):
    (tmp_path / "a_file").write_text("x")
    lib = str(library_path("srtio3_vacancy"))
    assert main(["library", "export", lib, "--format", "cif", "--out", str(make_out(tmp_path))]) == 2
    assert re.search(match, _error(capsys, "library"))
    _no_leftovers(tmp_path, "a_file")


def test_library_export_is_all_or_nothing(tmp_path, capsys):
    lib = str(library_path("srtio3_vacancy"))
    assert main(["library", "export", lib, "--format", "cif", "--out", str(tmp_path / "new" / "dir")]) == 0
    written = sorted(p.name for p in (tmp_path / "new" / "dir").iterdir())
    assert written and all(n.endswith(".cif") for n in written)  # no temporary directory left inside
    _no_leftovers(tmp_path, "new")
    # a failure (an unknown family) creates nothing
    assert main(["library", "export", lib, "--format", "cif", "--out", str(tmp_path / "other"), "--family", "nope"]) == 2
    assert "no family 'nope'" in _error(capsys, "library")
    _no_leftovers(tmp_path, "new")
    # into an existing directory: the files join what is there
    assert main(["library", "export", lib, "--format", "extxyz", "--out", str(tmp_path / "new" / "dir")]) == 0
    after = sorted(p.name for p in (tmp_path / "new" / "dir").iterdir())
    assert set(written) < set(after) and all(not n.startswith(".") for n in after)


def test_library_add_to_a_path_under_a_file(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["library", "add", str(tmp_path / "a_file" / "lib.h5"), str(tmp_path / "a_file"), "--family", "f"]) == 2
    assert "a_file is a file, not a directory" in _error(capsys, "library")
