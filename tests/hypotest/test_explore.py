"""The notebook helper API (hypotest.explore): loaders and figures that carry the data."""

from __future__ import annotations

import io

import jax
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from forward import InputError, make_specimen
from hypotest import explore as ex
from inference import Proposal

NAMES = ["pristine", "V_S", "O_S"]


def _posterior():
    """A 3-hypothesis posterior over 6 steps that moves from the prior to O_S."""
    le = np.array([[0.0, -0.5, 0.2], [0.0, -2.0, 0.9], [0.0, -3.0, 1.0], [0.0, -4.0, 2.0], [0.0, -6.0, 3.0], [0.0, -9.0, 4.0]])
    cum = np.cumsum(le, axis=0)
    p = np.exp(cum - cum.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), (cum - cum.max(axis=1, keepdims=True)) / np.log(10)


# ------------------------------------------------------------------------------------------ loaders


def test_load_library_builtin_and_file_agree():
    from library.builtin import library_path, load

    hyps = ex.load_library("mos2_defects")
    entries = load("mos2_defects")
    assert [h.id for h in hyps] == [e.id for e in entries]
    assert [h.name for h in hyps] == [e.name for e in entries]
    assert np.isclose(sum(float(h.prior) for h in hyps), 1.0)
    from_file = ex.load_library(library_path("mos2_defects"))
    assert [h.id for h in from_file] == [h.id for h in hyps]
    fam = hyps[0].family
    assert len(ex.load_library("mos2_defects", family=fam)) == len(hyps)


def test_load_library_bad_input(tmp_path):
    with pytest.raises(InputError, match=r"expected a built-in library name \(one of \['mos2_defects'.*got 'nope'.*neither"):
        ex.load_library("nope")
    txt = tmp_path / "lib.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match=r"got '.*lib.txt', which is a file that is not .h5"):
        ex.load_library(txt)
    import dataclasses

    from library import write_library
    from library.builtin import load

    bad = dataclasses.replace(load("mos2_defects")[0], id="h0000000000000000")
    path = write_library(tmp_path / "bad.h5", [bad])
    with pytest.raises(InputError, match=r"entry 'MoS2 monolayer' has id h0000000000000000 but its structure hashes to h"):
        ex.load_library(path)


def test_load_session_bad_input(tmp_path):
    with pytest.raises(InputError, match=r"expected a session directory, got '.*missing'.*--out directory"):
        ex.load_session(tmp_path / "missing")
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(InputError, match=r"is not a session directory: expected session.json .*found \['other.txt'\]"):
        ex.load_session(tmp_path)


def _write_session(directory, *, shift=(0.0, 0.0), scale=1.0, background=0.0):
    """A small session record written with the session's own writer: the first three MoS2
    hypotheses on a coarse model, three steps of frames drawn from hypothesis 1, the last step
    coalescing two frames; returns the model and the beam."""
    from hypotest.live.model import ImageModel
    from hypotest.live.record import SessionWriter
    from inference import fourier_shift

    hyps = ex.load_library("mos2_defects")[:3]
    settings = {"sampling": 0.2, "binning": 1, "slice_thickness": 2.0}
    model = ImageModel([h.specimen for h in hyps], **settings)
    beam = {"energy": 80e3, "dose": 50.0, "sampling": list(model.pixel_sampling), "aberrations": {"defocus": 50.0},
            "detector": {"mode": "hrtem"}}  # fmt: skip
    config = {
        "hypotheses": [{"id": h.id, "name": h.name, "family": h.family, "prior": float(h.prior)} for h in hyps],
        "library": "mos2_defects", "model": settings, "rule": "Bayes factor vs best < 0.001", "rule_threshold": 1e-3,
        "candidate_beams": [{"label": "df 50", "beam": beam}],
    }  # fmt: skip
    w = SessionWriter(directory, config)
    ids = [h.id for h in hyps]
    area = model.pixel_sampling[0] * model.pixel_sampling[1]
    img = np.asarray(fourier_shift(model.images(beam)[1], np.asarray(shift, np.float32)))
    mu = 50.0 * area * (scale * img + background)
    rng = np.random.default_rng(0)
    for k in range(4):
        w.append_frame(rng.poisson(mu).astype(np.uint16), index=k, source_id=k, beam=beam, beam_label="df 50")
    post = [[0.3, 0.5, 0.2], [0.1, 0.85, 0.05], [0.001, 0.998, 0.001]]
    l10 = [[-0.2, 0.0, -0.4], [-0.9, 0.0, -1.2], [-3.5, 0.0, None]]
    for s, frames in enumerate(([0], [1], [2, 3])):
        w.append(
            "step", step=s, frames=frames, source_ids=frames, coalesced=len(frames) - 1, beam_label="df 50", beam=beam,
            dose_e_per_A2=50.0 * len(frames), ids=ids, posterior=post[s], log10_bayes_factor=l10[s],
            segment_start=2 if s == 2 else 0, change_point=s == 2, map_state=ids[1],
            fit={"hypothesis": ids[1], "scale": scale, "background": background, "shift_px": list(shift)},
        )  # fmt: skip
    w.append("rejection", id=ids[0], name=hyps[0].name, step=2, log10_bayes_factor=-3.5, frames=[2, 3],
             dose_e_per_A2=200.0, reason="Bayes factor 10^-3.5")  # fmt: skip
    w.close()
    return model, beam, hyps


