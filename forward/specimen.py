"""The atoms of one candidate structure in the microscope frame (beam along +z)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from forward._pytree import pytree_dataclass
from forward._validate import as_float_array
from forward.elements import MAX_Z, atomic_number
from forward.errors import InputError

__all__ = ["Specimen", "make_specimen", "stack_specimens", "beam_period", "add_exit_layers", "DEFAULT_MIN_DISTANCE"]

#: Closest approach of two atoms [Å] below which a structure is rejected as overlapping.
DEFAULT_MIN_DISTANCE = 0.5


@pytree_dataclass
class Specimen:
    """Atoms in an orthogonal cell, periodic in x and y, beam along +z.

    Attributes:
        positions: ``[n, 3]`` Cartesian positions [Å]; z in ``[0, cell[2]]``.
        numbers: ``[n]`` atomic numbers (integer leaf: use ``jax.grad(..., allow_int=True)`` to
            differentiate a function of a whole ``Specimen``).
        cell: ``[3]`` side lengths of the orthogonal cell [Å].
        dw_sigmas: ``[n]`` isotropic Debye–Waller displacement sigma per Cartesian direction
            [Å], ``sqrt(B / 8π²)``.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    dw_sigmas: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(np.shape(self.numbers)[-1])


def _numbers(numbers: Sequence[int | str] | np.ndarray, n: int) -> np.ndarray:
    seq = list(np.asarray(numbers, dtype=object).reshape(-1))
    if len(seq) != n:
        raise InputError(
            f"numbers has {len(seq)} entries but positions has {n} atoms: give one element per atom"
        )
    out = np.empty(n, dtype=np.int32)
    for i, v in enumerate(seq):
        if isinstance(v, str):
            try:
                out[i] = atomic_number(v)
            except InputError as exc:
                raise InputError(f"atom {i}: {exc}") from None
            continue
        if isinstance(v, (bool, np.bool_)) or not float(v).is_integer():
            raise InputError(f"atom {i}: atomic number must be an integer, got {v!r}")
        if not 1 <= int(v) <= MAX_Z:
            raise InputError(f"atom {i}: atomic number {v} is outside 1..{MAX_Z} (H..Lr)")
        out[i] = int(v)
    return out


def _cell(cell) -> np.ndarray:
    arr = as_float_array(cell, "cell")
    if arr.shape == (3, 3):
        off = arr - np.diag(np.diag(arr))
        if np.abs(off).max() > 1e-6 * max(1.0, np.abs(arr).max()):
            raise InputError(
                "cell is not orthogonal (off-diagonal entries up to "
                f"{np.abs(off).max():.3g} Å): orient the structure into an orthogonal cell with "
                "the beam along z first (library orientation tools do this)"
            )
        arr = np.diag(arr).copy()
    if arr.shape != (3,):
        raise InputError(f"cell must be 3 side lengths [Å] or a 3x3 diagonal matrix, got shape {list(arr.shape)}")
    if (arr <= 0).any():
        raise InputError(f"cell side lengths must be positive [Å], got {arr.tolist()}: is the cell missing?")
    return arr


def _check_overlap(positions: np.ndarray, cell: np.ndarray, min_distance: float) -> None:
    if min_distance <= 0 or len(positions) < 2:
        return
    # Periodic in x and y; along z the box is padded so nothing wraps.
    z0 = positions[:, 2].min()
    span = positions[:, 2].max() - z0
    box = np.array([cell[0], cell[1], span + 2 * min_distance + 1.0])
    p = np.column_stack([np.mod(positions[:, :2], cell[:2]), positions[:, 2] - z0])
    p = np.minimum(p, np.nextafter(box, 0))  # mod can return the box edge in floating point
    tree = cKDTree(p, boxsize=box)
    pairs = tree.query_pairs(min_distance, output_type="ndarray")
    if len(pairs):
        d = np.abs(p[pairs[:, 0]] - p[pairs[:, 1]])
        d = np.minimum(d, box - d)
        dist = np.sqrt((d**2).sum(1))
        k = int(np.argmin(dist))
        i, j = (int(x) for x in pairs[k])
        raise InputError(
            f"atoms {i} and {j} overlap: {dist[k]:.3f} Å apart (minimum {min_distance} Å, counting "
            f"periodic images in x and y); {len(pairs)} such pair(s) in all. Remove duplicate "
            "atoms or pass min_distance=0 to accept them"
        )


