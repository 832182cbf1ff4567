"""Inference latency: per-frame scoring, MAP refinement, NUTS, experiment design.

    .venv/bin/python benchmarks/inference_latency.py            # the sizes of issue 6
    .venv/bin/python benchmarks/inference_latency.py --quick    # small smoke run

1. Scoring one 256x256 frame against 1,000 cached hypothesis images with the real-time scorer
   (:func:`inference.make_linear_scorer`: registered frame, scale and background marginalised):
   p50/p99 over ``--frames`` frames, and the ratio to one plain pass over the cached images
   (the Poisson log-likelihood at fixed nuisance, and a bare sum). Goal p99 <= 100 ms.
2. MAP refinement (:func:`inference.map_refine`, 100 L-BFGS steps) of 50 column positions +
   defocus + thickness in the analytic test model (tests/inference/_model.py), 96x96 pixels.
   Goal <= 10 s.
3. NUTS (:func:`inference.nuts_refine`) of the same 102 parameters, 1 chain, from the MAP.
4. Design ranking (:func:`inference.rank_conditions`) of 16 conditions for 10 hypotheses,
   64 Monte Carlo draws, 64x64 pixels. Goal <= 5 s.

Times are wall-clock from ``time.perf_counter`` after ``block_until_ready``; the first call
(compilation) is reported separately. This machine's 2 cores are shared: read ratios first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import (  # noqa: E402
    SamplerConfig,
    design_images,
    log_likelihood,
    make_linear_scorer,
    make_log_density,
    make_noise_model,
    make_nuisance_prior,
    make_map_refiner,
    map_refine,
    nuts_refine,
    rank_conditions,
    sample_counts,
)
from tests.inference import _model as M  # noqa: E402


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t, out


def bench_scoring(n_hyp: int, size: int, n_frames: int) -> dict:
    key = jax.random.key(0)
    k1, k2 = jax.random.split(key)
    images = 0.1 + jax.random.uniform(k1, (n_hyp, size, size), jnp.float32)
    noise = make_noise_model("poisson")
    e = 100.0 * 0.04  # 100 e-/Å², 0.2 Å pixels
    score = make_linear_scorer(noise, make_nuisance_prior())
    frames = [sample_counts(k, noise, e * images[i % n_hyp]) for i, k in enumerate(jax.random.split(k2, n_frames))]
    compile_s, _ = _timed(lambda y: score(y, images, e).log_evidence, frames[0])
    times = [_timed(lambda y: score(y, images, e).log_evidence, y)[0] for y in frames]
    plain = jax.jit(lambda y, im: log_likelihood(noise, y, e * im))
    bare = jax.jit(lambda im: jnp.sum(im, axis=(1, 2)))
    _timed(plain, frames[0], images)
    _timed(bare, images)
    t_plain = np.median([_timed(plain, y, images)[0] for y in frames[:10]])
    t_bare = np.median([_timed(bare, images)[0] for _ in range(10)])
    p50, p99 = np.percentile(times, [50, 99])
    return {
        "hypotheses": n_hyp,
        "frame": f"{size}x{size}",
        "compile_s": round(compile_s, 2),
        "p50_ms": round(float(1e3 * p50), 1),
        "p99_ms": round(float(1e3 * p99), 1),
        "plain_loglik_pass_ms": round(float(1e3 * t_plain), 1),
        "bare_sum_pass_ms": round(float(1e3 * t_bare), 1),
        "ratio_p50_to_plain_loglik": round(float(p50 / t_plain), 2),
        "ratio_p50_to_bare_sum": round(float(p50 / t_bare), 2),
    }


def _fifty_columns(rng):
    g = np.stack(np.meshgrid(np.arange(7), np.arange(7), indexing="ij"), -1).reshape(-1, 2) * 3.4 + 1.0
    pos = np.concatenate([g, [[12.7, 12.7]]]) + rng.uniform(-0.2, 0.2, (50, 2))
    return pos


def bench_refine(num_warmup: int, num_samples: int) -> dict:
    rng = np.random.default_rng(0)
    gpts, sampling = (96, 96), 0.25
    sim = M.make_simulate_fn(gpts, sampling)
    truth = M.base_params(positions=_fifty_columns(rng), defocus=80.0, thickness=60.0)
    beam = M.beam(defocus=50.0)
    noise = make_noise_model("poisson")
    e = 1000.0 * sampling**2
    y = sample_counts(jax.random.key(1), noise, e * sim(truth, beam))
    start = dict(truth, positions=truth["positions"] + jnp.asarray(rng.normal(0, 0.05, (50, 2)), jnp.float32), defocus=jnp.asarray(60.0), thickness=jnp.asarray(50.0))
    ld, init, _ = make_log_density(sim, start, beam, y, noise, e, free=("positions", "defocus", "thickness"))
    t_map, (state, info) = _timed(lambda: map_refine(ld, init, steps=100))
    refine = make_map_refiner(ld, init, steps=100)
    refine(init)
    t_map2, (state, info) = _timed(refine, init)
    err = float(jnp.sqrt(jnp.mean((state.params["positions"] - truth["positions"]) ** 2)))
    t = time.perf_counter()
    idata = nuts_refine(jax.random.key(2), ld, state.params, SamplerConfig(num_warmup=num_warmup, num_samples=num_samples, num_chains=1))
    t_nuts = time.perf_counter() - t
    return {
        "parameters": 102,
        "frame": f"{gpts[0]}x{gpts[1]}",
        "map_100_steps_with_compile_s": round(t_map, 2),
        "map_100_steps_compiled_s": round(t_map2, 2),
        "map_position_rms_error_A": round(err, 4),
        "map_grad_norm": float(info.grad_norm),
        "nuts_s": round(t_nuts, 1),
        "nuts_draws": f"{num_warmup} warmup + {num_samples}",
        "nuts_divergences": int(idata.sample_stats["diverging"].values.sum()),
    }


def bench_design(n_cond: int, n_hyp: int) -> dict:
    rng = np.random.default_rng(3)
    sim = M.make_simulate_fn((64, 64), 0.25)
    base = _fifty_columns(rng)[:16] * (16.0 / 24.0)
    hyps = []
    for h in range(n_hyp):
        occ = np.ones(16)
        occ[h % 16] = 0.0 if h else 1.0
        hyps.append(M.base_params(positions=base, occupancy=occ))
    beams = [M.beam(defocus=d) for d in np.linspace(0, 900, n_cond)]
    images = design_images(sim, hyps, beams)
    lp = jnp.log(jnp.ones(n_hyp) / n_hyp)
    noise = make_noise_model("poisson")
    run = lambda k: rank_conditions(k, images, [10.0] * n_cond, 0.0625, lp, noise, n_samples=64)  # noqa: E731
    t_first, _ = _timed(run, jax.random.key(0))
    t_warm, props = _timed(run, jax.random.key(1))
    return {
        "conditions": n_cond,
        "hypotheses": n_hyp,
        "first_call_s": round(t_first, 2),
        "ranking_s": round(t_warm, 3),
        "best": props[0].index,
        "best_gain_bits": round(props[0].expected_gain_bits, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--only", choices=("scoring", "refine", "design"), default=None)
    args = ap.parse_args()
    print("devices:", jax.devices())
    if args.quick:
        print("scoring:", bench_scoring(50, 64, 10))
        print("refine:", bench_refine(50, 50))
        print("design:", bench_design(4, 4))
        return
    if args.only in (None, "scoring"):
        print("scoring:", bench_scoring(1000, 256, args.frames))
    if args.only in (None, "refine"):
        print("refine:", bench_refine(300, 300))
    if args.only in (None, "design"):
        print("design:", bench_design(16, 10))


if __name__ == "__main__":
    main()
