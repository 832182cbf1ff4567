"""The forward data model: Grid, Specimen, Aberrations, Detector, BeamCondition."""

import jax
import numpy as np
import pytest

import forward as F
from forward import InputError
from tests.pytree_checks import check_all, check_pickle, check_tree_map


def _specimen(i=0):
    return F.make_specimen(
        [[0.0, 0.0, 1.0], [1.6 + 0.1 * i, 0.9, 2.5], [1.6, 0.9, 0.5]],
        ["Mo", "S", "S"],
        [3.2, 2.8, 3.0],
        dw_sigmas=0.05 + 0.01 * i,
    )


def _beam(i=0):
    det = F.make_detector("stem_annular", inner=70 + i, outer=200, read_noise=0.5, gain=2.0)
    return F.make_beam(
        80e3 + 1e3 * i,
        semiangle_cutoff=30,
        aberrations={"C30": 1e4 * (i + 1), "C12": 2.0, "phi12": 0.3},
        defocus=50.0 + i,
        tilt=(0.5, -0.2),
        focal_spread=20.0,
        angular_spread=0.2,
        source_size=0.4,
        dose=1e4,
        detector=det,
    )


@pytest.mark.parametrize(
    "make",
    [
        _specimen,
        _beam,
        lambda i: F.make_aberrations({"C30": 1e4 + i, "C23": 5.0}, defocus=-20.0 * (i + 1)),
        lambda i: F.make_detector("stem_segmented", inner=10 + i, outer=40, n_segments=4),
    ],
    ids=["Specimen", "BeamCondition", "Aberrations", "Detector"],
)
def test_pytree_contract(make):
    check_all(make)


def test_grid_is_static_pytree():
    grid = F.make_grid(extent=(10.0, 12.0), sampling=0.1)
    check_pickle(grid)
    check_tree_map(grid)
    assert jax.tree.leaves(grid) == []
    assert jax.grad(lambda g, x: x * g.extent[0], argnums=0)(grid, 1.0) == grid

    traces = []

    @jax.jit
    def f(g, x):
        traces.append(g.gpts)
        return x * g.sampling[0]

    f(grid, 1.0)
    f(F.make_grid(extent=(10.0, 12.0), sampling=0.1), 2.0)  # equal grid: no retrace
    f(F.make_grid(extent=(10.0, 12.0), sampling=0.2), 1.0)  # new grid: one retrace
    assert len(traces) == 2
    # a batch of specimens vmapped with the grid held static
    specs = F.stack_specimens([_specimen(i) for i in range(3)])
    out = jax.vmap(lambda s: s.positions[:, 0].sum() / grid.sampling[0])(specs)
    assert out.shape == (3,)


