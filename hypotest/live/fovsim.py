"""A simulated microscope scanning a field of view of a MoS2 flake, its images made by abTEM.

The flake (``fov_mos2_flake.npz`` beside this module: the ``flake_*``, ``M``, ``t`` and defect
arrays of ``tests/data/fov_mos2_haadf.npz``, made by the seeded abTEM script
``tests/data/make_fov_mos2_haadf.py``) is the built-in ``mos2_defects`` library's pristine
supercell tiled 3 x 3 with five library defects (V_S2, W_Mo, V_Mo, Mo_S, O_S) and one Se_S the
library does not hold, imaged in 80 kV ADF-STEM (25 mrad probe, 60-200 mrad) by abTEM, not by
hypotest's forward model. Each frame is 128 x 128 pixels of it through the file's affine map (17.3°
rotation, pixels 1.5% and 1.2% larger than the nominal 0.16 Å), its offset moved by a seeded random
walk (the stage drift, ``drift_px`` rms per frame), with Poisson noise at the beam's dose: the
noise-free signal is the exact Fourier interpolation of abTEM's periodic image (band-limited).

:func:`make_fov_demo_session` is ``hypotest live --source sim-fov[:SEED]``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hypotest.live.events import RawFrame, StreamEvent

__all__ = ["FLAKE", "FOV_BEAM", "FieldOfViewSimSource", "make_fov_demo_session"]

FLAKE = Path(__file__).with_name("fov_mos2_flake.npz")
#: The beam the flake was imaged under (the nominal pixel size, not the true one); dose per frame.
FOV_BEAM = {"energy": 80000, "dose": 2e5, "sampling": 0.16, "semiangle_cutoff": 25, "aberrations": {},
            "detector": {"mode": "stem_annular", "inner": 60, "outer": 200},
            "simulation": {"sampling": 0.07, "slice_thickness": 1.0, "parametrization": "lobato"}}  # fmt: skip


class FieldOfViewSimSource:
    """Frames of the abTEM flake (module docstring), ``rate_hz`` per second (None: as fast as
    asked), ``max_frames`` of them, then the end of the stream. Not controllable: it scans one
    region at one dose."""

    controllable = False

    def __init__(self, *, seed: int = 0, dose: float = FOV_BEAM["dose"], shape=(128, 128), drift_px: float = 0.25,
                 rate_hz: float | None = None, max_frames: int | None = 20):  # fmt: skip
        d = np.load(FLAKE)
        self.m, self.t0 = np.asarray(d["M"], float), np.asarray(d["t"], float)
        img = np.asarray(d["flake_image"], np.float64)
        cell = np.asarray(d["flake_cell"], float)
        f = np.fft.fft2(img) / img.size
        kx = np.fft.fftfreq(img.shape[0], d=cell[0] / img.shape[0])
        ky = np.fft.fftfreq(img.shape[1], d=cell[1] / img.shape[1])
        gx, gy = np.meshgrid(kx, ky, indexing="ij")
        self._g = np.stack([gx.ravel(), gy.ravel()], 1)
        self._c = f.ravel()
        self.defects = list(zip([str(n) for n in d["defect_names"]], np.asarray(d["defect_xy_A"], float).tolist()))
        self.dose, self.shape, self.drift_px = float(dose), tuple(shape), float(drift_px)
        self.rate_hz, self.max_frames = rate_hz, max_frames
        self.rng = np.random.default_rng(seed)
        self.offset_px = np.zeros(2)
        self.beam = {**FOV_BEAM, "dose": self.dose}
        self.name = f"simulated field of view (abTEM MoS2 flake, seed {seed})"
        self.settings = {"kind": "sim-fov", "seed": seed, "dose": self.dose, "drift_px": self.drift_px}
        self._n = 0
        self._next_t = 0.0
        self._ended = False

    def expected(self, offset_px) -> np.ndarray:
        """Noise-free frame [fraction of the probe on the detector] with the scan offset by ``offset_px``."""
        from inference.lattice import evaluate_series

        t = self.t0 + self.m @ np.asarray(offset_px, float)
        ii, jj = np.arange(self.shape[0], dtype=float), np.arange(self.shape[1], dtype=float)
        return np.asarray(evaluate_series(self._g, self._c, self.m, t, ii, jj))

    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """The next frame's counts and its true offset [px] (the drift walked one step first, but not before frame 0)."""
        if self._n > 0:
            self.offset_px = self.offset_px + self.rng.normal(0.0, self.drift_px, 2)
        exposure = self.dose * abs(np.linalg.det(self.m))
        lam = exposure * np.maximum(self.expected(self.offset_px), 0.0)
        self._n += 1
        return self.rng.poisson(lam).astype(np.float32), self.offset_px.copy()

    def poll(self, timeout: float):
        if self._ended:
            return []
        if self.max_frames is not None and self._n >= self.max_frames:
            self._ended = True
            return [StreamEvent("end", time.time(), f"{self._n} frames scanned")]
        if self.rate_hz:
            wait = self._next_t - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                return []
            if wait > 0:
                time.sleep(wait)
            self._next_t = time.monotonic() + 1.0 / self.rate_hz
        counts, off = self.frame()
        return [RawFrame(source_id=self._n - 1, timestamp=time.time(), counts=counts, beam=dict(self.beam),
                         sampling=(0.16, 0.16), meta={"true_offset_px": off.tolist()})]  # fmt: skip

    def apply_beam(self, beam: dict) -> bool:
        return False

    def close(self) -> None:
        self._ended = True


def make_fov_demo_session(out, *, seed: int = 0, dose: float = FOV_BEAM["dose"], rate_hz: float | None = 1.0,
                          max_frames: int | None = 20, images=None, log=None, progress=None, stop_on_decision=False):  # fmt: skip
    """The field-of-view session on the simulated flake with the built-in ``mos2_defects`` library
    (``images``: the hypotheses' periodic images when already simulated; else hypotest simulates
    the eight supercells once at the first frame, ~80 s on two cores)."""
    from hypotest.hypothesis import load_hypotheses
    from hypotest.live.fov import FieldOfViewSession

    source = FieldOfViewSimSource(seed=seed, dose=dose, rate_hz=rate_hz, max_frames=max_frames)
    return FieldOfViewSession(out, hypotheses=load_hypotheses("mos2_defects"), beam=source.beam, source=source,
                              config={"library": "mos2_defects", "source": {"spec": f"sim-fov:{seed}", **source.settings}},
                              images=images, log=log, progress=progress, stop_on_decision=stop_on_decision)  # fmt: skip
