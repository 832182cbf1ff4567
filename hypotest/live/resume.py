"""Continuing and re-scoring a recorded session.

- :func:`resume_session`: a :class:`hypotest.live.runner.LiveSession` that continues the record
  (the directory locked, the state rebuilt from the recorded steps, frames in flight when the
  process died scored first, every setting restored, the source reopened from the configuration
  so that nothing recorded comes again: a file replay passes over the ids recorded, a simulated
  microscope continues its sequence, a ZeroMQ receiver keeps each sender's count);
- :func:`replay_record`: every recorded step re-run through the live step
  (:func:`hypotest.live.step.live_step`) from the stored frames with a fresh model, and the
  posteriors compared with the recorded ones (they are reproduced exactly on the same machine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from forward import InputError
from hypotest.beamfile import parse_beam
from hypotest.hypothesis import Hypothesis, load_hypotheses, make_hypothesis
from hypotest.live.builtin import LIBRARY_SETTINGS
from hypotest.live.model import ImageModel
from hypotest.live.record import SessionLock, load_record
from hypotest.live.runner import LiveSession
from hypotest.live.simscope import SimulatedMicroscopeSource
from hypotest.live.step import (
    restart_posterior,
    PendingFrame,
    StepImages,
    add_hypothesis,
    drop_hypothesis,
    init_live_state,
    live_step,
    make_live_config,
    rescore_steps,
)
from inference import noise_from_detector

__all__ = ["resume_session", "replay_record", "ReplayReport", "session_settings", "recorded_source", "recorded_ids",
           "sender_counts", "merge_source_settings", "open_source", "SETTINGS_DEFAULTS"]  # fmt: skip


def _session_hypotheses(rec) -> tuple[list[Hypothesis], ImageModel]:
    """The session's hypotheses (library + added during the session) and image model, from its record."""
    from forward import make_specimen
    from library.provenance import Provenance

    cfg = rec.config
    hyps = load_hypotheses(cfg["library"])
    want = [h["id"] for h in cfg["hypotheses"]]
    if [h.id for h in hyps] != want:
        raise InputError(
            f"{rec.dir}: the library {cfg['library']!r} no longer holds the session's hypotheses "
            f"(ids differ); restore the library file the session was started with"
        )
    m = cfg["model"]
    model = ImageModel([h.specimen for h in hyps], sampling=m["sampling"], binning=m["binning"],
                       slice_thickness=m["slice_thickness"], camera_gpts=m.get("camera_gpts"))  # fmt: skip
    for e in rec.events:
        if e["kind"] == "hypothesis_added":
            spec = make_specimen(e["structure"]["positions"], e["structure"]["numbers"], cell=model.cell)
            h = make_hypothesis(spec, name=e["name"], family=e["family"], prior=e["prior"],
                                provenance=Provenance(source="added during the session"))  # fmt: skip
            model.add(spec)
            hyps.append(h)
    return hyps, model


#: The session settings session.json holds and a resume restores, with the value assumed for a
#: record written before they were kept (auto_apply None: unknown, so off, with a warning).
SETTINGS_DEFAULTS = {
    "auto_apply": None, "stop_on_decision": True, "max_steps": None, "fsync": False, "scorer": "laplace",
    "design": "allocation", "rule_threshold": 1e-3, "target": 0.99, "expected_run_length": 200.0, "seed": 0,
}  # fmt: skip
#: settings ``resume_session`` may override (stated in the ``resumed`` line)
OVERRIDABLE = ("auto_apply", "stop_on_decision", "max_steps")
#: what names the frames of a source (the rest of its settings are how they are delivered)
_SOURCE_IDENTITY = {"replay": ("paths", "spec", "start_id"), "zmq": ("address", "spec")}


