"""Distributed pre-simulation: (hypotheses x simulation specs) -> the content-addressed cache,
by a pool of Ray actors. :func:`presimulate` is the Python API; ``python -m workflows.presimulate``
(:mod:`workflows.presimulate`) is its command line for ``ray job submit``.

Each item is one hypothesis under one :class:`~workflows.spec.SimulationSpec` (one beam
condition). The driver skips items whose image is already in the cache (:mod:`workflows.cache`),
splits the rest into batches and feeds them to a pool of Ray actors, at most two batches in flight
per actor. Each actor builds and jit-compiles the forward simulator for a spec the first time it
sees it (:func:`workflows.spec.make_spec_simulator`), simulates, and writes every image
atomically itself, so a result is durable the moment it is computed.

Failures: actors are created with ``max_restarts`` and ``max_task_retries``; when a worker process
dies (killed, out of memory, node lost) Ray restarts the actor and re-runs the batches it held.
A re-run batch first checks the cache, so items already written are not recomputed. A crashed or
restarted driver resumes the same way: what is on disk is done. Every computed item is appended
to ``ROOT/presim-log.jsonl`` (hypothesis id, spec digest, worker pid, seconds) by the driver.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from forward import InputError
from workflows.cache import cached_ids, has_image, write_image, write_spec
from workflows.spec import SimulationSpec, check_specimen, make_spec_simulator, spec_digest
from workflows.specimens import Pair, check_pairs

__all__ = ["PresimReport", "SimulationWorker", "presimulate", "make_workers", "LOG_NAME"]

LOG_NAME = "presim-log.jsonl"


@dataclasses.dataclass(frozen=True)
class PresimReport:
    """What a :func:`presimulate` call did.

    Attributes:
        n_items: hypotheses x specs requested.
        n_cached: found complete in the cache at the start (not recomputed).
        n_computed: computed by this call (each exactly once unless a worker died mid-write).
        computed: ``(hypothesis id, spec digest)`` of every item computed by this call.
        digests: the spec digests, in the order of the specs given.
        seconds: wall-clock time of the call [s]; ``compute_seconds``: summed per-item
            simulation time in the workers [s].
        n_workers: actors used.
    """

    n_items: int
    n_cached: int
    n_computed: int
    computed: tuple[tuple[str, str], ...]
    digests: tuple[str, ...]
    seconds: float
    compute_seconds: float
    n_workers: int


class SimulationWorker:
    """A Ray actor (wrapped by :func:`presimulate`) that simulates batches into the cache.

    Simulators are built and jit-compiled here, per spec digest, on first use.
    """

    def __init__(self, cache_root: str):
        self._root = str(cache_root)
        self._sims: dict[str, Callable] = {}

    def pid(self) -> int:
        """The worker process id (for monitoring and fault tests)."""
        return os.getpid()

    def run(self, spec: SimulationSpec, digest: str, items: list[Pair]) -> list[tuple[str, str, float, int, bool]]:
        """Simulate and cache ``items``; returns ``(id, digest, seconds, pid, computed)`` each
        (``computed`` False when the image was already cached, e.g. on a retried batch)."""
        out = []
        for hyp_id, specimen in items:
            if has_image(self._root, digest, hyp_id):
                out.append((hyp_id, digest, 0.0, os.getpid(), False))
                continue
            sim = self._sims.get(digest)
            if sim is None:
                sim = self._sims[digest] = make_spec_simulator(spec)
            t0 = time.perf_counter()
            image = sim(specimen)
            dt = time.perf_counter() - t0
            write_image(self._root, digest, hyp_id, image, seconds=dt)
            out.append((hyp_id, digest, dt, os.getpid(), True))
        return out


def _batches(todo: list[tuple[int, Pair]], batch_size: int):
    by_spec: dict[int, list[Pair]] = {}
    for s, pair in todo:
        by_spec.setdefault(s, []).append(pair)
    for s, items in by_spec.items():
        for k in range(0, len(items), batch_size):
            yield s, items[k : k + batch_size]


def presimulate(
    pairs: Sequence[Pair],
    specs: Sequence[SimulationSpec],
    cache_root: str | os.PathLike,
    *,
    n_workers: int | None = None,
    batch_size: int = 4,
    max_retries: int = 3,
    progress: bool = True,
    on_progress: Callable[[int, int, list], None] | None = None,
    workers: list | None = None,
) -> PresimReport:
    """Simulate every hypothesis under every spec into the cache at ``cache_root``; resumable.

    Needs a running Ray (``with workflows.local_ray(): ...``, or ``ray.init(address=...)``).

    Args:
        pairs: ``(id, forward.Specimen)`` hypotheses (ids from ``library.content_id``).
        specs: simulation specs (one per beam condition / cell).
        cache_root: cache directory (created if missing; a shared file system on a cluster).
        n_workers: actors to start (default: the CPUs Ray reports, at least 1).
        batch_size: items per actor call (amortises scheduling overhead).
        max_retries: actor restarts and per-call retries after a worker dies.
        progress: show a tqdm progress bar.
        on_progress: ``callback(n_done, n_items, workers)`` after every finished batch (the
            ``workers`` are the actor handles: monitoring, fault injection in tests).
        workers: existing :func:`make_workers` actors to use instead of starting new ones.

    Returns:
        :class:`PresimReport`.
    """
    import ray
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        raise InputError("presimulate needs Ray: run it inside `with workflows.local_ray(): ...` or after ray.init")
    pairs = check_pairs(pairs)
    specs = list(specs)
    if not specs or not all(isinstance(s, SimulationSpec) for s in specs):
        raise InputError("specs must be a non-empty list of SimulationSpec (see workflows.make_simulation_spec)")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    checked = set()
    for spec in specs:  # specs of one cell differ only in the beam: check each specimen once per cell
        geometry = (spec.grid.gpts, spec.grid.sampling, spec.thickness, spec.species)
        if geometry not in checked:
            checked.add(geometry)
            for hid, sp in pairs:
                check_specimen(spec, sp, hid)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    digests = [spec_digest(s) for s in specs]
    if len(set(digests)) != len(digests):
        raise InputError("two specs are identical (same digest); give each beam condition once")
    for spec in specs:
        write_spec(root, spec)

    t0 = time.perf_counter()
    done_ids = [cached_ids(root, d) for d in digests]  # one directory walk per spec, not a stat per item
    todo = [(s, p) for s, d in enumerate(digests) for p in pairs if p[0] not in done_ids[s]]
    n_items = len(pairs) * len(specs)
    n_cached = n_items - len(todo)
    computed: list[tuple[str, str]] = []
    compute_s = 0.0
    if not todo:
        return PresimReport(n_items, n_cached, 0, (), tuple(digests), time.perf_counter() - t0, 0.0, 0)

    owned = workers is None
    if owned:
        n = int(n_workers or max(1, int(ray.cluster_resources().get("CPU", 1))))
        workers = make_workers(root, n, max_retries=max_retries)
    queue = deque(_batches(todo, int(batch_size)))
    pending: dict = {}

    def submit(w: int) -> None:
        if queue:
            s, items = queue.popleft()
            ref = workers[w].run.remote(specs[s], digests[s], items)
            pending[ref] = w

    for w in range(len(workers)):
        submit(w)
        submit(w)
    done = n_cached
    bar = tqdm(total=n_items, initial=n_cached, desc="pre-simulation", unit="image", disable=not progress)
    try:
        with open(root / LOG_NAME, "a") as log:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                w = pending.pop(ready[0])
                results = ray.get(ready[0])
                for hid, dig, dt, pid, was_computed in results:
                    if was_computed:
                        computed.append((hid, dig))
                        compute_s += dt
                        log.write(json.dumps({"id": hid, "digest": dig, "pid": pid, "seconds": dt}) + "\n")
                log.flush()
                done += len(results)
                bar.update(len(results))
                submit(w)
                if on_progress is not None:
                    on_progress(done, n_items, workers)
    finally:
        bar.close()
        if owned:  # free the CPUs now rather than when the handles are collected
            for a in workers:
                ray.kill(a)
    return PresimReport(
        n_items=n_items,
        n_cached=n_cached,
        n_computed=len(computed),
        computed=tuple(computed),
        digests=tuple(digests),
        seconds=time.perf_counter() - t0,
        compute_seconds=compute_s,
        n_workers=len(workers),
    )


def make_workers(cache_root: str | os.PathLike, n_workers: int, *, max_retries: int = 3) -> list:
    """``n_workers`` :class:`SimulationWorker` actors (1 CPU each) writing into ``cache_root``;
    restarted up to ``max_retries`` times, their calls retried as often."""
    import ray

    if int(n_workers) < 1:
        raise InputError(f"n_workers must be >= 1, got {n_workers}")
    actor = ray.remote(num_cpus=1, max_restarts=int(max_retries), max_task_retries=int(max_retries))(
        SimulationWorker
    )
    return [actor.remote(str(cache_root)) for _ in range(int(n_workers))]
