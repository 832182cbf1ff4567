"""Inference latency: per-frame scoring, MAP refinement, NUTS, experiment design.

    .venv/bin/python benchmarks/inference_latency.py            # the sizes of issue 6
    .venv/bin/python benchmarks/inference_latency.py --small    # small smoke run (= --quick)
    .venv/bin/python benchmarks/inference_latency.py --only fast  # the fast scorer only

1. Scoring one 256x256 frame (0.1 Å pixels) against 1,000 cached hypothesis images of a
   lattice library (pristine 8x8 columns; at each column: occupancies 0 to 0.9 and
   displacements 0.1 to 0.5 Å, so many hypotheses are nearly degenerate at low dose), frames
   registered (known shift), at 10, 100, 1e3 and 1e4 e-/Å², side by side:
   - the fast scorer (:func:`inference.make_scorer`, ``kind="fast"``: binned screen + exact stage), p50/p99
     over ``--frames`` frames after a warm-up pass over the same frames (which compiles each
     power-of-two bucket of exactly scored hypotheses once; the compile time is reported);
   - the exact scorer for a known shift (``kind="linear"``), p50 over a few
     frames, and (``--laplace-frames``, first dose only) the Laplace scorer with the shift
     marginalised (``kind="laplace"``);
   - one plain pass over the cached images: the Poisson log-likelihood at fixed nuisance
     (one logarithm per cached pixel) and a bare sum (memory bandwidth);
   with the ratios fast/plain and exact/fast. Goal: fast p99 <= 100 ms.
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
    fourier_shift,
    log_likelihood,
    ScorerConfig,
    make_log_density,
    make_noise_model,
    make_nuisance_prior,
    make_map_refiner,
    make_scorer,
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


def _lattice_library(n_hyp: int, size: int, sampling: float):
    """``[n_hyp, size, size]`` images: a square lattice of Gaussian columns (3.2 Å apart at
    0.1 Å pixels) and, per column, occupancies 0, 0.25, 0.5, 0.75, 0.9 and displacements of
    0.1, 0.25, 0.5 Å along +-x, +-y (the analytic model of tests/inference/_model.py)."""
    n_col = max(2, int(round(size * sampling / 3.2)))
    pitch = size * sampling / n_col
    base = np.stack(np.meshgrid(np.arange(n_col), np.arange(n_col), indexing="ij"), -1).reshape(-1, 2) * pitch + pitch / 2
    occs, poss = [np.ones(len(base))], [base]
    for k in range(len(base)):
        for o in (0.0, 0.25, 0.5, 0.75, 0.9):
            oc = np.ones(len(base))
            oc[k] = o
            occs.append(oc)
            poss.append(base)
        for d in (0.1, 0.25, 0.5):
            for v in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                p = base.copy()
                p[k] += d * np.asarray(v)
                occs.append(np.ones(len(base)))
                poss.append(p)
    reps = -(-n_hyp // len(occs))
    occs, poss = (occs * reps)[:n_hyp], (poss * reps)[:n_hyp]
    sim = M.make_simulate_fn((size, size), sampling)
    p0 = M.base_params(positions=base)
    one = lambda pos, oc: sim(dict(p0, positions=pos, occupancy=oc), M.beam())  # noqa: E731
    images = jax.lax.map(lambda a: one(*a), (jnp.asarray(np.array(poss), jnp.float32), jnp.asarray(np.array(occs), jnp.float32)), batch_size=50)
    return images


def _scorer(kind, noise, prior, **kw):
    """The one scorer with the prior as given (absolute background: the figures compare with the
    plain log-likelihood pass at the same prior)."""
    return make_scorer(ScorerConfig(kind, noise, prior, background_relative=False, **kw))


def _percentiles_ms(times):
    p50, p99 = np.percentile(np.asarray(times), [50, 99])
    return round(float(1e3 * p50), 1), round(float(1e3 * p99), 1)


def bench_scoring(n_hyp: int, size: int, n_frames: int, doses=(10.0, 100.0, 1e3, 1e4), n_exact_frames: int = 3, n_laplace_frames: int = 0,
                  n_refine: int = 1, backend: str = "auto") -> list[dict]:
    sampling = 0.1
    images = _lattice_library(n_hyp, size, sampling)
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior(scale_sd=0.1, background_mean=0.02, background_sd=0.05)
    fast_sc = _scorer("fast", noise, prior, bin_factor=4, n_refine=n_refine, backend=backend)
    t_prep, cache = _timed(lambda: fast_sc.prepare(images))
    fast = fast_sc.score
    exact = _scorer("linear", noise, prior).score
    rows = []
    for dose in doses:
        e = dose * sampling * sampling
        key = jax.random.fold_in(jax.random.key(0), int(dose))
        kt, ks, kn = jax.random.split(key, 3)
        truths = np.asarray(jax.random.randint(kt, (n_frames,), 0, n_hyp))
        scales = 1.0 + 0.05 * np.asarray(jax.random.normal(ks, (n_frames,)))
        frames = [
            np.asarray(sample_counts(k, noise, e * (s * images[t] + 0.02)))
            for k, t, s in zip(jax.random.split(kn, n_frames), truths, scales)
        ]
        run = lambda y: fast(y, cache, e).log_evidence  # noqa: E731
        warm = [_timed(run, y)[0] for y in frames]  # compiles each bucket once
        times, kept, n_exact, n_within, top1 = [], 0, [], [], 0
        for y, t in zip(frames, truths):
            dt, _ = _timed(run, y)
            times.append(dt)
            fs = fast(y, cache, e)
            kept += bool(fs.exact[t])
            n_exact.append(int(np.sum(np.asarray(fs.exact))))
            n_within.append(int(fs.n_within_margin))
            top1 += int(np.argmax(np.asarray(fs.log_evidence))) == t
        ex_run = lambda y: exact(y, images, e).log_evidence  # noqa: E731
        _timed(ex_run, frames[0])
        t_exact = [_timed(ex_run, y)[0] for y in frames[:n_exact_frames]]
        dev = []
        for y in frames[:n_exact_frames]:
            fs, ex = fast(y, cache, e), exact(y, images, e)
            m = np.asarray(fs.exact)
            fl, el = np.asarray(fs.log_evidence, np.float64), np.asarray(ex.log_evidence, np.float64)
            dev.append(float(np.max(np.abs((fl - fl.max()) - (el - el.max()))[m])))
        plain = jax.jit(lambda y, im: log_likelihood(noise, y, e * im))
        bare = jax.jit(lambda im: jnp.sum(im, axis=(1, 2)))
        _timed(plain, frames[0], images)
        _timed(bare, images)
        t_plain = float(np.median([_timed(plain, y, images)[0] for y in frames[:10]]))
        t_bare = float(np.median([_timed(bare, images)[0] for _ in range(10)]))
        p50, p99 = _percentiles_ms(times)
        row = {
            "dose_e_per_A2": dose,
            "hypotheses": n_hyp,
            "frame": f"{size}x{size}",
            "n_refine": n_refine,
            "backend": backend,
            "fast_p50_ms": p50,
            "fast_p99_ms": p99,
            "fast_first_pass_max_s": round(max(warm), 2),
            "exact_scored_mean": round(float(np.mean(n_exact)), 1),
            "within_margin_mean": round(float(np.mean(n_within)), 1),
            "truth_scored_exactly": f"{kept}/{n_frames}",
            "top1_correct": f"{top1}/{n_frames}",
            "max_abs_log_bf_error_vs_exact": round(max(dev), 4),
            "exact_linear_p50_ms": round(1e3 * float(np.median(t_exact)), 1),
            "plain_loglik_pass_ms": round(1e3 * t_plain, 1),
            "bare_sum_pass_ms": round(1e3 * t_bare, 1),
            "ratio_fast_p50_to_plain": round(float(p50 / (1e3 * t_plain)), 3),
            "ratio_fast_p99_to_plain": round(float(p99 / (1e3 * t_plain)), 3),
            "speedup_exact_over_fast_p50": round(float(np.median(t_exact) * 1e3 / p50), 1),
            "cache_prepare_s": round(t_prep, 3),
        }
        if n_laplace_frames and dose == doses[0]:  # ~10-80 s per frame here: one dose only
            lap = _scorer("laplace", noise, prior).score
            lap_run = lambda y: lap(y, images, e).log_evidence  # noqa: E731
            _timed(lap_run, frames[0])
            row["exact_laplace_p50_ms"] = round(1e3 * float(np.median([_timed(lap_run, y)[0] for y in frames[:n_laplace_frames]])), 1)
        rows.append(row)
        print("scoring:", row, flush=True)
    return rows


def bench_fast_shift(n_hyp: int, size: int, n_frames: int, dose: float = 1e3, backend: str = "auto") -> dict:
    """The fast scorer with a known sub-pixel shift (screen and exact stage shift the images)."""
    sampling = 0.1
    images = _lattice_library(n_hyp, size, sampling)
    noise = make_noise_model("poisson")
    prior = make_nuisance_prior(scale_sd=0.1, background_mean=0.02, background_sd=0.05)
    sc = _scorer("fast", noise, prior, bin_factor=4, backend=backend)
    cache, fast = sc.prepare(images), sc.score
    e = dose * sampling * sampling
    shift = np.array([0.3, -0.2], np.float32)
    keys = jax.random.split(jax.random.key(5), n_frames)
    frames = [np.asarray(sample_counts(k, noise, e * (fourier_shift(images[i % n_hyp], shift) + 0.02))) for i, k in enumerate(keys)]
    run = lambda y: fast(y, cache, e, shift=shift).log_evidence  # noqa: E731
    for y in frames:
        _timed(run, y)
    p50, p99 = _percentiles_ms([_timed(run, y)[0] for y in frames])
    row = {"dose_e_per_A2": dose, "hypotheses": n_hyp, "frame": f"{size}x{size}", "shift_px": [0.3, -0.2], "backend": backend, "fast_p50_ms": p50, "fast_p99_ms": p99}
    print("scoring with known shift:", row, flush=True)
    return row


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
    ap.add_argument("--small", "--quick", dest="small", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--laplace-frames", type=int, default=1, help="frames for the Laplace scorer at the first dose (0: skip)")
    ap.add_argument("--only", choices=("scoring", "fast", "refine", "design"), default=None)
    ap.add_argument("--n-refine", type=int, default=1, help="Newton steps of the fast scorer's exact stage from the screen's MAP")
    ap.add_argument("--exact-frames", type=int, default=3, help="frames compared with the exact scorer per dose")
    ap.add_argument("--doses", default="10,100,1e3,1e4", help="comma-separated doses [e-/Å²] for the scoring rows")
    ap.add_argument("--backend", choices=("both", "cpu", "jax", "auto"), default="both",
                    help="fast scorer backend(s): the CPU kernel and the jitted XLA stages, side by side with 'both'")
    args = ap.parse_args()
    doses = tuple(float(d) for d in args.doses.split(","))
    print("devices:", jax.devices())
    if args.small:
        for backend in ("jax", "cpu"):
            bench_scoring(64, 64, 6, doses=(10.0, 1e3), n_exact_frames=2, n_laplace_frames=1, backend=backend)
            bench_fast_shift(64, 64, 4, backend=backend)
        if args.only is None:
            print("refine:", bench_refine(50, 50))
            print("design:", bench_design(4, 4))
        return
    backends = ("jax", "cpu") if args.backend == "both" else (args.backend,)
    if args.only in (None, "scoring", "fast"):
        for i, backend in enumerate(backends):
            bench_scoring(1000, 256, args.frames, doses, n_exact_frames=args.exact_frames,
                          n_laplace_frames=0 if args.only == "fast" or i else args.laplace_frames, n_refine=args.n_refine, backend=backend)
        for backend in backends:
            bench_fast_shift(1000, 256, min(args.frames, 20), backend=backend)
    if args.only in (None, "refine"):
        print("refine:", bench_refine(300, 300))
    if args.only in (None, "design"):
        print("design:", bench_design(16, 10))


if __name__ == "__main__":
    main()
