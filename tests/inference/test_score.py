"""score_frames: the pure function behind `hypotest score`, its result and its JSON form."""

import json
import pickle

import jax
import numpy as np
import pytest

from forward import InputError, make_beam, make_detector
from inference import Proposal, ScoreResult, make_frame, make_noise_model, sample_counts, score_frames
from inference.evidence import fourier_shift
from tests.inference import _model as M

SIM = M.make_simulate_fn()
IMAGES = np.asarray(M.library_images(SIM, M.beam()))
IDS = [f"h{i}" for i in range(6)]


def _frames(key, truth, dose, n=3, read_noise=0.0):
    det = make_detector("hrtem", read_noise=read_noise)
    beam = make_beam(300e3, defocus=0.0, dose=dose, detector=det)
    kind = "poisson_gaussian" if read_noise else "poisson"
    noise = make_noise_model(kind, read_noise=read_noise)
    e = M.exposure(dose)
    mu = e * (1.05 * fourier_shift(IMAGES[truth], np.array([0.2, -0.1])) + 0.03)
    counts = np.asarray(jax.vmap(lambda k: sample_counts(k, noise, mu))(jax.random.split(key, n)))
    return [make_frame(c, beam, M.SAMPLING) for c in counts]


def test_score_frames_end_to_end_and_json(rng_key):
    frames = _frames(rng_key, truth=3, dose=100.0)
    res = score_frames(frames, IMAGES, np.ones(6), ids=IDS)
    assert res.best == "h3" and res.posterior[3] > 0.99
    assert res.n_frames == 3 and res.dose == pytest.approx(300.0)
    assert res.rejected.sum() >= 3 and not res.rejected[3]
    for i in np.flatnonzero(res.rejected):
        assert res.log10_bayes_factor[i] < -3 and "Bayes factor 10^" in res.reasons[i] and "300 e-/Å²" in res.reasons[i]
    n3 = res.nuisance[3]
    assert len(n3["scale"]) == 3 and all(abs(s - 1.05) < 4 * sd for s, sd in zip(n3["scale"], n3["scale_sd"]))
    assert all(abs(sx - 0.2) < 4 * sdx for (sx, _), (sdx, _) in zip(n3["shift_px"], n3["shift_sd_px"]))
    # proposals attach and the whole result survives JSON
    props = [Proposal(index=0, expected_gain_bits=0.5, gain_bits_per_electron=1e-3, dose=10.0, separates=((0, 1),), label="defocus 0 Å")]
    res = res.with_proposals(props)
    back = pickle.loads(pickle.dumps(res))
    assert back.ids == res.ids and np.array_equal(back.posterior, res.posterior)
    text = json.dumps(res.to_json_dict())
    back = ScoreResult.from_json_dict(json.loads(text))
    assert back.ids == res.ids and back.proposals == res.proposals and back.rule == res.rule
    np.testing.assert_allclose(back.posterior, res.posterior)
    np.testing.assert_array_equal(back.rejected, res.rejected)


def test_raw_counts_with_read_noise_and_linear_scorer(rng_key):
    frames = _frames(rng_key, truth=1, dose=200.0, n=2, read_noise=1.5)
    stack = np.stack([f.counts for f in frames])
    assert stack.min() < 0  # read noise: dark-subtracted frames go negative
    res = score_frames(stack, IMAGES, np.ones(6), frames[0].beam, M.SAMPLING, scorer="linear")
    assert res.best == "1" and "registered" in res.method
    # the same frames as Frame objects give the same numbers
    res2 = score_frames(frames, IMAGES, np.ones(6), scorer="linear")
    np.testing.assert_allclose(res.log_evidence, res2.log_evidence, rtol=1e-6)


def test_score_bad_input(rng_key):
    frames = _frames(rng_key, truth=0, dose=50.0, n=1)
    beam = frames[0].beam
    with pytest.raises(InputError, match=r"frame shape \[16, 12\] does not match the simulated images \[16, 16\]"):
        score_frames(np.zeros((16, 12)), IMAGES, np.ones(6), beam, M.SAMPLING)
    bad = np.asarray(frames[0].counts).copy()
    bad[2, 5] = np.nan
    with pytest.raises(InputError, match=r"must be finite, got nan at pixel \(2, 5\)"):
        score_frames(bad, IMAGES, np.ones(6), beam, M.SAMPLING)
    bad[2, 5] = -3.0
    with pytest.raises(InputError, match=r">= 0 under the poisson noise model, got -3 at pixel \(2, 5\)"):
        score_frames(bad, IMAGES, np.ones(6), beam, M.SAMPLING)
    with pytest.raises(InputError, match="the library is empty: got 0 hypothesis images"):
        score_frames(frames, np.zeros((0, 16, 16)), np.ones(0))
    with pytest.raises(InputError, match=r"images must be \[H, nx, ny\]"):
        score_frames(frames, IMAGES[0], np.ones(1))
    with pytest.raises(InputError, match="got 5 prior weights for 6 hypothesis images"):
        score_frames(frames, IMAGES, np.ones(5))
    with pytest.raises(InputError, match="raw counts need beam=BeamCondition"):
        score_frames(np.zeros((16, 16)), IMAGES, np.ones(6))
    with pytest.raises(InputError, match=r"raw counts need sampling=\(dx, dy\)"):
        score_frames(np.zeros((16, 16)), IMAGES, np.ones(6), beam)
    with pytest.raises(InputError, match="unknown scorer 'exact'"):
        score_frames(frames, IMAGES, np.ones(6), scorer="exact")
    other = make_frame(np.zeros((8, 8)), beam, M.SAMPLING)
    with pytest.raises(InputError, match="frames must share one shape and sampling"):
        score_frames([frames[0], other], IMAGES, np.ones(6))
    with pytest.raises(InputError, match="no frames given"):
        score_frames([], IMAGES, np.ones(6), beam, M.SAMPLING)


def test_fast_scorer_matches_the_linear_scorer(rng_key):
    beam = make_beam(300e3, defocus=0.0, dose=300.0, detector=make_detector("hrtem"))
    mu = M.exposure(300.0) * (1.05 * IMAGES[2] + 0.03)  # registered frames: no shift
    keys = jax.random.split(rng_key, 2)
    frames = [make_frame(np.asarray(sample_counts(k, make_noise_model("poisson"), mu)), beam, M.SAMPLING) for k in keys]
    lin = score_frames(frames, IMAGES, np.ones(6), ids=IDS, scorer="linear")
    fast = score_frames(frames, IMAGES, np.ones(6), ids=IDS, scorer="fast")
    assert fast.best == lin.best == "h2"
    # within the screen's margin the evidence is the exact scorer's; beyond it, the screen's Bayes
    # factor (an approximation that only decides hypotheses far below the rejection rule)
    near = lin.log10_bayes_factor > -10
    np.testing.assert_allclose(fast.log10_bayes_factor[near], lin.log10_bayes_factor[near], atol=0.01 / np.log(10))
    assert np.all(fast.log10_bayes_factor[~near] < -10)
    np.testing.assert_array_equal(fast.rejected, lin.rejected)
    np.testing.assert_allclose(fast.posterior, lin.posterior, atol=1e-4)
    assert "screen" in fast.method and "per frame" in fast.method
    assert fast.nuisance[2]["scale"] == pytest.approx(lin.nuisance[2]["scale"], rel=1e-3)
