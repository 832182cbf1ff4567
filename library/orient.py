"""Orientation for the microscope: a crystal (or slab) -> an orthogonal periodic cell with the beam
along z -> a finite specimen with vacuum along the beam.

Two steps, both shared by every member of a family so their images compare pixel for pixel:

1. :func:`find_orientation` picks an integer supercell matrix ``M`` (rows: new lattice vectors in
   units of the source lattice) whose third row is the zone axis ``[uvw]`` (the beam) and whose
   first two rows are the shortest lattice vectors perpendicular to the beam and to each other.
   A zone axis ``[uvw]`` is a real-space lattice direction ``t = u a1 + v a2 + w a3`` (e.g.
   Williams & Carter, *Transmission Electron Microscopy*, 2nd ed., §18.2); the perpendicular
   lattice vectors span the zero-order Laue zone, which is why a periodic orthogonal cell exists
   for any rational zone axis of a lattice with a right-angled 2-D net perpendicular to it.
   :func:`apply_orientation` builds that supercell (``ase.build.make_supercell``) and maps it onto
   the axes x, y, z (z = beam). The same matrix serves a surface-profile view: give a slab and an
   in-plane zone axis; the surface normal then lies in the image plane.
2. :func:`make_view` reads the vacuum gap of the family's host along the beam and fixes the
   specimen cell; :func:`to_specimen` cuts every member at that gap and adds ``vacuum`` [Å] on
   both sides, giving a :class:`forward.Specimen` (x, y periodic; z finite, ``[0, cell[2]]``).

An orthogonal cell found within ``angle_tol`` of 90° is made exactly orthogonal by mapping
fractional coordinates; the largest relative strain this implies is recorded in
:attr:`Orientation.strain`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms
from ase.build import make_supercell

from forward import InputError

if TYPE_CHECKING:
    from forward import Specimen

__all__ = [
    "Orientation",
    "View",
    "find_orientation",
    "apply_orientation",
    "identity_orientation",
    "make_view",
    "as_is_view",
    "to_specimen",
]

#: Cells of one family must agree to this many Å (lengths and lattice vectors).
CELL_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Orientation:
    """How to turn a source lattice into the orthogonal periodic cell the microscope sees.

    Attributes:
        matrix: ``[3, 3]`` integer supercell matrix; rows are the new vectors a (-> x), b (-> y)
            and the beam vector t (-> z) in units of the source lattice vectors.
        source_cell: ``[3, 3]`` source lattice (rows) [Å] the matrix applies to.
        zone_axis: the beam direction ``[uvw]`` in source lattice units.
        lengths: side lengths of the orthogonal cell (x, y, z) [Å].
        strain: largest relative deviation from orthogonality removed by the mapping (0 when the
            supercell is exactly orthogonal).
    """

    matrix: tuple[tuple[int, int, int], ...]
    source_cell: tuple[tuple[float, float, float], ...]
    zone_axis: tuple[int, int, int]
    lengths: tuple[float, float, float]
    strain: float

    def describe(self) -> str:
        m = ";".join(" ".join(str(v) for v in row) for row in self.matrix)
        return f"zone axis {list(self.zone_axis)}, supercell [{m}], strain {self.strain:.2g}"


@dataclasses.dataclass(frozen=True)
class View:
    """The specimen cell of a family and where members are cut along the beam.

    Attributes:
        cell: specimen cell side lengths (x, y, z) [Å].
        periodic_cell: side lengths of the orthogonal periodic cell the members live in [Å].
        z_origin: height in the periodic cell where the specimen starts (top of the host's
            largest vacuum gap along the beam) [Å].
        span: extent of the host along the beam [Å].
        vacuum: vacuum added below and above the host along the beam [Å].
        cut: False for structures given already in the microscope frame (z kept as is).
    """

    cell: tuple[float, float, float]
    periodic_cell: tuple[float, float, float]
    z_origin: float
    span: float
    vacuum: float
    cut: bool = True


def _reduce(v) -> tuple[int, int, int]:
    try:
        arr = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or not np.allclose(arr, np.rint(arr)):
        raise InputError(f"zone axis must be 3 integers [u, v, w], got {v!r}")
    iv = [int(x) for x in np.rint(arr)]
    g = math.gcd(math.gcd(abs(iv[0]), abs(iv[1])), abs(iv[2]))
    if g == 0:
        raise InputError("zone axis [0, 0, 0] has no direction: give e.g. [0, 0, 1]")
    return tuple(x // g for x in iv)


def _perpendicular(cell: np.ndarray, direction: np.ndarray, max_index: int, angle_tol: float, exclude=()):
    """Integer vectors n (|n_i| <= max_index) with n @ cell perpendicular to ``direction``,
    shortest first (ties broken towards positive, small indices: deterministic)."""
    rng = range(-max_index, max_index + 1)
    ns = np.array([n for n in itertools.product(rng, rng, rng) if any(n)], dtype=np.int64)
    vs = ns @ cell
    lens = np.linalg.norm(vs, axis=1)
    cos = np.abs(vs @ direction) / (lens * np.linalg.norm(direction))
    ok = cos < angle_tol
    for e in exclude:
        e = np.asarray(e, dtype=np.float64)
        par = np.abs(vs @ e) / (lens * np.linalg.norm(e))
        ok &= par < angle_tol
    ns, lens, cos = ns[ok], lens[ok], cos[ok]
    order = np.lexsort((-ns[:, 2], -ns[:, 1], -ns[:, 0], np.abs(ns).sum(1), np.round(lens, 5)))
    return ns[order], lens[order], cos[order]


def find_orientation(
    atoms: Atoms,
    zone_axis=(0, 0, 1),
    *,
    min_lengths: tuple[float, float] = (0.0, 0.0),
    beam_repeats: int = 1,
    max_index: int = 6,
    angle_tol: float = 1e-3,
) -> Orientation:
    """The orthogonal supercell of ``atoms``' lattice with ``zone_axis`` along the beam.

    Args:
        atoms: the source structure (its cell rows are the lattice vectors) [Å].
        zone_axis: beam direction ``[uvw]`` in the source lattice.
        min_lengths: smallest acceptable cell lengths along x and y [Å]; the perpendicular
            vectors are repeated until they reach them.
        beam_repeats: repetitions of the zone-axis vector along the beam (specimen thickness).
        max_index: largest integer coefficient searched for perpendicular vectors.
        angle_tol: largest |cos| between supposedly perpendicular vectors.
    """
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise InputError("cannot orient a structure without a 3-D cell: give the lattice vectors")
    uvw = _reduce(zone_axis)
    if int(beam_repeats) < 1:
        raise InputError(f"beam_repeats must be >= 1, got {beam_repeats}")
    t = np.asarray(uvw, dtype=np.float64) @ cell
    ns, lens, _ = _perpendicular(cell, t, max_index, angle_tol)
    if len(ns) == 0:
        raise InputError(
            f"no lattice vector with indices up to {max_index} is perpendicular to zone axis {list(uvw)} "
            f"(within |cos| < {angle_tol}); choose a low-index zone axis or raise max_index"
        )
    a_n = ns[0]
    a = a_n @ cell
    nb, _, _ = _perpendicular(cell, t, max_index, angle_tol, exclude=[a])
    nb = [n for n in nb if abs(np.dot(n @ cell, a)) / (np.linalg.norm(n @ cell) * np.linalg.norm(a)) < angle_tol]
    if not nb:
        raise InputError(
            f"zone axis {list(uvw)}: found a = {a_n.tolist()} but no lattice vector with indices up to "
            f"{max_index} perpendicular to both it and the beam; raise max_index (a larger cell) or "
            "choose a lower-index zone axis"
        )
    b_n = np.asarray(nb[0])
    if np.linalg.det(np.array([a_n, b_n, uvw], dtype=np.float64) @ cell) < 0:
        a_n = -a_n  # keep b (for a slab in profile view: the surface normal) pointing as given
    ra = max(1, math.ceil(float(min_lengths[0]) / np.linalg.norm(a) - 1e-9))
    rb = max(1, math.ceil(float(min_lengths[1]) / np.linalg.norm(b_n @ cell) - 1e-9))
    m = np.array([a_n * ra, b_n * rb, np.asarray(uvw) * int(beam_repeats)], dtype=np.int64)
    vecs = m @ cell
    lengths = np.linalg.norm(vecs, axis=1)
    unit = vecs / lengths[:, None]
    gram = unit @ unit.T
    strain = float(np.abs(gram - np.eye(3)).max())
    return Orientation(
        matrix=tuple(tuple(int(x) for x in row) for row in m),
        source_cell=tuple(tuple(float(x) for x in row) for row in cell),
        zone_axis=uvw,
        lengths=tuple(float(x) for x in lengths),
        strain=strain,
    )


def identity_orientation(atoms: Atoms, where: str = "structure") -> Orientation:
    """The orientation of a structure already in an orthogonal cell with the beam along z."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    off = cell - np.diag(np.diag(cell))
    if np.abs(off).max() > CELL_TOL or (np.diag(cell) <= 0).any():
        raise InputError(
            f"{where}: the cell is not orthogonal along x, y, z (cell {cell.round(4).tolist()} Å); "
            "give a zone_axis so the library orients it, or supply an orthogonal cell"
        )
    return Orientation(
        matrix=((1, 0, 0), (0, 1, 0), (0, 0, 1)),
        source_cell=tuple(tuple(float(x) for x in row) for row in cell),
        zone_axis=(0, 0, 1),
        lengths=tuple(float(x) for x in np.diag(cell)),
        strain=0.0,
    )


