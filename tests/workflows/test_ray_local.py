"""Distributed pre-simulation, sharded scoring and batch refinement on a local Ray instance
(the embedded default, loopback only): results, worker and driver failures, 10,000 hypotheses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from forward import InputError
from inference import ScorerConfig
from inference.noise import make_noise_model
from inference.score import score_frames
from tests.workflows._small import CELL, small_pairs, small_spec
from workflows.cache import cached_ids, image_path, read_images
from workflows.local import local_ray
from workflows.presim_pool import LOG_NAME, make_workers, presimulate
from workflows.refine_tasks import refine_batch
from workflows.shards import ShardedLibrary, posterior_from_scores
from workflows.spec import make_spec_simulator, spec_digest
from workflows.specimens import save_pairs

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    with local_ray(num_cpus=2) as info:
        yield info


def _mixed_pairs(n: int, seed: int):
    """Hypotheses with 1 and 2 atoms, alternating: each atom count is a separate compilation in
    every worker, so a run lasts long enough after its first result to be interrupted."""
    one = small_pairs(n // 2, seed=seed, n_atoms=1)
    two = small_pairs(n // 2, seed=seed + 1, n_atoms=2)
    return [p for pair in zip(one, two) for p in pair]


def test_presimulate_results_and_resume(ray_local, tmp_path):
    pairs = small_pairs(6, seed=1)
    specs = [small_spec(0.0), small_spec(60.0)]
    rep = presimulate(pairs, specs, tmp_path, n_workers=2, batch_size=2, progress=False)
    assert (rep.n_items, rep.n_cached, rep.n_computed) == (12, 0, 12)
    assert sorted(rep.computed) == sorted((p[0], d) for d in rep.digests for p in pairs)
    again = presimulate(pairs, specs, tmp_path, n_workers=2, progress=False)
    assert (again.n_cached, again.n_computed) == (12, 0)
    want = make_spec_simulator(specs[1])(pairs[4][1])
    got = read_images(tmp_path, specs[1], [pairs[4][0]])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert len(lines) == 12 and len({(json.loads(x)["id"], json.loads(x)["digest"]) for x in lines}) == 12


def test_presimulate_needs_matching_specimens(ray_local, tmp_path):
    pairs = small_pairs(2)
    from forward import make_specimen

    wide = make_specimen([[1.0, 1.0, 1.0]], [42], (5.0, 4.0, 4.0))
    with pytest.raises(InputError, match="does not match the grid extent"):
        presimulate(pairs + [("hwide00000000001", wide)], [small_spec()], tmp_path, progress=False)
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        presimulate(pairs, [small_spec()], tmp_path, batch_size=0, progress=False)
    with pytest.raises(InputError, match="two specs are identical"):
        presimulate(pairs, [small_spec(), small_spec()], tmp_path, progress=False)


def test_worker_killed_mid_run_loses_nothing(ray_local, tmp_path):
    pairs = small_pairs(16, seed=10)
    spec = small_spec(30.0)
    workers = make_workers(tmp_path, 2, max_retries=3)
    pids = [int(p) for p in __import__("ray").get([w.pid.remote() for w in workers])]
    killed = []

    def kill_first_worker(done, total, ws):
        if not killed and done < total:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(done)

    rep = presimulate(pairs, [spec], tmp_path, batch_size=2, progress=False, on_progress=kill_first_worker, workers=workers)
    assert killed, "the worker was never killed: the run ended before the first progress report"
    new_pid = __import__("ray").get(workers[0].pid.remote())
    assert new_pid != pids[0]  # the actor was restarted in a new process
    ids = {p[0] for p in pairs}
    assert cached_ids(tmp_path, rep.digests[0]) == ids
    # No item is reported twice. Items the killed worker had written before dying are skipped by
    # the retried batch (not recomputed) and so are not in the report: at most one batch (2).
    assert len(set(rep.computed)) == rep.n_computed
    assert 16 - 2 <= rep.n_computed <= 16
    want = make_spec_simulator(spec)(pairs[5][1])
    np.testing.assert_allclose(read_images(tmp_path, spec, [pairs[5][0]])[0], want, rtol=1e-5, atol=1e-7)


def test_driver_restart_resumes_without_recomputing(ray_local, tmp_path):
    pairs = _mixed_pairs(12, seed=20)
    hyp = save_pairs(tmp_path / "pairs.npz", pairs)
    cache = tmp_path / "cache"
    spec = small_spec(40.0)
    digest = spec_digest(spec)
    cmd = [
        sys.executable, "-m", "workflows.presimulate", str(hyp), str(cache), "--address", ray_local.address,
        "--defocus", "40", "--gpts", "32", "--slice-thickness", "2", "--semiangle", "20", "--dose", "1e4",
        "--batch-size", "1", "--workers", "2", "--no-progress",
    ]  # fmt: skip
    errlog = tmp_path / "driver.log"
    with open(errlog, "w") as fh:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while not cached_ids(cache, digest) and proc.poll() is None and time.time() - t0 < 240:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver (and only it) dies mid-run
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, errlog.read_text()[-2000:]
    # Ray ends the dead driver's actors; wait until nothing more appears in the cache.
    before: dict = {}
    for _ in range(100):
        now = {i: image_path(cache, digest, i).stat() for i in cached_ids(cache, digest)}
        if now and now.keys() == before.keys():
            break
        before = now
        time.sleep(0.5)
    assert 0 < len(before) < 12, f"{len(before)} of 12 done before the kill: the run was not interrupted"
    rep = presimulate(pairs, [spec], cache, n_workers=2, progress=False)
    assert rep.n_cached == len(before)
    assert rep.n_computed == 12 - len(before)
    assert not {i for i, _ in rep.computed} & before.keys()  # nothing finished was recomputed
    for i, st in before.items():  # ... nor rewritten
        st2 = image_path(cache, digest, i).stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert cached_ids(cache, digest) == {p[0] for p in pairs}


def _toy_images(n: int, gpts: int, seed: int) -> np.ndarray:
    """Projected Gaussian atom columns (periodic, [x, y]) on a flat background, vacuum = 1:
    I = 1 - sum_j a_j exp(-|r - r_j|² / 2 s²) (a weak-amplitude-object image; cheap stand-in
    for 10,000 cached multislice images)."""
    rng = np.random.default_rng(seed)
    x = np.arange(gpts)[:, None]
    y = np.arange(gpts)[None, :]
    out = np.empty((n, gpts, gpts), np.float32)
    for h in range(n):
        img = np.ones((gpts, gpts))
        for _ in range(3):
            cx, cy = rng.uniform(0, gpts, 2)
            dx = (x - cx + gpts / 2) % gpts - gpts / 2
            dy = (y - cy + gpts / 2) % gpts - gpts / 2
            img -= rng.uniform(0.1, 0.4) * np.exp(-(dx**2 + dy**2) / (2 * 1.5**2))
        out[h] = img
    return out


def test_10k_hypotheses_in_shards_match_single_process(ray_local):
    n, g = 10_000, 16
    images = _toy_images(n, g, seed=7)
    ids = [f"h{k:016x}" for k in range(n)]
    priors = np.random.default_rng(1).uniform(0.5, 2.0, n)
    truth = 1234
    exposure = 4.0  # dose x pixel area [e-]
    counts = np.random.default_rng(2).poisson(images[truth] * exposure).astype(np.float32)
    config = ScorerConfig("linear", make_noise_model("poisson"))
    with ShardedLibrary(config) as lib:
        for k in range(0, n, 5000):
            lib.add_shard(ids[k : k + 5000], images[k : k + 5000])
        assert len(lib) == n and len(lib.shard_keys) == 2
        assert all(not i["writeable"] for i in lib.info())  # zero-copy views of the object store
        scores = lib.score(counts, exposure)
        assert lib.ids == tuple(ids)
        level = lib.signal_level
    post = posterior_from_scores([scores], priors)
    from forward import make_beam

    beam = make_beam(300e3, dose=exposure)  # pixel area 1 Å² -> exposure = dose
    ref = score_frames(counts, images, priors, beam, (1.0, 1.0), ids=ids, scorer=config, signal_level=level)
    np.testing.assert_allclose(post, ref.posterior, rtol=1e-4, atol=1e-6)
    assert int(np.argmax(post)) == int(np.argmax(ref.posterior))


def test_shards_score_adf_level_images_with_the_fast_scorer_as_in_one_process(ray_local):
    """The shards take every scorer of the one core: the fast scorer (binned screen, exact
    survivors) on annular-dark-field-level images (a detected fraction of ~1e-2) gives what
    ``score_frames`` gives in one process, with the same background prior relative to the signal
    level (before, the shards' prior was in units of the beam: ~100x wider than `hypotest score`'s)."""
    from forward import make_beam

    images = (0.01 * _toy_images(96, 32, seed=5)).astype(np.float32)
    ids = [f"h{k:016x}" for k in range(96)]
    exposure = 400.0
    counts = np.random.default_rng(4).poisson(images[17] * exposure).astype(np.float32)
    config = ScorerConfig("fast", make_noise_model("poisson"))
    with ShardedLibrary(config) as lib:
        lib.add_shard(ids[:48], images[:48])
        lib.add_shard(ids[48:], images[48:])
        scores = lib.score(counts, exposure)
        level = lib.signal_level
    assert scores.kind == "fast" and scores.screened and scores.screen_error_bound <= 1e-6
    assert level == pytest.approx(float(images[:48].mean()), rel=1e-6)
    ref = score_frames(counts, images, np.ones(96), make_beam(300e3, dose=exposure), (1.0, 1.0), ids=ids,
                       scorer=config, signal_level=level)  # fmt: skip
    (one,) = ref.scores
    both = scores.exact & one.exact
    assert both[17] and both.sum() >= 16
    np.testing.assert_allclose(scores.log_evidence[both] - scores.log_evidence[17],
                               one.log_evidence[both] - one.log_evidence[17], atol=1e-2)  # fmt: skip
    np.testing.assert_allclose(posterior_from_scores([scores], np.ones(96)), ref.posterior, atol=1e-4)
    # the prior each actor scored with is the signal-relative one: 0.1 of the level, not 0.1 of the beam
    np.testing.assert_allclose(scores.background_sd[17], one.background_sd[17], rtol=1e-3)
    assert scores.background_sd[17] < 0.1 * level


def test_shards_added_and_dropped_during_session(ray_local):
    images = _toy_images(30, 16, seed=3)
    ids = [f"h{k:016x}" for k in range(30)]
    counts = np.random.default_rng(0).poisson(images[3] * 20.0).astype(np.float32)
    with ShardedLibrary(ScorerConfig("linear", make_noise_model("poisson"))) as lib:
        a = lib.add_shard(ids[:10], images[:10])
        first = lib.score(counts, 20.0)
        b = lib.add_shard(ids[10:], images[10:])
        both = lib.score(counts, 20.0)
        np.testing.assert_allclose(both.log_evidence[:10], first.log_evidence, rtol=1e-6)
        lib.drop_shard(a)
        assert lib.shard_keys == (b,) and lib.ids == tuple(ids[10:])
        rest = lib.score(counts, 20.0)
        np.testing.assert_allclose(rest.log_evidence, both.log_evidence[10:], rtol=1e-6)
        with pytest.raises(InputError, match="already in the library"):
            lib.add_shard(ids[10:12], images[10:12])
        with pytest.raises(InputError, match="does not match the cached images"):
            lib.score(counts[:8], 20.0)
        with pytest.raises(InputError, match="no shard"):
            lib.drop_shard(a)
        # a shard actor killed between frames is restarted with its images from the object store
        (info,) = lib.info()
        os.kill(info["pid"], signal.SIGKILL)
        again = lib.score(counts, 20.0)
        np.testing.assert_allclose(again.log_evidence, rest.log_evidence, rtol=1e-6)
        assert lib.info()[0]["pid"] != info["pid"]


def test_batch_refinement_moves_atoms_towards_truth(ray_local):
    from forward import make_specimen

    spec = small_spec(50.0, dose=2e4)
    (pair,) = small_pairs(1, seed=5)
    true_pos = np.asarray(pair[1].positions).copy()
    true_pos[0, :2] += (0.12, -0.08)  # [Å]
    truth = make_specimen(true_pos, pair[1].numbers, pair[1].cell)
    image = make_spec_simulator(spec)(truth)
    pixel_area = (4.0 / 32) ** 2
    counts = np.random.default_rng(0).poisson(image * float(spec.beam.dose) * pixel_area).astype(np.float32)
    (other,) = small_pairs(1, seed=6)
    results = refine_batch([pair, other], spec, counts, steps=25, displacement_sd=0.3)
    assert [r.id for r in results] == [pair[0], other[0]]
    r = results[0]
    err0 = np.linalg.norm(r.initial_positions[:, :2] - true_pos[:, :2])
    err = np.linalg.norm(r.positions[:, :2] - true_pos[:, :2])
    assert err < 0.4 * err0, (err0, err)
    assert r.log_density > r.initial_log_density
    np.testing.assert_array_equal(r.positions[:, 2], r.initial_positions[:, 2])


def test_refine_entrypoint_scores_and_refines_the_top(ray_local, tmp_path):
    """`python -m workflows.refine` (as under `ray job submit`, connected by address): the true
    hypothesis gets the highest posterior and its refinement does not lower the log density."""
    pairs = small_pairs(5, seed=30)
    spec = small_spec(50.0, dose=2e4)
    cache = tmp_path / "cache"
    presimulate(pairs, [spec], cache, n_workers=2, progress=False)
    truth = read_images(cache, spec, [pairs[2][0]])[0]
    counts = np.random.default_rng(1).poisson(truth * 2e4 * (4.0 / 32) ** 2).astype(np.float32)
    np.save(tmp_path / "frame.npy", counts)
    hyp = save_pairs(tmp_path / "pairs.npz", pairs)
    out = tmp_path / "refined.json"
    cmd = [
        sys.executable, "-m", "workflows.refine", str(hyp), str(cache), str(tmp_path / "frame.npy"),
        "--address", ray_local.address, "--defocus", "50", "--gpts", "32", "--slice-thickness", "2",
        "--semiangle", "20", "--dose", "2e4", "--top", "1", "--steps", "10", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["top"] == [pairs[2][0]]
    assert max(res["posterior"], key=res["posterior"].get) == pairs[2][0]
    (r,) = res["refined"]
    assert r["log_density"] >= r["initial_log_density"] - 1e-3


@pytest.mark.slow
def test_batch_nuts_draws_are_keyed_by_hypothesis(ray_local):
    """NUTS around the MAP with per-hypothesis keys fold_in(key, digest(id)): the same draws
    whichever worker runs the task, and a second hypothesis gets different draws."""
    import jax

    from inference.refine import SamplerConfig

    spec = small_spec(50.0, dose=2e4)
    pairs = small_pairs(2, seed=8)
    image = make_spec_simulator(spec)(pairs[0][1])
    counts = np.random.default_rng(3).poisson(image * 2e4 * (4.0 / 32) ** 2).astype(np.float32)
    cfg = SamplerConfig(num_warmup=30, num_samples=20, num_chains=1)
    key = jax.random.key(11)
    a = refine_batch(pairs, spec, counts, steps=10, sampler=cfg, rng_key=key)
    b = refine_batch(pairs[:1], spec, counts, steps=10, sampler=cfg, rng_key=key)
    assert a[0].draws.shape == (20, 2, 2)
    np.testing.assert_array_equal(a[0].draws, b[0].draws)
    assert np.all(np.isfinite(a[1].draws))
    # the draws scatter around the MAP by at most a few tenths of an Å
    assert np.abs(a[0].draws.mean(0) - a[0].positions[:, :2]).max() < 0.3


def test_presimulate_exit_waves_are_the_live_models_own(ray_local, tmp_path):
    """The demo's pre-simulation path: exit-wave specs through the actor pool give, bit for bit,
    the exit waves the live image model computes in process."""
    from forward import make_beam
    from hypotest.live.model import ImageModel
    from workflows.spec import make_simulation_spec

    pairs = small_pairs(4, seed=2)
    model = ImageModel([sp for _, sp in pairs], sampling=4.0 / 32, binning=2, slice_thickness=2.0)
    spec = make_simulation_spec(model.grid, make_beam(300e3), thickness=CELL[2], slice_thickness=2.0,
                                species=(16, 42), kind="exit_wave")  # fmt: skip
    rep = presimulate(pairs, [spec], tmp_path, n_workers=2, batch_size=1, progress=False)
    assert rep.n_computed == 4
    waves = read_images(tmp_path, spec, [h for h, _ in pairs])
    for (_, sp), w in zip(pairs, waves):
        np.testing.assert_array_equal(w, np.asarray(model.sim.exit_wave(sp, make_beam(300e3))))
