"""A live session on frames of any field of view: every frame registered, a posterior per site
that accumulates over frames, and proposals that target the sites still undecided.

    session = FieldOfViewSession(out, hypotheses=hyps, beam=beam, source=source)
    session.run_sync()            # or start() / wait() / stop(), threaded like LiveSession

The first frame builds a :class:`hypotest.fieldofview.FieldOfViewScorer` (the library analysed,
the host lattice registered, the sites enumerated, every hypothesis simulated once); each later
frame is registered against the host lattice with its offset followed from the previous frame's
(the offset change is the drift) and adds its log evidence to every site it holds (the same site
in the specimen's frame, whatever the drift; sites that drift out of the field get no evidence
from that frame, and sites it brings into view are added, after the others: ``new_sites`` of the
step). A site's posterior is therefore the one :func:`hypotest.fieldofview.score_field_of_view`
gives on the stack of the same frames (tested). The fit check and the site views use the latest
frame's windows.

**Design.** The proposal targets the undecided sites (fit ok, best posterior below the decision
threshold): each one's log odds of its best against its runner-up is its prior odds plus ``n``
frames times ``rate``, the mean log likelihood ratio per frame so far (the log evidence of
independent frames adds). With ``T = log(P/(1-P))`` for the threshold ``P`` and ``m`` the current
log odds, it needs ``(T - m) / rate`` more frames when the best gains (``rate > 0``), and
``(T + m) / |rate|`` when the runner-up gains and will overtake it (infinite when neither gains). The proposal is the rectangle of the frame that
holds the undecided sites, with the frames (dose) the median of them needs; ``expected_gain_bits``
is the entropy of those sites' posteriors (the most a decisive rescan can tell). The scan source
decides whether it can take a region; the simulated one cannot (``sent_to_source`` false).

**Record.** As the one-cell session's (:mod:`hypotest.live.record`): every frame's bytes and its
``frame`` line before it is scored, then a ``fov_step`` line per frame (calibration, drift, counts
per type, timings), and ``sites.json`` (the RESULT.json form, written atomically after every
step), so a crash loses no frame and ``hypotest score --frames`` on the recorded frames gives the
same sites. A field-of-view session is not resumed (``hypotest session resume`` refuses it).

The session implements :class:`hypotest.live.view.SessionView` plus :meth:`sites` and :meth:`site`
(the dashboard's ``/api/sites``); adding or dropping hypotheses and applying beams are refused
with the reason.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from forward import InputError
from hypotest.beamfile import parse_beam
from hypotest.live.events import BadMessage, FrameSource, RawFrame, StreamEvent
from hypotest.live.record import SessionWriter

__all__ = ["FieldOfViewSession", "undecided_design", "replay_fov_record"]

STAGES = ("ingest", "preprocess", "score", "update", "propose", "total")


def undecided_design(result: dict, scorer, decide_p: float, beam: dict, frames: int) -> list[dict]:
    """The proposal for the undecided sites of ``result`` (module docstring), ``[]`` when none is left."""
    sites = [s for s in result["sites"] if s["status"] == "ok" and not s["decided"]]
    dose = float(beam["dose"])
    if not sites:
        return []
    need, ent, pairs = [], 0.0, {}
    target = math.log(decide_p / (1 - decide_p))
    names = dict(zip(scorer.hyps.ids, scorer.hyps.names))
    for s in sites:
        p = np.array(sorted(s["posterior"].values(), reverse=True))
        p = np.clip(p, 1e-300, 1.0)
        ent -= float(np.sum(p * np.log2(p)))
        margin = math.log(p[0]) - math.log(p[1]) if len(p) > 1 else math.inf
        # the log odds of best against runner-up: prior odds + frames x rate (the evidence per frame),
        # counting the frames since the site came into view
        rate = (margin - _prior_margin(s, scorer)) / max(min(frames, scorer.frames_held(s["k"])), 1)
        if rate > 1e-9:  # the best gains: it reaches the threshold
            need.append(math.ceil((target - margin) / rate))
        elif rate < -1e-9:  # the runner-up gains: it overtakes and reaches the threshold
            need.append(math.ceil((target + margin) / -rate))
        else:
            need.append(math.inf)
        ranked = sorted(s["posterior"], key=s["posterior"].get, reverse=True)[:2]
        key = tuple(names[h].split(" @")[0] for h in ranked)
        pairs[key] = pairs.get(key, 0) + 1
    finite = sorted(n for n in need if math.isfinite(n))
    fit = scorer.frames[-1].fit  # the region in the latest frame's pixels (the stage has drifted)
    now = (np.array([[s["x_A"], s["y_A"]] for s in sites]) - fit.t) @ np.linalg.inv(fit.m).T
    x, y = now[:, 0].tolist(), now[:, 1].tolist()
    r = scorer.wpx
    region = [max(0, int(min(x)) - r), min(scorer.shape[0] - 1, int(math.ceil(max(x))) + r),
              max(0, int(min(y)) - r), min(scorer.shape[1] - 1, int(math.ceil(max(y))) + r)]  # fmt: skip
    n_more = finite[len(finite) // 2] if finite else None
    area = (region[1] - region[0] + 1) * (region[3] - region[2] + 1) * float(np.prod(scorer.bf.sampling))
    beam = {**beam, "scan_region_px": region}
    label = (f"rescan x {region[0]}-{region[1]}, y {region[2]}-{region[3]} px: {len(sites)} undecided sites, "
             + (f"median {n_more} more frames ({n_more * dose:.3g} e-/Å²)" if n_more is not None else
                "their evidence is not growing (more dose will not decide them)"))  # fmt: skip
    return [{
        "index": 0, "label": label, "beam": beam, "expected_gain_bits": ent,
        "gain_bits_per_electron": ent / (dose * area) if n_more is None else ent / (n_more * dose * area),
        "dose_share": 1.0, "expected_dose_to_decision": None if n_more is None else float(n_more * dose),
        "separates": [list(k) for k, _ in sorted(pairs.items(), key=lambda kv: -kv[1])[:5]],
        "sites": [s["k"] for s in sites], "frames_needed": [None if not math.isfinite(n) else int(n) for n in need],
    }]  # fmt: skip


def _prior_margin(site: dict, scorer) -> float:
    """log prior odds of the site's best against its runner-up."""
    ranked = sorted(site["posterior"], key=site["posterior"].get, reverse=True)[:2]
    if len(ranked) < 2:
        return 0.0
    host = scorer.hyps.ids[scorer.geo.host]
    cls = [c for c, (lab, _) in enumerate(scorer.geo.classes) if lab == site["class"]][0]
    members = scorer.classes[cls]["members"]
    pri = np.array([float(scorer.hyps.priors[h]) for h in members])
    ids = [scorer.hyps.ids[h] for h in members]

    def lp(h):
        if h == host:
            return math.log(1 - scorer.defect_prior)
        return math.log(scorer.defect_prior * pri[ids.index(h)] / pri[1:].sum())

    return lp(ranked[0]) - lp(ranked[1])


