"""The abTEM SrTiO3 frames of tests/data/srtio3_optics.npz (made by tests/data/make_srtio3_optics.py)
and hypotest's exit waves of the same structures, for the optics and fit-check tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "srtio3_optics.npz"
LIBRARY = 5  # structures 0..4 are the library; 5 (Zr_Ti) and 6 (La_Sr) are not
CELLS = (0, 1, 2)


@functools.lru_cache(maxsize=1)
def data() -> dict:
    with np.load(DATA) as z:
        return {k: z[k] for k in z.files}


def pixel() -> float:
    d = data()
    return float(d["cell"][0]) / d["images"].shape[-1]


def beam(dose: float):
    from forward import make_beam

    d = data()
    return make_beam(float(d["energy"]), semiangle_cutoff=float(d["semiangle"]), focal_spread=float(d["focal_spread"]),
                     angular_spread=float(d["angular_spread"]), dose=dose,
                     aberrations={"C30": float(d["c30"]), "defocus": float(d["nominal_defocus"])})  # fmt: skip


def specimen(k: int):
    from forward import make_specimen

    d = data()
    return make_specimen(d[f"positions_{k}"], d[f"numbers_{k}"], d["cell"])


@functools.lru_cache(maxsize=4)
def model(structures: tuple[int, ...] = tuple(range(LIBRARY)), cells: tuple[int, ...] = CELLS):
    """``(waves [S, K, 160, 160], image_fn)`` under the nominal beam, 80 x 80 camera."""
    from forward import add_exit_layers, make_grid, make_hrtem_simulator, make_optics_image_fn

    d = data()
    grid = make_grid(extent=tuple(d["cell"][:2]), sampling=0.05)
    assert grid.gpts == (160, 160)  # the abTEM script's grid
    b = beam(1.0)
    sims, waves = {}, []
    for k in structures:
        row = []
        for n in cells:
            s = add_exit_layers(specimen(k), n)
            tz = float(np.asarray(s.cell)[2])
            if tz not in sims:
                sims[tz] = make_hrtem_simulator(grid, tz, 1.0, camera_gpts=(80, 80))
            row.append(np.asarray(sims[tz].exit_wave(s, b)))
        waves.append(row)
    return np.asarray(waves), make_optics_image_fn(grid, b, (80, 80))


def frames(j: int, truth: int, dose: float, n: int, seed: int) -> np.ndarray:
    """``n`` Poisson frames of structure ``truth`` at true-optics index ``j`` (abTEM images)."""
    d = data()
    ex = dose * pixel() ** 2
    rng = np.random.default_rng([seed, j, truth, int(dose)])
    return rng.poisson(ex * d["images"][j, truth], size=(n, 80, 80)).astype(np.float32)
