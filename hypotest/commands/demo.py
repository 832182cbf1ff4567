"""``hypotest demo``: the main job on the embedded default.

It runs the most complete real path that exists and says what it did; it never prints a result
that was not computed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default (local Ray, built-in library)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the record is written")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulated microscope")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hypotest.demo import run_demo

    t0 = time.perf_counter()
    record = run_demo(out=args.out, seed=args.seed, log=print)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; record: {args.out / 'demo.json'}")
    print(json.dumps(record["summary"], indent=2))
    return 0
