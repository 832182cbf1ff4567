"""The session record: append-only, crash-safe, resumable, replayable.

A session directory holds

- ``session.json``: the configuration, written once at the start (atomically: temp file + rename):
  ``{"schema": "hypotest.session/1", "library", "hypotheses": [{"id", "name", "family", "prior"}],
  "model": {...}, "source": {...}, "candidate_beams": [{"label", "beam"}], "rule", "noise",
  "target", "created"}`` and every setting a resume restores (``auto_apply`` as started,
  ``stop_on_decision``, ``max_steps``, ``scorer``, ``design``, ``rule_threshold``,
  ``expected_run_length``, ``seed``, ``fsync``; ``source`` holds how to open the source again);
- ``frames.bin``: the raw bytes of every frame received, appended in arrival order;
- ``record.jsonl``: one JSON object per line, each with a ``"kind"``:

  ======================  ==================================================================
  ``frame``               a frame was received: ``index`` (arrival order), ``source_id``,
                          ``t_source``, ``t_received``, ``offset``/``nbytes``/``shape``/``dtype``
                          in frames.bin, ``beam_label``, ``beam`` (BEAM.json form); from a
                          ZeroMQ stream also ``sender``, ``frame_id`` (the sender's number) and
                          ``curve_sender`` (the CURVE key's name, when CURVE is on)
  ``bad_message``         the source could not decode a message: ``source_id``, ``reason``; a
                          ZeroMQ stream adds ``sender`` when known, and ``lost`` for frames a
                          sender counts as sent that never arrived
  ``stream``              connection state: ``event`` (connected, disconnected, reconnected, end)
  ``fate``                a frame rejected before scoring: ``index``, ``fate``: "rejected", ``reason``
  ``step``                one posterior update: ``step``, ``frames`` (indices; more than one =
                          coalesced), ``ids``, ``log_evidence``, ``posterior``,
                          ``log10_bayes_factor``, ``rejected`` {id: reason}, ``proposals``, ``fit``,
                          ``drift_px``, ``dose_ratio``, ``segment_start``, ``map_state``,
                          ``latency_s`` {stage: s}
  ``beam``                a beam condition was applied: ``label``, ``beam``, ``by`` (auto, operator)
  ``rejection``/``return``  a hypothesis fell below / came back above the rejection rule
  ``hypothesis_added``    with its structure; ``hypothesis_dropped``
  ``auto_apply``          auto-apply turned ``on`` or off, ``by`` operator, session or resume
  ``resumed``             a resumed session starts: ``settings`` in force, ``overrides`` given
                          at the resume, ``source`` (the source's settings)
  ``decision``, ``stopped``
  ======================  ==================================================================

One process writes a directory at a time: :class:`SessionWriter` holds an exclusive lock on
``session.lock`` (``fcntl.flock``; the file holds the writer's PID) for the life of the session,
released when it stops and by the kernel when the process dies, so a second session on the same
directory is refused with "DIR in use by PID n" (readers, :func:`load_record`, take no lock).

Durability: a frame's bytes are written to frames.bin before its ``frame`` line, and each line is
one ``write`` on an ``O_APPEND`` descriptor, so a process killed at any instant (kill -9) leaves
every completed line and frame intact; at most the line being written is truncated, and
:func:`load_record` ignores (and reports) a truncated last line. ``fsync=True`` additionally
syncs ``step`` lines to disk (survives an OS crash). A frame received but not yet scored when the
process died has a ``frame`` line and no step: :meth:`SessionData.unscored_frames` lists it and a
resumed session scores it, so nothing received is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import threading
from pathlib import Path

import numpy as np

from forward import InputError

__all__ = ["SessionWriter", "SessionLock", "SessionData", "load_record", "SCHEMA", "LOCK_FILE"]

SCHEMA = "hypotest.session/1"
LOCK_FILE = "session.lock"


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _clean(x):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


class SessionLock:
    """The exclusive lock of a session directory (module docstring): ``fcntl.flock`` on
    ``DIR/session.lock``, which holds the owner's PID. Taken at construction (InputError "DIR in
    use by PID n" when another open file holds it, in this process or another); released by
    :meth:`release`, and by the kernel when the process dies (kill -9 included). The file stays."""

    def __init__(self, directory):
        self.dir = Path(directory)
        path = self.dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        except OSError as exc:
            raise InputError(f"{self.dir}: cannot create the session lock {path} ({exc.strerror or exc}); the session "
                             "directory must be writable") from None  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"PID {pid}" if pid.isdigit() else "another process"
            raise InputError(
                f"{self.dir} in use by {who}: a session is running on this record; stop it first (Ctrl-C there, or "
                f"`kill {pid if pid.isdigit() else 'PID'}`), or choose another directory (`hypotest session show "
                f"{self.dir}` reads it meanwhile)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise InputError(f"{path}: cannot lock it ({exc.strerror or exc})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Unlock (idempotent); the file stays, emptied of the PID."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> SessionLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class SessionWriter:
    """Appends to a session directory (thread-safe). ``resume=True`` opens an existing one.

    The directory's :class:`SessionLock` is taken before anything is written (``lock``: one the
    caller already holds) and released by :meth:`close`."""

    def __init__(self, directory, config: dict | None = None, *, resume: bool = False, fsync: bool = False,
                 lock: SessionLock | None = None):  # fmt: skip
        self.dir = Path(directory)
        self._lock = threading.Lock()
        self._fsync = fsync
        if resume:
            if not (self.dir / "session.json").is_file():
                raise InputError(f"{self.dir}: not a session directory (no session.json)")
        else:
            if (self.dir / "record.jsonl").exists():
                raise InputError(
                    f"{self.dir} already holds a session record; resume it with `hypotest session resume {self.dir}` "
                    "or choose another directory"
                )
            if config is None:
                raise InputError("a new session record needs its configuration")
            self.dir.mkdir(parents=True, exist_ok=True)
        self._dir_lock = lock if lock is not None and lock.held else SessionLock(self.dir)
        try:
            if not resume:
                if (self.dir / "record.jsonl").exists():  # another session started here meanwhile
                    raise InputError(f"{self.dir} already holds a session record; choose another directory")
                tmp = self.dir / "session.json.tmp"
                tmp.write_text(json.dumps({"schema": SCHEMA, **config}, indent=1, default=_json_default))
                os.replace(tmp, self.dir / "session.json")
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._rec = os.open(self.dir / "record.jsonl", flags, 0o644)
            self._bin = os.open(self.dir / "frames.bin", flags, 0o644)
        except BaseException:
            self._dir_lock.release()
            raise
        self._bin_size = os.fstat(self._bin).st_size
        self._repair_truncated_tail()

    def _repair_truncated_tail(self) -> None:
        """After a crash the last line may lack its newline: end it so the next line starts clean."""
        size = os.fstat(self._rec).st_size
        if size:
            with open(self.dir / "record.jsonl", "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._rec, b"\n")

    def append(self, kind: str, **fields) -> dict:
        entry = _clean({"kind": kind, **fields})
        line = (json.dumps(entry, default=_json_default, allow_nan=False) + "\n").encode()
        with self._lock:
            os.write(self._rec, line)
            if self._fsync and kind in ("step", "decision", "stopped"):
                os.fsync(self._rec)
        return entry

    def append_frame(self, counts: np.ndarray, **fields) -> dict:
        """Write the frame's bytes, then its ``frame`` line; returns the line."""
        c = np.ascontiguousarray(counts)
        data = c.tobytes()
        with self._lock:
            offset = self._bin_size
            n = 0
            while n < len(data):  # os.write may write less than asked
                n += os.write(self._bin, data[n:])
            self._bin_size += len(data)
            entry = _clean(
                {"kind": "frame", **fields, "offset": offset, "nbytes": len(data), "shape": list(c.shape), "dtype": c.dtype.str}
            )
            os.write(self._rec, (json.dumps(entry, default=_json_default, allow_nan=False) + "\n").encode())
        return entry

    def close(self) -> None:
        with self._lock:
            for fd in (self._rec, self._bin):
                if fd < 0:  # already closed
                    continue
                with contextlib.suppress(OSError):  # a full or read-only disk must not keep the fd open
                    os.fsync(fd)
                os.close(fd)
            self._rec = self._bin = -1
            self._dir_lock.release()


