"""Experiment design on the built-in MoS2 library: electrons to reach P(true) >= 0.99 with the
defocus proposed by expected information gain per electron, versus the fixed default (Scherzer).

Same simulated microscope, hidden structure, noise keys and frames of 40 e-/Å² for both; only the
beam policy differs (the live session in lockstep, ``LiveSession.run_sync``, with auto-apply on or
off). Exit waves are computed once (in process) and shared by every session.

    .venv/bin/python benchmarks/design_mos2.py --seeds 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from forward import make_beam
from hypotest.live.model import HRTEMImageModel
from hypotest.live.sessions import LIBRARY_SETTINGS, load_builtin_hypotheses, make_demo_session


def run_session(waves, seed: int, adaptive: bool, max_frames: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        s = make_demo_session(d, seed=seed, exit_waves=waves, auto_apply=adaptive, max_frames=max_frames)
        st = s.run_sync()
        truth = s.source.reveal()[-1]
    dec = st["decision"]
    return {"frames": st["frames"]["received"], "dose_used_e_per_A2": st["dose_used_e_per_A2"], "truth": truth["name"],
            "decision": None if dec is None else dec["name"], "correct": dec is not None and dec["id"] == truth["id"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12, help="sessions per policy (hidden structure and noise per seed)")
    ap.add_argument("--max-frames", type=int, default=60)
    ap.add_argument("--json", help="write the per-session results here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    hyps = load_builtin_hypotheses("mos2_defects")
    st = LIBRARY_SETTINGS["mos2_defects"]
    model = HRTEMImageModel([h.specimen for h in hyps], sampling=st.sampling, binning=st.binning,
                            slice_thickness=st.slice_thickness)
    beam = make_beam(st.energy)
    waves = [np.asarray(model.sim.exit_wave(h.specimen, beam)) for h in hyps]
    print(f"prepared {len(hyps)} exit waves in {time.perf_counter() - t0:.1f} s")

    rows = []
    for seed in range(args.seeds):
        out = {}
        for policy in ("fixed", "adaptive"):
            r = run_session(waves, seed, adaptive=policy == "adaptive", max_frames=args.max_frames)
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
