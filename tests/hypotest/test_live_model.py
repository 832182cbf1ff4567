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
    with pytest.raises(InputError, match=r"detector modes \['hrtem', 'stem_annular', '4dstem'\], got 'stem_segmented'"):
        model.images(beam)
    bad = _beam()
    bad["semiangle_cutoff"] = 0.0
    with pytest.raises(InputError, match="semiangle_cutoff > 0"):
        model.images(bad)


def _beam4d(source_size=0.0, outer=40.0, step=(5.0 / 13, 6.0 / 15)):
    b = _beam(source_size=source_size)
    b["detector"] = {"mode": "4dstem", "outer": outer}
    b["sampling"] = [float(s) for s in step]
    return b


def test_4dstem_frame_equals_a_direct_scan_and_keeps_the_scan_axes_last(model):
    beam = _beam4d()
    shape = model.frame_shape_of(beam)
    # 80 kV: lambda / cell = 8.4 x 7.0 mrad per diffraction pixel; 40 mrad -> 11 x 13 pixels,
    # one more for the parity of the (80, 96) grid (abTEM's crop)
    assert shape == (13, 15, 12, 14)
    imgs = model.images(beam)
    assert imgs.shape == (2, 12, 14, 13, 15)  # [H, kx, ky, sx, sy]: the scorers' layout
    grid = make_grid(extent=CELL[:2], sampling=SAMPLING)
    scan = make_scan(start=(0.0, 0.0), end=CELL[:2], gpts=(13, 15))
    sim = make_stem_simulator(grid, CELL[2], 1.0, scan, batch_size=64, cbed_crop=40.0)
    for i, spec in enumerate(model.specimens):
        ref = np.asarray(sim(spec, parse_beam(beam).beam), np.float64)  # [sx, sy, kx, ky]
        got = model.frame_layout(beam, imgs[i])
        assert got.shape == ref.shape
        err = np.abs(got - ref).max() / ref.max()
        assert err < 1e-4, f"hypothesis {i}: max deviation {err:.2e} of the peak"
        np.testing.assert_array_equal(model.model_layout(beam, got), imgs[i])
    # the camera sees the bright-field disc and the inner dark field: nearly every electron
    assert 0.9 < float(imgs[0].sum(axis=(0, 1)).mean()) <= 1.0 + 1e-3
    # the display image is the virtual dark field: the pixels beyond the 25 mrad probe summed
    v = model.virtual_image(beam, imgs[1])
    kx, ky = model._cbed_angles(parse_beam(beam).beam)
    dark = np.hypot(kx[:, None], ky[None, :]) > 25.0
    np.testing.assert_allclose(v, imgs[1][dark].sum(axis=0), rtol=1e-5)
    assert model.pixel_area_of(beam) == pytest.approx(5.0 / 13 * 6.0 / 15)


def test_4dstem_source_size_blurs_the_scan_not_the_pattern(model):
    sharp = model.frame_layout(_beam4d(), model.images(_beam4d())[1])
    img = model.frame_layout(_beam4d(0.3), model.images(_beam4d(0.3))[1])
    ref = np.asarray(source_blur(sharp, 0.3, (5.0 / 13, 6.0 / 15)))
    assert np.abs(img - ref).max() / ref.max() < 2e-3
    np.testing.assert_allclose(img.sum(axis=(0, 1)), sharp.sum(axis=(0, 1)), rtol=1e-3)  # per detector pixel


def test_bad_4dstem_beams_are_clear_errors(model):
    with pytest.raises(InputError, match=r"scan step 0.4 Å does not divide the cell \(5.0000 Å\).*use 0.41667 Å"):
        model.frame_shape_of(_beam4d(step=(0.4, 0.4)))
    with pytest.raises(InputError, match=r"undersamples the data's band limit.*step <= 0.4176 Å"):
        model.frame_shape_of(_beam4d(step=(0.5, 0.5)))
    with pytest.raises(InputError, match="needs detector 'outer' > 0"):
        model.frame_shape_of(_beam4d(outer=0.0))
    with pytest.raises(InputError, match="exceeds the largest angle of the grid"):
        model.frame_shape_of(_beam4d(outer=900.0))
