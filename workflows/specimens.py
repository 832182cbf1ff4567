"""Hypotheses as plain ``(id, forward.Specimen)`` pairs, and a small portable file for them.

The Ray layer takes hypotheses as pairs so it does not depend on the library file format.
:func:`save_pairs`/:func:`load_pairs` store pairs as one ``.npz`` (ragged atoms concatenated,
with offsets); :func:`load_hypotheses` also reads a library file (``library.format``, HDF5) when
given one, returning its entries' ids, specimens and priors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forward import InputError, Specimen, make_specimen
from workflows.cache import check_id

__all__ = ["Pair", "check_pairs", "save_pairs", "load_pairs", "load_hypotheses"]

Pair = tuple[str, Specimen]


def check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """Validated list of ``(id, Specimen)`` pairs with unique, file-safe ids."""
    out = []
    seen = set()
    for k, item in enumerate(pairs):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Specimen)):
            raise InputError(
                f"hypothesis {k} must be a pair (id, forward.Specimen), got {type(item).__name__}; "
                "build ids with library.content_id(specimen)"
            )
        hid = check_id(item[0])
        if hid in seen:
            raise InputError(f"hypothesis id {hid} appears twice; ids must be unique (content hashes are)")
        seen.add(hid)
        out.append((hid, item[1]))
    if not out:
        raise InputError("no hypotheses given: pass at least one (id, Specimen) pair")
    return out


def save_pairs(path: str | os.PathLike, pairs: Sequence[Pair], priors: Sequence[float] | None = None) -> Path:
    """Write pairs (and optional prior weights) to ``path`` (.npz)."""
    pairs = check_pairs(pairs)
    counts = np.array([p[1].n_atoms for p in pairs], dtype=np.int64)
    pr = np.ones(len(pairs)) if priors is None else np.asarray(priors, dtype=np.float64)
    if pr.shape != (len(pairs),):
        raise InputError(f"got {pr.size} priors for {len(pairs)} hypotheses; give one per hypothesis")
    path = Path(path)
    np.savez(
        path,
        ids=np.array([p[0] for p in pairs]),
        counts=counts,
        positions=np.concatenate([np.asarray(p[1].positions, np.float64) for p in pairs]),
        numbers=np.concatenate([np.asarray(p[1].numbers, np.int32) for p in pairs]),
        dw_sigmas=np.concatenate([np.asarray(p[1].dw_sigmas, np.float64) for p in pairs]),
        cells=np.stack([np.asarray(p[1].cell, np.float64) for p in pairs]),
        priors=pr,
    )
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_pairs(path: str | os.PathLike) -> tuple[list[Pair], np.ndarray]:
    """``(pairs, priors)`` from a file written by :func:`save_pairs`."""
    try:
        with np.load(path) as f:
            d = {k: f[k] for k in ("ids", "counts", "positions", "numbers", "dw_sigmas", "cells", "priors")}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read hypotheses from {path}: {exc}; write it with workflows.save_pairs") from None
    ends = np.cumsum(d["counts"])
    starts = ends - d["counts"]
    pairs = []
    for i, (a, b) in enumerate(zip(starts, ends)):
        sp = make_specimen(d["positions"][a:b], d["numbers"][a:b], d["cells"][i], d["dw_sigmas"][a:b], min_distance=0)
        pairs.append((str(d["ids"][i]), sp))
    return check_pairs(pairs), np.asarray(d["priors"], dtype=np.float64)


def load_hypotheses(path: str | os.PathLike) -> tuple[list[Pair], np.ndarray]:
    """``(pairs, priors)`` from a pairs file (.npz) or a library file (HDF5, ``library.format``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"hypotheses file {p} does not exist")
    if p.suffix == ".npz":
        return load_pairs(p)
    try:
        from library.format import open_library
    except ImportError as exc:  # the library reader is optional for the Ray layer
        raise InputError(f"{p} is not .npz and the library reader is unavailable ({exc})") from None
    with open_library(p) as lib:
        entries = lib.entries()
    pairs = [(e.id, e.specimen) for e in entries]
    return check_pairs(pairs), np.asarray([float(e.prior) for e in entries], dtype=np.float64)
