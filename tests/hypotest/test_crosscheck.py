"""The independent checks of a field of view (hypotest.crosscheck) on a frame with a known
answer: a MoS2-like lattice of Gaussian columns (HAADF intensity sum Z^1.7 per column), some S2
columns made Se_S or V_S2, Poisson counts; the RESULT.json entries the checks read built from the
known geometry. Fixed seeds."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from forward import InputError
from hypotest.crosscheck import clean_lattice_rates, column_ratios, compare, fit_mixture, lattice_residual_z

A = 3.16
LAT = np.array([[A, A / 2], [0.0, A * math.sqrt(3) / 2]])  # columns a1, a2 [Å]
S_POS = (LAT[:, 0] + LAT[:, 1]) / 3
PX = 0.15
TH = np.radians(12.0)
M = PX * np.array([[math.cos(TH), -math.sin(TH)], [math.sin(TH), math.cos(TH)]])  # r = M p + t
T = np.array([0.4, -0.3])
SHAPE = (256, 256)


def _z17(zs):
    return sum(z**1.7 for z in zs)


def _scene(seed=0, n_se=12, n_vs2=8):
    """``(expected electrons [nx, ny], sites, truth per site)``."""
    rng = np.random.default_rng(seed)
    minv = np.linalg.inv(M)
    sites, truth, cols = [], [], []
    span = range(-60, 61)
    for i in span:
        for j in span:
            for cls, pos in (("Mo column", np.zeros(2)), ("S column", S_POS)):
                r = LAT @ np.array([i, j]) + pos
                p = minv @ (r - T)
                if not (12 <= p[0] < SHAPE[0] - 12 and 12 <= p[1] < SHAPE[1] - 12):
                    if -8 <= p[0] < SHAPE[0] + 8 and -8 <= p[1] < SHAPE[1] + 8:
                        cols.append((p, _z17([42]) if cls == "Mo column" else _z17([16, 16])))
                    continue
                sites.append({"k": len(sites), "class": cls, "x_px": float(p[0]), "y_px": float(p[1])})
                truth.append("Mo" if cls == "Mo column" else "host")
    s_idx = [k for k, s in enumerate(sites) if s["class"] == "S column"]
    pick = rng.choice(s_idx, n_se + n_vs2, replace=False)
    for k in pick[:n_se]:
        truth[k] = "Se_S"
    for k in pick[n_se:]:
        truth[k] = "V_S2"
    inten = {"Mo": _z17([42]), "host": _z17([16, 16]), "Se_S": _z17([16, 34]), "V_S2": 0.0}
    for s, tr in zip(sites, truth):
        cols.append((np.array([s["x_px"], s["y_px"]]), inten[tr]))
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    img = np.full(SHAPE, 0.0)
    w = 0.45 / PX  # column sd [px]
    for p, a in cols:
        if a:
            img += a * np.exp(-((ii - p[0]) ** 2 + (jj - p[1]) ** 2) / (2 * w * w))
    img = 3.0 + 40.0 * img / _z17([42])  # a Mo column's peak 43 e-, a floor of 3 e-
    return img, sites, truth


def _result(sites, truth, calls=None):
    calls = calls or truth
    out = []
    for s, c in zip(sites, calls):
        host = c in ("host", "Mo")
        out.append(s | {"status": "ok", "is_host": host, "decided": True,
                        "best_name": "MoS2 monolayer" if host else f"{c} @ S column",
                        "fit": {"p_value": 0.5, "alpha": 0.01, "z": 0.0}})  # fmt: skip
    return {
        "lattice": {"affine_A_per_px": M.tolist(), "offset_A": T.tolist(), "primitive_vectors_A": LAT.T.tolist()},
        "site_classes": [{"label": "Mo column", "position_A": [0.0, 0.0]}, {"label": "S column", "position_A": S_POS.tolist()}],
        "window": {"radius_A": 1.5, "nearest_column_A": A / math.sqrt(3)},
        "detector_calibration": {"read_noise_e": 0.0, "position_noise_px": [0.0, 0.0], "flicker": 0.0, "g_max_per_A": 1.6},
        "sites": out,
    }  # fmt: skip


@pytest.fixture(scope="module")
def scene():
    img, sites, truth = _scene()
    frame = np.random.default_rng(1).poisson(img).astype(float)
    return frame, sites, truth


def test_mixture_recovers_separated_groups_and_merges_overlapping_ones():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.66, 0.04, 150), rng.normal(1.0, 0.04, 1500), rng.normal(1.45, 0.05, 150)])
    mix, rows = fit_mixture(x)
    assert len(mix.means) == 3 and [r["k"] for r in rows] == list(range(1, 7))
    np.testing.assert_allclose(mix.means, [0.66, 1.0, 1.45], atol=0.015)  # 4 sd of a group mean
    np.testing.assert_allclose(mix.weights, [150 / 1800, 1500 / 1800, 150 / 1800], atol=0.01)
    wide = np.concatenate([rng.normal(1.0, 0.18, 1800), rng.normal(0.83, 0.18, 100)])
    merged, _ = fit_mixture(wide)
    assert len(merged.means) == 1  # the overlap leaves nothing for a count to separate
    with pytest.raises(InputError, match="at least 10 column intensities"):
        fit_mixture([1.0, 2.0])


def test_atom_count_types_the_columns_it_can_resolve(scene):
    frame, sites, truth = scene
    res = _result(sites, truth)
    idx, ratio, frac = column_ratios(frame, res, "S column")
    assert 0.0 < frac < 1.0
    tr = np.array([truth[k] for k in idx])
    exp_se = frac + (1 - frac) * _z17([16, 34]) / _z17([16, 16])
    assert np.median(ratio[tr == "Se_S"]) == pytest.approx(exp_se, rel=0.1)
    assert np.median(ratio[tr == "V_S2"]) == pytest.approx(frac, rel=0.15)
    assert np.median(ratio[tr == "host"]) == pytest.approx(1.0, abs=0.02)
    out = compare(frame, res)
    types = [g["type"] for g in out["groups"]]
    assert types == ["V_S2", "host", "Se_S"], out["groups"]
    # every column typed as made, and the table against the calls (here the truth) is diagonal
    assert out["table"] == {"V_S2 (group 0)": {"V_S2": 8}, "host (group 1)": {"host": int((tr == "host").sum())},
                            "Se_S (group 2)": {"Se_S": 12}}  # fmt: skip
    with pytest.raises(InputError, match=r"no site class 'Se column' in the result \(it has Mo column, S column\)"):
        column_ratios(frame, res, "Se column")


def test_lattice_residuals_find_what_the_lattice_does_not_hold(scene):
    frame, sites, truth = scene
    # the calls say host everywhere: the model-free check must still single out the defects
    res = _result(sites, truth, calls=["Mo" if t == "Mo" else "host" for t in truth])
    z = lattice_residual_z(frame, res)
    tr = np.array(truth)
    ok = np.isfinite(z)
    assert ok.mean() > 0.8
    pristine = ok & np.isin(tr, ["Mo", "host"])
    # pristine sites away from the defects: a standard score (the defects perturb ~10% of the tiles' fits)
    far = pristine.copy()
    pos = np.array([[s["x_px"], s["y_px"]] for s in sites])
    for k in np.nonzero(~np.isin(tr, ["Mo", "host"]))[0]:
        far &= np.hypot(*(pos - pos[k]).T) > 25
    assert abs(np.median(z[far])) < 0.5 and np.mean(z[far] > 2.33) < 0.05
    assert np.all(z[tr == "Se_S"] > 5) and np.all(z[tr == "V_S2"] > 5)
    rates = clean_lattice_rates(res, z)
    assert rates["n_clean"] + rates["n_disturbed"] == int(ok.sum())
    assert rates["fit_alarm_rate_clean"] == 0.0  # every fit p-value is 0.5 here
    with pytest.raises(InputError, match="needs a detector calibration"):
        lattice_residual_z(frame, res | {"detector_calibration": None})


def test_command_refuses_what_is_not_a_field_of_view_result(tmp_path, capsys):
    from hypotest.crosscheck import main

    frame = tmp_path / "f.npy"
    np.save(frame, np.ones((64, 64)))
    cases = [
        ("missing.json", None, r"missing\.json: no such file; give the RESULT\.json of `hypotest score`"),
        ("bad.json", "{not json", r"bad\.json: cannot read as JSON \(JSONDecodeError"),
        ("cell.json", '{"best": "h1", "hypotheses": []}', r"cell\.json is not the RESULT\.json of a field of view"),
    ]
    for name, text, match in cases:
        if text is not None:
            (tmp_path / name).write_text(text)
        assert main([str(tmp_path / name), str(frame)]) == 2
        err = capsys.readouterr().err
        assert re.search(match, err), err
        assert not (tmp_path / name.replace(".json", "_crosscheck.json")).exists()
    assert main(["only-one-argument"]) == 2
    assert "usage: python -m hypotest.crosscheck RESULT.json FRAME" in capsys.readouterr().err