def make_specimen(
    positions,
    numbers,
    cell,
    dw_sigmas=None,
    *,
    min_distance: float = DEFAULT_MIN_DISTANCE,
) -> Specimen:
    """A validated :class:`Specimen`.

    Args:
        positions: ``[n, 3]`` positions [Å]; x and y may lie outside the cell (they are
            periodic), z must lie within ``[0, cell[2]]``.
        numbers: ``[n]`` atomic numbers or element symbols ("Mo", "S").
        cell: 3 side lengths [Å], or a 3x3 cell that must be diagonal (orthogonal).
        dw_sigmas: ``[n]`` or scalar Debye–Waller sigma [Å] (default 0: static lattice).
        min_distance: closest allowed approach of two atoms [Å] (0 disables the check).
    """
    pos = as_float_array(positions, "positions")
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] < 1:
        raise InputError(f"positions must have shape [n, 3] with n >= 1, got {list(pos.shape)}")
    n = pos.shape[0]
    z = _numbers(numbers, n)
    c = _cell(cell)
    tol = 1e-6 * max(1.0, float(c[2]))
    outside = (pos[:, 2] < -tol) | (pos[:, 2] > c[2] + tol)
    if outside.any():
        i = int(np.argmax(outside))
        raise InputError(
            f"atom {i} at z = {pos[i, 2]:.4g} Å lies outside the cell along the beam [0, {c[2]:.4g}] Å; "
            "translate the structure along z or enlarge the cell (add vacuum)"
        )
    pos = pos.copy()
    pos[:, 2] = np.clip(pos[:, 2], 0.0, c[2])
    if dw_sigmas is None:
        dw = np.zeros(n)
    else:
        dw = as_float_array(dw_sigmas, "dw_sigmas")
        if dw.ndim == 0:
            dw = np.full(n, float(dw))
        if dw.shape != (n,):
            raise InputError(f"dw_sigmas must be a scalar or have shape [{n}], got {list(dw.shape)}")
        if (dw < 0).any():
            raise InputError(f"dw_sigmas must be >= 0 [Å], got {dw.min():g}")
    _check_overlap(pos, c, float(min_distance))
    return Specimen(positions=pos, numbers=z, cell=c, dw_sigmas=dw)


def stack_specimens(specimens: Sequence[Specimen]) -> Specimen:
    """Stack specimens with the same number of atoms into a batch for ``jax.vmap``.

    Hypotheses with different atom counts are padded by the forward model, not here.
    """
    specimens = list(specimens)
    if not specimens:
        raise InputError("stack_specimens needs at least one specimen")
    counts = {s.n_atoms for s in specimens}
    if len(counts) != 1:
        raise InputError(f"specimens must have equal atom counts to stack, got {sorted(counts)}")
    return Specimen(
        positions=np.stack([np.asarray(s.positions) for s in specimens]),
        numbers=np.stack([np.asarray(s.numbers) for s in specimens]),
        cell=np.stack([np.asarray(s.cell) for s in specimens]),
        dw_sigmas=np.stack([np.asarray(s.dw_sigmas) for s in specimens]),
    )


