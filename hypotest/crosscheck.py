"""Independent checks to set beside a field of view's site calls, made from the frame and the
registered lattice alone (no simulation, not hypotest's scoring):

1. **Lattice residuals** (:func:`lattice_residual_z`): the frame fitted tile by tile by the
   lattice's Fourier series (:func:`inference.detector_calibration.lattice_residuals`), the
   residual standardised by the calibrated noise model and summed over each site's window. A site
   where this model-free description already fails is disturbed (contamination, a defect, a scan
   glitch); the sites where it holds are the *clean lattice*, on which hypotest's fit check should
   raise alarms at its nominal rate if its noise and optics models hold.
2. **Atom counting** (:func:`compare`), below.

Atom counting: integrated column intensities clustered into groups, as statistical atom counting
does for HAADF-STEM.

For each site of one class (say the S2 columns of MoS2) the frame's intensity is summed over a
disk of half the nearest-column distance around the registered position (the column's scattering
cross-section, E et al., Ultramicroscopy 133 (2013) 109; De Backer et al., Ultramicroscopy 134
(2013) 23; the frame in electrons above the vacuum level) and divided by the median of its class
within :data:`NEIGHBOURHOOD_A` (slow variations of scale across the frame). The disk also holds
the neighbours' probe tails; the same disk at the cell's emptiest point measures that background
fraction, which compresses the expected ratios. A one-dimensional Gaussian
mixture is fitted to the ratios by expectation-maximisation for 1 to :data:`K_MAX` components, and
the number chosen by the integrated classification likelihood (ICL, BIC plus the entropy of the
assignment; Biernacki et al., IEEE TPAMI 22 (2000) 719), the criterion of the atom-counting
literature. Each component is named after the nearest expected ratio, with the HAADF intensity
of a column taken as the sum over its atoms of ``Z^1.7`` (Krivanek et al., Nature 464 (2010) 571;
Hartel et al., Ultramicroscopy 63 (1996) 93).

None of this uses the hypotheses' simulations or hypotest's noise model: only the frame, the
registered lattice and the composition of each hypothesis's defect column. ``python -m
hypotest.crosscheck RESULT.json FRAME`` prints both checks (the groups and the cross-tables
against hypotest's calls) and writes ``..._crosscheck.json`` next to RESULT.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from forward import InputError

__all__ = ["lattice_residual_z", "clean_lattice_rates", "column_ratios", "fit_mixture", "Mixture", "compare", "Z_EXPONENT", "K_MAX", "NEIGHBOURHOOD_A"]

#: HAADF intensity of an atom ~ Z^1.7.
Z_EXPONENT = 1.7
#: Most mixture components tried.
K_MAX = 6
#: Radius [Å] over which a column's intensity is normalised by its class's median.
NEIGHBOURHOOD_A = 30.0


def lattice_residual_z(frame_e, result) -> np.ndarray:
    """``[n_sites]`` z of each site's window under the per-tile lattice fits: ``(sum r^2/var - n) /
    sqrt(2 n F)`` over the window's disk, ``var`` the calibrated model's (RESULT.json's
    ``detector_calibration``), ``F`` the correlation factor of these residuals over the disk. NaN
    where the window leaves the fitted tiles."""
    from inference.detector_calibration import MAX_LAG, _autocorrelation, correlation_factor, lattice_residuals, pixel_variance

    cal = result.get("detector_calibration")
    if not cal:
        raise InputError("the lattice-residual check needs a detector calibration (hypotest score --detector frame)")
    lat = result["lattice"]
    m, t = np.asarray(lat["affine_A_per_px"], float), np.asarray(lat["offset_A"], float)
    mu, res, grad2 = lattice_residuals(frame_e, m, t, np.asarray(lat["primitive_vectors_A"], float).T,
                                       g_max=float(cal["g_max_per_A"]))  # fmt: skip
    var = pixel_variance(np.maximum(mu, 0.0), grad2, cal["read_noise_e"], cal["position_noise_px"], cal["flicker"])
    z = res / np.sqrt(np.maximum(var, 1e-9))
    ok = np.isfinite(z) & (np.abs(np.nan_to_num(z)) < 5)
    rho = _autocorrelation(np.where(ok, z, 0.0), ok, MAX_LAG)
    r = float(result["window"]["radius_A"]) / math.sqrt(abs(np.linalg.det(m)))
    f = correlation_factor(rho, r)
    z2 = np.where(np.isfinite(z), z * z, np.nan)
    ri = int(math.ceil(r))
    di, dj = np.meshgrid(np.arange(-ri, ri + 1), np.arange(-ri, ri + 1), indexing="ij")
    out = np.full(len(result["sites"]), np.nan)
    for k, s in enumerate(result["sites"]):
        a, b = int(round(s["x_px"])), int(round(s["y_px"]))
        if a - ri < 0 or b - ri < 0 or a + ri >= z2.shape[0] or b + ri >= z2.shape[1]:
            continue
        v = z2[a - ri : a + ri + 1, b - ri : b + ri + 1][di**2 + dj**2 <= r * r]
        if np.isfinite(v).mean() < 0.9:
            continue
        v = v[np.isfinite(v)]
        out[k] = (float(v.sum()) - len(v)) / math.sqrt(2 * len(v) * f)
    return out


def clean_lattice_rates(result, z_lattice, alpha: float = 0.01) -> dict:
    """The fit check's alarm rate on the clean lattice (sites whose lattice-residual z is below the
    one-sided ``alpha`` quantile) and elsewhere, and where decided defects fall."""
    from scipy.stats import norm

    sites = result["sites"]
    zl = np.asarray(z_lattice, float)
    clean = np.isfinite(zl) & (zl < norm.isf(alpha))
    alarm = np.array([s["fit"]["p_value"] < s["fit"]["alpha"] for s in sites])
    zf = np.array([s["fit"]["z"] for s in sites])
    defect = np.array([s["decided"] and not s["is_host"] for s in sites])
    disturbed = np.isfinite(zl) & ~clean
    fin = np.isfinite(zl)
    return {
        "alpha": alpha, "n_sites": len(sites), "n_clean": int(clean.sum()), "n_disturbed": int(disturbed.sum()),
        "fit_alarm_rate_clean": float(alarm[clean].mean()) if clean.any() else float("nan"),
        "fit_alarm_rate_disturbed": float(alarm[disturbed].mean()) if disturbed.any() else float("nan"),
        "nominal_rate": float(sites[0]["fit"]["alpha"]) if sites else float("nan"),
        "fit_z_clean_percentiles": dict(zip(("p5", "p25", "p50", "p75", "p95", "p99"),
                                            np.percentile(zf[clean], [5, 25, 50, 75, 95, 99]).tolist())) if clean.any() else {},
        "decided_defects_clean": int((defect & clean).sum()), "decided_defects_disturbed": int((defect & disturbed).sum()),
        "correlation_lattice_z_fit_z": (float(np.corrcoef(zl[fin], zf[fin])[0, 1])
                                        if fin.sum() > 2 and np.std(zl[fin]) > 0 and np.std(zf[fin]) > 0 else None),
    }  # fmt: skip


def _emptiest_point(result) -> np.ndarray:
    """[Å] the point of the primitive cell farthest from every column (a hollow site)."""
    lat = np.asarray(result["lattice"]["primitive_vectors_A"], float).T  # columns a1, a2
    cols = np.array([c["position_A"] for c in result["site_classes"]], float)
    f = np.stack(np.meshgrid(np.linspace(0, 1, 61)[:-1], np.linspace(0, 1, 61)[:-1], indexing="ij"), -1).reshape(-1, 2)
    pts = f @ lat.T
    shifts = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], float) @ lat.T
    d = np.linalg.norm(pts[:, None, None, :] - cols[None, :, None, :] - shifts[None, None, :, :], axis=-1)
    return pts[int(np.argmax(d.min(axis=(1, 2))))]


def _disk_sums(img, centres_px, radius_px):
    """Sum of ``img`` over a disk of ``radius_px`` around each centre (NaN where it leaves the frame)."""
    r = int(math.ceil(radius_px))
    di, dj = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    out = np.full(len(centres_px), np.nan)
    for k, (x, y) in enumerate(centres_px):
        a, b = int(round(x)), int(round(y))
        if a - r < 0 or b - r < 0 or a + r >= img.shape[0] or b + r >= img.shape[1]:
            continue
        inside = (di + a - x) ** 2 + (dj + b - y) ** 2 <= radius_px**2
        out[k] = float(img[a - r : a + r + 1, b - r : b + r + 1][inside].sum())
    return out


def column_ratios(frame_e, result, site_class: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``(site indices, ratios, background fraction)``: each site of ``site_class`` (a label of
    ``result['site_classes']``), its disk intensity over its class's local median; the background
    fraction is the median disk at the cell's emptiest point over the median disk at the sites."""
    labels = [c["label"] for c in result["site_classes"]]
    if site_class not in labels:
        raise InputError(f"no site class {site_class!r} in the result (it has {', '.join(labels)})")
    img = np.asarray(frame_e, float)
    sites = [s for s in result["sites"] if s["class"] == site_class and s["status"] != "off_specimen"]
    m = np.asarray(result["lattice"]["affine_A_per_px"], float)
    minv = np.linalg.inv(m)
    pos = np.array([[s["x_px"], s["y_px"]] for s in sites], float)
    radius_px = 0.5 * float(result["window"]["nearest_column_A"]) / math.sqrt(abs(np.linalg.det(m)))
    cls = next(c for c in result["site_classes"] if c["label"] == site_class)
    hollow = _emptiest_point(result) - np.asarray(cls["position_A"], float)
    raw = _disk_sums(img, pos, radius_px)
    bg = _disk_sums(img, pos + (minv @ hollow)[None, :], radius_px)
    ok = np.isfinite(raw)
    xy_a = pos @ m.T
    ratio = np.full(len(sites), np.nan)
    for k in np.nonzero(ok)[0]:
        near = ok & (np.linalg.norm(xy_a - xy_a[k], axis=1) < NEIGHBOURHOOD_A)
        med = float(np.median(raw[near]))
        ratio[k] = raw[k] / med if med > 0 else np.nan
    keep = np.isfinite(ratio)
    frac = float(np.nanmedian(bg) / np.nanmedian(raw))
    return np.array([s["k"] for s in sites])[keep], ratio[keep], frac


