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
    p.add_argument("--host", default=None, metavar="ID",
                   help="field of view: the host hypothesis (default: the one the others differ from by fewest atoms)")
    p.add_argument("--defect-prior", type=float, default=None, metavar="P",
                   help="field of view: prior probability that a site is not the host (default 0.02)")
    p.add_argument("--site-map", type=Path, default=None, metavar="PNG",
                   help="field of view: the site map picture (default: RESULT.json's name with _sites.png)")
    p.add_argument("--detector", choices=("beam", "frame"), default="beam",
                   help="field of view: beam = the frames are electron counts under BEAM.json's detector (default); "
                        "frame = the frames are in the detector's own units (a DigiScan's, say): gain, dark level, "
                        "read noise and scan position noise are estimated from the first frame's lattice")
    p.add_argument("--optics", choices=("beam", "frame"), default="beam",
                   help="field of view, ADF-STEM: beam = BEAM.json's optics as given (default); frame = the detector's "
                        "inner angle and the effective source size learned from the host lattice of the first frame")
    p.add_argument("--site-shards", type=int, default=None, metavar="N",
                   help="field of view: split the sites over N Ray actors (a local Ray, or the cluster at --address)")
    p.add_argument("--address", default=None, help="with --site-shards: a running Ray cluster (HOST:PORT or auto; default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hypotest.beamfile import read_beam_file
    from hypotest.frames import read_image_frames
    from hypotest.hypothesis import load_hypotheses
    from hypotest.outputs import check_output_file, write_file_atomic
    from hypotest.scoring import ScoringInput, check_result_finite, proposal_beams, run_score, spans_field_of_view

    check_output_file(args.out, example="result.json")  # before any work: a run must not end in "cannot write"
    bf = read_beam_file(args.beam)
    counts = read_image_frames(args.frames, allow_nonfinite=True).frames
    hyps = ScoringInput.from_hypotheses(load_hypotheses(args.library))
    if not spans_field_of_view(hyps, counts.shape[1:], bf.sampling):
        counts = read_image_frames(args.frames).frames  # one cell: every pixel must be a count

    def progress(xs):
        return tqdm(xs, desc="simulating hypotheses", unit="hyp", disable=args.no_progress)

    if spans_field_of_view(hyps, counts.shape[1:], bf.sampling):
        return _run_field_of_view(args, hyps, counts, bf, progress)

    if args.site_shards is not None:
        from forward import InputError

        raise InputError(f"--site-shards splits a field of view's sites; {args.frames} spans one cell of the hypotheses "
                         "(a library's hypotheses are sharded by workflows.shards: python -m workflows.refine)")  # fmt: skip
    if args.detector != "beam" or args.optics != "beam":
        from forward import InputError

        raise InputError(f"--detector/--optics frame are learned from a field of view's lattice; {args.frames} spans one "
                         "cell of the hypotheses (give the detector and the optics in BEAM.json)")  # fmt: skip
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


def _run_field_of_view(args, hyps, counts, bf, progress) -> int:
    """A frame larger than the hypotheses' cell: lattice registration, sites, local scoring
    (:mod:`hypotest.fieldofview`), RESULT.json with ``lattice`` and ``sites``, and the site map."""
    from hypotest.fieldofview import DEFECT_PRIOR, score_field_of_view
    from hypotest.outputs import write_file_atomic
    from hypotest.scoring import check_result_finite
    from hypotest.sitemap import write_site_map

    from forward import InputError

    if args.scorer != "laplace":
        raise InputError(f"--scorer {args.scorer} scores frames that span one cell; a field of view is scored per site (laplace)")
    prior = DEFECT_PRIOR if args.defect_prior is None else args.defect_prior
    if args.site_shards is not None:
        from workflows.local import local_ray
        from workflows.site_shards import SiteShards

        if args.site_shards < 1:
            raise InputError(f"--site-shards must be >= 1, got {args.site_shards}")
        from workflows._cli import ray_address

        address = ray_address(args)
        with local_ray(num_cpus=args.site_shards if address is None else None, address=address), \
                SiteShards(args.site_shards) as split:  # fmt: skip
            out = score_field_of_view(hyps, counts, bf, host_id=args.host, defect_prior=prior, progress=progress,
                                      detector=args.detector, optics=args.optics, split=split)  # fmt: skip
        out["site_shards"] = {"actors": args.site_shards, "sites_per_class": split.sizes}
    else:
        out = score_field_of_view(hyps, counts, bf, host_id=args.host, defect_prior=prior, progress=progress,
                                  detector=args.detector, optics=args.optics)
    out["inputs"] = {"library": str(args.library), "frames": str(args.frames), "beam": str(args.beam)}
    check_result_finite(out)
    png = args.site_map or args.out.with_name(args.out.stem + "_sites.png")
    out["site_map"] = str(png)
    text = json.dumps(out, indent=2, allow_nan=False)
    write_site_map(png, counts[0], out)
    write_file_atomic(args.out, text)
    lat = out["lattice"]
    if out.get("detector_calibration"):
        print(f"detector: {out['detector_calibration']['summary']}")
    if out.get("optics"):
        print(f"optics: {out['optics']['summary']}")
    print(f"lattice: {lat['summary']}")
    print(f"sites: {len(out['sites'])} ({', '.join(f'{c['label']}' for c in out['site_classes'])}); window "
          f"{out['window']['radius_A']:.2f} Å ({out['window']['basis']}); masked pixels {out['masked_pixels'][0]['total']}")
    for key, n in sorted(out["counts"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {key}")
    print(f"wrote {args.out} and {png}")
    return 0
