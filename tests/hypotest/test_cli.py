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
def test_demo_runs_real_path_and_writes_record(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    names = [h["name"] for h in record["stages"]["candidates"]["hypotheses"]]
    assert names[0] == "pristine" and len(set(h["id"] for h in record["stages"]["candidates"]["hypotheses"])) == len(names)
    assert record["stages"]["ray"]["ids_match_in_worker"] is True
    assert record["stages"]["ray"]["address"].startswith("127.0.0.1:")
    out = capsys.readouterr().out
    assert "record written" in out
