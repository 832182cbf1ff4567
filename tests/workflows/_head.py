"""A real Ray head for tests: ``ray start --head --block`` on loopback, with token auth.

The head runs in its own process group, started here; teardown ends exactly that group
(SIGTERM, then SIGKILL) rather than ``ray stop``, which kills every Ray process of the user on
the machine, including other people's clusters. Every port is chosen free on 127.0.0.1, and the
session directory is private, so several heads can run side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from workflows.local import LOOPBACK, worker_env

RAY = str(Path(sys.executable).with_name("ray"))


@dataclasses.dataclass(frozen=True)
class Head:
    gcs_address: str  # "127.0.0.1:PORT"
    dashboard: str  # "http://127.0.0.1:PORT" (the job API)
    env: dict  # environment with the cluster token, for CLI clients
    token: str
    log: Path


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the group may outlive its leader for a moment (raylet workers)
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 90.0):
    """Start a loopback Ray head with dashboard (job API) and token auth; always end it."""
    token = secrets.token_hex(32)
    tmp = Path(tempfile.mkdtemp(prefix="rwf", dir="/tmp"))
    gcs, dash, cl, nm, om, agl, agg, rta, met = _free_ports(9)
    env = {
        **os.environ,
        **worker_env(1),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [
        RAY, "start", "--head", "--block", f"--node-ip-address={LOOPBACK}", f"--port={gcs}",
        f"--num-cpus={num_cpus}", "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dash}", f"--ray-client-server-port={cl}", f"--node-manager-port={nm}",
        f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agl}",
        f"--dashboard-agent-grpc-port={agg}", f"--runtime-env-agent-port={rta}",
        f"--metrics-export-port={met}", f"--temp-dir={tmp / 'r'}", "--disable-usage-stats",
        "--object-store-memory=200000000",
    ]  # fmt: skip
    log = tmp / "head.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://{LOOPBACK}:{dash}"
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                req = urllib.request.Request(url + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() - t0 > timeout:
                raise RuntimeError(f"the Ray head did not come up in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Head(gcs_address=f"{LOOPBACK}:{gcs}", dashboard=url, env=env, token=token, log=log)
    finally:
        _kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