def test_grid_rounds_to_fft_friendly_and_reports_actual_sampling():
    grid = F.make_grid(extent=(10.0, 10.55), sampling=0.05)
    assert grid.gpts == (200, 216)  # 211 is prime: rounded up to 216 = 2^3 3^3
    assert grid.sampling[1] == pytest.approx(10.55 / 216)
    assert grid.sampling[1] <= 0.05
    assert F.fft_friendly_size(211) == 216
    assert F.make_grid(extent=10.55, sampling=0.05, fft_friendly=False).gpts == (211, 211)
    assert F.make_grid(extent=4.0, gpts=(40, 50)).sampling == (0.1, 0.08)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"extent": 10.0}, "exactly two of extent, gpts, sampling"),
        ({"extent": -1.0, "sampling": 0.1}, "extent must be positive"),
        ({"gpts": (10, 0), "sampling": 0.1}, "gpts must be positive integers"),
        ({"gpts": 10.5, "sampling": 0.1}, "gpts must be positive integers"),
        ({"extent": (1.0, 2.0, 3.0), "sampling": 0.1}, r"scalar or a pair \(x, y\)"),
        ({"extent": 10.0, "sampling": float("nan")}, "sampling must be finite"),
    ],
)
def test_grid_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        F.make_grid(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([[0, 0, 1]], ["Xx"], [3, 3, 3]), {}, r"atom 0: unknown element symbol 'Xx'"),
        (([[0, 0, 1]], ["Mg"], [3, 3, 3]), {}, None),
        (([[0, 0, 1]], ["mo"], [3, 3, 3]), {}, r"Did you mean 'Mo'"),
        (([[0, 0, 1]], [0], [3, 3, 3]), {}, r"atomic number 0 is outside 1..103"),
        (([[0, 0, 1]], [1.5], [3, 3, 3]), {}, r"atomic number must be an integer"),
        (([[0, np.nan, 1]], ["S"], [3, 3, 3]), {}, r"positions must be finite, got nan at index \(0, 1\)"),
        (([[0, np.inf, 1]], ["S"], [3, 3, 3]), {}, r"positions must be finite, got inf"),
        (([[0, 0, 1], [1, 1, 1]], ["S"], [3, 3, 3]), {}, r"numbers has 1 entries but positions has 2 atoms"),
        (([0, 0, 1],), {"numbers": ["S"], "cell": [3, 3, 3]}, r"positions must have shape \[n, 3\]"),
        (([[0, 0, 1]], ["S"], [3, 0, 3]), {}, r"cell side lengths must be positive.*missing"),
        (([[0, 0, 1]], ["S"], [[3, 0.5, 0], [0, 3, 0], [0, 0, 3]]), {}, "cell is not orthogonal"),
        (([[0, 0, 5]], ["S"], [3, 3, 3]), {}, r"atom 0 at z = 5 Å lies outside the cell along the beam"),
        (([[0, 0, 1], [0.2, 0.1, 1.1]], ["S", "S"], [3, 3, 3]), {}, r"atoms 0 and 1 overlap: 0.245 Å apart"),
        # periodic image in x: 0.1 and 2.95 are 0.15 Å apart through the cell boundary
        (([[0.1, 1, 1], [2.95, 1, 1]], ["S", "S"], [3, 3, 3]), {}, r"atoms 0 and 1 overlap: 0.150 Å"),
        (([[0, 0, 1]], ["S"], [3, 3, 3]), {"dw_sigmas": -0.1}, r"dw_sigmas must be >= 0"),
        (([[0, 0, 1]], ["S"], [3, 3, 3]), {"dw_sigmas": [0.1, 0.1]}, r"dw_sigmas must be a scalar or have shape \[1\]"),
    ],
)
def test_specimen_bad_input(args, kwargs, match):
    if match is None:
        assert F.make_specimen(*args, **kwargs).numbers.tolist() == [12]
        return
    with pytest.raises(InputError, match=match):
        F.make_specimen(*args, **kwargs)


def test_specimen_accepts_overlap_when_disabled_and_symbols_or_numbers():
    s = F.make_specimen([[0, 0, 1], [0.2, 0.1, 1.1]], [42, "S"], [3, 3, 3], min_distance=0)
    assert s.numbers.dtype == np.int32 and s.numbers.tolist() == [42, 16]
    assert s.n_atoms == 2 and s.dw_sigmas.tolist() == [0.0, 0.0]


def test_stack_specimens_needs_equal_atom_counts():
    one = F.make_specimen([[0, 0, 1]], ["S"], [3, 3, 3])
    with pytest.raises(InputError, match=r"equal atom counts to stack, got \[1, 3\]"):
        F.stack_specimens([one, _specimen()])
    with pytest.raises(InputError, match="at least one specimen"):
        F.stack_specimens([])


def test_aberrations_defocus_aliases_and_conversions():
    ab = F.make_aberrations({"Cs": 1.2e7, "astigmatism": 3.0}, defocus=100.0)
    assert float(ab.C10) == -100.0 and float(ab.defocus) == 100.0
    assert float(ab.C30) == 1.2e7 and float(ab.C12) == 3.0
    assert F.make_aberrations({"defocus": 5.0}).as_dict()["C10"] == -5.0
    assert set(ab.as_dict()) == set(F.ABERRATION_SYMBOLS)