class Mixture:
    """A fitted 1-D Gaussian mixture: ``weights``, ``means``, ``sds`` (sorted by mean), ``icl``."""

    def __init__(self, weights, means, sds, loglik, icl):
        order = np.argsort(means)
        self.weights, self.means, self.sds = np.asarray(weights)[order], np.asarray(means)[order], np.asarray(sds)[order]
        self.loglik, self.icl = float(loglik), float(icl)

    def responsibilities(self, x):
        x = np.asarray(x, float)[:, None]
        lp = np.log(self.weights) - 0.5 * ((x - self.means) / self.sds) ** 2 - np.log(self.sds * math.sqrt(2 * math.pi))
        lp -= lp.max(axis=1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(axis=1, keepdims=True)

    def assign(self, x) -> np.ndarray:
        return np.argmax(self.responsibilities(x), axis=1)


def _em(x, k, seed, n_iter=300):
    """EM for a ``k``-component mixture, each component its own sd (floored); start ``seed`` 0 at
    the quantiles, others at random data points."""
    rng = np.random.default_rng(seed)
    n = len(x)
    mu = np.sort(rng.choice(x, k, replace=False)) if seed else np.quantile(x, (np.arange(k) + 0.5) / k)
    sd = np.full(k, np.std(x) / k + 1e-9)
    w = np.full(k, 1.0 / k)
    floor = 1e-3 * np.std(x) + 1e-12
    ll_old = -np.inf
    for _ in range(n_iter):
        lp = np.log(w) - 0.5 * ((x[:, None] - mu) / sd) ** 2 - np.log(sd * math.sqrt(2 * math.pi))
        mx = lp.max(axis=1, keepdims=True)
        ll = float(np.sum(mx[:, 0] + np.log(np.exp(lp - mx).sum(axis=1))))
        r = np.exp(lp - mx)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0) + 1e-12
        w = nk / n
        mu = (r * x[:, None]).sum(axis=0) / nk
        sd = np.maximum(np.sqrt((r * (x[:, None] - mu) ** 2).sum(axis=0) / nk), floor)
        if ll - ll_old < 1e-8 * abs(ll):
            break
        ll_old = ll
    return w, mu, sd, ll, r


