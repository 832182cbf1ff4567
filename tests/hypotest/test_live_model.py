"""The live image model's annular STEM path: PRISM on the Nyquist scan, interpolated onto the
frame, against a direct multislice scan of every frame pixel."""

from __future__ import annotations

import ase
import numpy as np
import pytest

from forward import InputError, make_grid
from forward.specimen import make_specimen
from forward.stem import make_scan, make_stem_simulator, source_blur
from hypotest.beamfile import parse_beam
from hypotest.live import model as live_model
from hypotest.live.model import ImageModel

CELL = (5.0, 6.0, 3.0)
SAMPLING = 0.0625  # simulation grid (80, 96); camera (40, 48) at 0.125 Å


def _specimens():
    a = ase.Atoms("MoSS", positions=[(1.0, 1.2, 1.5), (3.1, 2.6, 0.6), (3.1, 2.6, 2.4)], cell=CELL)
    b = ase.Atoms("WSS", positions=[(1.0, 1.2, 1.5), (3.1, 2.6, 0.6), (3.1, 2.6, 2.4)], cell=CELL)
    return [make_specimen(x.positions, x.numbers, CELL) for x in (a, b)]


def _beam(source_size=0.0, dose=40.0, mode="stem_annular"):
    det = {"mode": mode, "inner": 40.0, "outer": 200.0} if mode == "stem_annular" else {"mode": mode}
    return {"energy": 80e3, "dose": dose, "sampling": [0.125, 0.125], "semiangle_cutoff": 25.0, "aberrations": {},
            "source_size": source_size, "detector": det, "simulation": {"sampling": SAMPLING, "slice_thickness": 1.0}}


def _direct(spec, beam, shape):
    """Every frame pixel as a probe position, full multislice (no interpolation)."""
    grid = make_grid(extent=CELL[:2], sampling=SAMPLING)
    scan = make_scan(start=(0.0, 0.0), end=CELL[:2], gpts=shape)
    sim = make_stem_simulator(grid, CELL[2], 1.0, scan, batch_size=128)
    return np.asarray(sim(spec, parse_beam(beam).beam), np.float64), scan


@pytest.fixture(scope="module")
def model():
    live_model._STEM_CACHE.clear()
    return ImageModel(_specimens(), sampling=SAMPLING, binning=2, slice_thickness=1.0)


def test_stem_frame_equals_a_direct_scan_of_every_pixel(model):
    beam = _beam()
    gpts = model.scan_gpts(parse_beam(beam).beam)
    assert gpts[0] < model.frame_shape[0] and gpts[1] < model.frame_shape[1]  # interpolation is exercised
    imgs = model.images(beam)
    assert imgs.shape == (2,) + model.frame_shape
    for i, spec in enumerate(model.specimens):
        ref, _ = _direct(spec, beam, model.frame_shape)
        err = np.abs(imgs[i] - ref).max() / ref.max()
        assert err < 1e-5, f"hypothesis {i}: max deviation {err:.2e} of the peak"
    # W scatters to high angles far more than Mo (Z-contrast): the heavy column is brighter.
    assert imgs[1].max() > 1.5 * imgs[0].max()


def test_source_size_is_the_gaussian_blur_of_the_scanned_image(model):
    beam = _beam(source_size=0.3)
    img = model.images(beam)[0]
    ref, scan = _direct(model.specimens[0], _beam(), model.frame_shape)
    blurred = np.asarray(source_blur(ref, 0.3, scan.sampling))
    assert np.abs(img - blurred).max() / blurred.max() < 1e-3
    assert img.sum() == pytest.approx(ref.sum(), rel=1e-3)  # the blur conserves the detected electrons


def test_stem_images_are_cached_across_models_and_doses(model):
    model.images(_beam())
    other = ImageModel(_specimens(), sampling=SAMPLING, binning=2, slice_thickness=1.0)
    a = other.images(_beam(dose=1000.0))
    assert other.resimulations == 0
    np.testing.assert_array_equal(a, model.images(_beam()))


def test_unsupported_detector_mode_is_a_clear_error(model):
    beam = _beam()
    beam["detector"] = {"mode": "stem_segmented", "inner": 40.0, "outer": 200.0}
    with pytest.raises(InputError, match=r"detector modes \['hrtem', 'stem_annular'\], got 'stem_segmented'"):
        model.images(beam)
    bad = _beam()
    bad["semiangle_cutoff"] = 0.0
    with pytest.raises(InputError, match="semiangle_cutoff > 0"):
        model.images(bad)
