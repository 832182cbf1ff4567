"""Per-task random keys that are the same in every process: ``fold_in(key, stable digest)``.

Ray runs tasks in other processes, in any order, and retries them after failures; a task's key
must therefore depend only on the driver's key and the task's identity (hypothesis id, spec
digest, ...), never on scheduling or on Python's ``hash()`` (salted per process). The digest is
the first 32 bits of sha256 over the parts (``jax.random.fold_in`` takes 32-bit data).
"""

from __future__ import annotations

import hashlib

import jax

from forward import InputError

__all__ = ["stable_digest32", "task_key"]


def stable_digest32(*parts: str) -> int:
    """A 32-bit unsigned integer from sha256 of the parts (joined unambiguously)."""
    if not parts:
        raise InputError("stable_digest32 needs at least one part (e.g. a hypothesis id)")
    h = hashlib.sha256()
    for p in parts:
        b = str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return int.from_bytes(h.digest()[:4], "little")


def task_key(rng_key, *parts: str):
    """``jax.random.fold_in(rng_key, stable_digest32(*parts))``: the key of one task."""
    return jax.random.fold_in(rng_key, stable_digest32(*parts))
