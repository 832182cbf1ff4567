"""Experiment design: expected information gain, separation, D-optimality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import InputError
from inference import (
    design_images,
    expected_information_gain,
    make_noise_model,
    pairwise_kl,
    rank_conditions,
    rank_d_optimal,
)
from tests.inference import _model as M

SIM = M.make_simulate_fn()
NOISE = make_noise_model("poisson")
DEFOCI = (0.0, 300.0, 600.0)
BEAMS = [M.beam(defocus=d) for d in DEFOCI]
IMGS = design_images(SIM, M.library_params(), BEAMS)  # [3, 6, 16, 16]
UNIFORM = jnp.log(jnp.ones(6) / 6)


def test_eig_limits(rng_key):
    # one compiled program for every call in this module: [3, 6, 16, 16] images, 64 draws
    same = jnp.broadcast_to(IMGS[:, :1], IMGS.shape)
    # float32 entropies: exact zeros come back as ~1e-5
    zero = np.asarray(expected_information_gain(rng_key, same, [M.exposure(50.0)] * 3, UNIFORM, NOISE))
    np.testing.assert_allclose(zero, 0.0, atol=1e-4)
    # at a huge dose every hypothesis is identified: EIG = H(prior) = log2(6) bits
    big = np.asarray(expected_information_gain(rng_key, IMGS, [M.exposure(1e5)] * 3, UNIFORM, NOISE))
    np.testing.assert_allclose(big, np.log2(6), atol=1e-3)
    # a certain posterior has nothing left to learn
    certain = jnp.log(jnp.array([1.0, 0, 0, 0, 0, 0]))
    none = np.asarray(expected_information_gain(rng_key, IMGS, [M.exposure(10.0)] * 3, certain, NOISE))
    np.testing.assert_allclose(none, 0.0, atol=1e-4)


def test_eig_grows_with_dose(rng_key):
    e = [M.exposure(d) for d in (1.0, 4.0, 16.0)]
    gains = np.asarray(expected_information_gain(rng_key, jnp.stack([IMGS[1]] * 3), e, UNIFORM, NOISE))
    assert np.all(np.diff(gains) > 0) and gains[-1] <= np.log2(6) + 1e-6


def test_pairwise_kl_is_expected_log_bayes_factor():
    e = M.exposure(20.0)
    kl = np.asarray(pairwise_kl(IMGS[0], e, NOISE))
    mu0, mu4 = np.asarray(e * IMGS[0, 0], np.float64), np.asarray(e * IMGS[0, 4], np.float64)
    ys = np.random.default_rng(5).poisson(mu0, size=(4000, *mu0.shape))
    lbf = (ys * (np.log(mu0) - np.log(mu4)) - (mu0 - mu4)).sum(axis=(1, 2))  # log p(y|0) - log p(y|4)
    assert abs(lbf.mean() - kl[0, 4]) < 4 * lbf.std() / np.sqrt(lbf.size)
    assert np.allclose(np.diag(kl), 0.0, atol=1e-3) and (kl >= -1e-3).all()


def test_rank_prefers_focus_and_reports_separation(rng_key):
    props = rank_conditions(rng_key, IMGS, [5.0, 5.0, 5.0], M.pixel_area(), UNIFORM, NOISE, labels=[f"defocus {d:g} Å" for d in DEFOCI])
    assert [p.index for p in props] == [0, 1, 2]
    best = props[0]
    assert best.label == "defocus 0 Å" and best.dose == 5.0
    assert best.gain_bits_per_electron == pytest.approx(best.expected_gain_bits / (M.exposure(5.0) * 256), rel=1e-6)
    kl = np.asarray(pairwise_kl(IMGS[0], M.exposure(5.0), NOISE))
    want = {(i, j) for i in range(6) for j in range(i + 1, 6) if min(kl[i, j], kl[j, i]) > np.log(10)}
    assert set(best.separates) == want and len(want) > 0
    assert len(props[2].separates) < len(best.separates)
    assert best.to_dict()["separates"] == [list(p) for p in best.separates]


def test_d_optimal_prefers_focus_for_positions():
    order, ld = rank_d_optimal(SIM, M.base_params(), BEAMS, NOISE, M.exposure(100.0), free=("positions",))
    assert order == [0, 1, 2] and np.all(np.diff(ld) < 0)


def test_design_bad_input(rng_key):
    with pytest.raises(InputError, match="the library is empty"):
        design_images(SIM, [], BEAMS)
    with pytest.raises(InputError, match=r"images must be \[C, H, nx, ny\]"):
        expected_information_gain(rng_key, IMGS[0], [1.0], UNIFORM, NOISE)
    with pytest.raises(InputError, match=r"log_posterior must be \[H\] with H=6"):
        expected_information_gain(rng_key, IMGS, [1.0] * 3, UNIFORM[:3], NOISE)
    with pytest.raises(InputError, match=r"doses must be finite and > 0"):
        rank_conditions(rng_key, IMGS, [5.0, 0.0, 5.0], M.pixel_area(), UNIFORM, NOISE)
