"""Continuing and re-scoring a recorded session.

- :func:`resume_session`: a :class:`hypotest.live.runner.LiveSession` that continues the record
  (the state rebuilt from the recorded steps, frames in flight when the process died scored first,
  the source reopened from the configuration);
- :func:`replay_record`: every recorded step re-run through the live step
  (:func:`hypotest.live.step.live_step`) from the stored frames with a fresh model, and the
  posteriors compared with the recorded ones (they are reproduced exactly on the same machine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from forward import InputError
from hypotest.beamfile import parse_beam
from hypotest.hypothesis import Hypothesis, load_hypotheses, make_hypothesis
from hypotest.live.builtin import LIBRARY_SETTINGS
from hypotest.live.model import ImageModel
from hypotest.live.record import load_record
from hypotest.live.runner import LiveSession
from hypotest.live.simscope import SimulatedMicroscopeSource
from hypotest.live.step import (
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

__all__ = ["resume_session", "replay_record", "ReplayReport"]


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
                            slice_thickness=m["slice_thickness"])  # fmt: skip
    for e in rec.events:
        if e["kind"] == "hypothesis_added":
            spec = make_specimen(e["structure"]["positions"], e["structure"]["numbers"], cell=model.cell)
            h = make_hypothesis(spec, name=e["name"], family=e["family"], prior=e["prior"],
                                provenance=Provenance(source="added during the session"))  # fmt: skip
            model.add(spec)
            hyps.append(h)
    return hyps, model


def _source_from_config(rec, model_states_from, start_frame: int):
    cfg = rec.config["source"]
    kind = cfg.get("kind")
    if kind == "simulated":
        lib = rec.config["library"]
        st = LIBRARY_SETTINGS[lib]
        hyps = model_states_from
        states = cfg["states"]
        scope_model = ImageModel([hyps[s].specimen for s in states], sampling=st.sampling, binning=st.binning,
                                      slice_thickness=st.slice_thickness)  # fmt: skip
        remaining = None if cfg["max_frames"] is None else max(cfg["max_frames"] - start_frame, 0)
        return SimulatedMicroscopeSource(
            scope_model, [(hyps[s].id, hyps[s].name) for s in states], rec.config["beam"], seed=cfg["seed"],
            rate_hz=cfg["rate_hz"], max_frames=remaining, schedule=[tuple(x) for x in cfg["schedule"]],
            switch_rate_hz=cfg["switch_rate_hz"], truth_path=rec.dir / "truth.jsonl", start_frame=start_frame,
        )  # fmt: skip
    if kind == "zmq":
        from hypotest.live.zmqstream import ZmqSource

        return ZmqSource(cfg["address"], bind=cfg.get("bind", True), control_address=cfg.get("control_address"),
                         start_id=start_frame)  # source ids stay unique across a resume
    raise InputError(
        f"{rec.dir}: cannot reopen a {kind!r} source by itself; pass the source again "
        "(`hypotest session resume DIR --source ...`)"
    )


def resume_session(directory, *, source=None, log: Callable[[str], None] | None = None,
                   stop_on_decision: bool = True) -> LiveSession:  # fmt: skip
    """A :class:`LiveSession` that continues the record in ``directory`` (not started).

    The posterior is rebuilt from the record, frames in flight when the process died are scored
    first, and the source is reopened from the configuration (a simulated microscope continues
    its frame sequence) unless ``source`` is given.
    """
    rec = load_record(directory)
    hyps, model = _session_hypotheses(rec)
    n_lib = len(rec.config["hypotheses"])
    start = 1 + max((f["source_id"] for f in rec.frame_lines), default=-1)
    src = source if source is not None else _source_from_config(rec, hyps[:n_lib], start)
    cfg = rec.config
    session = LiveSession(
        rec.dir, hypotheses=hyps, model=model, source=src,
        candidate_beams=[(c["label"], c["beam"]) for c in cfg["candidate_beams"]], beam=cfg["beam"],
        rule_threshold=cfg["rule_threshold"], target=cfg["target"], auto_apply=True, stop_on_decision=stop_on_decision,
        expected_run_length=cfg["expected_run_length"], resume=True, log=log, seed=cfg.get("seed", 0),
        scorer=cfg.get("scorer", "laplace"), design=cfg.get("design", "allocation"),
    )  # fmt: skip
    session.config = cfg
    session.restore(rec)
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
    hyps, model = _session_hypotheses(rec)
    cfg = rec.config
    n_lib = len(cfg["hypotheses"])
    noise = noise_from_detector(parse_beam(cfg["beam"]).beam.detector)
    config = make_live_config(cfg.get("scorer", "laplace"), noise, rule_threshold=cfg["rule_threshold"],
                              target=cfg["target"])  # fmt: skip
    images = StepImages(model)
    state = init_live_state(config, [h.id for h in hyps[:n_lib]], [h.name for h in hyps[:n_lib]],
                            [float(h.prior) for h in hyps[:n_lib]], expected_run_length=cfg["expected_run_length"])  # fmt: skip
    changes = sorted((e for e in rec.events if e["kind"] in ("hypothesis_added", "hypothesis_dropped")),
                     key=lambda e: e["step"])  # fmt: skip
    max_dp = max_dl = 0.0
    view = None
    for st in rec.steps:
        while changes and changes[0]["step"] <= st["step"]:  # an added hypothesis' past is re-scored
            e = changes.pop(0)
            if e["kind"] == "hypothesis_added":
                past = rescore_steps(rec.steps[: st["step"]], rec.frame, images, config, state.n_hypotheses, state.ids)
                state = add_hypothesis(state, e["id"], e["name"], e["prior"], past)
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
