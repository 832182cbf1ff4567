"""The fast per-frame scorer: binned screen + exact stage against the exact scorer, and the
screen's error bound in calibration-style simulations (fixed keys).

Tolerances: exactly scored hypotheses match the linear scorer (:func:`inference.make_scorer`,
``kind="linear"``: the exact scorer for a known shift) to ``EXACT_TOL`` nats in log evidence and log Bayes factor (float32
sums over the frame; the exact scorer itself moves by ~1e-3 nats between summation orders).
"""

import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import InputError
from inference import (
    ImageSet,
    Score,
    ScorerConfig,
    make_noise_model,
    make_nuisance_prior,
    make_scorer,
    sample_counts,
    screen_margin,
)
from inference.evidence import fourier_shift
from tests.inference import _model as M
from tests.inference._scorers import make_fast_scorer, make_linear_scorer

EXACT_TOL = 1e-2  # [nats]

GPTS, SAMPLING = (32, 32), 0.2  # [Å/pixel]
SIM = M.make_simulate_fn(GPTS, SAMPLING)
_BASE = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2) * 1.6 + 0.8


def _library():
    """33 hypotheses on a 4x4 column lattice: pristine, a vacancy at each column, each column
    displaced by 0.3 Å (many near-degenerate pairs at low dose)."""
    hyps = [M.base_params(positions=_BASE)]
    for k in range(16):
        occ = np.ones(16)
        occ[k] = 0.0
        hyps.append(M.base_params(positions=_BASE, occupancy=occ))
        pos = _BASE.copy()
        pos[k, 0] += 0.3
        hyps.append(M.base_params(positions=pos))
    return jnp.stack([SIM(p, M.beam()) for p in hyps])


IMAGES = _library()
H = IMAGES.shape[0]
PRIOR = make_nuisance_prior(scale_mean=1.0, scale_sd=0.1, background_mean=0.05, background_sd=0.03)
POISSON = make_noise_model("poisson")


def prepare_screen_cache(images, *, bin_factor=4):
    """The fast scorer's prepared images (:class:`inference.ImageSet` with its binned screen)."""
    return make_scorer(ScorerConfig("fast", POISSON, PRIOR, background_relative=False, bin_factor=bin_factor)).prepare(images)


def _exposure(dose):
    return dose * SAMPLING * SAMPLING


def _frame(key, noise, truth, dose, scale=1.05, background=0.05, shift=None):
    image = IMAGES[truth] if shift is None else fourier_shift(IMAGES[truth], jnp.asarray(shift, jnp.float32))
    return sample_counts(key, noise, _exposure(dose) * (scale * image + background))


def _check_against_exact(fs: Score, exact, truth):
    m = np.asarray(fs.exact)
    fast_le, ex_le = np.asarray(fs.log_evidence, np.float64), np.asarray(exact.log_evidence, np.float64)
    assert m[truth], "the true hypothesis must be scored exactly"
    np.testing.assert_allclose(fast_le[m], ex_le[m], atol=EXACT_TOL)
    # log Bayes factors against the exact best (itself always exactly scored)
    best = int(np.argmax(ex_le))
    assert m[best] and int(np.argmax(fast_le)) == best
    np.testing.assert_allclose(fast_le[m] - fast_le[best], ex_le[m] - ex_le[best], atol=EXACT_TOL)
    np.testing.assert_allclose(np.asarray(fs.scale)[m], np.asarray(exact.scale)[m], rtol=1e-3)
    # every hypothesis the exact scorer puts within the margin of the best is scored exactly
    if bool(fs.screened):
        within = ex_le >= ex_le[best] - float(fs.margin_nats) + 1.0
        assert np.all(m[within])
        # the others sit below the best by more than the margin (screen Bayes factor)
        assert np.all(fast_le[~m] <= fast_le[best] - float(fs.margin_nats))


