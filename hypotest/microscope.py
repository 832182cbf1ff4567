"""A simulated microscope: a hidden true structure, beam-condition commands, noisy frames.

The truth is kept apart from what the session sees (:meth:`SimulatedMicroscope.reveal`), so a
session can be scored afterwards. Frames are HRTEM images drawn with Poisson shot noise (and the
detector's gain and read noise) at the dose of the current beam condition.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from forward import BeamCondition, Specimen
from forward.hrtem import HRTEMSimulator
from forward.noise import expected_electrons, pixel_area, sample_frame

__all__ = ["SimulatedMicroscope", "Truth"]


@dataclasses.dataclass(frozen=True)
class Truth:
    """What the microscope really looked at (revealed only after the session)."""

    hypothesis_id: str
    name: str


class SimulatedMicroscope:
    """Emits frames of a hidden specimen under the beam condition it was last told to use.

    Args:
        simulator: an HRTEM simulator (:func:`forward.hrtem.make_hrtem_simulator`).
        specimen: the hidden true structure.
        truth: its identity, kept for scoring the session afterwards.
        beam: the initial beam condition.
        rng_key: key of the noise; frame ``t`` uses ``fold_in(rng_key, t)``.
    """

    def __init__(self, simulator: HRTEMSimulator, specimen: Specimen, truth: Truth, beam: BeamCondition, rng_key):
        self._sim = simulator
        self._truth = truth
        self._key = rng_key
        self._exit_wave = simulator.exit_wave(specimen, beam)  # independent of the lens settings
        self._energy, self._tilt = float(beam.energy), np.asarray(beam.tilt).tolist()
        self._specimen = specimen
        self.frames_emitted = 0
        self.set_beam(beam)

    @property
    def beam(self) -> BeamCondition:
        return self._beam

    @property
    def sampling(self) -> tuple[float, float]:
        """Camera pixel size [Å]."""
        cell = np.asarray(self._specimen.cell)
        return (float(cell[0]) / self._cam[0], float(cell[1]) / self._cam[1])

    def set_beam(self, beam: BeamCondition) -> None:
        """Obey a beam-condition command (a new energy or tilt needs a new exit wave)."""
        if float(beam.energy) != self._energy or np.asarray(beam.tilt).tolist() != self._tilt:
            self._exit_wave = self._sim.exit_wave(self._specimen, beam)
            self._energy, self._tilt = float(beam.energy), np.asarray(beam.tilt).tolist()
        self._beam = beam
        self._image = np.asarray(self._sim.image_from_exit_wave(self._exit_wave, beam))
        self._cam = self._image.shape

    def acquire(self) -> np.ndarray:
        """One frame [counts] at the current beam's dose."""
        lam = expected_electrons(self._image, self._beam.dose, pixel_area(self.sampling))
        key = jax.random.fold_in(self._key, self.frames_emitted)
        self.frames_emitted += 1
        return np.asarray(sample_frame(key, lam, self._beam.detector))

    def reveal(self) -> Truth:
        return self._truth
