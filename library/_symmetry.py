"""Helpers shared by the generators: pymatgen conversions and the specimen-frame structure used for
symmetry analysis."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
from ase import Atoms

from library.orient import View

__all__ = ["quiet_spglib", "to_structure", "finite_structure", "match_index", "vacuum_axis"]


@contextlib.contextmanager
def quiet_spglib():
    """spglib 2.x warns (DeprecationWarning) on every symmetry search that it will change its
    error handling; pymatgen calls it, we cannot change that call, and tests run with warnings as
    errors. Silenced here only, around pymatgen symmetry calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="spglib")
        warnings.filterwarnings("ignore", message=".*OLD_ERROR_HANDLING.*")
        yield


def to_structure(atoms: Atoms, order=(0, 1, 2)):
    """A pymatgen ``Structure`` of ``atoms`` in an orthogonal cell, axes permuted to ``order``."""
    from pymatgen.core import Lattice, Structure

    lengths = np.diag(np.asarray(atoms.cell.array))[list(order)]
    return Structure(
        Lattice(np.diag(lengths)),
        atoms.get_chemical_symbols(),
        np.asarray(atoms.positions)[:, list(order)],
        coords_are_cartesian=True,
    )


def finite_structure(atoms: Atoms, view: View, pad: float = 10.0):
    """``atoms`` as the microscope sees them (cut along the beam by ``view``) in a cell with ``pad``
    extra vacuum along z, so a symmetry search sees a finite specimen: sites at different depths
    or in different projected columns are distinct. Atom order is kept."""
    from pymatgen.core import Lattice, Structure

    pos = np.asarray(atoms.positions, dtype=np.float64).copy()
    if view.cut:
        period = view.periodic_cell[2]
        gap = period - view.span
        dz = np.mod(pos[:, 2] - view.z_origin, period)
        pos[:, 2] = np.where(dz > view.span + gap / 2, dz - period, dz) + view.vacuum
    lengths = np.array([view.cell[0], view.cell[1], view.cell[2] + pad])
    return Structure(Lattice(np.diag(lengths)), atoms.get_chemical_symbols(), pos, coords_are_cartesian=True)


def match_index(structure, cart, tol: float = 1e-3) -> int:
    """Index of the site of ``structure`` at Cartesian ``cart`` [Å] (periodic distance)."""
    frac = structure.lattice.get_fractional_coords(cart)
    d = structure.lattice.get_all_distances(structure.frac_coords, frac[None, :])[:, 0]
    i = int(np.argmin(d))
    if d[i] > tol:
        raise LookupError(f"no site within {tol} Å of {np.round(cart, 3).tolist()}")
    return i


def vacuum_axis(atoms: Atoms) -> tuple[int, float]:
    """The axis (0, 1, 2) with the widest empty gap in an orthogonal periodic cell, and the gap [Å]."""
    lengths = np.diag(np.asarray(atoms.cell.array))
    best = (2, -1.0)
    for ax in range(3):
        z = np.sort(np.mod(np.asarray(atoms.positions)[:, ax], lengths[ax]))
        g = float(np.max(np.diff(np.concatenate([z, z[:1] + lengths[ax]]))))
        if g > best[1]:
            best = (ax, g)
    return best