def test_session_plots_and_step_fit(tmp_path):
    """A recorded session: the posterior, rejection and change-point figures carry its data, and
    step_fit rebuilds the fitted expected counts (shift by whole pixels = np.roll)."""
    model, beam, hyps = _write_session(tmp_path, shift=(2.0, -1.0), scale=1.2, background=0.05)
    s = ex.load_session(tmp_path)
    assert s.posterior.shape == (3, 3)

    fig = ex.plot_posterior_over_time(s)
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    np.testing.assert_allclose(ax.lines[1].get_ydata(), s.posterior[:, 1])
    (cp,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(cp.get_segments()) == len(s.change_points) == 1

    fig = ex.plot_rejections(s)
    ax, axb = fig.axes[:2]
    assert len(ax.lines) == 3
    assert np.isnan(ax.lines[2].get_ydata()[2])  # JSON null (absent/non-finite) is a gap, not a value
    (marks,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(marks.get_offsets(), [[2.0, -3.5]])
    assert len(axb.patches) == 3 and axb.patches[0].get_facecolor()[:3] == pytest.approx((0.839, 0.153, 0.157), abs=0.01)

    fig = ex.plot_change_points(s)
    step_line = fig.axes[0].lines[0]
    np.testing.assert_array_equal(step_line.get_ydata(), [1, 1, 1])
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), s.posterior[:, 1])

    fit = ex.step_fit(s, 2, model)
    assert fit["frames"] == [2, 3] and fit["hypothesis"] == hyps[1].id
    np.testing.assert_array_equal(fit["counts"], s.frame(2).astype(float) + s.frame(3))
    area = model.pixel_sampling[0] * model.pixel_sampling[1]
    want = 100.0 * area * (1.2 * np.roll(model.images(beam)[1], (2, -1), axis=(0, 1)) + 0.05)
    np.testing.assert_allclose(fit["expected"], want, rtol=1e-4)
    fig = ex.plot_frame_and_residual(fit["counts"], fit["expected"], sampling=fit["sampling"])
    chi2 = float(fig.get_suptitle().split("= ")[-1])
    assert 0.8 < chi2 < 1.2  # frames were drawn from exactly this model
    with pytest.raises(InputError, match=r"step 7 is not in the record; it holds steps \[0, 1, 2\]"):
        ex.step_fit(s, 7, model)


# ------------------------------------------------------------------------------------------ plots


