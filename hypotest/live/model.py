"""Cached expected images of every hypothesis, re-simulated only where a beam change requires it.

HRTEM splits into an exit wave, which depends on the specimen, the energy and the tilt, and the
imaging step (CTF, partial coherence, MTF, camera binning), which depends on the lens. The model
keeps one exit wave per hypothesis and (energy, tilt) and one image stack per beam condition, so
a defocus change costs one FFT pair per hypothesis, and only a new energy or tilt re-runs the
multislice (counted in :attr:`HRTEMImageModel.resimulations`).
"""

from __future__ import annotations

import json
import threading

import numpy as np

from forward import InputError, Specimen, make_grid
from forward.hrtem import make_hrtem_simulator
from hypotest.beamfile import parse_beam
from library.provenance import content_id

__all__ = ["HRTEMImageModel", "CachedImageModel", "beam_key"]

#: Exit waves shared by every model in the process (a resumed session, the simulated microscope
#: and the session look at the same structures), keyed by structure content id, simulation
#: settings, energy and tilt; oldest evicted first. Read-only arrays.
_WAVE_CACHE: dict[tuple, np.ndarray] = {}
_WAVE_CACHE_SIZE = 256


def beam_key(beam: dict) -> str:
    """A canonical text key of a beam condition in BEAM.json form."""
    return json.dumps(beam, sort_keys=True)


