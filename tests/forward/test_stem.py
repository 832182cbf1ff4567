"""forward.stem: STEM multislice against abTEM 1.0.11, properties, transforms and guards.

Atoms sit on grid points and abTEM's potential has its pixel (sinc) correction undone (see
``_abtem_ref``), so the only potential difference is none; everything downstream (probe, scan,
multislice, detectors) is compared end to end.
"""

import pickle

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from forward.beam import make_beam, make_detector
from forward.detectors import cbed_geometry
from forward.errors import InputError
from forward.grid import make_grid
from forward.potentials import make_potential_fn
from forward.specimen import make_specimen
from forward.stem import make_scan, make_stem_simulator, scan_positions, source_blur

import abtem  # noqa: E402  (the reference simulator: a dev dependency, never skipped)
from tests.forward._abtem_ref import ABTEM_CONFIG, abtem_potential, rel_l2  # noqa: E402

ENERGY = 80e3
GPTS = (80, 96)
CELL = (5.0, 6.0, 3.0)  # sampling 0.0625 Å
ABER = {"C10": -30.0, "C30": 2e4, "C12": 8.0, "phi12": 0.7}
SEMIANGLE = 25.0


def _atoms():
    # On grid points of the 0.0625 Å grid (x, y) so abTEM's bilinear deposit is exact.
    pos = [(1.0, 1.25, 0.5), (3.125, 2.5, 1.6), (2.1875, 4.125, 2.4)]
    return ase.Atoms("SiCO", positions=pos, cell=CELL)


@pytest.fixture(scope="module")
def setup():
    atoms = _atoms()
    grid = make_grid(extent=CELL[:2], gpts=GPTS)
    spec = make_specimen(atoms.positions, atoms.numbers, CELL)
    _, V, sampling, dz = abtem_potential(atoms, GPTS, 1.0)
    return grid, spec, V, sampling, dz


def _abtem_scan(V, sampling, dz, scan_kw, detectors):
    with abtem.config.set(ABTEM_CONFIG):
        pa = abtem.PotentialArray(V, slice_thickness=dz, sampling=sampling)
        probe = abtem.Probe(semiangle_cutoff=SEMIANGLE, energy=ENERGY, **ABER)
        ms = probe.scan(pa, scan=abtem.GridScan(**scan_kw), detectors=detectors, lazy=False)
    return [np.asarray(m.array) for m in (ms if isinstance(ms, list) else [ms])]


def _beam(det, **kw):
    return make_beam(ENERGY, semiangle_cutoff=SEMIANGLE, aberrations=ABER, detector=det, **kw)


def test_haadf_abf_segmented_line_scan_matches_abtem(setup):
    grid, spec, V, sampling, dz = setup
    scan_kw = dict(start=(0.5, 1.3), end=(4.0, 1.3 + 1e-3), gpts=(6, 1))
    ref = _abtem_scan(
        V, sampling, dz, scan_kw,
        [
            abtem.AnnularDetector(inner=60.0, outer=140.0),
            abtem.AnnularDetector(inner=12.0, outer=24.0),
            abtem.SegmentedDetector(nbins_radial=1, nbins_azimuthal=4, inner=10.0, outer=30.0, rotation=0.2),
        ],
    )  # fmt: skip
    sim = make_stem_simulator(grid, CELL[2], 1.0, make_scan(**scan_kw), batch_size=4)
    haadf = sim(spec, _beam(make_detector("stem_annular", inner=60.0, outer=140.0)))
    abf = sim(spec, _beam(make_detector("stem_annular", inner=12.0, outer=24.0)))
    seg = sim(spec, _beam(make_detector("stem_segmented", inner=10.0, outer=30.0, n_segments=4, rotation=0.2)))
    assert haadf.shape == (6, 1) and seg.shape == (6, 1, 4)
    assert rel_l2(haadf, ref[0].reshape(6, 1)) < 1e-3
    assert rel_l2(abf, ref[1].reshape(6, 1)) < 1e-3
    assert rel_l2(seg, ref[2].reshape(6, 1, 4)) < 1e-3
    assert np.ptp(np.asarray(haadf)) > 0.2 * float(np.max(haadf))  # the scan crosses atoms


def test_cbed_pattern_matches_abtem(setup):
    grid, spec, V, sampling, dz = setup
    scan_kw = dict(start=(2.0, 2.2), end=(2.1, 2.3), gpts=(1, 1))
    (ref,) = _abtem_scan(V, sampling, dz, scan_kw, [abtem.PixelatedDetector(max_angle="cutoff")])
    sim = make_stem_simulator(grid, CELL[2], 1.0, make_scan(**scan_kw), cbed_crop="cutoff")
    cbed = sim(spec, _beam(make_detector("4dstem")))
    assert cbed.shape == (1, 1) + ref.shape[-2:]
    assert rel_l2(cbed[0, 0], ref.reshape(ref.shape[-2:])) < 1e-3
    # A fraction of the beam: <= 1, and only the antialiased high angles are lost.
    assert 0.9 < float(cbed.sum()) <= 1.0 + 1e-5