@pytest.mark.parametrize(
    ("coeffs", "kwargs", "match"),
    [
        ({"phi_12": 1.0}, {}, r"unknown aberration 'phi_12'.*Did you mean phi12"),
        ({"C10": 1.0}, {"defocus": 1.0}, r"either defocus or C10 \(defocus = -C10\), not both"),
        ({"Cs": 1.0, "C30": 2.0}, {}, r"aberration C30 given twice \(as 'Cs' and 'C30'\)"),
        ({"C30": float("nan")}, {}, r"aberration C30 \[Å\] must be finite"),
        ({"phi12": "a"}, {}, r"aberration phi12 \[rad\] must be a number"),
    ],
)
def test_aberrations_bad_input(coeffs, kwargs, match):
    with pytest.raises(InputError, match=match):
        F.make_aberrations(coeffs, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"energy": -300e3}, r"energy must be positive \[eV\], got -300000 eV"),
        ({"energy": 300}, r"below the supported range.*did you give kV\? 300 kV is 300000 eV"),
        ({"energy": 5e7}, "above the supported range"),
        ({"energy": float("nan")}, r"energy \[eV\] must be finite"),
        ({"energy": 300e3, "dose": 0}, r"dose must be in \(0, 1e\+09\] e-/Å², got 0"),
        ({"energy": 300e3, "dose": -5}, "dose must be in"),
        ({"energy": 300e3, "semiangle_cutoff": -1}, r"semiangle_cutoff must be in \[0, 300\] mrad"),
        ({"energy": 300e3, "semiangle_cutoff": 400}, "paraxial"),
        ({"energy": 300e3, "tilt": (300, 0)}, r"within ±200 mrad"),
        ({"energy": 300e3, "tilt": (1, 2, 3)}, r"tilt must have shape \[2\]"),
        ({"energy": 300e3, "focal_spread": -2}, r"focal_spread must be in \[0, 10000\] Å"),
        ({"energy": 300e3, "detector": "haadf"}, "detector must be a Detector"),
        (
            {"energy": 300e3, "detector": F.make_detector("stem_annular", inner=50, outer=100)},
            r"STEM probe \(stem_annular\) needs semiangle_cutoff > 0",
        ),
        ({"energy": 300e3, "aberrations": F.make_aberrations(), "defocus": 10}, "not both"),
    ],
)
def test_beam_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        F.make_beam(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("haadf",), {}, r"unknown detector mode 'haadf'"),
        (("4dstm",), {}, r"Did you mean '4dstem'"),
        (("stem_annular",), {"inner": 100, "outer": 50}, r"needs outer > inner collection angle"),
        (("stem_segmented",), {"outer": 20, "n_segments": 0}, "n_segments must be a positive integer"),
        (("stem_annular",), {"outer": 20, "n_segments": 4}, "only applies to mode 'stem_segmented'"),
        (("hrtem",), {"gain": 0}, r"detector gain must be in \(0"),
        (("hrtem",), {"read_noise": -1}, r"detector read noise must be in \[0"),
        (("hrtem",), {"mtf": (1, 1, 0, 1)}, "frequency scale"),
        (("hrtem",), {"mtf": (1, 1)}, r"detector mtf must have shape \[4\]"),
    ],
)
def test_detector_bad_input(args, kwargs, match):
    with pytest.raises(InputError, match=match):
        F.make_detector(*args, **kwargs)


def test_grad_with_respect_to_beam_is_a_beam():
    beam = _beam()
    g = jax.grad(lambda b: b.aberrations.C10 * b.energy + b.detector.outer)(beam)
    assert isinstance(g, F.BeamCondition)
    assert float(g.aberrations.C10) == pytest.approx(float(beam.energy))
    assert float(g.energy) == pytest.approx(float(beam.aberrations.C10))
    assert float(g.detector.outer) == 1.0
    assert g.detector.mode == beam.detector.mode
