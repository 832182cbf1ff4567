"""hypotest's JAX multislice against abTEM 1.0.11, side by side in one run (issue 4's benchmark).

Workloads (issue 4):
  hrtem    SrTiO3 [001] 8x8x10 unit cells, 300 kV, 0.05 Å sampling (625 x 625), slices of half a
           unit cell (20), objective aperture, defocus, Cs and both partial-coherence envelopes;
  phonons  the same averaged over 8 frozen phonons;
  stem     HAADF (70-200 mrad) on a 6x6 MoS2 monolayer with one S vacancy, 80 kV, 30 mrad probe,
           64x64 positions over the cell, 0.05 Å on an FFT-friendly grid (384 x 672), 8 slices;
  prism    the same by PRISM with interpolation 2.

Printed per workload: abTEM median, ours median (compile time separately), speed-up, the FFT-only
time of the same grid, slice and wave count with XLA's FFT (2 FFTs per slice per wave: the
DESIGN 3 limit), ours / FFT-only, and for HRTEM the gradient time (image w.r.t. atom positions and
defocus) and its ratio to the forward. Targets (issue 4): HRTEM >= 3x faster than abTEM, STEM
multislice and PRISM >= 2x, ours within 1.5x of the FFT-only time, gradient <= 3x the forward.

    .venv/bin/python benchmarks/forward_vs_abtem.py            # the full table (minutes)
    .venv/bin/python benchmarks/forward_vs_abtem.py --small    # tiny cells: a quick check (~1 min)
    .venv/bin/python benchmarks/forward_vs_abtem.py --profile  # stages of one HRTEM forward

``--only hrtem,stem`` selects workloads, ``--devices 2`` splits STEM/PRISM scans over two XLA host
devices (one per core; set before JAX starts, which this script does), ``--no-abtem`` times ours
alone (e.g. on a GPU), ``--profile-trace DIR`` also writes a ``jax.profiler`` trace
(TensorBoard/Perfetto) of the HRTEM forward. A script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

WORKLOADS = ("hrtem", "phonons", "stem", "prism")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny cells and scans: a quick check of the script")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (median; phonons and STEM use fewer)")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    p.add_argument("--positions", type=int, default=None, help="STEM scan positions per axis (default 64)")
    p.add_argument("--batch", type=int, default=16, help="STEM probe positions per multislice batch")
    p.add_argument("--devices", type=int, default=1, help="XLA host devices to split STEM scans over")
    p.add_argument("--no-abtem", action="store_true", help="time ours only")
    p.add_argument("--profile", action="store_true", help="per-stage timing of one HRTEM forward")
    p.add_argument("--profile-trace", default=None, metavar="DIR", help="write a jax.profiler trace to DIR")
    args = p.parse_args(argv)
    only = tuple(w.strip() for w in args.only.split(",") if w.strip())
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}: choose from {WORKLOADS}")
    args.only = only
    return args


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices > 1:  # must precede the first import of jax
    _flag = f" --xla_force_host_platform_device_count={ARGS.devices}"
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + _flag
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from forward._pytree import replace  # noqa: E402
from forward.beam import make_beam, make_detector  # noqa: E402
from forward.constants import wavelength  # noqa: E402
from forward.grid import make_grid  # noqa: E402
from forward.hrtem import make_hrtem_simulator  # noqa: E402
from forward.phonons import make_frozen_phonon_simulator  # noqa: E402
from forward.potentials import make_potential_fn  # noqa: E402
from forward.prism import make_prism  # noqa: E402
from forward.propagation import fresnel_propagator, multislice, transmission_function  # noqa: E402
from forward.specimen import make_specimen  # noqa: E402
from forward.stem import make_scan, make_stem_simulator  # noqa: E402
from forward.waves import plane_wave  # noqa: E402

SRTIO3_A = 3.905  # Å
HRTEM_ENERGY = 300e3
HRTEM_CTF = dict(semiangle_cutoff=20.0, focal_spread=30.0, angular_spread=0.5)
HRTEM_ABERRATIONS = {"C10": -80.0, "C30": -2e5}
DW_SIGMA = 0.08  # Å per Cartesian direction (B ~ 0.5 Å^2)
STEM_ENERGY, SEMIANGLE, INNER, OUTER, N_SLICES, INTERP = 80e3, 30.0, 70.0, 200.0, 8, 2
ABTEM_CONFIG = {"diagnostics.progress_bar": False, "diagnostics.task_progress": False, "precision": "float32",
                "device": "cpu"}  # fmt: skip


# --- timing helpers ------------------------------------------------------------------------------


def block(x):
    return jax.block_until_ready(x)


def timed(fn, repeats):
    """``(last result, median [s], minimum [s])`` of ``repeats`` calls."""
    out, times = None, []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times), min(times)


def first_call(fn, repeats):
    """Compile + run once, then time: ``(result, median, compile estimate)``."""
    t = time.perf_counter()
    block(fn())
    first = time.perf_counter() - t
    out, med, _ = timed(lambda: block(fn()), repeats)
    return out, med, max(first - med, 0.0)


def fft_only(gpts, batch, n_calls, pairs, repeats=1):
    """Seconds for ``n_calls`` x ``pairs`` (fft2, multiply, ifft2) on ``[batch, *gpts]`` complex64:
    the FFTs a multislice of ``pairs`` slices must do for ``batch * n_calls`` waves (XLA FFT)."""
    kern = jnp.exp(1j * jnp.linspace(0, 1, gpts[0] * gpts[1]).reshape(gpts)).astype(jnp.complex64)

    @jax.jit
    def chain(x):
        def step(y, _):
            return jnp.fft.ifft2(jnp.fft.fft2(y, axes=(-2, -1)) * kern[None], axes=(-2, -1)), None

        return jax.lax.scan(step, x, None, length=pairs)[0]

    x0 = jnp.ones((batch,) + tuple(gpts), jnp.complex64)
    block(chain(x0))

    def run():
        x = x0
        for _ in range(n_calls):
            x = chain(x)
        return block(x)

    return timed(run, repeats)[1]


# --- structures ----------------------------------------------------------------------------------


def srtio3(reps):
    import ase

    atoms = ase.Atoms(
        "SrTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=[SRTIO3_A] * 3,
        pbc=True,
    )
    return atoms * reps


def mos2_vacancy(reps):
    import abtem
    import ase.build

    atoms = ase.build.mx2("MoS2", kind="2H", a=3.19, thickness=3.19, vacuum=2.0)
    atoms = abtem.orthogonalize_cell(atoms) * (reps, reps, 1)
    s = [i for i, a in enumerate(atoms) if a.symbol == "S"]
    del atoms[s[len(s) // 2]]
    return atoms


# --- HRTEM ---------------------------------------------------------------------------------------


def _hrtem_setup(small):
    atoms = srtio3((2, 2, 2) if small else (8, 8, 10))
    cell = atoms.cell.lengths()
    grid = make_grid(extent=cell[:2], sampling=0.05)
    sp = make_specimen(atoms.positions, atoms.numbers, cell, DW_SIGMA)
    beam = make_beam(HRTEM_ENERGY, aberrations=HRTEM_ABERRATIONS, **HRTEM_CTF)
    sim = make_hrtem_simulator(grid, cell[2], SRTIO3_A / 2, species=(8, 22, 38))
    return atoms, grid, sp, beam, sim


def _abtem_hrtem(atoms, gpts, n_phonons):
    import abtem

    abtem.config.set(ABTEM_CONFIG)
    if n_phonons:
        atoms = abtem.FrozenPhonons(atoms, num_configs=n_phonons, sigmas=DW_SIGMA, seed=0)
    pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=SRTIO3_A / 2, projection="infinite")
    ctf = abtem.CTF(energy=HRTEM_ENERGY, aberration_coefficients=HRTEM_ABERRATIONS, **HRTEM_CTF)

    def run():
        img = abtem.PlaneWave(energy=HRTEM_ENERGY).multislice(pot).apply_ctf(ctf).intensity()
        if n_phonons:
            img = img.mean(0)
        return img.compute().array

    return run, tuple(pot.gpts), len(pot)


def bench_hrtem(args, n_phonons):
    atoms, grid, sp, beam, sim = _hrtem_setup(args.small)
    n_ph = n_phonons if not args.small else min(n_phonons, 2)
    label = "HRTEM" if not n_ph else f"HRTEM {n_ph} phonons"
    reps = args.repeats if not n_ph else max(1, args.repeats // 2)
    key = jax.random.key(0)
    if n_ph:
        f = jax.jit(make_frozen_phonon_simulator(sim, n_ph))
        call = lambda: f(key, sp, beam)  # noqa: E731
    else:
        f = jax.jit(sim.simulate)
        call = lambda: f(sp, beam)  # noqa: E731
    _, ours, compile_s = first_call(call, reps)
    n_waves = max(1, n_ph)
    fft = fft_only(grid.gpts, 1, n_waves, sim.n_slices, reps)
    theirs = float("nan")
    if not args.no_abtem:
        run, gpts, n_sl = _abtem_hrtem(atoms, grid.gpts, n_ph)
        assert gpts == tuple(grid.gpts) and n_sl == sim.n_slices, (gpts, n_sl)
        run()  # warm up (FFTW plans, numba)
        theirs = timed(run, reps)[1]
    grad = float("nan")
    if not n_ph:
        w = jnp.asarray(np.random.default_rng(0).normal(size=grid.gpts), jnp.float32)

        def loss(pos, defocus):
            s = replace(sp, positions=pos)
            b = replace(beam, aberrations=replace(beam.aberrations, C10=-defocus))
            return jnp.sum(sim(s, b) * w)

        g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        pos = jnp.asarray(sp.positions, jnp.float32)
        block(g(pos, 80.0))
        grad = timed(lambda: block(g(pos, 80.0)), reps)[1]
    shape = f"{grid.gpts[0]}x{grid.gpts[1]}x{sim.n_slices}"
    return dict(name=f"{label} SrTiO3 {len(atoms)} atoms {shape}", abtem=theirs, ours=ours, compile=compile_s,
                fft=fft, grad=grad, err=float("nan"))  # fmt: skip


def profile_hrtem(args):
    """Per-stage times of one HRTEM forward (each stage jitted alone, inputs precomputed)."""
    atoms, grid, sp, beam, sim = _hrtem_setup(args.small)
    reps = args.repeats
    cell = atoms.cell.lengths()
    pot_fn = make_potential_fn(grid, cell[2], SRTIO3_A / 2, species=(8, 22, 38))
    lam = float(wavelength(HRTEM_ENERGY))
    prop = fresnel_propagator(grid, lam, sim.slice_thickness)
    stages = {}
    potential = jax.jit(pot_fn)
    V, stages["potential (structure factors + irfft2)"], _ = first_call(lambda: potential(sp), reps)
    trans = jax.jit(lambda v: transmission_function(v, HRTEM_ENERGY, grid=grid))
    T, stages["transmission exp(i sigma V), antialiased (2 FFT/slice)"], _ = first_call(lambda: trans(V), reps)
    ms = jax.jit(lambda t: multislice(plane_wave(grid), t, prop))
    psi, stages["propagation (2 FFT/slice)"], _ = first_call(lambda: ms(T), reps)
    image = jax.jit(sim.image_from_exit_wave)
    _, stages["imaging: CTF, envelopes, intensity (2 FFT)"], _ = first_call(lambda: image(psi, beam), reps)
    fused = jax.jit(sim.simulate)
    _, total, _ = first_call(lambda: fused(sp, beam), reps)
    fft = fft_only(grid.gpts, 1, 1, sim.n_slices, reps)
    print(f"\nHRTEM forward by stage ({len(atoms)} atoms, grid {grid.gpts}, {sim.n_slices} slices; median of {reps}):")
    print("| stage | time [s] | share of the sum |")
    print("|---|---|---|")
    s = sum(stages.values())
    for k, v in stages.items():
        print(f"| {k} | {v:.4f} | {v / s:.0%} |")
    print(f"| sum of stages | {s:.4f} | |")
    print(f"| fused forward (sim.simulate, one jit) | {total:.4f} | {total / s:.0%} of the sum |")
    print(f"| FFT-only, 2 FFT/slice | {fft:.4f} | fused = {total / fft:.2f}x |")
    if args.profile_trace:
        with jax.profiler.trace(args.profile_trace):
            block(fused(sp, beam))
        print(f"jax.profiler trace written to {args.profile_trace} (open with TensorBoard or Perfetto)")


# --- STEM ----------------------------------------------------------------------------------------


def _stem_setup(args):
    import abtem

    atoms = mos2_vacancy(2 if args.small else 6)
    cell = np.diag(np.asarray(atoms.cell))
    grid = make_grid(extent=cell[:2], sampling=0.05)
    n = args.positions or (8 if args.small else 64)
    spec = make_specimen(atoms.positions, atoms.numbers, cell)
    scan = make_scan(end=cell[:2], gpts=n)
    beam = make_beam(STEM_ENERGY, semiangle_cutoff=SEMIANGLE,
                     detector=make_detector("stem_annular", inner=INNER, outer=OUTER))  # fmt: skip
    devices = jax.devices()[: args.devices] if args.devices > 1 else None
    dz = cell[2] / N_SLICES
    pot = abtem.Potential(atoms, gpts=grid.gpts, slice_thickness=dz, projection="infinite", parametrization="lobato")
    gs = abtem.GridScan(start=(0, 0), end=tuple(cell[:2]), gpts=n)
    det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
    return atoms, cell, grid, dz, n, spec, scan, beam, devices, pot, gs, det


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def bench_stem(args):
    import abtem

    atoms, cell, grid, dz, n, spec, scan, beam, devices, pot, gs, det = _stem_setup(args)
    reps = max(1, args.repeats // 5) if not args.small else args.repeats
    sim = make_stem_simulator(grid, cell[2], dz, scan, batch_size=args.batch, devices=devices)
    img, ours, compile_s = first_call(lambda: sim(spec, beam), reps)
    n_batches = -(-n * n // args.batch)
    fft = fft_only(grid.gpts, args.batch, n_batches, N_SLICES, reps)  # 2 x n_slices FFTs per position
    theirs, err = float("nan"), float("nan")
    if not args.no_abtem:
        probe = abtem.Probe(semiangle_cutoff=SEMIANGLE, energy=STEM_ENERGY)
        with abtem.config.set(ABTEM_CONFIG):
            ref, theirs, _ = timed(lambda: probe.scan(pot, scan=gs, detectors=det, lazy=True).compute(), reps)
        err = _rel(img, ref.array)
    name = f"STEM HAADF MoS2 {len(atoms)} atoms, {n}x{n} positions, {grid.gpts[0]}x{grid.gpts[1]}x{N_SLICES}"
    return dict(name=name, abtem=theirs, ours=ours, compile=compile_s, fft=fft, grad=float("nan"), err=err)


def bench_prism(args):
    """PRISM, ours and abTEM timed alternately so that load changes hit both."""
    import abtem

    atoms, cell, grid, dz, n, spec, scan, beam, devices, pot, gs, det = _stem_setup(args)
    reps = max(1, args.repeats // 5) if not args.small else args.repeats
    prism = make_prism(grid, cell[2], dz, energy=STEM_ENERGY, expansion_cutoff=SEMIANGLE, interpolation=INTERP,
                       devices=devices)  # fmt: skip

    def run():
        return block(prism.apply(prism.build(spec), beam, scan))

    img, _, compile_s = first_call(run, 1)
    ours_t, ab_t, ref = [], [], None
    for _ in range(reps):
        img, t, _ = timed(run, 1)
        ours_t.append(t)
        if not args.no_abtem:
            with abtem.config.set(ABTEM_CONFIG):
                smx = abtem.SMatrix(potential=pot, energy=STEM_ENERGY, semiangle_cutoff=SEMIANGLE,
                                    interpolation=INTERP)  # fmt: skip
                ref, t, _ = timed(lambda: smx.scan(scan=gs, detectors=det, lazy=True).compute(), 1)
            ab_t.append(t)
    sm = prism.build(spec)
    n_waves, window = sm.array.shape[0], sm.window_gpts
    # build: 2 FFTs per slice per plane wave; apply: ~1 FFT per position on the window
    fft = fft_only(grid.gpts, 16, -(-n_waves // 16), N_SLICES) + fft_only(window, 64, -(-n * n // 64), 1) / 2
    name = f"STEM PRISM f={INTERP} ({n_waves} waves, window {window[0]}x{window[1]})"
    return dict(name=name, abtem=statistics.median(ab_t) if ab_t else float("nan"),
                ours=statistics.median(ours_t), compile=compile_s, fft=fft, grad=float("nan"),
                err=float("nan") if ref is None else _rel(img, ref.array))  # fmt: skip


# --- main ----------------------------------------------------------------------------------------


def print_table(rows):
    print("\n| workload | abTEM [s] | ours [s] | compile [s] | speed-up | FFT-only [s] | ours/FFT | "
          "grad [s] | grad/fwd | rel. L2 vs abTEM |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        grad = "" if np.isnan(r["grad"]) else f"{r['grad']:.3f} | {r['grad'] / r['ours']:.2f}"
        grad = grad or " | "
        err = "" if np.isnan(r["err"]) else f"{r['err']:.1e}"
        print(f"| {r['name']} | {r['abtem']:.3f} | {r['ours']:.3f} | {r['compile']:.1f} | "
              f"{r['abtem'] / r['ours']:.2f}x | {r['fft']:.3f} | {r['ours'] / r['fft']:.2f} | "
              f"{grad} | {err} |")  # fmt: skip


def main(args):
    import abtem

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(f"# jax {jax.__version__} on {jax.devices()}, abtem {abtem.__version__}"
          f"{', small workloads' if args.small else ''}")  # fmt: skip
    if args.profile:
        profile_hrtem(args)
        return
    rows = []
    bench = {"hrtem": lambda: bench_hrtem(args, 0), "phonons": lambda: bench_hrtem(args, 8),
             "stem": lambda: bench_stem(args), "prism": lambda: bench_prism(args)}  # fmt: skip
    for w in args.only:
        rows.append(bench[w]())
        print(f"# {rows[-1]['name']}: ours {rows[-1]['ours']:.3f} s, abTEM {rows[-1]['abtem']:.3f} s", flush=True)
    print_table(rows)
    print("\n# rel. L2 vs abTEM: end to end against abTEM's own potential, whose pixel (sinc) correction and")
    print("# bilinear deposit of off-grid atoms differ from our exact Fourier placement by ~0.5-1 %; the tests")
    print("# (tests/forward) compare like with like and agree to ~1e-6.")
    print(f"# load average after the run: {os.getloadavg()}")


if __name__ == "__main__":
    main(ARGS)