@dataclasses.dataclass
class SessionData:
    """A session record read back (:func:`load_record`).

    Attributes:
        config: session.json; ids, names: every hypothesis in session order (added ones last).
        steps: the ``step`` lines; posterior: ``[steps, H]`` (NaN where a hypothesis did not yet
            exist or was dropped); map_states: most probable id per step; change_points: steps
            where a new segment started.
        rejections: ``rejection`` lines (id, name, step, log10_bayes_factor, frames, dose, reason).
        frames: fate of every received frame: {"index", "source_id", "fate", "step", "reason"}.
        events: every other line (beam, stream, bad_message, hypothesis_added/dropped, decision).
        truth: ``{"frames": [{"source_id", "state", "id", "name"}], "states": [...]}`` from the
            ``truth.jsonl`` a simulated microscope writes (the session never reads it), or None.
        truncated: the text of a truncated last line, if the writer was killed mid-line.
        damaged: every line ignored, ``{"line": n (1-based), "reason": str, "text": its first 80
            characters}``: a line cut by a crash, or one that is not a JSON object with a ``kind``
            and the fields its kind needs (a record edited or damaged on disk).
    """

    dir: Path
    config: dict
    ids: list[str]
    names: list[str]
    steps: list[dict]
    posterior: np.ndarray
    map_states: list[str]
    change_points: list[int]
    rejections: list[dict]
    frames: list[dict]
    frame_lines: list[dict]
    events: list[dict]
    truth: dict | None
    truncated: str | None
    damaged: list[dict] = dataclasses.field(default_factory=list)

    def frame_line(self, index: int) -> dict:
        """The ``frame`` line of received frame ``index`` (looked up by index, not position)."""
        fl = self.frame_lines[index] if 0 <= index < len(self.frame_lines) else None
        if fl is None or fl["index"] != index:  # a damaged frame line shifted the list
            fl = next((x for x in self.frame_lines if x["index"] == index), None)
        if fl is None:
            raise InputError(f"frame index {index} out of range or its record line is damaged: the record holds "
                             f"{len(self.frame_lines)} frames")  # fmt: skip
        return fl

    def frame(self, index: int) -> np.ndarray:
        """The counts of received frame ``index`` (as received: dtype and shape)."""
        fl = self.frame_line(index)
        with open(self.dir / "frames.bin", "rb") as f:
            f.seek(fl["offset"])
            data = f.read(fl["nbytes"])
        if len(data) != fl["nbytes"]:
            raise InputError(f"{self.dir / 'frames.bin'}: frame {index} is truncated ({len(data)} of {fl['nbytes']} bytes)")
        try:
            return np.frombuffer(data, dtype=np.dtype(fl["dtype"])).reshape(fl["shape"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.dir / 'record.jsonl'}: the line of frame {index} is damaged ({exc})") from None

    def unscored_frames(self) -> list[int]:
        """Frames received but not scored: in flight when the process died (no fate) or left
        queued when the session stopped ("unscored"); a resumed session scores them first."""
        return [f["index"] for f in self.frames if f["fate"] in (None, "unscored")]

    @property
    def decision(self) -> dict | None:
        d = [e for e in self.events if e["kind"] == "decision"]
        return d[-1] if d else None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(v) -> bool:
    return isinstance(v, str)


def _opt(check):
    return lambda v: v is None or check(v)


def _list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _dict(v) -> bool:
    return isinstance(v, dict)


def _count(v) -> bool:
    return _is_int(v) and v >= 0


#: What each kind of record line must hold for :func:`load_record` and its readers (``session
#: show``, replay, resume): field -> check. A line lacking a required field, or holding a field
#: of the wrong type, is damaged: reported and ignored, never a crash.
_REQUIRED_FIELDS = {
    "frame": {"index": _count, "source_id": _is_int, "offset": _count, "nbytes": _count,
              "shape": _list_of(_count), "dtype": _str},
    "step": {"step": _count, "frames": _list_of(_count), "ids": _list_of(_str), "posterior": _list_of(_opt(_is_num))},
    "fate": {"index": _count, "fate": _str},
    "rejection": {"id": _str},
    "beam": {"beam": _dict, "label": _str},
    "hypothesis_added": {"id": _str, "name": _str},
    "hypothesis_dropped": {"id": _str},
    "decision": {"id": _str, "name": _str, "posterior": _is_num, "step": _count},
    "optics": {"step": _count, "calibration": _list_of(_is_num)},
}  # fmt: skip
_OPTIONAL_FIELDS = {
    "frame": {"beam": _opt(_dict), "beam_label": _opt(_str), "t_source": _opt(_is_num), "t_received": _opt(_is_num),
              "sender": _str, "frame_id": _is_int, "curve_sender": _opt(_str)},
    "bad_message": {"source_id": _opt(_is_int), "sender": _opt(_str), "lost": _count},
    "step": {"log_evidence": _list_of(_opt(_is_num)), "beam": _dict, "dose_e_per_A2": _is_num, "coalesced": _count,
             "rejected": _dict, "latency_s": _dict, "map_state": _opt(_str), "beam_label": _opt(_str),
             "segment_start": _count},
    "hypothesis_added": {"step": _count, "prior": _is_num, "structure": _dict},
    "hypothesis_dropped": {"step": _count},
}  # fmt: skip


def _line_problem(e) -> str | None:
    """Why a parsed record line cannot be used, or None."""
    if not isinstance(e, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(e), "null")
        return f"not a JSON object (a JSON {kind})"
    k = e.get("kind")
    if not isinstance(k, str):
        return "no 'kind'" if k is None else f"'kind' is not a string ({k!r:.40})"
    for f, ok in _REQUIRED_FIELDS.get(k, {}).items():
        if f not in e:
            return f"a {k!r} line without {f!r}"
        if not ok(e[f]):
            return f"a {k!r} line whose {f!r} is {e[f]!r:.40}"
    for f, ok in _OPTIONAL_FIELDS.get(k, {}).items():
        if f in e and not ok(e[f]):
            return f"a {k!r} line whose {f!r} is {e[f]!r:.40}"
    if k == "step" and len(e["ids"]) != len(e["posterior"]):
        return f"a 'step' line with {len(e['ids'])} ids and {len(e['posterior'])} posterior values"
    if k == "step" and "log_evidence" in e and len(e["log_evidence"]) != len(e["ids"]):
        return f"a 'step' line with {len(e['ids'])} ids and {len(e['log_evidence'])} log evidence values"
    return None


def _load_config(d: Path) -> dict:
    try:
        config = json.loads((d / "session.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{d}: not a session directory (no session.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{d / 'session.json'} is corrupt: {exc}") from None
    except OSError as exc:
        raise InputError(f"{d / 'session.json'}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(config, dict) or config.get("schema") != SCHEMA:
        got = config.get("schema") if isinstance(config, dict) else f"a JSON {type(config).__name__}"
        raise InputError(f"{d / 'session.json'}: schema {got!r}, expected {SCHEMA!r}")
    hyps = config.get("hypotheses")
    if not (isinstance(hyps, list) and all(isinstance(h, dict) and isinstance(h.get("id"), str)
                                           and isinstance(h.get("name"), str) for h in hyps)):  # fmt: skip
        raise InputError(f"{d / 'session.json'} is corrupt: 'hypotheses' must be a list of {{id, name, ...}} objects")
    return config


def _load_truth(path: Path) -> dict | None:
    """A simulated microscope's truth, one line per frame it emitted; damaged lines are skipped."""
    if not path.exists():
        return None
    tl = []
    for x in path.read_text(errors="replace").splitlines():
        try:
            t = json.loads(x)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line cut by a kill
        if isinstance(t, dict) and isinstance(t.get("name"), str):
            tl.append(t)
    return {"frames": tl, "states": sorted({x["name"] for x in tl})}


def load_record(directory) -> SessionData:
    """Read a session directory written by :class:`SessionWriter`.

    A line that cannot be used (cut by a crash, not a JSON object with a ``kind``, or lacking a
    field its kind needs) is ignored and listed in ``damaged``; it never stops the reading."""
    d = Path(directory)
    config = _load_config(d)
    ids = [h["id"] for h in config["hypotheses"]]
    names = [h["name"] for h in config["hypotheses"]]
    lines, truncated, damaged = [], None, []
    try:
        text = (d / "record.jsonl").read_text(errors="replace") if (d / "record.jsonl").exists() else ""
    except OSError as exc:
        raise InputError(f"{d / 'record.jsonl'}: cannot read it ({exc.strerror or exc})") from None
    for n, ln in enumerate(text.split("\n"), start=1):
        if not ln.strip():
            continue
        try:
            e = json.loads(ln)
        except (json.JSONDecodeError, RecursionError):
            # a line cut by a crash: the last line, or followed by the lines of a resumed session
            truncated = ln
            damaged.append({"line": n, "reason": "not valid JSON (cut by a crash?)", "text": ln[:80]})
            continue
        why = _line_problem(e)
        if why is not None:
            damaged.append({"line": n, "reason": why, "text": ln[:80]})
            continue
        lines.append((e, n))
    steps, rejections, events, frame_lines = [], [], [], []
    fate: dict[int, dict] = {}
    for e, n in lines:
        k = e["kind"]
        if k == "frame":
            frame_lines.append(e)
        elif k == "step":
            unknown = sorted(set(e["ids"]) - set(ids))
            if unknown:
                damaged.append({"line": n, "reason": f"a 'step' line naming unknown hypotheses {unknown[:3]}", "text": ""})
                continue
            steps.append(e)
            for j in e["frames"]:
                fate[j] = {"fate": "scored" if len(e["frames"]) == 1 else "coalesced", "step": e["step"], "reason": ""}
        elif k == "fate":
            fate[e["index"]] = {"fate": e["fate"], "step": None, "reason": e.get("reason", "")}
        elif k == "rejection":
            rejections.append(e)
        else:
            if k == "hypothesis_added":
                ids.append(e["id"])
                names.append(e["name"])
            events.append(e)
    damaged.sort(key=lambda x: x["line"])
    frame_lines.sort(key=lambda f: f["index"])
    frames = [
        {"index": f["index"], "source_id": f["source_id"], **fate.get(f["index"], {"fate": None, "step": None, "reason": ""})}
        for f in frame_lines
    ]
    post = np.full((len(steps), len(ids)), np.nan)
    col = {h: i for i, h in enumerate(ids)}
    map_states, cps, seg = [], [], 0
    for s, st in enumerate(steps):
        for h, p in zip(st["ids"], st["posterior"]):
            post[s, col[h]] = np.nan if p is None else p
        map_states.append(st.get("map_state") or "")
        if st.get("segment_start", 0) > seg:
            seg = st["segment_start"]
            cps.append(seg)
    return SessionData(
        dir=d, config=config, ids=ids, names=names, steps=steps, posterior=post, map_states=map_states,
        change_points=cps, rejections=rejections, frames=frames, frame_lines=frame_lines, events=events,
        truth=_load_truth(d / "truth.jsonl"), truncated=truncated, damaged=damaged,
    )  # fmt: skip