def session_settings(rec) -> dict:
    """The session's settings in force at the end of the record: those of session.json, then each
    resume's overrides and the operator's auto-apply toggles (``auto_apply`` lines not written by
    the session itself), in record order: the latest word of the operator wins."""
    cfg = rec.config
    out = {k: cfg.get(k, v) for k, v in SETTINGS_DEFAULTS.items()}
    for k, v in out.items():
        if not _SETTING_OK[k](v):
            raise InputError(f"{rec.dir / 'session.json'}: {k!r} is {v!r:.40}, expected {_SETTING_WANTED[k]}; the file is "
                             "damaged (restore it, or correct that field)")  # fmt: skip
    for e in rec.events:
        if e["kind"] == "resumed" and isinstance(e.get("overrides"), dict):
            out.update({k: v for k, v in e["overrides"].items() if k in OVERRIDABLE and _SETTING_OK[k](v)})
        elif e["kind"] == "auto_apply" and e.get("by") != "session" and isinstance(e.get("on"), bool):
            out["auto_apply"] = e["on"]
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SETTING_OK = {
    "auto_apply": lambda v: v is None or isinstance(v, bool), "stop_on_decision": lambda v: isinstance(v, bool),
    "max_steps": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "fsync": lambda v: isinstance(v, bool), "scorer": lambda v: isinstance(v, str), "design": lambda v: isinstance(v, str),
    "rule_threshold": _num, "target": _num, "expected_run_length": _num,
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
}  # fmt: skip
_SETTING_WANTED = {"auto_apply": "true or false", "stop_on_decision": "true or false", "fsync": "true or false",
                   "max_steps": "an integer >= 0 or null", "scorer": "a scorer name", "design": "a design name",
                   "rule_threshold": "a number", "target": "a number", "expected_run_length": "a number [steps]",
                   "seed": "an integer"}  # fmt: skip


def recorded_source(rec) -> dict:
    """The settings of the source the record was last written from: session.json's ``source``,
    or the one a later resume opened (its ``resumed`` line)."""
    src = dict(rec.config.get("source") or {})
    for e in rec.events:
        if e["kind"] == "resumed" and isinstance(e.get("source"), dict):
            src = dict(e["source"])
    return src


def recorded_ids(rec) -> set[int]:
    """Every source id the record holds: frame lines and bad_message lines that carry one."""
    ids = {fl["source_id"] for fl in rec.frame_lines}
    ids.update(e["source_id"] for e in rec.events if e["kind"] == "bad_message" and _is_id(e.get("source_id")))
    return ids


def sender_counts(rec) -> tuple[dict[str, int], dict[str, int]]:
    """Per ZeroMQ sender: frame messages recorded (frame lines and malformed messages that took
    a source id) and frames already reported lost (``bad_message`` lines with ``lost``)."""
    received: dict[str, int] = {}
    lost: dict[str, int] = {}
    for fl in rec.frame_lines:
        if isinstance(fl.get("sender"), str):
            received[fl["sender"]] = received.get(fl["sender"], 0) + 1
    for e in rec.events:
        if e["kind"] != "bad_message":
            continue
        sender = e.get("sender") if isinstance(e.get("sender"), str) else ""
        if _is_id(e.get("source_id")):
            received[sender] = received.get(sender, 0) + 1
        if _is_id(e.get("lost")):
            lost[sender] = lost.get(sender, 0) + e["lost"]
    return received, lost


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def merge_source_settings(rec, given: dict | None) -> dict:
    """The settings of the source a resume opens: the recorded ones (:func:`recorded_source`),
    with what is ``given`` instead. A source of the recorded kind keeps the recorded delivery
    settings (rate, loop, beam, sampling; control channel, CURVE keys, allow_remote) unless given
    again; a file replay after another kind of source takes the session's beam and sampling."""
    recorded = recorded_source(rec)
    if not given:
        return recorded
    given = {k: v for k, v in given.items() if v is not None}
    kind = given.get("kind", recorded.get("kind"))
    if kind == recorded.get("kind"):
        identity = _SOURCE_IDENTITY.get(kind, ())
        renamed = any(k in given for k in identity)  # another file or address: the recorded one's name goes
        base = {k: v for k, v in recorded.items() if not (renamed and k in identity)}
    elif kind == "replay":
        beam = rec.config.get("beam") or {}
        base = {"kind": "replay", "beam": beam or None, "sampling": beam.get("sampling")}
    else:
        base = {"kind": kind}
    return {**base, **given, "kind": kind}