class FieldOfViewSession:
    """A live session on frames of one field of view (module docstring).

    Args:
        directory: the session record directory.
        hypotheses: :class:`hypotest.hypothesis.Hypothesis` list (per-defect supercells of one host).
        beam: BEAM.json form; ``sampling`` is the nominal pixel size.
        source: the frame source (frames of one shape).
        config: extra ``session.json`` fields.
        images: the hypotheses' periodic images when already simulated (``[H, gx, gy]``).
        host_id, defect_prior, decide_p, fit_alpha, detector, optics: as :func:`hypotest.fieldofview.score_field_of_view`.
        max_frames: stop after this many frames (None: until the source ends or :meth:`stop`).
        stop_on_decision: stop when no site is left undecided.
    """

    def __init__(self, directory, *, hypotheses, beam: dict, source: FrameSource, config: dict | None = None,
                 images=None, host_id: str | None = None, defect_prior: float | None = None, decide_p: float | None = None,
                 fit_alpha: float = 0.01, detector: str = "beam", optics: str = "beam", max_frames: int | None = None,
                 stop_on_decision: bool = False, log: Callable[[str], None] | None = None, progress=None,
                 fsync: bool = False, grow_sites: bool = True):  # fmt: skip
        from hypotest.fieldofview import DECIDE_P, DEFECT_PRIOR, analyse_library
        from hypotest.scoring import ScoringInput

        self.dir = Path(directory)
        self.hyps = list(hypotheses)
        self.inputs = ScoringInput.from_hypotheses(self.hyps)
        self.bf = parse_beam(beam, where="beam")
        self._beam = dict(beam)
        self.source = source
        self.geo = analyse_library(self.inputs, host_id)  # a library that is not one host's defects: refused now
        self.options = {"host_id": host_id, "defect_prior": DEFECT_PRIOR if defect_prior is None else float(defect_prior),
                        "decide_p": DECIDE_P if decide_p is None else float(decide_p), "fit_alpha": float(fit_alpha),
                        "detector": detector, "optics": optics, "grow_sites": bool(grow_sites)}  # fmt: skip
        if not 0 < self.options["defect_prior"] < 1:
            raise InputError(f"the defect prior must be in (0, 1), got {defect_prior!r}")
        self._images = images
        self.config = {"kind": "field_of_view", "library": "", **(config or {}), "beam": self._beam, **self.options,
                       "max_frames": max_frames,
                       "hypotheses": [{"id": h.id, "name": h.name} for h in self.hyps]}  # fmt: skip
        self.max_frames = max_frames
        self.stop_on_decision = bool(stop_on_decision)
        self.log = log or (lambda s: None)
        self.progress = progress
        self._fsync = fsync
        self._lock = threading.RLock()
        self._subs: list[queue.Queue] = []
        self._pending: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop_event = threading.Event()
        self.writer: SessionWriter | None = None
        self.scorer = None
        self.result: dict | None = None
        self._proposals: list[dict] = []
        self._history: list[dict] = []
        self.state = "starting"
        self.connection = "connected"
        self.error: str | None = None
        self.counters = {"received": 0, "scored": 0, "coalesced": 0, "rejected": 0, "bad_messages": 0}
        self._latency = {s: [] for s in STAGES}
        self._received_times: list[float] = []
        self._index = 0
        self.source_ended = False
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ running
    def _open(self) -> None:
        if self.writer is None:
            self.writer = SessionWriter(self.dir, self.config, fsync=self._fsync)
        self.state = "running"

    def start(self) -> FieldOfViewSession:
        if self._threads:
            raise InputError("the session is already running in the background")
        self._open()
        self._threads = [threading.Thread(target=self._ingest_loop, name="hypotest-fov-ingest", daemon=True),
                         threading.Thread(target=self._main_loop, name="hypotest-fov-loop", daemon=True)]  # fmt: skip
        for t in self._threads:
            t.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        if not self._threads:
            return True
        self._threads[1].join(timeout)
        return not self._threads[1].is_alive()

    def run_sync(self, max_frames: int | None = None) -> dict:
        """Frames scored in the calling thread, one at a time, until the source ends (deterministic)."""
        self._open()
        limit = max_frames if max_frames is not None else self.max_frames
        try:
            while not self._stop_event.is_set() and (limit is None or self.counters["scored"] + self.counters["rejected"] < limit):
                if self._pending.empty():
                    if self.source_ended:
                        break
                    for ev in self.source.poll(0.5):
                        self._source_event(ev)
                    continue
                self._process(self._pending.get())
        finally:
            self.stop()
        return self.status()

    def stop(self, reason: str | None = None) -> None:
        """Stop the threads, give every queued frame its fate, close the record (idempotent)."""
        self._stop_event.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(30.0)
        with self._lock:
            if self.writer is not None:
                while not self._pending.empty():
                    p = self._pending.get()
                    self.writer.append("fate", index=p["index"], source_id=p["source_id"], fate="unscored",
                                       reason="the session stopped before it was scored")  # fmt: skip
                self.writer.append("stopped", t=time.time(), reason=reason or "", state=self._final_state())
                self.writer.close()
                self.writer = None
            if self.state in ("starting", "running"):
                self.state = self._final_state()
        try:
            self.source.close()
        except Exception:  # noqa: BLE001 - closing must not mask the session's own end
            pass
        self._publish({"type": "stopped"})

    def _final_state(self) -> str:
        if self.state == "failed":
            return "failed"
        return "decided" if self.result is not None and not self._undecided() else "stopped"

    def _undecided(self) -> int:
        return 0 if self.result is None else sum(1 for s in self.result["sites"] if s["status"] == "ok" and not s["decided"])

    def _ingest_loop(self) -> None:
        while not self._stop_event.is_set() and not self.source_ended:
            try:
                events = self.source.poll(0.2)
            except Exception as exc:  # noqa: BLE001 - a source that fails is recorded and polled again
                self.connection = "disconnected"
                with self._lock:
                    if self.writer is not None:
                        self.writer.append("stream", t=time.time(), event="disconnected", detail=str(exc)[:500])
                time.sleep(0.2)
                continue
            for ev in events:
                self._source_event(ev)

    def _main_loop(self) -> None:
        try:
            while not self._stop_event.is_set():
                if self.max_frames is not None and self.counters["scored"] + self.counters["rejected"] >= self.max_frames:
                    break
                try:
                    p = self._pending.get(timeout=0.1)
                except queue.Empty:
                    if self.source_ended:
                        break
                    continue
                self._process(p)
                if self.stop_on_decision and self.result is not None and not self._undecided():
                    break
        except Exception as exc:  # noqa: BLE001 - the loop's failure is the session's state, with the reason
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            self.log(f"field-of-view session failed: {self.error}")

    def _source_event(self, ev) -> None:
        if isinstance(ev, RawFrame):
            self._receive(ev)
        elif isinstance(ev, BadMessage):
            with self._lock:
                self.counters["bad_messages"] += 1
                self.writer.append("bad_message", t=ev.timestamp, source_id=ev.source_id, reason=ev.reason)
        elif isinstance(ev, StreamEvent):
            with self._lock:
                self.connection = "ended" if ev.kind == "end" else ("connected" if ev.kind != "disconnected" else "disconnected")
                self.writer.append("stream", t=ev.timestamp, event=ev.kind, detail=ev.detail)
                if ev.kind == "end":
                    self.source_ended = True
            self._publish({"type": "stream", "kind": ev.kind, "detail": ev.detail})

    def _receive(self, raw: RawFrame) -> None:
        """The frame's bytes and line on disk first, then queued."""
        t = time.time()
        counts = np.asarray(raw.counts)
        with self._lock:
            index = self._index
            self._index += 1
            self.writer.append_frame(counts, index=index, source_id=int(raw.source_id), t_source=float(raw.timestamp),
                                     t_received=t, beam=raw.beam)  # fmt: skip
            self.counters["received"] += 1
            self._received_times = [x for x in self._received_times[-50:]] + [time.monotonic()]
        self._pending.put({"index": index, "source_id": int(raw.source_id), "counts": counts, "t_received": t,
                           "beam": raw.beam, "t_mono": time.monotonic()})  # fmt: skip

    def _refuse(self, p: dict, reason: str) -> None:
        with self._lock:
            self.counters["rejected"] += 1
            self.writer.append("fate", index=p["index"], source_id=p["source_id"], fate="rejected", reason=reason)
        self.log(f"frame {p['source_id']} refused: {reason}")

    def _process(self, p: dict) -> None:
        """Score one frame (the first one builds the scorer), record the step, update the view."""
        from hypotest.fieldofview import FieldOfViewScorer

        t0 = time.perf_counter()
        counts = p["counts"]
        if p["beam"] is not None and parse_beam(p["beam"]).beam.dose != self.bf.beam.dose:
            return self._refuse(p, f"frame {p['source_id']}: its beam's dose {p['beam'].get('dose')} e-/Å² is not the "
                                   f"session's {float(self.bf.beam.dose):g}: a field-of-view session keeps one beam")  # fmt: skip
        if counts.ndim != 2 or not np.issubdtype(counts.dtype, np.number):
            return self._refuse(p, f"frame {p['source_id']}: expected a 2D numeric frame, got shape {counts.shape} "
                                   f"of {counts.dtype}")  # fmt: skip
        try:
            if self.scorer is None:
                self.log("first frame: registering the host lattice and simulating the hypotheses (once)")
                scorer = FieldOfViewScorer(self.inputs, counts, self.bf, progress=self.progress, images=self._images,
                                           fit_frame="latest", **self.options)  # fmt: skip
                fr = scorer.frames[-1]
            else:
                scorer = self.scorer
                fr = scorer.add(counts)
        except InputError as exc:
            return self._refuse(p, f"frame {p['source_id']}: {exc}")
        t1 = time.perf_counter()
        result = scorer.result()
        t2 = time.perf_counter()
        k = len(scorer.frames) - 1
        proposals = undecided_design(result, scorer, self.options["decide_p"], self._beam, len(scorer.frames))
        t3 = time.perf_counter()
        with self._lock:
            self.scorer, self.result, self._proposals = scorer, result, proposals
            self.counters["scored"] += 1
            undecided = self._undecided()
            lat = {"preprocess": 0.0, "score": t1 - t0, "update": t2 - t1, "propose": t3 - t2,
                   "total": time.monotonic() - p["t_mono"]}  # fmt: skip
            for s, v in lat.items():
                self._latency[s].append(v)
            cal = fr.fit.to_json_dict()["calibration"]
            entry = {"step": k, "frames": [p["index"]], "source_ids": [p["source_id"]], "calibration": cal,
                     "drift_px": result["lattice"]["drift"][k]["drift_px"], "counts": result["counts"],
                     "n_sites": len(result["sites"]), "new_sites": int(fr.new_sites), "undecided": undecided,
                     "masked_pixels": fr.bad,
                     "latency_s": lat, "expected_fractions": self._fractions(result)}  # fmt: skip
            self._history.append(entry)
            self.writer.append("fov_step", t=time.time(), **entry)
            if proposals:
                self.writer.append("proposals", t=time.time(), step=k, proposals=proposals)
            self._write_sites(result)
        self._publish({"type": "step", "step": k, "status": self.status(), "ids": list(self.inputs.ids),
                       "posterior": list(self._fractions(result).values())})  # fmt: skip
        self._publish({"type": "sites", "step": k})
        self._publish({"type": "proposals", "step": k})

    def _fractions(self, result: dict) -> dict:
        """Per hypothesis: the expected fraction of its class's sites that are it (the host: of all sites)."""
        out = {h: 0.0 for h in self.inputs.ids}
        n_class: dict = {}
        host = self.inputs.ids[self.geo.host]
        for s in result["sites"]:
            n_class[s["class"]] = n_class.get(s["class"], 0) + 1
            for h, p in s["posterior"].items():
                out[h] += p
        n = len(result["sites"])
        for h in out:
            if h == host:
                out[h] /= max(n, 1)
            else:
                c = self.geo.site_class[self.inputs.ids.index(h)]  # its library class and that class's images
                n_c = sum(n_class.get(lab, 0) for k, (lab, _) in enumerate(self.geo.classes) if self.geo.parent(k) == c)
                out[h] /= max(n_c, 1)
        return out

    def _write_sites(self, result: dict) -> None:
        tmp = self.dir / "sites.json.tmp"
        tmp.write_text(json.dumps(result, default=float))
        os.replace(tmp, self.dir / "sites.json")

    # ------------------------------------------------------------------ events
    def _publish(self, event: dict) -> None:
        for q in list(self._subs):
            while True:
                try:
                    q.put_nowait(event)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=256)
        self._subs.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        if q in self._subs:
            self._subs.remove(q)

    # ------------------------------------------------------------------ queries (SessionView)
    def status(self) -> dict:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._received_times if now - t <= 10.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            lat = {s: ({"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} if v else None)
                   for s, v in self._latency.items()}  # fmt: skip
            res = self.result
            summary = None
            if res is not None:
                summary = {"n_sites": len(res["sites"]), "undecided": self._undecided(), "counts": dict(res["counts"]),
                           "calibration": res["lattice"]["calibration"], "frames": res["n_frames"]}  # fmt: skip
            return {
                "state": self.state, "session_dir": str(self.dir), "library": self.config.get("library", ""),
                "source": getattr(self.source, "name", type(self.source).__name__), "connection": self.connection,
                "frames": dict(self.counters), "frame_rate_hz": rate, "latency_s": lat, "beam": dict(self._beam),
                "beam_label": "field of view", "dose_used_e_per_A2": float(self.bf.beam.dose) * self.counters["scored"],
                "decision": None, "auto_apply": False, "step": len(self._history), "error": self.error,
                "warnings": list(self.warnings), "field_of_view": summary,
            }  # fmt: skip

    def _hindex(self, hypothesis_id: str) -> int:
        if hypothesis_id not in self.inputs.ids:
            raise InputError(f"unknown hypothesis id {hypothesis_id!r}; GET /api/hypotheses lists the ids")
        return list(self.inputs.ids).index(hypothesis_id)

    def hypotheses(self) -> list[dict]:
        with self._lock:
            frac = self._fractions(self.result) if self.result is not None else {}
            decided = {}
            for s in (self.result or {"sites": []})["sites"]:
                if s["decided"]:
                    decided[s["best"]] = decided.get(s["best"], 0) + 1
            out = []
            for i, h in enumerate(self.hyps):
                out.append({
                    "id": h.id, "name": h.name, "family": h.family, "prior": float(h.prior),
                    "posterior": frac.get(h.id), "log10_bayes_factor": None, "rejected": False, "reason": "",
                    "dropped": False, "state": "surviving", "sites_decided": decided.get(h.id, 0),
                    "site_class": "all" if i == self.geo.host else self.geo.classes[self.geo.site_class[i]][0],
                })  # fmt: skip
            return out

    def hypothesis(self, hypothesis_id: str) -> dict:
        import dataclasses

        i = self._hindex(hypothesis_id)
        h = self.hyps[i]
        d = next(x for x in self.hypotheses() if x["id"] == hypothesis_id)
        return {**d, "n_atoms": int(h.specimen.n_atoms), "provenance": dataclasses.asdict(h.provenance),
                "refinement": None, "rejections": []}  # fmt: skip

    def history(self) -> dict:
        with self._lock:
            ids = list(self.inputs.ids)
            return {"steps": [e["step"] for e in self._history], "frame_ids": [e["source_ids"] for e in self._history],
                    "ids": ids, "names": list(self.inputs.names),
                    "posterior": [[e["expected_fractions"][h] for h in ids] for e in self._history],
                    "map_state": [ids[self.geo.host]] * len(self._history), "change_points": [],
                    "beams": ["field of view"] * len(self._history)}  # fmt: skip

    def proposals(self) -> list[dict]:
        with self._lock:
            return [dict(p) for p in self._proposals]

    def apply_proposal(self, index: int) -> dict:
        with self._lock:
            hit = [p for p in self._proposals if p["index"] == int(index)]
        if not hit:
            raise InputError(f"no proposal {index}: GET /api/proposals lists them")
        ok = False
        try:
            ok = bool(self.source.apply_beam(hit[0]["beam"]))
        except InputError as exc:
            raise InputError(f"the source refused the region: {exc}") from None
        return {"label": hit[0]["label"], "beam": hit[0]["beam"], "sent_to_source": ok}

    def _refused(self, what: str):
        raise InputError(f"{what} is not available in a field-of-view session: its hypotheses and beam are fixed when "
                         "the first frame is registered (start a new session for another library or beam)")  # fmt: skip

    def apply_beam(self, beam: dict) -> dict:
        self._refused("changing the beam")

    def add_hypothesis(self, structure: dict) -> dict:
        self._refused("adding a hypothesis")

    def drop_hypothesis(self, hypothesis_id: str) -> dict:
        self._refused("dropping a hypothesis")

    def set_auto_apply(self, on: bool) -> dict:
        if on:
            self._refused("applying proposals automatically")
        return self.status()

    def latest_frame(self) -> np.ndarray | None:
        with self._lock:
            return None if self.scorer is None else np.array(self.scorer.frames[-1].counts)

    def _frame_model(self, defect_id: str | None = None) -> np.ndarray:
        """Expected counts of the latest frame: the registered host lattice, and in each site's window
        its best hypothesis's fitted expectation (``defect_id``: that hypothesis at the site where it
        is most probable, the host elsewhere)."""
        from inference.lattice import evaluate_series

        sc = self.scorer
        fr = sc.frames[-1]
        ii, jj = np.arange(sc.shape[0], dtype=float), np.arange(sc.shape[1], dtype=float)
        host = evaluate_series(sc.host_s.g, sc.host_s.c, fr.fit.m, fr.fit.t, ii, jj)
        mu = sc.exposure * (fr.fit.scale * np.asarray(host) + fr.fit.background)
        sites = self.result["sites"]
        if defect_id is None:
            chosen = [(s["k"], s["best"]) for s in sites if not s["is_host"] and s["status"] == "ok"]
        else:
            cand = [s for s in sites if defect_id in s["posterior"]]
            chosen = [(max(cand, key=lambda s: s["posterior"][defect_id])["k"], defect_id)] if cand else []
        for k, h in chosen:
            win = sc.site_window(k)
            m = win["members"].index(h)
            c = np.asarray(win["centre_px"], int)
            n = win["mask"].shape[0] // 2
            a0, b0 = c[0] - n, c[1] - n
            sel = win["mask"] > 0
            ai, bj = np.nonzero(sel)
            ok = (a0 + ai >= 0) & (a0 + ai < sc.shape[0]) & (b0 + bj >= 0) & (b0 + bj < sc.shape[1])
            mu[a0 + ai[ok], b0 + bj[ok]] = win["expected"][m][ai[ok], bj[ok]]
        return mu

    def simulated_image(self, hypothesis_id: str) -> np.ndarray:
        self._hindex(hypothesis_id)
        with self._lock:
            if self.scorer is None:
                raise InputError("no frame scored yet: the field of view's simulation is made from the first frame")
            host = self.inputs.ids[self.geo.host]
            return self._frame_model(None if hypothesis_id == host else hypothesis_id)

    def residual(self) -> np.ndarray | None:
        with self._lock:
            if self.scorer is None:
                return None
            mu = np.maximum(self._frame_model(), 1e-3)
            return (self.scorer.frames[-1].counts - mu) / np.sqrt(mu)

    # ------------------------------------------------------------------ sites
    def sites(self) -> list[dict]:
        """Every site: ``k``, ``class``, ``x_px``, ``y_px`` (frame 0's pixels), ``x_A``, ``y_A``,
        ``best``, ``best_name``, ``p_best``, ``log10_bayes_factor`` (best against host), ``decided``,
        ``status`` (ok | unexplained | off_specimen), ``near_defect``, ``scored_with`` (the detected
        defects of neighbouring sites scored with it)."""
        with self._lock:
            if self.result is None:
                return []
            fit = self.scorer.frames[-1].fit
            xy = np.array([[s["x_A"], s["y_A"]] for s in self.result["sites"]])
            now = (xy - fit.t) @ np.linalg.inv(fit.m).T
            return [{"k": s["k"], "class": s["class"], "x_px": s["x_px"], "y_px": s["y_px"], "frame_x_px": float(p[0]),
                     "frame_y_px": float(p[1]), "x_A": s["x_A"],
                     "y_A": s["y_A"], "best": s["best"], "best_name": s["best_name"], "p_best": s["posterior"][s["best"]],
                     "log10_bayes_factor": s["log10_bayes_factor"], "decided": s["decided"], "status": s["status"],
                     "is_host": s["is_host"], "near_defect": s["near_defect"],
                     "scored_with": [w["k"] for w in s.get("scored_with", [])]}
                    for s, p in zip(self.result["sites"], now)]  # fmt: skip

    def site(self, k: int) -> dict:
        """Site ``k``: its RESULT.json entry (posterior, fit check), the posterior's history over the
        frames is not kept; plus ``window`` (frame index, centre pixel, size) for the window images."""
        with self._lock:
            if self.result is None:
                raise InputError("no frame scored yet: the sites are enumerated on the first frame")
            if not (0 <= int(k) < len(self.result["sites"])):
                raise InputError(f"no site {k}: the field of view has sites 0..{len(self.result['sites']) - 1}")
            s = {**dict(self.result["sites"][int(k)]), **self.sites()[int(k)]}
            w = self.scorer.site_window(int(k))
            names = dict(zip(self.inputs.ids, self.inputs.names))
            s["posterior_named"] = [{"id": h, "name": names[h], "p": p}
                                    for h, p in sorted(s["posterior"].items(), key=lambda kv: -kv[1])]  # fmt: skip
            s["window"] = {"frame": w["frame"], "centre_px": w["centre_px"], "size_px": int(w["mask"].shape[0]),
                           "radius_A": float(self.scorer.win["radius_A"])}  # fmt: skip
            return s

    def site_image(self, k: int, layer: str) -> np.ndarray:
        """Site ``k``'s window of the latest frame: ``layer`` ``"frame"`` (counts), ``"best"`` (its best
        hypothesis's fitted expectation) or ``"residual"`` ((counts - best) / sqrt(best)); NaN
        outside the window's disk."""
        if layer not in ("frame", "best", "residual"):
            raise InputError(f"unknown layer {layer!r}: expected frame, best or residual")
        s = self.site(k)
        with self._lock:
            w = self.scorer.site_window(int(k))
        m = w["members"].index(s["best"])
        out = w["counts"] if layer == "frame" else w["expected"][m]
        if layer == "residual":
            mu = np.maximum(w["expected"][m], 1e-3)
            out = (w["counts"] - mu) / np.sqrt(mu)
        return np.where(w["mask"] > 0, out, np.nan)


def replay_fov_record(directory, *, images=None, progress=None) -> dict:
    """Score a field-of-view record's scored frames again in one batch
    (:func:`hypotest.fieldofview.score_field_of_view` on the frames read back from ``frames.bin``)
    and compare every site's posterior with ``sites.json``: ``{"frames", "sites",
    "max_abs_posterior_diff", "counts", "recorded_counts"}``. ``images``: the hypotheses' periodic
    images when already simulated."""
    from hypotest.fieldofview import score_field_of_view
    from hypotest.hypothesis import load_hypotheses
    from hypotest.live.record import load_record
    from hypotest.scoring import ScoringInput

    d = Path(directory)
    rec = load_record(d)
    cfg = rec.config
    if cfg.get("kind") != "field_of_view":
        raise InputError(f"{d} is not a field-of-view session (session.json kind {cfg.get('kind')!r})")
    steps = [e for e in rec.events if e["kind"] == "fov_step"]
    if not steps:
        raise InputError(f"{d}: no frame was scored in this session: nothing to replay")
    try:
        recorded = json.loads((d / "sites.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{d / 'sites.json'}: cannot read the recorded sites ({exc})") from None
    library = cfg["library"]
    hyps = ScoringInput.from_hypotheses(load_hypotheses(library))
    if [h["id"] for h in cfg["hypotheses"]] != list(hyps.ids):
        raise InputError(f"the library {library} no longer holds the session's hypotheses (their ids differ): "
                         "replay needs the library the session scored with")  # fmt: skip
    frames = np.stack([rec.frame(j) for e in steps for j in e["frames"]])
    bf = parse_beam(cfg["beam"], where=f"{d / 'session.json'} beam")
    out = score_field_of_view(hyps, frames, bf, host_id=cfg.get("host_id"), defect_prior=cfg["defect_prior"],
                              decide_p=cfg["decide_p"], fit_alpha=cfg["fit_alpha"], images=images, progress=progress,
                              detector=cfg.get("detector", "beam"), optics=cfg.get("optics", "beam"),
                              grow_sites=cfg.get("grow_sites", False))  # fmt: skip
    diff = 0.0
    if len(out["sites"]) != len(recorded["sites"]):
        raise InputError(f"the replay found {len(out['sites'])} sites, the record {len(recorded['sites'])}")
    for a, b in zip(out["sites"], recorded["sites"]):
        for h, p in a["posterior"].items():
            diff = max(diff, abs(p - b["posterior"].get(h, float("nan"))))
    return {"frames": int(len(frames)), "sites": len(out["sites"]), "max_abs_posterior_diff": float(diff),
            "counts": out["counts"], "recorded_counts": recorded["counts"]}
