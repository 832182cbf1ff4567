"""Nion's simulated STEM (``nionswift-usim``) headless, with a sample hypotest renders: the
"digital twin" behind ``hypotest live --source nion:usim``.

What is Nion's and what is hypotest's:

- **Nion's, unchanged:** the instrument (``nion.usim_device.InstrumentDevice``: its controls,
  ``GetVal``/``SetVal``, the probe current), the scan device and its hardware source
  (``nion.usim_device.ScanDevice``, ``nion.instrumentation.scan_base``: frame parameters, channels,
  pixel timing, ``record_immediate``, calibrations), the Ronchigram camera and its hardware
  source (its Ronchigram is drawn from usim's own toy sample, not the twin's structure), and the
  registry and hardware-source manager they are found through. hypotest talks to
  these exactly as to a microscope's (:class:`hypotest.live.nion.NionSource`).
- **hypotest's:** the scan data generator (:class:`TwinScanData`). usim draws toy samples (no
  atoms, no wave optics); the twin instead renders the annular dark-field image of a hidden
  structure with hypotest's own forward model (:class:`hypotest.live.model.ImageModel`: PRISM
  multislice), under the optics the instrument holds at the start of each frame (``EHT``,
  ``C10``, ``C12``, ``C30``, ``ConvergenceAngle``), for the detector of the enabled channel, at
  the scan's positions (field of view, pixel count, rotation, centre, plus the stage and drift
  offset usim reports), and draws Poisson counts at ``BeamCurrent x pixel time / e`` electrons per
  probe position. A session against the twin therefore tests the Nion API path for real and the
  physics only against hypotest's own model (the abTEM reference tests cover that model).

Startup is headless (no Qt, no document): the hardware-source layer is started with its own
asyncio event loop (Swift would lend its application's) and a temporary configuration directory (usim's default configuration object would delete and recreate
``./test_data`` in the working directory), and :meth:`UsimTwin.close` unregisters every component
and stops every thread it started.
"""

from __future__ import annotations

import asyncio
import gettext
import math
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from scipy import ndimage

from forward.errors import InputError
from hypotest.live.nion import DEFAULT_CHANNELS, E_CHARGE, beam_from_instrument, instrument_values, require_nion

__all__ = ["TwinScanData", "UsimTwin"]

_ = gettext.gettext


