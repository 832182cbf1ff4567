"""Ray layer measurements: pre-simulation throughput with 1 and 2 workers, and the per-frame
fan-out overhead of sharded scoring versus in-process scoring.

    .venv/bin/python benchmarks/workflows_throughput.py [--items 48] [--gpts 128] [--repeats 20]

Throughput is measured after every worker has compiled its simulator (a warm-up run into a
scratch cache), so it is the steady state a long pre-simulation sees; compile time per worker is
reported separately. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from forward import make_beam, make_grid, make_specimen
from inference import ScorerConfig, make_scorer
from inference.noise import make_noise_model
from library.provenance import content_id
from workflows.local import local_ray
from workflows.presim_pool import make_workers, presimulate
from workflows.shards import ShardedLibrary
from workflows.spec import make_simulation_spec, make_spec_simulator

CELL = (8.0, 8.0, 8.0)  # [Å]


def _pairs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    base = np.array([[2, 2, 1], [6, 2, 3], [2, 6, 5], [6, 6, 7], [4, 4, 4]], dtype=float)
    out = []
    for _ in range(n):
        pos = base + np.column_stack([rng.uniform(-0.4, 0.4, (5, 2)), np.zeros(5)])
        sp = make_specimen(pos, [42, 16, 16, 42, 8], CELL)
        out.append((content_id(sp), sp))
    return out


def _spec(gpts: int):
    grid = make_grid(extent=CELL[:2], gpts=gpts)
    beam = make_beam(300e3, defocus=50.0, semiangle_cutoff=20.0, dose=1e4)
    return make_simulation_spec(grid, beam, thickness=CELL[2], slice_thickness=1.0, species=(8, 16, 42))


def presim_throughput(n_workers: int, items: int, gpts: int) -> dict:
    spec = _spec(gpts)
    with local_ray(num_cpus=n_workers):
        with tempfile.TemporaryDirectory() as cache:
            workers = make_workers(cache, n_workers)
            # warm-up: two single-item batches per worker, so every worker compiles (untimed)
            rep0 = presimulate(_pairs(2 * n_workers, seed=98), [spec], cache, batch_size=1, progress=False, workers=workers)
            rep = presimulate(_pairs(items, seed=1), [spec], cache, batch_size=4, progress=False, workers=workers)
    return {
        "workers": n_workers,
        "items": rep.n_computed,
        "seconds": rep.seconds,
        "items_per_s": rep.n_computed / rep.seconds,
        "per_item_compute_s": rep.compute_seconds / rep.n_computed,
        "warmup_run_s": rep0.seconds,
    }


def in_process_baseline(items: int, gpts: int) -> dict:
    """The same images simulated in this process, no Ray and no cache writes (after compiling)."""
    spec = _spec(gpts)
    sim = make_spec_simulator(spec)
    pairs = _pairs(items, seed=1)
    sim(pairs[0][1])
    t0 = time.perf_counter()
    for _, sp in pairs:
        sim(sp)
    dt = time.perf_counter() - t0
    return {"items": items, "seconds": dt, "items_per_s": items / dt}


def fanout_overhead(n_hyp: int, gpts: int, shards: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    images = (1.0 - 0.3 * rng.random((n_hyp, gpts, gpts))).astype(np.float32)
    exposure = 10.0
    counts = rng.poisson(images[3] * exposure).astype(np.float32)
    noise = make_noise_model("poisson")
    config = ScorerConfig("linear", noise)
    score = make_scorer(config).score
    np.asarray(score(counts, images, exposure).log_evidence)  # compile
    local = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(score(counts, images, exposure).log_evidence)
        local.append(time.perf_counter() - t0)
    with local_ray(num_cpus=2):
        with ShardedLibrary(config) as lib:
            per = n_hyp // shards
            for k in range(shards):
                lib.add_shard([f"h{j:08d}" for j in range(k * per, (k + 1) * per)], images[k * per : (k + 1) * per])
            lib.score(counts, exposure)  # actors compile
            dist = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                lib.score(counts, exposure)
                dist.append(time.perf_counter() - t0)
    return {
        "hypotheses": n_hyp,
        "image": [gpts, gpts],
        "shards": shards,
        "in_process_ms": 1e3 * statistics.median(local),
        "sharded_ms": 1e3 * statistics.median(dist),
        "fanout_overhead_ms": 1e3 * (statistics.median(dist) - statistics.median(local)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=48)
    p.add_argument("--gpts", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--fanout-hypotheses", type=int, default=2000)
    p.add_argument("--only-fanout", action="store_true", help="skip the pre-simulation measurement")
    args = p.parse_args()
    out = {"load_average_before": os.getloadavg()}
    if not args.only_fanout:
        out["in_process_no_ray"] = in_process_baseline(args.items, args.gpts)
        out["presim_1_worker"] = presim_throughput(1, args.items, args.gpts)
        out["presim_2_workers"] = presim_throughput(2, args.items, args.gpts)
        out["speedup_2_over_1"] = out["presim_2_workers"]["items_per_s"] / out["presim_1_worker"]["items_per_s"]
    out["fanout"] = fanout_overhead(args.fanout_hypotheses, 32, 2, args.repeats)
    # the fixed per-frame cost of the fan-out (object-store put, one call per shard, gather):
    # a library so small that scoring itself takes well under a millisecond
    out["fanout_fixed"] = fanout_overhead(16, 32, 2, args.repeats)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