@pytest.mark.parametrize("dose", [10.0, 100.0, 1e3, 1e4])
def test_matches_exact_scorer_across_doses(rng_key, dose):
    """Dense Poisson frames (0.4 to 400 electrons per pixel at full intensity)."""
    cache = prepare_screen_cache(IMAGES, bin_factor=4)
    fast = make_fast_scorer(POISSON, PRIOR)
    exact = make_linear_scorer(POISSON, PRIOR)
    truth = 7
    y = _frame(jax.random.fold_in(rng_key, int(dose)), POISSON, truth, dose)
    fs = fast(y, cache, _exposure(dose))
    assert bool(fs.screened)
    _check_against_exact(fs, exact(y, IMAGES, _exposure(dose)), truth)
    assert float(fs.screen_error_bound) <= 1e-6 * (1 + 1e-4)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.2), (1.4, 0.6)])
def test_known_shift_matches_exact_scorer(rng_key, shift):
    """A frame drifted by a known shift [pixels]: the fast scorer with ``shift`` equals the
    exact scorer with the same shift (images shifted by the exact Fourier phase ramp)."""
    dose = 300.0
    fast = make_fast_scorer(POISSON, PRIOR)
    exact = make_linear_scorer(POISSON, PRIOR)
    y = _frame(rng_key, POISSON, 12, dose, shift=shift)
    fs = fast(y, prepare_screen_cache(IMAGES), _exposure(dose), shift=shift)
    _check_against_exact(fs, exact(y, IMAGES, _exposure(dose), shift=shift), 12)
    np.testing.assert_allclose(np.asarray(fs.shift), np.broadcast_to(shift, (H, 2)))


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_sparse_low_dose_path_matches_exact_scorer(rng_key, gain):
    """Low dose (0.02 to 0.1 electrons per pixel): the Poisson sums over the counted pixels
    only equal the dense exact scorer, with the screen skipped (no shift) and used (shift)."""
    noise = make_noise_model("poisson", gain=gain)
    fast = make_fast_scorer(noise, PRIOR)
    exact = make_linear_scorer(noise, PRIOR)
    cache = prepare_screen_cache(IMAGES)
    for dose, shift in [(0.5, None), (2.5, None), (2.5, (0.25, 0.4))]:
        y = _frame(jax.random.fold_in(rng_key, int(10 * dose)), noise, 3, dose, shift=shift)
        assert float(jnp.mean(y > 0)) < 0.25
        fs = fast(y, cache, _exposure(dose), shift=shift)
        assert bool(fs.screened) == (shift is not None)
        ex = exact(y, IMAGES, _exposure(dose), shift=(0.0, 0.0) if shift is None else shift)
        _check_against_exact(fs, ex, 3)
        if shift is None:
            assert bool(jnp.all(fs.exact))


@pytest.mark.parametrize(
    "noise",
    [make_noise_model("poisson_gaussian", gain=2.0, read_noise=1.5), make_noise_model("gaussian", gain=1.0, read_noise=3.0)],
    ids=["poisson_gaussian", "gaussian"],
)
def test_read_noise_models_match_exact_scorer(rng_key, noise):
    """The screen bins read noise too (variances add: ``f sigma`` per block)."""
    dose = 200.0
    fast = make_fast_scorer(noise, PRIOR)
    y = _frame(rng_key, noise, 20, dose)
    fs = fast(y, IMAGES, _exposure(dose))
    _check_against_exact(fs, make_linear_scorer(noise, PRIOR)(y, IMAGES, _exposure(dose)), 20)


