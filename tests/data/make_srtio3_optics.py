"""Make tests/data/srtio3_optics.npz: HRTEM images of SrTiO3 [001] point defects simulated by abTEM
1.0.11 (not by hypotest's forward model) under optics that are NOT the nominal ones: the defocus
off by -30 ... +30 Å, the crystal one unit cell thicker than the hypotheses' cells, and a residual
two-fold astigmatism.

Run once (seeded by construction, no randomness; ~1 min on two cores):
``.venv/bin/python tests/data/make_srtio3_optics.py``. The tests load the committed file and never
run abTEM for it.

- 300 kV, Cs (C30) = -15 um, objective aperture 25 mrad (abTEM's soft edge), focal spread 20 Å,
  angular spread 0.1 mrad: the built-in ``srtio3_vacancy`` library's imaging settings;
- nominal defocus: Scherzer for that Cs, ``-sqrt(1.5 |Cs| lambda)`` = -66.6 Å (overfocus, as
  abTEM's sign: defocus = -C10);
- the hypotheses' cells: SrTiO3 2 x 2 x 3 unit cells (7.81 x 7.81 Å, a = 3.905 Å), 2 Å of vacuum
  above and below (cell z 13.7625 Å): pristine, V_O in an O column, V_O in an O-Ti column, V_Sr,
  V_Ti, all in the middle unit cell;
- out of the library: Zr on that Ti site (Zr_Ti), and La on that Sr site (La_Sr);
- the truth's crystal: each structure with one more host unit cell at the exit surface (the last
  unit-cell layer repeated 3.905 Å further down: 4 cells, cell z 17.6675 Å);
- true optics: defocus nominal + DELTA for DELTA in (-30, -20, -10, 10, 20, 30) Å, C12 = 6 Å at
  phi12 = 0.5 rad;
- 160 x 160 simulation grid (0.0488 Å), slices 1 Å, Lobato, infinite projection; the camera bins
  2 x 2 (80 x 80 pixels of 0.0976 Å, block mean: the intensity stays relative to the beam).

Arrays: ``images [delta, S, 80, 80]`` (S = the 5 library structures then Zr_Ti, La_Sr, in ``names``),
``delta [6]`` Å, ``nominal_defocus``, ``c12``, ``phi12``, ``c30``, ``energy``, ``semiangle``,
``focal_spread``, ``angular_spread``, ``cell`` (the 3-cell cell), ``host_period`` (3.905),
``extra_cells`` (1), ``positions_k``/``numbers_k`` of structure k in its 3-cell cell, ``names``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import abtem
import ase

ENERGY, C30, SEMIANGLE, FOCAL, ANGULAR = 300e3, -1.5e5, 25.0, 20.0, 0.1
A = 3.905
GPTS, BIN = (160, 160), 2
DELTAS = (-30.0, -20.0, -10.0, 10.0, 20.0, 30.0)
C12, PHI12 = 6.0, 0.5
EXTRA = 1
CONFIG = {"diagnostics.progress_bar": False, "diagnostics.task_progress": False, "precision": "float32",
          "device": "cpu"}  # fmt: skip


def wavelength(e: float) -> float:
    """Relativistic electron wavelength [Å] (Kirkland 2010, eq. 2.5)."""
    m0c2, h_c = 510998.95, 12398.4198
    return h_c / np.sqrt(e * (2 * m0c2 + e))


def host() -> ase.Atoms:
    unit = ase.Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                     cell=[A, A, A], pbc=True)  # fmt: skip
    atoms = unit * (2, 2, 3)
    atoms.positions[:, 2] += 2.0
    atoms.cell[2, 2] = atoms.positions[:, 2].max() + 2.0
    return atoms


def _site(atoms, symbol: str, xy, z) -> int:
    d = np.linalg.norm(atoms.positions - np.array([*xy, z]), axis=1)
    d[np.asarray(atoms.get_chemical_symbols()) != symbol] = np.inf
    return int(np.argmin(d))


def structures() -> list[tuple[str, ase.Atoms]]:
    base = host()
    zmid = 2.0 + A  # the middle unit cell's basal plane
    out = [("pristine", base)]
    for name, sym, xy, z in (("V_O (O column)", "O", (A / 2, 0.0), zmid + A / 2), ("V_O (O-Ti column)", "O", (A / 2, A / 2), zmid),
                             ("V_Sr", "Sr", (0.0, 0.0), zmid), ("V_Ti", "Ti", (A / 2, A / 2), zmid + A / 2)):  # fmt: skip
        a = base.copy()
        del a[_site(a, sym, xy, z)]
        out.append((name, a))
    for name, sym, new, xy, z in (("Zr_Ti", "Ti", "Zr", (A / 2, A / 2), zmid + A / 2), ("La_Sr", "Sr", "La", (0.0, 0.0), zmid)):
        a = base.copy()
        a.symbols[_site(a, sym, xy, z)] = new
        out.append((name, a))
    return out


def thicker(atoms: ase.Atoms, extra: int) -> ase.Atoms:
    """``atoms`` with ``extra`` host unit cells added at the exit surface: the pristine last layer
    (z within one period of the deepest plane) repeated ``A`` further down each time."""
    layer = host()
    zmax = layer.positions[:, 2].max()
    layer = layer[layer.positions[:, 2] > zmax - A + 1e-3]
    out = atoms.copy()
    for k in range(1, extra + 1):
        add = layer.copy()
        add.positions[:, 2] += k * A
        out += add
    out.cell[2, 2] = atoms.cell[2, 2] + extra * A
    return out


def image(atoms: ase.Atoms, defocus: float) -> np.ndarray:
    with abtem.config.set(CONFIG):
        pot = abtem.Potential(atoms, gpts=GPTS, slice_thickness=1.0, parametrization="lobato", projection="infinite")
        ew = abtem.PlaneWave(energy=ENERGY).multislice(pot)
        ctf = abtem.CTF(energy=ENERGY, semiangle_cutoff=SEMIANGLE, focal_spread=FOCAL, angular_spread=ANGULAR,
                        aberration_coefficients={"C10": -defocus, "C12": C12, "phi12": PHI12, "C30": C30})  # fmt: skip
        img = np.asarray(ew.apply_ctf(ctf).intensity().compute().array, np.float64)
    nx, ny = img.shape
    return img.reshape(nx // BIN, BIN, ny // BIN, BIN).mean(axis=(1, 3)).astype(np.float32)


def main() -> None:
    nominal = -float(np.sqrt(1.5 * abs(C30) * wavelength(ENERGY)))
    sts = structures()
    images = np.stack([np.stack([image(thicker(a, EXTRA), nominal + d) for _, a in sts]) for d in DELTAS])
    arrays = {"images": images, "delta": np.asarray(DELTAS), "nominal_defocus": nominal, "c12": C12, "phi12": PHI12,
              "c30": C30, "energy": ENERGY, "semiangle": SEMIANGLE, "focal_spread": FOCAL, "angular_spread": ANGULAR,
              "cell": np.asarray(host().cell.lengths()), "host_period": A, "extra_cells": EXTRA,
              "names": np.asarray([n for n, _ in sts])}  # fmt: skip
    for k, (_, a) in enumerate(sts):
        arrays[f"positions_{k}"] = a.positions.astype(np.float64)
        arrays[f"numbers_{k}"] = a.numbers.astype(np.int64)
    out = Path(__file__).with_name("srtio3_optics.npz")
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): images {images.shape}, nominal defocus {nominal:.2f} Å")


if __name__ == "__main__":
    main()
