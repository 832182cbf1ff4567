"""Refinement: MAP (optax L-BFGS), Fisher information / CRLB, NUTS posteriors as ArviZ data."""

import arviz as az
import xarray as xr
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forward import InputError
from inference import (
    SamplerConfig,
    crlb,
    fisher_information,
    laplace_log_evidence,
    log_likelihood,
    make_log_density,
    make_noise_model,
    map_refine,
    nuts_refine,
    sample_counts,
)
from tests.inference import _model as M

SIM = M.make_simulate_fn()
NOISE = make_noise_model("poisson")


def test_fisher_of_a_pure_scale_is_analytic():
    """mu = E theta I: F = sum (E I)² / (E theta I) = E sum(I) / theta (Poisson)."""
    img = SIM(M.base_params(), M.beam())
    sim = lambda p, b: p["theta"] * img  # noqa: E731
    e = M.exposure(50.0)
    f, _ = fisher_information(sim, {"theta": jnp.asarray(2.0)}, None, NOISE, e)
    assert float(f[0, 0]) == pytest.approx(e * float(jnp.sum(img)) / 2.0, rel=1e-5)
    # read noise lowers the information: denominator mu + (r/g)²
    pg = make_noise_model("poisson_gaussian", gain=1.0, read_noise=2.0)
    f2, _ = fisher_information(sim, {"theta": jnp.asarray(2.0)}, None, pg, e)
    want = float(jnp.sum((e * img) ** 2 / (e * 2.0 * img + 4.0)))
    assert float(f2[0, 0]) == pytest.approx(want, rel=1e-5)


def test_crlb_scales_with_dose():
    p = M.base_params()
    lo = crlb(SIM, p, M.beam(), NOISE, M.exposure(100.0), free=("positions",))
    hi = crlb(SIM, p, M.beam(), NOISE, M.exposure(400.0), free=("positions",))
    np.testing.assert_allclose(np.asarray(lo["positions"]) / np.asarray(hi["positions"]), 2.0, rtol=1e-3)


def test_map_recovers_structure_and_beam_parameters(rng_key):
    """Positions, defocus offset and thickness from one frame at 2000 e-/Å², within 4 CRLB."""
    truth = M.base_params(defocus=150.0, thickness=60.0)
    truth["positions"] = truth["positions"].at[2, 0].add(0.2)
    beam = M.beam(defocus=100.0)
    e = M.exposure(2000.0)
    y = sample_counts(rng_key, NOISE, e * SIM(truth, beam))
    free = ("positions", "defocus", "thickness")
    start = M.base_params(defocus=120.0, thickness=50.0)
    ld, init, _ = make_log_density(SIM, start, beam, y, NOISE, e, free=free)
    state, info = map_refine(ld, init, steps=80)
    bound = crlb(SIM, truth, beam, NOISE, e, free=free)
    for k in free:
        err = np.abs(np.asarray(state.params[k]) - np.asarray(truth[k]))
        assert np.all(err < 4 * np.asarray(bound[k])), (k, err, bound[k])
    assert float(info.history[-1]) >= float(info.history[0])


def test_map_recovers_small_tilt_defocus_thickness(rng_key):
    """Beam parameters only (positions known; a uniform tilt alone would be degenerate with
    moving every column): tilt [mrad], defocus and thickness within 4 CRLB at 1000 e-/Å²."""
    truth = dict(M.base_params(defocus=40.0, thickness=70.0), tilt=jnp.array([1.5, -1.0]))
    beam = M.beam(defocus=100.0)
    e = M.exposure(1000.0)
    y = sample_counts(rng_key, NOISE, e * SIM(truth, beam))
    free = ("defocus", "thickness", "tilt")
    ld, init, _ = make_log_density(SIM, M.base_params(defocus=0.0, thickness=60.0), beam, y, NOISE, e, free=free)
    state, _ = map_refine(ld, init, steps=60)
    bound = crlb(SIM, truth, beam, NOISE, e, free=free)
    for k in free:
        err = np.abs(np.asarray(state.params[k]) - np.asarray(truth[k]))
        assert np.all(err < 4 * np.asarray(bound[k])), (k, err, bound[k])


def test_laplace_marginalises_defocus_through_simulate_fn(rng_key):
    """Evidence with the defocus offset marginalised (prior N(0, 50 Å)): Laplace around the
    L-BFGS MAP against 1-D quadrature, within 0.05 nats at 300 e-/Å²."""
    p = M.base_params()
    beam = M.beam(defocus=100.0)
    e = M.exposure(300.0)
    y = sample_counts(rng_key, NOISE, e * SIM(dict(p, defocus=jnp.asarray(30.0)), beam))
    lp = lambda t: -0.5 * (t["defocus"] / 50.0) ** 2 - jnp.log(50.0 * jnp.sqrt(2 * jnp.pi))  # noqa: E731
    ld, init, merge = make_log_density(SIM, p, beam, y, NOISE, e, free=("defocus",), log_prior_fn=lp)
    log_z, info = laplace_log_evidence(ld, init)
    assert bool(info.positive_definite)
    grid = np.linspace(-200.0, 260.0, 801)
    vals = np.asarray(jax.vmap(lambda d: ld({"defocus": d}))(jnp.asarray(grid, jnp.float32)), np.float64)
    want = vals.max() + np.log(np.trapezoid(np.exp(vals - vals.max()), grid))
    assert float(log_z) == pytest.approx(want, abs=0.05)


