"""The live session's runner: threads, the record, the design step and control around the pure
live step (:func:`hypotest.live.step.live_step`).

Three threads share one session:

- **ingest** polls the frame source (:class:`hypotest.live.events.FrameSource`) and, for every
  frame, appends its bytes and a ``frame`` line to the record *before* queueing it, so a frame is
  on disk before anything can go wrong with it; undecodable messages and connection changes are
  recorded as they come. A source that raises is recorded as disconnected and polled again.
- **loop** takes everything queued and calls the live step on it (validation, coalescing,
  registration, the one scorer, change points, the one rejection rule, the decision), then
  records what the step says: refused frames, the step, rejections and returns, the decision.
  Frames of another beam condition go back to the front of the queue.
- **design** ranks the candidate beams for the newest posterior (Chernoff's allocation of the
  dose still needed to decide, :func:`inference.design.allocate_conditions`, each also with its
  expected information gain per electron, :func:`inference.design.rank_conditions`) beside the
  loop, so proposing never delays scoring, and applies the best one (automatically, or when the
  operator clicks).

``run_sync`` is the same loop in the calling thread, one frame at a time, with the design step
inline (deterministic: for tests, benchmarks and scripted sessions).

**Coalescing.** When scoring falls behind, every frame queued under the same beam condition is
summed into one step (a sum of Poisson frames is a Poisson frame at the summed dose, so nothing
is lost but time resolution); the step lists the frames it holds and each frame's fate is
"coalesced". Frames that fail validation get the fate "rejected" with the reason. Every frame
received therefore has exactly one fate in the record.

**Re-simulation.** Images are cached per beam condition (:class:`hypotest.live.model.ImageModel`);
only an energy or tilt change re-runs the HRTEM multislice; a new STEM condition runs PRISM.

The session implements :class:`hypotest.live.view.SessionView` for the dashboard.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from forward import InputError, make_specimen
from hypotest.beamfile import parse_beam
from hypotest.live.events import BadMessage, BeamRefused, FrameSource, RawFrame, StreamEvent, takes_control
from hypotest.live.model import beam_key
from hypotest.live.queries import SessionQueries
from hypotest.live.record import SessionLock, SessionWriter
from hypotest.live.step import (
    LiveState,
    PendingFrame,
    StepImages,
    StepInfo,
    add_hypothesis,
    drop_hypothesis,
    init_live_state,
    live_step,
    make_live_config,
    rescore_steps,
    restart_posterior,
    restore_state,
    segment_fit,
    step_fit_check,
)
from inference import allocate_conditions, noise_from_detector, rank_conditions

__all__ = ["LiveSession", "STAGES"]

STAGES = ("ingest", "preprocess", "score", "update", "propose", "total")
#: Proposals are ranked over at most this many most probable surviving hypotheses.
PROPOSAL_HYPOTHESES = 16
DESIGNS = ("allocation", "eig")


class LiveSession(SessionQueries):
    """A running session (module docstring). Use :func:`hypotest.live.builtin.make_demo_session`
    or ``hypotest live`` to build one.

    Args:
        directory: the session record directory (:mod:`hypotest.live.record`).
        hypotheses: :class:`hypotest.hypothesis.Hypothesis` list, session order.
        model: expected images per beam (:class:`hypotest.live.model.ImageModel`).
        source: the frame source.
        candidate_beams: ``[(label, beam dict)]`` the design step chooses from.
        beam: the initial beam (BEAM.json form); ``config``: extra session.json fields
            (library, source description) needed to resume.
        rule_threshold: reject when the Bayes factor against the best is below it.
        target: decide when one hypothesis reaches this posterior.
        auto_apply: apply the best proposal automatically.
        stop_on_decision: stop the loop at the decision (the demo) or keep watching (live).
        max_steps: stop after this many steps (None: until the source ends).
        expected_run_length: steps between metastable switches (change-point hazard).
        scorer: the one scorer's kind (:data:`inference.SCORERS`; ``"fast"`` for large libraries).
        design: how proposals are ordered: ``"allocation"`` (Chernoff's allocation of the
            remaining dose, :func:`inference.allocate_conditions`) or ``"eig"`` (one-frame
            expected information gain per electron, :func:`inference.rank_conditions`); both
            figures are recorded with every proposal either way.
        fsync: sync step, decision and stopped lines to disk (:class:`SessionWriter`).
        resume: continue the record in ``directory`` (see :meth:`restore`).
        lock: the directory's :class:`hypotest.live.record.SessionLock`, when the caller took it
            already (a resume takes it before reading the record).

    Nothing is written until the session starts (:meth:`start`, :meth:`run_sync`) or is restored
    (:meth:`restore`): a session refused before that (a dashboard that cannot bind, a bad option)
    leaves no record behind. Then the record's writer takes the directory's lock
    (:class:`hypotest.live.record.SessionLock`: "DIR in use by PID n" while another session
    runs there) and writes ``session.json``: the configuration and every setting above, which a
    resume restores.
    """

    def __init__(self, directory, *, hypotheses, model, source: FrameSource, candidate_beams, beam: dict,
                 config: dict | None = None, rule_threshold: float = 1e-3, target: float = 0.99,
                 auto_apply: bool = True, stop_on_decision: bool = True, max_steps: int | None = None,
                 expected_run_length: float = 200.0, fsync: bool = False, resume: bool = False,
                 log: Callable[[str], None] | None = None, seed: int = 0, scorer: str = "laplace",
                 design: str = "allocation", lock: SessionLock | None = None, generate: dict | None = None,
                 learn_optics: dict | None = None):  # fmt: skip
        if design not in DESIGNS:
            raise InputError(f"unknown design {design!r}: expected one of {DESIGNS}")
        if not hypotheses:
            raise InputError("the library is empty: the session needs at least one hypothesis")
        self.dir = Path(directory)
        if resume and not (self.dir / "session.json").is_file():
            raise InputError(f"{self.dir}: not a session directory (no session.json)")
        if not resume and (self.dir / "record.jsonl").exists():  # checked again, under the lock, at the start
            raise InputError(
                f"{self.dir} already holds a session record; resume it with `hypotest session resume {self.dir}` "
                "or choose another directory"
            )
        self.hyps = list(hypotheses)
        self.model = model
        self.source = source
        self.candidates = [(str(lbl), dict(b)) for lbl, b in candidate_beams]
        for lbl, b in self.candidates:
            parse_beam(b, where=f"candidate beam {lbl!r}")
        self._beam = dict(beam)
        self._beam_label = self._label_of(self._beam)
        parsed = parse_beam(self._beam, where="initial beam")
        self.noise = noise_from_detector(parsed.beam.detector)
        self.live_config = make_live_config(scorer, self.noise, rule_threshold=rule_threshold, target=target,
                                            stop_on_decision=stop_on_decision)  # fmt: skip
        self.scorer_kind = scorer
        # new hypotheses from the host when the session is about to decide or the frames are
        # unexplained (hypotest.generate): {"elements": "Se,Cr@Mo", "kinds": [...], "prior_mass": 0.01}
        self.generate = None if generate is None else dict(generate)
        if self.generate is not None:
            from hypotest.generate import GENERATOR_KINDS, generated_priors, parse_elements

            parse_elements(self.generate.get("elements"))
            bad = [k for k in self.generate.get("kinds", ()) if k not in GENERATOR_KINDS]
            if bad:
                raise InputError(f"unknown generator kind(s) {bad}: expected some of {GENERATOR_KINDS}")
            generated_priors(np.ones(1), 1, float(self.generate.get("prior_mass", 0.01)))
        # HRTEM optics learned from the frames (_learn_optics): {"defocus_range": Å, "c12_sd": Å, "every": steps}
        self.learn_optics = None if learn_optics is None else {"defocus_range": 50.0, "c12_sd": 10.0, "every": 4,
                                                                "settle_sd": 5.0, **dict(learn_optics)}  # fmt: skip
        if self.learn_optics is not None:
            from inference import make_optics_prior

            make_optics_prior(0.0, defocus_range=self.learn_optics["defocus_range"], c12_sd=self.learn_optics["c12_sd"])
            if int(self.learn_optics["every"]) < 1:
                raise InputError(f"learn_optics every must be >= 1 step, got {self.learn_optics['every']!r}")
        self._optics_acc: dict[str, list] = {}
        self._optics_thread: threading.Thread | None = None
        self._optics_ready = None
        self._optics_fit_step = 0
        self._optics_settled = False
        self.optics_estimate: dict | None = None
        self.expected_run_length = float(expected_run_length)
        self._generated = False
        self._gen_thread: threading.Thread | None = None
        self._gen_ready = None
        self._sync = False
        self.design = design
        self.rule_threshold = float(rule_threshold)
        self.target = float(target)
        self.auto_apply = bool(auto_apply)
        self.stop_on_decision = stop_on_decision
        self.max_steps = max_steps
        self._log = log or (lambda s: None)
        self._seed = int(seed)
        self.images = StepImages(model)
        self.live: LiveState = init_live_state(self.live_config, [h.id for h in self.hyps], [h.name for h in self.hyps],
                                               [float(h.prior) for h in self.hyps],
                                               expected_run_length=expected_run_length)  # fmt: skip
        self._live_step = live_step
        cfg = {
            "hypotheses": [{"id": h.id, "name": h.name, "family": h.family, "prior": float(h.prior)} for h in self.hyps],
            "candidate_beams": [{"label": lbl, "beam": b} for lbl, b in self.candidates],
            "beam": self._beam, "rule": f"Bayes factor vs best < {self.rule_threshold:g}", "rule_threshold": self.rule_threshold,
            "target": self.target, "noise": {"kind": self.noise.kind}, "scorer": scorer, "design": design, "expected_run_length": expected_run_length,
            "created": time.time(), "seed": self._seed, "auto_apply": self.auto_apply, "stop_on_decision": stop_on_decision,
            "max_steps": max_steps, "fsync": bool(fsync), **(config or {}),
        }  # fmt: skip
        self.config = cfg
        self.fsync = bool(fsync)
        self._resume = bool(resume)
        self._dir_lock = lock
        self._writer: SessionWriter | None = None  # opened by start, run_sync or restore (the class docstring)
        self._refused: set[str] = set()  # beam keys the microscope refused (auto-apply passes them over)
        self._writer_lock = threading.Lock()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._pending: collections.deque[PendingFrame] = collections.deque()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subs: list[queue.Queue] = []
        self.state = "starting"
        self.connection = "connected"
        self.source_ended = False
        self.counters = {"received": 0, "scored": 0, "coalesced": 0, "rejected": 0, "bad_messages": 0}
        self._received_times: collections.deque[float] = collections.deque(maxlen=2000)
        self._latency = {s: collections.deque(maxlen=1000) for s in STAGES}
        self._next_index = 0
        self._history: list[dict] = []  # the recorded step lines
        self._rejection_log: dict[int, list[dict]] = collections.defaultdict(list)
        self._proposals: list[dict] = []
        self._propose_request = None
        self._latest: StepInfo | None = None  # the last step's scored frame, beam and fit
        self.error: str | None = None
        self.warnings: list[str] = []

    # ---------------------------------------------------------------- the state, read
    @property
    def decision(self) -> dict | None:
        return self.live.decision

    @property
    def _step(self) -> int:
        return self.live.step

    @property
    def _dose_used(self) -> float:
        return self.live.dose_used

    def view(self):
        """The posterior over the current segment (:class:`inference.TrackerInfo`)."""
        with self._lock:
            return self.live.view()

    # ---------------------------------------------------------------- plumbing
    @property
    def writer(self) -> SessionWriter:
        """The record's writer, opened (the directory locked, ``session.json`` written) on first use."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = SessionWriter(self.dir, self.config, resume=self._resume, fsync=self.fsync,
                                             lock=self._dir_lock)  # fmt: skip
            return self._writer

    def _open_record(self) -> None:
        """Open the record (lock the directory, write session.json) before anything else happens."""
        _ = self.writer

    def _label_of(self, beam: dict) -> str:
        key = beam_key(beam)
        for lbl, b in self.candidates:
            if beam_key(b) == key:
                return lbl
        return "custom"

    def _publish(self, event: dict) -> None:
        for q in list(self._subs):
            while True:
                try:
                    q.put_nowait(event)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()  # a slow consumer loses the oldest event
                    except queue.Empty:
                        pass

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=256)
        self._subs.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        if q in self._subs:
            self._subs.remove(q)

    # ---------------------------------------------------------------- threads
    def warm_up(self) -> float:
        """Simulate the images of every candidate beam and compile the scorer and the design step
        before the first frame, so the first frames do not wait for compilation; returns seconds."""
        t = time.perf_counter()
        self.model.prepare([self._beam] + [b for _, b in self.candidates])
        active = self.live.active()
        sc = self.images.scorer(self.live_config.scorer)
        shapes = set()
        for _, b in [("current", self._beam)] + self.candidates:
            prepared = self.images.prepared(b, active, self.live_config.scorer)
            if prepared.images.shape in shapes:  # one compiled scorer per frame shape
                continue
            shapes.add(prepared.images.shape)
            exposure = float(b["dose"]) * self.model.pixel_area_of(b)
            counts = np.asarray(prepared.images[0] * exposure, np.float32)
            ev = sc.score(counts, prepared, exposure, (0.0, 0.0))
            # the step's fit check too (its tables, scipy's normal law, the Fourier shift's compilation)
            step_fit_check(counts, np.asarray(prepared.images[0]), dataclasses.replace(ev, shift=np.full((len(active), 2), 0.25)),
                           0, exposure, self.noise, self.live_config.fit_rate)  # fmt: skip
            segment_fit((0.0, 0.0, 0.0, 0, 0), {"deviance": 1.0, "expected": 1.0, "sd": 1.0}, 0, self.live_config.fit_rate)
        if self.learn_optics is not None and parse_beam(self._beam).beam.detector.mode == "hrtem":
            # the optics fit's compilation (one per beam and hypothesis count), on the model's own image
            fn = self.model.optics_image_fn(self._beam)
            img = np.asarray(self.images.prepared(self._beam, active, self.live_config.scorer).images[0])
            exposure = float(self._beam["dose"]) * self.model.pixel_area_of(self._beam)
            w = np.asarray(self.model.exit_waves(self._beam)[: min(3, len(active))])[:, None]
            from inference import fit_optics, make_nuisance_prior, make_optics_prior, signal_relative_prior

            fit_optics((img * exposure)[None].astype(np.float32), w, fn, exposure, self.noise,
                       signal_relative_prior(make_nuisance_prior(), img[None]),
                       make_optics_prior(0.0, defocus_range=self.learn_optics["defocus_range"],
                                         c12_sd=self.learn_optics["c12_sd"]))  # fmt: skip
        self._propose(0, self.live.view(), active)
        return time.perf_counter() - t

    def _begin(self, warm_up: bool) -> None:
        """What starting takes, threaded or not: control checked, warm-up recorded, running."""
        if self._threads:
            raise InputError("the session is already running in the background")
        self._open_record()
        self._check_control()
        if warm_up:
            self.writer.append("warm_up", t=time.time(), seconds=round(self.warm_up(), 3))
        self.state = "running"

    def start(self, warm_up: bool = True) -> LiveSession:
        self._begin(warm_up)
        self._threads = [
            threading.Thread(target=self._ingest_loop, name="hypotest-ingest", daemon=True),
            threading.Thread(target=self._main_loop, name="hypotest-loop", daemon=True),
            threading.Thread(target=self._proposer_loop, name="hypotest-design", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the loop to finish; True if it did."""
        if not self._threads:
            return True
        self._threads[1].join(timeout)
        return not self._threads[1].is_alive()

    def run(self, timeout: float | None = None) -> dict:
        """Start, wait for the end (decision, end of source, max_steps), stop; returns :meth:`status`."""
        self.start()
        self.wait(timeout)
        self.stop()
        return self.status()

    def run_sync(self, max_steps: int | None = None, warm_up: bool = True) -> dict:
        """Run in the calling thread, one frame at a time, with the design step inline: frame ->
        score -> propose -> apply -> next frame. Deterministic (no coalescing, every proposal is
        applied before the next frame), for tests, benchmarks and scripted sessions."""
        self._begin(warm_up)
        self._sync = True
        limit = max_steps if max_steps is not None else self.max_steps
        try:
            while not self._finished() and (limit is None or self._step < limit):
                if not self._pending:
                    if self.source_ended:
                        break
                    for ev in self.source.poll(0.5):
                        self._source_event(ev)
                    continue
                p = self._pending.popleft()
                self._process([p])
                req, self._propose_request = self._propose_request, None
                if req is not None:
                    t = time.perf_counter()
                    self._proposals = self._propose(*req)
                    self._latency["propose"].append(time.perf_counter() - t)
                    self.writer.append("proposals", t=time.time(), step=req[0], proposals=self._proposals)
                    self._auto_apply(self._proposals)
        finally:
            if self.state == "running":
                self.state = "decided" if self.decision else "stopped"
            self.stop()
        return self.status()

    def _warn(self, message: str) -> None:
        """A warning for the operator: in the record, on the page (status ``warnings``) and the log."""
        with self._lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        self.writer.append("warning", t=time.time(), message=message)
        self._log(f"warning: {message}")
        self._publish({"type": "status", "status": self.status()})

    def _check_control(self) -> None:
        """A source that takes no beam commands cannot be steered: auto-apply goes off, with a
        warning (a beam proposed but never applied must not be assumed for the next frames)."""
        if self.auto_apply and not takes_control(self.source):
            with self._lock:
                self.auto_apply = False
            self.writer.append("auto_apply", t=time.time(), on=False, by="session",
                               reason="the source takes no beam commands")  # fmt: skip
            self._warn(f"the source ({getattr(self.source, 'name', type(self.source).__name__)}) takes no beam commands, so "
                       "auto-apply is off: proposals are shown for the operator, and frames are scored under the beam "
                       "their header names, else the session's beam")  # fmt: skip

    def stop(self, reason: str | None = None) -> None:
        if self._stop.is_set():
            return
        if reason is None:
            reason = "decision reached" if self.decision is not None else ("source ended" if self.source_ended else "stopped")
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(30)
        if self._writer is None:  # never started nor restored: nothing was recorded, nothing is
            self.source.close()
            if self._dir_lock is not None:
                self._dir_lock.release()
            if self.state in ("running", "starting"):
                self.state = "stopped"
            return
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
        for p in left:  # every frame gets a fate
            self.writer.append("fate", index=p.index, source_id=p.source_id, fate="unscored",
                               reason=f"the session stopped ({reason}) before this frame was scored")
        try:
            self.source.close()
        finally:
            if self.state in ("running", "starting"):
                self.state = "stopped"
            self.writer.append("stopped", t=time.time(), reason=reason, state=self.state, counters=dict(self.counters))
            self.writer.close()
            self._publish({"type": "stopped"})

    def _source_event(self, ev) -> None:
        if isinstance(ev, RawFrame):
            self._receive(ev)
        elif isinstance(ev, BadMessage):
            with self._lock:
                self.counters["bad_messages"] += 1
            extra = _sender_fields({"sender": ev.sender, "lost": ev.lost})
            self.writer.append("bad_message", t=ev.timestamp, source_id=ev.source_id, reason=ev.reason, **extra)
            self._log(f"bad message from the source: {ev.reason}")
        elif isinstance(ev, StreamEvent):
            self._stream_event(ev)

    def _ingest_loop(self) -> None:
        while not self._stop.is_set() and not self.source_ended:
            try:
                events = self.source.poll(0.05)
            except Exception as exc:  # a dropped stream: record it and poll again (reconnect)
                self._stream_event(StreamEvent("disconnected", time.time(), f"{type(exc).__name__}: {exc}"))
                time.sleep(0.2)
                continue
            for ev in events:
                self._source_event(ev)
        with self._cond:
            self._cond.notify_all()

    def _stream_event(self, ev: StreamEvent) -> None:
        self.writer.append("stream", t=ev.timestamp, event=ev.kind, detail=ev.detail)
        with self._cond:
            if ev.kind == "end":
                self.connection = "ended"
                self.source_ended = True
                self._cond.notify_all()
            elif ev.kind == "disconnected":
                self.connection = "disconnected"
            else:
                self.connection = "connected"
        self._publish({"type": "stream", "kind": ev.kind, "detail": ev.detail})

    def _receive(self, raw: RawFrame) -> None:
        t_recv = time.time()
        with self._lock:
            beam = dict(raw.beam) if raw.beam is not None else dict(self._beam)
            index = self._next_index
            self._next_index += 1
            self.counters["received"] += 1
            self._received_times.append(time.monotonic())
        label = self._label_of(beam)
        counts = np.asarray(raw.counts)
        who = _sender_fields(raw.meta)  # a ZeroMQ sender, for its accounting on resume
        self.writer.append_frame(counts, index=index, source_id=raw.source_id, t_source=raw.timestamp,
                                 t_received=t_recv, beam_label=label, beam=beam, **who)  # fmt: skip
        with self._cond:
            self._pending.append(PendingFrame(index, raw.source_id, counts, beam, label, raw.timestamp, t_recv))
            self._latency["ingest"].append(max(t_recv - raw.timestamp, 0.0))
            self._cond.notify_all()

    def _main_loop(self) -> None:
        try:
            while not self._finished():  # a resumed session may have reached its end already
                with self._cond:
                    while not self._pending and not self._stop.is_set() and not self.source_ended:
                        self._cond.wait(0.5)
                    if self._stop.is_set() or (not self._pending and self.source_ended):
                        break_now = True
                    else:
                        break_now = False
                if break_now:
                    with self._lock:
                        t = self._gen_thread
                    if t is not None and not self._stop.is_set():  # generated hypotheses still on their way
                        t.join(120.0)
                        self._take_generated()
                    break
                with self._cond:
                    batch = list(self._pending)
                    self._pending.clear()
                rest = self._process(batch)
                if rest:
                    with self._cond:
                        self._pending.extendleft(reversed(rest))
                if self._finished():
                    break
        except Exception as exc:  # the scoring loop died: recorded with the traceback, never silent
            import traceback

            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            self.writer.append("failed", t=time.time(), error=self.error, traceback=traceback.format_exc(),
                               hint=f"frames received but not scored stay in the record; resume with "
                                    f"`hypotest session resume {self.dir}`")  # fmt: skip
            self._log(f"the scoring loop failed: {self.error}; resume with `hypotest session resume {self.dir}`")
        finally:
            if self.state == "running":
                self.state = "decided" if self.decision else "stopped"
            self._publish({"type": "status", "status": self.status()})

    def _finished(self) -> bool:
        if self.decision is not None and self.stop_on_decision:
            return True
        return self.max_steps is not None and self._step >= self.max_steps

    # ---------------------------------------------------------------- one step
    def _process(self, batch: list[PendingFrame]) -> list[PendingFrame]:
        """One live step on ``batch``, recorded; returns the frames left for the next step."""
        self._take_generated()  # candidates made beside the loop join before the step
        self._take_optics()  # and optics learned beside it
        with self._lock:
            state = self.live
        new, info = self._live_step(state, batch, self.images)
        hold = None
        if self.generate is not None and info.entry is not None:
            fc = info.entry.get("fit_check") or {}
            unexplained = bool(fc.get("unexplained") or (fc.get("segment") or {}).get("unexplained"))
            if not self._generated and (info.decision is not None or unexplained):
                # before a decision stands, the best hypothesis must beat the structures generated
                # from the host (a directed check: the fit check alone has little power at low dose)
                hold = "unexplained frames" if unexplained else f"a decision for {info.decision['name']}"
            if (hold is not None or self._generation_pending()) and info.decision is not None:
                new = dataclasses.replace(new, decision=None)
                info = dataclasses.replace(info, decision=None)
        if (self.learn_optics is not None and info.decision is not None and not self._optics_settled
                and parse_beam(info.beam).beam.detector.mode == "hrtem"):  # fmt: skip
            # no decision before the optics are known to settle_sd of defocus (under the wrong
            # optics a wrong structure can look certain)
            new = dataclasses.replace(new, decision=None)
            info = dataclasses.replace(info, decision=None)
        for f in info.fates:
            self.writer.append("fate", **f)
            with self._lock:
                self.counters["rejected"] += 1
            self._log(f"rejected {f['reason']}")
        if info.entry is None:
            return list(info.rest)
        t3 = time.perf_counter()
        with self._cond:  # the design step runs beside the loop: only the newest request is served
            self.live = new
            # proposals for this step's posterior unless a decision stood before it (the step that
            # reaches the decision still proposes: the operator sees what would come next)
            self._propose_request = (new.step - 1, info.view, info.active) if state.decision is None else None
            self._cond.notify_all()
            proposals = list(self._proposals)
        handoff = time.perf_counter() - t3
        group = info.entry["frames"]
        now = time.time()
        t_recv = {p.index: p.t_received for p in batch}
        t_src = {p.index: p.t_source for p in batch}
        lat = {"ingest": float(np.mean([t_recv[i] - t_src[i] for i in group])), **info.timings, "handoff": handoff,
               "total": now - min(t_recv[i] for i in group)}  # fmt: skip
        for e in info.events:  # rejections and returns, before the step that made them
            rec = e.to_record()
            self.writer.append("rejection" if e.event == "rejected" else "return", **rec)
            with self._lock:
                self._rejection_log[e.index].append({"event": e.event, **rec})
        entry = self.writer.append("step", t=now, **info.entry, proposals=proposals, latency_s=lat)
        n = len(group)
        step = info.entry["step"]
        with self._lock:
            for s in STAGES:
                if s in lat:
                    self._latency[s].append(lat[s])
            self.counters["scored"] += 1
            self.counters["coalesced"] += n - 1
            self._history.append(entry)
            self._latest = info
        if n > 1:
            self._log(f"step {step}: {n} frames coalesced (scoring fell behind)")
        best = int(info.view.best)
        post = info.view.posterior
        fc = info.entry.get("fit_check") or {}
        self._log(f"step {step:3d} [{info.entry['beam_label']}] best {self.hyps[best].name:<36.36} P={post[best]:.4f} "
                  f"rejected {len(new.rejected)}/{len(self.hyps)}"
                  + (f"  UNEXPLAINED (fit z = {fc['z']:.1f}, p = {fc['p_value']:.2g})" if fc.get("unexplained") else "")
                  + (f"  UNEXPLAINED over {fc['segment']['steps']} steps (z = {fc['segment']['z']:.1f})"
                     if (fc.get("segment") or {}).get("unexplained") else ""))  # fmt: skip
        if info.decision is not None:
            self.writer.append("decision", **info.decision)
            self._log(f"decision at step {step}: {self.hyps[best].name} (P = {post[best]:.4f})")
        if self.learn_optics is not None:
            self._learn_optics(info, step)
        if hold is not None:
            self._start_generation(hold, step)
        newly = [e.hypothesis_id for e in info.events if e.event == "rejected"]
        returned = [e.hypothesis_id for e in info.events if e.event == "returned"]
        self._publish({"type": "step", "step": step, "posterior": post.tolist(), "ids": list(new.ids),
                       "status": self.status(), "new_rejections": newly, "returns": returned})  # fmt: skip
        return list(info.rest)

    def _proposer_loop(self) -> None:
        """Background design step: rank the candidate beams for the newest posterior; apply the
        best one when auto-apply is on."""
        while True:
            with self._cond:
                while self._propose_request is None and not self._stop.is_set() and self._threads[1].is_alive():
                    self._cond.wait(0.5)
                if self._stop.is_set() or self._propose_request is None:
                    return
                step, view, active = self._propose_request
                self._propose_request = None
            t = time.perf_counter()
            proposals = self._propose(step, view, active)
            seconds = time.perf_counter() - t
            with self._lock:
                if self.decision is not None:
                    continue
                self._proposals = proposals
                self._latency["propose"].append(seconds)
            self.writer.append("proposals", t=time.time(), step=step, seconds=seconds, proposals=proposals)
            self._publish({"type": "proposals", "step": step})
            self._auto_apply(proposals)

    def _auto_apply(self, proposals: list[dict]) -> None:
        """With auto-apply on, switch to the best proposal the microscope has not refused, if it is
        not the beam in use (a refused one is recorded once, not asked again)."""
        ok = [p for p in proposals if beam_key(p["beam"]) not in self._refused]
        if self.auto_apply and ok and beam_key(ok[0]["beam"]) != beam_key(self._beam):
            self._set_beam(ok[0]["beam"], ok[0]["label"], by="auto")

    def _propose(self, step: int, view, active: np.ndarray) -> list[dict]:
        if len(self.candidates) < 2:
            return []
        lp = view.log_posterior
        # The most probable active hypotheses, rejected ones included (their posterior is tiny): a
        # fixed number keeps the compiled design step's shapes, so it is not re-traced per step.
        live = sorted(active.tolist(), key=lambda i: -lp[i])[:PROPOSAL_HYPOTHESES]
        if len(live) < 2:
            return []
        imgs = [self.model.images(b)[live] for _, b in self.candidates]
        doses = [float(b["dose"]) for _, b in self.candidates]
        key = jax.random.fold_in(jax.random.key(self._seed + 1), step)
        pa = [self.model.pixel_area_of(b) for _, b in self.candidates]
        ranked = rank_conditions(key, imgs, doses, pa, lp[live], self.noise, n_samples=32,
                                 labels=[lbl for lbl, _ in self.candidates])  # fmt: skip
        alloc = allocate_conditions(imgs, doses, pa, lp[live], self.noise, target=self.target)
        by_index = {p.index: p for p in ranked}
        order = alloc.order if self.design == "allocation" else [p.index for p in ranked]
        out = []
        for c in order:
            p = by_index[c]
            alone = float(alloc.expected_dose_alone[c])
            out.append({
                "index": p.index, "label": p.label, "beam": self.candidates[p.index][1],
                "expected_gain_bits": p.expected_gain_bits, "gain_bits_per_electron": p.gain_bits_per_electron,
                "dose_share": float(alloc.weights[c]),
                "expected_dose_to_decision": alone if math.isfinite(alone) else None,
                "separates": [[self.hyps[live[a]].name, self.hyps[live[b]].name] for a, b in p.separates],
            })  # fmt: skip
        return out

    def _set_beam(self, beam: dict, label: str, by: str) -> dict:
        """Send ``beam`` to the microscope. The frames that follow (when their header names no beam)
        are scored under it only if it was applied: the source took it, or the operator set it
        (on a source without control, the operator's word is the only record of the microscope's
        state). An automatic choice the source did not take is recorded and never assumed."""
        parse_beam(beam, where="beam condition")
        refused = None
        try:
            result = self.source.apply_beam(beam)
        except BeamRefused as exc:  # the microscope cannot do it: recorded and shown, never assumed
            result, refused = False, str(exc)
            self._refused.add(beam_key(beam))
        sent = bool(result)
        applied = sent or (by == "operator" and refused is None)
        if applied:
            with self._lock:
                self._beam = dict(beam)
                self._beam_label = label
        extra = {"refused": refused} if refused is not None else {}
        if hasattr(result, "as_dict"):  # what the instrument was set to and read back (a Nion source)
            extra["instrument"] = result.as_dict()
        self.writer.append("beam", t=time.time(), step=self._step, label=label, beam=beam, by=by, sent_to_source=sent,
                           applied=applied, **extra)  # fmt: skip
        if refused is not None:
            self._warn(f"the microscope refused the beam {label!r} chosen {by}: {refused}; frames stay scored under "
                       f"{self._beam_label!r}")  # fmt: skip
        elif not applied:
            self._warn(f"the source did not take the beam {label!r} chosen {by}: frames stay scored under "
                       f"{self._beam_label!r}")  # fmt: skip
        self._publish({"type": "beam", "beam": beam, "label": label, "by": by, **extra})
        return {"label": label, "beam": beam, "sent_to_source": sent, "applied": applied, **extra}

    def restore(self, rec, note: dict | None = None) -> int:
        """Continue from a session record (:func:`hypotest.live.record.load_record`): the state is
        rebuilt from the recorded steps (:func:`hypotest.live.step.restore_state`), and frames
        received but never given a fate (in flight when the process died) are queued again.
        ``note``: more fields of the ``resumed`` line (the settings in force, the overrides).
        Returns how many were queued."""

        def rescore(index: int, event: dict) -> list[float]:  # records written before past evidence was kept
            return rescore_steps([s for s in rec.steps if s["step"] < event["step"]], rec.frame, self.images,
                                 self.live_config, index, self.live.ids)  # fmt: skip

        self.live = restore_state(self.live, rec.steps, rec.events, rescore=rescore)
        for st in rec.steps:
            self._history.append(st)
            self.counters["scored"] += 1
            self.counters["coalesced"] += st["coalesced"]
        col = {h: i for i, h in enumerate(self.live.ids)}
        returns = [e for e in rec.events if e["kind"] == "return"]
        for e in sorted(rec.rejections + returns, key=lambda e: e.get("step") or 0):  # stable: record order per step
            if e["id"] in col:
                event = "rejected" if e["kind"] == "rejection" else "returned"
                self._rejection_log[col[e["id"]]].append({"event": event, **{k: v for k, v in e.items() if k != "kind"}})
        self._next_index = len(rec.frame_lines)
        self.counters["received"] = len(rec.frame_lines)
        self.counters["rejected"] = sum(1 for f in rec.frames if f["fate"] == "rejected")
        self.counters["bad_messages"] = sum(1 for e in rec.events if e["kind"] == "bad_message")
        # the beam in use: the last one applied (older records: sent, or set by the operator)
        beams = [e for e in rec.events if e["kind"] == "beam"
                 and e.get("applied", e.get("sent_to_source", True) or e.get("by") == "operator")]  # fmt: skip
        if beams:
            self._beam, self._beam_label = dict(beams[-1]["beam"]), beams[-1]["label"]
            self.source.apply_beam(self._beam)
        if rec.decision is not None and rec.steps and self.stop_on_decision and self.live.decision is None:
            self.live = dataclasses.replace(self.live, decision={k: v for k, v in rec.decision.items() if k != "kind"})
        queued = 0
        for f in rec.frames:  # in flight at a crash (no fate), or left queued at a stop
            if f["fate"] in (None, "unscored"):
                fl = rec.frame_line(f["index"])
                self._pending.append(PendingFrame(f["index"], fl["source_id"], rec.frame(f["index"]), fl["beam"],
                                                  fl["beam_label"], fl["t_source"], fl["t_received"]))  # fmt: skip
                queued += 1
        self.writer.append("resumed", t=time.time(), steps=self._step, frames=self._next_index, requeued=queued,
                           **(note or {}))  # fmt: skip
        return queued

    # ---------------------------------------------------------------- SessionView (control)
    def apply_proposal(self, index: int) -> dict:
        with self._lock:
            props = list(self._proposals)
        match = [p for p in props if p["index"] == index]
        if not match:
            raise InputError(f"no proposal with index {index}; current proposals: {[p['index'] for p in props]}")
        return self._set_beam(match[0]["beam"], match[0]["label"], by="operator")

    def apply_beam(self, beam: dict) -> dict:
        b = dict(beam)
        parse_beam(b, where="beam")
        img_shape = self.model.frame_shape
        bf = parse_beam(b)
        if bf.beam.detector.mode == "4dstem":
            self.model.frame_shape_of(b)  # the scan step spans the cell and samples the probe's band limit
        elif not np.allclose(bf.sampling, self.model.pixel_sampling, rtol=1e-4):
            raise InputError(
                f"beam 'sampling' {b['sampling']} differs from the session's frame sampling "
                f"{[round(v, 6) for v in self.model.pixel_sampling]} Å (camera {img_shape[0]}x{img_shape[1]} px); change "
                "the optics, not the camera, during a session"
            )
        return self._set_beam(b, self._label_of(b), by="operator")

    def set_auto_apply(self, on: bool) -> dict:
        with self._lock:
            self.auto_apply = bool(on)
        self.writer.append("auto_apply", t=time.time(), on=bool(on), by="operator")
        return self.status()

    def _learn_optics(self, info, step: int) -> None:
        """The HRTEM optics learned from the frames (:func:`inference.fit_optics`), beside the loop:
        every ``every`` steps, the frames of the beam with the most dose so far, summed, against
        the three most probable hypotheses; the defocus offset and astigmatism of the best fitting
        one (profiled: the session then scores every hypothesis under them). :meth:`_take_optics`
        applies them when they differ from the calibration in use by more than 3 sd (and 1 Å of
        defocus or 2 Å of C12): they become the calibration (:meth:`ImageModel.set_calibration`),
        the posterior restarts at the prior (the steps before were scored against the wrong
        images), an ``optics`` line is recorded (replay and resume apply it at the same step), and
        the correction is offered ("set defocus to ...")."""
        beam = info.beam
        if parse_beam(beam).beam.detector.mode != "hrtem":
            return
        acc = self._optics_acc.setdefault(beam_key(beam), [0.0, 0.0, 0, beam])
        acc[0] = acc[0] + np.asarray(info.counts, np.float64)
        acc[1] += float(info.exposure)
        acc[2] += 1
        if step - self._optics_fit_step < int(self.learn_optics["every"]):
            return
        with self._lock:
            if self._optics_thread is not None:
                return
        self._optics_fit_step = step
        counts, exposure, _, b = max(self._optics_acc.values(), key=lambda a: a[1])
        view = self.live.view()
        active = [int(i) for i in np.argsort(view.posterior)[::-1] if i not in self.live.dropped][:3]
        args = (np.asarray(counts, np.float32), float(exposure), dict(b), active, step)
        if self._sync:
            with self._lock:
                self._optics_thread = threading.current_thread()
            self._optics_worker(*args)
            self._take_optics()
            return
        t = threading.Thread(target=self._optics_worker, args=args, name="hypotest-optics", daemon=True)
        with self._lock:
            self._optics_thread = t
        t.start()

    def _optics_worker(self, counts, exposure: float, b: dict, active: list, step: int) -> None:
        import jax.numpy as jnp

        from inference import fit_optics, make_nuisance_prior, make_optics_prior, signal_relative_prior

        t = time.perf_counter()
        result = None
        try:
            lo = self.learn_optics
            waves = self.model.exit_waves(b)
            w = np.asarray([waves[i] for i in active])[:, None]
            fn = self.model.optics_image_fn(b)
            commanded = -float(parse_beam(b).beam.aberrations.C10)
            prior = make_optics_prior(commanded, defocus_range=lo["defocus_range"], c12_sd=lo["c12_sd"])
            nominal = np.stack([np.asarray(fn(w[j, 0], jnp.zeros(3))) for j in range(len(active))])
            fit = fit_optics(counts[None], w, fn, exposure, self.noise,
                             signal_relative_prior(make_nuisance_prior(), jnp.asarray(nominal)), prior)  # fmt: skip
            j = int(np.argmax(fit.log_evidence))
            est = {**fit.estimate(j), "hypothesis": self.hyps[active[j]].id, "step": step,
                   "seconds": round(time.perf_counter() - t, 3),
                   "correction": f"set defocus to {2 * commanded - fit.estimate(j)['defocus_A']:.1f} Å for a true {commanded:.1f} Å"}  # fmt: skip
            result = (est, fit.theta[j, 0].copy(), np.sqrt(np.maximum(np.diag(fit.cov[j, 0]), 0.0)), commanded)
        except Exception as exc:  # never kills the session: the optics stay as they are
            self._warn(f"the optics could not be learned at step {step} ({type(exc).__name__}: {exc})")
        with self._lock:
            self._optics_ready = result if result is not None else False

    def _take_optics(self) -> None:
        """In the loop thread: apply the optics the worker learned (:meth:`_learn_optics`)."""
        with self._lock:
            ready, self._optics_ready = self._optics_ready, None
            if ready is not None:
                self._optics_thread = None
        if not ready:
            return
        est, theta, sd, commanded = ready
        d = np.abs(theta - self.model.calibration)
        moved = bool((d[0] > max(3 * sd[0], 1.0)) or (np.hypot(d[1], d[2]) > max(3 * float(np.hypot(sd[1], sd[2])), 2.0)))
        est["applied"] = moved
        with self._lock:
            self.optics_estimate = est
            self._optics_settled = self._optics_settled or float(sd[0]) <= float(self.learn_optics["settle_sd"])
        if not moved:
            return
        self.model.set_calibration(theta)
        self.images.clear()
        with self._lock:
            self.live = restart_posterior(self.live, self.expected_run_length)
            self._optics_acc.clear()  # the frames so far count once; the next fits use the frames from here
        self.writer.append("optics", t=time.time(), step=self._step, calibration=[float(v) for v in theta],
                           sd=[float(v) for v in sd], estimate=est, expected_run_length=self.expected_run_length)  # fmt: skip
        self._log(f"optics learned at step {est['step']} ({est['seconds']:.1f} s beside the loop): defocus "
                  f"{est['defocus_A']:.1f} ± {est['defocus_sd_A']:.1f} Å where {commanded:.1f} was set, C12 {est['c12_A']:.1f} ± "
                  f"{est['c12_sd_A']:.1f} Å; scored under them from step {self._step} (posterior restarted); {est['correction']}")  # fmt: skip
        self._publish({"type": "status", "status": self.status()})

    def _generation_pending(self) -> bool:
        with self._lock:
            return self._gen_thread is not None

    def _start_generation(self, why: str, step: int) -> None:
        """Make new hypotheses from the library's host beside the loop (:meth:`_generate_worker`);
        decisions are held until they have joined (:meth:`_take_generated`). Once per session."""
        self._generated = True
        # the beams of the recorded steps and the current one: what the candidates' past evidence
        # and the next steps need; the design step's other candidates are simulated when asked
        beams = {beam_key(b): b for b in [self._beam] + [e["beam"] for e in self._history]}
        if self._sync:  # run_sync is deterministic: the candidates are made and join right here
            with self._lock:
                self._gen_thread = threading.current_thread()
            self._generate_worker(why, step, list(beams.values()))
            self._take_generated()
            return
        t = threading.Thread(target=self._generate_worker, args=(why, step, list(beams.values())), name="hypotest-generate",
                             daemon=True)  # fmt: skip
        with self._lock:
            self._gen_thread = t
        t.start()

    def _generate_worker(self, why: str, step: int, beams: list) -> None:
        """The candidates (:mod:`hypotest.generate`) and their images under every beam the session
        has used or may propose, simulated by a model of their own (the loop's is not locked)."""
        from hypotest.fieldofview import analyse_library
        from hypotest.generate import generate_from_host, parse_elements
        from hypotest.live.model import ImageModel
        from hypotest.scoring import ScoringInput

        t = time.perf_counter()
        try:
            g = self.generate
            lib = [h for h in self.hyps if h.family != "generated"]
            host = lib[analyse_library(ScoringInput.from_hypotheses(lib)).host]
            kinds = tuple(g.get("kinds") or ("substitution", "vacancy"))
            new = generate_from_host(host, parse_elements(g.get("elements")), kinds, existing_ids=[h.id for h in self.hyps],
                                     origin=f"the live session {self.dir.name} at step {step} ({why})")  # fmt: skip
            self._log(f"checking {why}: {len(new)} hypotheses generated from host {host.name!r} ({', '.join(kinds)}); "
                      "simulating them beside the loop")  # fmt: skip
            images: list[dict] = [{} for _ in new]
            if new:
                st = self.model.settings
                other = ImageModel([h.specimen for h in new], sampling=st["sampling"], binning=st["binning"],
                                   slice_thickness=st["slice_thickness"], camera_gpts=st.get("camera_gpts"))  # fmt: skip
                for b in beams:
                    imgs = other.images(b)
                    for j in range(len(new)):
                        images[j][beam_key(b)] = imgs[j]
            result = (why, new, images, host, time.perf_counter() - t)
        except Exception as exc:  # never kills the session: the decision goes on without them
            result = (why, [], [], None, time.perf_counter() - t)
            self._warn(f"no hypotheses generated ({type(exc).__name__}: {exc})")
        with self._lock:
            self._gen_ready = result

    def _take_generated(self) -> None:
        """In the loop thread: add the candidates the worker finished (their past evidence from
        every recorded step, :meth:`add_hypothesis`) under the stated prior: together
        ``prior_mass`` of the prior, split equally."""
        with self._lock:
            ready, self._gen_ready = self._gen_ready, None
            if ready is not None:
                self._gen_thread = None
        if ready is None:
            return
        why, new, images, host, seconds = ready
        mass = float(self.generate.get("prior_mass", 0.01))
        total = float(sum(float(h.prior) for h in self.hyps if h.family != "generated"))
        prior = mass / (1.0 - mass) * total / max(len(new), 1)
        t = time.perf_counter()
        for h, imgs in zip(new, images):
            self.add_hypothesis({"name": h.name, "positions": np.asarray(h.specimen.positions).tolist(),
                                 "numbers": np.asarray(h.specimen.numbers).tolist(), "prior": prior, "family": "generated",
                                 "provenance": dict(h.provenance.notes).get("generated", "")}, images=imgs)  # fmt: skip
        if new:
            best = int(self.live.view().best)
            self._log(f"{len(new)} generated hypotheses joined ({seconds:.1f} s beside the loop, {time.perf_counter() - t:.2f} s "
                      f"in it); best now {self.hyps[best].name} (P = {self.live.view().posterior[best]:.4f})")  # fmt: skip

    def add_hypothesis(self, structure: dict, images: dict | None = None) -> dict:
        from hypotest.hypothesis import make_hypothesis
        from hypotest.live.record import load_record
        from library.provenance import Provenance

        if not isinstance(structure, dict):
            raise InputError("a hypothesis must be an object {name, prior, positions [[x,y,z]] Å, numbers [Z]}")
        missing = [k for k in ("name", "positions", "numbers") if k not in structure]
        if missing:
            raise InputError(f"new hypothesis: missing field(s) {missing}; need name, positions [[x,y,z]] Å, numbers [Z]")
        spec = make_specimen(structure["positions"], structure["numbers"], cell=self.model.cell)
        prior = float(structure.get("prior", 1.0))
        note = str(structure.get("provenance", ""))[:500]
        h = make_hypothesis(spec, name=str(structure["name"]), family=str(structure.get("family", "added")), prior=prior,
                            provenance=Provenance(source="added during the session",
                                                  notes=(("generated", note),) if note else ()))  # fmt: skip
        if any(x.id == h.id for x in self.hyps):
            raise InputError(f"hypothesis {h.name!r} has the same structure as an existing one (id {h.id})")
        with self._lock:
            i = self.model.add(spec, images=images)
            rec = load_record(self.dir) if self._history else None
            past = [] if rec is None else rescore_steps(self._history, rec.frame, self.images, self.live_config, i,
                                                        self.live.ids)  # fmt: skip
            self.live = add_hypothesis(self.live, h.id, h.name, prior, past)
            self.hyps.append(h)
            self.writer.append("hypothesis_added", t=time.time(), step=self._step, id=h.id, name=h.name, family=h.family,
                               prior=prior, past_log_evidence=past, **({"provenance": note} if note else {}),
                               structure={"positions": np.asarray(spec.positions).tolist(),
                                          "numbers": np.asarray(spec.numbers).tolist()})  # fmt: skip
        self._publish({"type": "hypotheses"})
        return self.hypothesis(h.id)

    def drop_hypothesis(self, hypothesis_id: str) -> dict:
        i = self._index(hypothesis_id)
        with self._lock:
            self.live = drop_hypothesis(self.live, i)
            self.writer.append("hypothesis_dropped", t=time.time(), step=self._step, id=hypothesis_id)
        self._publish({"type": "hypotheses"})
        return self.hypothesis(hypothesis_id)


def _sender_fields(meta) -> dict:
    """What a record line keeps of a source's report of who sent a frame (ZeroMQ ``RawFrame.meta``,
    :class:`hypotest.live.events.BadMessage`): ``sender`` and ``curve_sender`` (names),
    ``frame_id`` (the sender's number) and ``lost`` (a count), where present and well typed, so a
    resumed receiver can continue each sender's count (:func:`hypotest.live.resume.sender_counts`);
    from a microscope's own source (:class:`hypotest.live.nion.NionSource`) the ``channel``, the
    ``instrument`` readings at acquisition and the controls someone else moved
    (``instrument_changed``)."""
    if not isinstance(meta, dict):
        return {}
    out = {k: meta[k][:64] for k in ("sender", "curve_sender", "channel") if isinstance(meta.get(k), str)}
    for k in ("frame_id", "lost"):
        v = meta.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            out[k] = v
    inst = meta.get("instrument")  # an instrument's readings at acquisition (a Nion source), control -> value
    if isinstance(inst, dict) and len(inst) <= 32:
        out["instrument"] = {str(k)[:64]: float(v) for k, v in inst.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    moved = meta.get("instrument_changed")  # controls moved by someone else: {control: {"set", "read"}}
    if isinstance(moved, dict) and len(moved) <= 32:
        out["instrument_changed"] = {str(k)[:64]: {a: float(b) for a, b in v.items() if a in ("set", "read")}
                                     for k, v in moved.items() if isinstance(v, dict)}  # fmt: skip
    return out
