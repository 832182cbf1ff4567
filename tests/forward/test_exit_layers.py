"""The thickness nuisance's structures (forward.add_exit_layers, beam_period) and the optics image
function (forward.make_optics_image_fn) against the HRTEM simulator's own CTF."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import (InputError, add_exit_layers, beam_period, make_beam, make_grid, make_hrtem_simulator,
                     make_optics_image_fn, make_specimen)  # fmt: skip
from tests.forward._abtem_ref import SRTIO3_A, srtio3


def _slab(reps: int):
    a = srtio3((2, 2, reps))
    pos = a.positions.copy()
    pos[:, 2] += 2.0
    return make_specimen(pos, a.numbers, [2 * SRTIO3_A, 2 * SRTIO3_A, pos[:, 2].max() + 2.0])


def _sorted(s):
    x = np.c_[np.asarray(s.numbers), np.round(np.asarray(s.positions), 4)]
    return x[np.lexsort(x.T[::-1])]


def test_added_cells_equal_the_thicker_crystal():
    three, five = _slab(3), _slab(5)
    assert beam_period(three) == pytest.approx(SRTIO3_A, abs=1e-3)
    out = add_exit_layers(three, 2)
    np.testing.assert_allclose(np.asarray(out.cell), np.asarray(five.cell), atol=1e-9)
    np.testing.assert_allclose(_sorted(out), _sorted(five), atol=1e-6)
    assert add_exit_layers(three, 0) is three


def test_a_defect_is_not_copied_into_the_added_cells():
    s = _slab(3)
    pos, num = np.asarray(s.positions), np.asarray(s.numbers).copy()
    last = int(np.argmax(pos[:, 2] + 1e-3 * (num == 8)))  # an atom of the deepest layer
    keep = np.arange(len(num)) != last
    vac = make_specimen(pos[keep], num[keep], s.cell)
    out = add_exit_layers(vac, 1)
    assert out.n_atoms == vac.n_atoms + 20  # one whole host layer (2 x 2 cells of 5 atoms)
    full = add_exit_layers(s, 1)
    missing = [tuple(r) for r in _sorted(full).tolist() if tuple(r) not in {tuple(q) for q in _sorted(out).tolist()}]
    assert missing == [tuple(np.r_[num[last], np.round(pos[last], 4)].tolist())]  # only the vacancy differs


def test_a_monolayer_has_no_thickness_choices():
    from hypotest.hypothesis import load_hypotheses

    mos2 = load_hypotheses("mos2_defects")[0].specimen
    assert beam_period(mos2) is None
    with pytest.raises(InputError, match="no repeat along the beam"):
        add_exit_layers(mos2, 1)
    one = make_specimen(np.array([[1.0, 1.0, 2.0], [2.0, 2.0, 3.5]]), [42, 16], [4.0, 4.0, 6.0])
    assert beam_period(one) is None
    with pytest.raises(InputError, match="no repeat along the beam"):
        add_exit_layers(one, 1)
    with pytest.raises(InputError, match="whole number >= 0"):
        add_exit_layers(one, -1)


def test_optics_image_fn_is_the_ctf_of_the_shifted_beam():
    grid = make_grid(extent=(2 * SRTIO3_A,) * 2, gpts=(64, 64))
    s = _slab(2)
    beam = make_beam(300e3, semiangle_cutoff=25.0, aberrations={"C30": -1.5e5, "defocus": -60.0}, focal_spread=20.0)
    sim = make_hrtem_simulator(grid, float(s.cell[2]), 1.0, camera_gpts=(32, 32))
    psi = sim.exit_wave(s, beam)
    f = make_optics_image_fn(grid, beam, (32, 32))
    c12, phi12 = 8.0, 0.3
    other = make_beam(300e3, semiangle_cutoff=25.0, focal_spread=20.0,
                      aberrations={"C30": -1.5e5, "defocus": -60.0 + 12.5, "C12": c12, "phi12": phi12})  # fmt: skip
    ref = np.asarray(sim.image_from_exit_wave(psi, other))
    got = np.asarray(f(psi, jnp.asarray([12.5, c12 * np.cos(2 * phi12), c12 * np.sin(2 * phi12)])))
    np.testing.assert_allclose(got, ref, atol=2e-4)
    np.testing.assert_allclose(np.asarray(f(psi, jnp.zeros(3))), np.asarray(sim.image_from_exit_wave(psi, beam)), atol=1e-5)
    # smooth through C12 = 0: finite gradients there
    g = jax.grad(lambda t: jnp.sum(f(psi, t) ** 2))(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))
