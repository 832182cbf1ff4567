"""Fields of view: time per stage (registration, site enumeration, per-site scoring, output) of
:func:`hypotest.fieldofview.score_field_of_view` at several frame sizes, after the hypotheses are
simulated once (that time is printed apart), with the FFT of the frame (the floor of any Fourier
registration) as the reference in the same run. Two cases:

- ``--case stem``: ADF-STEM, the built-in MoS2 library (8 hypotheses), 80 kV, 0.16 Å pixels;
- ``--case hrtem``: HRTEM of SrTiO3 [001] (the built-in ``srtio3_vacancy``: host and six O
  vacancies, 3 unit cells thick), 300 kV, Cs -10 µm at its Scherzer overfocus (defocus -54.3 Å),
  20 mrad, 0.1 Å pixels.

Frames: hypotest's host image tiled through a rotated map 1-1.5 % off the nominal pixel size
(Poisson; the timing does not depend on what the frame holds). "output" is RESULT.json's
serialisation. Peak memory: the process's maximum resident set size after each size
(``ru_maxrss``, monotone: read the growth).

    .venv/bin/python benchmarks/fieldofview.py --sizes 128 256 512
    .venv/bin/python benchmarks/fieldofview.py --case hrtem --sizes 1024 2048

``--live N``: a live series of N frames per size, the lattice drifting 0.3 px rms per frame:
the first frame builds :class:`hypotest.fieldofview.FieldOfViewScorer` (registration, sites,
compilation: printed apart), and each later frame is timed as the live session handles it
(:mod:`hypotest.live.fov`): registered, every site's evidence added, the posteriors, decisions and
fit checks of all sites, and the proposal for the undecided ones; p50 and p99 over the frames.
``--site-shards K``: the same with the sites split over K Ray actors (:mod:`workflows.site_shards`,
a local Ray), side by side.

    .venv/bin/python benchmarks/fieldofview.py --sizes 256 512 --live 12 --site-shards 2
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--case", choices=("stem", "hrtem"), default="stem")
    ap.add_argument("--live", type=int, default=0, metavar="N", help="time a live series of N frames per size")
    ap.add_argument("--site-shards", type=int, default=0, metavar="K", help="with --live: also over K Ray actors")
    args = ap.parse_args()
    import json

    from hypotest.beamfile import parse_beam
    from hypotest.fieldofview import analyse_library, periodic_images, score_field_of_view
    from hypotest.hypothesis import load_hypotheses
    from hypotest.scoring import ScoringInput
    from inference.lattice import evaluate_series, host_series

    if args.case == "stem":
        bf = parse_beam({"energy": 80000, "dose": 2e5, "sampling": 0.16, "semiangle_cutoff": 25, "aberrations": {},
                         "detector": {"mode": "stem_annular", "inner": 60, "outer": 200},
                         "simulation": {"sampling": 0.07}})  # fmt: skip
        lib, th, scale = "mos2_defects", 17.3, (0.1624, 0.1619)
    else:
        bf = parse_beam({"energy": 300000, "dose": 2e4, "sampling": 0.1, "semiangle_cutoff": 20,
                         "aberrations": {"C30": -1.0e5, "defocus": -54.3}, "detector": {"mode": "hrtem"}})  # fmt: skip
        lib, th, scale = "srtio3_vacancy", 23.1, (0.1012, 0.1009)
    hyps = ScoringInput.from_hypotheses(load_hypotheses(lib))
    cell = np.asarray(hyps.specimens[0].cell)
    geo = analyse_library(hyps)
    t0 = time.perf_counter()
    images = periodic_images(hyps.specimens, bf, cell)
    print(f"simulated {len(images)} hypotheses once: {time.perf_counter() - t0:.1f} s")
    host = host_series(images[geo.host], cell[:2], geo.lattice)
    th = np.radians(th)
    m = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag(scale)
    exposure = float(bf.beam.dose) * bf.sampling[0] * bf.sampling[1]
    rng = np.random.default_rng(0)
    print(f"{args.case}: {lib}, {len(images)} hypotheses")
    print(f"{'size':>6} {'sites':>6} {'register s':>11} {'sites s':>8} {'score s':>8} {'output s':>9} {'total s':>8} "
          f"{'FFT s':>7} {'total/FFT':>10} {'maxrss MiB':>11}")  # fmt: skip
    if args.live:
        return live(args, hyps, bf, images, host, m, exposure, rng)
    for n in args.sizes:
        ii = np.arange(n, dtype=float)
        y = rng.poisson(exposure * evaluate_series(host.g, host.c, m, np.array([1.1, 2.3]), ii, ii)).astype(float)
        best = None
        for _ in range(args.repeats):
            out = score_field_of_view(hyps, y[None], bf, images=images)
            tm = out["timing_s"]
            t0 = time.perf_counter()
            json.dumps(out, allow_nan=False)
            tm["output"] = time.perf_counter() - t0
            total = tm["register"] + tm["sites"] + tm["score"] + tm["output"]
            if best is None or total < best[0]:
                best = (total, tm, len(out["sites"]))
        t0 = time.perf_counter()
        for _ in range(5):
            np.fft.fft2(y)
        fft = (time.perf_counter() - t0) / 5
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        total, tm, k = best
        print(f"{n:6d} {k:6d} {tm['register']:11.3f} {tm['sites']:8.3f} {tm['score']:8.3f} {tm['output']:9.3f} {total:8.3f} "
              f"{fft:7.4f} {total / fft:10.0f} {rss:11.0f}")  # fmt: skip


def live(args, hyps, bf, images, host, m, exposure, rng) -> None:
    """The live series (module docstring)."""
    import contextlib

    from hypotest.fieldofview import FieldOfViewScorer
    from hypotest.live.fov import undecided_design
    from inference.lattice import evaluate_series

    beam = {"dose": float(bf.beam.dose)}
    splits = ["in-process"] + ([f"{args.site_shards} Ray actors"] if args.site_shards else [])
    print(f"live series of {args.live} frames; per frame: register + evidence + posteriors/fit checks + proposal")
    print(f"{'size':>6} {'sites':>6} {'scoring':>15} {'first frame s':>14} {'p50 s':>7} {'p99 s':>7} {'maxrss MiB':>11}")
    ray_ctx = contextlib.nullcontext()
    if args.site_shards:
        from workflows.local import local_ray

        ray_ctx = local_ray(num_cpus=args.site_shards)
    with ray_ctx:
        for n in args.sizes:
            ii = np.arange(n, dtype=float)
            drift = np.cumsum(rng.normal(0, 0.3, (args.live, 2)), axis=0)
            frames = [rng.poisson(exposure * evaluate_series(host.g, host.c, m, np.array([1.1, 2.3]) + m @ d, ii, ii))
                      .astype(float) for d in drift]  # fmt: skip
            for how in splits:
                split = None
                if how != "in-process":
                    from workflows.site_shards import SiteShards

                    split = SiteShards(args.site_shards)
                t0 = time.perf_counter()
                sc = FieldOfViewScorer(hyps, frames[0], bf, images=images, fit_frame="latest", split=split)
                undecided_design(sc.result(), sc, 0.99, beam, 1)
                first = time.perf_counter() - t0
                per = []
                for f in frames[1:]:
                    t0 = time.perf_counter()
                    sc.add(f)
                    undecided_design(sc.result(), sc, 0.99, beam, len(sc.frames))
                    per.append(time.perf_counter() - t0)
                if split is not None:
                    split.close()
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{n:6d} {len(sc.sites):6d} {how:>15} {first:14.2f} {np.percentile(per, 50):7.3f} "
                      f"{np.percentile(per, 99):7.3f} {rss:11.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