def test_cbed_max_angle_and_binning(setup):
    grid, spec, V, sampling, dz = setup
    scan_kw = dict(start=(2.0, 2.2), end=(2.1, 2.3), gpts=(1, 1))
    (ref,) = _abtem_scan(V, sampling, dz, scan_kw, [abtem.PixelatedDetector(max_angle=40.0)])
    beam = _beam(make_detector("4dstem"))
    cropped = make_stem_simulator(grid, CELL[2], 1.0, make_scan(**scan_kw), cbed_crop=40.0)(spec, beam)
    assert cropped.shape == (1, 1) + ref.shape[-2:]
    assert rel_l2(cropped[0, 0], ref.reshape(ref.shape[-2:])) < 1e-3
    binned = make_stem_simulator(grid, CELL[2], 1.0, make_scan(**scan_kw), cbed_crop=40.0, cbed_bin=3)(spec, beam)
    geo = cbed_geometry(grid, ENERGY, 40.0, 3)
    assert binned.shape == (1, 1) + geo.gpts
    # By construction: bin q sums the cropped pixels c + 3 q + (-1, 0, 1) around the centre c.
    P = np.asarray(cropped[0, 0], np.float64)
    c = (P.shape[0] // 2, P.shape[1] // 2)
    want = np.zeros(geo.gpts)
    for i in range(geo.gpts[0]):
        for j in range(geo.gpts[1]):
            x0 = c[0] + 3 * (i - geo.center[0]) - 1
            y0 = c[1] + 3 * (j - geo.center[1]) - 1
            want[i, j] = P[x0 : x0 + 3, y0 : y0 + 3].sum()
    np.testing.assert_allclose(binned[0, 0], want, rtol=1e-5, atol=1e-9)
    with pytest.raises(InputError, match="crop given as an angle .* traced here"):
        jax.jit(make_stem_simulator(grid, CELL[2], 1.0, make_scan(**scan_kw), cbed_crop=40.0))(spec, beam)


def test_source_blur_matches_abtem_gaussian_filter():
    img = np.random.default_rng(0).random((9, 7)).astype(np.float32)
    step = (0.2, 0.3)
    ref = abtem.Images(img, sampling=step).gaussian_filter(0.35).array
    ours = source_blur(jnp.asarray(img), 0.35, jnp.asarray(step))
    assert rel_l2(ours, ref) < 1e-5
    np.testing.assert_array_equal(np.asarray(source_blur(jnp.asarray(img), 0.0, jnp.asarray(step))), img)
    # segmented/4D layouts: the blur acts on the scan axes only
    stack = jnp.stack([jnp.asarray(img), 2 * jnp.asarray(img)], axis=-1)
    out = source_blur(stack, 0.35, jnp.asarray(step))
    np.testing.assert_allclose(np.asarray(out[..., 1]), 2 * np.asarray(ours), rtol=1e-5)


# --- properties and transforms on an even smaller problem (our potential) --------------------

SMALL_CELL = (4.0, 4.0, 2.0)


def _small():
    grid = make_grid(extent=SMALL_CELL[:2], gpts=(48, 48))
    spec = make_specimen([[1.5, 2.0, 0.5], [2.6, 1.7, 1.5]], ["Si", "O"], SMALL_CELL)
    scan = make_scan(start=(1.0, 1.5), end=(2.5, 2.5), gpts=(3, 2))
    return grid, spec, scan


def _small_beam(mode="stem_annular", **kw):
    det = {
        "stem_annular": make_detector("stem_annular", inner=40.0, outer=110.0),
        "4dstem": make_detector("4dstem"),
    }[mode]
    kw.setdefault("defocus", 20.0)
    return make_beam(ENERGY, semiangle_cutoff=30.0, detector=det, **kw)


def test_batching_jit_and_vmap():
    grid, spec, scan = _small()
    beam = _small_beam()
    a = make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=1)(spec, beam)
    sim = make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=4, species=(8, 14))  # one padded batch
    b = sim(spec, beam)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(sim)(spec, beam)), np.asarray(b), rtol=1e-5)
    beams = [_small_beam(defocus=d) for d in (0.0, 40.0)]
    batched = jax.vmap(sim, in_axes=(None, 0))(spec, jax.tree.map(lambda *x: jnp.stack(x), *beams))
    looped = np.stack([np.asarray(sim(spec, bm)) for bm in beams])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-4)


def test_devices_split_equals_single_device():
    # A one-device mesh runs the shard_map path in-process; several host devices need
    # --xla_force_host_platform_device_count before JAX starts (benchmarks/forward_stem.py).
    grid, spec, scan = _small()
    beam = _small_beam()
    plain = make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=4)(spec, beam)
    split = make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=4, devices=jax.devices()[:1])(spec, beam)
    np.testing.assert_allclose(np.asarray(split), np.asarray(plain), rtol=1e-6)
    with pytest.raises(InputError, match="devices must be None or a non-empty sequence"):
        make_stem_simulator(grid, 2.0, 1.0, scan, devices=[])


