"""``hypotest score``: library + frames + BEAM.json -> RESULT.json, end to end, and its bad input."""

import json
import re

import jax
import numpy as np
import pytest
from ase.io import write

from forward import InputError, make_grid
from forward.hrtem import make_hrtem_simulator
from forward.noise import expected_electrons, pixel_area, sample_frame
from hypotest.beamfile import parse_beam
from hypotest.cli import main
from hypotest.hypothesis import load_hypotheses
from library import builtin
from library.export import entry_to_atoms

CAM = (32, 36)  # camera pixels over the 9.48 x 10.95 Å MoS2 cell (~0.3 Å/pixel)
TRUE = 2  # the hidden structure: index in the built-in MoS2 library


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    hyps = load_hypotheses("mos2_defects")
    cell = np.asarray(hyps[0].specimen.cell)
    beam = {
        "energy": 80e3, "dose": 400, "sampling": [cell[0] / CAM[0], cell[1] / CAM[1]],
        "semiangle_cutoff": 25, "aberrations": {"C30": -1.5e5, "defocus": 97.0},
        "focal_spread": 20, "angular_spread": 0.1, "detector": {"mode": "hrtem"},
        "simulation": {"sampling": 0.1, "slice_thickness": 1.5},
    }  # fmt: skip
    (d / "beam.json").write_text(json.dumps(beam))
    bf = parse_beam(beam)
    sim = make_hrtem_simulator(make_grid(extent=cell[:2], sampling=0.1), float(cell[2]), 1.5, camera_gpts=CAM)
    lam = expected_electrons(sim.simulate(hyps[TRUE].specimen, bf.beam), bf.beam.dose, pixel_area(bf.sampling))
    frames = [np.asarray(sample_frame(jax.random.fold_in(jax.random.key(7), t), lam, bf.beam.detector)) for t in range(3)]
    np.save(d / "frames.npy", np.stack(frames))
    return d, hyps, beam


def test_score_library_file_identifies_hidden_structure(case, capsys):
    d, hyps, _ = case
    lib = builtin.library_path("mos2_defects")
    rc = main(["score", "--library", str(lib), "--frames", str(d / "frames.npy"), "--beam", str(d / "beam.json"),
               "--out", str(d / "result.json"), "--no-progress"])  # fmt: skip
    assert rc == 0
    r = json.loads((d / "result.json").read_text())
    assert r["schema"] == "hypotest.score/1" and r["n_frames"] == 3 and r["dose_e_per_A2"] == 1200
    assert r["best"] == hyps[TRUE].id
    post = {h["id"]: h for h in r["hypotheses"]}
    assert post[hyps[TRUE].id]["posterior"] > 0.99 and not post[hyps[TRUE].id]["rejected"]
    rejected = [h for h in r["hypotheses"] if h["rejected"]]
    assert rejected and all("Bayes factor" in h["reason"] and "frames" in h["reason"] for h in rejected)
    assert {"scale", "background", "shift_px"} <= set(r["hypotheses"][0]["nuisance"])
    assert len(r["proposals"]) == 6 and all("defocus" in p["aberrations"] for p in r["proposals"])
    gains = [p["gain_bits_per_electron"] for p in r["proposals"]]
    assert gains == sorted(gains, reverse=True)
    assert "best:" in capsys.readouterr().out