def open_source(rec, settings: dict, hyps):
    """Open the source described by ``settings`` (:func:`merge_source_settings`) so that it
    continues the record: ids after the recorded ones (a replay of the recorded files passes over
    the ids already recorded instead), a simulated microscope continuing its sequence, a ZeroMQ
    receiver starting from the recorded per-sender counts."""
    kind = settings.get("kind")
    ids = recorded_ids(rec)
    next_id = 1 + max(ids, default=-1)
    if kind == "simulated":
        lib = rec.config["library"]
        st = LIBRARY_SETTINGS[lib]
        from hypotest.live.builtin import _scope_model

        states = settings["states"]
        scope_model, names = _scope_model(hyps, states, st, None, settings.get("truth_outside"))
        remaining = None if settings["max_frames"] is None else max(settings["max_frames"] - next_id, 0)
        return SimulatedMicroscopeSource(
            scope_model, names, rec.config["beam"], seed=settings["seed"], defocus_error=float(settings.get("defocus_error", 0.0)),
            rate_hz=settings["rate_hz"], max_frames=remaining, schedule=[tuple(x) for x in settings["schedule"]],
            switch_rate_hz=settings["switch_rate_hz"], truth_path=rec.dir / "truth.jsonl", start_frame=next_id,
        )  # fmt: skip
    if kind == "zmq":
        from hypotest.live.zmqstream import ZmqSource

        if not isinstance(settings.get("address"), str):
            raise InputError(f"{rec.dir}: the recorded ZeroMQ source has no address; pass it again "
                             "(`hypotest session resume DIR --source zmq://ADDRESS`)")  # fmt: skip
        received, lost = sender_counts(rec)
        return ZmqSource(
            settings["address"], bind=settings.get("bind", True), control_address=settings.get("control_address"),
            heartbeat_timeout=settings.get("heartbeat_timeout", 2.0),
            end_on_sender_end=settings.get("end_on_sender_end", False), curve_key=settings.get("curve_key"),
            curve_clients=settings.get("curve_clients"), allow_remote=settings.get("allow_remote", False),
            start_id=next_id, received=received, reported_lost=lost,
        )  # fmt: skip
    if kind == "replay":
        from hypotest.frames import absolute_frame_path
        from hypotest.live.replay import FileReplaySource

        paths = settings.get("paths")
        if not (isinstance(paths, list) and paths):
            raise InputError(f"{rec.dir}: session.json does not list the replayed files; pass them again "
                             "(`hypotest session resume DIR --source FILE`)")  # fmt: skip
        paths = [absolute_frame_path(p) for p in paths]
        recorded = recorded_source(rec)
        same = recorded.get("kind") == "replay" and [absolute_frame_path(p) for p in recorded.get("paths") or []] == paths
        start = int(recorded.get("start_id", 0)) if same else next_id
        return FileReplaySource(paths, rate_hz=settings.get("rate_hz"), loop=bool(settings.get("loop", False)),
                                beam=settings.get("beam"), sampling=settings.get("sampling"),
                                skip_ids=ids if same else (), start_id=start)  # fmt: skip
    raise InputError(
        f"{rec.dir}: cannot reopen a {kind!r} source by itself; pass the source again "
        "(`hypotest session resume DIR --source ...`)"
    )


