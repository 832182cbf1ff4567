"""Output paths of the batch commands (``hypotest score``, ``hypotest library build|add|export``).

An output path is checked before any work is done: a directory where a file belongs, a path under
a file, a special file (``/dev/null``), an existing file that ``--force`` must allow, and a place
nothing can be written (``/proc/x``, a read-only directory: found by creating and removing a
probe file there, the only test that does not guess). What is written goes to a temporary name
beside the target that is renamed when complete; a failure at any point removes the temporary
file and every directory created for it. Errors are :class:`forward.InputError` (the CLI prints
``hypotest <command>: error: ...`` and exits with status 2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from forward import InputError

__all__ = ["atomic_dir", "check_output_dir", "check_output_file", "write_file_atomic"]


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _check_parent(p: Path, option: str) -> None:
    """The nearest existing ancestor of ``p`` must be a directory."""
    a = p.parent
    while not a.exists() and a != a.parent:
        if a.is_symlink():
            raise InputError(f"cannot create {option} {p}: {a} is a dangling symbolic link")
        a = a.parent
    if not a.is_dir():
        raise InputError(f"cannot create {option} {p}: {a} is a file, not a directory; choose a path in a directory")


def _make_dirs(d: Path, option: str, target: Path) -> list[Path]:
    """Create ``d`` and its missing parents; returns those created, outermost first."""
    missing = []
    a = d
    while not a.exists() and a != a.parent:
        missing.append(a)
        a = a.parent
    created: list[Path] = []
    for m in reversed(missing):
        try:
            m.mkdir()
        except OSError as exc:
            _remove_dirs(created)
            raise InputError(f"cannot write {option} {target}: cannot create {m} ({_reason(exc)})") from None
        created.append(m)
    return created


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if still empty


def _probe(directory: Path, option: str, target: Path) -> None:
    """Create and remove a file in ``directory`` (and the directories leading to it)."""
    created = _make_dirs(directory, option, target)
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{target.name or 'out'}.", suffix=".probe")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise InputError(f"cannot write {option} {target}: creating a file in {directory} failed ({_reason(exc)})") from None
    finally:
        _remove_dirs(created)


def check_output_file(path, *, option: str = "--out", force: bool = True, example: str = "result.json") -> Path:
    """``path`` as a file to be written, checked before any work: not a directory, not under a
    file, not a special file, writable, and (unless ``force``) not an existing file."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p} is a directory; give a file path, e.g. {p / example}")
    if p.exists():
        try:
            mode = p.stat().st_mode
        except OSError as exc:
            raise InputError(f"cannot write {option} {p}: {_reason(exc)}") from None
        if not stat.S_ISREG(mode):  # /dev/null, a FIFO, a socket: never replaced by a file
            raise InputError(f"{option} {p} exists and is not a regular file; choose another path")
        if not force:
            raise InputError(f"{option} {p} already exists; pass --force to replace it, or choose another path")
    _check_parent(p, option)
    _probe(p.parent, option, p)
    return p


def write_file_atomic(path, data: str | bytes, *, option: str = "--out") -> Path:
    """Write ``data`` to ``path`` under a temporary name beside it, then rename it into place;
    on failure nothing is left (neither the temporary file nor directories created for it)."""
    p = Path(path)
    created = _make_dirs(p.parent, option, p)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, p)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_dirs(created)
        raise InputError(f"cannot write {option} {p}: {_reason(exc)}") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_dirs(created)
        raise
    return p


def check_output_dir(path, *, option: str = "--out") -> Path:
    """``path`` as a directory to write files into (existing, or one that can be created),
    checked before any work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {p} exists and is not a directory; give a directory to write the files into")
    if not p.exists():
        _check_parent(p, option)
    _probe(p, option, p)
    return p


@contextlib.contextmanager
def atomic_dir(path, *, option: str = "--out") -> Iterator[Path]:
    """Check ``path`` (:func:`check_output_dir`) and yield an empty temporary directory; when the
    block ends normally its files move into ``path``: a new ``path`` is the temporary directory
    renamed at once, an existing one receives each file by one rename. On error nothing is moved
    and the temporary directory (and the directories created for it) are removed."""
    p = check_output_dir(path, option=option)
    fresh = not p.exists()
    created = _make_dirs(p.parent, option, p) if fresh else []
    where, prefix = (p.parent, f".{p.name}.") if fresh else (p, ".export.")
    try:
        tmp = Path(tempfile.mkdtemp(dir=where, prefix=prefix, suffix=".tmp"))
    except OSError as exc:
        _remove_dirs(created)
        raise InputError(f"cannot write {option} {p}: {_reason(exc)}") from None
    try:
        yield tmp
        try:
            if fresh:
                os.rename(tmp, p)
            else:
                for f in sorted(tmp.iterdir()):
                    os.replace(f, p / f.name)
                tmp.rmdir()
        except OSError as exc:
            raise InputError(f"cannot write {option} {p}: {_reason(exc)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise
