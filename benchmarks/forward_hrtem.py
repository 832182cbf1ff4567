"""HRTEM benchmark: hypotest's JAX multislice against abTEM 1.0.11, side by side in one run.

Workload (issue 4): SrTiO3 [001], 8 x 8 x 10 unit cells, 300 kV, 0.05 Å sampling (625 x 625),
slices of half a unit cell (20 slices), objective lens with aperture, defocus, Cs and both
partial-coherence envelopes; then the same with 8 frozen phonons.

Printed per workload: abTEM median, ours median (compile time separately), speed-up, the FFT-only
time of the same grid and slice count (2 FFTs per slice per wave, the DESIGN 3 limit, plus the 5
FFTs per slice that this formulation needs: 1/2 for the potential, 2 for the antialiased
transmission function, 2 for the propagation), and the gradient time (image w.r.t. atom positions
and defocus).

    .venv/bin/python benchmarks/forward_hrtem.py [--repeats 5] [--quick]

A script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from forward.beam import make_beam  # noqa: E402
from forward.grid import make_grid  # noqa: E402
from forward.hrtem import make_hrtem_simulator  # noqa: E402
from forward.phonons import make_frozen_phonon_simulator  # noqa: E402
from forward.specimen import make_specimen  # noqa: E402

A = 3.905  # SrTiO3 lattice constant [Å]
ENERGY = 300e3
CTF = dict(semiangle_cutoff=20.0, focal_spread=30.0, angular_spread=0.5)
ABERRATIONS = {"C10": -80.0, "C30": -2e5}
DW_SIGMA = 0.08  # Å per Cartesian direction (B ~ 0.5 Å^2)


def srtio3(reps):
    import ase

    atoms = ase.Atoms(
        "SrTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=[A, A, A],
        pbc=True,
    )
    return atoms * reps


MINIMA: dict[str, float] = {}


def timeit(fn, repeats, label=None):
    """Median wall time [s] of ``repeats`` calls (the minimum is kept in MINIMA[label])."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if label:
        MINIMA[label] = min(times)
    return statistics.median(times)


def abtem_hrtem(atoms, gpts, n_phonons):
    import abtem

    abtem.config.set({"diagnostics.progress_bar": False, "precision": "float32", "device": "cpu"})
    if n_phonons:
        atoms = abtem.FrozenPhonons(atoms, num_configs=n_phonons, sigmas=DW_SIGMA, seed=0)
    pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=A / 2, projection="infinite")
    ctf = abtem.CTF(energy=ENERGY, aberration_coefficients=ABERRATIONS, **CTF)

    def run():
        waves = abtem.PlaneWave(energy=ENERGY).multislice(pot)
        img = waves.apply_ctf(ctf).intensity()
        if n_phonons:
            img = img.mean(0)
        return img.compute().array

    return run, pot.gpts, len(pot)


def fft_only(gpts, n_slices, ffts_per_slice, repeats, label=None):
    psi0 = jnp.ones(gpts, jnp.complex64)
    kern = jnp.exp(1j * jnp.linspace(0, 1, gpts[0] * gpts[1]).reshape(gpts)).astype(jnp.complex64)

    @jax.jit
    def loop(psi):
        def body(p, _):
            for _ in range(ffts_per_slice // 2):
                p = jnp.fft.ifft2(jnp.fft.fft2(p) * kern)
            return p, None

        return jax.lax.scan(body, psi, None, length=n_slices)[0]

    loop(psi0).block_until_ready()
    return timeit(lambda: loop(psi0).block_until_ready(), repeats, label)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2x2x10 cells (smoke test of the script)")
    ap.add_argument("--no-abtem", action="store_true", help="skip abTEM (e.g. on a GPU machine)")
    args = ap.parse_args()
    reps = (2, 2, 10) if args.quick else (8, 8, 10)
    atoms = srtio3(reps)
    cell = atoms.cell.lengths()
    grid = make_grid(extent=cell[:2], sampling=0.05)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")  # fmt: skip
    print(f"grid {grid.gpts} at {grid.sampling[0]:.5f} Å, {len(atoms)} atoms")
    sp = make_specimen(atoms.positions, atoms.numbers, cell, DW_SIGMA)
    beam = make_beam(ENERGY, aberrations=ABERRATIONS, **CTF)
    sim = make_hrtem_simulator(grid, cell[2], A / 2, species=(8, 22, 38))
    key = jax.random.key(0)
    rows = []
    for n_ph in (0, 8):
        label = "HRTEM" if n_ph == 0 else f"HRTEM {n_ph} phonons"
        rep = args.repeats if n_ph == 0 else max(1, args.repeats // 2)
        if n_ph:
            f = jax.jit(make_frozen_phonon_simulator(sim, n_ph))
            call = lambda: f(key, sp, beam).block_until_ready()  # noqa: E731
        else:
            f = jax.jit(sim)
            call = lambda: f(sp, beam).block_until_ready()  # noqa: E731
        t0 = time.perf_counter()
        call()
        compile_s = time.perf_counter() - t0
        ours = timeit(call, rep, f"ours {label}")
        n_waves = max(1, n_ph)
        fft2 = fft_only(grid.gpts, sim.n_slices * n_waves, 2, rep, f"FFT 2/slice {label}")
        fft5 = fft_only(grid.gpts, sim.n_slices * n_waves, 6, rep) * 5 / 6
        theirs = float("nan")
        if not args.no_abtem:
            run, gpts, n_sl = abtem_hrtem(atoms, grid.gpts, n_ph)
            assert tuple(gpts) == tuple(grid.gpts) and n_sl == sim.n_slices, (gpts, n_sl)
            run()  # warm up (FFTW plans, numba)
            theirs = timeit(run, rep, f"abTEM {label}")
        grad_s = float("nan")
        if n_ph == 0:
            w = jnp.asarray(np.random.default_rng(0).normal(size=grid.gpts), jnp.float32)

            def loss(pos, defocus):
                s = type(sp)(positions=pos, numbers=sp.numbers, cell=sp.cell, dw_sigmas=sp.dw_sigmas)
                ab = type(beam.aberrations)(**{**beam.aberrations.__dict__, "C10": -defocus})
                b = type(beam)(**{**beam.__dict__, "aberrations": ab})
                return jnp.sum(sim(s, b) * w)

            g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            pos = jnp.asarray(sp.positions, jnp.float32)
            jax.block_until_ready(g(pos, 80.0))
            grad_s = timeit(lambda: jax.block_until_ready(g(pos, 80.0)), rep, f"grad {label}")
        rows.append((label, theirs, ours, compile_s, fft2, fft5, grad_s))
    print()
    hdr = ("workload", "abTEM [s]", "ours [s]", "compile [s]", "speed-up", "FFT 2/sl [s]",
           "ours/FFT2", "FFT 5/sl [s]", "ours/FFT5", "grad [s]", "grad/fwd")  # fmt: skip
    print(" | ".join(hdr))
    for label, theirs, ours, comp, f2, f5, gr in rows:
        print(
            f"{label} | {theirs:.3f} | {ours:.3f} | {comp:.1f} | {theirs / ours:.2f}x | {f2:.3f} | "
            f"{ours / f2:.2f} | {f5:.3f} | {ours / f5:.2f} | {gr:.3f} | {gr / ours:.2f}"
        )
    print("\nminimum over the repeats [s] (less sensitive to other load on the machine):")
    for k, v in MINIMA.items():
        print(f"  {k}: {v:.3f}")
    print(f"load average after the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
