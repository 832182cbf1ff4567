"""abTEM 1.0.11 reference calculations for the forward-model tests (tiny cells only).

abTEM's infinite projection deposits each atom on the grid bilinearly and then divides the
spectrum by ``sin(u)/u`` (``abtem.integrals.sinc``, u = |k * sampling|) to compensate the pixel.
For atoms that sit exactly on grid points the bilinear deposit is exact and that division is the
only difference from the exact Fourier-ramp potential of ``forward.potentials``. The references
below therefore keep the atoms on grid points and multiply abTEM's potential back by
``sin(u)/u``; :func:`abtem_potential` returns both versions so the test can say how large the
difference is. Everything else (transmission, antialiasing, propagation, tilt, CTF, envelopes) is
abTEM's own code, run on that potential.
"""

from __future__ import annotations

import numpy as np

import abtem
import ase
from abtem.integrals import sinc

#: abTEM's configuration for the tests: no progress bars, float32, numpy FFT on the CPU, eager.
ABTEM_CONFIG = {
    "diagnostics.progress_bar": False,
    "diagnostics.task_progress": False,
    "precision": "float32",
    "device": "cpu",
}

SRTIO3_A = 3.905  # Å, cubic perovskite lattice constant


def srtio3(reps=(2, 2, 2)) -> ase.Atoms:
    """SrTiO3 [001] supercell (Sr at the origin)."""
    a = SRTIO3_A
    atoms = ase.Atoms(
        "SrTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=[a, a, a],
        pbc=True,
    )
    return atoms * tuple(reps)


def abtem_potential(atoms, gpts, slice_thickness, parametrization="lobato"):
    """``(V_abtem, V_exact)`` ``[n_slices, nx, ny]`` [V Å]: abTEM's infinite-projection potential
    and the same with its pixel (sinc) correction undone (see the module docstring)."""
    with abtem.config.set(ABTEM_CONFIG):
        pot = abtem.Potential(
            atoms, gpts=gpts, slice_thickness=slice_thickness, projection="infinite",
            parametrization=parametrization,
        )  # fmt: skip
        V = np.asarray(pot.build().compute().array)
        s = sinc(tuple(gpts), pot.sampling) / (pot.sampling[0] * pot.sampling[1])
    exact = np.fft.ifft2(np.fft.fft2(V) * s).real.astype(np.float32)
    return V, exact, pot.sampling, pot.slice_thickness


def abtem_exit_wave(V, sampling, slice_thickness, energy, tilt=(0.0, 0.0)) -> np.ndarray:
    """abTEM's plane-wave exit wave ``[nx, ny]`` through the potential slices ``V``."""
    with abtem.config.set(ABTEM_CONFIG):
        pa = abtem.PotentialArray(V, slice_thickness=slice_thickness, sampling=sampling)
        ew = abtem.PlaneWave(energy=energy, tilt=tuple(tilt)).multislice(pa).compute()
    return np.asarray(ew.array)


def abtem_image(V, sampling, slice_thickness, energy, tilt=(0.0, 0.0), **ctf) -> np.ndarray:
    """abTEM's HRTEM image intensity ``[nx, ny]`` (unit plane wave) with ``abtem.CTF(**ctf)``."""
    with abtem.config.set(ABTEM_CONFIG):
        pa = abtem.PotentialArray(V, slice_thickness=slice_thickness, sampling=sampling)
        ew = abtem.PlaneWave(energy=energy, tilt=tuple(tilt)).multislice(pa)
        img = ew.apply_ctf(abtem.CTF(energy=energy, **ctf)).intensity().compute()
    return np.asarray(img.array)


def rel_l2(a, b) -> float:
    """Relative L2 error ``|a - b| / |b|``."""
    a = np.asarray(a).astype(np.complex128)
    b = np.asarray(b).astype(np.complex128)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
