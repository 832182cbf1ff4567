"""The ``hypotest`` command line: info and demo, in-process and as the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hypotest.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "hypotest 0.1.0" in capsys.readouterr().out
    assert main([]) == 2  # no command: help and a usage error code
    assert "COMMAND" in capsys.readouterr().out


def test_info_without_ray_reports_versions_backend_threads(capsys):
    assert main(["info", "--no-ray", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["jax"] == "0.10.2"
    assert info["packages"]["hypotest"] == "0.1.0"
    assert info["jax"]["backend"] in {"cpu", "gpu", "tpu"} and info["jax"]["devices"]
    assert info["threads"]["OMP_NUM_THREADS"] == "1"  # set by conftest / the Makefile
    assert info["ray"] == {"checked": False}


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "hypotest"
    assert exe.exists(), f"no console script at {exe}: is the package installed (make setup)?"
    out = subprocess.run([str(exe), "info", "--no-ray"], capture_output=True, text=True, check=True)
    assert "jax: backend" in out.stdout and "ray: not checked" in out.stdout


@pytest.mark.ray
def test_info_starts_ray_on_loopback(capsys):
    assert main(["info", "--json"]) == 0
    ray_info = json.loads(capsys.readouterr().out)["ray"]
    assert ray_info["can_start"] and ray_info["task_ran"]
    assert ray_info["address"].startswith("127.0.0.1:")


@pytest.mark.ray
def test_demo_identifies_the_hidden_structure_and_records_every_frame(tmp_path, capsys):
    from hypotest.live.record import load_record

    assert main(["demo", "--out", str(tmp_path), "--seed", "0", "--port", "0"]) == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    summary = record["summary"]
    assert summary["correct"] is True and summary["posterior_of_decision"] >= 0.99
    assert record["stages"]["presimulation"]["ray_address"].startswith("127.0.0.1:")
    assert record["stages"]["presimulation"]["workers"] == 2
    rec = load_record(tmp_path)
    assert summary["dose_used_e_per_A2"] == pytest.approx(sum(s["dose_e_per_A2"] for s in rec.steps))
    # every frame received has exactly one fate; the decision was on the hidden structure
    assert [f["index"] for f in rec.frames] == list(range(summary["frames_received"]))
    assert all(f["fate"] in ("scored", "coalesced", "unscored") for f in rec.frames)
    assert sum(len(s["frames"]) for s in rec.steps) == summary["frames"]["scored"] + summary["frames"]["coalesced"]
    for s in rec.steps:
        assert abs(sum(p for p in s["posterior"] if p is not None) - 1.0) < 1e-6
    assert rec.decision["id"] == rec.truth["frames"][-1]["id"]
    # every rejection carries its reason (Bayes factor, frames, dose)
    assert all("Bayes factor" in r and "e-/Å²" in r for r in summary["rejected"].values())
    out = capsys.readouterr().out
    assert "identified:" in out and "correct" in out and "dashboard: http://127.0.0.1:" in out
