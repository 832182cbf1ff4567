"""Experiment design: expected information gain, separation, D-optimality, Chernoff's allocation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import InputError
from inference import (
    allocate_conditions,
    decision_dose_bound,
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


# Two complementary conditions for three hypotheses on a flat background: condition A shows the
# feature of h1 strongly and that of h2 weakly, condition B the reverse; h0 has neither.
_R1 = np.zeros((16, 16))
_R1[3:6, 3:6] = 1.0
_R2 = np.zeros((16, 16))
_R2[10:13, 9:12] = 1.0
PA = 0.01  # pixel area [Å²]


def _complementary(strong=0.4, weak=0.05):
    a = np.stack([np.ones((16, 16)), 1 + strong * _R1, 1 + weak * _R2])
    b = np.stack([np.ones((16, 16)), 1 + weak * _R1, 1 + strong * _R2])
    return np.stack([a, b]).astype(np.float32)  # [C=2, H=3, 16, 16]


def test_allocation_solves_the_chernoff_programme():
    imgs = _complementary()
    dose = 100.0
    r = np.stack([np.asarray(pairwise_kl(imgs[c], dose * PA, NOISE)) / dose for c in range(2)])  # per e-/Å²
    lp = np.log(np.array([0.98, 0.01, 0.01]))
    alloc = allocate_conditions(imgs, [dose, dose], PA, lp, NOISE, target=0.99, min_prob=0.5)  # the MAP only
    # by symmetry the optimal mixture is half and half, and the dose to decision is closed form
    tau = np.log(0.99 / 0.01) + np.log(2)
    need = tau - np.log(98.0)
    np.testing.assert_allclose(alloc.weights, [0.5, 0.5], atol=1e-6)
    assert alloc.expected_dose == pytest.approx(need / (0.5 * (r[0, 0, 1] + r[1, 0, 1])), rel=1e-6)
    # one condition alone: limited by the pair it shows weakly
    np.testing.assert_allclose(alloc.expected_dose_alone, need / np.array([r[0, 0, 2], r[1, 0, 1]]), rtol=1e-6)
    assert alloc.expected_dose < 0.5 * alloc.expected_dose_alone.min()
    # when h1 is already excluded, only B (which shows h2) is worth its electrons
    lp2 = np.log(np.array([0.9, 1e-9, 0.1]))
    assert allocate_conditions(imgs, [dose, dose], PA, lp2, NOISE).order[0] == 1
    # a decided posterior needs nothing more
    done = allocate_conditions(imgs, [dose, dose], PA, np.log(np.array([1 - 2e-6, 1e-6, 1e-6])), NOISE, min_prob=0.5)
    assert done.expected_dose == 0.0 and np.all(done.weights == 0.0)


def test_allocation_policy_reaches_the_decision_with_fewer_electrons():
    """Sequential decisions on simulated counts, fixed seeds: following the allocation needs
    fewer electrons than either condition alone, approaches the asymptotic bound, and decides
    correctly."""
    imgs = _complementary().astype(np.float64)
    dose, e = 50.0, 50.0 * PA
    bound = decision_dose_bound(imgs, [dose, dose], PA, NOISE)
    alone = [decision_dose_bound(imgs, [dose, dose], PA, NOISE, conditions=[c]) for c in (0, 1)]
    assert np.all(bound < 0.6 * np.minimum(alone[0], alone[1])[0])  # the truth h0 needs both conditions

    def run(truth, seed, policy):
        rng = np.random.default_rng(seed)
        lp, c, used = np.log(np.ones(3) / 3), 0, 0.0
        while lp.max() < np.log(0.99) and used < 5e4:
            y = rng.poisson(e * imgs[c, truth])
            lp = lp + np.sum(y * np.log(imgs[c]) - e * imgs[c], axis=(1, 2))
            lp -= np.logaddexp.reduce(lp)
            used += dose
            if policy == "allocation":
                c = allocate_conditions(imgs, [dose, dose], PA, lp, NOISE).order[0]
        return used, int(np.argmax(lp)) == truth

    out = {p: [run(0, s, p) for s in range(12)] for p in ("fixed", "allocation")}
    fixed = np.mean([d for d, _ in out["fixed"]])
    adaptive = np.mean([d for d, _ in out["allocation"]])
    assert all(ok for _, ok in out["allocation"])
    assert adaptive < 0.7 * fixed
    assert adaptive < 2.0 * bound[0]


def test_allocation_bad_input():
    imgs = _complementary()
    with pytest.raises(InputError, match=r"target posterior must be in \[0.5, 1\), got 1.5"):
        allocate_conditions(imgs, [10.0, 10.0], PA, np.zeros(3), NOISE, target=1.5)
    with pytest.raises(InputError, match=r"doses must be finite and > 0"):
        allocate_conditions(imgs, [10.0, -1.0], PA, np.zeros(3), NOISE)
    with pytest.raises(InputError, match=r"log_posterior must be \[H\] with H=3"):
        allocate_conditions(imgs, [10.0, 10.0], PA, np.zeros(4), NOISE)
    with pytest.raises(InputError, match=r"images must be \[C, H, nx, ny\]"):
        decision_dose_bound(imgs[0], [10.0], PA, NOISE)


def test_conditions_with_different_frames(rng_key):
    """A list of per-condition images with their own frames and pixel areas: a detector that
    splits every pixel's electrons over two channels in fixed proportions carries the same
    information (the channels' sum is sufficient), and a 2x2-binned camera with 4x the pixel area
    sees the same electrons per frame."""
    from tests.inference._model import SAMPLING

    pa = SAMPLING**2
    split = jnp.stack([0.3 * IMGS[1], 0.7 * IMGS[1]], axis=1)  # [H, 2, 16, 16]: channels first
    binned = IMGS[2].reshape(6, 8, 2, 8, 2).mean(axis=(2, 4))  # [H, 8, 8]
    ragged = [IMGS[0], split, binned]
    areas = [pa, pa, 4 * pa]
    doses = [50.0, 50.0, 50.0]
    np.testing.assert_allclose(np.asarray(pairwise_kl(split, 50.0 * pa, NOISE)),
                               np.asarray(pairwise_kl(IMGS[1], 50.0 * pa, NOISE)), rtol=1e-4)  # fmt: skip
    lp = np.log([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    ref = allocate_conditions(IMGS[:2], doses[:2], pa, lp, NOISE)
    got = allocate_conditions(ragged[:2], doses[:2], areas[:2], lp, NOISE)
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-6)
    assert got.expected_dose == pytest.approx(ref.expected_dose, rel=1e-4)
    b_ref = decision_dose_bound(IMGS[:2], doses[:2], pa, NOISE)
    np.testing.assert_allclose(decision_dose_bound(ragged[:2], doses[:2], areas[:2], NOISE), b_ref, rtol=1e-4)
    ranked = {p.index: p for p in rank_conditions(rng_key, ragged, doses, areas, lp, NOISE, n_samples=64)}
    electrons = {c: p.expected_gain_bits / p.gain_bits_per_electron for c, p in ranked.items()}
    assert electrons[1] == pytest.approx(50.0 * pa * 256, rel=1e-5)  # spatial pixels only, not channels
    assert electrons[2] == pytest.approx(electrons[0], rel=1e-5)
    eig = np.asarray(expected_information_gain(rng_key, [IMGS[1], split], [50.0 * pa] * 2, lp, NOISE))
    assert abs(eig[1] - eig[0]) < 0.1 * eig[0]  # the same information, up to Monte Carlo noise
    with pytest.raises(InputError, match=r"every condition needs images of the same hypotheses, got \[5, 6\]"):
        allocate_conditions([IMGS[0], IMGS[1][:5]], doses[:2], pa, lp, NOISE)
    with pytest.raises(InputError, match=r"pixel_area must be one value or one per condition \(3\)"):
        rank_conditions(rng_key, ragged, doses, [pa, pa], lp, NOISE)