def test_posterior_over_time_from_arrays():
    post, _ = _posterior()
    fig = ex.plot_posterior_over_time(post, NAMES, change_points=[2, 4])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == len(NAMES)
    for h, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_ydata(), post[:, h])
        assert line.get_label() == NAMES[h]
    (cp,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [seg[0][0] for seg in cp.get_segments()] == [2.0, 4.0]
    fig = ex.plot_posterior_over_time(post, NAMES, log_scale=True)
    np.testing.assert_allclose(fig.axes[0].lines[2].get_ydata(), np.log10(post[:, 2]))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_posterior_over_time_bad_input():
    post, _ = _posterior()
    with pytest.raises(InputError, match=r"posterior has 3 hypotheses but 2 names were given"):
        ex.plot_posterior_over_time(post, NAMES[:2])
    with pytest.raises(InputError, match=r"needs names=\[...\] \(one per hypothesis, 3 here\)"):
        ex.plot_posterior_over_time(post)
    with pytest.raises(InputError, match=r"must be a 2-D array \[steps, H\].*got shape \[3\]"):
        ex.plot_posterior_over_time(post[0], NAMES)
    with pytest.raises(InputError, match=r"must be probabilities in \[0, 1\], got values in \[.*, 1.99.*\]"):
        ex.plot_posterior_over_time(2 * post, NAMES)
    with pytest.raises(InputError, match=r"change points must be steps within \[0, 5\], got \[9.0\]"):
        ex.plot_posterior_over_time(post, NAMES, change_points=[9])


def test_rejections_from_arrays():
    _, l10 = _posterior()
    rej = [{"name": "V_S", "step": 3, "log10_bayes_factor": float(l10[3, 1])}]
    fig = ex.plot_rejections(l10, NAMES, rejections=rej, threshold=1e-3)
    ax, axb = fig.axes[:2]
    assert len(ax.lines) == len(NAMES)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), l10[:, 1])
    (marks,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(marks.get_offsets(), [[3.0, l10[3, 1]]])
    widths = [p.get_width() for p in axb.patches]
    np.testing.assert_allclose(widths, l10[-1])
    red = [p.get_facecolor()[0] > 0.8 for p in axb.patches]
    assert red == [True, True, False]  # below the threshold at the last step
    with pytest.raises(InputError, match=r"threshold must be a Bayes factor in \(0, 1\).*got 3"):
        ex.plot_rejections(l10, NAMES, threshold=3)
    with pytest.raises(InputError, match=r"names no hypothesis of this plot; expected one of \['pristine'"):
        ex.plot_rejections(l10, NAMES, rejections=[{"name": "W_Mo", "step": 1, "log10_bayes_factor": -4}])


def test_change_points_from_arrays():
    post, _ = _posterior()
    states = np.array([0, 0, 2, 2, 1, 1])
    fig = ex.plot_change_points(states, NAMES, change_points=[2, 4], posterior=post)
    ax, axp = fig.axes
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), states)
    (cp,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(cp.get_segments()) == 2
    np.testing.assert_allclose(axp.lines[0].get_ydata(), post[np.arange(6), states])
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    with pytest.raises(InputError, match=r"indices must lie in \[0, 2\].*got \[0, 5\]"):
        ex.plot_change_points(np.array([0, 5]), NAMES)
    with pytest.raises(InputError, match=r"non-empty 1-D array of hypothesis indices \(int\).*dtype float64"):
        ex.plot_change_points(np.array([0.0, 1.0]), NAMES)
    with pytest.raises(InputError, match=r"posterior has 6 steps but there are 2 MAP states"):
        ex.plot_change_points(np.array([0, 1]), NAMES, posterior=post)


def test_frame_and_residual_is_pearson():
    """Frames drawn from mu: residual = (y - mu)/sqrt(mu) pixel by pixel, chi2/pixel ~ 1 (4096
    pixels: sd of the mean of r^2 ~ sqrt(2/4096) = 0.022; accept 1 +- 0.1); a wrong model is far off."""
    rng = np.random.default_rng(3)
    x = np.linspace(0, 2 * np.pi, 64)
    mu = 20.0 * (1.2 + np.sin(x)[:, None] * np.cos(x)[None, :])
    y = rng.poisson(mu).astype(float)
    fig = ex.plot_frame_and_residual(y, mu, sampling=(0.1, 0.2), title="test")
    ims = [a.images[0] for a in fig.axes if a.images]
    assert len(ims) == 3 and all(isinstance(i, AxesImage) for i in ims)
    np.testing.assert_allclose(ims[2].get_array(), ((y - mu) / np.sqrt(mu)).T)
    assert ims[0].get_extent() == pytest.approx([0, 6.4, 0, 12.8])
    chi2 = float(fig.get_suptitle().split("= ")[-1])
    assert abs(chi2 - 1.0) < 0.1
    wrong = ex.plot_frame_and_residual(y, np.full_like(mu, mu.mean()))
    assert float(wrong.get_suptitle().split("= ")[-1]) > 3.0
    with pytest.raises(InputError, match=r"one shape, got \[64, 64\] and \[64, 32\]"):
        ex.plot_frame_and_residual(y, mu[:, :32])
    with pytest.raises(InputError, match=r"expected counts must be > 0 in every pixel.*got minimum 0"):
        ex.plot_frame_and_residual(y, np.zeros_like(mu))


def test_structure_shows_every_atom():
    sp = make_specimen([[1, 1, 1], [2, 1, 1], [1, 2, 2], [3, 3, 3]], ["Mo", "S", "S", "O"], (4, 4, 4))
    fig = ex.plot_structure(sp, title="tiny")
    plan, side = fig.axes
    for ax, cols in ((plan, (0, 1)), (side, (0, 2))):
        pts = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
        assert len(pts) == 4
        want = np.asarray(sp.positions)[:, cols]
        assert sorted(map(tuple, pts.round(6).tolist())) == sorted(map(tuple, want.round(6).tolist()))
    assert [t.get_text() for t in plan.get_legend().get_texts()] == ["Mo (1)", "S (2)", "O (1)"]
    hyp = ex.load_library("mos2_defects")[1]
    fig = ex.plot_structure(hyp)
    assert fig.axes[0].get_title() == hyp.name
    with pytest.raises(InputError, match=r"expected a forward.Specimen or a hypothesis/library entry holding one, got ndarray"):
        ex.plot_structure(np.zeros((3, 3)))


def test_crlb_table_and_plot():
    """Draws from N(m, s^2) with bound s: sd/crlb ~ 1 (2000 draws: relative sd error ~1.6%)."""
    rng = np.random.default_rng(1)
    m, s = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.1, 0.2], [0.05, 0.3]])
    samples = {"xy": m + s * rng.standard_normal((2, 1000, 2, 2)), "df": 50 + 5 * rng.standard_normal((2, 1000))}
    bound = {"xy": s, "df": np.asarray(5.0)}
    rows = ex.crlb_table(samples, bound, truth={"xy": m})
    assert [r["parameter"] for r in rows] == ["xy[0, 0]", "xy[0, 1]", "xy[1, 0]", "xy[1, 1]", "df"]
    for r in rows:
        assert r["sd_over_crlb"] == pytest.approx(1.0, abs=0.07)
    assert all(abs(r["z"]) < 0.2 for r in rows[:4]) and "z" not in rows[4]
    fig = ex.plot_crlb_vs_posterior(samples, bound, truth={"xy": m})
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 5
    for ax, r in zip(visible[:4], rows):
        assert len(ax.lines) == 2  # the CRLB Gaussian and the truth
        assert f"sd/CRLB = {r['sd_over_crlb']:.2f}" in ax.get_title()
        assert len(ax.patches) == 30  # histogram bars
    assert len(visible[4].lines) == 1
    with pytest.raises(InputError, match=r"parameters \['tilt'\] have a bound but no posterior samples"):
        ex.crlb_table(samples, {"tilt": np.ones(2)})
    with pytest.raises(InputError, match=r"bound of 'xy' has 3 components but its samples have 4 \(shape \[2, 2\]\)"):
        ex.crlb_table(samples, {"xy": np.ones(3)})
    with pytest.raises(InputError, match=r"expected an ArviZ posterior DataTree .* got list"):
        ex.crlb_table([1, 2], bound)