class HRTEMImageModel:
    """Expected HRTEM images ``[H, mx, my]`` (intensity relative to the beam) per beam condition.

    Args:
        specimens: one per hypothesis, all in one shared orthogonal cell.
        sampling: simulation sampling [Å]; ``binning``: camera pixel = binning x sampling.
        slice_thickness: [Å].
        exit_waves: optional precomputed exit waves (e.g. from Ray workers) for ``energy``/``tilt``.
    """

    def __init__(self, specimens, *, sampling: float = 0.05, binning: int = 2, slice_thickness: float = 1.0,
                 exit_waves=None, energy: float | None = None, tilt=(0.0, 0.0)):  # fmt: skip
        if not specimens:
            raise InputError("the library is empty: the session needs at least one hypothesis")
        self.cell = np.asarray(specimens[0].cell, dtype=np.float64)
        for i, s in enumerate(specimens):
            if not np.allclose(np.asarray(s.cell), self.cell, rtol=2e-3):
                raise InputError(
                    f"hypothesis {i} has cell {np.asarray(s.cell).round(3).tolist()} Å, the first has "
                    f"{self.cell.round(3).tolist()} Å: hypotheses compared pixel for pixel must share one cell"
                )
        self.settings = {"sampling": float(sampling), "binning": int(binning), "slice_thickness": float(slice_thickness)}
        self.grid = make_grid(extent=tuple(self.cell[:2]), sampling=sampling)
        self.camera_gpts = (self.grid.gpts[0] // binning, self.grid.gpts[1] // binning)
        self.sim = make_hrtem_simulator(self.grid, float(self.cell[2]), slice_thickness, camera_gpts=self.camera_gpts)
        self.specimens: list[Specimen] = list(specimens)
        self._waves: dict[tuple, list] = {}
        if exit_waves is not None:
            if energy is None:
                raise InputError("precomputed exit_waves need the energy [eV] they were computed at")
            if len(exit_waves) != len(specimens):
                raise InputError(f"{len(exit_waves)} exit waves for {len(specimens)} hypotheses")
            key = (float(energy), tuple(float(t) for t in tilt))
            self._waves[key] = [np.asarray(w) for w in exit_waves]
            for s, w in zip(specimens, self._waves[key]):
                _WAVE_CACHE[(content_id(s), tuple(sorted(self.settings.items())), key)] = w
        self._images: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        self.resimulations = 0

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.camera_gpts

    @property
    def pixel_sampling(self) -> tuple[float, float]:
        """Camera pixel size [Å]."""
        return (float(self.cell[0]) / self.camera_gpts[0], float(self.cell[1]) / self.camera_gpts[1])

    def _parsed(self, beam: dict):
        return parse_beam(beam, where="beam condition").beam

    def _exit_waves(self, bc) -> list:
        key = (float(bc.energy), tuple(float(t) for t in np.asarray(bc.tilt)))
        waves = self._waves.setdefault(key, [])
        for s in self.specimens[len(waves) :]:
            ck = (content_id(s), tuple(sorted(self.settings.items())), key)
            w = _WAVE_CACHE.get(ck)
            if w is None:
                w = np.asarray(self.sim.exit_wave(s, bc))
                self.resimulations += 1
                if len(_WAVE_CACHE) >= _WAVE_CACHE_SIZE:
                    _WAVE_CACHE.pop(next(iter(_WAVE_CACHE)))
                _WAVE_CACHE[ck] = w
            waves.append(w)
        return waves

    def images(self, beam: dict) -> np.ndarray:
        """``[H, mx, my]`` expected intensity of every hypothesis under ``beam`` (BEAM.json form)."""
        key = beam_key(beam)
        with self._lock:
            imgs = self._images.get(key)
            if imgs is not None and imgs.shape[0] == len(self.specimens):
                return imgs
            bc = self._parsed(beam)
            waves = self._exit_waves(bc)
            done = 0 if imgs is None else imgs.shape[0]
            new = [np.asarray(self.sim.image_from_exit_wave(w, bc)) for w in waves[done:]]
            imgs = np.stack(new) if imgs is None else np.concatenate([imgs, np.stack(new)])
            self._images[key] = imgs.astype(np.float32)
            return self._images[key]

    def add(self, specimen: Specimen) -> int:
        """Add a hypothesis; its images are simulated on the next :meth:`images` call."""
        if not np.allclose(np.asarray(specimen.cell), self.cell, rtol=2e-3):
            raise InputError(
                f"the new hypothesis has cell {np.asarray(specimen.cell).round(3).tolist()} Å; the session's cell is "
                f"{self.cell.round(3).tolist()} Å"
            )
        with self._lock:
            self.specimens.append(specimen)
            return len(self.specimens) - 1


class CachedImageModel:
    """Images pre-simulated elsewhere (a Ray pre-simulation, a file), one stack per beam condition.

    A beam that was not pre-simulated is an error (the session cannot re-simulate without the
    structures' simulator). ``images_by_beam``: ``[(beam dict, images [H, mx, my])]`` (intensity
    relative to the beam); ``pixel_sampling``: camera pixel [Å]; ``cell``: the shared cell [Å].
    """

    def __init__(self, images_by_beam, *, pixel_sampling, cell):
        if not images_by_beam:
            raise InputError("a cached image model needs at least one (beam, images) pair")
        self._images = {}
        shapes = set()
        for beam, imgs in images_by_beam:
            a = np.asarray(imgs, dtype=np.float32)
            if a.ndim != 3 or not np.all(np.isfinite(a)):
                raise InputError(f"cached images must be finite [H, mx, my], got shape {list(a.shape)}")
            shapes.add(a.shape)
            self._images[beam_key(beam)] = a
        if len(shapes) != 1:
            raise InputError(f"cached image stacks differ in shape: {sorted(shapes)}")
        self._shape = shapes.pop()
        self._sampling = (float(pixel_sampling[0]), float(pixel_sampling[1]))
        self.cell = np.asarray(cell, dtype=np.float64)
        self.settings = {"cached": True}
        self.specimens = [None] * self._shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._shape[1:]

    @property
    def pixel_sampling(self) -> tuple[float, float]:
        return self._sampling

    def images(self, beam: dict) -> np.ndarray:
        try:
            return self._images[beam_key(beam)]
        except KeyError:
            raise InputError(
                "no pre-simulated images for this beam condition; pre-simulate it (hypotest library / "
                "workflows.presimulate) or choose one of the cached conditions"
            ) from None

    def add(self, specimen) -> int:
        raise InputError("a session on pre-simulated images cannot add hypotheses (no simulator); re-run the pre-simulation")