def test_truth_never_screened_out_and_screen_bayes_factors_obey_royall_bound(rng_key):
    """Calibration-style: 160 frames, truth and nuisance drawn at random (nuisance from its
    prior), doses 3 to 3e3 e-/Å². (1) The true hypothesis is always scored exactly. (2) At the
    low doses (3 and 30 e-/Å², where many pairs are nearly indistinguishable) the screen's
    Bayes factors obey the universal bound ``P(Z_h / Z_t >= e^m) <= e^-m`` (module docstring)
    over all wrong ``h``; a screen that forgot a 2-nat Occam penalty of the wrong hypotheses
    breaks it, so the check has power. (3) Screened-out hypotheses are placed no lower than
    the full data would place them, on average (binning loses information)."""
    cache = prepare_screen_cache(IMAGES)
    fast = make_fast_scorer(POISSON, PRIOR)
    exact = make_linear_scorer(POISSON, PRIOR)
    doses = [3.0, 30.0, 300.0, 3000.0]
    margins = np.array([1.0, 2.0, 3.0])
    exceed = np.zeros(3)
    exceed_biased = np.zeros(3)
    pairs = 0
    shortfall = []
    keys = jax.random.split(rng_key, 160)
    for i, key in enumerate(keys):
        k1, k2, k3 = jax.random.split(key, 3)
        truth = int(jax.random.randint(k1, (), 0, H))
        s, b = np.asarray(jax.random.normal(k2, (2,)))
        scale = float(PRIOR.scale_mean + PRIOR.scale_sd * s)
        background = max(float(PRIOR.background_mean + PRIOR.background_sd * b), 0.0)
        dose = doses[i % len(doses)]
        y = _frame(k3, POISSON, truth, dose, scale=scale, background=background)
        fs = fast(y, cache, _exposure(dose))
        assert bool(fs.exact[truth]), f"truth {truth} screened out at {dose} e-/Å² (frame {i})"
        scr = np.asarray(fs.screen_log_evidence, np.float64)
        if dose <= 30.0:
            lbf = np.delete(scr - scr[truth], truth)
            exceed += (lbf[None, :] >= margins[:, None]).sum(axis=1)
            exceed_biased += (lbf[None, :] + 2.0 >= margins[:, None]).sum(axis=1)
            pairs += lbf.size
        if bool(fs.screened) and not bool(jnp.all(fs.exact)):
            ex = np.asarray(exact(y, IMAGES, _exposure(dose)).log_evidence, np.float64)
            out = ~np.asarray(fs.exact)
            out[truth] = False
            fast_le = np.asarray(fs.log_evidence, np.float64)
            shortfall.extend((fast_le[out] - fast_le[truth]) - (ex[out] - ex[truth]))
    freq, freq_biased = exceed / pairs, exceed_biased / pairs
    se = np.sqrt(np.exp(-margins) / pairs)
    assert np.all(freq <= np.exp(-margins) + 3 * se), (freq, np.exp(-margins))
    assert np.any(freq_biased > np.exp(-margins) + 3 * se), (freq_biased, np.exp(-margins))
    assert len(shortfall) > 50 and np.mean(shortfall) > 0.0


def test_screen_margin_and_bound():
    """``m = log((H - 1) / alpha) - min(0, Occam)`` gives ``(H - 1) e^-(m + Occam) = alpha``."""
    for h, alpha, occam in [(2, 1e-3, 0.0), (1000, 1e-6, -12.5), (33, 1e-2, 3.0)]:
        m = float(screen_margin(h, alpha, occam))
        assert m == pytest.approx(math.log((h - 1) / alpha) - min(0.0, occam), rel=1e-5)
        assert (h - 1) * math.exp(-(m + min(0.0, occam))) == pytest.approx(alpha, rel=1e-4)
    # larger libraries and smaller alpha widen the margin
    assert float(screen_margin(1000, 1e-6, 0.0)) > float(screen_margin(100, 1e-6, 0.0)) > float(screen_margin(100, 1e-3, 0.0))


def test_alpha_trades_margin_for_exact_work(rng_key):
    dose = 30.0
    y = _frame(rng_key, POISSON, 1, dose)
    cache = prepare_screen_cache(IMAGES)
    tight = make_fast_scorer(POISSON, PRIOR, alpha=1e-9, min_exact=1)(y, cache, _exposure(dose))
    loose = make_fast_scorer(POISSON, PRIOR, alpha=0.5, min_exact=1)(y, cache, _exposure(dose))
    assert float(tight.margin_nats) > float(loose.margin_nats) + 15.0
    assert int(tight.n_within_margin) >= int(loose.n_within_margin) >= 1
    assert float(loose.screen_error_bound) == pytest.approx(0.5, rel=1e-3)


