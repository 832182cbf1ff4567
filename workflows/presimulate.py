"""``python -m workflows.presimulate``: pre-simulate a library under several beam conditions.

The command-line entry point (for ``ray job submit`` and the SLURM script) around
:func:`workflows.presim_pool.presimulate`, the actor pool that does the work.

Every hypothesis is simulated (HRTEM, :mod:`forward.hrtem`) under every ``--defocus`` into the
content-addressed cache CACHE (:mod:`workflows.cache`); hypotheses are grouped by cell, one spec
per (cell, defocus). Resumable: rerun the same command after a crash and only the missing images
are computed. Prints a JSON summary as its last line (and writes it to ``--report``).

On the embedded default (a laptop)::

    python -m workflows.presimulate library.h5 cache/ --defocus 0 50 100 --sampling 0.1

On a cluster (the cache directory must be on a file system every node sees)::

    ray job submit --address http://HEAD:8265 \\
        --runtime-env-json '{"env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}}' \\
        -- python -m workflows.presimulate /shared/library.h5 /shared/cache --defocus 0 50 100

With token authentication (Ray 2.60's default) the submitting shell needs the cluster's token:
``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``, default ``~/.ray/auth_token``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workflows._cli import add_common_args, connect, group_by_cell, specs_for_cell
from workflows.presim_pool import presimulate
from workflows.specimens import load_hypotheses

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workflows.presimulate",
        description="Pre-simulate hypotheses x beam conditions into a content-addressed HDF5 cache (resumable).",
    )
    p.add_argument("hypotheses", help="library file (.h5, library.format) or pairs file (.npz, workflows.save_pairs)")
    p.add_argument("cache", help="cache directory (shared file system on a cluster)")
    add_common_args(p, many_defoci=True)
    p.add_argument("--workers", type=int, default=None, help="simulation actors (default: the cluster's CPUs)")
    p.add_argument("--batch-size", type=int, default=4, help="hypotheses per actor call")
    p.add_argument("--max-retries", type=int, default=3, help="actor restarts / call retries after a worker dies")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", default=None, help="also write the JSON summary to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pairs, _ = load_hypotheses(args.hypotheses)
    groups = group_by_cell(pairs)
    summary = {"cache": str(Path(args.cache).resolve()), "groups": []}
    with connect(args) as ray_info:
        summary["ray"] = {"address": ray_info.address, "cpus": ray_info.num_cpus, "started": ray_info.started}
        for cell, group in groups:
            specs = specs_for_cell(args, cell, group, args.defocus)
            rep = presimulate(
                group, specs, args.cache, n_workers=args.workers, batch_size=args.batch_size,
                max_retries=args.max_retries, progress=not args.no_progress,
            )  # fmt: skip
            summary["groups"].append(
                {
                    "cell_A": list(cell),
                    "digests": list(rep.digests),
                    "defocus_A": list(args.defocus),
                    "n_items": rep.n_items,
                    "n_cached": rep.n_cached,
                    "n_computed": rep.n_computed,
                    "seconds": rep.seconds,
                    "compute_seconds": rep.compute_seconds,
                    "n_workers": rep.n_workers,
                }
            )
    text = json.dumps(summary)
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
