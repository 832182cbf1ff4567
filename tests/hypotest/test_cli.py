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
    assert main(["demo", "--out", str(tmp_path), "--seed", "0"]) == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    summary = record["summary"]
    assert summary["correct"] is True and summary["posterior_of_decision"] >= 0.99
    assert summary["dose_used_e_per_A2"] == summary["frames"] * 40.0
    assert record["stages"]["presimulation"]["ray_address"].startswith("127.0.0.1:")
    assert record["stages"]["presimulation"]["workers"] == 2
    lines = [json.loads(x) for x in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [x["frame_id"] for x in lines] == list(range(summary["frames"]))
    for x in lines:
        assert abs(sum(x["posterior"]) - 1.0) < 1e-4
    assert max(lines[-1]["posterior"]) >= 0.99
    # every rejection carries its reason (Bayes factor, frames, dose)
    assert all("Bayes factor" in r and "e-/Å²" in r for r in summary["rejected"].values())
    out = capsys.readouterr().out
    assert "identified:" in out and "correct" in out