def resume_session(directory, *, source=None, source_settings: dict | None = None,
                   log: Callable[[str], None] | None = None, stop_on_decision: bool | None = None,
                   auto_apply: bool | None = None, max_steps: int | None = None) -> LiveSession:  # fmt: skip
    """A :class:`LiveSession` that continues the record in ``directory`` (not started).

    The directory is locked first (:class:`hypotest.live.record.SessionLock`: refused with "DIR
    in use by PID n" while a session runs there), then the posterior is rebuilt from the record,
    frames in flight when the process died are scored first, and every setting is restored
    (:func:`session_settings`). ``stop_on_decision``, ``auto_apply`` and ``max_steps`` override
    the restored values when given (None: as recorded); the ``resumed`` line states the
    settings in force, the overrides and the source's settings.

    The source: ``source``, an open :class:`hypotest.live.events.FrameSource`, is used as it is
    (its ids are the caller's to keep unique); otherwise the recorded one is reopened
    (:func:`open_source`), with ``source_settings`` instead of the recorded ones where given
    (:func:`merge_source_settings`: e.g. ``{"kind": "replay", "paths": [...]}``).
    """
    d = Path(directory)
    if not (d / "session.json").is_file():
        raise InputError(f"{d}: not a session directory (no session.json)")
    lock = SessionLock(d)  # before reading: nothing else appends to what is read and continued
    src = None
    try:
        rec = load_record(d)
        if rec.config.get("kind") == "field_of_view":
            raise InputError(f"{d} is a field-of-view session: it is not resumed (its posteriors are sums over its "
                             f"frames, all kept in the record); `hypotest session replay {d}` scores them again, and a "
                             "new `hypotest live --field-of-view` session continues at the microscope")  # fmt: skip
        hyps, model = _session_hypotheses(rec)
        n_lib = len(rec.config["hypotheses"])
        given = {"auto_apply": auto_apply, "stop_on_decision": stop_on_decision, "max_steps": max_steps}
        overrides = {k: v for k, v in given.items() if v is not None}
        settings = {**session_settings(rec), **overrides}
        unknown_auto = settings["auto_apply"] is None
        if unknown_auto:
            settings["auto_apply"] = False
        if source is not None:
            src, src_settings = source, dict(getattr(source, "settings", None) or {"name": getattr(source, "name", "")})
        else:
            src_settings = merge_source_settings(rec, source_settings)
            src = open_source(rec, src_settings, hyps[:n_lib])
            src_settings = {**src_settings, **(getattr(src, "settings", None) or {})}
        cfg = rec.config
        optics = [e for e in rec.events if e["kind"] == "optics"]
        if optics:  # the optics the session had learned when it stopped; it learns on from them
            model.set_calibration(optics[-1]["calibration"])
        session = LiveSession(
            rec.dir, hypotheses=hyps, model=model, source=src, learn_optics=cfg.get("learn_optics"),
            candidate_beams=[(c["label"], c["beam"]) for c in cfg["candidate_beams"]], beam=cfg["beam"],
            rule_threshold=settings["rule_threshold"], target=settings["target"], auto_apply=settings["auto_apply"],
            stop_on_decision=settings["stop_on_decision"], max_steps=settings["max_steps"],
            expected_run_length=settings["expected_run_length"], fsync=settings["fsync"], resume=True, log=log,
            seed=settings["seed"], scorer=settings["scorer"], design=settings["design"], lock=lock,
        )  # fmt: skip
        session.config = cfg
        session.restore(rec, note={"settings": settings, "overrides": overrides, "source": src_settings})
        if unknown_auto:
            session._warn("session.json does not say whether auto-apply was on (a record written before it was kept): "
                          "it stays off; turn it on on the page or with `hypotest session resume --auto-apply`")  # fmt: skip
    except BaseException:
        lock.release()
        if src is not None and source is None:
            src.close()
        raise
    return session


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """Posteriors recomputed from the stored frames against those recorded."""

    steps: int
    max_abs_posterior_diff: float
    max_abs_log_evidence_diff: float  # [nats], over finite entries
    decision_reproduced: bool

    @property
    def ok(self) -> bool:
        return self.max_abs_posterior_diff <= 1e-4


