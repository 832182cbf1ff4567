"""Make tests/data/fov_mos2_haadf.npz: a non-periodic ADF-STEM field of view of monolayer MoS2 with
point defects, at an unknown rotation, offset and pixel calibration, simulated by abTEM (not by
hypotest's forward model), and abTEM images of every hypothesis supercell for an ideal observer.

Run once (seeded; ~6 min on two cores): ``.venv/bin/python tests/data/make_fov_mos2_haadf.py``.
The tests load the committed file and never run abTEM for it.

- 80 kV, 25 mrad probe, aberration free, annular detector 60-200 mrad; potential sampling 0.07 Å,
  1 Å slices, Lobato, infinite projection (the BEAM.json of the tests says the same);
- the flake: the built-in library's pristine MoS2 supercell (9.48 x 10.95 Å) tiled 3 x 3 (28.44 x
  32.84 Å, periodic, commensurate: no seams), with defects made at lattice sites by the atom changes
  of the library's hypotheses (``DEFECTS``) and one out-of-library Se_S (a Se on the S site V_S
  empties), their columns >= 5 Å apart and <= 8.5 Å from the frame centre; its ADF image scanned over the whole periodic cell at
  <= 0.35 Å steps (above Nyquist: the signal is band-limited to 2 alpha / lambda = 1.2 1/Å);
- the frame: 128 x 128 pixels, pixel ``(i, j)`` imaging ``r = M (i, j) + t``, ``M = R(17.3°)
  [[0.1624, 0.0008], [0, 0.16192]]`` Å/pixel (nominal 0.16: 1.5% and 1.2% off, a 0.28° shear),
  ``t`` seeded; its noise-free signal is the exact Fourier interpolation of the flake's image;
- hypothesis images: the 8 library supercells and Se_S on 48 x 55 scans (0.2 Å steps) of the cell.

Arrays: ``expected [128, 128]`` (fraction of the probe on the detector), ``M [2, 2]`` Å/pixel,
``t [2]`` Å, ``theta_deg``, ``nominal_sampling``, ``defect_names [D]``, ``defect_xy_A [D, 2]``,
``defect_px [D, 2]``, ``flake_image [gx, gy]``, ``flake_cell [2]``, ``hyp_images [9, 48, 55]``,
``hyp_names [9]``, ``energy``, ``semiangle``, ``inner``, ``outer``, ``abtem_version``,
``run_seconds``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import abtem
import ase

ENERGY, SEMIANGLE, INNER, OUTER = 80e3, 25.0, 60.0, 200.0
SAMPLING, SLICE = 0.07, 1.0
SHAPE = (128, 128)
THETA = 17.3
SX, SY, SHEAR = 0.16 * 1.015, 0.16 * 1.012, 0.0008
#: library defects placed in the flake (short names as in the library's names before " @")
DEFECTS = ("V_S2", "W_Mo", "V_Mo", "Mo_S", "O_S")
CONFIG = {"diagnostics.progress_bar": False, "diagnostics.task_progress": False, "precision": "float32",
          "device": "cpu"}  # fmt: skip


def _atoms(spec, z0) -> ase.Atoms:
    """ASE atoms of a hypotest specimen, the layer moved to the bottom of a thin cell (ADF is the
    same after vacuum, and fewer slices are faster)."""
    pos = np.asarray(spec.positions, float).copy()
    pos[:, 2] -= z0
    cell = np.asarray(spec.cell, float).copy()
    cell[2] = float(pos[:, 2].max()) + 1.5
    return ase.Atoms(numbers=np.asarray(spec.numbers), positions=pos, cell=cell, pbc=True)


def adf(atoms: ase.Atoms, gpts) -> np.ndarray:
    with abtem.config.set(CONFIG):
        pot = abtem.Potential(atoms, sampling=SAMPLING, slice_thickness=SLICE, parametrization="lobato",
                              projection="infinite")  # fmt: skip
        probe = abtem.Probe(energy=ENERGY, semiangle_cutoff=SEMIANGLE)
        cell = atoms.cell.lengths()
        scan = abtem.GridScan(start=(0.0, 0.0), end=tuple(cell[:2]), gpts=gpts, endpoint=False)
        m = probe.scan(pot, scan=scan, detectors=abtem.AnnularDetector(inner=INNER, outer=OUTER), max_batch=64,
                       lazy=True)  # batches of 64 probes: the whole scan at once needs > 24 GiB
        m = m.compute(scheduler="threads", num_workers=2)
    return np.asarray(m.array, np.float32)


def fourier_interpolate(image, cell, points, chunk=2048) -> np.ndarray:
    """The periodic band-limited ``image`` (grid over ``cell`` from 0, endpoint excluded) at ``points [n, 2]`` Å."""
    gx, gy = image.shape
    f = np.fft.fft2(image) / image.size
    kx = np.fft.fftfreq(gx, d=cell[0] / gx)
    ky = np.fft.fftfreq(gy, d=cell[1] / gy)
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        ex = np.exp(2j * np.pi * p[:, 0:1] * kx[None, :])
        ey = np.exp(2j * np.pi * p[:, 1:2] * ky[None, :])
        out[s : s + chunk] = np.real(np.einsum("nx,xy,ny->n", ex, f, ey, optimize=True))
    return out


def apply_defect(pos, num, host, spec, cell, shift, flake_cell, z0: float = 0.0):
    """``(pos, num)`` of the flake with hypothesis ``spec``'s atom changes against ``host`` (both on
    the supercell ``cell``) made ``shift`` [Å] away: each atom the host has and ``spec`` lacks
    removed (the nearest of the flake's, periodic in ``flake_cell``, at its depth), each it adds put
    in; the flake's depths are the specimens' less ``z0``."""
    from hypotest.fieldofview import _differences

    gp, _, npos, nn = _differences(host, spec, cell)
    for p_old in gp:
        d = pos[:, :2] - (p_old[:2] + shift)
        d -= np.round(d / flake_cell) * flake_cell
        k = int(np.argmin(np.linalg.norm(d, axis=1) + 10 * np.abs(pos[:, 2] - (p_old[2] - z0))))
        pos, num = np.delete(pos, k, axis=0), np.delete(num, k)
    for p_new, z in zip(npos, nn):
        q = np.array([*(p_new[:2] + shift), p_new[2] - z0])
        q[:2] %= flake_cell
        pos, num = np.vstack([pos, q]), np.append(num, z)
    return pos, num


def main() -> None:
    from hypotest.fieldofview import _differences, analyse_library
    from hypotest.hypothesis import load_hypotheses
    from hypotest.scoring import ScoringInput

    t_start = time.perf_counter()
    rng = np.random.default_rng(2026)
    hyps = ScoringInput.from_hypotheses(load_hypotheses("mos2_defects"))
    geo = analyse_library(hyps)
    host = hyps.specimens[geo.host]
    cell = np.asarray(host.cell, float)
    z0 = float(np.asarray(host.positions)[:, 2].min()) - 1.0
    short = [n.split(" @")[0] if i != geo.host else "host" for i, n in enumerate(hyps.names)]
    # the out-of-library Se_S: V_S's emptied S site holds a Se
    vs = short.index("V_S")
    gone, _, _, _ = _differences(host, hyps.specimens[vs], cell)
    se_pos = np.asarray(host.positions, float).copy()
    se_num = np.asarray(host.numbers).copy()
    k = int(np.argmin(np.linalg.norm(se_pos - gone[0], axis=1)))
    se_num[k] = 34
    from forward import make_specimen

    se_spec = make_specimen(se_pos, se_num, cell)
    specs = list(hyps.specimens) + [se_spec]
    names = short + ["Se_S"]
    sites = np.concatenate([geo.site, [geo.site[vs]]])

    # the frame's map and the flake
    th = np.radians(THETA)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    m = rot @ np.array([[SX, SHEAR], [0.0, SY]])
    flake_cell = cell[:2] * 3
    centre_px = (np.asarray(SHAPE) - 1) / 2
    t = flake_cell / 2 - m @ centre_px + rng.uniform(-0.8, 0.8, size=2)
    tiled = _atoms(host, z0) * (3, 3, 1)
    pos, num = tiled.positions.copy(), tiled.numbers.copy()
    placed, chosen = [], []
    centre = m @ centre_px + t
    for name in DEFECTS + ("Se_S",):
        h = names.index(name)
        for _ in range(2000):
            n = rng.integers(-4, 5, size=2)
            r = sites[h] + geo.lattice @ n + np.round(np.linalg.solve(geo.lattice, centre - sites[h])) @ geo.lattice.T
            if np.linalg.norm(r - centre) > 8.5 or any(np.linalg.norm(r - q) < 5.0 for q in placed):
                continue
            break
        else:
            raise RuntimeError(f"no room for {name} (placed {np.round(placed, 2).tolist()}, centre {centre.round(2).tolist()})")
        pos, num = apply_defect(pos, num, host, specs[h], cell, r - sites[h], flake_cell, z0)
        placed.append(r)
        chosen.append(name)
    flake = ase.Atoms(numbers=num, positions=pos, cell=[*flake_cell, tiled.cell.lengths()[2]], pbc=True)
    gpts = tuple(int(np.ceil(flake_cell[i] / 0.35)) for i in (0, 1))
    t0 = time.perf_counter()
    flake_image = adf(flake, gpts)
    print(f"flake {len(flake)} atoms, scan {gpts}: {time.perf_counter() - t0:.0f} s")
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel()], 1) @ m.T + t
    expected = fourier_interpolate(flake_image.astype(np.float64), flake_cell, pts).reshape(SHAPE)
    # the interpolation reproduces the grid it came from
    check = np.array([[3, 5], [40, 17]])
    at_grid = fourier_interpolate(flake_image.astype(np.float64), flake_cell, check * (flake_cell / gpts))
    assert np.allclose(at_grid, flake_image[check[:, 0], check[:, 1]], rtol=1e-4)
    t0 = time.perf_counter()
    hyp_images = np.stack([adf(_atoms(s, z0), (48, 55)) for s in specs])
    print(f"hypothesis images {hyp_images.shape}: {time.perf_counter() - t0:.0f} s")
    placed = np.asarray(placed)
    defect_px = (placed - t) @ np.linalg.inv(m).T
    out = Path(__file__).with_name("fov_mos2_haadf.npz")
    run = time.perf_counter() - t_start
    np.savez_compressed(
        out, expected=expected.astype(np.float32), M=m, t=t, theta_deg=THETA, nominal_sampling=0.16,
        defect_names=np.asarray(chosen), defect_xy_A=placed, defect_px=defect_px,
        flake_image=flake_image, flake_cell=flake_cell, hyp_images=hyp_images, hyp_names=np.asarray(names),
        hyp_site=sites, energy=ENERGY, semiangle=SEMIANGLE, inner=INNER, outer=OUTER,
        abtem_version=abtem.__version__, run_seconds=run,
    )  # fmt: skip
    print(f"wrote {out} in {run:.0f} s: expected mean {expected.mean():.4g}; defects {chosen} at px {defect_px.round(1).tolist()}")


if __name__ == "__main__":
    main()
