"""The Nion source against the real ``nionswift-instrumentation`` and ``nionswift-usim``, headless
(marked ``nion``; ``make test-marked`` runs them). What is Nion's here: the instrument and its
controls, the scan and camera devices, their hardware sources, calibrations and timing. What is
hypotest's: the twin's scan data (hypotest's forward model of a hidden structure).

The unit table and conversions (no Nion package needed) are tested in ``test_nion_units.py``.
"""

import json
import math
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nion.instrumentation", reason="the nion extra: pip install hypotest[nion]")

from hypotest.hypothesis import load_hypotheses  # noqa: E402
from hypotest.live.events import BadMessage, BeamRefused, RawFrame  # noqa: E402
from hypotest.live.model import ImageModel  # noqa: E402
from hypotest.live.nion import E_CHARGE, NionSource, acquire_camera_frame, square_pixel_gpts  # noqa: E402
from hypotest.live.nion_twin import UsimTwin  # noqa: E402

pytestmark = pytest.mark.nion

CHANNELS = {"HAADF": (60.0, 200.0), "MAADF": (40.0, 200.0)}


@pytest.fixture(scope="module")
def mos2():
    hyps = load_hypotheses("mos2_defects")
    cell = np.asarray(hyps[0].specimen.cell)
    gpts = square_pixel_gpts(cell, 0.1)
    s = float(cell[0] / gpts[0])
    beam = {"energy": 80000.0, "dose": 40.0, "sampling": [s, s], "semiangle_cutoff": 25.0, "source_size": 0.2,
            "detector": {"mode": "stem_annular", "inner": 40.0, "outer": 200.0},
            "simulation": {"sampling": 0.05, "slice_thickness": 1.0}}  # fmt: skip
    return hyps, cell, gpts, beam


def _twin(mos2, index, **kw):
    hyps, cell, gpts, beam = mos2
    model = ImageModel([hyps[index].specimen], sampling=0.05, binning=2, camera_gpts=gpts)
    return model, UsimTwin(model, 0, beam, channels=CHANNELS, **kw)


def _nion_components():
    from nion.instrumentation import HardwareSource
    from nion.utils import Registry

    kinds = ("stem_controller", "scan_module", "camera_module", "hardware_source", "scan_hardware_source",
             "camera_hardware_source")  # fmt: skip
    return {k: len(Registry.get_components_by_type(k)) for k in kinds}, len(HardwareSource.HardwareSourceManager().hardware_sources)


