"""``hypotest score``: score frames against a library and write RESULT.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


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
                   help="beam = BEAM.json's optics taken as exact (default); frame = learned from the frames: one-cell "
                        "HRTEM frames: defocus, two-fold astigmatism and thickness marginalised per hypothesis (see "
                        "--defocus-range, --extra-cells); field of view, ADF-STEM: the detector's inner angle and the "
                        "effective source size from the host lattice of the first frame")
    p.add_argument("--defocus-range", type=float, default=50.0, metavar="A",
                   help="with --optics frame (HRTEM): the defocus searched within BEAM.json's +- A Å (prior sd A/2; default 50)")
    p.add_argument("--extra-cells", default="0", metavar="K,...",
                   help="with --optics frame (HRTEM): host unit cells that may lie below the hypotheses' cells, e.g. 0,1,2 "
                        "(the thickness choices, summed over; default 0)")
    p.add_argument("--c12-sd", type=float, default=10.0, metavar="A",
                   help="with --optics frame (HRTEM): prior sd of each two-fold astigmatism component [Å] (0: none; default 10)")
    p.add_argument("--fit-rate", type=float, default=0.01, metavar="R",
                   help="false-alarm rate of the absolute fit check: frames whose best hypothesis fits worse than this "
                        "are 'unexplained' and no decision is reported (default 0.01)")
    p.add_argument("--generate", nargs="?", const="unexplained", default=None, choices=("unexplained", "always"),
                   help="make new hypotheses from the host (see --elements, --generate-kinds), score them with the "
                        "library and report those that explain the frames: when the frames are unexplained (the "
                        "default), or always (a directed check: at doses where the absolute fit check cannot see a "
                        "wrong structure yet, a generated one can still win on its Bayes factor)")
    p.add_argument("--elements", default=None, metavar="X,...",
                   help="with --generate: substituents/interstitials, e.g. Zr,La or Zr@Ti (only Ti sites)")
    p.add_argument("--generate-kinds", default="substitution,vacancy", metavar="KINDS",
                   help="with --generate: any of substitution, vacancy, interstitial (default substitution,vacancy)")
    p.add_argument("--generated-prior", type=float, default=0.01, metavar="P",
                   help="with --generate: prior mass of all generated hypotheses together (default 0.01)")
    p.add_argument("--no-refine", action="store_true",
                   help="with --generate: do not refine the accepted candidate's defect atom position through the multislice")
    p.add_argument("--generated-library", type=Path, default=None, metavar="H5",
                   help="with --generate: write the generated hypotheses that explain the frames to this library file")
    p.add_argument("--grow-sites", action="store_true",
                   help="field of view, a stack: also score the sites later frames bring into view (drift); default: "
                        "the first frame's sites")
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
        if args.generate:
            from forward import InputError

            raise InputError("--generate makes new hypotheses for one-cell frames; for a field of view it is not built yet "
                             "(its unexplained sites are listed in RESULT.json)")  # fmt: skip
        return _run_field_of_view(args, hyps, counts, bf, progress)

    if args.grow_sites:
        from forward import InputError

        raise InputError(f"--grow-sites adds the sites a drifting field of view brings into view; {args.frames} spans "
                         "one cell of the hypotheses")  # fmt: skip
    if args.site_shards is not None:
        from forward import InputError

        raise InputError(f"--site-shards splits a field of view's sites; {args.frames} spans one cell of the hypotheses "
                         "(a library's hypotheses are sharded by workflows.shards: python -m workflows.refine)")  # fmt: skip
    if args.detector != "beam":
        from forward import InputError

        raise InputError(f"--detector frame is learned from a field of view's lattice; {args.frames} spans one "
                         "cell of the hypotheses (give the detector in BEAM.json)")  # fmt: skip
    optics = _optics_prior(args, bf) if args.optics == "frame" else None
    result = run_score(hyps, counts, bf, seed=args.seed, progress=progress, scorer=args.scorer, where=str(args.frames),
                       optics=optics, fit_rate=args.fit_rate)  # fmt: skip
    generated = None
    if args.generate:
        result, hyps, generated = _generate(args, hyps, counts, bf, result, optics, progress)
    out = result.to_json_dict()
    names = dict(zip(hyps.ids, hyps.names))
    for h in out["hypotheses"]:
        h["name"] = names[h["id"]]
    cands = proposal_beams(bf, None if result.optics is None else result.optics["defocus_A"]) if out["proposals"] else []
    for prop in out["proposals"]:
        prop["aberrations"] = cands[prop["index"]]
    out["inputs"] = {"library": str(args.library), "frames": str(args.frames), "beam": str(args.beam)}
    if generated is not None:
        out["generated"] = generated
    check_result_finite(out, names)  # JSON has no NaN: a non-finite score is an error, never a file
    write_file_atomic(args.out, json.dumps(out, indent=2, allow_nan=False))  # a failed run leaves nothing
    best = out["best"]
    verdict = (f"UNEXPLAINED: no hypothesis fits ({len(result.unexplained_frames())}/{result.n_frames} frames fail the fit "
               f"check at rate {result.fit_rate:g}; all frames z = {result.fit_check_all['z']:.1f}); least wrong"
               if result.unexplained else "best")  # fmt: skip
    print(
        f"{verdict}: {names[best]} ({best}) P = {max(h['posterior'] for h in out['hypotheses']):.4f}; "
        f"rejected {sum(h['rejected'] for h in out['hypotheses'])}/{len(out['hypotheses'])}; "
        f"{out['n_frames']} frames, {out['dose_e_per_A2']:g} e-/Å²; wrote {args.out}"
    )
    if result.optics is not None:
        print(f"optics: {result.optics['text']}; {result.optics['correction']}")
    if generated is not None:
        print(f"generated: {generated['summary']}")
        for c in generated["candidates"]:
            r = c.get("refined")
            if r:
                print(f"refined {c['name']}: atom {r['atom']} moved ({r['dx_A']:+.3f} ± {r['sd_A'][0]:.3f}, "
                      f"{r['dy_A']:+.3f} ± {r['sd_A'][1]:.3f}) Å from its ideal site; log joint +{r['log_joint_gain']:.1f}")
    return 0


def _optics_prior(args, bf):
    from forward import InputError
    from inference import make_optics_prior

    try:
        cells = [int(x) for x in str(args.extra_cells).split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--extra-cells must be whole numbers separated by commas (e.g. 0,1,2), got {args.extra_cells!r}") from None
    return make_optics_prior(-float(bf.beam.aberrations.C10), defocus_range=args.defocus_range, c12_sd=args.c12_sd,
                             extra_cells=cells)  # fmt: skip


def _generate(args, hyps, counts, bf, result, optics, progress):
    """New hypotheses from the host when the frames are unexplained (:mod:`hypotest.generate`)."""
    from forward import InputError
    from hypotest.fieldofview import analyse_library
    from hypotest.generate import generate_from_host, generated_priors, parse_elements
    from hypotest.hypothesis import load_hypotheses
    from hypotest.scoring import ScoringInput, run_score

    elements = parse_elements(args.elements)
    kinds = [k.strip() for k in str(args.generate_kinds).split(",") if k.strip()]
    generated_priors(np.ones(1), 1, args.generated_prior)  # the prior mass is checked before any work
    if not result.unexplained and args.generate != "always":
        return result, hyps, {"triggered": False, "summary": "not needed: the library explains the frames", "candidates": []}
    lib = load_hypotheses(args.library)
    try:
        host = lib[analyse_library(hyps).host]
    except InputError as exc:
        raise InputError(f"--generate makes candidates from the library's host, which was not found: {exc}") from None
    new = generate_from_host(host, elements, kinds, existing_ids=hyps.ids, origin=f"hypotest score --generate for {args.frames}")
    if not new:
        return result, hyps, {"triggered": True, "summary": "no new candidates (all already in the library)", "candidates": []}
    allh = ScoringInput(hyps.ids + tuple(h.id for h in new), hyps.names + tuple(h.name for h in new),
                        hyps.specimens + tuple(h.specimen for h in new),
                        generated_priors(hyps.priors, len(new), args.generated_prior))  # fmt: skip
    res2 = run_score(allh, counts, bf, seed=args.seed, progress=progress, scorer=args.scorer, where=str(args.frames),
                     optics=optics, fit_rate=args.fit_rate)  # fmt: skip
    b = int(np.argmax(res2.posterior))
    gen_ids = {h.id for h in new}
    accepted = [allh.ids[b]] if allh.ids[b] in gen_ids and not res2.unexplained else []
    cands = []
    for h in new:
        i = allh.ids.index(h.id)
        cands.append({"id": h.id, "name": h.name, "posterior": float(res2.posterior[i]),
                      "provenance": dict(h.provenance.notes).get("generated", ""), "explains": h.id in accepted})  # fmt: skip
    if accepted and not args.no_refine:
        from hypotest.generate import refine_defect

        nominal = -float(bf.beam.aberrations.C10)
        opt = res2.optics or {"defocus_A": nominal, "nominal_defocus_A": nominal, "a12_A": 0.0, "b12_A": 0.0, "extra_cells": 0}
        for c in cands:
            if c["explains"]:
                c["refined"] = refine_defect(next(h for h in new if h.id == c["id"]), counts, bf, opt)
    summary = (f"{len(new)} candidates from host {host.name!r}; "
               + (f"{allh.names[b]} explains the frames (P = {res2.posterior[b]:.4f}, fit z = {res2.fit_check_all['z']:.1f})"
                  if accepted else "none explains the frames"))  # fmt: skip
    out = {"triggered": True, "when": args.generate, "library_unexplained": result.unexplained, "summary": summary, "host": host.id, "kinds": kinds,
           "elements": [e if s is None else f"{e}@{s}" for e, s in elements], "prior_mass": args.generated_prior,
           "accepted": accepted, "candidates": cands}  # fmt: skip
    if accepted and args.generated_library is not None:
        from library.entry import make_entry
        from library.format import write_library

        entries = [make_entry(h.specimen, name=h.name, family=h.family, tags=("generated",), prior=1.0, provenance=h.provenance)
                   for h in new if h.id in accepted]  # fmt: skip
        write_library(args.generated_library, entries, metadata={"generated_by": "hypotest score --generate",
                                                                 "frames": str(args.frames)})  # fmt: skip
        out["library"] = str(args.generated_library)
    return res2, allh, out


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
                                      detector=args.detector, optics=args.optics, split=split,
                                      grow_sites=args.grow_sites)  # fmt: skip
        out["site_shards"] = {"actors": args.site_shards, "sites_per_class": split.sizes}
    else:
        out = score_field_of_view(hyps, counts, bf, host_id=args.host, defect_prior=prior, progress=progress,
                                  detector=args.detector, optics=args.optics, grow_sites=args.grow_sites)
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
