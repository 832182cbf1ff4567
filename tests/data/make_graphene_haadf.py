"""Make tests/data/graphene_haadf.npz: HAADF-STEM images of a graphene cell and three point defects,
simulated by abTEM 1.0.11 (not by hypotest's forward model), at two defoci.

Run once (seeded; ~5 min on two cores): ``.venv/bin/python tests/data/make_graphene_haadf.py``.
The tests load the committed file and never run abTEM for it.

- 60 kV, 30 mrad probe, aberration free but for the defocus, annular detector 80-200 mrad;
- a 3 x 2 orthogonal graphene cell (7.38 x 8.52 Å, 24 C atoms) scanned on a 37 x 43 grid
  (0.199 x 0.198 Å steps, pixel (0, 0) at the cell origin, periodic);
- hypotheses: pristine, a single vacancy, an N substitution, a divacancy (the two vacancies of a
  C-C bond), all at the same site;
- defocus 0 and 20 Å (positive = underfocus, abTEM's convention).

Arrays: ``images [defocus, H, 37, 43]`` (fractions of the probe reaching the detector),
``defocus [2]`` [Å], ``names [H]``, ``cell [3]`` [Å], ``positions``/``numbers`` per hypothesis
(object-free: ``positions_k``, ``numbers_k``), ``energy``, ``semiangle``, ``inner``, ``outer``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import abtem
import ase

ENERGY, SEMIANGLE, INNER, OUTER = 60e3, 30.0, 80.0, 200.0
GPTS = (37, 43)
DEFOCI = (0.0, 20.0)
CONFIG = {"diagnostics.progress_bar": False, "diagnostics.task_progress": False, "precision": "float32",
          "device": "cpu"}  # fmt: skip


def graphene_cell() -> ase.Atoms:
    a = 2.46
    b = a * np.sqrt(3)
    frac = [(0.0, 0.0), (0.5, 1 / 6), (0.5, 0.5), (0.0, 2 / 3)]  # orthogonal 4-atom cell
    unit = ase.Atoms("C4", scaled_positions=[(x, y, 0.5) for x, y in frac], cell=[a, b, 4.0], pbc=True)
    atoms = unit * (3, 2, 1)
    atoms.positions[:, 2] = 2.0
    return atoms


def hypotheses() -> list[tuple[str, ase.Atoms]]:
    base = graphene_cell()
    site = int(np.argmin(np.linalg.norm(base.positions[:, :2] - base.cell.lengths()[:2] / 2, axis=1)))
    nbr = int(np.argsort(np.linalg.norm(base.positions[:, :2] - base.positions[site, :2], axis=1))[1])
    vac = base.copy()
    del vac[site]
    sub = base.copy()
    sub.numbers[site] = 7
    div = base.copy()
    del div[[site, nbr]]
    return [("pristine", base), ("V_C", vac), ("N_C", sub), ("V2_C", div)]


def haadf(atoms: ase.Atoms, defocus: float) -> np.ndarray:
    with abtem.config.set(CONFIG):
        pot = abtem.Potential(atoms, sampling=0.05, slice_thickness=1.0, parametrization="lobato", projection="infinite")
        probe = abtem.Probe(energy=ENERGY, semiangle_cutoff=SEMIANGLE, defocus=defocus)
        cell = atoms.cell.lengths()
        scan = abtem.GridScan(start=(0.0, 0.0), end=tuple(cell[:2]), gpts=GPTS, endpoint=False)
        det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
        m = probe.scan(pot, scan=scan, detectors=det, lazy=False)
    return np.asarray(m.array, np.float32)


def main() -> None:
    hyps = hypotheses()
    images = np.stack([np.stack([haadf(a, df) for _, a in hyps]) for df in DEFOCI])
    out = Path(__file__).with_name("graphene_haadf.npz")
    extra = {}
    for k, (_, a) in enumerate(hyps):
        extra[f"positions_{k}"] = a.positions.astype(np.float64)
        extra[f"numbers_{k}"] = a.numbers.astype(np.int64)
    np.savez_compressed(out, images=images, defocus=np.asarray(DEFOCI), names=np.asarray([n for n, _ in hyps]),
                        cell=np.asarray(hyps[0][1].cell.lengths()), energy=ENERGY, semiangle=SEMIANGLE, inner=INNER,
                        outer=OUTER, **extra)  # fmt: skip
    print(f"wrote {out}: images {images.shape}, mean {images.mean():.4g}")


if __name__ == "__main__":
    main()