def test_cache_raw_images_pickle_and_jit(rng_key):
    """Prepared cache and raw images give the same score; results and caches pickle; the
    cache's binned images are block means; a second call reuses the compiled stages."""
    dose = 100.0
    y = _frame(rng_key, POISSON, 0, dose)
    fast = make_fast_scorer(POISSON, PRIOR, bin_factor=2)
    cache = prepare_screen_cache(IMAGES, bin_factor=2)
    np.testing.assert_allclose(np.asarray(cache.screen.binned[4, 1, 2]), np.asarray(IMAGES[4, 2:4, 4:6]).mean(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cache.screen.sums), np.asarray(IMAGES).sum(axis=(1, 2)), rtol=1e-5)
    a = fast(y, cache, _exposure(dose))
    b = fast(y, IMAGES, _exposure(dose))
    np.testing.assert_array_equal(np.asarray(a.log_evidence), np.asarray(b.log_evidence))
    for obj in (a, cache):
        back = pickle.loads(pickle.dumps(obj))
        assert type(back) is type(obj)
        for x, z in zip(jax.tree.leaves(obj), jax.tree.leaves(back)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(z))
    assert isinstance(cache, ImageSet) and cache.screen.bin_factor == 2


def test_compiles_once_per_bucket(rng_key):
    """New frames with the same shapes and buckets reuse the compiled stages (no recompiles)."""
    from inference import screen_jax as S

    dose = 1e4
    fast = make_fast_scorer(POISSON, PRIOR, backend="jax")
    cache = prepare_screen_cache(IMAGES)
    frames = [_frame(k, POISSON, 9, dose) for k in jax.random.split(rng_key, 4)]
    fast(frames[0], cache, _exposure(dose))
    sizes = (S._screen_stage._cache_size(), S._exact_stage._cache_size(), S._merge._cache_size())
    for y in frames[1:]:
        fs = fast(y, cache, _exposure(dose))
        assert int(fs.n_within_margin) <= 16  # the same bucket K = min_exact
    assert (S._screen_stage._cache_size(), S._exact_stage._cache_size(), S._merge._cache_size()) == sizes


def _assert_same_scores(a: Score, b: Score, tol=EXACT_TOL):
    """Two backends' scores of one frame: the same screen decisions and evidences. (The jitted
    stages round the number of exactly scored hypotheses up to a power of two, the CPU path
    does not, so the exact sets may differ beyond the hypotheses within the margin.)"""
    assert bool(a.screened) == bool(b.screened)
    assert int(a.n_within_margin) == int(b.n_within_margin)
    np.testing.assert_allclose(float(a.margin_nats), float(b.margin_nats), atol=tol)
    np.testing.assert_allclose(np.asarray(a.screen_log_evidence), np.asarray(b.screen_log_evidence), atol=tol)
    ma, mb = np.asarray(a.exact), np.asarray(b.exact)
    scr = np.asarray(a.screen_log_evidence)
    within = scr >= scr.max() - float(a.margin_nats) + tol
    assert np.all(ma[within]) and np.all(mb[within])
    both = ma & mb
    assert both.sum() >= within.sum()
    for field in ("log_evidence", "laplace_term"):
        np.testing.assert_allclose(np.asarray(getattr(a, field))[both], np.asarray(getattr(b, field))[both], atol=tol, err_msg=field)
    for field in ("scale", "background", "scale_sd", "background_sd"):
        x, y = np.asarray(getattr(a, field))[both], np.asarray(getattr(b, field))[both]
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5, err_msg=field)


