"""Fields of view without simulation: the library's host, lattice and defect sites, the window the
optics need, bad pixels, the deviance moments of the fit check, and the refusals."""

from __future__ import annotations

import dataclasses

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