def test_scan_and_camera_frames_have_the_shape_calibration_and_dose(mos2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # usim's default configuration would recreate ./test_data here
    hyps, cell, gpts, beam = mos2
    model, twin = _twin(mos2, 0)
    with twin:
        src = NionSource(twin.scan, twin.instrument, beam, frame_shape=gpts, cell=cell, channels=CHANNELS)
        events = src.poll(1.0)
        assert [type(e).__name__ for e in events] == ["StreamEvent", "RawFrame"]
        f = events[1]
        assert f.counts.shape == tuple(gpts) == (97, 112)  # [x, y]: Nion's [rows = y, columns = x] transposed
        assert f.sampling == pytest.approx((beam["sampling"][0],) * 2, rel=1e-9)  # nm calibrations -> Å
        assert f.meta["channel"] == "MAADF"
        assert np.all(f.counts >= 0) and np.array_equal(f.counts, np.round(f.counts))
        # the scan's pixel time gives the dose asked for: I t / (e A)
        fp = twin.scan.get_current_frame_parameters()
        dose = twin.instrument.GetVal("BeamCurrent") * fp.pixel_time_us * 1e-6 / (E_CHARGE * beam["sampling"][0] ** 2)
        assert dose == pytest.approx(40.0, rel=1e-9)
        assert f.beam == beam  # the readings are what hypotest set: the applied beam, unchanged
        # mean counts = dose x pixel area x the fraction the detector collects (a Poisson frame of it)
        lam = model.images(beam)[0] * 40.0 * beam["sampling"][0] ** 2
        assert abs(f.counts.sum() - lam.sum()) < 5 * math.sqrt(lam.sum())
        counts, mrad, params = acquire_camera_frame(twin.camera)
        assert counts.ndim == 2 and counts.shape == tuple(int(n) // params["binning"] for n in (2048, 2048))
        assert mrad[0] == pytest.approx(mrad[1]) and 0.01 < mrad[0] < 1.0  # rad -> mrad per pixel
        src.close()
    assert not (tmp_path / "test_data").exists()


def test_a_proposal_sets_C10_and_the_next_frame_carries_it_out_of_range_refused(mos2):
    hyps, cell, gpts, beam = mos2
    _, twin = _twin(mos2, 0)
    with twin:
        src = NionSource(twin.scan, twin.instrument, beam, frame_shape=gpts, cell=cell, channels=CHANNELS)
        src.poll(1.0)
        report = src.apply_beam({**beam, "aberrations": {"defocus": 30.0}})
        assert twin.instrument.GetVal("C10") == pytest.approx(-30e-10)  # defocus = -C10; Å -> m
        assert {c["control"]: c["read"] for c in report.controls}["C10"] == pytest.approx(-30e-10)
        f = src.poll(1.0)[0]
        assert isinstance(f, RawFrame) and f.beam["aberrations"] == {"defocus": 30.0}
        assert f.meta["instrument"]["C10"] == pytest.approx(-30e-10)
        with pytest.raises(BeamRefused, match=r"C10 = -1e-05 m is outside the range hypotest may set, \[-2e-06, 2e-06\] m"):
            src.apply_beam({**beam, "aberrations": {"defocus": 1e5}})
        with pytest.raises(BeamRefused, match=r"no scan channel collects 10-30 mrad; the channels are HAADF 60-200"):
            src.apply_beam({**beam, "detector": {"mode": "stem_annular", "inner": 10, "outer": 30}})
        with pytest.raises(BeamRefused, match=r"'hrtem' condition needs another source"):
            src.apply_beam({**beam, "detector": {"mode": "hrtem"}})
        with pytest.raises(BeamRefused, match=r"high tension \(EHT\) is 80000 V"):
            src.apply_beam({**beam, "energy": 60000.0})
        with pytest.raises(BeamRefused, match=r"a dose of 0.001 e-/Å² .* needs 3.06e-06 us per pixel, outside"):
            src.apply_beam({**beam, "dose": 0.001})
        assert twin.instrument.GetVal("C10") == pytest.approx(-30e-10)  # nothing set by a refusal
        # someone moves the focus at the console: the frame is scored under what the instrument had
        twin.instrument.SetVal("C10", -50e-10)
        f = src.poll(1.0)[0]
        assert f.meta["instrument_changed"] == {"C10": {"set": pytest.approx(-30e-10), "read": pytest.approx(-50e-10)}}
        assert f.beam["aberrations"]["defocus"] == pytest.approx(50.0)
        src.close()


def test_a_frame_in_flight_during_a_beam_change_is_discarded(mos2):
    hyps, cell, gpts, beam = mos2
    _, twin = _twin(mos2, 0, beam_current=0.5e-15)  # 1000x lower current: ~1.3 s per frame at 40 e-/Å²
    with twin:
        src = NionSource(twin.scan, twin.instrument, beam, frame_shape=gpts, cell=cell, channels=CHANNELS)
        src.poll(1.0)  # the first frame (and the twin's simulation)
        got = []
        t = threading.Thread(target=lambda: got.extend(src.poll(5.0)))
        t.start()
        time.sleep(0.4)
        src.apply_beam({**beam, "aberrations": {"defocus": 20.0}})
        t.join(30)
        assert len(got) == 1 and isinstance(got[0], BadMessage)
        assert "being acquired while the beam changed" in got[0].reason and "discarded" in got[0].reason
        f = src.poll(5.0)[0]
        assert isinstance(f, RawFrame) and f.beam["aberrations"] == {"defocus": 20.0}
        src.close()


def test_teardown_leaves_no_threads_or_registrations(mos2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {t.ident for t in threading.enumerate()}
    assert _nion_components() == ({k: 0 for k in _nion_components()[0]}, 0)
    hyps, cell, gpts, beam = mos2
    _, twin = _twin(mos2, 0)
    src = NionSource(twin.scan, twin.instrument, beam, frame_shape=gpts, cell=cell, channels=CHANNELS, owner=twin)
    src.poll(1.0)
    assert _nion_components()[1] == 2  # the scan and the Ronchigram camera
    src.close()  # closes its owner, the twin
    src.close()  # idempotent
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and {t.ident for t in threading.enumerate()} - before:
        time.sleep(0.05)
    assert [t.name for t in threading.enumerate() if t.ident not in before] == []
    assert _nion_components() == ({k: 0 for k in _nion_components()[0]}, 0)
    assert list(tmp_path.iterdir()) == []


def test_a_session_on_the_twin_decides_the_hidden_structure(tmp_path, monkeypatch):
    """``hypotest live --source nion:usim --twin W_Mo``: frames through Nion's scan, proposals
    through its instrument, the decision for the structure on the simulated stage."""
    from hypotest.cli import main

    monkeypatch.chdir(tmp_path)
    beam = tmp_path / "beam.json"
    beam.write_text(json.dumps({"energy": 80000, "dose": 40, "sampling": 0.1, "semiangle_cutoff": 25, "source_size": 0.2,
                                "detector": {"mode": "stem_annular", "inner": 40, "outer": 200},
                                "simulation": {"sampling": 0.05, "slice_thickness": 1.0}}))  # fmt: skip
    out = tmp_path / "session"
    rc = main(["live", "--library", "mos2_defects", "--beam", str(beam), "--source", "nion:usim", "--twin", "W_Mo",
               "--no-dashboard", "--stop-on-decision", "--out", str(out), "--max-frames", "200"])  # fmt: skip
    assert rc == 0
    lines = [json.loads(x) for x in (out / "record.jsonl").read_text().splitlines()]
    decision = [x for x in lines if x["kind"] == "decision"]
    assert decision and decision[0]["name"].startswith("W_Mo")
    frames = [x for x in lines if x["kind"] == "frame"]
    assert frames and all(f["instrument"]["EHT"] == 80000.0 for f in frames)
    session = json.loads((out / "session.json").read_text())
    src = session["source"]
    assert src["kind"] == "nion" and src["twin"]["name"].startswith("W_Mo")
    assert src["initial_controls"]["channel"] == "MAADF"
    for b in (x for x in lines if x["kind"] == "beam" and x["applied"]):  # every control set is read back
        assert all(c["set"] == pytest.approx(c["read"]) for c in b["instrument"]["controls"])
    assert _nion_components() == ({k: 0 for k in _nion_components()[0]}, 0)


def test_bad_nion_sources_are_refused_precisely(tmp_path, monkeypatch, capsys):
    from hypotest.cli import main

    monkeypatch.chdir(tmp_path)
    stem = {"energy": 80000, "dose": 40, "sampling": 0.1, "semiangle_cutoff": 25,
            "detector": {"mode": "stem_annular", "inner": 40, "outer": 200}}  # fmt: skip
    (tmp_path / "stem.json").write_text(json.dumps(stem))
    (tmp_path / "hrtem.json").write_text(json.dumps({"energy": 80000, "dose": 40, "sampling": 0.1}))
    base = ["live", "--library", "mos2_defects", "--no-dashboard", "--out", str(tmp_path / "s")]
    cases = [
        (["--beam", "stem.json", "--source", "nion:superscan"], r"no Nion hardware source 'superscan' is registered"),
        (["--beam", "stem.json", "--source", "nion:usim"], r"nion:usim needs --twin ID"),
        (["--beam", "stem.json", "--source", "nion:usim", "--twin", "Zr_Mo"], r"--twin 'Zr_Mo' names no hypothesis"),
        (["--beam", "hrtem.json", "--source", "nion:usim", "--twin", "W_Mo"], r"takes an annular STEM beam"),
        (["--beam", "stem.json", "--source", "nion:"], r"names no scan"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(base + args) == 2
        assert re.search(message, capsys.readouterr().err), args
    assert not Path(tmp_path / "s").exists()
    assert _nion_components() == ({k: 0 for k in _nion_components()[0]}, 0)


def test_a_refused_beam_is_recorded_and_shown_and_never_assumed(tmp_path, monkeypatch):
    """The session's side, started as from Nion Swift's console (``start_session``): an operator's
    beam the instrument cannot do is in the record (the beam line with ``refused``, a warning) and
    on the dashboard (``/api/status`` warnings); frames stay scored under the beam in use; one it
    can do is set, read back and recorded with the instrument's values."""
    import httpx

    from hypotest.commands.live import start_session

    monkeypatch.chdir(tmp_path)
    stem = {"energy": 80000, "dose": 40, "sampling": 0.1, "semiangle_cutoff": 25, "source_size": 0.2,
            "detector": {"mode": "stem_annular", "inner": 40, "outer": 200},
            "simulation": {"sampling": 0.05, "slice_thickness": 1.0}}  # fmt: skip
    (tmp_path / "beam.json").write_text(json.dumps(stem))
    session, server = start_session(tmp_path / "s", library="mos2_defects", beam=tmp_path / "beam.json",
                                    source="nion:usim", twin="W_Mo", auto_apply=False, port=0)  # fmt: skip
    beam = session.status()["beam"]

    def wait_for(cond, what, limit=180.0):
        deadline = time.monotonic() + limit
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    try:
        wait_for(lambda: session.counters["scored"] >= 1, "a first step")
        got = session.apply_beam({**beam, "aberrations": {"defocus": 1e5}})
        assert got["applied"] is False and "C10 = -1e-05 m is outside the range" in got["refused"]
        status = httpx.get(server.url + "api/status", timeout=10).json()
        assert any("the microscope refused the beam" in w and "C10 = -1e-05 m" in w for w in status["warnings"])
        # a candidate beam (simulated at warm-up): the loop never waits on a new simulation at stop
        ok = session.apply_beam({**beam, "aberrations": {"defocus": 40.0}})
        assert ok["applied"] is True and ok["instrument"]["controls"][0] == {"control": "C10", "set": -40e-10,
                                                                             "read": -40e-10, "unit": "m"}  # fmt: skip
        n = session.counters["received"]
        wait_for(lambda: session.counters["received"] >= n + 2, "frames under the new beam")
    finally:
        server.stop()
        session.stop()
    lines = [json.loads(x) for x in (tmp_path / "s" / "record.jsonl").read_text().splitlines()]
    beams = [x for x in lines if x["kind"] == "beam"]
    assert beams[0]["applied"] is False and "outside the range" in beams[0]["refused"] and beams[0]["by"] == "operator"
    assert beams[1]["applied"] is True and beams[1]["instrument"]["instrument"] == "usim_stem_controller"
    assert any(x["kind"] == "warning" and "refused" in x["message"] for x in lines)
    last = [x for x in lines if x["kind"] == "frame"][-1]
    assert last["beam"]["aberrations"] == {"defocus": 40.0} and last["instrument"]["C10"] == pytest.approx(-40e-10)
    assert _nion_components() == ({k: 0 for k in _nion_components()[0]}, 0)
