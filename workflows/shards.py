"""The library held in the Ray object store as shards, each scored by its own actor.

A shard is a block of cached images ``[h, nx, ny]`` (float32 numpy, ``[x, y]`` indexing) with
their hypothesis ids. :meth:`ShardedLibrary.add_shard` puts the block in the object store once
(``ray.put``); a :class:`ShardScorer` actor receives it as a zero-copy, read-only numpy view of
the shared-memory buffer and builds the one scorer (:func:`inference.make_scorer`, any of
``laplace``, ``linear``, ``fast``) in its own process, preparing its shard once. To score a frame
the driver puts the counts in the object store once, every actor scores its shard and returns its
:class:`inference.Score` (a few numbers per hypothesis instead of its image); the driver
concatenates them in shard order. Per-hypothesis evidences are independent, so the sharded result
equals the single-process one up to float32 rounding, provided every shard scores with the same
prior: the background prior is relative to one signal level for the whole library
(``signal_level``, by default the mean of the first shard's images), not to each shard's own.
With the fast scorer each shard screens its own hypotheses: the placed evidence of a screened-out
hypothesis is relative to its shard's best, which is scored exactly, and the bound on screening
out the truth is the largest of the shards' (the truth lies in one of them).

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
from inference.noise import NoiseModel
from inference.posterior import init_posterior, posterior_probs, update_posterior
from inference.scorer import Score, ScorerConfig, make_scorer
from workflows.cache import check_id

__all__ = ["ShardScorer", "ShardedLibrary", "merge_scores", "posterior_from_scores"]


class ShardScorer:
    """A Ray actor (wrapped by :class:`ShardedLibrary`) holding one shard of cached images,
    prepared once for the one scorer (:func:`inference.make_scorer`)."""

    def __init__(self, images: np.ndarray, config: ScorerConfig, signal_level: float):
        # ``images`` arrives from the object store as a read-only view of shared memory (no copy).
        self._images = images
        self._scorer = make_scorer(config)
        self._prepared = self._scorer.prepare(images, level=signal_level)

    def info(self) -> dict:
        """Process id, shard shape and whether the images are a read-only (zero-copy) view."""
        return {
            "pid": os.getpid(),
            "shape": tuple(self._images.shape),
            "writeable": bool(self._images.flags.writeable),
        }

    def score(self, counts: np.ndarray, exposure: float, shift=None) -> Score:
        """The :class:`inference.Score` ``[h]`` of one frame against this shard."""
        return self._scorer.score(counts, self._prepared, exposure, shift)


def merge_scores(parts) -> Score:
    """One :class:`inference.Score` from the shards' (concatenated in shard order; the screen's
    bound is the largest, its margin the smallest, the hypotheses kept summed)."""
    parts = list(parts)
    arrays = {f.name: np.concatenate([np.asarray(getattr(p, f.name)) for p in parts])
              for f in dataclasses.fields(Score) if f.name not in _SCALARS}  # fmt: skip
    return Score(**arrays, screen_error_bound=max(p.screen_error_bound for p in parts),
                 margin_nats=min(p.margin_nats for p in parts), n_within_margin=sum(p.n_within_margin for p in parts),
                 screened=any(p.screened for p in parts), kind=parts[0].kind)  # fmt: skip


_SCALARS = ("screen_error_bound", "margin_nats", "n_within_margin", "screened", "kind")


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
        config: the one scorer's :class:`inference.ScorerConfig` (kind, noise model, nuisance
            prior): ``linear`` (registered frames), ``fast`` (registered frames, binned screen;
            large shards) or ``laplace`` (sub-pixel shift marginalised too).
        signal_level: the mean image level the background prior is relative to, for every shard
            (default: the mean of the first shard added; :mod:`inference.scorer`).
        num_cpus: CPUs each shard actor reserves. 0 (default) lets shards share the cores with
            pre-simulation and refinement tasks on one machine; on a cluster 1 spreads the
            shards over the nodes.
    """

    def __init__(self, config: ScorerConfig, *, signal_level: float | None = None, num_cpus: float = 0):
        import ray

        if not isinstance(config, ScorerConfig):
            raise InputError(
                "ShardedLibrary takes the scorer's config, e.g. inference.ScorerConfig(kind='linear', "
                f"noise=make_noise_model('poisson')); got {type(config).__name__}"
            )
        if not isinstance(config.noise, NoiseModel):
            raise InputError(f"the config's noise must be an inference NoiseModel (make_noise_model), got {type(config.noise).__name__}")
        make_scorer(config)  # validate here, not in the actors
        if not ray.is_initialized():
            raise InputError("ShardedLibrary needs Ray: create it inside `with workflows.local_ray(): ...`")
        self._config = config
        if signal_level is not None and not (np.isfinite(float(signal_level)) and float(signal_level) > 0):
            raise InputError(f"signal_level must be finite and > 0 [intensity], got {signal_level!r}")
        self._level = None if signal_level is None else float(signal_level)
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
        if self._level is None:  # fixed for the library's life: adding a shard changes no other's scores
            self._level = max(float(np.mean(imgs, dtype=np.float64)), 1e-12)
        ref = ray.put(imgs)
        actor = self._actor_cls.remote(ref, self._config, self._level)
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
    @property
    def signal_level(self) -> float | None:
        """The level the background prior is relative to (None until the first shard)."""
        return self._level

    def score(self, counts, exposure: float, shift=None) -> Score:
        """Score one frame ``counts [nx, ny]`` at ``exposure`` = dose [e-/Å²] x pixel area [Å²]
        (registered up to ``shift`` [pixels]; the Laplace scorer's start) against every shard, in
        parallel; the merged :class:`inference.Score`, in the order of :attr:`ids`."""
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
        return merge_scores(ray.get([s.actor.score.remote(cref, e, shift) for s in self._shards.values()]))

    def close(self) -> None:
        """Drop every shard."""
        for key in list(self._shards):
            self.drop_shard(key)

    def __enter__(self) -> ShardedLibrary:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def posterior_from_scores(scores: Sequence[Score], priors, dose: float = 0.0) -> np.ndarray:
    """Posterior probabilities ``[H]`` after the frames scored in ``scores`` (the same hypotheses,
    in order) with prior weights ``priors [H]``: ``p(h | y) ∝ w_h prod_t p(y_t | h)`` (Bayes'
    theorem, accumulated in log space by :func:`inference.posterior.update_posterior`)."""
    scores = list(scores)
    if not scores:
        raise InputError("no scores given: score at least one frame")
    n = scores[0].n_hypotheses
    if any(s.n_hypotheses != n for s in scores):
        raise InputError(
            f"scores of {sorted({s.n_hypotheses for s in scores})} hypotheses: they were taken against different shard "
            "sets; score all frames against the same library"
        )
    state = init_posterior(np.asarray(priors, dtype=np.float64))
    if state.log_prior.shape[0] != n:
        raise InputError(f"got {state.log_prior.shape[0]} priors for {n} hypotheses")
    for s in scores:
        state = update_posterior(state, s.log_evidence, dose)
    return np.asarray(posterior_probs(state), dtype=np.float64)
