"""Experiment design on the built-in MoS2 library: electrons to reach P(true) >= 0.99 with the
defocus proposed by expected information gain per electron, versus the fixed default (Scherzer).

Same simulated microscope, hidden structure, noise keys and frames of 40 e-/Å² for both; only the
beam policy differs. Exit waves are computed once (in process) and shared by every session.

    .venv/bin/python benchmarks/design_mos2.py --seeds 12
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from forward import make_beam
from hypotest.demo import ENERGY, _simulator, load_hypotheses, prepare, run_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12, help="sessions per policy (hidden structure and noise per seed)")
    ap.add_argument("--max-frames", type=int, default=60)
    ap.add_argument("--json", help="write the per-session results here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    hyps = load_hypotheses()
    cell = np.asarray(hyps[0].specimen.cell)
    sim = _simulator(cell)
    beam = make_beam(ENERGY)
    waves = [np.asarray(sim.exit_wave(h.specimen, beam)) for h in hyps]
    p = prepare(hyps, waves)
    print(f"prepared {len(hyps)} hypotheses x {len(p.beams)} defocus candidates in {time.perf_counter() - t0:.1f} s")

    rows = []
    for seed in range(args.seeds):
        out = {}
        for policy in ("fixed", "adaptive"):
            r = run_session(p, seed, adaptive=policy == "adaptive", max_frames=args.max_frames, log=lambda s: None)
            out[policy] = r
        rows.append({"seed": seed, "truth": out["fixed"]["truth"], **{
            f"{k}_{f}": out[k][f] for k in out for f in ("frames", "dose_used_e_per_A2", "correct", "decision")}})
        print(f"seed {seed:2d} truth {out['fixed']['truth'][:28]:<28}  fixed {out['fixed']['dose_used_e_per_A2']:6g} e-/Å² "
              f"({'ok' if out['fixed']['correct'] else 'NOT decided/correct'})  adaptive "
              f"{out['adaptive']['dose_used_e_per_A2']:6g} e-/Å² ({'ok' if out['adaptive']['correct'] else 'NOT decided/correct'})")
    fixed = np.array([r["fixed_dose_used_e_per_A2"] for r in rows], float)
    adapt = np.array([r["adaptive_dose_used_e_per_A2"] for r in rows], float)
    ok_f = np.array([r["fixed_correct"] for r in rows])
    ok_a = np.array([r["adaptive_correct"] for r in rows])
    print(f"\ncorrect decisions: fixed {ok_f.sum()}/{len(rows)}, adaptive {ok_a.sum()}/{len(rows)}"
          f" (undecided sessions count their full {args.max_frames} frames)")
    print(f"mean dose to P >= 0.99: fixed {fixed.mean():.0f} e-/Å², adaptive {adapt.mean():.0f} e-/Å²; "
          f"ratio fixed/adaptive {fixed.mean() / adapt.mean():.2f}x (median of per-seed ratios "
          f"{np.median(fixed / adapt):.2f}x); goal >= 2x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
