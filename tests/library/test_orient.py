"""Orientation: orthogonal periodic cells along zone axes, profile views, the specimen cut."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc111, mx2

from forward import InputError
from library.orient import (
    apply_orientation,
    as_is_view,
    find_orientation,
    identity_orientation,
    make_view,
    to_specimen,
)


def test_hexagonal_plan_view_gives_a_by_sqrt3a_rectangle():
    a = 3.16
    host = mx2("MoS2", "2H", a=a, thickness=3.17, vacuum=6.0)
    ori = find_orientation(host, (0, 0, 1))
    np.testing.assert_allclose(ori.lengths[:2], [a, np.sqrt(3) * a], rtol=1e-9)
    assert ori.strain < 1e-12
    ortho = apply_orientation(host, ori)
    assert len(ortho) == 2 * len(host)  # the rectangle holds two primitive cells
    cell = ortho.cell.array
    np.testing.assert_allclose(cell, np.diag(np.diag(cell)), atol=1e-12)


def test_fcc_110_zone_axis_lengths():
    a = 3.92
    ori = find_orientation(bulk("Pt", "fcc", a=a, cubic=True), (1, 1, 0), beam_repeats=3)
    # Perpendicular to [110]: [001] (a) and [1-10] (a sqrt2); beam: 3 a sqrt2 / ... of the cubic cell
    assert sorted(np.round(ori.lengths[:2], 6)) == sorted(np.round([a, a * np.sqrt(2)], 6))
    assert ori.lengths[2] == pytest.approx(3 * a * np.sqrt(2))


def test_min_lengths_repeat_the_cell():
    host = mx2("MoS2", "2H", a=3.16, thickness=3.17, vacuum=6.0)
    ori = find_orientation(host, (0, 0, 1), min_lengths=(9.0, 9.0))
    assert ori.lengths[0] >= 9.0 and ori.lengths[1] >= 9.0
    assert ori.lengths[0] < 9.0 + 3.16 + 1e-9


def test_profile_view_puts_the_surface_normal_in_the_image_plane():
    slab = fcc111("Pt", (1, 1, 4), a=3.92, vacuum=6.0)
    ori = find_orientation(slab, (1, 0, 0), beam_repeats=2)
    ortho = apply_orientation(slab, ori)
    view = make_view(ortho, vacuum=2.0)
    spec = to_specimen(ortho, view)
    # beam along the in-plane nearest-neighbour direction: 2 atoms of 2.77 Å per column
    assert view.periodic_cell[2] == pytest.approx(2 * 3.92 / np.sqrt(2))
    # the slab normal is y: the four layers are spread along y, each 2.263 Å apart
    ys = np.unique(np.round(np.asarray(spec.positions)[:, 1], 3))
    assert len(ys) == 4
    np.testing.assert_allclose(np.diff(ys), 3.92 / np.sqrt(3), atol=1e-3)


def test_view_cut_and_vacuum():
    host = mx2("MoS2", "2H", a=3.16, thickness=3.17, vacuum=6.0)
    ortho = apply_orientation(host, find_orientation(host, (0, 0, 1)))
    view = make_view(ortho, vacuum=3.0)
    spec = to_specimen(ortho, view)
    z = np.asarray(spec.positions)[:, 2]
    assert z.min() == pytest.approx(3.0)
    assert z.max() == pytest.approx(3.0 + 3.17)
    assert float(spec.cell[2]) == pytest.approx(3.17 + 6.0)


def test_members_share_the_family_cell_and_adsorbate_above_stays_above():
    host = mx2("MoS2", "2H", a=3.16, thickness=3.17, vacuum=6.0)
    ortho = apply_orientation(host, find_orientation(host, (0, 0, 1)))
    view = make_view(ortho, vacuum=3.0)
    member = ortho.copy()
    top = member.positions[:, 2].max()
    member.append("O")
    member.positions[-1] = [0.3, 0.3, top + 1.5]
    s0, s1 = to_specimen(ortho, view), to_specimen(member, view)
    np.testing.assert_array_equal(np.asarray(s0.cell), np.asarray(s1.cell))
    assert float(s1.positions[-1, 2]) == pytest.approx(3.0 + 3.17 + 1.5)


def test_bad_zone_axes():
    host = bulk("Cu", "fcc", a=3.61, cubic=True)
    with pytest.raises(InputError, match=r"zone axis \[0, 0, 0\] has no direction"):
        find_orientation(host, (0, 0, 0))
    with pytest.raises(InputError, match=r"zone axis must be 3 integers"):
        find_orientation(host, (0.5, 0, 1))
    tric = bulk("Cu", "fcc", a=3.61)  # primitive rhombohedral cell: still has orthogonal supercells
    assert find_orientation(tric, (1, 0, 0)).strain < 1e-9


def test_no_perpendicular_vector_within_search():
    host = bulk("Cu", "fcc", a=3.61, cubic=True)
    with pytest.raises(InputError, match=r"no lattice vector with indices up to 1 (is )?perpendicular"):
        find_orientation(host, (1, 2, 3), max_index=1)


def test_cell_disagreement_named():
    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    b = bulk("Cu", "fcc", a=3.65, cubic=True)
    ori = find_orientation(a, (0, 0, 1))
    with pytest.raises(InputError, match=r"other\.cif: its cell .* disagrees with the family's cell"):
        apply_orientation(b, ori, where="other.cif")


def test_as_is_needs_orthogonal_cell_and_vacuum():
    with pytest.raises(InputError, match=r"p\.vasp: the cell is not orthogonal"):
        identity_orientation(bulk("Cu", "fcc", a=3.61), "p.vasp")
    with pytest.raises(InputError, match=r"c\.cif: no vacuum along the beam \(z\)"):
        as_is_view(bulk("Cu", "fcc", a=3.61, cubic=True), where="c.cif")


def test_specimen_errors_name_the_source():
    host = bulk("Cu", "fcc", a=3.61, cubic=True)
    ortho = apply_orientation(host, find_orientation(host, (0, 0, 1)))
    view = make_view(ortho)
    bad = ortho.copy()
    bad.positions[1] = bad.positions[0] + [0.1, 0.0, 0.0]
    with pytest.raises(InputError, match=r"gen\.xyz: atoms 0 and 1 overlap"):
        to_specimen(bad, view, where="gen.xyz")
