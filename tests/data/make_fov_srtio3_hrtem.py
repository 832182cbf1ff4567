"""Make tests/data/fov_srtio3_hrtem.npz: a non-periodic HRTEM field of view of SrTiO3 [001], three
unit cells thick, with oxygen vacancies at random sites and one Zr on a Ti site (not in the
library), at an unknown rotation, offset and pixel calibration, simulated by abTEM 1.0.11 (not by
hypotest's forward model), and abTEM images of every hypothesis supercell for an ideal observer.

Run once (seeded; ~30 s on two cores): ``.venv/bin/python tests/data/make_fov_srtio3_hrtem.py``.
The tests load the committed file and never run abTEM for it.

- 300 kV plane wave, Cs (C30) = -15 um, Scherzer overfocus ``defocus = -sqrt(1.5 |Cs| lambda)`` =
  -66.6 Å (abTEM's sign: defocus = -C10), a hard objective aperture of 25 mrad (abTEM's default
  soft edge is one reciprocal pixel of the simulation cell wide: a supercell's image and the large
  crystal's would differ there by 0.02 of the beam), focal spread 20 Å, angular spread 0.1 mrad;
  320 grid points per 7.81 Å (0.0244 Å: at 160, 0.0488 Å, abTEM's host image differs from its
  own converged one by 2e-4 rms), 1 Å slices, Lobato, infinite projection (the BEAM.json of the
  tests says the same);
- the crystal: the built-in ``srtio3_vacancy`` library's pristine supercell (2 x 2 x 3 unit cells,
  7.81 x 7.81 Å) tiled 8 x 8 (62.48 Å, periodic, commensurate: no seams), with each of the
  library's six O vacancies (two columns x three depths) made at a random lattice site by the
  hypothesis's own atom change, and a Zr on the Ti of an O-Ti column (middle unit cell), which the
  library does not hold; the defects >= 8 Å apart and <= 15 Å from the frame centre;
- its image (a plane wave: one multislice for the whole crystal), band-limited by the aperture to
  2 x 25 mrad / lambda = 2.54 1/Å: the spectrum is cut at 2.8 1/Å (what lies beyond is checked to
  be < 1e-6 of the power) and evaluated exactly at the frame's pixels;
- the frame: 384 x 384 pixels, pixel ``(i, j)`` imaging ``r = M (i, j) + t``, ``M = R(23.1°)
  [[0.1015, 0.0006], [0, 0.1012]]`` Å/pixel (nominal 0.1: 1.5 % and 1.2 % off, a 0.34° shear),
  ``t`` seeded;
- hypothesis images: the 7 library supercells and Zr_Ti, each on its own periodic cell, cut to
  80 x 80 samples (exact: band-limited) for an ideal observer.

Arrays: ``expected [384, 384]`` (image intensity, 1 = the incident beam), ``M [2, 2]`` Å/pixel,
``t [2]`` Å, ``theta_deg``, ``nominal_sampling``, ``defect_names [D]``, ``defect_xy_A [D, 2]``,
``defect_px [D, 2]``, ``flake_cell [2]``, ``hyp_images [8, 80, 80]``, ``hyp_names [8]``,
``hyp_site [8, 2]``, ``energy``, ``semiangle``, ``c30``, ``defocus``, ``focal_spread``,
``angular_spread``, ``abtem_version``, ``run_seconds``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import abtem
import ase

sys.path.insert(0, str(Path(__file__).parent))
from make_fov_mos2_haadf import apply_defect, fourier_interpolate  # noqa: E402  (the same flake-making steps)

ENERGY, C30, SEMIANGLE, FOCAL, ANGULAR = 300e3, -1.5e5, 25.0, 20.0, 0.1
PER_CELL, TILE = 320, 8
SHAPE = (384, 384)
THETA = 23.1
SX, SY, SHEAR = 0.1 * 1.015, 0.1 * 1.012, 0.0006
SEPARATION, REACH = 8.0, 15.0  # Å: defects apart, and from the frame centre
BAND = 2.8  # 1/Å, above the intensity's band limit 2 alpha / lambda = 2.54
CONFIG = {"diagnostics.progress_bar": False, "diagnostics.task_progress": False, "precision": "float32",
          "device": "cpu"}  # fmt: skip


def wavelength(e: float) -> float:
    """Relativistic electron wavelength [Å] (Kirkland 2010, eq. 2.5)."""
    m0c2, h_c = 510998.95, 12398.4198
    return h_c / np.sqrt(e * (2 * m0c2 + e))


DEFOCUS = -float(np.sqrt(1.5 * abs(C30) * wavelength(ENERGY)))


def _atoms(spec) -> ase.Atoms:
    return ase.Atoms(numbers=np.asarray(spec.numbers), positions=np.asarray(spec.positions, float),
                     cell=np.asarray(spec.cell, float), pbc=True)  # fmt: skip


def hrtem(atoms: ase.Atoms, gpts) -> np.ndarray:
    with abtem.config.set(CONFIG):
        pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=1.0, parametrization="lobato", projection="infinite")
        ew = abtem.PlaneWave(energy=ENERGY).multislice(pot)
        ctf = abtem.CTF(energy=ENERGY, semiangle_cutoff=SEMIANGLE, soft=False, focal_spread=FOCAL,
                        angular_spread=ANGULAR, aberration_coefficients={"C10": -DEFOCUS, "C30": C30})  # fmt: skip
        return np.asarray(ew.apply_ctf(ctf).intensity().compute().array, np.float64)


def band_limit(image, cell, band) -> np.ndarray:
    """``image`` (periodic over ``cell``) resampled on the coarsest even grid that holds every
    frequency up to ``band`` [1/Å]: exact when the image is band-limited (checked)."""
    f = np.fft.fft2(image)
    n = [2 * int(np.ceil(band * cell[i])) + 2 for i in (0, 1)]
    kx = np.fft.fftfreq(image.shape[0], d=cell[0] / image.shape[0])
    ky = np.fft.fftfreq(image.shape[1], d=cell[1] / image.shape[1])
    keep = (np.abs(kx)[:, None] <= band) & (np.abs(ky)[None, :] <= band)
    lost = float(np.sum(np.abs(f[~keep]) ** 2) / (np.sum(np.abs(f) ** 2) - np.abs(f[0, 0]) ** 2))
    assert lost < 1e-6, f"the image is not band-limited to {band} 1/Å: {lost:.2e} of its power lies beyond"
    ix = np.fft.fftfreq(n[0], d=1.0 / n[0]).astype(int)
    iy = np.fft.fftfreq(n[1], d=1.0 / n[1]).astype(int)
    out = np.zeros(n, complex)
    sel = (np.abs(ix)[:, None] <= band * cell[0]) & (np.abs(iy)[None, :] <= band * cell[1])
    out[sel] = f[np.ix_(ix % image.shape[0], iy % image.shape[1])][sel]
    return np.real(np.fft.ifft2(out)) * (n[0] * n[1]) / image.size


def main() -> None:
    from forward import make_specimen
    from hypotest.fieldofview import analyse_library
    from hypotest.hypothesis import load_hypotheses
    from hypotest.scoring import ScoringInput

    t_start = time.perf_counter()
    rng = np.random.default_rng(2027)
    hyps = ScoringInput.from_hypotheses(load_hypotheses("srtio3_vacancy"))
    geo = analyse_library(hyps)
    host = hyps.specimens[geo.host]
    cell = np.asarray(host.cell, float)
    short = []
    for i, n in enumerate(hyps.names):  # "V_O (O column, 3.95 Å)": the library names column and depth
        if i == geo.host:
            short.append("host")
            continue
        col = n.split("@ ")[1].split(" (")[0]
        short.append(f"V_O ({col}, {float(n.split('depth ')[1].split(' Å')[0]):.2f} Å)")
    # the out-of-library Zr_Ti: the Ti of the O-Ti column, middle unit cell
    pos = np.asarray(host.positions, float)
    num = np.asarray(host.numbers).copy()
    oti = geo.site[short.index(next(s for s in short if "O-Ti" in s))]
    zmid = np.median(pos[:, 2])
    ti = np.flatnonzero(num == 22)
    k = ti[np.argmin(np.linalg.norm(pos[ti, :2] - oti, axis=1) + np.abs(pos[ti, 2] - zmid))]
    num[k] = 40
    specs = list(hyps.specimens) + [make_specimen(pos, num, cell)]
    names = short + ["Zr_Ti"]
    sites = np.concatenate([geo.site, [oti]])

    th = np.radians(THETA)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    m = rot @ np.array([[SX, SHEAR], [0.0, SY]])
    flake_cell = cell[:2] * TILE
    centre_px = (np.asarray(SHAPE) - 1) / 2
    t = flake_cell / 2 - m @ centre_px + rng.uniform(-1.0, 1.0, size=2)
    centre = m @ centre_px + t
    defects = [n for n in names if n != "host"]
    for attempt in range(200):  # sequential placement, restarted when a defect finds no room
        placed = []
        for name in defects:
            h = names.index(name)
            for _ in range(500):
                n = rng.integers(-5, 6, size=2)
                base = np.round(np.linalg.solve(geo.lattice, centre - sites[h]))
                r = sites[h] + geo.lattice @ (base + n)
                if np.linalg.norm(r - centre) <= REACH and all(np.linalg.norm(r - q) >= SEPARATION for q in placed):
                    placed.append(r)
                    break
            else:
                break
        if len(placed) == len(defects):
            break
    else:
        raise RuntimeError("no room for the defects")
    tiled = _atoms(host) * (TILE, TILE, 1)
    pos, num = tiled.positions.copy(), tiled.numbers.copy()
    for name, r in zip(defects, placed):
        h = names.index(name)
        pos, num = apply_defect(pos, num, host, specs[h], cell, r - sites[h], flake_cell)
    flake = ase.Atoms(numbers=num, positions=pos, cell=[*flake_cell, cell[2]], pbc=True)
    assert len(flake) == len(tiled) - 6, (len(flake), len(tiled))
    t0 = time.perf_counter()
    img = hrtem(flake, (PER_CELL * TILE, PER_CELL * TILE))
    print(f"flake {len(flake)} atoms, grid {img.shape}: {time.perf_counter() - t0:.0f} s; mean intensity {img.mean():.4f}")
    small = band_limit(img, flake_cell, BAND)
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel()], 1) @ m.T + t
    expected = fourier_interpolate(small, flake_cell, pts).reshape(SHAPE)
    # the band-limited resampling reproduces the simulation grid
    check = np.array([[3, 5], [400, 170], [2001, 77]])
    at = fourier_interpolate(small, flake_cell, check * (flake_cell / img.shape))
    assert np.allclose(at, img[check[:, 0], check[:, 1]], rtol=1e-4, atol=1e-5), (at, img[check[:, 0], check[:, 1]])
    t0 = time.perf_counter()
    hyp_images = []
    for s in specs:
        full = hrtem(_atoms(s), (PER_CELL, PER_CELL))
        f = np.fft.fft2(full)
        keep = np.r_[0:40, PER_CELL - 40 : PER_CELL]  # |k| < 40 / 7.81 Å = 5.1 1/Å: all of it (2.54)
        hyp_images.append(np.real(np.fft.ifft2(f[np.ix_(keep, keep)])) * 80 * 80 / full.size)
    hyp_images = np.stack(hyp_images)
    print(f"hypothesis images {hyp_images.shape}: {time.perf_counter() - t0:.0f} s")
    placed = np.asarray(placed)
    defect_px = (placed - t) @ np.linalg.inv(m).T
    out = Path(__file__).with_name("fov_srtio3_hrtem.npz")
    run = time.perf_counter() - t_start
    np.savez_compressed(
        out, expected=expected.astype(np.float32), M=m, t=t, theta_deg=THETA, nominal_sampling=0.1,
        defect_names=np.asarray(defects), defect_xy_A=placed, defect_px=defect_px, flake_cell=flake_cell,
        hyp_images=hyp_images.astype(np.float32), hyp_names=np.asarray(names), hyp_site=sites, cell=cell,
        energy=ENERGY, semiangle=SEMIANGLE, c30=C30, defocus=DEFOCUS, focal_spread=FOCAL, angular_spread=ANGULAR,
        abtem_version=abtem.__version__, run_seconds=run,
    )  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {run:.0f} s: expected mean {expected.mean():.4g}, "
          f"range {expected.min():.3f}-{expected.max():.3f}; defects {defects} at px {defect_px.round(1).tolist()}")


if __name__ == "__main__":
    main()