def replay_record(directory, log: Callable[[str], None] | None = None) -> ReplayReport:
    """Re-run every recorded step through the live step (:func:`hypotest.live.step.live_step`)
    from the frames in ``frames.bin``, with a fresh model and state, the hypotheses added and
    dropped where the record says; compare the posteriors with the recorded ones."""
    rec = load_record(directory)
    if rec.config.get("kind") == "field_of_view":
        raise InputError(f"{directory} is a field-of-view session: replay it with hypotest.live.fov.replay_fov_record "
                         "(`hypotest session replay` does)")  # fmt: skip
    hyps, model = _session_hypotheses(rec)
    cfg = rec.config
    n_lib = len(cfg["hypotheses"])
    noise = noise_from_detector(parse_beam(cfg["beam"]).beam.detector)
    config = make_live_config(cfg.get("scorer", "laplace"), noise, rule_threshold=cfg["rule_threshold"],
                              target=cfg["target"])  # fmt: skip
    images = StepImages(model)
    state = init_live_state(config, [h.id for h in hyps[:n_lib]], [h.name for h in hyps[:n_lib]],
                            [float(h.prior) for h in hyps[:n_lib]], expected_run_length=cfg["expected_run_length"])  # fmt: skip
    changes = sorted((e for e in rec.events if e["kind"] in ("hypothesis_added", "hypothesis_dropped", "optics")),
                     key=lambda e: e["step"])  # fmt: skip
    max_dp = max_dl = 0.0
    view = None
    for st in rec.steps:
        while changes and changes[0]["step"] <= st["step"]:  # an added hypothesis' past is re-scored
            e = changes.pop(0)
            if e["kind"] == "hypothesis_added":
                past = rescore_steps(rec.steps[: st["step"]], rec.frame, images, config, state.n_hypotheses, state.ids)
                state = add_hypothesis(state, e["id"], e["name"], e["prior"], past)
            elif e["kind"] == "optics":  # the optics learned then: new images, the posterior restarted
                model.set_calibration(e["calibration"])
                images.clear()
                state = restart_posterior(state, cfg["expected_run_length"])
            else:
                state = drop_hypothesis(state, state.ids.index(e["id"]))
        batch = []
        for j in st["frames"]:
            fl = rec.frame_line(j)
            batch.append(PendingFrame(j, fl["source_id"], rec.frame(j), fl["beam"], fl["beam_label"], fl["t_source"],
                                      fl["t_received"]))  # fmt: skip
        state, info = live_step(state, batch, images)
        if info.entry is None or info.entry["frames"] != st["frames"]:
            raise InputError(
                f"{rec.dir}: step {st['step']} cannot be replayed: its frames {st['frames']} are not one step now "
                f"({[f['reason'] for f in info.fates] or 'they were split by beam'})"
            )
        le = np.asarray(info.entry["log_evidence"], dtype=np.float64)
        rec_le = np.asarray([np.nan if v is None else v for v in st["log_evidence"]], dtype=np.float64)
        ok = np.isfinite(rec_le)
        max_dl = max(max_dl, float(np.max(np.abs(rec_le[ok] - le[ok]))))
        rec_post = np.asarray([0.0 if v is None else v for v in st["posterior"]])
        max_dp = max(max_dp, float(np.max(np.abs(rec_post - info.view.posterior))))
        view = info.view
        if log:
            log(f"step {st['step']}: max |dP| so far {max_dp:.2e}")
    dec = rec.decision
    reproduced = dec is None or (view is not None and state.ids[int(view.best)] == dec["id"]
                                 and float(view.posterior[view.best]) >= cfg["target"])  # fmt: skip
    return ReplayReport(len(rec.steps), max_dp, max_dl, bool(reproduced))
