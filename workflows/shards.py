"""The library held in the Ray object store as shards, each scored by its own actor.

A shard is a block of cached images ``[h, nx, ny]`` (float32 numpy, ``[x, y]`` indexing) with
their hypothesis ids. :meth:`ShardedLibrary.add_shard` puts the block in the object store once
(``ray.put``); a :class:`ShardScorer` actor receives it as a zero-copy, read-only numpy view of
the shared-memory buffer and builds and jit-compiles its scorer
(:func:`inference.evidence.make_linear_scorer` or ``make_laplace_scorer``) in its own process.
To score a frame the driver puts the counts in the object store once, every actor scores its
shard and returns only the per-hypothesis log-evidence [nats] and the nuisance MAP (scale,
background): three numbers per hypothesis instead of its image. The driver concatenates them in shard
order; the posterior is the prior times the evidence (Bayes' theorem, normalised in log space by
:mod:`inference.posterior`). Per-hypothesis evidences are independent, so the sharded result
equals the single-process one up to float32 rounding.

Shards can be added and dropped at any time between frames (e.g. when a family is rejected or a
new candidate family arrives).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from forward import InputError
from inference.evidence import NuisancePrior, make_laplace_scorer, make_linear_scorer, make_nuisance_prior
from inference.noise import NoiseModel
from inference.posterior import init_posterior, posterior_probs, update_posterior
from workflows.cache import check_id

__all__ = ["ShardScores", "ShardScorer", "ShardedLibrary", "posterior_from_scores"]

_SCORERS = ("linear", "laplace")


@dataclasses.dataclass(frozen=True)
class ShardScores:
    """Merged results of scoring one frame against every shard (order: shard order, then rows).

    Attributes:
        ids: ``[H]`` hypothesis ids.
        log_evidence: ``[H]`` log p(frame | h) [nats], nuisance marginalised (Laplace).
        scale, background: ``[H]`` nuisance MAP values (background in intensity units).
    """

    ids: tuple[str, ...]
    log_evidence: np.ndarray
    scale: np.ndarray
    background: np.ndarray


class ShardScorer:
    """A Ray actor (wrapped by :class:`ShardedLibrary`) holding one shard of cached images."""

    def __init__(self, images: np.ndarray, noise: NoiseModel, prior: NuisancePrior, scorer: str):
        # ``images`` arrives from the object store as a read-only view of shared memory (no copy).
        self._images = images
        make = make_linear_scorer if scorer == "linear" else make_laplace_scorer
        self._score = make(noise, prior)

    def info(self) -> dict:
        """Process id, shard shape and whether the images are a read-only (zero-copy) view."""
        return {
            "pid": os.getpid(),
            "shape": tuple(self._images.shape),
            "writeable": bool(self._images.flags.writeable),
        }

    def score(self, counts: np.ndarray, exposure: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(log_evidence, scale, background)`` ``[h]`` of one frame against this shard."""
        ev = self._score(counts, self._images, exposure)
        return (
            np.asarray(ev.log_evidence, dtype=np.float64),
            np.asarray(ev.scale, dtype=np.float64),
            np.asarray(ev.background, dtype=np.float64),
        )


@dataclasses.dataclass
class _Shard:
    ids: tuple[str, ...]
    ref: object  # ObjectRef of the images
    actor: object
    shape: tuple[int, ...]


