"""The Nion unit table and conversions (:mod:`hypotest.live.nion`), without the Nion packages:
BEAM.json (Å, mrad, eV) <-> Nion controls (m, rad, V, A), and square-pixel scans of a cell."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypotest.live.nion import E_CHARGE, NION_CONTROLS, beam_from_instrument, control_targets, square_pixel_gpts


def test_the_unit_table_converts_angstrom_mrad_to_metres_radians():
    beam = {"energy": 80000.0, "dose": 40.0, "sampling": [0.1, 0.1], "semiangle_cutoff": 25.0,
            "aberrations": {"defocus": 50.0, "C12": 10.0, "phi12": math.pi / 8, "C30": -1.5e5}}  # fmt: skip
    t = control_targets(beam)
    assert t["C10"] == pytest.approx(-50e-10)  # defocus = -C10 (DESIGN: positive defocus = underfocus)
    assert t["C12.x"] == pytest.approx(10e-10 * math.cos(math.pi / 4))
    assert t["C12.y"] == pytest.approx(10e-10 * math.sin(math.pi / 4))
    assert t["C30"] == pytest.approx(-1.5e-5)  # -0.015 mm
    assert t["ConvergenceAngle"] == pytest.approx(0.025)
    assert {c for _, c, *_ in NION_CONTROLS} >= set(t) | {"EHT", "BeamCurrent"}
    assert control_targets({**beam, "aberrations": {"C10": 7.0}})["C10"] == pytest.approx(7e-10)


@settings(max_examples=60, deadline=None)
@given(defocus=st.floats(-500, 500), c12=st.floats(0.5, 100), phi12=st.floats(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3),
       c30=st.floats(-2e5, 2e5), alpha=st.floats(5, 50), current=st.floats(1e-14, 1e-9), t_us=st.floats(0.05, 100))
def test_instrument_values_give_back_the_beam(defocus, c12, phi12, c30, alpha, current, t_us):
    beam = {"energy": 60000.0, "dose": 1.0, "sampling": [0.08, 0.08], "semiangle_cutoff": alpha,
            "aberrations": {"defocus": defocus, "C12": c12, "phi12": phi12, "C30": c30}}  # fmt: skip
    values = {**control_targets(beam), "EHT": 60000.0, "BeamCurrent": current}
    back = beam_from_instrument(beam, values, [0.08, 0.08], t_us)
    ab = back["aberrations"]
    assert ab.get("defocus", 0.0) == pytest.approx(defocus, abs=1e-9)
    assert ab["C12"] == pytest.approx(c12) and ab["phi12"] == pytest.approx(phi12, abs=1e-9)
    assert ab.get("C30", 0.0) == pytest.approx(c30, abs=1e-6)
    assert back["semiangle_cutoff"] == pytest.approx(alpha)
    assert back["dose"] == pytest.approx(current * t_us * 1e-6 / (E_CHARGE * 0.08**2))  # I t / (e A)


def test_square_pixels_span_the_cell():
    mos2 = (9.48, 10.946561)  # orthorhombic MoS2 supercell: aspect 2 / sqrt(3)
    nx, ny = square_pixel_gpts(mos2, 0.1)
    assert (nx, ny) == (97, 112)
    assert abs(ny * mos2[0] / nx - mos2[1]) / (mos2[0] / nx) < 0.05  # the far edge within 0.05 px
    assert square_pixel_gpts((8.0, 8.0), 0.1) == (80, 80)
    n = square_pixel_gpts((3.905 * 3, 3.905 * 3), 0.05)
    assert n[0] == n[1] and abs(3.905 * 3 / n[0] - 0.05) < 0.001
    assert np.all(np.asarray(square_pixel_gpts((20.0, 11.0), 0.2)) > 0)
