"""New hypotheses when the library explains nothing: hypotest.generate and ``hypotest score
--optics frame --generate`` on abTEM frames of SrTiO3 with Zr on a Ti site or La on a Sr site (not
in the library), the nominal defocus 10-30 Å off and the crystal one cell thicker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from forward import InputError
from hypotest.cli import main
from hypotest.generate import generate_from_host, generated_priors, parse_elements
from hypotest.hypothesis import make_hypothesis
from tests.inference import _srtio3_optics as so

NAMES = ("pristine", "V_O_col", "V_O_Ti", "V_Sr", "V_Ti")
TI_COLUMN = "(1.95, 1.95)"  # the Ti-O column of the substituted Ti (x, y) [Å]
SR_COLUMN = "(0.00, 0.00)"


def _host():
    return make_hypothesis(so.specimen(0), name="pristine", family="SrTiO3")


def test_parse_elements_and_bad_symbols():
    assert parse_elements("Zr, La@Sr") == [("Zr", None), ("La", "Sr")]
    assert parse_elements(None) == []
    with pytest.raises(InputError, match=r"unknown element 'Xx' in the element list 'Zr,Xx'"):
        parse_elements("Zr,Xx")
    with pytest.raises(InputError, match=r"unknown host element 'Qq'"):
        parse_elements("Zr@Qq")


def test_generated_candidates_carry_provenance_and_skip_the_library():
    host = _host()
    new = generate_from_host(host, parse_elements("Zr@Ti"), ("substitution",), origin="a test")
    assert [h.name.split(" @ ")[0] for h in new] == ["Zr_Ti"] * 3  # one per depth of the Ti column
    assert all(TI_COLUMN in h.name for h in new)
    notes = dict(new[0].provenance.notes)
    assert "by a test from host 'pristine'" in notes["generated"] and "substitution" in notes["generated"]
    again = generate_from_host(host, parse_elements("Zr@Ti"), ("substitution",), existing_ids=[new[0].id])
    assert [h.id for h in again] == [h.id for h in new[1:]]
    with pytest.raises(InputError, match="holds no Zr"):
        generate_from_host(host, parse_elements("La@Zr"), ("substitution",))
    with pytest.raises(InputError, match="need elements"):
        generate_from_host(host, [], ("substitution",))
    with pytest.raises(InputError, match="unknown generator kind"):
        generate_from_host(host, parse_elements("Zr"), ("mutation",))
    p = generated_priors(np.ones(5), 3, 0.01)
    assert p.sum() == pytest.approx(1.0) and p[5:] == pytest.approx([0.01 / 3] * 3)
    with pytest.raises(InputError, match="prior mass"):
        generated_priors(np.ones(5), 3, 1.5)


@pytest.fixture(scope="module")
def srtio3_case(tmp_path_factory):
    """A structure-file library of the 5 SrTiO3 structures, one abTEM frame of Zr_Ti at 1e6 e-/Å²
    with the defocus 20 Å off, and its BEAM.json (the nominal optics)."""
    d = tmp_path_factory.mktemp("gen")
    data = so.data()
    (d / "lib").mkdir()
    for k, name in enumerate(NAMES):
        write(d / "lib" / f"{name}.extxyz", Atoms(numbers=data[f"numbers_{k}"], positions=data[f"positions_{k}"],
                                                  cell=data["cell"], pbc=True))  # fmt: skip
    dose = 1e6
    np.save(d / "frames.npy", so.frames(1, 5, dose, 1, seed=4))
    beam = {"energy": float(data["energy"]), "dose": dose, "sampling": so.pixel(), "semiangle_cutoff": float(data["semiangle"]),
            "focal_spread": float(data["focal_spread"]), "angular_spread": float(data["angular_spread"]),
            "aberrations": {"C30": float(data["c30"]), "defocus": float(data["nominal_defocus"])},
            "detector": {"mode": "hrtem"}, "simulation": {"sampling": 0.05, "slice_thickness": 1.0}}  # fmt: skip
    (d / "beam.json").write_text(json.dumps(beam))
    return d


def _args(d, *extra):
    return ["score", "--library", str(d / "lib"), "--frames", str(d / "frames.npy"), "--beam", str(d / "beam.json"),
            "--no-progress", *extra]  # fmt: skip


def test_score_generate_finds_the_substitution(srtio3_case, capsys):
    d = srtio3_case
    # the nominal optics and the library alone: unexplained, no decision
    assert main(_args(d, "--out", str(d / "plain.json"))) == 0
    plain = json.loads((d / "plain.json").read_text())
    assert plain["unexplained"] and plain["decision"] is None and plain["fit_check"]["all_frames"]["p_value"] < 0.01
    assert "UNEXPLAINED" in capsys.readouterr().out
    rc = main(_args(d, "--out", str(d / "gen.json"), "--optics", "frame", "--extra-cells", "0,1,2", "--generate",
                    "--elements", "Zr@Ti,La@Sr", "--generate-kinds", "substitution",
                    "--generated-library", str(d / "new.h5")))  # fmt: skip
    assert rc == 0
    r = json.loads((d / "gen.json").read_text())
    o = r["optics"]
    truth = float(so.data()["nominal_defocus"] + so.data()["delta"][1])
    assert abs(o["defocus_A"] - truth) < 1.0 and o["extra_cells"] == 1 and "set defocus to" in o["correction"]
    g = r["generated"]
    assert g["triggered"] and len(g["candidates"]) == 6 and len(g["accepted"]) == 1
    won = next(c for c in g["candidates"] if c["id"] == g["accepted"][0])
    assert won["name"].startswith("Zr_Ti") and TI_COLUMN in won["name"] and "substitution" in won["provenance"]
    assert r["decision"] == won["id"] and not r["unexplained"]
    ref = won["refined"]  # the substituent's position refined through the multislice: at its ideal site
    assert abs(ref["dx_A"]) < 0.02 and abs(ref["dy_A"]) < 0.02 and 0 < ref["sd_A"][0] < 0.02
    out = capsys.readouterr().out
    assert "optics: defocus" in out and "explains the frames" in out and "refined Zr_Ti" in out
    from hypotest.hypothesis import load_hypotheses

    lib = load_hypotheses(d / "new.h5")
    assert [h.id for h in lib] == g["accepted"] and "generated" in dict(lib[0].provenance.notes)


def _refused(capsys, args, match):
    import re

    assert main(args) != 0
    err = capsys.readouterr().err
    assert re.search(match, err), err


def test_score_optics_bad_input_is_a_precise_error(srtio3_case, tmp_path, capsys):
    d = srtio3_case
    out = ["--out", str(tmp_path / "r.json")]
    _refused(capsys, _args(d, *out, "--optics", "frame", "--defocus-range", "0"), "range of zero width")
    _refused(capsys, _args(d, *out, "--optics", "frame", "--extra-cells", "one"), "whole numbers separated by commas")
    _refused(capsys, _args(d, *out, "--optics", "frame", "--extra-cells=-1,0"), "cannot be less than the hypotheses' own cell")
    _refused(capsys, _args(d, *out, "--generate", "--elements", "Xx"), "unknown element 'Xx'")
    assert not (tmp_path / "r.json").exists()


def test_thickness_choices_need_a_crystal_along_the_beam(tmp_path, capsys):
    """The MoS2 monolayer has no unit cell to add: --extra-cells 1 is refused, naming the hypothesis."""
    import jax

    from forward import make_grid
    from forward.hrtem import make_hrtem_simulator
    from forward.noise import expected_electrons, pixel_area, sample_frame
    from hypotest.beamfile import parse_beam
    from hypotest.hypothesis import load_hypotheses

    hyps = load_hypotheses("mos2_defects")
    cell = np.asarray(hyps[0].specimen.cell)
    beam = {"energy": 80e3, "dose": 400, "sampling": [cell[0] / 32, cell[1] / 36], "semiangle_cutoff": 25,
            "aberrations": {"C30": -1.5e5, "defocus": 97.0}, "focal_spread": 20, "angular_spread": 0.1,
            "detector": {"mode": "hrtem"}, "simulation": {"sampling": 0.1, "slice_thickness": 1.5}}  # fmt: skip
    (tmp_path / "beam.json").write_text(json.dumps(beam))
    bf = parse_beam(beam)
    sim = make_hrtem_simulator(make_grid(extent=cell[:2], sampling=0.1), float(cell[2]), 1.5, camera_gpts=(32, 36))
    lam = expected_electrons(sim.simulate(hyps[1].specimen, bf.beam), bf.beam.dose, pixel_area(bf.sampling))
    np.save(tmp_path / "f.npy", np.asarray(sample_frame(jax.random.key(0), lam, bf.beam.detector))[None])
    args = ["score", "--library", "mos2_defects", "--frames", str(tmp_path / "f.npy"), "--beam", str(tmp_path / "beam.json"),
            "--out", str(tmp_path / "r.json"), "--no-progress", "--optics", "frame"]  # fmt: skip
    _refused(capsys, [*args, "--extra-cells", "0,1"], r"thickness \+1 unit cell\(s\): the thickness cannot vary by whole unit cells")
    assert main(args) == 0  # the monolayer: defocus and astigmatism only
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["best"] == hyps[1].id and abs(r["optics"]["defocus_A"] - 97.0) < 5 and r["optics"]["extra_cells"] == 0


@pytest.mark.slow
def test_generation_finds_the_right_element_and_column():
    """12 abTEM frames (Zr_Ti and La_Sr x 6 defocus errors) at 1e6 e-/Å²: the library alone is
    unexplained; with the generated substitutions the right element in the right column wins in
    >= 80% and explains the frame."""
    from inference import make_optics_prior, score_frames_optics

    host = _host()
    new = generate_from_host(host, parse_elements("Zr,La"), ("substitution",), existing_ids=())
    lib_waves, image_fn = so.model()
    import jax.numpy as jnp  # noqa: F401

    gen_waves = _waves([h.specimen for h in new])
    waves = np.concatenate([lib_waves, gen_waves])
    names = list(NAMES) + [h.name for h in new]
    prior = make_optics_prior(float(so.data()["nominal_defocus"]), extra_cells=so.CELLS)
    pri = generated_priors(np.ones(so.LIBRARY), len(new))
    right = n = 0
    for j in range(6):
        for truth, el, col in ((5, "Zr_Ti", TI_COLUMN), (6, "La_Sr", SR_COLUMN)):
            y = so.frames(j, truth, 1e6, 1, seed=5)
            res, _ = score_frames_optics(y, waves, image_fn, pri, so.beam(1e6), (so.pixel(),) * 2, prior)
            b = names[int(np.argmax(res.posterior))]
            right += b.startswith(el) and col in b and not res.unexplained
            n += 1
    print(f"generated hypothesis right (element and column) and explaining: {right}/{n}")
    assert right / n >= 0.8


def _waves(specimens):
    from forward import add_exit_layers, make_grid, make_hrtem_simulator

    d = so.data()
    grid = make_grid(extent=tuple(d["cell"][:2]), sampling=0.05)
    sims, out = {}, []
    for s0 in specimens:
        row = []
        for k in so.CELLS:
            s = add_exit_layers(s0, k)
            tz = float(np.asarray(s.cell)[2])
            sims.setdefault(tz, make_hrtem_simulator(grid, tz, 1.0, camera_gpts=(80, 80)))
            row.append(np.asarray(sims[tz].exit_wave(s, so.beam(1.0))))
        out.append(row)
    return np.asarray(out)