def fit_mixture(x, k_max: int = K_MAX, n_starts: int = 5) -> tuple[Mixture, list[dict]]:
    """The ICL-chosen mixture of ``x`` and a row per ``k`` tried (``k``, log likelihood, BIC, ICL)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if len(x) < 10:
        raise InputError(f"atom counting needs at least 10 column intensities, got {len(x)}")
    rows, best = [], None
    for k in range(1, k_max + 1):
        fits = [_em(x, k, s) for s in range(n_starts)]
        w, mu, sd, ll, r = max(fits, key=lambda f: f[3])
        bic = -2 * ll + (3 * k - 1) * math.log(len(x))
        ent = -2 * float(np.sum(r * np.log(np.maximum(r, 1e-300))))
        icl = bic + ent
        rows.append({"k": k, "loglik": ll, "bic": bic, "icl": icl})
        if best is None or icl < best.icl:
            best = Mixture(w, mu, sd, ll, icl)
    return best, rows


def expected_ratios(columns: dict[str, list[str]], host_column: list[str]) -> dict:
    """``{type: ratio}``: each type's column intensity over the host column's, ``sum Z^1.7``.
    ``columns``: type -> the atoms of its column (e.g. ``{"Se_S": ["S", "Se"]}``)."""
    from ase.data import atomic_numbers

    def inten(atoms):
        return sum(atomic_numbers[a] ** Z_EXPONENT for a in atoms)

    h = inten(host_column)
    return {t: inten(a) / h for t, a in columns.items()}


#: The S2 column's types of the mos2_se library and their atoms (the worked example).
MOS2_S_COLUMNS = {"V_S2": [], "V_S": ["S"], "host": ["S", "S"], "Se_S": ["S", "Se"], "Se2_S2": ["Se", "Se"]}


def compare(frame_e, result, site_class: str = "S column", columns=None, host_column=("S", "S")) -> dict:
    """The atom count of ``site_class`` (module docstring) against the result's calls: ``groups``
    (the ICL mixture), ``table`` ({group: {call: n}}), ``nearest_table`` (each column typed by its
    nearest expected ratio: {type: {call: n}}), ``ratio_by_call`` and per-site rows."""
    columns = MOS2_S_COLUMNS if columns is None else columns
    idx, ratio, frac = column_ratios(frame_e, result, site_class)
    mix, rows = fit_mixture(ratio)
    # the disk holds the neighbours' tails and any contamination as well: a column's expected ratio
    # is the background fraction plus the rest scaled by its sum Z^1.7 over the host column's
    exp = {t: frac + (1 - frac) * v for t, v in expected_ratios(columns, list(host_column)).items()}
    names = [min(exp, key=lambda t: abs(exp[t] - mu)) for mu in mix.means]
    group = mix.assign(ratio)
    by_k = {s["k"]: s for s in result["sites"]}

    def call(s):
        if s["status"] != "ok":
            return s["status"]
        base = "host" if s["is_host"] else s["best_name"].split(" @")[0]
        return base if s["decided"] else f"{base}?"

    table: dict[str, dict[str, int]] = {}
    nearest_table: dict[str, dict[str, int]] = {}
    per_site, ratios_by_call = [], {}
    types = list(exp)
    for k, g, r in zip(idx, group, ratio):
        lab = f"{names[g]} (group {g})"
        c = call(by_k[int(k)])
        near = min(types, key=lambda t: abs(exp[t] - r))
        table.setdefault(lab, {})
        table[lab][c] = table[lab].get(c, 0) + 1
        nearest_table.setdefault(near, {})
        nearest_table[near][c] = nearest_table[near].get(c, 0) + 1
        ratios_by_call.setdefault(c, []).append(float(r))
        per_site.append({"k": int(k), "ratio": float(r), "group": int(g), "group_type": names[g], "nearest_type": near,
                         "call": c})  # fmt: skip
    return {
        "site_class": site_class, "n_columns": int(len(ratio)),
        "method": "disk of half the nearest-column distance over the local median; 1-D Gaussian mixture, k by ICL; "
                  f"types by nearest expected ratio (background fraction + rest x sum Z^{Z_EXPONENT} over the host's)",
        "background_fraction": frac, "expected_ratios": exp, "k_tried": rows,
        "groups": [{"group": i, "type": names[i], "mean": float(mix.means[i]), "sd": float(mix.sds[i]),
                    "weight": float(mix.weights[i]), "n": int(np.sum(group == i))} for i in range(len(mix.means))],
        "table": table, "nearest_table": nearest_table,
        "ratio_by_call": {c: {"n": len(v), "median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
                              "p90": float(np.percentile(v, 90))} for c, v in sorted(ratios_by_call.items())},
        "sites": per_site,
    }  # fmt: skip


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m hypotest.crosscheck RESULT.json FRAME", file=sys.stderr)
        return 2
    try:
        return _main(Path(argv[0]), argv[1])
    except InputError as exc:
        print(f"hypotest.crosscheck: error: {exc}", file=sys.stderr)
        return 2


def _read_result(path: Path) -> dict:
    """A field of view's RESULT.json, or an error saying what it is not."""
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; give the RESULT.json of `hypotest score`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read as JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, dict) or not result.get("field_of_view"):
        raise InputError(f"{path} is not the RESULT.json of a field of view (no 'field_of_view': true); the checks need "
                         "a frame larger than the hypotheses' cell, scored by `hypotest score`")  # fmt: skip
    return result