class TwinScanData:
    """A usim scan data generator (``generate_scan_data(instrument, scan_frame_parameters)``)
    rendering ``state`` of ``model`` (module docstring). ``base_beam``: the detector-independent
    settings (source size, simulation) of the rendered beam; ``channels``: channel name ->
    (inner, outer) [mrad]; ``seed``: the Poisson noise. ``frames`` counts the frames rendered."""

    def __init__(self, model, state: int, base_beam: dict, *, channels=None, seed: int = 0):
        self.model = model
        self.state = int(state)
        self.base_beam = dict(base_beam)
        self.channels = dict(channels or DEFAULT_CHANNELS)
        self.scan_device = None  # set by UsimTwin: which channel is enabled
        #: usim's own toy sample, which its Ronchigram camera draws (the twin renders scans only)
        self.sample = None
        self._rng = np.random.default_rng([seed, 4242])
        self.frames = 0
        self._lock = threading.Lock()

    def _detector(self) -> dict:
        dev = self.scan_device
        name = "HAADF"
        if dev is not None:
            on = [dev.get_channel_name(i) for i, e in enumerate(dev.channels_enabled) if e]
            name = on[0] if on else name
        inner, outer = self.channels.get(name, self.channels.get("HAADF", (80.0, 200.0)))
        return {"mode": "stem_annular", "inner": inner, "outer": outer}

    def render_beam(self, instrument) -> dict:
        """The beam the twin renders under: the instrument's optics now, the enabled channel's
        detector, at the model's own sampling (the dose is applied per probe position)."""
        values = instrument_values(instrument)
        base = {**self.base_beam, "detector": self._detector()}
        beam = beam_from_instrument(base, values, self.model.pixel_sampling, 1.0)
        beam["dose"] = 1.0  # images are per incident electron; one key per optical condition
        return beam

    def generate_scan_data(self, instrument, scan_frame_parameters) -> np.ndarray:
        beam = self.render_beam(instrument)
        image = np.asarray(self.model.images(beam)[self.state], dtype=np.float64)  # [mx, my], fraction collected
        size = scan_frame_parameters.size
        h, w = int(size.height), int(size.width)
        fov = scan_frame_parameters.fov_size_nm
        fov_w = float(fov.width if fov else scan_frame_parameters.fov_nm)
        p = fov_w * 10.0 / w  # Å per pixel (square pixels)
        centre = scan_frame_parameters.center_nm
        offset = instrument.value_manager.actual_offset_m  # stage - beam shift + drift [m]
        cx = float(centre.x) * 10.0 + float(offset.x) * 1e10
        cy = float(centre.y) * 10.0 + float(offset.y) * 1e10
        rot = float(scan_frame_parameters.rotation_rad)
        j, i = np.meshgrid(np.arange(w), np.arange(h))  # columns: x, rows: y
        u, v = (j - w / 2) * p, (i - h / 2) * p
        c, s = math.cos(rot), math.sin(rot)
        lx, ly = float(self.model.cell[0]), float(self.model.cell[1])
        x = c * u - s * v + cx + lx / 2  # the cell origin sits at (-Lx/2, -Ly/2) of the stage
        y = s * u + c * v + cy + ly / 2
        mx, my = image.shape
        frac = ndimage.map_coordinates(image, [x / (lx / mx), y / (ly / my)], order=3, mode="grid-wrap")
        electrons = float(instrument.GetVal("BeamCurrent")) * float(scan_frame_parameters.pixel_time_us) * 1e-6 / E_CHARGE
        with self._lock:
            counts = self._rng.poisson(np.clip(frac, 0.0, None) * electrons)
            self.frames += 1
        return counts.astype(np.float32)  # [rows (y), columns (x)] as Nion's scans


class _TwinConfiguration:
    """usim's instrument, scan module and Ronchigram camera with the twin's scan data (the
    parts of ``nion.usim_device.DeviceConfiguration.AcquisitionContextConfiguration`` a session
    needs, built from the same public constructors, without the configuration directory)."""

    def __init__(self, generator: TwinScanData):
        from nion.device_kit import CameraDevice
        from nion.usim_device import InstrumentDevice, RonchigramCameraSimulator, ScanDevice
        from nion.utils import Geometry

        self.instrument_id = "usim_stem_controller"
        value_manager = InstrumentDevice.ValueManager()
        self.instrument = InstrumentDevice.Instrument(self.instrument_id, value_manager, InstrumentDevice.AxisManager(),
                                                      generator)  # fmt: skip
        generator.sample = InstrumentDevice.ScanDataGenerator().sample  # for usim's Ronchigram camera
        self.scan_module = ScanDevice.ScanModule(self.instrument)
        generator.scan_device = self.scan_module.device
        self.ronchigram_camera_device_id = "usim_ronchigram_camera"
        inst = self.instrument
        sim = RonchigramCameraSimulator.RonchigramCameraSimulator(
            inst, Geometry.IntSize.make(inst.camera_sensor_dimensions("ronchigram")), inst.counts_per_electron,
            inst.stage_size_nm,
        )  # fmt: skip
        self.camera_device = CameraDevice.Camera(self.ronchigram_camera_device_id, "ronchigram", _("uSim Ronchigram Camera"),
                                                 sim, inst)  # fmt: skip
        self.camera_settings = CameraDevice.CameraSettings(self.ronchigram_camera_device_id)
        value_manager.ronchigram_camera = self.camera_device
        self._camera_module = CameraDevice.CameraModule(self.instrument_id, self.camera_device, self.camera_settings)

    def run(self) -> None:
        from nion.utils import Registry

        Registry.register_component(self.instrument, {"instrument_controller", "stem_controller"})
        setattr(self.camera_device, "camera_panel_type", "ronchigram")
        Registry.register_component(self._camera_module, {"camera_module"})
        Registry.register_component(self.scan_module, {"scan_module"})

    def stop(self) -> None:
        from nion.utils import Registry

        Registry.unregister_component(self._camera_module, {"camera_module"})
        Registry.unregister_component(self.scan_module, {"scan_module"})
        Registry.unregister_component(self.instrument, {"instrument_controller", "stem_controller"})


