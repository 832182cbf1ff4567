"""A real Ray head for tests: :func:`workflows.start_local_cluster` (``ray start --head --block``
on loopback, token auth, its own process group, free ports and a private session directory),
ended on exit, never by ``ray stop`` (which kills every Ray process of the user on the machine)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

from workflows.cluster import start_local_cluster

RAY = str(Path(sys.executable).with_name("ray"))


@dataclasses.dataclass(frozen=True)
class Head:
    gcs_address: str  # "127.0.0.1:PORT"
    dashboard: str  # "http://127.0.0.1:PORT" (the job API)
    env: dict  # environment with the cluster token, for CLI clients
    token: str
    log: Path


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 90.0):
    """Start a loopback Ray head with dashboard (job API) and token auth; always end it."""
    cluster = start_local_cluster(num_cpus, timeout=timeout)
    try:
        yield Head(cluster.gcs_address, cluster.dashboard, cluster.env, cluster.env["RAY_AUTH_TOKEN"], cluster.log)
    finally:
        cluster.stop()
