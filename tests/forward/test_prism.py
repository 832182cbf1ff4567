"""forward.prism: S-matrix STEM against abTEM 1.0.11's SMatrix and against our multislice."""

import pickle

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from forward.beam import make_beam, make_detector
from forward.errors import InputError
from forward.grid import make_grid
from forward.prism import make_prism, prism_wave_vectors
from forward.specimen import make_specimen
from forward.stem import make_scan, make_stem_simulator

import abtem  # noqa: E402  (the reference simulator: a dev dependency, never skipped)
from tests.forward._abtem_ref import ABTEM_CONFIG, abtem_potential, rel_l2  # noqa: E402

ENERGY = 80e3
GPTS = (80, 96)
CELL = (5.0, 6.0, 3.0)
ABER = {"C10": -30.0, "C30": 2e4, "C12": 8.0, "phi12": 0.7}
SCAN = dict(start=(0.5, 1.0), end=(4.0, 5.0), gpts=(5, 4))
HAADF = make_detector("stem_annular", inner=60.0, outer=140.0)


@pytest.fixture(scope="module")
def setup():
    pos = [(1.0, 1.25, 0.5), (3.125, 2.5, 1.6), (2.1875, 4.125, 2.4)]  # on grid points
    atoms = ase.Atoms("SiCO", positions=pos, cell=CELL)
    grid = make_grid(extent=CELL[:2], gpts=GPTS)
    spec = make_specimen(atoms.positions, atoms.numbers, CELL)
    _, V, sampling, dz = abtem_potential(atoms, GPTS, 1.0)
    return grid, spec, V, sampling, dz


def _beam(det=HAADF, **kw):
    kw.setdefault("semiangle_cutoff", 25.0)
    kw.setdefault("aberrations", ABER)
    return make_beam(ENERGY, detector=det, **kw)


def test_prism_interpolation_2_matches_abtem(setup):
    grid, spec, V, sampling, dz = setup
    with abtem.config.set(ABTEM_CONFIG):
        pa = abtem.PotentialArray(V, slice_thickness=dz, sampling=sampling)
        sm = abtem.SMatrix(potential=pa, energy=ENERGY, semiangle_cutoff=25.0, interpolation=2)
        ref = sm.scan(
            scan=abtem.GridScan(**SCAN),
            detectors=[abtem.AnnularDetector(60.0, 140.0), abtem.PixelatedDetector(max_angle="cutoff")],
            ctf=abtem.CTF(semiangle_cutoff=25.0, energy=ENERGY, **ABER),
            lazy=False,
        )
    prism = make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=2, tile=(2, 3))
    smatrix = prism.build(spec)
    assert smatrix.array.shape[0] == len(sm.wave_vectors)
    scan = make_scan(**SCAN)
    haadf = prism.apply(smatrix, _beam(), scan)
    cbed = prism.apply(smatrix, _beam(make_detector("4dstem")), scan)
    assert rel_l2(haadf, ref[0].array) < 1e-3
    assert cbed.shape == ref[1].array.shape
    assert rel_l2(cbed, ref[1].array) < 1e-3


def test_prism_interpolation_1_is_the_multislice(setup):
    grid, spec, *_ = setup
    scan = make_scan(**SCAN)
    ms = make_stem_simulator(grid, CELL[2], 1.0, scan)(spec, _beam())
    prism = make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=1)
    smatrix = prism.build(spec)
    pr = prism.apply(smatrix, _beam(), scan)
    assert rel_l2(pr, ms) < 1e-4
    # the S-matrix is a pytree that pickles (Ray ships it) and applies the same after a round trip
    again = pickle.loads(pickle.dumps(smatrix))
    np.testing.assert_array_equal(np.asarray(prism.apply(again, _beam(), scan)), np.asarray(pr))