class UsimTwin:
    """Nion's simulated STEM, headless, rendering ``state`` of ``model`` (module docstring).

    Args:
        model: an :class:`hypotest.live.model.ImageModel` holding the hidden structure(s).
        state: which of ``model``'s specimens is on the stage.
        base_beam: BEAM.json settings the twin renders with besides the instrument's optics
            (``source_size``, ``simulation``); its ``energy`` sets the instrument's ``EHT``.
        beam_current: the probe current [A] (``BeamCurrent``); 0.5 pA by default (a low-dose
            probe), so that a few tens of e-/Å² take a pixel time the scan can do (0.1 us at 40
            e-/Å² on 0.1 Å pixels).
        channels, seed: as :class:`TwinScanData`.

    Use as a context manager or call :meth:`close`. ``scan``, ``camera`` (hardware sources) and
    ``instrument`` are what :class:`hypotest.live.nion.NionSource` takes.
    """

    scan_id = "usim_scan_device"
    camera_id = "usim_ronchigram_camera"

    def __init__(self, model, state: int, base_beam: dict, *, beam_current: float = 0.5e-12, channels=None, seed: int = 0):
        require_nion()
        from nion.instrumentation import HardwareSource, camera_base, scan_base

        if not 0 <= int(state) < len(model.specimens):
            raise InputError(f"twin state {state} is not one of the model's {len(model.specimens)} structures")
        self.generator = TwinScanData(model, state, base_beam, channels=channels, seed=seed)
        self._dir = Path(tempfile.mkdtemp(prefix="hypotest-nion-"))  # the hardware sources' configuration files
        self._closed = False
        # Nion's hardware sources take the current thread's asyncio loop at construction (in Swift,
        # the application's); headless there is none, and Python 3.12 warns on asking for one.
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        HardwareSource.run()
        camera_base.run(self._dir)
        scan_base.run(self._dir)
        self.configuration = _TwinConfiguration(self.generator)
        try:
            self.configuration.run()
            mgr = HardwareSource.HardwareSourceManager()
            self.scan = mgr.get_hardware_source_for_hardware_source_id(self.scan_id)
            self.camera = mgr.get_hardware_source_for_hardware_source_id(self.camera_id)
            self.instrument = self.configuration.instrument
            if self.scan is None or self.camera is None:
                raise RuntimeError(f"usim registered {[h.hardware_source_id for h in mgr.hardware_sources]}")
            self.instrument.SetVal("EHT", float(base_beam["energy"]))
            self.instrument.SetVal("BeamCurrent", float(beam_current))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> UsimTwin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop acquisition, unregister the components, stop the hardware-source layer; idempotent."""
        if self._closed:
            return
        self._closed = True
        from nion.instrumentation import HardwareSource, camera_base, scan_base

        mgr = HardwareSource.HardwareSourceManager()
        for hs in list(mgr.hardware_sources):
            if hs.is_playing:
                hs.abort_playing(sync_timeout=5.0)
        configuration = getattr(self, "configuration", None)  # None: refused before it was built
        try:
            if configuration is not None:
                configuration.stop()
        finally:
            scan_base.stop()
            camera_base.stop()
            HardwareSource.stop()
            mgr.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            asyncio.set_event_loop(None)
            self._loop.close()
