"""An HRTEM field of view made by abTEM (tests/data/fov_srtio3_hrtem.npz,
tests/data/make_fov_srtio3_hrtem.py): a 384 x 384 frame of SrTiO3 [001], three unit cells thick,
rotated 23.1°, pixels 1.5 % and 1.2 % larger than the nominal 0.1 Å, with the six O vacancies of
the built-in ``srtio3_vacancy`` library (two columns x three depths) at random sites and one Zr on
a Ti site that the library does not hold; scored end to end by ``hypotest score`` and compared with
a per-site ideal observer that is given abTEM's images of every hypothesis, the true map and the
true dose.

The library names one of the two pure O columns; the other is its image under the host's four-fold
axis and is tested too (``O column (rotated 90°)``): three of the vacancies lie there in the
frame's registered map."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hypotest.cli import main

from ._fov_reference import assert_registered, decide, fourier_interp, isolated_sites, window

DATA = Path(__file__).parents[1] / "data" / "fov_srtio3_hrtem.npz"
DOSES = (1e4, 1e6)  # e-/Å² per frame: ~100 and ~1e4 counts per 0.1 Å pixel
A = 3.905


def _beam(d, dose):
    return {"energy": 300000, "dose": dose, "sampling": 0.1, "semiangle_cutoff": 25, "focal_spread": 20,
            "angular_spread": 0.1, "aberrations": {"C30": float(d["c30"]), "defocus": float(d["defocus"])},
            "detector": {"mode": "hrtem"},
            "simulation": {"sampling": 0.05, "slice_thickness": 1.0, "parametrization": "lobato"}}  # fmt: skip


def _rot(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s], [s, c]])


def _ideal_observer(d, y, exposure, site_px, members, radius, defect_prior):
    """Posterior argmax per site of an observer that knows the true map, the dose and abTEM's image
    of every hypothesis, each carried onto the site by the host symmetry (a four-fold rotation about
    the Sr column) and lattice translation that put its defect there (no nuisance parameters)."""
    m, t, cell = d["M"], d["t"], d["cell"][:2]
    names = list(d["hyp_names"])
    lat = np.eye(2) * A
    out = []
    for p, mem in zip(site_px, members):
        r = m @ p + t
        pts, counts = window(y, m, t, r, np.round(p), radius, 0.1)
        mus = []
        for name in mem:
            h = names.index(name)
            q = pts
            if name != "host":
                for g in (_rot(0), _rot(90), _rot(180), _rot(270)):
                    s = g @ d["hyp_site"][h]
                    f = np.linalg.solve(lat, r - s)
                    if np.linalg.norm(f - np.round(f)) < 0.05:
                        q = (pts - lat @ np.round(f)) @ g  # g^-1 (x - L), g orthogonal
                        break
                else:
                    raise AssertionError(f"{name} has no site at {r}")
            mus.append(exposure * np.maximum(fourier_interp(d["hyp_images"][h].astype(np.float64), cell, q), 1e-12))
        out.append(decide(counts, mus, mem, defect_prior))
    return out


def _short(name):
    """The data file's short name of a library hypothesis name."""
    if " @ " not in name:
        return "host"
    col = name.split("@ ")[1].split(" (")[0]
    return f"V_O ({col}, {float(name.split('depth ')[1].split(' Å')[0]):.2f} Å)"


