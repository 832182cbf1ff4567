"""Simulation specs and their digests, the on-disk cache, per-task keys, hypothesis files
(no Ray needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from forward import InputError, make_beam, make_detector, make_grid, make_specimen
from forward.hrtem import make_hrtem_simulator
from tests.workflows._small import CELL, small_pairs, small_spec
from workflows.cache import cached_ids, check_id, has_image, image_path, read_image, read_images, write_image
from workflows.keys import stable_digest32, task_key
from workflows.refine_tasks import top_ids
from workflows.shards import merge_scores, posterior_from_scores
from workflows.spec import check_specimen, make_simulation_spec, make_spec_simulator, spec_digest, spec_to_json
from workflows.specimens import check_pairs, load_hypotheses, load_pairs, save_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _in_subprocess(code: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED="12345")  # a different hash() salt than ours
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_spec_digest_is_stable_and_sensitive():
    a, b = small_spec(50.0), small_spec(50.0)
    assert spec_digest(a) == spec_digest(b)
    assert spec_digest(small_spec(51.0)) != spec_digest(a)
    assert spec_digest(small_spec(50.0, dose=2e4)) != spec_digest(a)
    code = "from tests.workflows._small import small_spec; from workflows.spec import spec_digest; print(spec_digest(small_spec(50.0)))"
    assert _in_subprocess(code) == spec_digest(a)
    d = spec_to_json(a)
    assert d["beam"][".aberrations.C10"] == -50.0 and d["grid"]["gpts"] == [32, 32]


def test_task_keys_are_stable_across_processes():
    key = jax.random.key(3)
    k1 = task_key(key, "h0123", "s99")
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(task_key(key, "h0123", "s98")))
    assert stable_digest32("ab", "c") != stable_digest32("a", "bc")  # parts are delimited
    code = "from workflows.keys import stable_digest32; print(stable_digest32('h0123', 's99'))"
    assert int(_in_subprocess(code)) == stable_digest32("h0123", "s99")
    with pytest.raises(InputError, match="at least one part"):
        stable_digest32()


def test_spec_validation_messages():
    grid = make_grid(extent=CELL[:2], gpts=32)
    beam = make_beam(300e3, defocus=10.0)
    with pytest.raises(InputError, match="does not match the beam's detector mode"):
        make_simulation_spec(grid, beam, thickness=4, slice_thickness=2, species=(42,), kind="stem")
    with pytest.raises(InputError, match="species must be atomic numbers"):
        make_simulation_spec(grid, beam, thickness=4, slice_thickness=2, species=(0,))
    with pytest.raises(InputError, match="thickness must be positive"):
        make_simulation_spec(grid, beam, thickness=-1, slice_thickness=2, species=(42,))
    stem = make_beam(300e3, semiangle_cutoff=20, detector=make_detector("stem_annular", inner=50, outer=150))
    with pytest.raises(InputError, match="needs scan="):
        make_simulation_spec(grid, stem, thickness=4, slice_thickness=2, species=(42,))
    with pytest.raises(InputError, match="camera_gpts applies to HRTEM only"):
        make_simulation_spec(grid, stem, thickness=4, slice_thickness=2, species=(42,), camera_gpts=8)
    with pytest.raises(InputError, match="grid must be a forward.Grid"):
        make_simulation_spec((32, 32), beam, thickness=4, slice_thickness=2, species=(42,))
    spec = small_spec()
    with pytest.raises(InputError, match=r"atomic numbers \[8\] are not in the spec's species"):
        check_specimen(spec, make_specimen([[1, 1, 1]], [8], CELL))
    with pytest.raises(InputError, match="does not match the grid extent"):
        check_specimen(spec, make_specimen([[1, 1, 1]], [42], (5.0, 4.0, 4.0)))
    with pytest.raises(InputError, match="exceeds the spec thickness"):
        check_specimen(spec, make_specimen([[1, 1, 1]], [42], (4.0, 4.0, 6.0)))


def test_spec_simulator_calls_forward_hrtem():
    spec = small_spec(50.0)
    (hid, sp), = small_pairs(1, seed=2)
    got = make_spec_simulator(spec)(sp)
    sim = make_hrtem_simulator(spec.grid, spec.thickness, spec.slice_thickness, species=spec.species)
    want = np.asarray(jax.jit(sim.simulate)(sp, spec.beam))  # both relative to the beam (vacuum = 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert got.dtype == np.float32 and got.shape == (32, 32)
    # a weak object: mean relative intensity close to 1 (aperture losses are small at 20 mrad)
    assert 0.8 < float(got.mean()) < 1.05


def test_cache_roundtrip_atomic_and_keyed(tmp_path):
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert not has_image(tmp_path, "s01", "habc")
    path = write_image(tmp_path, "s01", "habc", img, seconds=0.5)
    assert path == image_path(tmp_path, "s01", "habc") and has_image(tmp_path, "s01", "habc")
    np.testing.assert_array_equal(read_image(tmp_path, "s01", "habc"), img)
    assert [p.name for p in path.parent.iterdir()] == ["habc.h5"]  # no temporary left behind
    # a half-written temporary (a writer killed mid-write) is not an image
    (path.parent / ".hdef.h5.tmp-1-x").write_bytes(b"partial")
    assert cached_ids(tmp_path, "s01") == {"habc"}
    assert cached_ids(tmp_path, "s01", ["habc", "hdef"]) == {"habc"}
    wrong = image_path(tmp_path, "s01", "hxyz")
    wrong.parent.mkdir(parents=True)
    os.replace(path, wrong)  # a file moved by hand under another id
    with pytest.raises(InputError, match="edited by hand"):
        read_image(tmp_path, "s01", "hxyz")
    with pytest.raises(InputError, match="no cached image for hypothesis habc"):
        read_image(tmp_path, "s01", "habc")
    with pytest.raises(InputError, match="1 of 1 hypotheses have no cached image"):
        read_images(tmp_path, "s01", ["habc"])
    with pytest.raises(InputError, match="non-finite"):
        write_image(tmp_path, "s01", "hnan", np.full((2, 2), np.nan))
    with pytest.raises(InputError, match="cannot key the cache"):
        check_id("../etc")


def test_pairs_file_roundtrip_and_library_adapter(tmp_path):
    pairs = small_pairs(3, seed=4, n_atoms=3)
    p = save_pairs(tmp_path / "h.npz", pairs, priors=[1.0, 2.0, 3.0])
    back, priors = load_pairs(p)
    assert [i for i, _ in back] == [i for i, _ in pairs]
    np.testing.assert_allclose(back[1][1].positions, pairs[1][1].positions)
    np.testing.assert_array_equal(priors, [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="appears twice"):
        check_pairs([pairs[0], pairs[0]])
    with pytest.raises(InputError, match=r"must be a pair \(id, forward.Specimen\)"):
        check_pairs([("h123", "not a specimen")])
    with pytest.raises(InputError, match="does not exist"):
        load_hypotheses(tmp_path / "missing.h5")
    from library.entry import make_entry
    from library.format import write_library

    entries = [make_entry(sp, name=f"c{k}", family="f", prior=1.0 + k) for k, (_, sp) in enumerate(pairs)]
    lib = write_library(tmp_path / "lib.h5", entries)
    got, pri = load_hypotheses(lib)
    assert sorted(i for i, _ in got) == sorted(i for i, _ in pairs)  # content ids agree
    assert pri.shape == (3,)


def test_top_ids_and_posterior_merge():
    assert top_ids(["a", "b", "c"], [0.2, 0.5, 0.3], 2) == ("b", "c")
    with pytest.raises(InputError, match="k must be >= 1"):
        top_ids(["a"], [1.0], 0)
    s = _score([0.0, np.log(3.0)])
    np.testing.assert_allclose(posterior_from_scores([s], [1.0, 1.0]), [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(posterior_from_scores([s, s], [3.0, 1.0]), [0.25, 0.75], rtol=1e-6)
    t = _score([0.0, 0.0, 0.0])
    with pytest.raises(InputError, match="different shard sets"):
        posterior_from_scores([s, t], [1.0, 1.0])
    # shards' scores merge in shard order; the screen's bound is the largest of the shards'
    m = merge_scores([_score([0.0, 1.0], bound=1e-7), _score([2.0], bound=3e-7)])
    np.testing.assert_array_equal(m.log_evidence, [0.0, 1.0, 2.0])
    assert m.screen_error_bound == 3e-7 and m.n_within_margin == 3 and m.exact.shape == (3,)


def _score(le, bound=0.0):
    """A :class:`inference.Score` with the given log evidence (the rest zeros)."""
    from inference import Score

    n = len(le)
    z = np.zeros(n)
    return Score(log_evidence=np.asarray(le, float), log_likelihood=z, log_prior=z, laplace_term=z, scale=np.ones(n),
                 scale_sd=z, background=z, background_sd=z, shift=np.zeros((n, 2)), shift_sd=np.zeros((n, 2)),
                 grad_norm=z, exact=np.ones(n, bool), screen_log_evidence=np.asarray(le, float),
                 screen_error_bound=bound, margin_nats=float("inf"), n_within_margin=n, screened=bound > 0, kind="fast")


def test_stem_spec_calls_forward_stem_and_checks_the_detector_eagerly():
    from forward.stem import make_scan, make_stem_simulator

    grid = make_grid(extent=CELL[:2], gpts=32)
    scan = make_scan(end=CELL[:2], gpts=(4, 4))
    haadf = make_beam(300e3, semiangle_cutoff=20.0, detector=make_detector("stem_annular", inner=50, outer=150))
    # inside the jit-compiled simulator forward cannot check traced angles: the spec does it
    with pytest.raises(InputError, match="sampling too coarse for the detector"):
        make_simulation_spec(grid, haadf, thickness=4, slice_thickness=2, species=(16, 42), scan=scan)
    adf = make_beam(300e3, semiangle_cutoff=20.0, detector=make_detector("stem_annular", inner=25, outer=50))
    spec = make_simulation_spec(grid, adf, thickness=4, slice_thickness=2, species=(16, 42), scan=scan)
    (_, sp), = small_pairs(1, seed=9)
    got = make_spec_simulator(spec)(sp)
    sim = make_stem_simulator(grid, 4.0, 2.0, scan, species=(16, 42))
    np.testing.assert_allclose(got, np.asarray(jax.jit(sim)(sp, adf)), rtol=1e-6, atol=1e-9)
    assert got.shape == (4, 4) and float(got.min()) > 0  # ADF: some electrons scattered to 25-50 mrad
    assert spec_digest(spec) != spec_digest(small_spec())


def test_input_errors_before_any_ray_work(tmp_path):
    """Bad input is refused with a message before Ray is needed (Ray is not running here)."""
    from inference.noise import make_noise_model
    from workflows.presim_pool import make_workers, presimulate
    from workflows.refine_tasks import refine_batch, refine_one
    from workflows.shards import ShardedLibrary

    pairs = small_pairs(1)
    spec = small_spec()
    with pytest.raises(InputError, match="presimulate needs Ray"):
        presimulate(pairs, [spec], tmp_path)
    with pytest.raises(InputError, match="refine_batch needs Ray"):
        refine_batch(pairs, spec, np.zeros((32, 32)))
    from inference import ScorerConfig

    with pytest.raises(InputError, match="ShardedLibrary needs Ray"):
        ShardedLibrary(ScorerConfig("fast", make_noise_model("poisson")))
    with pytest.raises(InputError, match="unknown scorer 'exact'"):
        ShardedLibrary(ScorerConfig("exact", make_noise_model("poisson")))
    with pytest.raises(InputError, match="ShardedLibrary takes the scorer's config"):
        ShardedLibrary(make_noise_model("poisson"))
    with pytest.raises(InputError, match="noise must be an inference NoiseModel"):
        ShardedLibrary(ScorerConfig("linear", "poisson"))
    with pytest.raises(InputError, match="n_workers must be >= 1"):
        make_workers(tmp_path, 0)
    hid, sp = pairs[0]
    with pytest.raises(InputError, match="displacement_sd must be positive"):
        refine_one(spec, hid, sp, np.zeros((32, 32)), displacement_sd=0.0)
    with pytest.raises(InputError, match="does not match the spec's camera"):
        refine_one(spec, hid, sp, np.zeros((16, 16)))
    with pytest.raises(InputError, match="NUTS sampling needs rng_key"):
        refine_one(spec, hid, sp, np.zeros((32, 32)), sampler=object())
    with pytest.raises(InputError, match="got 2 posterior values for 1 ids"):
        top_ids(["a"], [0.5, 0.5], 1)
    with pytest.raises(InputError, match="no scores given"):
        posterior_from_scores([], [1.0])
    with pytest.raises(InputError, match="got 2 priors for 1 hypotheses"):
        save_pairs(tmp_path / "p.npz", pairs, priors=[1.0, 2.0])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read hypotheses from"):
        load_pairs(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="no hypotheses given"):
        check_pairs([])
    with pytest.raises(InputError, match="expected a SimulationSpec"):
        spec_to_json({"kind": "hrtem"})
    grid = make_grid(extent=CELL[:2], gpts=32)
    beam = make_beam(300e3)
    kw = dict(thickness=4, slice_thickness=2, species=(42,))
    with pytest.raises(InputError, match="unknown simulator kind 'cbed'"):
        make_simulation_spec(grid, beam, kind="cbed", **kw)
    with pytest.raises(InputError, match="unknown parametrization 'doyle'"):
        make_simulation_spec(grid, beam, parametrization="doyle", **kw)
    with pytest.raises(InputError, match="camera_gpts must be a positive integer or a pair"):
        make_simulation_spec(grid, beam, camera_gpts=(8, 8, 8), **kw)
    with pytest.raises(InputError, match="scan applies to STEM only"):
        make_simulation_spec(grid, beam, scan=object(), **kw)
    with pytest.raises(InputError, match="beam must be a forward.BeamCondition"):
        make_simulation_spec(grid, {"energy": 300e3}, **kw)


def _exit_wave_spec(defocus=0.0, dose=1e4, energy=300e3, tilt=(0.0, 0.0)):
    grid = make_grid(extent=CELL[:2], gpts=32)
    beam = make_beam(energy, defocus=defocus, semiangle_cutoff=20.0, dose=dose, tilt=tilt)
    return make_simulation_spec(grid, beam, thickness=CELL[2], slice_thickness=2.0, species=(16, 42), kind="exit_wave")


def test_exit_wave_spec_is_the_hrtem_exit_wave_bit_for_bit_and_keyed_by_energy_and_tilt(tmp_path):
    from workflows.spec import output_shape

    spec = _exit_wave_spec()
    hid, sp = small_pairs(1, seed=5)[0]
    wave = make_spec_simulator(spec)(sp)
    ref = make_hrtem_simulator(make_grid(extent=CELL[:2], gpts=32), CELL[2], 2.0).exit_wave(sp, spec.beam)
    assert wave.dtype == np.complex64 and wave.shape == output_shape(spec) == (32, 32)
    np.testing.assert_array_equal(wave, np.asarray(ref))  # what hypotest.live.model.ImageModel computes
    # only the energy and the tilt change an exit wave: lens, dose and aperture share the cached one
    assert spec_digest(_exit_wave_spec(defocus=80.0, dose=5.0)) == spec_digest(spec)
    assert spec_digest(_exit_wave_spec(energy=200e3)) != spec_digest(spec)
    assert spec_digest(_exit_wave_spec(tilt=(1.0, 0.0))) != spec_digest(spec)
    assert spec_digest(small_spec(0.0)) != spec_digest(spec)  # an image is not an exit wave
    write_image(tmp_path, spec_digest(spec), hid, wave)  # complex64 round trip through the cache
    back = read_images(tmp_path, spec, [hid])
    assert back.dtype == np.complex64
    np.testing.assert_array_equal(back[0], wave)
    with pytest.raises(InputError, match="HRTEM and its exit wave need an 'hrtem' detector"):
        make_simulation_spec(make_grid(extent=CELL[:2], gpts=32), make_beam(300e3, semiangle_cutoff=20, detector=make_detector("stem_annular", inner=50, outer=150)),
                             thickness=4, slice_thickness=2, species=(42,), kind="exit_wave")  # fmt: skip
    with pytest.raises(InputError, match="camera_gpts applies to HRTEM only, to its images: .*an exit wave by the simulation grid"):
        make_simulation_spec(make_grid(extent=CELL[:2], gpts=32), make_beam(300e3), thickness=4, slice_thickness=2,
                             species=(42,), kind="exit_wave", camera_gpts=16)  # fmt: skip
