"""The read side of :class:`hypotest.live.runner.LiveSession`: the queries of
:class:`hypotest.live.view.SessionView` (status, hypotheses, history, proposals, frames and
simulated images). Every method takes the session's lock and returns plain data."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from forward import InputError
from hypotest.beamfile import parse_beam
from inference.evidence import fourier_shift

__all__ = ["SessionQueries"]


class SessionQueries:
    """Mixin of :class:`hypotest.live.runner.LiveSession` (uses its state; defines none)."""

    def status(self) -> dict:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._received_times if now - t <= 10.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            lat = {s: ({"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} if v else None)
                   for s, v in self._latency.items()}  # fmt: skip
            return {
                "state": self.state, "session_dir": str(self.dir), "library": self.config.get("library", ""),
                "source": getattr(self.source, "name", type(self.source).__name__), "connection": self.connection,
                "frames": dict(self.counters), "frame_rate_hz": rate, "latency_s": lat,
                "beam": dict(self._beam), "beam_label": self._beam_label, "dose_used_e_per_A2": self._dose_used,
                "decision": None if self.decision is None else dict(self.decision), "auto_apply": self.auto_apply,
                "step": self._step, "error": self.error, "warnings": list(getattr(self, "warnings", [])),
                "fit_check": self._fit_summary(),
                "optics": None if getattr(self, "optics_estimate", None) is None else dict(self.optics_estimate),
            }  # fmt: skip

    def _fit_summary(self) -> dict | None:
        """The last step's absolute fit check and how many steps were unexplained (lock held)."""
        hist = getattr(self, "_history", [])
        last = next((e["fit_check"] for e in reversed(hist) if e.get("fit_check")), None)
        if last is None:
            return None
        n = sum(1 for e in hist if (e.get("fit_check") or {}).get("unexplained")
                or ((e.get("fit_check") or {}).get("segment") or {}).get("unexplained"))
        seg = last.get("segment") or {}
        return {**last, "unexplained": bool(last.get("unexplained") or seg.get("unexplained")),
                "unexplained_steps": n, "steps": len(hist)}

    def _index(self, hypothesis_id: str) -> int:
        for i, h in enumerate(self.hyps):
            if h.id == hypothesis_id:
                return i
        raise InputError(f"unknown hypothesis id {hypothesis_id!r}; GET /api/hypotheses lists the ids")

    def hypotheses(self) -> list[dict]:
        with self._lock:
            live = self.live
            v = live.view()
            out = []
            for i, h in enumerate(self.hyps):
                state = "dropped" if i in live.dropped else ("rejected" if i in live.rejected else "surviving")
                l10 = float(v.log10_bayes_factor[i])
                out.append({
                    "id": h.id, "name": h.name, "family": h.family, "prior": float(h.prior),
                    "posterior": float(v.posterior[i]), "log10_bayes_factor": l10 if math.isfinite(l10) else None,
                    "rejected": i in live.rejected, "reason": live.reasons[i] if i in live.rejected else "",
                    "dropped": i in live.dropped, "state": state,
                })  # fmt: skip
            return out

    def hypothesis(self, hypothesis_id: str) -> dict:
        i = self._index(hypothesis_id)
        h = self.hyps[i]
        d = next(x for x in self.hypotheses() if x["id"] == hypothesis_id)
        with self._lock:
            refinement = None
            if self._latest is not None and i in self._latest.active:
                ev = self._latest.score
                k = int(np.flatnonzero(self._latest.active == i)[0])
                sx, sy = (float(v) for v in np.asarray(ev.shift[k]))
                ssx, ssy = (float(v) for v in np.asarray(ev.shift_sd[k]))
                refinement = {
                    "method": "Laplace around the MAP of the latest step (shift, scale, background)",
                    "frames": len(self._history[-1]["frames"]),
                    "parameters": {
                        "scale": {"value": float(ev.scale[k]), "sd": float(ev.scale_sd[k]), "unit": ""},
                        "background": {"value": float(ev.background[k]), "sd": float(ev.background_sd[k]), "unit": "intensity"},
                        "shift_x": {"value": sx, "sd": ssx, "unit": "px"},
                        "shift_y": {"value": sy, "sd": ssy, "unit": "px"},
                    },
                }  # fmt: skip
            return {**d, "n_atoms": int(h.specimen.n_atoms), "provenance": dataclasses.asdict(h.provenance),
                    "refinement": refinement, "rejections": list(self._rejection_log.get(i, []))}  # fmt: skip

    def history(self) -> dict:
        with self._lock:
            ids = [h.id for h in self.hyps]
            col = {h: k for k, h in enumerate(ids)}
            post = []
            for e in self._history:
                row = [None] * len(ids)
                for h, p in zip(e["ids"], e["posterior"]):
                    row[col[h]] = p
                post.append(row)
            cps = [e["segment_start"] for e in self._history if e.get("change_point")]
            return {"steps": [e["step"] for e in self._history], "frame_ids": [e["source_ids"] for e in self._history],
                    "ids": ids, "names": [h.name for h in self.hyps], "posterior": post,
                    "map_state": [e["map_state"] for e in self._history], "change_points": cps,
                    "beams": [e["beam_label"] for e in self._history]}  # fmt: skip

    def proposals(self) -> list[dict]:
        with self._lock:
            return list(self._proposals)

    # A 4D-STEM frame is shown as its virtual annular dark-field image (ImageModel.virtual_image):
    # a sum of Poisson counts, so the residual of the sums is still Poisson-normalised.
    def latest_frame(self) -> np.ndarray | None:
        with self._lock:
            latest = self._latest
        return None if latest is None else np.array(self.model.virtual_image(latest.beam, latest.counts))

    def _expected(self, i: int, latest, beam: dict) -> np.ndarray:
        """Expected counts of hypothesis ``i`` (in the model's layout) under ``beam``, with the
        latest step's fitted nuisance values when it was scored there."""
        img = self.model.images(beam)[i]
        if latest is None or i not in latest.active:
            bc = parse_beam(beam).beam
            return img * float(bc.dose) * self.model.pixel_area_of(beam)
        ev = latest.score
        k = int(np.flatnonzero(latest.active == i)[0])
        shifted = np.asarray(fourier_shift(img, np.asarray(ev.shift[k], np.float32)))
        return latest.exposure * (float(ev.scale[k]) * shifted + float(ev.background[k]))

    def simulated_image(self, hypothesis_id: str) -> np.ndarray:
        i = self._index(hypothesis_id)
        with self._lock:
            latest = self._latest
            beam = dict(self._beam) if latest is None else latest.beam
        return np.asarray(self.model.virtual_image(beam, self._expected(i, latest, beam)))

    def residual(self) -> np.ndarray | None:
        with self._lock:
            latest = self._latest
            if latest is None:
                return None
            best = int(self.live.view().best)
        beam = latest.beam
        counts = self.model.virtual_image(beam, latest.counts)
        mu = self.model.virtual_image(beam, self._expected(best, latest, beam))
        return (counts - mu) / np.sqrt(np.maximum(mu, 1e-3))