def test_score_directory_of_structure_files_uses_file_stems(case, tmp_path):
    d, hyps, _ = case
    entries = builtin.load("mos2_defects")[:3]
    for name, e in zip(("pristine", "v_mo", "v_s"), entries):  # the library's first three
        write(tmp_path / f"{name}.extxyz", entry_to_atoms(e))
    out = tmp_path / "r.json"
    rc = main(["score", "--library", str(tmp_path / "*.extxyz"), "--frames", str(d / "frames.npy"),
               "--beam", str(d / "beam.json"), "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert [h["id"] for h in r["hypotheses"]] == ["pristine", "v_mo", "v_s"]
    assert entries[TRUE].name.startswith("V_S ") and r["best"] == "v_s"  # the hidden truth


def _run(case, tmp_path, **change):
    d, _, beam = case
    args = {"library": str(builtin.library_path("mos2_defects")), "frames": str(d / "frames.npy"), "beam": None}
    b = dict(beam)
    for k, v in change.pop("beam_change", {}).items():
        if v is None:
            b.pop(k, None)
        else:
            b[k] = v
    (tmp_path / "beam.json").write_text(json.dumps(b))
    args["beam"] = str(tmp_path / "beam.json")
    args.update(change)
    return main(["score", "--library", args["library"], "--frames", args["frames"], "--beam", args["beam"],
                 "--out", str(tmp_path / "out.json"), "--no-progress"])  # fmt: skip


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"beam_change": {"dose": None}}, r"missing required field 'dose' \[e-/Å² per frame\]"),
        ({"beam_change": {"energy": 80}}, r"did you give kV\? 80 kV is 80000 eV"),
        ({"beam_change": {"semiangle_cutoff": -3}}, r"semiangle_cutoff must be in \[0, 300\] mrad"),
        ({"beam_change": {"defocus": 50}}, r"unknown field\(s\) \['defocus'\]"),
        ({"beam_change": {"aberrations": {"Cs": 1e5, "C30": 1e5}}}, "given twice"),
        ({"beam_change": {"sampling": 0.25}}, r"span 8 x 9 Å, but the hypotheses' cell is 9.48 x 10.95 Å"),
        # larger than the cell: a field of view, whose lattice is not there at that pixel size
        # overfocus against the negative Cs (Scherzer-like): the CTF delocalisation stays small; at the
        # case's +97 Å underfocus it is 4.8 Å and the window plus halo is refused first
        ({"beam_change": {"sampling": 0.5, "aberrations": {"C30": -1.5e5, "defocus": -97.0}}},
         r"no host lattice found: expected spacings 3\.16, 3\.16 Å"),
        ({"beam_change": {"detector": {"mode": "haadf"}}}, "unknown detector mode 'haadf'"),
        ({"beam_change": {"detector": {"mode": "4dstem", "outer": 40}, "semiangle_cutoff": 25}},
         r"handles detector modes 'hrtem' and 'stem_annular', got '4dstem': 4D-STEM frames are scored by `hypotest live"),
        ({"frames": "/nonexistent/frames.npy"}, r"/nonexistent/frames.npy: no such file; give the path of an existing frame file"),
    ],
)
def test_score_bad_input(case, tmp_path, capsys, change, match):
    assert _run(case, tmp_path, **change) == 2
    err = capsys.readouterr().err
    assert "hypotest score: error:" in err
    assert re.search(match, err), err
    assert not (tmp_path / "out.json").exists()  # nothing half-written


