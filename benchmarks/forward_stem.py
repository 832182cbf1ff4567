"""STEM HAADF benchmark: our multislice and PRISM against abTEM 1.0.11, side by side in one run.

Workload (issue 4): a 6x6 MoS2 monolayer (ase.build.mx2, orthogonal cell, 215 atoms with one S
vacancy), 80 kV, 30 mrad probe, HAADF 70-200 mrad, 64x64 probe positions over the cell, 0.05 Å
sampling on an FFT-friendly grid (384 x 672), 8 slices; then the same with PRISM (interpolation
2). For each: abTEM median, ours median (compile time separate), speed-up, and the FFT-only time
of the same work (the FFTs our implementation performs, timed alone with the same XLA FFT).

Run:  .venv/bin/python benchmarks/forward_stem.py [--reps N] [--positions 64] [--devices 2]

``--devices 2`` splits the scan over two XLA host devices (one per core); the flag must be set
before JAX starts, which this script does. This is a script, not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=1, help="timed repetitions per method (median)")
    p.add_argument("--positions", type=int, default=64, help="scan positions per axis")
    p.add_argument("--batch", type=int, default=16, help="probe positions per multislice batch")
    p.add_argument("--devices", type=int, default=1, help="XLA host devices to split the scan over")
    p.add_argument("--skip-abtem", action="store_true", help="time ours only")
    p.add_argument("--only", choices=("all", "multislice", "prism"), default="all", help="workloads to run")
    return p.parse_args()


ARGS = _parse()
if ARGS.devices > 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    )
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import abtem  # noqa: E402
import ase.build  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from forward.beam import make_beam, make_detector  # noqa: E402
from forward.grid import make_grid  # noqa: E402
from forward.prism import make_prism  # noqa: E402
from forward.specimen import make_specimen  # noqa: E402
from forward.stem import make_scan, make_stem_simulator  # noqa: E402

ENERGY, SEMIANGLE, INNER, OUTER, N_SLICES, INTERP = 80e3, 30.0, 70.0, 200.0, 8, 2


def mos2_vacancy():
    atoms = ase.build.mx2("MoS2", kind="2H", a=3.19, thickness=3.19, vacuum=2.0)
    atoms = abtem.orthogonalize_cell(atoms) * (6, 6, 1)
    s = [i for i, a in enumerate(atoms) if a.symbol == "S"]
    del atoms[s[len(s) // 2]]
    return atoms


def timed(fn, reps):
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def block(x):
    return jax.block_until_ready(x)


def fft_only(shape, batch, n_batches, pairs):
    """Time ``n_batches`` x ``pairs`` (fft2, ifft2) on ``[batch, *shape]`` complex64 with XLA."""

    def chain(x):
        def step(y, _):
            return jnp.fft.ifft2(jnp.fft.fft2(y, axes=(-2, -1)), axes=(-2, -1)), None

        return jax.lax.scan(step, x, None, length=pairs)[0]

    f = jax.jit(chain)
    x = jnp.ones((batch,) + tuple(shape), jnp.complex64)
    block(f(x))
    t = time.perf_counter()
    for _ in range(n_batches):
        x = f(x)
    block(x)
    return time.perf_counter() - t


def main():
    reps = ARGS.reps
    atoms = mos2_vacancy()
    cell = np.diag(np.asarray(atoms.cell))
    grid = make_grid(extent=cell[:2], sampling=0.05)
    dz = cell[2] / N_SLICES
    n = ARGS.positions
    spec = make_specimen(atoms.positions, atoms.numbers, cell)
    scan = make_scan(end=cell[:2], gpts=n)
    beam = make_beam(
        ENERGY, semiangle_cutoff=SEMIANGLE, detector=make_detector("stem_annular", inner=INNER, outer=OUTER)
    )
    devices = jax.devices()[: ARGS.devices] if ARGS.devices > 1 else None
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(f"# jax {jax.__version__} ({jax.devices()}), abtem {abtem.__version__}")
    print(f"# MoS2 {len(atoms)} atoms, cell {cell.round(3).tolist()} Å, grid {grid.gpts}, {N_SLICES} slices, "
          f"{n}x{n} positions, batch {ARGS.batch}, devices {ARGS.devices}")  # fmt: skip
    rows = []
    pot = abtem.Potential(atoms, gpts=grid.gpts, slice_thickness=dz, projection="infinite", parametrization="lobato")
    gs = abtem.GridScan(start=(0, 0), end=tuple(cell[:2]), gpts=n)
    det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
    n_pos = n * n
    if ARGS.only in ("all", "multislice"):
        rows.append(_multislice(cell, grid, dz, n, spec, scan, beam, devices, pot, gs, det, reps))
    if ARGS.only in ("all", "prism"):
        rows.append(_prism(cell, grid, dz, n_pos, spec, scan, beam, devices, pot, gs, det, reps))
    print("| workload | abTEM [s] | ours [s] | compile [s] | speed-up | FFT-only [s] | ours/FFT | rel. L2 vs abTEM |")
    print("|---|---|---|---|---|---|---|---|")
    for name, a, o, c, f, e in rows:
        print(f"| {name} | {a:.2f} | {o:.2f} | {c:.2f} | {a / o:.2f}x | {f:.2f} | {o / f:.2f} | {e:.2e} |")


def _multislice(cell, grid, dz, n, spec, scan, beam, devices, pot, gs, det, reps):
    sim = make_stem_simulator(grid, cell[2], dz, scan, batch_size=ARGS.batch, devices=devices)
    t = time.perf_counter()
    ours_img = block(sim(spec, beam))
    first = time.perf_counter() - t
    ours_img, ours_ms = timed(lambda: block(sim(spec, beam)), reps)
    compile_ms = max(first - ours_ms, 0.0)  # first call = compile + one run
    n_pos = n * n
    n_b = -(-n_pos // ARGS.batch)
    # our FFTs: 1 (probe) + n_slices (forward) + n_slices - 1 (inverse) per position
    fft_ms = fft_only(grid.gpts, ARGS.batch, n_b, N_SLICES)  # 2 x n_slices FFTs per position
    ab_ms = float("nan")
    err = float("nan")
    if not ARGS.skip_abtem:
        probe = abtem.Probe(semiangle_cutoff=SEMIANGLE, energy=ENERGY)
        with abtem.config.set({"diagnostics.progress_bar": False}):
            ref, ab_ms = timed(lambda: probe.scan(pot, scan=gs, detectors=det, lazy=True).compute(), reps)
        err = float(np.linalg.norm(np.asarray(ours_img) - ref.array) / np.linalg.norm(ref.array))
    return ("STEM multislice", ab_ms, ours_ms, compile_ms, fft_ms, err)


def _prism(cell, grid, dz, n_pos, spec, scan, beam, devices, pot, gs, det, reps):
    """PRISM, ours and abTEM timed alternately (``reps`` rounds) so load changes hit both."""
    prism = make_prism(
        grid, cell[2], dz, energy=ENERGY, expansion_cutoff=SEMIANGLE, interpolation=INTERP, devices=devices
    )

    def run_prism():
        return block(prism.apply(prism.build(spec), beam, scan))

    t = time.perf_counter()
    p_img = run_prism()
    first = time.perf_counter() - t
    ours_t, ab_t, pref = [], [], None
    for _ in range(reps):
        p_img, t = timed(run_prism, 1)
        ours_t.append(t)
        if not ARGS.skip_abtem:
            with abtem.config.set({"diagnostics.progress_bar": False}):
                smx = abtem.SMatrix(potential=pot, energy=ENERGY, semiangle_cutoff=SEMIANGLE, interpolation=INTERP)
                pref, t = timed(lambda: smx.scan(scan=gs, detectors=det, lazy=True).compute(), 1)
            ab_t.append(t)
    p_ms = statistics.median(ours_t)
    ab_p = statistics.median(ab_t) if ab_t else float("nan")
    p_compile = max(first - p_ms, 0.0)
    sm_obj = prism.build(spec)
    _, build_ms = timed(lambda: block(prism.build(spec).array), 1)
    n_waves = sm_obj.array.shape[0]
    window = sm_obj.window_gpts
    p_fft = fft_only(grid.gpts, 16, -(-n_waves // 16), N_SLICES) + fft_only(window, 64, -(-n_pos // 64), 1) / 2
    p_err = float("nan") if pref is None else float(
        np.linalg.norm(np.asarray(p_img) - pref.array) / np.linalg.norm(pref.array)
    )
    print(f"# PRISM runs ours {[round(t, 2) for t in ours_t]} s, abTEM {[round(t, 2) for t in ab_t]} s")
    print(f"# PRISM build alone {build_ms:.2f} s, window {window}")
    return (f"STEM PRISM f={INTERP} ({n_waves} waves)", ab_p, p_ms, p_compile, p_fft, p_err)


if __name__ == "__main__":
    main()
