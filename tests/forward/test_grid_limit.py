"""The simulation grid's size limit (``forward.grid.MAX_GRID_POINTS``): an absurd sampling is
refused before anything is allocated, with the finest sampling that fits the cell."""

import re

import pytest

from forward import InputError, make_grid
from forward.grid import MAX_GRID_POINTS

CELL = (9.48, 10.95)  # the built-in MoS2 cell [Å]


def test_a_sampling_of_1e_4_angstrom_is_refused_with_the_sampling_that_fits():
    with pytest.raises(InputError) as info:
        make_grid(extent=CELL, sampling=1e-4)  # 95256 x 109760 points: ~78 GiB per complex64 wave
    msg = str(info.value)
    assert "95256 x 109760 points" in msg and f"limit of {MAX_GRID_POINTS} points" in msg, msg
    fit = float(re.search(r"the finest sampling that fits this cell is ([0-9.e-]+) Å", msg).group(1))
    g = make_grid(extent=CELL, sampling=fit)  # the advice is right: it fits ...
    assert g.gpts[0] * g.gpts[1] <= MAX_GRID_POINTS
    with pytest.raises(InputError, match="beyond the limit"):  # ... and is the finest (4 digits) that does
        make_grid(extent=CELL, sampling=fit * (1 - 1e-3))


@pytest.mark.parametrize("sampling", [1e-9, 1e-300, 5e-324])
def test_absurd_samplings_are_refused_without_counting_to_them(sampling):
    with pytest.raises(InputError, match=r"beyond the limit of \d+ points .*finest sampling that fits"):
        make_grid(extent=CELL, sampling=sampling)


def test_too_many_gpts_are_refused():
    with pytest.raises(InputError, match=r"10000 x 10000 points \(1e\+08\) exceeds the limit"):
        make_grid(extent=CELL, gpts=(10000, 10000))


def test_ordinary_grids_are_unchanged():
    assert make_grid(extent=CELL, sampling=0.05).gpts == (192, 224)
    assert make_grid(extent=CELL, sampling=0.05, fft_friendly=False).gpts == (190, 219)
    assert make_grid(gpts=8192, sampling=0.01).gpts == (8192, 8192)  # the limit itself is allowed
