"""Shared command-line options of the ``ray job submit`` entrypoints (beam, grid, cluster)."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np

from forward import make_beam, make_grid
from workflows.local import LocalRay, local_ray
from workflows.spec import SimulationSpec, make_simulation_spec
from workflows.specimens import Pair


def add_common_args(p: argparse.ArgumentParser, *, many_defoci: bool) -> None:
    g = p.add_argument_group("simulation (HRTEM)")
    g.add_argument("--energy", type=float, default=300e3, help="electron energy [eV] (default 300e3)")
    if many_defoci:
        g.add_argument(
            "--defocus", type=float, nargs="+", default=[0.0],
            help="defocus values [Å] (positive = underfocus); one beam condition each",
        )  # fmt: skip
    else:
        g.add_argument("--defocus", type=float, default=0.0, help="defocus [Å] (positive = underfocus)")
    g.add_argument("--semiangle", type=float, default=20.0, help="objective aperture semiangle [mrad] (0: none)")
    g.add_argument("--focal-spread", type=float, default=0.0, help="focal spread [Å]")
    g.add_argument("--dose", type=float, default=1e4, help="dose per frame [e-/Å²]")
    g.add_argument("--gpts", type=int, default=None, help="grid points per side (default: from --sampling)")
    g.add_argument("--sampling", type=float, default=0.1, help="grid sampling [Å] when --gpts is not given")
    g.add_argument("--slice-thickness", type=float, default=2.0, help="multislice slice thickness [Å]")
    g.add_argument("--camera-gpts", type=int, default=None, help="camera pixels per side (default: the grid)")
    c = p.add_argument_group("cluster")
    c.add_argument(
        "--address", default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, set by `ray job submit`; else start a local Ray)",
    )  # fmt: skip
    c.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (embedded default only)")


def ray_address(args) -> str | None:
    return args.address or os.environ.get("RAY_ADDRESS") or None


def group_by_cell(pairs: list[Pair]) -> list[tuple[tuple[float, float, float], list[Pair]]]:
    """Hypotheses grouped by orthogonal cell (rounded to 1e-4 Å), in first-seen order."""
    groups: dict[tuple, list[Pair]] = {}
    for hid, sp in pairs:
        key = tuple(float(x) for x in np.round(np.asarray(sp.cell, dtype=np.float64), 4))
        groups.setdefault(key, []).append((hid, sp))
    return list(groups.items())


def specs_for_cell(args, cell, pairs: list[Pair], defoci) -> list[SimulationSpec]:
    """One HRTEM spec per defocus for hypotheses sharing ``cell`` [Å]."""
    if args.gpts is not None:
        grid = make_grid(extent=cell[:2], gpts=args.gpts)
    else:
        grid = make_grid(extent=cell[:2], sampling=args.sampling)
    species = sorted({int(z) for _, sp in pairs for z in np.asarray(sp.numbers).ravel()})
    specs = []
    for df in defoci:
        beam = make_beam(
            args.energy, defocus=df, semiangle_cutoff=args.semiangle, focal_spread=args.focal_spread, dose=args.dose
        )
        specs.append(
            make_simulation_spec(
                grid, beam, thickness=cell[2], slice_thickness=args.slice_thickness, species=species,
                camera_gpts=args.camera_gpts,
            )  # fmt: skip
        )
    return specs


@contextlib.contextmanager
def connect(args) -> Iterator[LocalRay]:
    """The embedded default (:func:`workflows.local.local_ray`) or, with an address, a
    connection to an existing cluster. Under ``ray job submit`` the job's own ``runtime_env``
    (give the worker thread limits there, see :func:`workflows.local.worker_env`) applies; Ray
    refuses a second, conflicting one from ``ray.init``, so none is passed."""
    address = ray_address(args)
    if address is None:
        with local_ray(args.num_cpus) as info:
            yield info
        return
    import ray

    t0 = time.perf_counter()
    ctx = ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        yield LocalRay(
            address=str(ctx.address_info.get("gcs_address", "")),
            node_ip=str(ctx.address_info["node_ip_address"]),
            num_cpus=float(ray.cluster_resources().get("CPU", 0.0)),
            started=False,
            startup_s=time.perf_counter() - t0,
        )
    finally:
        ray.shutdown()
