"""Fields of view: time per stage (registration, site enumeration, per-site scoring) of
:func:`hypotest.fieldofview.score_field_of_view` on ADF-STEM frames of the built-in MoS2 library
at several sizes, after the eight hypotheses are simulated once (that time is printed apart), with
the FFT of the frame (the floor of any Fourier registration) as the reference in the same run.

Frames: hypotest's host image tiled through a rotated, 1.5 % miscalibrated map (Poisson, 2e5
e-/Å²; the timing does not depend on what the frame holds). Peak memory: the process's maximum
resident set size after each size (``ru_maxrss``, monotone: read the growth).

    .venv/bin/python benchmarks/fieldofview.py --sizes 128 256 512
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
    args = ap.parse_args()

    from hypotest.beamfile import parse_beam
    from hypotest.fieldofview import analyse_library, periodic_images, score_field_of_view
    from hypotest.hypothesis import load_hypotheses
    from hypotest.scoring import ScoringInput
    from inference.lattice import evaluate_series, host_series

    bf = parse_beam({"energy": 80000, "dose": 2e5, "sampling": 0.16, "semiangle_cutoff": 25, "aberrations": {},
                     "detector": {"mode": "stem_annular", "inner": 60, "outer": 200},
                     "simulation": {"sampling": 0.07}})  # fmt: skip
    hyps = ScoringInput.from_hypotheses(load_hypotheses("mos2_defects"))
    cell = np.asarray(hyps.specimens[0].cell)
    geo = analyse_library(hyps)
    t0 = time.perf_counter()
    images = periodic_images(hyps.specimens, bf, cell)
    print(f"simulated {len(images)} hypotheses once: {time.perf_counter() - t0:.1f} s")
    host = host_series(images[geo.host], cell[:2], geo.lattice)
    th = np.radians(17.3)
    m = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([0.1624, 0.1619])
    rng = np.random.default_rng(0)
    print(f"{'size':>6} {'sites':>6} {'register s':>11} {'sites s':>8} {'score s':>8} {'total s':>8} "
          f"{'FFT s':>7} {'total/FFT':>10} {'maxrss MiB':>11}")  # fmt: skip
    for n in args.sizes:
        ii = np.arange(n, dtype=float)
        y = rng.poisson(2e5 * 0.0256 * evaluate_series(host.g, host.c, m, np.array([1.1, 2.3]), ii, ii)).astype(float)
        best = None
        for _ in range(args.repeats):
            out = score_field_of_view(hyps, y[None], bf, images=images)
            tm = out["timing_s"]
            total = tm["register"] + tm["sites"] + tm["score"]
            if best is None or total < best[0]:
                best = (total, tm, len(out["sites"]))
        t0 = time.perf_counter()
        for _ in range(5):
            np.fft.fft2(y)
        fft = (time.perf_counter() - t0) / 5
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        total, tm, k = best
        print(f"{n:6d} {k:6d} {tm['register']:11.3f} {tm['sites']:8.3f} {tm['score']:8.3f} {total:8.3f} "
              f"{fft:7.4f} {total / fft:10.0f} {rss:11.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