class ShardedLibrary:
    """Cached images of a library in shards held by Ray actors; score frames against all of them.

    Needs a running Ray. Use as a context manager (or call :meth:`close`) so the actors and the
    object-store blocks are released.

    Args:
        noise: the detector's :class:`inference.noise.NoiseModel`.
        nuisance_prior: priors on scale, background, shift (default ``make_nuisance_prior()``).
        scorer: ``"linear"`` (registered frames; the real-time path) or ``"laplace"`` (sub-pixel
            shift marginalised too).
        num_cpus: CPUs each shard actor reserves. 0 (default) lets shards share the cores with
            pre-simulation and refinement tasks on one machine; on a cluster 1 spreads the
            shards over the nodes.
    """

    def __init__(
        self,
        noise: NoiseModel,
        nuisance_prior: NuisancePrior | None = None,
        *,
        scorer: str = "linear",
        num_cpus: float = 0,
    ):
        import ray

        if scorer not in _SCORERS:
            raise InputError(f"unknown scorer {scorer!r}: expected one of {_SCORERS}")
        if not isinstance(noise, NoiseModel):
            raise InputError(f"noise must be an inference NoiseModel (make_noise_model), got {type(noise).__name__}")
        if not ray.is_initialized():
            raise InputError("ShardedLibrary needs Ray: create it inside `with workflows.local_ray(): ...`")
        self._noise = noise
        self._prior = make_nuisance_prior() if nuisance_prior is None else nuisance_prior
        self._scorer = scorer
        if not (float(num_cpus) >= 0):
            raise InputError(f"num_cpus must be >= 0, got {num_cpus!r}")
        # The driver keeps each shard's ObjectRef, so a restarted actor finds its images again.
        self._actor_cls = ray.remote(num_cpus=float(num_cpus), max_restarts=3, max_task_retries=3)(ShardScorer)
        self._shards: dict[str, _Shard] = {}

    # -- membership ----------------------------------------------------------------------------
    @property
    def shard_keys(self) -> tuple[str, ...]:
        return tuple(self._shards)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i for s in self._shards.values() for i in s.ids)

    def __len__(self) -> int:
        return sum(len(s.ids) for s in self._shards.values())

    def add_shard(self, ids: Sequence[str], images) -> str:
        """Put ``images`` ``[h, nx, ny]`` (with their ``ids``) in the object store under a new
        actor; returns the shard key (a digest of the ids)."""
        import ray

        ids = tuple(check_id(i) for i in ids)
        imgs = np.ascontiguousarray(images, dtype=np.float32)
        if imgs.ndim != 3 or imgs.shape[0] != len(ids) or len(ids) == 0:
            raise InputError(
                f"a shard needs images [h, nx, ny] with one row per id, got shape {list(imgs.shape)} "
                f"for {len(ids)} ids"
            )
        if self._shards:
            want = next(iter(self._shards.values())).shape[1:]
            if imgs.shape[1:] != want:
                raise InputError(
                    f"shard images are {list(imgs.shape[1:])} but the library's are {list(want)}; "
                    "all shards must be simulated on the same camera grid"
                )
        clash = set(ids) & set(self.ids)
        if clash or len(set(ids)) != len(ids):
            raise InputError(f"hypothesis ids already in the library or repeated: {sorted(clash)[:3] or 'repeated'}")
        if not np.all(np.isfinite(imgs)):
            raise InputError("shard images have non-finite values; re-simulate them")
        key = "k" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
        ref = ray.put(imgs)
        actor = self._actor_cls.remote(ref, self._noise, self._prior, self._scorer)
        self._shards[key] = _Shard(ids=ids, ref=ref, actor=actor, shape=imgs.shape)
        return key

    def drop_shard(self, key: str) -> None:
        """Remove a shard: its actor exits and its object-store block is released."""
        import ray

        shard = self._shards.pop(key, None)
        if shard is None:
            raise InputError(f"no shard {key!r} in the library; shards are {list(self._shards)}")
        ray.kill(shard.actor)

    def info(self) -> list[dict]:
        """:meth:`ShardScorer.info` of every shard (shard order)."""
        import ray

        return ray.get([s.actor.info.remote() for s in self._shards.values()])

    # -- scoring -------------------------------------------------------------------------------
    def score(self, counts, exposure: float) -> ShardScores:
        """Score one frame ``counts [nx, ny]`` at ``exposure`` = dose [e-/Å²] x pixel area [Å²]
        against every shard, in parallel; the merged :class:`ShardScores`."""
        import ray

        if not self._shards:
            raise InputError("the sharded library is empty: add_shard first")
        c = np.asarray(counts, dtype=np.float32)
        want = next(iter(self._shards.values())).shape[1:]
        if c.shape != want:
            raise InputError(f"frame shape {list(c.shape)} does not match the cached images {list(want)}")
        e = float(exposure)
        if not (np.isfinite(e) and e > 0):
            raise InputError(f"exposure (dose x pixel area) must be positive [e-], got {exposure!r}")
        cref = ray.put(c)
        outs = ray.get([s.actor.score.remote(cref, e) for s in self._shards.values()])
        return ShardScores(
            ids=self.ids,
            log_evidence=np.concatenate([o[0] for o in outs]),
            scale=np.concatenate([o[1] for o in outs]),
            background=np.concatenate([o[2] for o in outs]),
        )

    def close(self) -> None:
        """Drop every shard."""
        for key in list(self._shards):
            self.drop_shard(key)

    def __enter__(self) -> ShardedLibrary:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def posterior_from_scores(scores: Sequence[ShardScores], priors, dose: float = 0.0) -> np.ndarray:
    """Posterior probabilities ``[H]`` after the frames scored in ``scores`` (same ids, in order)
    with prior weights ``priors [H]``: ``p(h | y) ∝ w_h prod_t p(y_t | h)`` (Bayes' theorem,
    accumulated in log space by :func:`inference.posterior.update_posterior`)."""
    scores = list(scores)
    if not scores:
        raise InputError("no scores given: score at least one frame")
    ids = scores[0].ids
    if any(s.ids != ids for s in scores):
        raise InputError("scores were taken against different shard sets; score all frames against the same library")
    state = init_posterior(np.asarray(priors, dtype=np.float64))
    if state.log_prior.shape[0] != len(ids):
        raise InputError(f"got {state.log_prior.shape[0]} priors for {len(ids)} hypotheses")
    for s in scores:
        state = update_posterior(state, s.log_evidence, dose)
    return np.asarray(posterior_probs(state), dtype=np.float64)