def _main(res_path: Path, frame_path: str) -> int:
    from hypotest.frames import read_image_frames
    from hypotest.outputs import write_file_atomic

    result = _read_result(res_path)
    frame = read_image_frames(frame_path, allow_nonfinite=True).frames[0].astype(np.float64)
    cal = result.get("detector_calibration")
    if cal:
        frame = (frame - cal["dark_units"]) / cal["gain_units_per_e"]
    zl = lattice_residual_z(frame, result) if cal else None
    rates = clean_lattice_rates(result, zl) if cal else None
    if rates:
        print(f"clean lattice (model-free lattice residuals within noise): {rates['n_clean']} of {rates['n_sites']} sites; "
              f"fit-check alarms there {rates['fit_alarm_rate_clean']:.2%} (nominal {rates['nominal_rate']:.0%}), on the "
              f"{rates['n_disturbed']} disturbed sites {rates['fit_alarm_rate_disturbed']:.2%}; fit z on the clean lattice "
              + ", ".join(f"{k} {v:.2f}" for k, v in rates["fit_z_clean_percentiles"].items()))
        print(f"decided defects on the clean lattice {rates['decided_defects_clean']}, on disturbed sites "
              f"{rates['decided_defects_disturbed']}")
    out = compare(frame, result)
    out["clean_lattice"] = rates
    if zl is not None:
        for row in out["sites"]:
            row["lattice_residual_z"] = float(zl[row["k"]]) if np.isfinite(zl[row["k"]]) else None
    print(f"atom count of {out['n_columns']} {out['site_class']}s: {len(out['groups'])} groups (ICL)")
    for g in out["groups"]:
        print(f"  group {g['group']}: ratio {g['mean']:.3f} ± {g['sd']:.3f}, {g['n']:5d} columns -> {g['type']} "
              f"(expected {out['expected_ratios'][g['type']]:.2f})")  # fmt: skip
    calls = sorted({c for row in out["table"].values() for c in row})
    print("group \\ hypotest call: " + ", ".join(calls))
    for lab, row in out["table"].items():
        print(f"  {lab}: " + ", ".join(f"{c} {row.get(c, 0)}" for c in calls))
    print("each column by its nearest expected ratio \\ hypotest call:")
    for lab in out["expected_ratios"]:
        row = out["nearest_table"].get(lab, {})
        print(f"  {lab} ({out['expected_ratios'][lab]:.2f}): {sum(row.values()):5d} columns; " + ", ".join(f"{c} {row.get(c, 0)}" for c in calls))
    print("ratio of the columns hypotest calls (median [10%, 90%]):")
    for c, v in out["ratio_by_call"].items():
        print(f"  {c:12s} {v['n']:5d}  {v['median']:.3f} [{v['p10']:.3f}, {v['p90']:.3f}]")
    dest = res_path.with_name(res_path.stem + "_crosscheck.json")
    write_file_atomic(dest, json.dumps(out, indent=1))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
