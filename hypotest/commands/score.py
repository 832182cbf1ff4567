"""``hypotest score``: score frames against a library and write RESULT.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score frames against a library; write posteriors, rejections and proposals as JSON",
        description=(
            "Simulate every hypothesis of LIB under the beam of BEAM.json, score FRAMES against them "
            "(shift, scale and background marginalised), and write RESULT.json: every hypothesis with "
            "posterior, log evidence, rejected flag and reason, nuisance values, and the proposed next "
            "beam conditions. The BEAM.json schema is in the README and in hypotest/beamfile.py."
        ),
    )
    p.add_argument("--library", required=True,
                   help="built-in library name, library file (.h5) or a directory/glob of structure files")
    p.add_argument("--frames", required=True,
                   help="frame file (.npy/.npz, MRC, HDF5/EMD, DM3/DM4, TIFF): one frame [nx, ny] or a stack [T, nx, ny]")
    p.add_argument("--beam", required=True, help="BEAM.json (energy eV, dose e-/Å², sampling Å/pixel, ...)")
    p.add_argument("--out", required=True, type=Path, help="RESULT.json to write")
    p.add_argument("--seed", type=int, default=0, help="key of the Monte Carlo in the design step")
    p.add_argument("--scorer", default="laplace", metavar="{laplace,linear,fast}",
                   help="laplace: shift, scale, background marginalised per hypothesis (default); linear: registered "
                        "frames, scale and background; fast: as linear with a binned screen first (large libraries)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hypotest.beamfile import read_beam_file
    from hypotest.frames import read_image_frames
    from hypotest.hypothesis import load_hypotheses
    from hypotest.outputs import check_output_file, write_file_atomic
    from hypotest.scoring import ScoringInput, check_result_finite, proposal_beams, run_score

    check_output_file(args.out, example="result.json")  # before any work: a run must not end in "cannot write"
    bf = read_beam_file(args.beam)
    counts = read_image_frames(args.frames).frames
    hyps = ScoringInput.from_hypotheses(load_hypotheses(args.library))

    def progress(xs):
        return tqdm(xs, desc="simulating hypotheses", unit="hyp", disable=args.no_progress)

    result = run_score(hyps, counts, bf, seed=args.seed, progress=progress, scorer=args.scorer, where=str(args.frames))
    out = result.to_json_dict()
    names = dict(zip(hyps.ids, hyps.names))
    for h in out["hypotheses"]:
        h["name"] = names[h["id"]]
    cands = proposal_beams(bf) if out["proposals"] else []
    for prop in out["proposals"]:
        prop["aberrations"] = cands[prop["index"]]
    out["inputs"] = {"library": str(args.library), "frames": str(args.frames), "beam": str(args.beam)}
    check_result_finite(out, names)  # JSON has no NaN: a non-finite score is an error, never a file
    write_file_atomic(args.out, json.dumps(out, indent=2, allow_nan=False))  # a failed run leaves nothing
    best = out["best"]
    print(
        f"best: {names[best]} ({best}) P = {max(h['posterior'] for h in out['hypotheses']):.4f}; "
        f"rejected {sum(h['rejected'] for h in out['hypotheses'])}/{len(out['hypotheses'])}; "
        f"{out['n_frames']} frames, {out['dose_e_per_A2']:g} e-/Å²; wrote {args.out}"
    )
    return 0