@pytest.mark.parametrize(
    "noise, dose, shift",
    [
        (POISSON, 1e3, None),  # dense
        (POISSON, 30.0, (0.3, -0.2)),  # dense, shifted
        (POISSON, 2.5, None),  # sparse, screen skipped
        (POISSON, 2.5, (0.25, 0.4)),  # sparse, screened
        (make_noise_model("poisson_gaussian", gain=2.0, read_noise=1.5), 200.0, (1.4, 0.6)),
    ],
    ids=["dense", "dense-shift", "sparse-skip", "sparse-shift", "poisson_gaussian-shift"],
)
def test_cpu_kernel_matches_jax_stages(rng_key, noise, dose, shift):
    """The CPU kernel path (``backend="cpu"``) and the jitted XLA stages (``backend="jax"``)
    give the same scores: same survivors, evidences within float32 rounding."""
    y = _frame(jax.random.fold_in(rng_key, int(dose)), noise, 5, dose, shift=shift)
    cache = prepare_screen_cache(IMAGES)
    a = make_fast_scorer(noise, PRIOR, backend="jax")(y, cache, _exposure(dose), shift=shift)
    b = make_fast_scorer(noise, PRIOR, backend="cpu")(y, cache, _exposure(dose), shift=shift)
    _assert_same_scores(a, b)
    assert float(b.screen_error_bound) <= 1e-6  # float64 margin and bound: alpha itself
    exact = make_linear_scorer(noise, PRIOR)(y, IMAGES, _exposure(dose), shift=(0.0, 0.0) if shift is None else shift)
    _check_against_exact(b, exact, 5)


def test_cpu_kernel_sums_match_float64_reference():
    """:func:`inference._kernels.lik_sums` against the float64 formulas of
    :func:`inference.evidence._mu_derivs` on dense and gathered pixels, with and without the
    read-noise shift and the 1e-6 electron floor (an image with zeros and no background)."""
    from inference._kernels import lik_sums

    rng = np.random.default_rng(3)
    images = rng.uniform(0.0, 2.0, (5, 1300)).astype(np.float32)
    images[:, :50] = 0.0
    z = rng.poisson(3.0, 1300).astype(np.float32) + np.float32(0.25) * (rng.uniform(size=1300) < 0.5)
    theta = np.array([[1.1, 0.0], [0.9, 0.05], [1.0, 0.2]])
    rows = np.array([4, 0, 2])
    for pix, shift in [(np.zeros(0, np.int64), 0.0), (np.flatnonzero(z > 2), 0.7)]:
        zz = z if pix.size == 0 else z[pix]
        out = lik_sums(images, rows, pix, zz, theta, 2.5, shift, True)
        for k, h in enumerate(rows):
            x = images[h].astype(np.float64) if pix.size == 0 else images[h, pix].astype(np.float64)
            m = np.maximum(2.5 * (theta[k, 0] * x + theta[k, 1]) + shift, 1e-6)
            r = zz / m
            ea, ew = 2.5 * (r - 1), 2.5**2 * r / m
            data = np.where(zz > 0, -zz * np.log(np.maximum(r, 1e-30)), 0.0) - (m - zz)
            ref = [np.sum(ea * x), np.sum(ea), np.sum(ew * x * x), np.sum(ew * x), np.sum(ew), np.sum(data), np.sum(x)]
            np.testing.assert_allclose(out[k], ref, rtol=2e-6, atol=2e-3 * np.sqrt(x.size) * 1e-3 + 1e-6)
    no_data = lik_sums(images, rows, np.zeros(0, np.int64), z, theta, 2.5, 0.0, False)
    np.testing.assert_array_equal(no_data[:, 5], 0.0)