def test_crlb_plot_from_nuts_inference_data(rng_key):
    """The ArviZ posterior DataTree from inference.nuts_refine is read the same way as a dict."""
    from inference import SamplerConfig, nuts_refine

    ld = lambda p: -0.5 * jax.numpy.sum((p["x"] / 0.5) ** 2)  # noqa: E731
    idata = nuts_refine(rng_key, ld, {"x": jax.numpy.zeros(2)}, SamplerConfig(num_warmup=100, num_samples=200, num_chains=1))
    rows = ex.crlb_table(idata, {"x": np.array([0.5, 0.5])})
    assert len(rows) == 2 and all(0.7 < r["sd_over_crlb"] < 1.3 for r in rows)
    assert len([a for a in ex.plot_crlb_vs_posterior(idata, {"x": np.array([0.5, 0.5])}).axes if a.get_visible()]) == 2


def test_proposals_bars_best_first():
    props = [Proposal(0, 0.5, 1e-4, 40.0, (), "df 0"), Proposal(1, 0.9, 3e-4, 40.0, ((0, 1),), "df 100"),
             Proposal(2, 0.1, 2e-5, 40.0, (), "")]  # fmt: skip
    fig = ex.plot_proposals(props)
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [3e-4, 1e-4, 2e-5]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["df 100", "df 0", "condition 2"]
    assert len(ex.plot_proposals([p.to_dict() for p in props]).axes[0].patches) == 3
    with pytest.raises(InputError, match=r"no proposals to plot: got an empty list"):
        ex.plot_proposals([])
    with pytest.raises(InputError, match=r"each proposal needs .*gain_bits_per_electron.*missing"):
        ex.plot_proposals([{"label": "x"}])


