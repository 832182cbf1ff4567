"""Frozen dataclasses registered as JAX pytrees (after jax-md's ``dataclasses.py``).

Fields are leaves unless declared with :func:`static_field`: leaves are what one differentiates,
vmaps or samples; static fields are shapes and discrete choices with few distinct values (they
become part of the tree structure, so a change recompiles).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax

__all__ = ["pytree_dataclass", "static_field", "replace"]

T = TypeVar("T")


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is part of the pytree structure rather than a leaf."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def pytree_dataclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass and register it with ``jax.tree_util``.

    Validation of concrete values belongs in ``make_*`` constructors, never in ``__post_init__``:
    JAX rebuilds pytrees with tracers (and with ``object()`` sentinels) during transforms.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` under a shorter name, re-exported for the data-model types."""
    return dataclasses.replace(obj, **changes)
