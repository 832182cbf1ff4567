"""The embedded default: a local Ray instance started by the program, on loopback only.

Ray on Linux resolves "127.0.0.1" to a remotely reachable address unless single-node mode is
asked for (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when Ray is imported): this module sets
it before importing Ray and checks the address Ray reports. Workers get explicit thread limits:
BLAS through OMP/OPENBLAS/MKL, XLA through ``XLA_FLAGS`` (XLA ignores OMP_NUM_THREADS), so
several JAX workers sharing a few cores do not oversubscribe them (DESIGN section 6).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LocalRay", "local_ray", "worker_env", "LOOPBACK"]

LOOPBACK = "127.0.0.1"


def worker_env(threads: int = 1) -> dict[str, str]:
    """Environment for Ray workers: ``threads`` BLAS and XLA threads each."""
    t = str(int(threads))
    return {
        "OMP_NUM_THREADS": t,
        "OPENBLAS_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={t}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


@dataclass(frozen=True)
class LocalRay:
    """What :func:`local_ray` started or connected to."""

    address: str  # the GCS address ("127.0.0.1:PORT" for the embedded default)
    node_ip: str
    num_cpus: float
    started: bool  # True if this process started the instance (and will shut it down)
    startup_s: float


@contextlib.contextmanager
def local_ray(
    num_cpus: int | None = None, *, address: str | None = None, threads_per_worker: int = 1
) -> Iterator[LocalRay]:
    """Start a loopback-only local Ray instance (or connect to ``address``) and shut it down after.

    Args:
        num_cpus: CPUs Ray may schedule on (default: all of this machine's).
        address: an existing cluster ("HOST:PORT" or "auto"); None starts the embedded default.
        threads_per_worker: BLAS/XLA threads per worker process.
    """
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; call ray.shutdown() first")
    t0 = time.perf_counter()
    kwargs = dict(
        runtime_env={"env_vars": worker_env(threads_per_worker)},
        log_to_driver=False,
        configure_logging=False,
    )
    with warnings.catch_warnings():
        # Ray starts its GCS and raylet with subprocess (fork + immediate exec in C), which
        # JAX's at-fork hook flags when JAX already runs threads. No Python runs in the child
        # before exec, so the deadlock it warns about cannot occur here.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        if address is None:
            # address="local": always a new instance of our own, never an attach to a cluster that
            # `ray start` left running on this machine (bound to other interfaces).
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
        else:
            ctx = ray.init(address=address, **kwargs)
    try:
        info = LocalRay(
            address=str(ctx.address_info.get("gcs_address", "")),
            node_ip=str(ctx.address_info["node_ip_address"]),
            num_cpus=float(ray.cluster_resources().get("CPU", 0.0)),
            started=address is None,
            startup_s=time.perf_counter() - t0,
        )
        if address is None and info.node_ip != LOOPBACK:
            raise RuntimeError(
                f"the local Ray instance bound to {info.node_ip}, not {LOOPBACK}; Ray was imported "
                "before workflows.local could ask for single-node mode: set "
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment"
            )
        yield info
    finally:
        ray.shutdown()
