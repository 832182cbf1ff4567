"""Cached expected images of every hypothesis, re-simulated only where a beam change requires it.

HRTEM splits into an exit wave, which depends on the specimen, the energy and the tilt, and the
imaging step (CTF, partial coherence, MTF, camera binning), which depends on the lens. The model
keeps one exit wave per hypothesis and (energy, tilt) and one image stack per beam condition, so
a defocus change costs one FFT pair per hypothesis, and only a new energy or tilt re-runs the
multislice (counted in :attr:`ImageModel.resimulations`).

Annular-detector STEM (``detector.mode = "stem_annular"``) is simulated by PRISM
(:mod:`forward.prism`, interpolation 1, i.e. the full multislice of every plane wave of the probe
aperture) on the coarsest scan that samples the image without aliasing, then interpolated onto
the frame's pixel grid in Fourier space. That interpolation is exact: the STEM intensity is
bilinear in the probe's plane-wave coefficients ``c_k c*_k'``, so the scanned image holds no
spatial frequency beyond ``|k - k'| <= 2 alpha / lambda`` (Kirkland, *Advanced Computing in
Electron Microscopy*, 2nd ed. (2010), sec. 5.5), and the cell is periodic. The finite source
(``source_size``, Gaussian sigma [Å]) is applied as the exact Gaussian transfer
``exp(-2 pi² sigma² k²)`` on that spectrum. A frame's STEM pixel is a scan position: its expected
counts are dose x pixel area x the detected fraction of the beam, as for HRTEM.

4D-STEM (``detector.mode = "4dstem"``): a pixelated detector records the diffraction pattern at
every probe position. The frame is ``[sx, sy, kx, ky]``: the scan spans the cell with step
``beam["sampling"]`` (pixel (0, 0) at the cell origin), and the detector is the square of
reciprocal-space pixels within ``detector.outer`` [mrad] of the optic axis (the camera's reach;
pixel size = the simulation grid's angular sampling, lambda / cell). The model simulates it with
the same PRISM S-matrix as annular STEM and keeps it as ``[H, kx, ky, sx, sy]`` (every detector
pixel an image over the scan, the last two axes spatial), the layout the scorers and the design
take: a drift moves the scan, not the pattern, and :meth:`ImageModel.model_layout` turns a frame
into it. The scan must sample the band limit ``2 alpha / lambda`` of the data (step
<= ``lambda / (4 alpha)``); the source size enters as the same Gaussian transfer over the scan.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import numpy as np

from forward import InputError, Specimen, make_grid
from forward.constants import wavelength
from forward.hrtem import make_hrtem_simulator
from hypotest.beamfile import parse_beam
from library.provenance import content_id

__all__ = ["ImageModel", "beam_key"]

#: Exit waves shared by every model in the process (a resumed session, the simulated microscope
#: and the session look at the same structures), keyed by structure content id, simulation
#: settings, energy and tilt; oldest evicted first. Read-only arrays.
_WAVE_CACHE: dict[tuple, np.ndarray] = {}
_WAVE_CACHE_SIZE = 256
#: STEM images shared the same way, keyed by structure, simulation settings, frame shape and the
#: beam without its dose.
_STEM_CACHE: dict[tuple, np.ndarray] = {}
_STEM_CACHE_SIZE = 4096
#: Scan oversampling beyond the Nyquist rate of the band limit 2 alpha / lambda (the soft
#: aperture edge reaches slightly past alpha).
_SCAN_MARGIN = 1.15
MODES = ("hrtem", "stem_annular", "4dstem")


def beam_key(beam: dict) -> str:
    """A canonical text key of a beam condition in BEAM.json form."""
    return json.dumps(beam, sort_keys=True)


class ImageModel:
    """Expected images ``[H, mx, my]`` per beam condition: HRTEM intensity relative to the beam,
    or the fraction of the beam an annular STEM detector collects at each scan position.

    Args:
        specimens: one per hypothesis, all in one shared orthogonal cell.
        sampling: simulation sampling [Å]; ``binning``: camera pixel = binning x sampling.
        slice_thickness: [Å].
        exit_waves: optional precomputed exit waves (e.g. from Ray workers) for ``energy``/``tilt``.
        camera_gpts: the frame's pixel counts ``(mx, my)`` when they are given rather than
            chosen from ``sampling`` (a Nion scan's square pixels,
            :func:`hypotest.live.nion.square_pixel_gpts`); the simulation grid is then
            ``binning x camera_gpts`` points over the cell (``sampling`` is only what was asked).
    """

    def __init__(self, specimens, *, sampling: float = 0.05, binning: int = 2, slice_thickness: float = 1.0,
                 exit_waves=None, energy: float | None = None, tilt=(0.0, 0.0), camera_gpts=None):  # fmt: skip
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
        if camera_gpts is None:
            self.grid = make_grid(extent=tuple(self.cell[:2]), sampling=sampling)
            self.camera_gpts = (self.grid.gpts[0] // binning, self.grid.gpts[1] // binning)
        else:
            self.camera_gpts = (int(camera_gpts[0]), int(camera_gpts[1]))
            self.settings["camera_gpts"] = self.camera_gpts  # a tuple: the settings key the caches
            self.grid = make_grid(extent=tuple(self.cell[:2]), gpts=tuple(binning * n for n in self.camera_gpts))
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
        self._prism: dict[tuple, object] = {}
        self._last_smatrix: tuple | None = None  # (key, S-matrix) of the last hypothesis built
        self.resimulations = 0
        #: HRTEM optics learned from the frames, added to every beam's (defocus offset, a12, b12 [Å]:
        #: :func:`forward.make_optics_image_fn`); zero until :meth:`set_calibration`
        self.calibration = np.zeros(3)
        self._optics_fns: dict[str, object] = {}

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
            done = 0 if imgs is None else imgs.shape[0]
            mode = bc.detector.mode
            if mode == "hrtem":
                waves = self._exit_waves(bc)
                if np.any(self.calibration != 0):
                    fn = self.optics_image_fn(beam)
                    cal = np.asarray(self.calibration, np.float32)
                    new = [np.asarray(fn(w, cal)) for w in waves[done:]]
                else:
                    new = [np.asarray(self.sim.image_from_exit_wave(w, bc)) for w in waves[done:]]
            elif mode == "stem_annular":
                new = [self._stem_image(s, bc, beam) for s in self.specimens[done:]]
            elif mode == "4dstem":
                new = [self._stem4d_image(s, bc, beam) for s in self.specimens[done:]]
            else:
                raise InputError(
                    f"the live image model simulates detector modes {list(MODES)}, got {mode!r}: "
                    "segmented-detector frames are scored through the Python API (inference.score_frames)"
                )
            self._last_smatrix = None  # reused within prepare() only: ~20 MB each
            imgs = np.stack(new) if imgs is None else np.concatenate([imgs, np.stack(new)])
            self._images[key] = imgs.astype(np.float32)
            return self._images[key]

    def optics_image_fn(self, beam: dict):
        """``(psi, theta) -> image`` of an HRTEM ``beam`` with the optics offset by ``theta``
        (:func:`forward.make_optics_image_fn`), one per beam."""
        from forward import make_optics_image_fn

        key = beam_key(beam)
        with self._lock:
            if key not in self._optics_fns:
                self._optics_fns[key] = make_optics_image_fn(self.grid, self._parsed(beam), self.camera_gpts)
            return self._optics_fns[key]

    def exit_waves(self, beam: dict) -> list:
        """The exit waves of every hypothesis under an HRTEM ``beam`` (energy, tilt)."""
        with self._lock:
            return list(self._exit_waves(self._parsed(beam)))

    def set_calibration(self, theta) -> None:
        """Use the learned HRTEM optics ``theta = (defocus offset, a12, b12)`` [Å] for every beam
        from now on: the HRTEM images are recomputed (one FFT pair per exit wave) when next asked."""
        th = np.asarray(theta, np.float64).reshape(3)
        if not np.all(np.isfinite(th)):
            raise InputError(f"the optics calibration must be finite, got {th.tolist()}")
        with self._lock:
            self.calibration = th
            for key in [k for k, v in self._images.items() if self._parsed_mode(k) == "hrtem"]:
                del self._images[key]

    def _parsed_mode(self, key: str) -> str:
        try:
            return (json.loads(key).get("detector") or {}).get("mode", "hrtem")
        except (ValueError, AttributeError):
            return "hrtem"

    def frame_shape_of(self, beam: dict) -> tuple[int, ...]:
        """Shape of a frame taken under ``beam`` as the microscope sends it: the camera
        ``(mx, my)`` for HRTEM and annular STEM, ``(sx, sy, kx, ky)`` for 4D-STEM."""
        bc = self._parsed(beam)
        if bc.detector.mode == "4dstem":
            return self._scan4d(beam, bc) + self._cbed_shape(bc)
        return self.camera_gpts

    def pixel_area_of(self, beam: dict) -> float:
        """Area [Å²] of one spatial pixel of a frame under ``beam`` (camera pixel or scan step):
        expected counts = dose x this area x the image value."""
        bc = self._parsed(beam)
        if bc.detector.mode == "4dstem":
            g = self._scan4d(beam, bc)
            return float(self.cell[0] / g[0] * self.cell[1] / g[1])
        return float(self.pixel_sampling[0] * self.pixel_sampling[1])

    def model_layout(self, beam: dict, frame: np.ndarray) -> np.ndarray:
        """A frame (or a stack/sum of them, trailing axes the frame) in the layout of
        :meth:`images`: 4D-STEM ``[..., sx, sy, kx, ky]`` -> ``[..., kx, ky, sx, sy]``."""
        a = np.asarray(frame)
        if self._parsed(beam).detector.mode != "4dstem":
            return a
        return np.ascontiguousarray(np.moveaxis(a, (-4, -3), (-2, -1)))

    def frame_layout(self, beam: dict, image: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`model_layout`."""
        a = np.asarray(image)
        if self._parsed(beam).detector.mode != "4dstem":
            return a
        return np.ascontiguousarray(np.moveaxis(a, (-2, -1), (-4, -3)))

    def virtual_image(self, beam: dict, data: np.ndarray) -> np.ndarray:
        """A 2D picture of ``data`` in the layout of :meth:`images` (for display): the data itself
        for images; for 4D-STEM the virtual annular dark-field image (detector pixels beyond the
        probe semiangle summed; the whole pattern if the camera sees only the bright field)."""
        a = np.asarray(data)
        bc = self._parsed(beam)
        if bc.detector.mode != "4dstem":
            return a
        kx, ky = self._cbed_angles(bc)
        dark = np.hypot(kx[:, None], ky[None, :]) > float(bc.semiangle_cutoff)
        mask = dark if dark.any() else np.ones_like(dark)
        return np.tensordot(mask.astype(a.dtype), a, axes=([0, 1], [-4, -3]))

    def _cbed_angles(self, bc) -> tuple[np.ndarray, np.ndarray]:
        """Scattering angles [mrad] of the 4D-STEM detector pixels, zero at the centre pixel."""
        from forward.detectors import angular_sampling

        d = angular_sampling(self.grid, float(bc.energy))
        n = self._cbed_shape(bc)
        return ((np.arange(n[0]) - n[0] // 2) * d[0], (np.arange(n[1]) - n[1] // 2) * d[1])

    def _cbed_shape(self, bc) -> tuple[int, int]:
        from forward.detectors import cbed_gpts

        outer = float(bc.detector.outer)
        if outer <= 0:
            raise InputError(
                "a 4D-STEM beam needs detector 'outer' > 0: the camera's reach [mrad] (the frame holds the "
                "square of diffraction pixels within it)"
            )
        return tuple(int(v) for v in cbed_gpts(self.grid, outer, energy=float(bc.energy)))

    def _scan4d(self, beam: dict, bc) -> tuple[int, int]:
        """Probe positions of a 4D-STEM frame from the beam's scan step; the scan spans the cell
        and samples the band limit ``2 alpha / lambda`` (module docstring)."""
        cut = float(bc.semiangle_cutoff)
        if cut <= 0:
            raise InputError("a 4D-STEM beam needs a probe semiangle_cutoff > 0 [mrad]")
        step = parse_beam(beam, where="beam condition").sampling
        gpts = tuple(max(1, int(round(float(L) / s))) for L, s in zip(self.cell[:2], step))
        for L, s, n in zip(self.cell[:2], step, gpts):
            if abs(n * s - float(L)) > 1e-3 * float(L):
                raise InputError(
                    f"4D-STEM scan step {s:g} Å does not divide the cell ({float(L):.4f} Å): the frame spans the cell "
                    f"exactly; use {float(L) / n:.5g} Å ({n} positions)"
                )
        nyq = float(wavelength(bc.energy)) / (4.0 * cut * 1e-3)
        if max(step) > nyq * (1 + 1e-6):
            raise InputError(
                f"4D-STEM scan step {max(step):.4g} Å undersamples the data's band limit 2 alpha / lambda "
                f"({cut:g} mrad probe at {float(bc.energy) / 1e3:g} kV): use a step <= {nyq:.4g} Å"
            )
        return gpts

    def _stem4d_image(self, specimen: Specimen, bc, beam: dict) -> np.ndarray:
        # the camera binning does not enter a 4D-STEM frame
        sim = tuple(sorted((k, v) for k, v in self.settings.items() if k != "binning"))
        key = (content_id(specimen), sim, "4d", beam_key({k: v for k, v in beam.items() if k != "dose"}))
        img = _STEM_CACHE.get(key)
        if img is not None:
            return img
        from forward.prism import make_prism
        from forward.stem import make_scan

        gpts = self._scan4d(beam, bc)
        shape = self._cbed_shape(bc)
        cut, outer = float(bc.semiangle_cutoff), float(bc.detector.outer)
        pk = (float(bc.energy), cut, "4d", outer)
        prism = self._prism.get(pk)
        if prism is None:
            prism = make_prism(self.grid, float(self.cell[2]), self.settings["slice_thickness"], energy=float(bc.energy),
                               expansion_cutoff=cut + 1.0, cbed_crop=outer)  # fmt: skip
            self._prism[pk] = prism
        scan = make_scan(start=(0.0, 0.0), end=tuple(float(v) for v in self.cell[:2]), gpts=gpts)
        data = np.asarray(prism.apply(self._smatrix(prism, specimen, bc), dataclasses.replace(bc, source_size=0.0), scan),
                          np.float64)  # fmt: skip
        self.resimulations += 1
        if data.shape != gpts + shape:
            raise RuntimeError(f"PRISM returned a 4D-STEM frame of shape {data.shape}, expected {gpts + shape}")
        img = np.moveaxis(data, (0, 1), (2, 3))  # [kx, ky, sx, sy]
        if float(bc.source_size) > 0:
            img = _fourier_resample(img, gpts, self.cell[:2], float(bc.source_size))
        img = np.maximum(img, 1e-6 * max(float(img.mean()), 1e-12)).astype(np.float32)
        img = np.ascontiguousarray(img)
        img.setflags(write=False)
        if len(_STEM_CACHE) >= _STEM_CACHE_SIZE:
            _STEM_CACHE.pop(next(iter(_STEM_CACHE)))
        _STEM_CACHE[key] = img
        return img

    def _smatrix(self, prism, specimen: Specimen, bc):
        """The PRISM S-matrix of ``specimen`` (depends on the energy and the expansion cutoff only,
        not on the detector), reused while consecutive calls ask for the same one."""
        k = (content_id(specimen), float(bc.energy), float(bc.semiangle_cutoff))
        if self._last_smatrix is not None and self._last_smatrix[0] == k:
            return self._last_smatrix[1]
        sm = prism.build(specimen)
        self._last_smatrix = (k, sm)
        return sm

    def prepare(self, beams) -> None:
        """Simulate the images of ``beams`` for every hypothesis. STEM beams go hypothesis by
        hypothesis, so those of one energy and probe (annular detectors, 4D-STEM) share each
        hypothesis' S-matrix, built once instead of once per beam."""
        beams = list(beams)
        with self._lock:
            for s in self.specimens:
                for b in beams:
                    bc = self._parsed(b)
                    if bc.detector.mode == "stem_annular":
                        self._stem_image(s, bc, b)
                    elif bc.detector.mode == "4dstem":
                        self._stem4d_image(s, bc, b)
            self._last_smatrix = None
        for b in beams:
            self.images(b)

    def scan_gpts(self, bc) -> tuple[int, int]:
        """Probe positions simulated for an annular STEM frame: :func:`band_limited_scan`, never
        more than the frame's pixels."""
        need = band_limited_scan(self.cell, float(bc.energy), float(bc.semiangle_cutoff))
        return (min(need[0], self.camera_gpts[0]), min(need[1], self.camera_gpts[1]))

    def _stem_image(self, specimen: Specimen, bc, beam: dict) -> np.ndarray:
        key = (content_id(specimen), tuple(sorted(self.settings.items())), self.camera_gpts,
               beam_key({k: v for k, v in beam.items() if k != "dose"}))  # fmt: skip
        img = _STEM_CACHE.get(key)
        if img is not None:
            return img
        from forward.prism import make_prism
        from forward.stem import make_scan

        cut = float(bc.semiangle_cutoff)
        if cut <= 0:
            raise InputError("an annular STEM beam needs a probe semiangle_cutoff > 0 [mrad]")
        pk = (float(bc.energy), cut)
        prism = self._prism.get(pk)
        if prism is None:
            prism = make_prism(self.grid, float(self.cell[2]), self.settings["slice_thickness"], energy=float(bc.energy),
                               expansion_cutoff=cut + 1.0)  # fmt: skip
            self._prism[pk] = prism
        gpts = self.scan_gpts(bc)
        scan = make_scan(start=(0.0, 0.0), end=tuple(float(v) for v in self.cell[:2]), gpts=gpts)
        coarse = np.asarray(prism.apply(self._smatrix(prism, specimen, bc), dataclasses.replace(bc, source_size=0.0), scan),
                            np.float64)  # fmt: skip
        self.resimulations += 1
        img = _fourier_resample(coarse, self.camera_gpts, self.cell[:2], float(bc.source_size))
        # Interpolation rounding can leave values a hair below zero far from any atom; the expected
        # counts of a Poisson model must stay positive.
        img = np.maximum(img, 1e-6 * max(float(img.mean()), 1e-12)).astype(np.float32)
        img.setflags(write=False)
        if len(_STEM_CACHE) >= _STEM_CACHE_SIZE:
            _STEM_CACHE.pop(next(iter(_STEM_CACHE)))
        _STEM_CACHE[key] = img
        return img

    def add(self, specimen: Specimen, images: dict | None = None) -> int:
        """Add a hypothesis; its images are simulated on the next :meth:`images` call, except those
        given in ``images`` ({:func:`beam_key`: image}, computed elsewhere, e.g. beside the loop by
        another model with the same settings), which are used as they are."""
        if not np.allclose(np.asarray(specimen.cell), self.cell, rtol=2e-3):
            raise InputError(
                f"the new hypothesis has cell {np.asarray(specimen.cell).round(3).tolist()} Å; the session's cell is "
                f"{self.cell.round(3).tolist()} Å"
            )
        with self._lock:
            self.specimens.append(specimen)
            i = len(self.specimens) - 1
            for key, img in (images or {}).items():
                have = self._images.get(key)
                if have is not None and have.shape[0] == i and tuple(have.shape[1:]) == tuple(np.shape(img)):
                    self._images[key] = np.concatenate([have, np.asarray(img, np.float32)[None]])
            return i


def band_limited_scan(cell, energy: float, semiangle: float) -> tuple[int, int]:
    """The fewest probe positions over ``cell`` [Å] that sample a STEM signal's band limit
    ``2 alpha / lambda`` (``energy`` [eV], probe ``semiangle`` [mrad]), with :data:`_SCAN_MARGIN`."""
    kmax = 2.0 * float(semiangle) * 1e-3 / float(wavelength(energy))
    return tuple(math.ceil(2.0 * _SCAN_MARGIN * kmax * float(L)) for L in np.asarray(cell)[:2])


def _fourier_resample(image: np.ndarray, shape, extent, source_size: float = 0.0) -> np.ndarray:
    """A periodic, band-limited ``image`` (``[..., nx, ny]``) sampled on ``shape`` pixels over
    ``extent`` [Å] by zero-padding its spectrum, blurred by a Gaussian source of sigma
    ``source_size`` [Å]."""
    n = image.shape[-2:]
    f = np.fft.fft2(image)
    kx = np.fft.fftfreq(n[0], d=extent[0] / n[0])
    ky = np.fft.fftfreq(n[1], d=extent[1] / n[1])
    if source_size > 0:
        f = f * np.exp(-2.0 * np.pi**2 * source_size**2 * (kx[:, None] ** 2 + ky[None, :] ** 2))
    out = np.zeros(image.shape[:-2] + tuple(shape), complex)
    ix = np.mod(np.round(np.fft.fftfreq(n[0]) * n[0]).astype(int), shape[0])
    iy = np.mod(np.round(np.fft.fftfreq(n[1]) * n[1]).astype(int), shape[1])
    out[..., ix[:, None], iy[None, :]] = f
    return np.real(np.fft.ifft2(out)) * (shape[0] * shape[1]) / (n[0] * n[1])
