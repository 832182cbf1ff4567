"""``hypotest demo``: the main job on the embedded default.

It runs the real path (built-in library, Ray pre-simulation, live session with a simulated
microscope, dashboard) and says what it did; it never prints a result that was not computed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default (local Ray, built-in library, dashboard)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="the session directory (replaced)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulated microscope (hidden structure, noise)")
    p.add_argument("--rate", type=float, default=4.0, help="frames per second from the simulated microscope")
    p.add_argument("--port", type=int, default=8765, help="dashboard port on 127.0.0.1 (0: any free port)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument("--linger", type=float, default=0.0, help="keep the dashboard open this many seconds after the decision")
    p.add_argument("--4dstem", dest="pixelated", action="store_true",
                   help="also offer 4D-STEM (a pixelated camera to 40 mrad) to the design step")
    p.add_argument("--defocus-error", type=float, default=0.0, metavar="A",
                   help="the simulated microscope's true defocus is the commanded one plus A Å (its readout is off)")
    p.add_argument("--truth-outside", default=None, metavar="X@Y",
                   help="hide a structure the library does not hold: the host with X on a Y site (e.g. Cr@Mo)")
    p.add_argument("--dose", type=float, default=None, metavar="E",
                   help="dose per frame [e-/Å²] (default: the library's, 40 for MoS2)")
    p.add_argument("--generate-elements", default=None, metavar="X,...",
                   help="make new hypotheses from the host while the session runs (substitution by these elements, "
                        "e.g. Se,Cr or Se@S, and vacancies) when the frames are unexplained or a decision is near")
    p.add_argument("--learn-optics", action="store_true",
                   help="learn the HRTEM defocus and astigmatism from the frames while the session runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hypotest.demo import run_demo

    import signal

    from hypotest.commands.live import StopSignals

    t0 = time.perf_counter()
    try:
        with StopSignals():  # SIGTERM stops the session as Ctrl-C does: a `stopped` line, every frame's fate
            record = run_demo(out=args.out, seed=args.seed, log=print, rate_hz=args.rate, dashboard=not args.no_dashboard,
                              port=args.port, linger_s=args.linger, pixelated=args.pixelated,
                              defocus_error=args.defocus_error, truth_outside=args.truth_outside, dose=args.dose,
                              generate=None if args.generate_elements is None else {"elements": args.generate_elements},
                              learn_optics={} if args.learn_optics else None)  # fmt: skip
    except KeyboardInterrupt as exc:
        name = str(exc) or "SIGINT"
        print(f"demo {'interrupted' if name == 'SIGINT' else 'terminated'} ({name}); record: {args.out} "
              f"(hypotest session show {args.out})")  # fmt: skip
        return 128 + int(getattr(signal, name, signal.SIGINT))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; record: {args.out} (hypotest session show {args.out})")
    s = {k: v for k, v in record["summary"].items() if k != "latency_s"}
    print(json.dumps(s, indent=2, ensure_ascii=False))
    return 0 if record["summary"]["correct"] else 1