def _beam_period(pos: np.ndarray, z: np.ndarray, cell: np.ndarray, tol: float) -> float | None:
    """The smallest translation ``c`` along the beam [Å] that maps at least half the atoms onto an
    atom of the same element (x, y periodic), or None."""
    dz = []
    for el in np.unique(z):
        p = pos[z == el]
        d = p[None, :, :] - p[:, None, :]
        frac = d[..., :2] / cell[:2]
        same_xy = np.all(np.abs(frac - np.round(frac)) * cell[:2] < tol, axis=-1)
        dz.append(d[..., 2][same_xy & (d[..., 2] > 0.5)])
    cands = np.unique(np.round(np.concatenate(dz), 3)) if dz else np.zeros(0)
    for c in cands[:64]:
        d = pos[None, :, :] + np.r_[0.0, 0.0, c] - pos[:, None, :]
        d[..., :2] -= np.round(d[..., :2] / cell[:2]) * cell[:2]
        close = (np.linalg.norm(d, axis=-1) < tol) & (z[None, :] == z[:, None])
        if close.any(axis=0).sum() >= 0.5 * len(z):
            return float(c)
    return None


def beam_period(specimen: Specimen, tol: float = 0.05) -> float | None:
    """The crystal's repeat along the beam [Å] within ``specimen`` (the smallest translation along z
    that maps at least half of its atoms onto atoms of the same element), or None when it holds
    no repeat (a monolayer, one unit cell)."""
    return _beam_period(np.asarray(specimen.positions, float), np.asarray(specimen.numbers), np.asarray(specimen.cell, float), tol)


def add_exit_layers(specimen: Specimen, n: int, period: float | None = None, tol: float = 0.05) -> Specimen:
    """``specimen`` with ``n`` more host unit cells at the exit surface (the thickness nuisance).

    The specimen is cut into layers one ``period`` deep from its shallowest atom; the host layer is
    the one that recurs most often (so a defect in one layer is not copied), and it is repeated
    below the deepest layer ``n`` times, the cell growing by ``n period`` (the vacuum below the
    crystal is kept). ``period`` defaults to :func:`beam_period`.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise InputError(f"extra unit cells must be a whole number >= 0, got {n!r}")
    n = int(n)
    if n == 0:
        return specimen
    pos = np.asarray(specimen.positions, float)
    z = np.asarray(specimen.numbers)
    cell = np.asarray(specimen.cell, float)
    c = beam_period(specimen, tol) if period is None else float(period)
    if c is None:
        raise InputError(
            "the thickness cannot vary by whole unit cells: the structure has no repeat along the beam (a monolayer or "
            "a single unit cell); give no thickness range, or a structure at least two unit cells deep"
        )
    z0 = pos[:, 2].min()
    layer = np.floor((pos[:, 2] - z0 + tol) / c).astype(int)
    sigs = {}
    for j in np.unique(layer):
        m = layer == j
        rel = np.c_[z[m], np.round(np.c_[pos[m, :2] % cell[:2], pos[m, 2] - j * c] / tol)]
        sigs[int(j)] = tuple(map(tuple, rel[np.lexsort(rel.T[::-1])].astype(int)))
    count = {j: sum(s == sigs[j] for s in sigs.values()) for j in sigs}
    host = max(sigs, key=lambda j: (count[j], len(sigs[j]), -j))
    if count[host] < 2:
        raise InputError(
            "the thickness cannot vary by whole unit cells: no two layers of the structure along the beam are alike, so "
            f"the host layer is unknown (period {c:.4g} Å)"
        )
    m = layer == host
    last = int(layer.max())
    new_pos, new_z, new_dw = [pos], [z], [np.asarray(specimen.dw_sigmas, float)]
    for k in range(1, n + 1):
        p = pos[m].copy()
        p[:, 2] += (last + k - host) * c
        new_pos.append(p)
        new_z.append(z[m])
        new_dw.append(np.asarray(specimen.dw_sigmas, float)[m])
    cell2 = cell + np.r_[0.0, 0.0, n * c]
    return make_specimen(np.concatenate(new_pos), np.concatenate(new_z), cell2, np.concatenate(new_dw), min_distance=0.0)