def test_refined_positions_scatter_within_crlb():
    """30 noisy frames at 500 e-/Å², 8 position coordinates: the RMS scatter of the MAP is
    within 1.3x (and, as a sanity check, above 0.7x) the Cramér-Rao bound."""
    p = M.base_params()
    beam = M.beam()
    e = M.exposure(500.0)
    bound = np.asarray(crlb(SIM, p, beam, NOISE, e, free=("positions",))["positions"])
    n_rep = 30
    mu = e * SIM(p, beam)
    ys = jax.vmap(lambda k: sample_counts(k, NOISE, mu))(jax.random.split(jax.random.key(11), n_rep))

    def ld(theta):  # independent frames, independent parameters: one L-BFGS over the product
        one = lambda pos, y: log_likelihood(NOISE, y, e * SIM(dict(p, positions=pos), beam))  # noqa: E731
        return jnp.sum(jax.vmap(one)(theta["positions"], ys))

    init = {"positions": jnp.broadcast_to(p["positions"], (n_rep, 4, 2)) + 0.05}
    state, _ = map_refine(ld, init, steps=60)
    err = np.asarray(state.params["positions"] - p["positions"][None])
    ratio = np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(bound**2))
    assert 0.7 < ratio < 1.3, ratio


def test_laplace_evidence_of_defocus_is_exact_for_gaussian_integral():
    """A quadratic log joint (Gaussian in defocus) has an exact Laplace evidence."""
    lj = lambda p: -0.5 * ((p["df"] - 3.0) / 2.0) ** 2 + 1.5  # noqa: E731
    log_z, info = laplace_log_evidence(lj, {"df": jnp.asarray(0.0)})
    assert float(log_z) == pytest.approx(1.5 + np.log(2.0 * np.sqrt(2 * np.pi)), abs=1e-4)
    assert float(info.params["df"]) == pytest.approx(3.0, abs=1e-3)


def test_nuts_returns_a_posterior_datatree_saved_to_netcdf(rng_key, tmp_path):
    """A Gaussian log density with known moments (the slow test below runs NUTS through the
    image model): mean and sd within 5 Monte Carlo standard errors, netCDF round trip."""
    ld = lambda p: -0.5 * jnp.sum(((p["x"] - jnp.array([1.0, -2.0])) / jnp.array([0.5, 2.0])) ** 2)  # noqa: E731
    idata = nuts_refine(rng_key, ld, {"x": jnp.zeros(2)}, SamplerConfig(num_warmup=200, num_samples=500, num_chains=2))
    assert isinstance(idata, xr.DataTree) and set(idata.children) == {"posterior", "sample_stats"}  # ArviZ 1.x
    assert idata.posterior["x"].shape == (2, 500, 2)
    s = idata.posterior["x"].values.reshape(-1, 2)
    ess = np.asarray(az.ess(idata)["x"])
    np.testing.assert_array_less(np.abs(s.mean(0) - [1.0, -2.0]), 5 * np.array([0.5, 2.0]) / np.sqrt(ess))
    np.testing.assert_allclose(s.std(0), [0.5, 2.0], rtol=0.15)
    path = tmp_path / "refine.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior["x"].values, idata.posterior["x"].values)
    assert int(back.sample_stats["diverging"].values.sum()) == 0


@pytest.mark.slow
def test_nuts_credible_intervals_cover_at_nominal_rate():
    """40 datasets with truth drawn from the prior (N(base, 0.1 Å) on one column): the 90%
    central intervals of NUTS cover 72 of 80 coordinates in expectation; accept 72 ± 8 (3 sigma)."""
    p = M.base_params()
    beam = M.beam()
    e = M.exposure(100.0)
    n_rep, psd = 40, 0.1
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    truth = p["positions"][0][None] + psd * jax.random.normal(k1, (n_rep, 2))
    mu_of = lambda q: e * SIM(dict(p, positions=p["positions"].at[0].set(q)), beam)  # noqa: E731
    ys = jax.vmap(lambda k, t: sample_counts(k, NOISE, mu_of(t)))(jax.random.split(k2, n_rep), truth)

    def ld(theta):
        pos = theta["pos0"]
        ll = jnp.sum(jax.vmap(lambda q, y: log_likelihood(NOISE, y, mu_of(q)))(pos, ys))
        return ll - 0.5 * jnp.sum(((pos - p["positions"][0][None]) / psd) ** 2)

    state, _ = map_refine(ld, {"pos0": jnp.broadcast_to(p["positions"][0], (n_rep, 2))}, steps=50)
    idata = nuts_refine(k3, ld, state.params, SamplerConfig(num_warmup=300, num_samples=400, num_chains=2))
    s = idata.posterior["pos0"].values.reshape(-1, n_rep, 2)
    lo, hi = np.quantile(s, 0.05, axis=0), np.quantile(s, 0.95, axis=0)
    tr = np.asarray(truth)
    covered = int(((tr >= lo) & (tr <= hi)).sum())
    assert 64 <= covered <= 80, covered
    assert float(az.rhat(idata)["pos0"].max()) < 1.05


def test_refine_bad_input():
    p = M.base_params()
    with pytest.raises(InputError, match=r"free parameters \['occupancies'\] are not in params"):
        make_log_density(SIM, p, M.beam(), np.zeros(M.GPTS), NOISE, 1.0, free=("occupancies",))
    with pytest.raises(InputError, match=r"frame shape \[8, 8\] does not match the simulated images \[16, 16\]"):
        make_log_density(SIM, p, M.beam(), np.zeros((8, 8)), NOISE, 1.0)
    with pytest.raises(InputError, match="steps must be >= 1"):
        map_refine(lambda t: -t["a"] ** 2, {"a": jnp.asarray(1.0)}, steps=0)
