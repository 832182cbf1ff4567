"""The live session: frames in, posterior, rejections and proposed beam conditions out.

Two threads share one session:

- **ingest** polls the frame source (:class:`hypotest.live.events.FrameSource`) and, for every
  frame, appends its bytes and a ``frame`` line to the record *before* queueing it, so a frame is
  on disk before anything can go wrong with it; undecodable messages and connection changes are
  recorded as they come. A source that raises is recorded as disconnected and polled again.
- **loop** takes everything queued: preprocess (validation, dose normalisation, drift
  registration against the current best hypothesis) -> score the surviving hypotheses
  (:mod:`hypotest.live.scoring`: shift, scale and background marginalised per hypothesis, or,
  for large libraries, a registered frame scored by a binned screen plus exact survivors) ->
  posterior and change points (:class:`hypotest.live.tracking.SegmentTracker`) -> rejections
  and returns -> proposals (a design thread: the candidate beams ordered by Chernoff's
  allocation of the dose still needed to decide, :func:`inference.design.allocate_conditions`,
  each also with its expected information gain per electron,
  :func:`inference.design.rank_conditions`) -> apply (automatically, or when the operator
  clicks) -> record the step.

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
from hypotest.live.events import BadMessage, FrameSource, RawFrame, StreamEvent
from hypotest.live.model import beam_key
from hypotest.live.queries import SessionQueries
from hypotest.live.record import SessionWriter
from hypotest.live.scoring import make_step_scorer, register_shift
from hypotest.live.tracking import SegmentTracker
from inference import allocate_conditions, make_nuisance_prior, noise_from_detector, rank_conditions
from inference.noise import _check_counts

__all__ = ["LiveSession", "STAGES"]

STAGES = ("ingest", "preprocess", "score", "update", "propose", "total")
#: Proposals are ranked over at most this many most probable surviving hypotheses.
PROPOSAL_HYPOTHESES = 16
DESIGNS = ("allocation", "eig")


@dataclasses.dataclass
class _Pending:
    index: int
    source_id: int
    counts: np.ndarray
    beam: dict
    label: str
    t_source: float
    t_received: float


class LiveSession(SessionQueries):
    """A running session (module docstring). Use :func:`hypotest.live.sessions.make_demo_session`
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
        design: how proposals are ordered: ``"allocation"`` (Chernoff's allocation of the
            remaining dose, :func:`inference.allocate_conditions`) or ``"eig"`` (one-frame
            expected information gain per electron, :func:`inference.rank_conditions`); both
            figures are recorded with every proposal either way.
        resume: continue the record in ``directory`` (see :meth:`resume_from_record`).
    """

    def __init__(self, directory, *, hypotheses, model, source: FrameSource, candidate_beams, beam: dict,
                 config: dict | None = None, rule_threshold: float = 1e-3, target: float = 0.99,
                 auto_apply: bool = True, stop_on_decision: bool = True, max_steps: int | None = None,
                 expected_run_length: float = 200.0, fsync: bool = False, resume: bool = False,
                 log: Callable[[str], None] | None = None, seed: int = 0, scorer: str = "laplace",
                 design: str = "allocation"):  # fmt: skip
        if design not in DESIGNS:
            raise InputError(f"unknown design {design!r}: expected one of {DESIGNS}")
        if not hypotheses:
            raise InputError("the library is empty: the session needs at least one hypothesis")
        if not 0 < rule_threshold < 1:
            raise InputError(f"rejection threshold must be in (0, 1), got {rule_threshold!r}")
        if not 0.5 < target < 1:
            raise InputError(f"decision target must be in (0.5, 1), got {target!r}")
        self.dir = Path(directory)
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
        self._nprior = make_nuisance_prior()
        self.scorer_kind = scorer
        self.design = design
        self._score = make_step_scorer(scorer, self.noise, self._nprior, tuple(model.frame_shape))
        self.rule_threshold = float(rule_threshold)
        self.target = float(target)
        self.auto_apply = bool(auto_apply)
        self.stop_on_decision = stop_on_decision
        self.max_steps = max_steps
        self._log = log or (lambda s: None)
        self._seed = int(seed)
        self.tracker = SegmentTracker(np.log([float(h.prior) for h in self.hyps]), expected_run_length=expected_run_length)
        self._dropped: set[int] = set()
        cfg = {
            "hypotheses": [{"id": h.id, "name": h.name, "family": h.family, "prior": float(h.prior)} for h in self.hyps],
            "candidate_beams": [{"label": lbl, "beam": b} for lbl, b in self.candidates],
            "beam": self._beam, "rule": f"Bayes factor vs best < {self.rule_threshold:g}", "rule_threshold": self.rule_threshold,
            "target": self.target, "noise": {"kind": self.noise.kind}, "scorer": scorer, "design": design, "expected_run_length": expected_run_length,
            "created": time.time(), "seed": self._seed, **(config or {}),
        }  # fmt: skip
        self.config = cfg
        self.writer = SessionWriter(self.dir, cfg, resume=resume, fsync=fsync)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._pending: collections.deque[_Pending] = collections.deque()
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
        self._step = 0
        self._history: list[dict] = []  # per step: ids, posterior, frames, beam label, map
        self._rejected: dict[int, str] = {}
        self._rejection_log: dict[int, list[dict]] = collections.defaultdict(list)
        self._proposals: list[dict] = []
        self._propose_request = None
        self._latest: dict | None = None  # counts, images (active), fit, active idx
        self._dose_used = 0.0
        self.decision: dict | None = None
        self.error: str | None = None

    # ---------------------------------------------------------------- plumbing
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
        active = self._active()
        shapes = set()
        for _, b in [("current", self._beam)] + self.candidates:
            imgs = self.model.images(b)[active]
            if imgs.shape in shapes:  # one compiled scorer per frame shape
                continue
            shapes.add(imgs.shape)
            exposure = float(b["dose"]) * self.model.pixel_area_of(b)
            self._score(np.asarray(imgs[0] * exposure, np.float32), imgs, exposure, (0.0, 0.0),
                        cache_key=(beam_key(b), tuple(active.tolist())))
        self._propose(0, self.tracker.view(), active)
        return time.perf_counter() - t

    def start(self, warm_up: bool = True) -> LiveSession:
        if self._threads:
            raise InputError("the session is already running")
        if warm_up:
            self.writer.append("warm_up", t=time.time(), seconds=round(self.warm_up(), 3))
        self.state = "running"
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
        if self._threads:
            raise InputError("the session is already running in the background")
        if warm_up:
            self.writer.append("warm_up", t=time.time(), seconds=round(self.warm_up(), 3))
        self.state = "running"
        limit = max_steps if max_steps is not None else self.max_steps
        try:
            while not self._finished() and (limit is None or self._step < limit):
                if not self._pending:
                    if self.source_ended:
                        break
                    for ev in self.source.poll(0.5):
                        if isinstance(ev, RawFrame):
                            self._receive(ev)
                        elif isinstance(ev, BadMessage):
                            self.counters["bad_messages"] += 1
                            self.writer.append("bad_message", t=ev.timestamp, source_id=ev.source_id, reason=ev.reason)
                        else:
                            self._stream_event(ev)
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

    def _ingest_loop(self) -> None:
        while not self._stop.is_set() and not self.source_ended:
            try:
                events = self.source.poll(0.05)
            except Exception as exc:  # a dropped stream: record it and poll again (reconnect)
                self._stream_event(StreamEvent("disconnected", time.time(), f"{type(exc).__name__}: {exc}"))
                time.sleep(0.2)
                continue
            for ev in events:
                if isinstance(ev, RawFrame):
                    self._receive(ev)
                elif isinstance(ev, BadMessage):
                    with self._lock:
                        self.counters["bad_messages"] += 1
                    self.writer.append("bad_message", t=ev.timestamp, source_id=ev.source_id, reason=ev.reason)
                    self._log(f"bad message from the source: {ev.reason}")
                elif isinstance(ev, StreamEvent):
                    self._stream_event(ev)
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
        self.writer.append_frame(counts, index=index, source_id=raw.source_id, t_source=raw.timestamp,
                                 t_received=t_recv, beam_label=label, beam=beam)  # fmt: skip
        with self._cond:
            self._pending.append(_Pending(index, raw.source_id, counts, beam, label, raw.timestamp, t_recv))
            self._latency["ingest"].append(max(t_recv - raw.timestamp, 0.0))
            self._cond.notify_all()

    def _main_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stop.is_set() and not self.source_ended:
                        self._cond.wait(0.5)
                    if self._stop.is_set() or (not self._pending and self.source_ended):
                        break
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
    def _active(self) -> np.ndarray:
        return np.asarray([i for i in range(len(self.hyps)) if i not in self._dropped], dtype=int)

    def _process(self, batch: list[_Pending]) -> list[_Pending]:
        t0 = time.perf_counter()
        valid = []
        for p in batch:
            try:
                parse_beam(p.beam, where=f"frame {p.source_id} beam")
                c = _check_counts(p.counts, tuple(self.model.frame_shape_of(p.beam)), self.noise)
            except InputError as exc:
                reason = f"frame {p.source_id}: {exc}"
                self.writer.append("fate", index=p.index, source_id=p.source_id, fate="rejected", reason=reason)
                with self._lock:
                    self.counters["rejected"] += 1
                self._log(f"rejected {reason}")
                continue
            valid.append((p, c))
        if not valid:
            return []
        key = beam_key(valid[0][0].beam)
        group = [(p, c) for p, c in valid if beam_key(p.beam) == key]
        rest = [p for p, _ in valid if beam_key(p.beam) != key]
        beam = group[0][0].beam
        bc = parse_beam(beam, where="frame beam").beam
        counts = self.model.model_layout(beam, np.sum([c for _, c in group], axis=0, dtype=np.float32))
        n = len(group)
        dose = float(bc.dose) * n
        exposure = dose * self.model.pixel_area_of(beam)
        active = self._active()
        images = self.model.images(beam)[active]
        with self._lock:
            best_prev = int(self.tracker.view()["best"])
        ref = self.model.images(beam)[best_prev]
        drift = register_shift(counts, ref, shift_sd=float(self._nprior.shift_sd))
        mean_expected = float(np.mean(ref)) * exposure * float(bc.detector.gain)
        dose_ratio = float(np.mean(counts)) / mean_expected if mean_expected > 0 else float("nan")
        t1 = time.perf_counter()

        ev = self._score(counts, images, exposure, drift, cache_key=(key, tuple(active.tolist())))
        le_active = ev.log_evidence
        t2 = time.perf_counter()

        le = np.full(len(self.hyps), -np.inf)
        le[active] = le_active
        with self._lock:
            view = self.tracker.update(le)
            post = view["posterior"]
            l10 = view["log10_bayes_factor"]
            best = int(view["best"])
            self._step += 1
            step = self._step - 1
            self._dose_used += dose
            newly, returned = self._update_rejections(step, l10, best, [p.index for p, _ in group])
        t3 = time.perf_counter()

        with self._cond:  # the design step runs beside the loop: only the newest request is served
            self._propose_request = (step, view, active) if self.decision is None else None
            self._cond.notify_all()
            proposals = list(self._proposals)
        t4 = time.perf_counter()
        bi = int(np.flatnonzero(active == best)[0]) if best in active else 0
        fit = {
            "hypothesis": self.hyps[best].id,
            "scale": float(ev.scale[bi]), "scale_sd": float(ev.scale_sd[bi]),
            "background": float(ev.background[bi]), "background_sd": float(ev.background_sd[bi]),
            "shift_px": [float(v) for v in np.asarray(ev.shift[bi])],
            "shift_sd_px": [float(v) for v in np.asarray(ev.shift_sd[bi])],
        }  # fmt: skip
        now = time.time()
        lat = {"ingest": float(np.mean([p.t_received - p.t_source for p, _ in group])),
               "preprocess": t1 - t0, "score": t2 - t1, "update": t3 - t2, "handoff": t4 - t3,
               "total": now - min(p.t_received for p, _ in group)}  # fmt: skip
        ids = [h.id for h in self.hyps]
        entry = self.writer.append(
            "step", step=step, t=now, frames=[p.index for p, _ in group], source_ids=[p.source_id for p, _ in group],
            coalesced=n - 1, beam_label=group[0][0].label, beam=beam, dose_e_per_A2=dose, ids=ids,
            log_evidence=le.tolist(), posterior=post.tolist(), log10_bayes_factor=l10.tolist(),
            rejected={ids[i]: r for i, r in sorted(self._rejected.items())}, proposals=proposals, fit=fit,
            drift_px=list(drift), screen_error_bound=ev.screen_error_bound, dose_ratio=dose_ratio, segment_start=view["segment_start"],
            change_point=bool(view["change_point"]), map_state=ids[best], latency_s=lat,
        )  # fmt: skip
        with self._lock:
            for s in STAGES:
                if s in lat:
                    self._latency[s].append(lat[s])
            self.counters["scored"] += 1
            self.counters["coalesced"] += n - 1
            self._history.append(entry)
            self._latest = {"counts": counts, "beam": beam, "active": active, "exposure": exposure, "ev": ev}
        if n > 1:
            self._log(f"step {step}: {n} frames coalesced (scoring fell behind)")
        self._log(f"step {step:3d} [{group[0][0].label}] best {self.hyps[best].name:<36.36} P={post[best]:.4f} "
                  f"rejected {len(self._rejected)}/{len(self.hyps)}")  # fmt: skip
        if post[best] >= self.target and self.decision is None:
            self.decision = {"id": self.hyps[best].id, "name": self.hyps[best].name, "posterior": float(post[best]),
                             "step": step, "dose_used_e_per_A2": self._dose_used,
                             "frames": sum(len(h["frames"]) for h in self._history)}  # fmt: skip
            self.writer.append("decision", **self.decision)
            self._log(f"decision at step {step}: {self.hyps[best].name} (P = {post[best]:.4f})")
        elif self.decision is not None and post[best] < self.target and not self.stop_on_decision:
            self.decision = None  # a switch undid it
        self._publish({"type": "step", "step": step, "posterior": post.tolist(), "ids": ids,
                       "status": self.status(), "new_rejections": newly, "returns": returned})  # fmt: skip
        return rest

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
        """With auto-apply on, switch to the best proposal if it is not the beam in use."""
        if self.auto_apply and proposals and beam_key(proposals[0]["beam"]) != beam_key(self._beam):
            self._set_beam(proposals[0]["beam"], proposals[0]["label"], by="auto")

    def _update_rejections(self, step, l10, best, frames) -> tuple[list[str], list[str]]:
        thr = math.log10(self.rule_threshold)
        newly, returned = [], []
        for i in range(len(self.hyps)):
            if i in self._dropped:
                continue
            below = bool(l10[i] < thr)
            if below and i not in self._rejected:
                reason = (f"Bayes factor 10^{l10[i]:.1f} against {self.hyps[best].name} is below the rule "
                          f"(< {self.rule_threshold:g}) after {len(self.tracker._le) - self.tracker.segment_start} "
                          f"step(s) of the current segment, {self._dose_used:g} e-/Å² used")  # fmt: skip
                self._rejected[i] = reason
                rec = {"id": self.hyps[i].id, "name": self.hyps[i].name, "step": step, "log10_bayes_factor": float(l10[i]),
                       "frames": frames, "dose_e_per_A2": self._dose_used, "reason": reason}  # fmt: skip
                self.writer.append("rejection", **rec)
                self._rejection_log[i].append({"event": "rejected", **rec})
                newly.append(self.hyps[i].id)
            elif not below and i in self._rejected:
                del self._rejected[i]
                rec = {"id": self.hyps[i].id, "name": self.hyps[i].name, "step": step, "log10_bayes_factor": float(l10[i]),
                       "reason": "the Bayes factor rose above the rule again (new segment or new evidence)"}  # fmt: skip
                self.writer.append("return", **rec)
                self._rejection_log[i].append({"event": "returned", **rec})
                returned.append(self.hyps[i].id)
        return newly, returned

    def _propose(self, step: int, view: dict, active: np.ndarray) -> list[dict]:
        if len(self.candidates) < 2:
            return []
        lp = view["log_posterior"]
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
        parse_beam(beam, where="beam condition")
        sent = self.source.apply_beam(beam)
        with self._lock:
            self._beam = dict(beam)
            self._beam_label = label
        self.writer.append("beam", t=time.time(), step=self._step, label=label, beam=beam, by=by, sent_to_source=bool(sent))
        self._publish({"type": "beam", "beam": beam, "label": label, "by": by})
        return {"label": label, "beam": beam, "sent_to_source": bool(sent)}

    def restore(self, rec) -> int:
        """Continue from a session record (:func:`hypotest.live.record.load_record`): the posterior
        is rebuilt from the recorded per-step log evidence, and frames received but never given a
        fate (in flight when the process died) are queued again. Returns how many were queued."""
        col = {h.id: i for i, h in enumerate(self.hyps)}
        for e in rec.events:
            if e["kind"] == "hypothesis_dropped" and e["id"] in col:
                self._dropped.add(col[e["id"]])
                self.tracker.drop(col[e["id"]])
        for st in rec.steps:
            le = np.full(len(self.hyps), -np.inf)
            for h, v in zip(st["ids"], st["log_evidence"]):
                le[col[h]] = -np.inf if v is None else v
            view = self.tracker.update(le)
            self._history.append(st)
            self._dose_used += st["dose_e_per_A2"]
            self.counters["scored"] += 1
            self.counters["coalesced"] += st["coalesced"]
        self._step = len(rec.steps)
        self._rejected = {col[h]: r for h, r in (rec.steps[-1]["rejected"] if rec.steps else {}).items()}
        self._next_index = len(rec.frame_lines)
        self.counters["received"] = len(rec.frame_lines)
        self.counters["rejected"] = sum(1 for f in rec.frames if f["fate"] == "rejected")
        self.counters["bad_messages"] = sum(1 for e in rec.events if e["kind"] == "bad_message")
        beams = [e for e in rec.events if e["kind"] == "beam"]
        if beams:
            self._beam, self._beam_label = dict(beams[-1]["beam"]), beams[-1]["label"]
            self.source.apply_beam(self._beam)
        if self.decision is None and rec.decision is not None and rec.steps and self.stop_on_decision:
            self.decision = {k: v for k, v in rec.decision.items() if k != "kind"}
        queued = 0
        for f in rec.frames:  # in flight at a crash (no fate), or left queued at a stop
            if f["fate"] in (None, "unscored"):
                fl = rec.frame_lines[f["index"]]
                self._pending.append(_Pending(f["index"], fl["source_id"], rec.frame(f["index"]), fl["beam"],
                                              fl["beam_label"], fl["t_source"], fl["t_received"]))  # fmt: skip
                queued += 1
        self.writer.append("resumed", t=time.time(), steps=self._step, frames=self._next_index, requeued=queued)
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
        self.writer.append("auto_apply", t=time.time(), on=bool(on))
        return self.status()

    def add_hypothesis(self, structure: dict) -> dict:
        from hypotest.hypothesis import make_hypothesis
        from library.provenance import Provenance

        if not isinstance(structure, dict):
            raise InputError("a hypothesis must be an object {name, prior, positions [[x,y,z]] Å, numbers [Z]}")
        missing = [k for k in ("name", "positions", "numbers") if k not in structure]
        if missing:
            raise InputError(f"new hypothesis: missing field(s) {missing}; need name, positions [[x,y,z]] Å, numbers [Z]")
        spec = make_specimen(structure["positions"], structure["numbers"], cell=self.model.cell)
        prior = float(structure.get("prior", 1.0))
        h = make_hypothesis(spec, name=str(structure["name"]), family=str(structure.get("family", "added")), prior=prior,
                            provenance=Provenance(source="added during the session"))  # fmt: skip
        if any(x.id == h.id for x in self.hyps):
            raise InputError(f"hypothesis {h.name!r} has the same structure as an existing one (id {h.id})")
        with self._lock:
            i = self.model.add(spec)
            past = self._rescore_past(i)
            self.hyps.append(h)
            base = np.log([float(x.prior) for x in self.hyps[:-1]]).max() if len(self.hyps) > 1 else 0.0
            self.tracker.add(math.log(prior) - base + float(self.tracker._lp.max()), past)
            self.writer.append("hypothesis_added", t=time.time(), step=self._step, id=h.id, name=h.name, family=h.family,
                               prior=prior, structure={"positions": np.asarray(spec.positions).tolist(),
                                                       "numbers": np.asarray(spec.numbers).tolist()})  # fmt: skip
        self._publish({"type": "hypotheses"})
        return self.hypothesis(h.id)

    def _rescore_past(self, i: int) -> list[float]:
        """Log evidence of hypothesis ``i`` for every past step, from the frames in the record."""
        from hypotest.live.record import load_record

        out = []
        if not self._history:
            return out
        rec = load_record(self.dir)
        for e in self._history:
            counts = self.model.model_layout(e["beam"], np.sum([rec.frame(j).astype(np.float32) for j in e["frames"]], axis=0))
            exposure = e["dose_e_per_A2"] * self.model.pixel_area_of(e["beam"])
            img = self.model.images(e["beam"])[i : i + 1]
            out.append(float(self._score(counts, img, exposure, tuple(e["drift_px"])).log_evidence[0]))
        return out

    def drop_hypothesis(self, hypothesis_id: str) -> dict:
        i = self._index(hypothesis_id)
        with self._lock:
            if i in self._dropped:
                raise InputError(f"hypothesis {hypothesis_id!r} is already dropped")
            if len(self._dropped) + 1 >= len(self.hyps):
                raise InputError("cannot drop the last hypothesis of the session")
            self._dropped.add(i)
            self._rejected.pop(i, None)
            self.tracker.drop(i)
            self.writer.append("hypothesis_dropped", t=time.time(), step=self._step, id=hypothesis_id)
        self._publish({"type": "hypotheses"})
        return self.hypothesis(hypothesis_id)