def test_fast_scorer_bad_input():
    fast = make_fast_scorer(POISSON, PRIOR)
    y = jnp.zeros(GPTS)
    with pytest.raises(InputError, match=r"bin_factor 3 must divide the frame shape \[32, 32\]"):
        prepare_screen_cache(IMAGES, bin_factor=3)
    with pytest.raises(InputError, match=r"bin_factor must be a positive integer"):
        prepare_screen_cache(IMAGES, bin_factor=0)
    with pytest.raises(InputError, match="the library is empty"):
        prepare_screen_cache(jnp.zeros((0, 32, 32)))
    with pytest.raises(InputError, match=r"images must be \[H, nx, ny\]"):
        prepare_screen_cache(IMAGES[0])
    with pytest.raises(InputError, match=r"cached images must be finite: hypothesis 4 has NaN or infinite pixels \(and 1 more\)"):
        prepare_screen_cache(IMAGES.at[4, 3, 3].set(jnp.nan).at[7, 0, 0].set(jnp.inf))
    with pytest.raises(InputError, match=r"prepared with bin_factor 2, this scorer uses 4"):
        fast(y, prepare_screen_cache(IMAGES, bin_factor=2), 1.0)
    with pytest.raises(InputError, match=r"frame shape \[32, 16\] does not match the cached images \[32, 32\]"):
        fast(jnp.zeros((32, 16)), IMAGES, 1.0)
    with pytest.raises(InputError, match=r"exposure .* must be finite and > 0, got -1.0"):
        fast(y, IMAGES, -1.0)
    with pytest.raises(InputError, match=r"frame counts must be >= 0 under the poisson noise model"):
        fast(y.at[0, 0].set(-1.0), IMAGES, 1.0)
    with pytest.raises(InputError, match=r"shift must be a finite \(shift_x, shift_y\) \[pixels\]"):
        fast(y, IMAGES, 1.0, shift=(0.1, np.nan))
    with pytest.raises(InputError, match=r"shift must be a finite \(shift_x, shift_y\) \[pixels\]"):
        fast(y, IMAGES, 1.0, shift=(0.1, 0.2, 0.3))
    with pytest.raises(InputError, match=r"alpha .* must be in \(0, 1\), got 0"):
        make_fast_scorer(POISSON, PRIOR, alpha=0)
    with pytest.raises(InputError, match=r"min_exact must be >= 1"):
        make_fast_scorer(POISSON, PRIOR, min_exact=0)
    with pytest.raises(InputError, match=r"n_newton and n_screen must be >= 1 Newton iterations and n_refine >= 0"):
        make_fast_scorer(POISSON, PRIOR, n_refine=-1)
    with pytest.raises(InputError, match=r"backend must be 'auto', 'jax' or 'cpu', got 'gpu'"):
        make_fast_scorer(POISSON, PRIOR, backend="gpu")
    with pytest.raises(InputError, match=r"the cpu kernels cover the poisson and poisson_gaussian noise models"):
        make_fast_scorer(make_noise_model("gaussian", read_noise=3.0), PRIOR, backend="cpu")


def _kernel_in_child(queue, images, z, theta):
    from inference._kernels import lik_sums

    queue.put(lik_sums(images, np.arange(images.shape[0]), np.zeros(0, np.int64), z, theta, 1.0, 0.0, True))


@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork\\(\\):DeprecationWarning")
def test_cpu_kernel_pool_survives_fork():
    """A process forked after the kernel's thread pool started gets a pool of its own (the
    inherited pool object has no threads in the child, where a submit would wait forever)."""
    import multiprocessing as mp

    from inference._kernels import lik_sums

    rng = np.random.default_rng(0)
    images = rng.uniform(0.5, 1.5, (64, 4096)).astype(np.float32)
    z = rng.poisson(1.0, 4096).astype(np.float32)
    theta = np.tile([1.0, 0.01], (64, 1))
    parent = lik_sums(images, np.arange(64), np.zeros(0, np.int64), z, theta, 1.0, 0.0, True)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_kernel_in_child, args=(queue, images, z, theta))
    proc.start()
    try:
        child = queue.get(timeout=120)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    np.testing.assert_array_equal(child, parent)
