"""The Frame data type: counts + the beam condition they were recorded under."""

import numpy as np
import pytest

import forward as F
from forward import InputError
from inference import make_frame
from tests.pytree_checks import check_all


def _beam(mode="hrtem", read_noise=0.0):
    if mode == "hrtem":
        det = F.make_detector("hrtem", read_noise=read_noise)
        return F.make_beam(300e3, defocus=100.0, detector=det)
    det = F.make_detector(mode, inner=10, outer=40, n_segments=4 if mode == "stem_segmented" else 1)
    return F.make_beam(80e3, semiangle_cutoff=25.0, detector=det)


def test_frame_pytree_contract():
    beam = _beam()
    check_all(lambda i: make_frame(np.full((4, 6), 3.0 + i), beam, 0.1))


@pytest.mark.parametrize(
    ("mode", "shape"), [("hrtem", (8, 8)), ("stem_annular", (4, 5)), ("stem_segmented", (4, 5, 4)), ("4dstem", (2, 3, 8, 8))]
)
def test_frame_layouts(mode, shape):
    f = make_frame(np.ones(shape, np.uint16), _beam(mode), (0.2, 0.25))
    assert f.counts.shape == shape and f.counts.dtype == np.float64 and f.sampling == (0.2, 0.25)


@pytest.mark.parametrize(
    ("counts", "mode", "sampling", "match"),
    [
        (np.ones((4, 4, 4)), "hrtem", 0.1, r"a hrtem frame must be 2-D \[nx, ny\], got shape \[4, 4, 4\]"),
        (np.ones((4, 4)), "4dstem", 0.1, r"must be 4-D \[sx, sy, kx, ky\]"),
        (np.ones((0, 4)), "hrtem", 0.1, "frame is empty"),
        (np.array([[1.0, np.nan], [0, 0]]), "hrtem", 0.1, r"frame counts must be finite, got nan at index \(0, 1\)"),
        (np.array([[1.0, -2.0], [0, 0]]), "hrtem", 0.1, r"counts must be >= 0 without read noise, got -2 at pixel \(0, 1\)"),
        (np.array([["a"]]), "hrtem", 0.1, "frame counts must be numeric, got dtype <U1"),
        (np.ones((4, 4)), "hrtem", -0.1, "frame sampling must be one or two positive sizes"),
    ],
)
def test_frame_bad_input(counts, mode, sampling, match):
    with pytest.raises(InputError, match=match):
        make_frame(counts, _beam(mode), sampling)


def test_negative_counts_allowed_with_read_noise():
    f = make_frame(np.array([[1.0, -2.0], [0.5, 0.0]]), _beam(read_noise=1.5), 0.1)
    assert f.counts.min() == -2.0


def test_frame_needs_beam_condition():
    with pytest.raises(InputError, match="beam must be a forward.BeamCondition"):
        make_frame(np.ones((2, 2)), {"energy": 3e5}, 0.1)
