"""The sites of a large field of view split over Ray actors.

A :class:`SiteShards` is handed to :class:`hypotest.fieldofview.FieldOfViewScorer` (``split=``).
At setup it starts ``n_shards`` actors and gives each, once, what every window of the field of
view is scored with: the hypotheses' Fourier series (simulated once on the driver, never per
site or per actor), the window geometry, the noise model, the nuisance prior and the detector
calibration. Each site class's sites are cut into ``n_shards`` contiguous blocks; for every frame
the driver puts the frame and its mask in the object store once, every actor scores its block of
every class (:func:`inference.windows.class_evidence`: the windows cut from the frame, the models
evaluated, the Laplace evidence over scale and background) and returns its windows' evidence; the
driver joins the blocks in order. Sites are independent given the frame's registration, so the
result is the in-process one (the same function on fewer sites at a time; tested equal).

Needs a running Ray (``with workflows.local_ray(): ...``, or a cluster's address). Close it (or
use it as a context manager) to release the actors.
"""

from __future__ import annotations

import numpy as np

from forward import InputError
from inference.windows import class_evidence, concat_evidence

__all__ = ["SiteShards", "SiteShardScorer"]


class SiteShardScorer:
    """A Ray actor: one block of every site class's sites, scored on each frame."""

    def __init__(self, static: dict, blocks: dict):
        self._s = static
        self._blocks = blocks  # class -> (r_sites [k, 2], shifts [M, k, 2])

    def evidence(self, c: int, counts, mask, m, t, frame_level):
        import os

        s = self._s
        r, shifts = self._blocks[c]
        if len(r) == 0:
            return None
        ev = class_evidence(counts, mask, m, t, r, shifts, s["series"][c], s["di"], s["disk"], s["radius"], s["exposure"],
                            s["noise"], s["prior"], s["calibration"], s["corr_factor"], frame_level)  # fmt: skip
        ev.pid = os.getpid()
        return ev


class SiteShards:
    """Split the sites over ``n_shards`` actors (module docstring); ``num_cpus`` each reserves
    (1 on a cluster spreads them over the nodes; the default 1 on this machine uses its cores)."""

    def __init__(self, n_shards: int = 2, *, num_cpus: float = 1):
        import ray

        if not (isinstance(n_shards, int) and n_shards >= 1):
            raise InputError(f"n_shards must be an integer >= 1, got {n_shards!r}")
        if not ray.is_initialized():
            raise InputError("SiteShards needs Ray: create it inside `with workflows.local_ray(): ...`")
        self.n = n_shards
        self._cls = ray.remote(num_cpus=float(num_cpus), max_restarts=3, max_task_retries=3)(SiteShardScorer)
        self.actors: list = []
        self.sizes: dict = {}
        self.pids: set = set()
        self._frame = None

    def setup(self, scorer) -> None:
        """Start the actors for ``scorer``'s sites (called by :class:`FieldOfViewScorer`)."""
        import ray

        if self.actors:
            raise InputError("these SiteShards already serve a field of view; make one per FieldOfViewScorer")
        static = {
            "series": {c: cl["series"] for c, cl in scorer.classes.items()},
            "di": scorer.di, "disk": scorer.disk, "radius": float(scorer.win["radius_A"]), "exposure": scorer.exposure,
            "noise": scorer.noise, "prior": scorer.prior, "calibration": scorer.calibration,
            "corr_factor": scorer.corr_factor,
        }  # fmt: skip
        ref = ray.put(static)
        for j in range(self.n):
            blocks = {}
            for c, cl in scorer.classes.items():
                cut = np.array_split(np.arange(len(cl["idx"])), self.n)[j]
                blocks[c] = (cl["r"][cut], cl["shifts"][:, cut])
                self.sizes.setdefault(c, []).append(len(cut))
            self.actors.append(self._cls.remote(ref, blocks))

    def evidence(self, c: int, counts, mask, m, t, r_sites, frame_level):
        """Class ``c``'s :class:`inference.windows.WindowEvidence` on one frame, the blocks joined."""
        import ray

        if sum(self.sizes[c]) != len(r_sites):
            raise InputError(f"class {c} has {len(r_sites)} sites here but {sum(self.sizes[c])} in the actors")
        if self._frame is None or self._frame[0] is not counts:  # once per frame; the actors read it zero-copy
            self._frame = (counts, ray.put(np.asarray(counts)), ray.put(np.asarray(mask)))
        cref, mref = self._frame[1:]
        parts = ray.get([a.evidence.remote(c, cref, mref, m, t, frame_level) for a in self.actors])
        parts = [p for p in parts if p is not None]
        self.pids |= {p.pid for p in parts}
        return concat_evidence(parts)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        self._frame = None

    def __enter__(self) -> SiteShards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