def test_remaining_bad_input():
    from types import SimpleNamespace

    y = np.ones((4, 4))
    with pytest.raises(InputError, match=r"frame and expected counts must be finite; got NaN or inf"):
        ex.plot_frame_and_residual(np.full((4, 4), np.nan), y)
    with pytest.raises(InputError, match=r"sampling must be positive \[Å/pixel\], got -1"):
        ex.plot_frame_and_residual(y, y, sampling=-1)
    with pytest.raises(InputError, match=r"posterior must be a numeric array \[steps, H\], got list"):
        ex.plot_posterior_over_time([["a", "b"]], ["x", "y"])
    with pytest.raises(InputError, match=r"posterior has no finite value \(NaN marks a hypothesis absent"):
        ex.plot_posterior_over_time(np.full((2, 2), np.nan), ["x", "y"])
    with pytest.raises(InputError, match=r"MAP states given as indices need names=\[...\]"):
        ex.plot_change_points(np.array([0, 1]))
    with pytest.raises(InputError, match=r"samples of 'x' must be \[chain, draw, ...\], got shape \[5\]"):
        ex.crlb_table({"x": np.zeros(5)}, {"x": np.ones(1)})
    with pytest.raises(InputError, match=r"bound must be a non-empty dict of CRLB standard deviations"):
        ex.crlb_table({"x": np.zeros((1, 5))}, {})
    fake = SimpleNamespace(steps=[{"step": 0}], posterior=np.ones((1, 1)), names=["a"], ids=["h1"], map_states=["zzz"],
                           change_points=[], config={"library": "mos2_defects", "model": {},
                                                     "hypotheses": [{"id": "h1", "name": "a"}]})  # fmt: skip
    with pytest.raises(InputError, match=r"session MAP states \['zzz'\] are not hypothesis ids of the session"):
        ex.plot_change_points(fake)
    with pytest.raises(InputError, match=r"expected a loaded session \(load_session\).*got int with config keys None"):
        ex.session_image_model(3)
    with pytest.raises(InputError, match=r"the session's hypotheses \['h1'\] are not in library 'mos2_defects'"):
        ex.session_image_model(fake)
    fake.steps = [{"step": 0, "fit": {"hypothesis": "h9"}}]
    with pytest.raises(InputError, match=r"the best hypothesis h9 of step 0 was added during the session"):
        ex.step_fit(fake, 0, model=object())
