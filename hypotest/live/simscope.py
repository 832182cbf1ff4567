"""A simulated microscope as a frame source: a hidden truth, beam commands, Poisson frames.

It holds one or more hidden true structures (metastable states), obeys beam-condition commands
(:meth:`SimulatedMicroscopeSource.apply_beam`), and emits frames drawn with Poisson shot noise
(plus the detector's gain and read noise, :func:`forward.noise.sample_frame`) at the dose of the
current beam and a set frame rate. Frame ``t`` uses the key ``fold_in(key, t)``, so a restarted
microscope continues the same sequence.

States switch either on a schedule (``schedule=[(frame, state), ...]``) or at random with a rate
[1/s]: between frames (period ``dt = 1 / rate_hz``) the state leaves with probability
``1 - exp(-switch_rate_hz dt)`` to a uniformly chosen other state (a continuous-time Markov chain
sampled at the frame times). The state sequence is a deterministic function of the seed.

The truth is written apart from the session's data, to ``truth.jsonl`` (one line per frame:
source id and state), so the session can be scored afterwards without ever reading it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import jax
import numpy as np

from forward.noise import expected_electrons, sample_frame
from hypotest.beamfile import parse_beam
from hypotest.live.events import RawFrame, StreamEvent
from hypotest.live.model import ImageModel

__all__ = ["SimulatedMicroscopeSource", "state_sequence"]


def state_sequence(n_frames: int, n_states: int, *, seed: int, initial: int = 0, schedule=(),
                   switch_rate_hz: float = 0.0, frame_period_s: float = 1.0) -> list[int]:  # fmt: skip
    """The hidden state of frames ``0 .. n_frames - 1`` (module docstring)."""
    rng = np.random.default_rng([seed, 7919])
    sched = dict(schedule)
    p_leave = 1.0 - math.exp(-switch_rate_hz * frame_period_s) if switch_rate_hz > 0 else 0.0
    s, out = initial, []
    for t in range(n_frames):
        if t in sched:
            s = int(sched[t])
        elif t > 0 and n_states > 1 and rng.random() < p_leave:
            others = [k for k in range(n_states) if k != s]
            s = others[int(rng.integers(len(others)))]
        out.append(s)
    return out


class SimulatedMicroscopeSource:
    """A :class:`hypotest.live.events.FrameSource` with a hidden truth.

    Args:
        model: an :class:`ImageModel` of the true states (its specimens are the states).
        state_names: a name and an id per state, ``[(id, name), ...]``.
        beam: the initial beam condition, BEAM.json form (its ``dose`` is the dose per frame).
        seed: noise and switching seed.
        rate_hz: frames per second (None: one frame per :meth:`poll`, as fast as polled).
        max_frames: emit ``end`` after this many frames (None: never).
        schedule, switch_rate_hz: state switching (module docstring); ``initial``: first state.
        truth_path: where the truth lines go (None: kept in memory only).
        start_frame: continue a sequence (a resumed session).
        defocus_error: [Å] the lens's true defocus is the commanded one plus this (HRTEM): the
            frames are imaged at it while their beam says what was commanded, as on a microscope
            whose focus readout is off.
    """

    name = "simulated microscope"

    def __init__(self, model: ImageModel, state_names, beam: dict, *, seed: int = 0, rate_hz: float | None = None,
                 max_frames: int | None = None, schedule=(), switch_rate_hz: float = 0.0, initial: int = 0,
                 truth_path=None, start_frame: int = 0, defocus_error: float = 0.0):  # fmt: skip
        self._model = model
        self.defocus_error = float(defocus_error)
        self._names = [tuple(x) for x in state_names]
        self._key = jax.random.key(seed)
        self.rate_hz = rate_hz
        self.max_frames = max_frames
        n_seq = (max_frames or 0) + start_frame + 10_000
        period = 1.0 / rate_hz if rate_hz else 1.0
        self._states = state_sequence(n_seq, len(self._names), seed=seed, initial=initial, schedule=schedule,
                                      switch_rate_hz=switch_rate_hz, frame_period_s=period)  # fmt: skip
        self._lock = threading.Lock()
        self.commands: list[dict] = []
        self._beam = None
        self.apply_beam(beam)
        self._t = start_frame
        self._emitted = 0
        self._t0 = None
        self._ended = False
        self._truth_path = None if truth_path is None else Path(truth_path)
        self.truth: list[dict] = []
        # Ready before the first frame: the initial images and the compiled noise sampler.
        bc = parse_beam(beam, where="beam command").beam
        lam = expected_electrons(self._model.images(beam)[0], bc.dose, self._model.pixel_area_of(beam))
        sample_frame(jax.random.key(0), lam, bc.detector).block_until_ready()

    #: the simulated microscope obeys every beam command
    controllable = True

    def apply_beam(self, beam: dict) -> bool:
        parse_beam(beam, where="beam command")  # validate before obeying
        with self._lock:
            self._beam = dict(beam)
            self.commands.append(self._beam)
        return True

    @property
    def beam(self) -> dict:
        with self._lock:
            return dict(self._beam)

    def _frame(self) -> RawFrame:
        with self._lock:
            beam = dict(self._beam)
        t = self._t
        state = self._states[t] if t < len(self._states) else self._states[-1]
        bc = parse_beam(beam, where="beam command").beam
        image = self._model.images(self._true_beam(beam))[state]
        lam = expected_electrons(image, bc.dose, self._model.pixel_area_of(beam))
        # frames leave in the microscope's layout (4D-STEM: [sx, sy, kx, ky])
        counts = self._model.frame_layout(beam, np.asarray(sample_frame(jax.random.fold_in(self._key, t), lam, bc.detector)))
        if bc.detector.read_noise == 0:
            counts = counts.astype(np.uint16) if counts.max() < 65535 else counts.astype(np.uint32)
        sid, sname = self._names[state]
        line = {"source_id": t, "state": state, "id": sid, "name": sname}
        self.truth.append(line)
        if self._truth_path is not None:
            fd = os.open(self._truth_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())
            finally:
                os.close(fd)
        self._t += 1
        self._emitted += 1
        return RawFrame(source_id=t, timestamp=time.time(), counts=counts, beam=beam,
                        sampling=tuple(parse_beam(beam).sampling), meta={"source": self.name})  # fmt: skip

    def _true_beam(self, beam: dict) -> dict:
        """The beam the specimen is imaged under: the commanded one with the defocus error added."""
        if not self.defocus_error or (beam.get("detector") or {}).get("mode", "hrtem") != "hrtem":
            return beam
        ab = dict(beam.get("aberrations") or {})
        ab["defocus"] = float(ab.get("defocus", 0.0)) + self.defocus_error
        return {**beam, "aberrations": ab}

    def poll(self, timeout: float) -> list:
        if self._ended:
            return []
        if self.max_frames is not None and self._emitted >= self.max_frames:
            self._ended = True
            return [StreamEvent("end", time.time(), f"{self._emitted} frames emitted")]
        if self._t0 is None:
            self._t0 = time.monotonic()
            return [StreamEvent("connected", time.time(), "simulated microscope"), self._frame()]
        if self.rate_hz:
            due = self._t0 + self._emitted / self.rate_hz
            wait = due - time.monotonic()
            if wait > timeout:
                time.sleep(max(timeout, 0.0))
                return []
            if wait > 0:
                time.sleep(wait)
        return [self._frame()]

    def reveal(self) -> list[dict]:
        """The hidden state of every frame emitted so far."""
        return list(self.truth)

    def close(self) -> None:
        self._ended = True
