"""A Ray head node on loopback, in a process of its own, with the dashboard's job API and token
authentication: what ``ray job submit`` talks to (``notebooks/04_cluster.ipynb``, the job tests).

:mod:`workflows.local` starts the embedded default inside this process (``ray.init``, no job
API); this module starts ``ray start --head --block`` as a separate process group with a private
temporary directory and free loopback ports, so it never touches another Ray on the machine
(``ray stop`` would end every Ray of the user), and ends exactly that group again.
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
import weakref
from pathlib import Path

from forward import InputError
from workflows.local import LOOPBACK, worker_env

__all__ = ["LocalCluster", "start_local_cluster"]


@dataclasses.dataclass(frozen=True)
class LocalCluster:
    """A loopback Ray head started by :func:`start_local_cluster`.

    Attributes: ``gcs_address`` ("127.0.0.1:PORT"), ``dashboard`` ("http://127.0.0.1:PORT", the
    job API), ``headers`` (the HTTP header with the cluster's token, Ray 2.60 token auth), ``env``
    (environment with the token, for command-line clients such as ``ray job submit --address``),
    ``log`` (the head's log file). :meth:`stop` ends it; :meth:`job_client` talks to it.
    """

    gcs_address: str
    dashboard: str
    headers: dict = dataclasses.field(repr=False)  # holds the token: never printed
    env: dict = dataclasses.field(repr=False)
    log: Path
    _proc: subprocess.Popen = dataclasses.field(repr=False)
    _finalizer: weakref.finalize = dataclasses.field(repr=False)

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def job_client(self):
        """A :class:`ray.job_submission.JobSubmissionClient` for this cluster, with its token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=dict(self.headers))

    def stop(self) -> None:
        """End the head's process group and remove its session files; idempotent."""
        self._finalizer()


def _end_group(proc, tmp: Path) -> None:
    """SIGTERM to ``ray start --block``, which then stops its raylet, GCS and dashboard (5-7 s here;
    SIGTERM to the whole group at once left it hanging > 40 s); SIGKILL to what is left after 40 s."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40.0
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.25)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def _job_api_up(url: str, token: str) -> bool:
    try:
        req = urllib.request.Request(url + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_local_cluster(num_cpus: int = 2, *, timeout: float = 120.0) -> LocalCluster:
    """Start a Ray head on 127.0.0.1 (``ray start --head --block``) with the dashboard's job API
    and token authentication, and wait until the job API answers.

    The head runs in its own process group with a private temp directory and free loopback ports,
    so it never touches other Ray instances on the machine (``ray stop`` would end every Ray of the
    user); :meth:`LocalCluster.stop` ends exactly that group, and so does interpreter exit if it
    was not called. Workers get one BLAS/XLA thread each (:func:`workflows.local.worker_env`).
    """
    if int(num_cpus) < 1:
        raise InputError(f"num_cpus must be >= 1 (CPUs the head may schedule on), got {num_cpus!r}")
    ray_cli = Path(sys.executable).with_name("ray")
    token = secrets.token_hex(32)
    tmp = Path(tempfile.mkdtemp(prefix="hyp-ray-"))
    socks = [socket.socket() for _ in range(9)]  # nine free loopback ports, released just before use
    for sk in socks:
        sk.bind((LOOPBACK, 0))
    gcs, dash, cl, nm, om, agl, agg, rta, met = (sk.getsockname()[1] for sk in socks)
    for sk in socks:
        sk.close()
    env = {
        **os.environ, **worker_env(1), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
    }  # fmt: skip
    cmd = [
        str(ray_cli), "start", "--head", "--block", f"--node-ip-address={LOOPBACK}", f"--port={gcs}",
        f"--num-cpus={int(num_cpus)}", "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dash}", f"--ray-client-server-port={cl}", f"--node-manager-port={nm}",
        f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agl}", f"--dashboard-agent-grpc-port={agg}",
        f"--runtime-env-agent-port={rta}", f"--metrics-export-port={met}", f"--temp-dir={tmp / 'r'}",
        "--disable-usage-stats", "--object-store-memory=200000000",
    ]  # fmt: skip
    with open(tmp / "head.log", "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    finalizer = weakref.finalize(proc, _end_group, proc, tmp)  # also runs at interpreter exit
    url = f"http://{LOOPBACK}:{dash}"
    t0 = time.monotonic()
    while not _job_api_up(url, token):
        failed = proc.poll() is not None
        if failed or time.monotonic() - t0 > timeout:
            log = (tmp / "head.log").read_text()[-3000:]
            finalizer()
            why = f"exited with code {proc.returncode}" if failed else f"did not answer on {url} within {timeout} s"
            raise RuntimeError(f"the Ray head (`ray start --head`) {why}:\n{log}")
        time.sleep(0.5)
    return LocalCluster(f"{LOOPBACK}:{gcs}", url, {"Authorization": f"Bearer {token}"}, env, tmp / "head.log", proc, finalizer)
