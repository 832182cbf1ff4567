"""``python -m workflows.refine``: score a frame against the cached library, refine the top ones.

The command-line entry point (for ``ray job submit``) around :func:`workflows.refine_tasks.refine_batch`
(one Ray task per hypothesis) and :class:`workflows.ShardedLibrary`.

Reads the cached images of every hypothesis (written by ``python -m workflows.presimulate`` with
the same beam and grid options), holds them in Ray shards (:class:`workflows.ShardedLibrary`),
scores the frame (Laplace evidence, nuisance scale and background marginalised), forms the
posterior with the library priors, and refines the ``--top`` hypotheses' in-plane atom positions
across workers (MAP, :func:`workflows.refine_batch`). Writes JSON to ``--out``::

    {"posterior": {id: p, ...}, "top": [id, ...],
     "refined": [{"id", "positions_A", "initial_positions_A", "log_density", ...}, ...]}

Example (cluster)::

    ray job submit --address http://HEAD:8265 \\
        --runtime-env-json '{"env_vars": {"OMP_NUM_THREADS": "1"}}' \\
        -- python -m workflows.refine /shared/library.h5 /shared/cache /shared/frame.npy \\
           --defocus 50 --top 4 --out /shared/refined.json

The frame is a ``.npy`` of counts on the camera grid (``[x, y]``, pixel (0, 0) at the cell origin).
All hypotheses must share one cell (one family).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from forward import InputError
from inference.noise import noise_from_detector
from inference.scorer import ScorerConfig
from workflows._cli import add_common_args, connect, group_by_cell, specs_for_cell
from workflows.cache import read_images
from workflows.refine_tasks import refine_batch, top_ids
from workflows.shards import ShardedLibrary, posterior_from_scores
from workflows.spec import output_shape
from workflows.specimens import load_hypotheses

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workflows.refine",
        description="Score a frame against a pre-simulated library in Ray shards and refine the top hypotheses.",
    )
    p.add_argument("hypotheses", help="library file (.h5) or pairs file (.npz)")
    p.add_argument("cache", help="cache directory written by python -m workflows.presimulate")
    p.add_argument("frame", help="frame counts (.npy, [x, y], camera grid)")
    add_common_args(p, many_defoci=False)
    p.add_argument("--top", type=int, default=4, help="hypotheses to refine (highest posterior)")
    p.add_argument("--steps", type=int, default=30, help="L-BFGS iterations per hypothesis")
    p.add_argument("--displacement-sd", type=float, default=0.3, help="prior sd of atom displacements [Å]")
    p.add_argument("--shard-size", type=int, default=2048, help="hypotheses per shard actor")
    p.add_argument("--scorer", default="linear", metavar="{linear,fast,laplace}",
                   help="the one scorer on the shards (inference.make_scorer): linear (registered frame), fast (binned "
                        "screen first; large libraries) or laplace (sub-pixel shift marginalised too)")
    p.add_argument("--out", required=True, help="output JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pairs, priors = load_hypotheses(args.hypotheses)
    groups = group_by_cell(pairs)
    if len(groups) != 1:
        raise InputError(
            f"the hypotheses have {len(groups)} different cells; a frame is compared pixel for pixel, "
            "so refine one family (one cell) at a time"
        )
    cell, _ = groups[0]
    (spec,) = specs_for_cell(args, cell, pairs, [args.defocus])
    counts = np.load(args.frame)
    if counts.shape != output_shape(spec):
        raise InputError(f"frame {args.frame} is {list(counts.shape)}, the spec's camera is {list(output_shape(spec))}")
    ids = [hid for hid, _ in pairs]
    images = read_images(args.cache, spec, ids)
    cam = output_shape(spec)
    exposure = float(spec.beam.dose) * spec.grid.extent[0] * spec.grid.extent[1] / (cam[0] * cam[1])
    config = ScorerConfig(kind=args.scorer, noise=noise_from_detector(spec.beam.detector))
    with connect(args):
        # one signal level for every shard: the library's (the background prior is relative to it)
        with ShardedLibrary(config, signal_level=max(float(np.mean(images, dtype=np.float64)), 1e-12)) as lib:
            for k in range(0, len(ids), args.shard_size):
                lib.add_shard(ids[k : k + args.shard_size], images[k : k + args.shard_size])
            scores = lib.score(counts, exposure)
            order = lib.ids
        post = posterior_from_scores([scores], priors, float(spec.beam.dose))
        top = top_ids(order, post, min(args.top, len(ids)))
        by_id = dict(pairs)
        results = refine_batch(
            [(i, by_id[i]) for i in top], spec, counts, steps=args.steps, displacement_sd=args.displacement_sd
        )
    out = {
        "posterior": {i: float(p) for i, p in zip(order, post)},
        "top": list(top),
        "refined": [
            {
                "id": r.id,
                "positions_A": r.positions.tolist(),
                "initial_positions_A": r.initial_positions.tolist(),
                "log_density": r.log_density,
                "initial_log_density": r.initial_log_density,
                "grad_norm": r.grad_norm,
            }
            for r in results
        ],
    }
    Path(args.out).write_text(json.dumps(out))
    print(json.dumps({"out": str(Path(args.out).resolve()), "top": list(top)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
