"""Fields of view: time per stage (registration, site enumeration, per-site scoring, output) of
:func:`hypotest.fieldofview.score_field_of_view` at several frame sizes, after the hypotheses are
simulated once (that time is printed apart), with the FFT of the frame (the floor of any Fourier
registration) as the reference in the same run. Two cases:

- ``--case stem``: ADF-STEM, the built-in MoS2 library (8 hypotheses), 80 kV, 0.16 Å pixels;
- ``--case hrtem``: HRTEM of SrTiO3 [001] (the built-in ``srtio3_vacancy``: host and six O
  vacancies, 4 unit cells thick), 300 kV, 60 Å defocus, Cs -10 µm, 0.1 Å pixels.

Frames: hypotest's host image tiled through a rotated map 1-1.5 % off the nominal pixel size
(Poisson; the timing does not depend on what the frame holds). "output" is RESULT.json's
serialisation. Peak memory: the process's maximum resident set size after each size
(``ru_maxrss``, monotone: read the growth).

    .venv/bin/python benchmarks/fieldofview.py --sizes 128 256 512
    .venv/bin/python benchmarks/fieldofview.py --case hrtem --sizes 1024 2048
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
                         "aberrations": {"C30": -1.0e5, "defocus": 60}, "detector": {"mode": "hrtem"}})  # fmt: skip
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


if __name__ == "__main__":
    main()