def test_score_bad_frames_and_libraries(case, tmp_path, capsys):
    d, _, _ = case
    bad = np.load(d / "frames.npy")
    bad[0, 3, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert _run(case, tmp_path, frames=str(tmp_path / "nan.npy")) == 2
    err = capsys.readouterr().err
    assert "nan" in err.lower()
    assert "nan.npy: frame 0 of 3 holds nan at pixel (3, 4)" in err  # the file and the frame, named
    np.save(tmp_path / "wrong.npy", np.ones((2, 10, 10)))
    assert _run(case, tmp_path, frames=str(tmp_path / "wrong.npy")) == 2
    assert "frame must span exactly the cell" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run(case, tmp_path, library=str(tmp_path / "empty")) == 2
    assert "no structure files found" in capsys.readouterr().err
    with pytest.raises(InputError, match="expected a JSON object"):
        parse_beam([1, 2])


@pytest.mark.slow
def test_score_adf_stem_frames_with_the_fast_scorer(tmp_path):
    """Annular dark-field STEM frames of W_Mo: Z-contrast tells the W substituent from the
    pristine lattice in three frames (HRTEM at this dose cannot), scored by the fast scorer."""
    hyps = load_hypotheses("mos2_defects")
    true = next(i for i, h in enumerate(hyps) if h.name.startswith("W_Mo"))
    cell = np.asarray(hyps[0].specimen.cell)
    beam = {
        "energy": 80e3, "dose": 500, "sampling": [cell[0] / CAM[0], cell[1] / CAM[1]], "semiangle_cutoff": 25,
        "aberrations": {}, "detector": {"mode": "stem_annular", "inner": 40, "outer": 200},
        "simulation": {"sampling": 0.06, "slice_thickness": 1.5},
    }  # fmt: skip
    (tmp_path / "beam.json").write_text(json.dumps(beam))
    bf = parse_beam(beam)
    from forward.stem import make_scan, make_stem_simulator

    grid = make_grid(extent=cell[:2], sampling=0.06)
    sim = make_stem_simulator(grid, float(cell[2]), 1.5, make_scan(start=(0.0, 0.0), end=tuple(cell[:2]), gpts=CAM))
    lam = expected_electrons(sim(hyps[true].specimen, bf.beam), bf.beam.dose, pixel_area(bf.sampling))
    frames = [np.asarray(sample_frame(jax.random.fold_in(jax.random.key(3), t), lam, bf.beam.detector)) for t in range(3)]
    np.save(tmp_path / "frames.npy", np.stack(frames))
    rc = main(["score", "--library", str(builtin.library_path("mos2_defects")), "--frames", str(tmp_path / "frames.npy"),
               "--beam", str(tmp_path / "beam.json"), "--out", str(tmp_path / "r.json"), "--scorer", "fast",
               "--no-progress"])  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["best"] == hyps[true].id
    assert max(h["posterior"] for h in r["hypotheses"]) > 0.99
    assert "screen" in r["method"]
    pristine = next(h for h in r["hypotheses"] if h["id"] == hyps[0].id)
    assert pristine["rejected"] and "Bayes factor" in pristine["reason"]


@pytest.fixture(scope="module")
def three(case, tmp_path_factory):
    """The library's first three hypotheses as structure files, and RESULT.json of the npy frames."""
    d, _, _ = case
    lib = tmp_path_factory.mktemp("three") / "structures"
    lib.mkdir()
    for name, e in zip(("pristine", "v_mo", "v_s"), builtin.load("mos2_defects")[:3]):
        write(lib / f"{name}.extxyz", entry_to_atoms(e))
    out = lib.parent / "npy.json"
    assert main(["score", "--library", str(lib), "--frames", str(d / "frames.npy"), "--beam", str(d / "beam.json"),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    return lib, json.loads(out.read_text())


def _write_frames(fmt: str, frames: np.ndarray, path_base):
    if fmt == "mrc":
        import mrcfile

        path = path_base.with_suffix(".mrc")
        with mrcfile.new(path, data=frames.astype(np.float32)) as mrc:
            mrc.voxel_size = 0.3
    elif fmt == "emd":
        import h5py

        path = path_base.with_suffix(".emd")
        with h5py.File(path, "w") as h5:
            g = h5.create_group("data/frames")
            g.attrs["emd_group_type"] = 1
            g["data"] = frames
    else:
        import tifffile

        path = path_base.with_suffix(".tif")
        tifffile.imwrite(path, frames.astype(np.float32), photometric="minisblack")
    return path


@pytest.mark.parametrize("fmt", ["mrc", "emd", "tiff"])
def test_score_reads_mrc_emd_and_tiff_as_the_npy(case, three, tmp_path, fmt):
    """`hypotest score` reads every format `hypotest live` reads (hypotest.frames): the same frames
    as MRC, HDF5/EMD or TIFF give the RESULT.json of the .npy."""
    d, _, _ = case
    lib, want = three
    frames = np.load(d / "frames.npy")
    path = _write_frames(fmt, frames, tmp_path / "frames")
    out = tmp_path / "r.json"
    assert main(["score", "--library", str(lib), "--frames", str(path), "--beam", str(d / "beam.json"),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    got = json.loads(out.read_text())
    assert got["inputs"]["frames"] == str(path)
    got["inputs"]["frames"] = want["inputs"]["frames"]
    assert got == want


def test_score_refuses_a_dangling_symlink_and_names_the_bad_frame(case, three, tmp_path, capsys):
    d, _, beam = case
    lib, _ = three
    linked = tmp_path / "lib"
    linked.mkdir()
    for f in lib.glob("*.extxyz"):
        (linked / f.name).symlink_to(f)
    (linked / "w_mo.extxyz").symlink_to(tmp_path / "moved" / "w_mo.extxyz")
    args = ["--frames", str(d / "frames.npy"), "--beam", str(d / "beam.json"), "--out", str(tmp_path / "r.json"), "--no-progress"]
    assert main(["score", "--library", str(linked), *args]) == 2
    err = capsys.readouterr().err
    assert re.search(r"hypotest score: error: .*w_mo\.extxyz: a symbolic link to .*moved/w_mo\.extxyz, which does not "
                     r"exist; fix the link or remove it", err), err
    np.savetxt(tmp_path / "text.npy", np.load(d / "frames.npy")[0])
    assert _run(case, tmp_path, frames=str(tmp_path / "text.npy")) == 2
    err = capsys.readouterr().err
    assert "text.npy: cannot read as .npy (it holds text" in err and "allow_pickle" not in err
    assert not (tmp_path / "r.json").exists()


def test_learning_the_detector_needs_a_field_of_view(case, tmp_path, capsys):
    """(The optics of one-cell HRTEM frames are learned: tests/hypotest/test_generate.py.)"""
    d, _, _ = case
    rc = main(["score", "--library", str(builtin.library_path("mos2_defects")), "--frames", str(d / "frames.npy"),
               "--beam", str(d / "beam.json"), "--out", str(tmp_path / "out.json"), "--no-progress", "--detector", "frame"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(r"--detector frame is learned from a field of view's lattice; .*frames\.npy spans one cell", err), err
    assert not (tmp_path / "out.json").exists()


def test_grow_sites_is_for_fields_of_view(case, tmp_path, capsys):
    d, _, beam = case
    (tmp_path / "beam.json").write_text(json.dumps(beam))
    assert main(["score", "--library", str(builtin.library_path("mos2_defects")), "--frames", str(d / "frames.npy"),
                 "--beam", str(tmp_path / "beam.json"), "--out", str(tmp_path / "out.json"), "--grow-sites",
                 "--no-progress"]) == 2  # fmt: skip
    assert re.search(r"--grow-sites adds the sites a drifting field of view brings into view; .* spans one cell",
                     capsys.readouterr().err)  # fmt: skip
    assert not (tmp_path / "out.json").exists()
