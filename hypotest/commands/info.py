"""``hypotest info``: versions, the JAX backend and devices, whether Ray can start, thread settings."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import sys

#: Distributions whose versions decide results or speed.
KEY_PACKAGES = (
    "hypotest", "numpy", "scipy", "jax", "jaxlib", "numpyro", "optax", "ase", "pymatgen",
    "pymatgen-analysis-defects", "ray", "arviz", "h5py", "rosettasciio", "pyzmq", "fastapi",
    "abtem", "torch", "chgnet",
)  # fmt: skip
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, JAX devices, Ray start-up, thread settings")
    p.add_argument("--no-ray", action="store_true", help="skip starting a local Ray instance")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def collect(check_ray: bool = True) -> dict:
    """Everything ``hypotest info`` reports, as a JSON-serialisable dict."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    ray_info = _ray_probe() if check_ray else {"checked": False}  # before JAX starts threads
    import jax

    out = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "jax": {
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "x64": bool(jax.config.jax_enable_x64),
        },
        "threads": {
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            **{v: os.environ.get(v) for v in THREAD_VARS},
            "blas_pools": _blas_pools(),
        },
    }
    out["ray"] = ray_info
    return out


def _blas_pools() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl comes with the pinned set
        return []
    return [
        {"api": p.get("internal_api"), "threads": p.get("num_threads")} for p in threadpool_info()
    ]


def _ray_probe() -> dict:
    from workflows.local import local_ray

    try:
        with local_ray(num_cpus=1) as r:
            import ray

            @ray.remote
            def _echo(x):
                return x

            ok = ray.get(_echo.remote(42), timeout=60) == 42
            return {
                "checked": True,
                "can_start": ok,
                "address": r.address,
                "startup_s": round(r.startup_s, 2),
                "task_ran": ok,
            }
    except Exception as exc:  # report, do not crash: this is a diagnostic
        return {"checked": True, "can_start": False, "error": f"{type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> int:
    info = collect(check_ray=not args.no_ray)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info["ray"].get("can_start", True) else 1
    print(f"hypotest {info['packages']['hypotest']} on Python {info['python']} ({info['platform']})")
    print("packages:")
    for k, v in info["packages"].items():
        print(f"  {k:<26} {v or '(not installed)'}")
    j = info["jax"]
    print(f"jax: backend {j['backend']}, devices {', '.join(j['devices'])}, x64 {'on' if j['x64'] else 'off'}")
    t = info["threads"]
    print(f"threads: {t['cpu_count']} CPUs ({t['affinity']} usable)")
    for v in THREAD_VARS:
        print(f"  {v:<22} {t[v] if t[v] is not None else '(unset)'}")
    for pool in t["blas_pools"]:
        print(f"  BLAS pool {pool['api']}: {pool['threads']} threads")
    r = info["ray"]
    if not r["checked"]:
        print("ray: not checked (--no-ray)")
    elif r["can_start"]:
        print(f"ray: local instance started on {r['address']} in {r['startup_s']} s, ran a task, shut down")
    else:
        print(f"ray: could NOT start a local instance: {r.get('error')}")
        return 1
    return 0
