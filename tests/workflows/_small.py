"""Tiny hypotheses and specs shared by the workflows tests (cells of 4 Å, 32² grids)."""

from __future__ import annotations

import numpy as np

from forward import make_beam, make_grid, make_specimen
from library.provenance import content_id
from workflows.spec import make_simulation_spec

CELL = (4.0, 4.0, 4.0)  # [Å]
GPTS = 32


def small_pairs(n: int, seed: int = 0, n_atoms: int = 2):
    """``n`` distinct MoS-like hypotheses with ``n_atoms`` atoms each (one compile per atom count)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        base = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0]])[:n_atoms]
        pos = base + np.column_stack([rng.uniform(-0.3, 0.3, (n_atoms, 2)), np.zeros(n_atoms)])
        sp = make_specimen(pos, [42, 16, 16, 42][:n_atoms], CELL)
        pairs.append((content_id(sp), sp))
    return pairs


def small_spec(defocus: float = 50.0, dose: float = 1e4):
    grid = make_grid(extent=CELL[:2], gpts=GPTS)
    beam = make_beam(300e3, defocus=defocus, semiangle_cutoff=20.0, dose=dose)
    return make_simulation_spec(grid, beam, thickness=CELL[2], slice_thickness=2.0, species=(16, 42))
