"""Fields of view without simulation: the library's host, lattice and defect sites, the window the
optics need, bad pixels, the deviance moments of the fit check, and the refusals."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pytest

from forward import InputError, make_specimen
from hypotest.beamfile import parse_beam
from hypotest.fieldofview import analyse_library, bad_pixel_mask, deviance_moments, window_geometry
from hypotest.hypothesis import load_hypotheses
from hypotest.scoring import ScoringInput, spans_field_of_view


@pytest.fixture(scope="module")
def mos2():
    return ScoringInput.from_hypotheses(load_hypotheses("mos2_defects"))


def test_library_host_lattice_and_sites(mos2):
    geo = analyse_library(mos2)
    assert mos2.names[geo.host] == "MoS2 monolayer"
    # primitive 2H-MoS2 lattice: a = 3.16 Å, 60 degrees
    lengths = np.linalg.norm(geo.lattice, axis=0)
    assert np.allclose(lengths, 3.16, atol=1e-6)
    cosang = geo.lattice[:, 0] @ geo.lattice[:, 1] / lengths.prod()
    assert cosang == pytest.approx(0.5, abs=1e-6)
    labels = [c[0] for c in geo.classes]
    assert labels == ["Mo column", "S column"]
    by_name = {n.split(" @")[0]: geo.site_class[i] for i, n in enumerate(mos2.names)}
    assert by_name["V_Mo"] == by_name["W_Mo"] == by_name["S_Mo"] == 0
    assert by_name["V_S"] == by_name["V_S2"] == by_name["O_S"] == by_name["Mo_S"] == 1
    # each site where the provenance names it
    vs = mos2.names.index(next(n for n in mos2.names if n.startswith("V_S ")))
    assert np.allclose(geo.site[vs], (1.58, 0.912), atol=0.01)
    assert geo.changes[vs] == "S -> vacancy"


def test_host_named_explicitly_and_unknown(mos2):
    geo = analyse_library(mos2, host_id=mos2.ids[0])
    assert geo.host == 0
    with pytest.raises(InputError, match=r"--host 'nope' is not a hypothesis of the library"):
        analyse_library(mos2, host_id="nope")


def test_hypothesis_that_is_not_a_point_defect(mos2):
    spec = mos2.specimens[2]
    moved = make_specimen(np.asarray(spec.positions) + np.array([0.8, 0.3, 0.0]), np.asarray(spec.numbers),
                          np.asarray(spec.cell))  # fmt: skip
    hyps = dataclasses.replace(mos2, specimens=mos2.specimens[:2] + (moved,) + mos2.specimens[3:])
    with pytest.raises(InputError, match=r"differs from the host 'MoS2 monolayer' in \d+ atoms spread over .* not a point defect"):
        analyse_library(hyps)


def test_hypothesis_identical_to_the_host(mos2):
    hyps = dataclasses.replace(mos2, specimens=(mos2.specimens[0],) * 2, ids=mos2.ids[:2], names=mos2.names[:2],
                               priors=mos2.priors[:2])  # fmt: skip
    with pytest.raises(InputError, match="has the same atoms as the host .* names no defect site"):
        analyse_library(hyps)


def _beam(mode="stem_annular", **ab):
    det = {"mode": mode} | ({"inner": 60, "outer": 200} if mode == "stem_annular" else {})
    return parse_beam({"energy": 80000, "dose": 1e5, "sampling": 0.16, "semiangle_cutoff": 25, "aberrations": ab,
                       "detector": det})  # fmt: skip


def test_window_from_the_optics(mos2):
    geo = analyse_library(mos2)
    cell = np.asarray(mos2.specimens[0].cell)
    w = window_geometry(_beam().beam, geo.lattice, cell)
    # 80 kV: lambda = 0.04176 Å; Airy radius 0.61 lambda / 25 mrad = 1.019 Å; window 2 r_p, halo 2 r_p
    assert w["radius_A"] == pytest.approx(2 * 0.61 * 0.041757 / 0.025, rel=1e-3)
    assert w["halo_A"] == pytest.approx(w["radius_A"])
    assert w["nearest_column_A"] == pytest.approx(3.16 / np.sqrt(3), rel=1e-6)
    # HRTEM at 2000 Å defocus: delocalisation lambda df k_max = 0.0418 * 2000 * 0.6 = 50 Å, beyond the supercell
    with pytest.raises(InputError, match=r"more than the supercell's shortest period 9\.48 Å.*supercell at least"):
        window_geometry(_beam("hrtem", defocus=2000.0).beam, geo.lattice, cell)


def test_ctf_delocalisation_sign_and_closed_form():
    """R = max |C10 lambda k + C30 lambda^3 k^3| up to the aperture (Lichte 1991): at Scherzer
    (over)focus for a negative Cs the two terms cancel; at the opposite focus they add. 300 kV:
    lambda = 0.019687 Å, k_max = 25 mrad / lambda = 1.2699 1/Å."""
    from hypotest.fieldofview import ctf_delocalisation

    lam, kmax, cs = 0.0196875, 0.025 / 0.0196875, -1.5e5

    def closed(defocus):
        k = np.linspace(0, kmax, 20001)
        return np.max(np.abs(-defocus * lam * k + cs * lam**3 * k**3))

    for df in (-66.6, 66.6, 0.0, 150.0):
        b = parse_beam({"energy": 300000, "dose": 1e4, "sampling": 0.1, "semiangle_cutoff": 25,
                        "aberrations": {"C30": cs, "defocus": df}, "detector": {"mode": "hrtem"}}).beam  # fmt: skip
        assert ctf_delocalisation(b) == pytest.approx(closed(df), rel=2e-3), df
    scherzer = parse_beam({"energy": 300000, "dose": 1e4, "sampling": 0.1, "semiangle_cutoff": 25,
                           "aberrations": {"C30": cs, "defocus": -66.6}, "detector": {"mode": "hrtem"}}).beam  # fmt: skip
    assert ctf_delocalisation(scherzer) < 0.7  # 0.679 Å: 1.665 Å of defocus against 2.345 Å of Cs at k_max
    # two-fold astigmatism displaces along its axis: 10 Å of C12 adds lambda C12 k_max = 0.25 Å at zero defocus
    astig = parse_beam({"energy": 300000, "dose": 1e4, "sampling": 0.1, "semiangle_cutoff": 25,
                        "aberrations": {"C12": 10.0}, "detector": {"mode": "hrtem"}}).beam  # fmt: skip
    assert ctf_delocalisation(astig) == pytest.approx(lam * 10.0 * kmax, rel=2e-3)


def test_frame_geometry_routes(mos2):
    assert not spans_field_of_view(mos2, (59, 68), (9.48 / 59, 10.9465611 / 68))  # one cell: closed world
    assert spans_field_of_view(mos2, (128, 128), (0.16, 0.16))
    with pytest.raises(InputError, match=r"a frame must span exactly the cell .* or be larger than the cell along both axes"):
        spans_field_of_view(mos2, (40, 128), (0.16, 0.16))


def test_bad_pixels_masked_and_counted():
    rng = np.random.default_rng(0)
    y = rng.poisson(100.0, size=(64, 64)).astype(float)
    y[3, 4] = np.nan
    y[10, 10] = 0.0  # dead
    y[20, 20] = 5000.0  # hot
    y[30, 30:34] = 9e4  # saturated
    y[40, 40] = -3.0
    mask, counts = bad_pixel_mask(y)
    assert counts == {"nonfinite": 1, "negative": 1, "dead": 1, "hot": 1, "saturated": 4, "total": 8}
    assert mask.sum() == 64 * 64 - 8
    assert not mask[3, 4] and not mask[10, 10] and not mask[20, 20] and not mask[30, 31] and not mask[40, 40]


def test_sites_equivalent_under_the_host_symmetry_are_tested():
    """SrTiO3 [001] is four-fold about its Sr column: the library's V_O in the (1.95, 0) O column
    is also looked for in the (0, 1.95) one, with its image rotated; MoS2's three-fold axis maps
    each column onto its own class, so no class is added there."""
    from hypotest.fieldofview import host_symmetries, transformed_series
    from inference.lattice import evaluate_series, host_series

    sto = ScoringInput.from_hypotheses(load_hypotheses("srtio3_vacancy"))
    geo = analyse_library(sto)
    assert [lab for lab, _ in geo.classes] == ["O column", "O-Ti column", "O column (rotated 90°)"]
    assert geo.parent(2) == 0 and geo.members(2) == geo.members(0) and len(geo.members(0)) == 3
    np.testing.assert_allclose(geo.classes[2][1] % 3.905, [0.0, 1.9525], atol=1e-6)
    ops = host_symmetries(sto.specimens[geo.host], geo.lattice)
    assert len(ops) == 8 and np.allclose(ops[0][0], np.eye(2))  # 4mm, the identity first
    mos2 = ScoringInput.from_hypotheses(load_hypotheses("mos2_defects"))
    g2 = analyse_library(mos2)
    assert len(host_symmetries(mos2.specimens[g2.host], g2.lattice)) == 6  # 3m
    assert [lab for lab, _ in g2.classes] == ["Mo column", "S column"]
    # a transformed series evaluated at the transformed points is the original image
    rng = np.random.default_rng(0)
    cell = np.asarray(sto.specimens[0].cell, float)
    gx = np.arange(40) * (7.81 / 40)  # an image with no four-fold symmetry, periodic on the supercell
    grid = np.cos(2 * np.pi * gx[:, None] / 3.905) + 0.2 * np.sin(2 * np.pi * (gx[None, :] + 0.5 * gx[:, None]) / 7.81)
    s0 = host_series(grid, cell[:2], geo.lattice, primitive=False)
    one, zero = np.eye(2), np.zeros(1)
    for g, u in ops:
        st = transformed_series(s0, g, u)
        for p in rng.uniform(0, 7.81, (5, 2)):
            a = evaluate_series(st.g, st.c, one, g @ p + u, zero, zero)[0, 0]
            assert a == pytest.approx(evaluate_series(s0.g, s0.c, one, p, zero, zero)[0, 0], abs=1e-9)


def test_sharp_columns_at_high_dose_are_not_hot_pixels():
    """The abTEM HRTEM field of view (tests/data/fov_srtio3_hrtem.npz) at 1e6 e-/Å² (~1e4 counts per
    pixel): its columns rise above their 3x3 median by > 12 sigma, but they are band-limited
    (2 alpha / lambda = 2.54 1/Å, 0.254 cycles per 0.1 Å pixel); one hot pixel among them is not."""
    d = np.load(Path(__file__).parents[1] / "data" / "fov_srtio3_hrtem.npz")
    lam = 1e6 * abs(np.linalg.det(d["M"])) * d["expected"].astype(np.float64)
    y = np.random.default_rng(3).poisson(lam).astype(np.float64)
    band = (2 * 0.025 / 0.0196875 * 0.1,) * 2
    _, plain = bad_pixel_mask(y)
    assert plain["hot"] > 100  # the median rule alone takes columns for hot pixels
    y[200, 123] += 800.0  # ~8 sigma above a pixel's noise at ~1e4 counts: under the 12-sigma limit, not hot
    y[150, 250] += 3e4  # hot
    mask, counts = bad_pixel_mask(y, band_px=band)
    assert counts["hot"] == 1 and not mask[150, 250] and mask[200, 123]
    # frames sampled coarser than the optics' band: the median rule alone
    assert bad_pixel_mask(y, band_px=(0.6, 0.6))[1]["hot"] == plain["hot"] + 1


@pytest.mark.parametrize("mu", [0.3, 3.0, 40.0])
def test_deviance_moments_match_monte_carlo(mu):
    rng = np.random.default_rng(1)
    y = rng.poisson(mu, size=400_000).astype(float)
    d = 2 * (np.where(y > 0, y * np.log(np.maximum(y, 1) / mu), 0.0) - (y - mu))
    mean, var = deviance_moments(np.array([mu]))
    assert mean[0] == pytest.approx(d.mean(), rel=0.01)
    assert var[0] == pytest.approx(d.var(), rel=0.03)


def test_host_of_the_se_implantation_library_is_the_pristine_lattice():
    # V_S differs from the others by fewest atoms too, but only the host is periodic on the primitive lattice
    hyps = ScoringInput.from_hypotheses(load_hypotheses("mos2_se"))
    geo = analyse_library(hyps)
    assert hyps.names[geo.host] == "MoS2 monolayer"
    by_name = {n.split(" @")[0]: geo.site_class[i] for i, n in enumerate(hyps.names)}
    assert by_name["V_Mo"] == by_name["S_Mo"] == 0
    assert by_name["V_S"] == by_name["V_S2"] == by_name["Se_S"] == by_name["Se2_S2"] == 1
    se2 = hyps.names.index(next(n for n in hyps.names if n.startswith("Se2_S2")))
    assert geo.changes[se2] == "S+S -> Se+Se"


def test_optics_from_the_frame_are_adf_stem_only(mos2):
    from hypotest.fieldofview import score_field_of_view

    bf = _beam("hrtem")
    counts = np.ones((1, 200, 200))
    with pytest.raises(InputError, match=r"optics learned from the frame are the ADF-STEM inner angle and source size; the detector is 'hrtem'"):
        score_field_of_view(mos2, counts, bf, optics="frame")
    with pytest.raises(InputError, match=r"optics must be 'beam' \(BEAM.json's\) or 'frame'"):
        score_field_of_view(mos2, counts, bf, optics="learned")


def test_read_noise_keeps_negative_pixels_of_a_poisson_gaussian_frame():
    rng = np.random.default_rng(0)
    y = rng.poisson(2.0, (64, 64)) + rng.normal(0.0, 1.5, (64, 64))  # electrons, read noise 1.5 e-
    y[10, 10] = -20.0  # beyond 6 read-noise sd: a bad pixel
    assert (y < 0).sum() > 100
    strict, _ = bad_pixel_mask(y)
    mask, counts = bad_pixel_mask(y, read_noise=1.5)
    assert (~strict).sum() > 100  # without the read noise every negative value is masked
    assert not mask[10, 10] and counts["negative"] == 1 and mask.sum() == y.size - 1