@pytest.mark.parametrize("dose", DOSES)
def test_abtem_hrtem_field_of_view_end_to_end(tmp_path, capsys, dose):
    d = np.load(DATA)
    m = d["M"]
    exposure = dose * abs(np.linalg.det(m))
    y = np.random.default_rng(int(dose)).poisson(exposure * d["expected"].astype(np.float64)).astype(np.float64)
    np.save(tmp_path / "frame.npy", y)
    (tmp_path / "beam.json").write_text(json.dumps(_beam(d, dose)))
    out = tmp_path / "result.json"
    assert main(["score", "--library", "srtio3_vacancy", "--frames", str(tmp_path / "frame.npy"), "--beam",
                 str(tmp_path / "beam.json"), "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert (tmp_path / "result_sites.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CTF delocalisation 0.68 Å" in printed  # Scherzer overfocus against a negative Cs: small
    assert res["masked_pixels"] == [{"nonfinite": 0, "negative": 0, "dead": 0, "hot": 0, "saturated": 0, "total": 0}]
    cal = res["lattice"]["calibration"]
    assert_registered(res, m)  # pixel size within 0.2 %, rotation within 0.1°
    labels = [c["label"] for c in res["site_classes"]]
    assert labels == ["O column", "O-Ti column", "O column (rotated 90°)"]
    sites = res["sites"]
    px = np.array([[s["x_px"], s["y_px"]] for s in sites])
    truth = ["host"] * len(sites)
    for name, p in zip(d["defect_names"], d["defect_px"]):
        k = int(np.argmin(np.linalg.norm(px - p, axis=1)))
        assert np.linalg.norm(px[k] - p) < 0.5, (name, p, px[k])  # every defect is on an enumerated site
        truth[k] = str(name)
    # isolated sites: no other defect within the window plus its halo
    reach = res["window"]["radius_A"] + res["window"]["halo_A"]
    step = min(cal["pixel_x_A"], cal["pixel_y_A"])
    dpx = np.asarray(d["defect_px"])
    isolated = isolated_sites(px, dpx, reach, step, own=0.5)
    in_lib = [k for k in isolated if truth[k] != "Zr_Ti"]
    assert len(in_lib) > 100
    from hypotest.hypothesis import load_hypotheses

    lib = {h.id: _short(h.name) for h in load_hypotheses("srtio3_vacancy")}
    # no pristine site decided as a defect, anywhere in the frame
    assert not [(k, sites[k]["best_name"]) for k in range(len(sites))
                if truth[k] == "host" and sites[k]["decided"] and not sites[k]["is_host"]]  # fmt: skip
    # the out-of-library Zr_Ti is never decided as a library defect
    zr = truth.index("Zr_Ti")
    assert not (sites[zr]["decided"] and not sites[zr]["is_host"]), sites[zr]
    members = [["host"] + [lib[h] for h in next(c for c in res["site_classes"] if c["label"] == s["class"])["hypotheses"]]
               for s in sites]  # fmt: skip
    ideal = _ideal_observer(d, y, exposure, px[in_lib], [members[k] for k in in_lib], res["window"]["radius_A"],
                            res["rule"]["defect_prior"])  # fmt: skip
    ours = [lib[sites[k]["best"]] for k in in_lib]
    acc_ours = np.mean([o == truth[k] for o, k in zip(ours, in_lib)])
    acc_ideal = np.mean([o == truth[k] for o, k in zip(ideal, in_lib)])
    vac = [k for k in in_lib if truth[k] != "host"]
    print(f"dose {dose:g}: accuracy {acc_ours:.3f}, ideal observer {acc_ideal:.3f} on {len(in_lib)} isolated sites of "
          f"{len(sites)}; on the {len(vac)} vacancies: ours {[lib[sites[k]['best']] == truth[k] for k in vac]}, "
          f"ideal {[ideal[in_lib.index(k)] == truth[k] for k in vac]}; P(host) at them "
          f"{[round(sites[k]['posterior'][next(h for h, v in lib.items() if v == 'host')], 4) for k in vac]}; "
          f"Zr_Ti {sites[zr]['status']} z {sites[zr]['fit']['z']:.1f}")  # fmt: skip
    assert acc_ours >= 0.95 * acc_ideal
    host_id = next(h for h, v in lib.items() if v == "host")
    for k in vac:  # every vacancy found: the host ruled out (at 1e4 with P(host) up to 0.0095)
        assert sites[k]["posterior"][host_id] < (1e-6 if dose == max(DOSES) else 0.02), (truth[k], sites[k])
    # a decided vacancy is the right one (column and depth)
    assert all(lib[sites[k]["best"]] == truth[k] for k in vac if sites[k]["decided"]), [(truth[k], sites[k]) for k in vac]
    if dose == max(DOSES):
        for k in vac:  # ... and typed (column and depth) by its most probable hypothesis, most of them decided
            assert lib[sites[k]["best"]] == truth[k], (truth[k], sites[k]["posterior"])
            assert sites[k]["status"] == "ok", sites[k]  # the models hold to ~1e4 counts per pixel
        assert sum(sites[k]["decided"] for k in vac) >= 4
        assert sites[zr]["status"] == "unexplained", sites[zr]  # the fit check sees what the library lacks
        clean = [sites[k]["fit"]["z"] for k in in_lib if truth[k] == "host"]
        assert abs(float(np.median(clean))) < 0.5  # the fit check is centred on the clean lattice
        # the neighbours of the vacancies (their windows hold a vacancy's contrast) are scored jointly
        # with it: explained, and decided as the host they are; near the Zr_Ti they stay unexplained
        zr_px = dpx[list(d["defect_names"]).index("Zr_Ti")]
        near = [k for k in range(len(sites)) if truth[k] == "host" and k not in isolated
                and np.linalg.norm(px[k] - zr_px) * step > reach]  # fmt: skip
        assert len(near) >= 25
        assert all(sites[k]["scored_with"] for k in near)
        assert all({"k", "id"} <= set(w) for k in near for w in sites[k]["scored_with"])
        unexplained = [k for k in near if sites[k]["status"] == "unexplained"]
        assert len(unexplained) <= 0.15 * len(near), [sites[k]["fit"]["z"] for k in unexplained]
        assert sum(sites[k]["decided"] and sites[k]["is_host"] for k in near) >= 0.8 * len(near)
        print(f"vacancies' neighbours: {len(near)}, jointly scored; {len(unexplained)} unexplained, "
              f"{sum(sites[k]['decided'] for k in near)} decided host")


def test_hrtem_vacuum_is_off_specimen_never_a_vacancy():
    """A hole in the HRTEM crystal (vacuum: the beam's intensity, flat) far from every defect: the
    sites whose windows lie in it are ``off_specimen`` (their contrast is nothing like the lattice's,
    though their counts match its mean), and no site that sees it is decided as a defect."""
    from hypotest.beamfile import parse_beam
    from hypotest.fieldofview import score_field_of_view
    from hypotest.hypothesis import load_hypotheses
    from hypotest.scoring import ScoringInput

    d = np.load(DATA)
    dose = 1e4
    exposure = dose * abs(np.linalg.det(d["M"]))
    lam = d["expected"].astype(np.float64)
    ii, jj = np.meshgrid(np.arange(384), np.arange(384), indexing="ij")
    hole_px, hole_r = np.array([330.0, 330.0]), 5.0  # Å; >= 7 Å from every defect of the file
    assert min(np.linalg.norm(d["defect_px"] - hole_px, axis=1)) * 0.1012 > hole_r + 2
    lam[np.hypot(ii - hole_px[0], jj - hole_px[1]) * 0.1012 < hole_r] = 1.0
    y = np.random.default_rng(5).poisson(exposure * lam).astype(np.float64)
    hyps = ScoringInput.from_hypotheses(load_hypotheses("srtio3_vacancy"))
    res = score_field_of_view(hyps, y[None], parse_beam(_beam(d, dose)))
    px = np.array([[s["x_px"], s["y_px"]] for s in res["sites"]])
    to_hole = np.linalg.norm(px - hole_px, axis=1) * 0.1012
    inner = np.flatnonzero(to_hole < hole_r - res["window"]["radius_A"])
    assert len(inner) >= 2
    assert all(res["sites"][k]["status"] == "off_specimen" for k in inner), [res["sites"][k]["fit"] for k in inner]
    reach = res["window"]["radius_A"] + res["window"]["halo_A"]
    assert not [k for k in np.flatnonzero(to_hole < hole_r + reach) if res["sites"][k]["decided"]
                and not res["sites"][k]["is_host"]]  # fmt: skip
    # the lattice's sites keep a contrast ratio near 1
    far = [s["fit"]["contrast_ratio_to_host"] for s, r in zip(res["sites"], to_hole) if r > hole_r + reach]
    assert 0.8 < float(np.median(far)) < 1.2
    assert sum(s["status"] == "off_specimen" for s, r in zip(res["sites"], to_hole) if r > hole_r + reach) == 0