def test_prism_cheap_reuse_new_aberrations_window_and_tiles(setup):
    grid, spec, *_ = setup
    prism = make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=2, tile=(3, 2))
    smatrix = prism.build(spec)
    scan = make_scan(**SCAN)
    a = prism.apply(smatrix, _beam(), scan)
    # tiling is an implementation detail: one position per block gives the same image
    one = make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=2, tile=(1, 1))
    np.testing.assert_allclose(np.asarray(one.apply(smatrix, _beam(), scan)), np.asarray(a), rtol=1e-4)
    # a traced scan window (jit over the scan) falls back to per-position windows, same result
    jitted = jax.jit(prism.apply)(smatrix, _beam(), scan)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(a), rtol=1e-4)
    # vmap over beams (aberration batch) equals a loop
    beams = [_beam(aberrations={**ABER, "C10": c}) for c in (-30.0, 10.0)]
    batched = jax.vmap(prism.apply, in_axes=(None, 0, None))(
        smatrix, jax.tree.map(lambda *x: jnp.stack(x), *beams), scan
    )
    looped = np.stack([np.asarray(prism.apply(smatrix, b, scan)) for b in beams])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-4)
    assert np.abs(looped[0] - looped[1]).max() > 1e-3 * looped.max()  # defocus matters


def test_prism_grad_wrt_aberration_and_scan_window(setup):
    grid, spec, *_ = setup
    prism = make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=2)
    smatrix = prism.build(spec)
    beam = _beam()

    def signal(c10, start):
        ab = type(beam.aberrations)(**{**beam.aberrations.__dict__, "C10": c10})
        b = type(beam)(**{**beam.__dict__, "aberrations": ab})
        scan = type(make_scan(**SCAN))(start=start, end=start + 3.0, gpts=(3, 2))
        return jnp.sum(prism.apply(smatrix, b, scan) * jnp.arange(1.0, 7.0).reshape(3, 2)) * 100.0

    check_grads(signal, (jnp.float32(-30.0), jnp.array([0.8, 1.1])), order=1, modes=["rev"], eps=1e-2, rtol=5e-2, atol=5e-3)


def test_wave_vectors_match_abtem():
    grid = make_grid(extent=CELL[:2], gpts=GPTS)
    with abtem.config.set(ABTEM_CONFIG):
        ref = abtem.SMatrix(energy=ENERGY, semiangle_cutoff=25.0, interpolation=2, gpts=GPTS, extent=CELL[:2]).wave_vectors
    ours = prism_wave_vectors(grid, ENERGY, 25.0, (2, 2))
    order = lambda a: a[np.lexsort((a[:, 1], a[:, 0]))]  # noqa: E731
    np.testing.assert_allclose(order(ours), order(np.asarray(ref)), atol=1e-5)


def test_prism_guards(setup):
    grid, spec, *_ = setup
    with pytest.raises(InputError, match=r"gpts \(80, 96\) must be divisible by the interpolation \(3, 3\)"):
        make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=3)
    with pytest.raises(InputError, match="expansion_cutoff must be in"):
        make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=400.0)
    with pytest.raises(InputError, match="interpolation must be a positive integer"):
        make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, interpolation=0)
    with pytest.raises(InputError, match="tile must be a pair of positive integers"):
        make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=25.0, tile=(0, 2))
    prism = make_prism(grid, CELL[2], 1.0, energy=ENERGY, expansion_cutoff=20.0, interpolation=2)
    smatrix = prism.build(spec)
    scan = make_scan(**SCAN)
    with pytest.raises(InputError, match="must be in \\(0, 20\\] mrad, the S-matrix expansion cutoff"):
        prism.apply(smatrix, _beam(), scan)
    with pytest.raises(InputError, match="S-matrix was built for 80000 eV but the beam has 200000 eV"):
        prism.apply(smatrix, make_beam(200e3, semiangle_cutoff=20.0, detector=HAADF), scan)
    with pytest.raises(InputError, match="scan must be a forward.stem.Scan"):
        prism.apply(smatrix, _beam(semiangle_cutoff=20.0), [(1.0, 1.0)])
    with pytest.raises(InputError, match=r"untilted beam, got tilt \[1.0, 0.0\] mrad"):
        prism.apply(smatrix, _beam(semiangle_cutoff=20.0, tilt=(1.0, 0.0)), scan)