def apply_orientation(atoms: Atoms, orientation: Orientation, where: str = "structure") -> Atoms:
    """``atoms`` in the orthogonal periodic cell of ``orientation`` (beam along z).

    Raises :class:`InputError` naming ``where`` if ``atoms``' lattice differs from the source
    lattice the orientation was made for (cells disagreeing within a family).
    """
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    src = np.asarray(orientation.source_cell)
    if cell.shape != (3, 3) or np.abs(cell - src).max() > CELL_TOL:
        raise InputError(
            f"{where}: its cell {cell.round(4).tolist()} Å disagrees with the family's cell "
            f"{src.round(4).tolist()} Å (tolerance {CELL_TOL} Å); every hypothesis of a family must "
            "share one cell so images compare pixel for pixel: put it in its own family or rebuild it "
            "in the family's cell"
        )
    m = np.asarray(orientation.matrix, dtype=np.int64)
    if np.array_equal(m, np.eye(3, dtype=np.int64)):
        sup = atoms.copy()
    else:
        sup = make_supercell(atoms, m, wrap=True)
    frac = sup.cell.scaled_positions(sup.positions)
    frac = np.mod(frac, 1.0)
    lengths = np.asarray(orientation.lengths)
    out = Atoms(
        numbers=sup.numbers,
        positions=frac * lengths[None, :],
        cell=np.diag(lengths),
        pbc=True,
    )
    return out


