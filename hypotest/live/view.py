"""What the dashboard and the query API may ask of a running session (:class:`SessionView`).

:class:`hypotest.live.runner.LiveSession` implements it. Every method is thread-safe and returns
plain JSON-able data (numpy arrays only where stated); the web layer never touches the loop's
internals. Errors a caller can cause raise :class:`forward.InputError` (unknown id, bad beam) and
map to HTTP 4xx; :class:`KeyError` is never raised for user input.
"""

from __future__ import annotations

import queue
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["SessionView"]


@runtime_checkable
class SessionView(Protocol):
    def status(self) -> dict:
        """Session state::

            {"state": "starting" | "running" | "decided" | "stopped" | "failed",
             "session_dir": str, "library": str, "source": str,
             "connection": "connected" | "disconnected" | "ended",
             "frames": {"received": int, "scored": int, "coalesced": int, "rejected": int,
                        "bad_messages": int},
             "frame_rate_hz": float,                  # received, over the last 10 s
             "latency_s": {stage: {"p50": float, "p99": float} | None},  # None before the first
                                                      # step; stages: ingest, preprocess, score,
                                                      # update, propose, total. "total" is frame
                                                      # received -> posterior recorded; "propose"
                                                      # runs beside the loop (not in "total")
             "beam": dict,                            # current beam, BEAM.json form
             "dose_used_e_per_A2": float,
             "decision": None | {"id": str, "name": str, "posterior": float},
             "auto_apply": bool, "step": int}
        """
        ...

    def hypotheses(self) -> list[dict]:
        """Every hypothesis, in library order::

            {"id", "name", "family", "prior", "posterior", "log10_bayes_factor",
             "rejected": bool, "reason": str, "dropped": bool, "state": "surviving"|"rejected"|"dropped"}
        """
        ...

    def hypothesis(self, hypothesis_id: str) -> dict:
        """One hypothesis: the fields of :meth:`hypotheses` plus ``"provenance"`` (dict),
        ``"n_atoms"``, ``"refinement"`` (None or {"method": str, "parameters": {name: {"value", "sd",
        "unit"}}, "frames": int}) and ``"rejections"`` (history of rejections / returns with step and
        Bayes factor). Unknown id: InputError."""
        ...

    def history(self) -> dict:
        """Posterior over steps: ``{"steps": [int], "frame_ids": [[int]] (source frames per step),
        "ids": [str], "names": [str], "posterior": [[float | None]] (steps x hypotheses), "map_state": [str] (most
        probable hypothesis id per step), "change_points": [int] (steps), "beams": [str] (label per
        step)}``."""
        ...

    def proposals(self) -> list[dict]:
        """Current proposals, best first (by the session's design order: the allocation's dose
        share, or expected information gain): ``{"index" (the candidate beam's index: an id, not
        the rank), "label", "beam" (BEAM.json form), "expected_gain_bits",
        "gain_bits_per_electron", "dose_share", "expected_dose_to_decision" (e-/Å², or None),
        "separates": [[name, name], ...]}``."""
        ...

    def apply_proposal(self, index: int) -> dict:
        """Apply proposal ``index`` (sent to the source's control channel); returns
        ``{"label", "beam", "sent_to_source": bool}``. Unknown index: InputError."""
        ...

    def apply_beam(self, beam: dict) -> dict:
        """Apply a beam condition given in BEAM.json form (validated: InputError with the field);
        returns ``{"label", "beam", "sent_to_source": bool}``."""
        ...

    def latest_frame(self) -> np.ndarray | None:
        """The last scored frame [counts] ``[mx, my]`` (summed if coalesced), or None before the first.
        A 4D-STEM frame is given as its virtual annular dark-field image ``[sx, sy]``
        (:meth:`hypotest.live.model.ImageModel.virtual_image`); so are the two below."""
        ...

    def simulated_image(self, hypothesis_id: str) -> np.ndarray:
        """Expected counts of ``hypothesis_id`` under the current beam, fitted to the latest frame
        (shift, scale, background) ``[mx, my]``; before any frame, the unfitted expected counts."""
        ...

    def residual(self) -> np.ndarray | None:
        """(latest frame - best simulation) / sqrt(best simulation): Poisson-normalised residual."""
        ...

    def add_hypothesis(self, structure: dict) -> dict:
        """Add a hypothesis while running. ``structure``: {"name": str, "prior": float,
        "positions": [[x, y, z]] Å, "numbers": [int]} in the session's cell, or {"file": path}.
        It joins with the current posterior mass of a fresh prior (documented in the session);
        returns its :meth:`hypothesis` dict. Bad structure: InputError."""
        ...

    def drop_hypothesis(self, hypothesis_id: str) -> dict:
        """Stop scoring a hypothesis (kept in the record as dropped). Unknown id: InputError."""
        ...

    def set_auto_apply(self, on: bool) -> dict:
        """Whether proposals are applied automatically; returns :meth:`status`."""
        ...

    def subscribe(self) -> queue.Queue:
        """A queue that receives one dict per event: ``{"type": "step", "step", "status",
        "posterior": [..], "ids": [..]}``, ``{"type": "beam", "beam", "by": "auto"|"operator"}``,
        ``{"type": "proposals", "step"}``, ``{"type": "hypotheses"}``, ``{"type": "stream", "kind",
        "detail"}``, ``{"type": "status", "status"}`` (the loop ended), ``{"type": "stopped"}``. Slow consumers lose the oldest events, never block the loop."""
        ...

    def unsubscribe(self, q: queue.Queue) -> None: ...