def test_4dstem_fractions_and_source_size():
    grid, spec, scan = _small()
    sim = make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=3)
    cbed = np.asarray(sim(spec, _small_beam("4dstem")))
    assert cbed.shape[:2] == (3, 2) and (cbed >= 0).all()
    totals = cbed.sum(axis=(-2, -1))
    assert (totals <= 1 + 1e-5).all() and (totals > 0.9).all()
    haadf = np.asarray(sim(spec, _small_beam()))
    assert (haadf >= 0).all() and (haadf <= 1).all()
    blurred = np.asarray(sim(spec, _small_beam(source_size=0.4)))
    assert blurred.sum() == pytest.approx(haadf.sum(), rel=1e-4)  # blur conserves the signal
    assert np.ptp(blurred) < np.ptp(haadf)


def test_grad_wrt_positions_and_aberration():
    grid, spec, scan = _small()
    sim = make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=6, species=(8, 14), checkpoint=True)
    beam = _small_beam()

    def signal(xy, c10):
        pos = jnp.asarray(spec.positions).at[:, :2].set(xy)
        s = type(spec)(positions=pos, numbers=spec.numbers, cell=spec.cell, dw_sigmas=spec.dw_sigmas)
        ab = type(beam.aberrations)(**{**beam.aberrations.__dict__, "C10": c10})
        b = type(beam)(**{**beam.__dict__, "aberrations": ab})
        return jnp.sum(sim(s, b) * jnp.arange(1.0, 7.0).reshape(3, 2)) * 100.0

    xy = jnp.asarray(spec.positions[:, :2], jnp.float32)
    check_grads(signal, (xy, jnp.float32(-20.0)), order=1, modes=["rev"], eps=2e-3, rtol=5e-2, atol=5e-3)


def test_new_beam_values_do_not_retrace_and_scan_pickles():
    grid, spec, scan = _small()
    traces = []
    base = make_potential_fn(grid, 2.0, 1.0, species=(8, 14))

    def counting_potential(specimen):
        traces.append(1)  # runs once per trace, not per call
        return base(specimen)

    sim = make_stem_simulator(grid, 2.0, 1.0, scan, potential_fn=counting_potential, species=(8, 14))
    outs = [np.asarray(sim(spec, _small_beam(defocus=d, source_size=s))) for d, s in ((0.0, 0.0), (30.0, 0.2), (-15.0, 0.5))]
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1])
    again = pickle.loads(pickle.dumps(scan))
    np.testing.assert_array_equal(np.asarray(scan_positions(again)), np.asarray(scan_positions(scan)))


def test_scan_positions_match_abtem_gridscan():
    scan = make_scan(start=(0.5, 1.0), end=(3.5, 4.0), sampling=0.7)
    ref = abtem.GridScan(start=(0.5, 1.0), end=(3.5, 4.0), sampling=0.7).get_positions().reshape(-1, 2)
    ours = np.asarray(scan_positions(scan)).reshape(-1, 2)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_stem_guards():
    grid, spec, scan = _small()
    sim = make_stem_simulator(grid, 2.0, 1.0, scan)
    haadf = make_detector("stem_annular", inner=80.0, outer=250.0)
    with pytest.raises(InputError, match="sampling too coarse for the detector: outer angle 250 mrad"):
        sim(spec, _small_beam().__class__(**{**_small_beam().__dict__, "detector": haadf}))
    with pytest.raises(InputError, match="sampling too coarse for the probe"):
        sim(spec, make_beam(ENERGY, semiangle_cutoff=200.0, detector=make_detector("4dstem")))
    tiny = make_grid(extent=(1.0, 1.0), gpts=(16, 16))
    spec_tiny = make_specimen([[0.5, 0.5, 0.5]], ["Si"], (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="grid too small for the probe"):
        make_stem_simulator(tiny, 1.0, 1.0, make_scan(end=(1.0, 1.0), gpts=1))(
            spec_tiny, make_beam(ENERGY, semiangle_cutoff=5.0, detector=make_detector("4dstem"))
        )
    with pytest.raises(InputError, match=r"scan end \[1.0, 1.0\] Å must exceed scan start"):
        make_scan(start=(2.0, 0.0), end=(1.0, 1.0), gpts=4)
    with pytest.raises(InputError, match="exactly one of gpts"):
        make_scan(end=(1.0, 1.0))
    with pytest.raises(InputError, match="grid extent .* does not match the specimen cell"):
        sim(make_specimen([[1.0, 1.0, 1.0]], ["Si"], (4.0, 5.0, 2.0)), _small_beam())
    with pytest.raises(InputError, match="atomic numbers are traced .* pass species="):
        jax.jit(sim)(spec, _small_beam())
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        make_stem_simulator(grid, 2.0, 1.0, scan, batch_size=0)
    with pytest.raises(InputError, match="scan must be a forward.stem.Scan"):
        make_stem_simulator(grid, 2.0, 1.0, [(0.0, 0.0)])