def _largest_gap(z: np.ndarray, period: float) -> tuple[float, float]:
    """Start height and width [Å] of the largest empty interval along a periodic axis."""
    zs = np.sort(np.mod(z, period))
    gaps = np.diff(np.concatenate([zs, zs[:1] + period]))
    k = int(np.argmax(gaps))
    return float(zs[(k + 1) % len(zs)]), float(gaps[k])


def make_view(host: Atoms, *, vacuum: float = 3.0) -> View:
    """The specimen cell for a family whose host, in its orthogonal periodic cell, is ``host``.

    The specimen starts at the top of the host's largest gap along the beam and spans the host
    plus ``vacuum`` [Å] on each side, so atoms added within ``vacuum`` of the host (adsorbates)
    still lie inside the cell.
    """
    if not (math.isfinite(vacuum) and vacuum >= 0):
        raise InputError(f"vacuum along the beam must be >= 0 Å, got {vacuum!r}")
    lengths = np.diag(np.asarray(host.cell.array))
    period = float(lengths[2])
    start, gap = _largest_gap(np.asarray(host.positions)[:, 2], period)
    span = period - gap
    return View(
        cell=(float(lengths[0]), float(lengths[1]), float(span + 2 * vacuum)),
        periodic_cell=tuple(float(x) for x in lengths),
        z_origin=start,
        span=float(span),
        vacuum=float(vacuum),
    )


def as_is_view(atoms: Atoms, *, min_vacuum: float = 2.5, where: str = "structure") -> View:
    """A view keeping positions as they are, for structures already in the microscope frame.

    The cell must be orthogonal, every z inside ``[0, cell_z]`` and at least ``min_vacuum`` [Å]
    of vacuum along the beam (a specimen is finite along z).
    """
    ori = identity_orientation(atoms, where)
    z = np.asarray(atoms.positions)[:, 2]
    cz = ori.lengths[2]
    span = float(z.max() - z.min())
    if cz - span < min_vacuum:
        raise InputError(
            f"{where}: no vacuum along the beam (z): atoms span {span:.3f} Å of a {cz:.3f} Å cell, "
            f"need at least {min_vacuum} Å of vacuum. Add vacuum along z, or give a zone_axis so "
            "the library orients the crystal and adds vacuum itself"
        )
    return View(cell=ori.lengths, periodic_cell=ori.lengths, z_origin=0.0, span=span, vacuum=0.0, cut=False)


def to_specimen(atoms: Atoms, view: View, *, where: str = "structure", dw_sigmas=None) -> Specimen:
    """``atoms`` (in the family's orthogonal periodic cell) as a :class:`forward.Specimen`.

    Along the beam, atoms are placed relative to the host's cut: those within half the host's gap
    above the host stay above it, the rest wrap below. Errors from
    :func:`forward.make_specimen` (overlaps, atoms outside the cell) are re-raised naming ``where``.
    """
    cell = np.diag(np.asarray(atoms.cell.array))
    if np.abs(np.asarray(atoms.cell.array) - np.diag(cell)).max() > CELL_TOL or np.abs(
        cell - np.asarray(view.periodic_cell)
    ).max() > CELL_TOL:
        raise InputError(
            f"{where}: its cell {np.asarray(atoms.cell.array).round(4).tolist()} Å disagrees with the "
            f"family's orthogonal cell {list(np.round(view.periodic_cell, 4))} Å; every hypothesis of "
            "a family must share one cell"
        )
    from forward import make_specimen  # JAX: only when a Specimen is built

    pos = np.asarray(atoms.positions, dtype=np.float64).copy()
    if view.cut:
        period = view.periodic_cell[2]
        gap = period - view.span
        dz = np.mod(pos[:, 2] - view.z_origin, period)
        dz = np.where(dz > view.span + gap / 2, dz - period, dz)
        pos[:, 2] = dz + view.vacuum
        pos[:, :2] = np.mod(pos[:, :2], np.asarray(view.cell[:2])[None, :])
    try:
        return make_specimen(pos, atoms.numbers, np.asarray(view.cell), dw_sigmas)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
