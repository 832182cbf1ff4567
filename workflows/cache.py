"""The content-addressed image cache on disk: one small HDF5 file per (spec, hypothesis).

Layout::

    ROOT/<spec digest>/spec.json                   canonical spec (workflows.spec.spec_to_json)
    ROOT/<spec digest>/<id[1:3]>/<hypothesis id>.h5
        /image     float32, the simulated image ([x, y] indexing, fraction of the beam);
                   complex64 for an exit-wave spec (relative to the incident wave)
        attrs: hypothesis_id, spec_digest, seconds (compute time), schema

Why one file per item rather than one big HDF5 file: the cache is written by many workers at
once and must survive a crash at any instant. HDF5 has no concurrent writers and a process killed
while a large file is open can leave the whole file unreadable; a small file written under a
temporary name in the same directory, fsync'ed and then renamed (``os.replace``, atomic
on POSIX file systems) either exists complete or not at all. So "done" is simply "the file
exists", and a restarted run never recomputes it. The two-hex-digit subdirectories keep
directories small for 10^6 hypotheses. :func:`read_images` stacks a library's images for
scoring.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from forward import InputError
from workflows.spec import SimulationSpec, spec_digest, spec_to_json

__all__ = [
    "CACHE_SCHEMA",
    "check_id",
    "image_path",
    "has_image",
    "write_image",
    "read_image",
    "read_images",
    "cached_ids",
    "write_spec",
]

CACHE_SCHEMA = "hypotest.image-cache/1"
_ID = re.compile(r"^[A-Za-z0-9_.-]{3,128}$")


def check_id(hyp_id: str) -> str:
    """``hyp_id`` if it can name a cache file (letters, digits, ``_.-``; 3-128 characters)."""
    s = str(hyp_id)
    if not _ID.match(s) or s.startswith("."):
        raise InputError(
            f"hypothesis id {hyp_id!r} cannot key the cache: expected 3-128 letters, digits, '_', '.' "
            "or '-' (library.content_id gives 'h' + 16 hex digits)"
        )
    return s


def image_path(root: str | os.PathLike, digest: str, hyp_id: str) -> Path:
    """Where the image of ``hyp_id`` under the spec with ``digest`` lives."""
    s = check_id(hyp_id)
    return Path(root) / digest / s[1:3] / f"{s}.h5"


def has_image(root: str | os.PathLike, digest: str, hyp_id: str) -> bool:
    """True when the image is complete on disk (written files are always complete)."""
    return image_path(root, digest, hyp_id).is_file()


def _atomic_replace(tmp: Path, final: Path) -> None:
    """fsync the complete temporary file, then rename it over ``final``. The rename alone makes
    the write atomic against killed processes; the fsync makes a visible file complete after a
    power loss too. The directory is not fsync'ed (it doubled the cost per image): after a power
    loss a just-renamed image may be missing, and is then simply recomputed."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def write_spec(root: str | os.PathLike, spec: SimulationSpec) -> Path:
    """Write ``ROOT/<digest>/spec.json`` (atomically; idempotent) and return its path."""
    digest = spec_digest(spec)
    final = Path(root) / digest / "spec.json"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".spec.json.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"digest": digest, "spec": spec_to_json(spec)}, indent=1, sort_keys=True))
    _atomic_replace(tmp, final)
    return final


def write_image(
    root: str | os.PathLike, digest: str, hyp_id: str, image: np.ndarray, *, seconds: float = 0.0
) -> Path:
    """Write one image atomically (temporary file, fsync, rename) and return its path; stored as
    float32, or complex64 for a complex ``image`` (an exit wave)."""
    final = image_path(root, digest, hyp_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    img = np.asarray(image)
    img = img.astype(np.complex64 if np.iscomplexobj(img) else np.float32, copy=False)
    if not np.all(np.isfinite(img)):
        raise InputError(f"image of {hyp_id} under {digest} has non-finite values; it is not cached")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=img)
            f.attrs["hypothesis_id"] = str(hyp_id)
            f.attrs["spec_digest"] = str(digest)
            f.attrs["seconds"] = float(seconds)
            f.attrs["schema"] = CACHE_SCHEMA
        _atomic_replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def read_image(root: str | os.PathLike, digest: str, hyp_id: str) -> np.ndarray:
    """The cached image of ``hyp_id`` under ``digest`` (checks the stored keys match): float32, or
    complex64 where a complex image (an exit wave) was stored."""
    path = image_path(root, digest, hyp_id)
    if not path.is_file():
        raise InputError(
            f"no cached image for hypothesis {hyp_id} under spec {digest} in {root}; "
            "run the pre-simulation first (python -m workflows.presimulate)"
        )
    with h5py.File(path, "r") as f:
        if f.attrs.get("hypothesis_id") != hyp_id or f.attrs.get("spec_digest") != digest:
            raise InputError(
                f"{path} holds {f.attrs.get('hypothesis_id')!r} under {f.attrs.get('spec_digest')!r}, "
                f"not {hyp_id!r} under {digest!r}: the cache was edited by hand; delete the file"
            )
        image = f["image"][()]
        return np.asarray(image, dtype=np.complex64 if np.iscomplexobj(image) else np.float32)


def read_images(root: str | os.PathLike, spec: SimulationSpec | str, ids: Sequence[str]) -> np.ndarray:
    """Stacked cached images ``[H, ...]`` of ``ids`` (in that order) under ``spec`` (or its digest)."""
    digest = spec if isinstance(spec, str) else spec_digest(spec)
    ids = list(ids)
    missing = [i for i in ids if not has_image(root, digest, i)]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(ids)} hypotheses have no cached image under spec {digest} "
            f"(first: {missing[:3]}); run the pre-simulation for them first"
        )
    if not ids:
        raise InputError("no hypothesis ids given: pass at least one id")
    return np.stack([read_image(root, digest, i) for i in ids])


def cached_ids(root: str | os.PathLike, digest: str, ids: Iterable[str] | None = None) -> set[str]:
    """Ids with a complete image under ``digest`` (restricted to ``ids`` when given)."""
    if ids is not None:
        return {i for i in ids if has_image(root, digest, i)}
    base = Path(root) / digest
    if not base.is_dir():
        return set()
    return {p.stem for p in base.glob("*/*.h5")}
