"""forward.detectors: annular, segmented and pixelated detectors against abTEM 1.0.11."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward.beam import make_detector
from forward.constants import wavelength
from forward.detectors import cbed_geometry, cbed_gpts, check_detector, make_detector_fn
from forward.errors import InputError
from forward.grid import make_grid

import abtem  # noqa: E402  (the reference simulator: a dev dependency, never skipped)
from abtem.core.axes import OrdinalAxis  # noqa: E402

GRID = make_grid(gpts=(48, 64), sampling=0.1)
ENERGY = 80e3


def _random_waves(n=3, seed=0):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(n, *GRID.gpts)) + 1j * rng.normal(size=(n, *GRID.gpts))).astype(np.complex64)
    waves = abtem.Waves(
        a, energy=ENERGY, sampling=GRID.sampling, ensemble_axes_metadata=[OrdinalAxis(values=tuple(range(n)))]
    )
    intensity = np.abs(np.fft.fft2(a)) ** 2
    return waves, intensity


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_annular_matches_abtem():
    waves, intensity = _random_waves()
    ref = abtem.AnnularDetector(inner=31.0, outer=83.0).detect(waves).array
    det = make_detector("stem_annular", inner=31.0, outer=83.0)
    ours = make_detector_fn(GRID, det)(jnp.asarray(intensity), det, wavelength(ENERGY))
    assert ours.shape == (3,)
    assert _rel(ours, ref) < 1e-5


def test_segmented_matches_abtem():
    waves, intensity = _random_waves()
    ref = abtem.SegmentedDetector(
        nbins_radial=1, nbins_azimuthal=4, inner=21.0, outer=77.0, rotation=0.3
    ).detect(waves).array[:, 0, :]
    det = make_detector("stem_segmented", inner=21.0, outer=77.0, n_segments=4, rotation=0.3)
    ours = make_detector_fn(GRID, det)(jnp.asarray(intensity), det, wavelength(ENERGY))
    assert ours.shape == (3, 4)
    assert _rel(ours, ref) < 1e-5


@pytest.mark.parametrize("crop", ["cutoff", "valid", "full"])
def test_pixelated_matches_abtem(crop):
    waves, intensity = _random_waves(n=2)
    ref = abtem.PixelatedDetector(max_angle=crop).detect(waves).array
    det = make_detector("4dstem")
    ours = make_detector_fn(GRID, det, cbed_crop=crop)(jnp.asarray(intensity), det, wavelength(ENERGY))
    assert ours.shape == (2, *cbed_gpts(GRID, crop)) == ref.shape
    assert _rel(ours, ref) < 1e-6


def test_detector_fractions_of_a_normalised_beam():
    # A normalised diffraction pattern (sum 1): every detector value in [0, 1], segments sum to
    # the annulus, and disjoint BF + ADF + outer ring <= 1.
    _, intensity = _random_waves(n=2, seed=3)
    intensity = intensity / intensity.sum(axis=(-2, -1), keepdims=True)
    lam = wavelength(ENERGY)
    vals = []
    for inner, outer in ((0.0, 25.0), (25.0, 70.0), (70.0, 130.0)):
        det = make_detector("stem_annular", inner=inner, outer=outer)
        vals.append(np.asarray(make_detector_fn(GRID, det)(jnp.asarray(intensity), det, lam)))
    vals = np.stack(vals)
    assert (vals >= 0).all() and (vals <= 1).all()
    assert (vals.sum(0) <= 1 + 1e-6).all()
    seg = make_detector("stem_segmented", inner=25.0, outer=70.0, n_segments=3, rotation=1.0)
    s = np.asarray(make_detector_fn(GRID, seg)(jnp.asarray(intensity), seg, lam))
    np.testing.assert_allclose(s.sum(-1), vals[1], rtol=1e-5)


def test_detector_angles_are_leaves_jit_vmap():
    _, intensity = _random_waves(n=2, seed=1)
    det = make_detector("stem_annular", inner=30.0, outer=80.0)
    fn = make_detector_fn(GRID, det)
    lam = wavelength(ENERGY)
    eager = fn(jnp.asarray(intensity), det, lam)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(jnp.asarray(intensity), det, lam)), np.asarray(eager), rtol=1e-6)
    dets = jax.tree.map(lambda *x: jnp.stack(x), det, make_detector("stem_annular", inner=50.0, outer=90.0))
    batched = jax.vmap(fn, in_axes=(None, 0, None))(jnp.asarray(intensity), dets, lam)
    second = fn(jnp.asarray(intensity), make_detector("stem_annular", inner=50.0, outer=90.0), lam)
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(second), rtol=1e-6)


def test_detector_guards():
    haadf = make_detector("stem_annular", inner=70.0, outer=200.0)
    with pytest.raises(InputError, match="sampling too coarse for the detector: outer angle 200 mrad"):
        check_detector(GRID, haadf, ENERGY)
    check_detector(GRID, make_detector("stem_annular", inner=70.0, outer=130.0), ENERGY)
    with pytest.raises(InputError, match="'hrtem' is a camera, not a STEM detector"):
        make_detector_fn(GRID, make_detector("hrtem"))
    with pytest.raises(InputError, match="unknown 4D-STEM crop 'middle'"):
        cbed_gpts(GRID, "middle")


def test_pixelated_max_angle_crop_matches_abtem():
    waves, intensity = _random_waves(n=2, seed=4)
    for angle in (30.0, 47.5):
        ref = abtem.PixelatedDetector(max_angle=angle).detect(waves).array
        det = make_detector("4dstem")
        fn = make_detector_fn(GRID, det, cbed_crop=angle, energy=ENERGY)
        ours = fn(jnp.asarray(intensity), det, wavelength(ENERGY))
        assert ours.shape == (2, *cbed_gpts(GRID, angle, energy=ENERGY)) == ref.shape
        assert _rel(ours, ref) < 1e-6
        geo = cbed_geometry(GRID, ENERGY, angle)
        assert geo.gpts == ref.shape[-2:] and min(geo.max_angles) >= angle


def _band_limited(seed, radius_px):
    """Random diffraction intensities ``[2, nx, ny]`` (FFT order), zero beyond ``radius_px``."""
    _, intensity = _random_waves(n=2, seed=seed)
    fx = np.fft.fftfreq(GRID.gpts[0], 1 / GRID.gpts[0])[:, None]
    fy = np.fft.fftfreq(GRID.gpts[1], 1 / GRID.gpts[1])[None, :]
    return jnp.asarray(np.where(fx**2 + fy**2 <= radius_px**2, intensity, 0.0))


@pytest.mark.parametrize("b", [2, 3, 4])
def test_binning_conserves_the_beam_and_commutes_with_cropping(b):
    det = make_detector("4dstem")
    lam = wavelength(ENERGY)
    intensity = _band_limited(b, 12)  # inside the 'cutoff' crop (32 x 42 pixels)
    binned = make_detector_fn(GRID, det, cbed_crop="cutoff", cbed_bin=b)(intensity, det, lam)
    geo = cbed_geometry(GRID, ENERGY, "cutoff", b)
    assert binned.shape == (2, *geo.gpts) and geo.center == (geo.gpts[0] // 2, geo.gpts[1] // 2)
    # The angular sampling is b times the grid's, lambda / extent [mrad].
    np.testing.assert_allclose(geo.angular_sampling, [b * lam / e * 1e3 for e in GRID.extent], rtol=1e-6)
    # Every electron inside the crop lands in exactly one bin.
    np.testing.assert_allclose(binned.sum(axis=(-2, -1)), intensity.sum(axis=(-2, -1)), rtol=1e-5)
    # Bin of the full pattern, then crop to the bins of the 'cutoff' crop = crop, then bin.
    full = make_detector_fn(GRID, det, cbed_crop="full", cbed_bin=b)(intensity, det, lam)
    c_full = cbed_geometry(GRID, ENERGY, "full", b).center
    sl = tuple(slice(c - c0, c - c0 + n) for c, c0, n in zip(c_full, geo.center, geo.gpts))
    np.testing.assert_allclose(full[:, sl[0], sl[1]], binned, rtol=1e-6)
    # Odd b with a crop of a whole number of bins: plain block sums of the centred crop.
    if b == 3:
        crop = make_detector_fn(GRID, det, cbed_shape=(15, 21))(intensity, det, lam)
        blocks = np.asarray(crop).reshape(2, 5, 3, 7, 3).sum(axis=(2, 4))
        odd = make_detector_fn(GRID, det, cbed_shape=(15, 21), cbed_bin=3)(intensity, det, lam)
        np.testing.assert_allclose(odd, blocks, rtol=1e-6)


def test_binned_pixel_positions():
    # A single bright pixel at frequency (fx, fy) lands in bin round-to-centre(f / b), b = 3.
    det = make_detector("4dstem")
    geo = cbed_geometry(GRID, ENERGY, "cutoff", 3)
    fn = make_detector_fn(GRID, det, cbed_crop="cutoff", cbed_bin=3)
    for fx, fy in ((0, 0), (4, -2), (-7, 8), (1, -1)):
        img = np.zeros(GRID.gpts, np.float32)
        img[fx % GRID.gpts[0], fy % GRID.gpts[1]] = 1.0
        out = np.asarray(fn(jnp.asarray(img), det, wavelength(ENERGY)))
        want = (geo.center[0] + int(np.round(fx / 3)), geo.center[1] + int(np.round(fy / 3)))
        assert out.sum() == 1.0 and out[want] == 1.0


def test_pixelated_guards():
    det = make_detector("4dstem")
    with pytest.raises(InputError, match="needs the beam energy to convert it to pixels: pass energy="):
        make_detector_fn(GRID, det, cbed_crop=30.0)
    with pytest.raises(InputError, match="4D-STEM maximum angle 500 mrad exceeds the largest angle of the grid"):
        cbed_gpts(GRID, 500.0, energy=ENERGY)
    with pytest.raises(InputError, match="maximum angle must be a positive number of mrad, got -3"):
        cbed_gpts(GRID, -3.0, energy=ENERGY)
    with pytest.raises(InputError, match="bin factor must be a positive integer, got 0"):
        make_detector_fn(GRID, det, cbed_bin=0)
    with pytest.raises(InputError, match=r"bin factor 40 is larger than the cropped pattern \(32, 42\)"):
        cbed_geometry(GRID, ENERGY, "cutoff", 40)
    with pytest.raises(InputError, match=r"bin factor 40 is larger than the cropped pattern \(32, 42\)"):
        make_detector_fn(GRID, det, cbed_bin=40)
