"""A Nion Swift instrumentation stack as a frame source and as the actuator of proposals.

Nion microscopes are driven through ``nionswift-instrumentation`` (``pip install hypotest[nion]``):
a *scan hardware source* acquires frames (one channel per detector: HAADF, MAADF, ...) and an
*instrument* (the STEM controller) holds the optics as named controls read with ``GetVal`` and set
with ``SetVal``. :class:`NionSource` implements :class:`hypotest.live.events.FrameSource` on them:

- **Frames.** Each poll records one scan frame of the session's channel with
  ``record_immediate`` (with a time-out sized to the frame, not the API's 3 s default). The array
  Nion returns is ``[y, x]`` with nm calibrations; the frame delivered is ``[x, y]`` (hypotest's
  layout) with the pixel size in Å from those calibrations, and its beam is read from the
  instrument at acquisition: ``EHT`` (energy), ``C10`` (defocus = -C10), ``C12.x``/``C12.y``,
  ``C30``, ``ConvergenceAngle``, and the dose per frame from the probe current and pixel time,
  ``dose = BeamCurrent x pixel_time / (e x pixel area)`` [e-/Å²]. Where the readings are those
  hypotest set, the frame carries the applied beam unchanged; where someone changed the instrument
  (at the console), the frame carries the beam read back and ``meta["instrument_changed"]`` says
  which control moved, so it is scored under what the microscope had.
- **Control.** :meth:`NionSource.apply_beam` turns a beam condition (BEAM.json form) into control
  values through one table (:data:`NION_CONTROLS`: Nion works in metres, radians, volts and
  amperes; BEAM.json in Å, mrad and eV), checks every value against the limits (:data:`LIMITS`,
  overridable) and the detector against the scan's channels, and only then sets them, reads each
  back with ``GetVal`` and sets the scan's field of view, pixel count and pixel time. What the
  instrument cannot do (an unknown control, a value out of range, a detector it has not, a read
  back that differs, a pixel time the scan cannot reach) raises :class:`BeamRefused` with the
  reason, and nothing is set. A frame whose acquisition began before the change completed is
  discarded (a :class:`hypotest.live.events.BadMessage` saying so, in the record), so no frame is
  scored under the wrong beam.

Two-fold astigmatism: Nion's ``C12.x``/``C12.y`` are the Cartesian components of the polar
(``C12``, ``phi12``) of BEAM.json (Krivanek notation: ``chi`` holds ``C12 theta^2 cos(2 (phi -
phi12)) / 2``), ``C12.x = C12 cos(2 phi12)``, ``C12.y = C12 sin(2 phi12)``.

At a microscope, hypotest runs in the process where the Nion hardware sources are registered
(Nion Swift's Python console, or a process that loads the instrument's plug-ins); the source is
named by the scan hardware source id (``nion:SCAN_ID``). ``nion:usim`` starts Nion's simulated
STEM headless with a sample that hypotest renders (:mod:`hypotest.live.nion_twin`).

Scans have square pixels (the field of view is one length, ``fov_nm``, across the width): a frame
spans the library's periodic cell only when its pixel counts follow the cell's aspect ratio;
:func:`square_pixel_gpts` chooses such counts and :class:`NionSource` refuses a frame shape that
does not span the cell within a fifth of a pixel.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import numpy as np

from forward.errors import InputError
from hypotest.beamfile import parse_beam
from hypotest.live.events import BadMessage, BeamRefused, RawFrame, SourceEvent, StreamEvent

__all__ = ["NION_CONTROLS", "LIMITS", "DEFAULT_CHANNELS", "BeamRefused", "ControlReport", "NionSource",
           "instrument_values", "beam_from_instrument", "square_pixel_gpts", "require_nion", "nion_candidates",
           "open_nion_source", "acquire_camera_frame"]  # fmt: skip

E_CHARGE = 1.602176634e-19  # C (exact, SI 2019)

#: One table of unit conversions: (what in BEAM.json, Nion control, Nion value per BEAM.json unit,
#: BEAM.json unit, Nion unit). ``energy`` and ``BeamCurrent`` are read, never set by a proposal.
NION_CONTROLS = (
    ("energy", "EHT", 1.0, "eV", "V"),
    ("C10 (= -defocus)", "C10", 1e-10, "Å", "m"),
    ("C12 cos(2 phi12)", "C12.x", 1e-10, "Å", "m"),
    ("C12 sin(2 phi12)", "C12.y", 1e-10, "Å", "m"),
    ("C30", "C30", 1e-10, "Å", "m"),
    ("semiangle_cutoff", "ConvergenceAngle", 1e-3, "mrad", "rad"),
    ("probe current", "BeamCurrent", 1.0, "A", "A"),
)
_FACTOR = {c: f for _, c, f, _, _ in NION_CONTROLS}
_UNIT = {c: u for _, c, _, _, u in NION_CONTROLS}
#: Controls a proposal sets (EHT and the probe current are the operator's).
SET_CONTROLS = ("C10", "C12.x", "C12.y", "C30", "ConvergenceAngle")

#: What hypotest will ask of the instrument, in Nion units (control -> (low, high)), and of the
#: scan (``pixel_time_us``, ``fov_nm``). Outside these a proposal is refused, not clipped.
LIMITS = {
    "C10": (-2e-6, 2e-6),  # m: +-2 um of defocus
    "C12.x": (-2e-7, 2e-7),
    "C12.y": (-2e-7, 2e-7),  # m: 200 nm of two-fold astigmatism
    "C30": (-1e-3, 1e-3),  # m: a corrected or uncorrected objective
    "ConvergenceAngle": (5e-3, 60e-3),  # rad
    "pixel_time_us": (0.05, 1e5),
    "fov_nm": (0.1, 1e4),
}
#: Annular detector per scan channel: name -> (inner, outer) [mrad]; a proposal's detector must
#: match one (within 1 mrad). Nion's defaults; give the microscope's own with ``channels=``.
DEFAULT_CHANNELS = {"HAADF": (80.0, 200.0), "MAADF": (40.0, 200.0)}
_DETECTOR_MATCH_MRAD = 1.0
#: read back equals set when within this relative difference (or 1e-15 absolute)
_READBACK_RTOL = 1e-6


def _channels_for(channels: dict, inner: float, outer: float) -> list[str]:
    """The channels whose (inner, outer) [mrad] match a detector's within 1 mrad."""
    return [k for k, (a, b) in channels.items()
            if abs(a - inner) <= _DETECTOR_MATCH_MRAD and abs(b - outer) <= _DETECTOR_MATCH_MRAD]  # fmt: skip


def require_nion():
    """Import the Nion instrumentation kit, or say how to install it."""
    try:
        from nion.instrumentation import HardwareSource  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"the Nion source needs nionswift-instrumentation ({exc}); install it with `pip install hypotest[nion]`"
        ) from None


@dataclasses.dataclass(frozen=True)
class ControlReport:
    """What applying a beam did at the instrument: each control with the value set and read back
    (Nion units), the scan settings, and the channel. True (the beam was applied)."""

    instrument: str
    controls: tuple  # ({"control", "set", "read", "unit"}, ...)
    scan: dict
    channel: str

    def __bool__(self) -> bool:
        return True

    def as_dict(self) -> dict:
        return {"instrument": self.instrument, "controls": [dict(c) for c in self.controls], "scan": dict(self.scan),
                "channel": self.channel}  # fmt: skip


def square_pixel_gpts(cell, sampling: float, *, search: float = 0.12) -> tuple[int, int]:
    """Pixel counts ``(nx, ny)`` whose square pixels span the cell ``(Lx, Ly)`` [Å] (the far
    edge within 0.05 pixel), with the pixel closest to ``sampling`` [Å] (searched within
    ``search`` of it; the best fit there when none is that close): a Nion scan has one pixel
    size in x and y."""
    lx, ly = float(cell[0]), float(cell[1])
    best = None
    for nx in range(max(2, int(lx / sampling * (1 - search))), int(lx / sampling * (1 + search)) + 2):
        ny = max(2, round(ly * nx / lx))
        err = abs(lx / nx - ly / ny) / (lx / nx)
        key = (err * max(nx, ny) > 0.05, abs(lx / nx - sampling))  # misfit at the far edge <= 0.05 px, then closeness
        if best is None or key < best[0]:
            best = (key, (nx, ny))
    return best[1]


def _aberrations(beam: dict) -> dict:
    return dict(beam.get("aberrations") or {})


def control_targets(beam: dict) -> dict:
    """The Nion control values [Nion units] that realise ``beam`` (BEAM.json form, parsed)."""
    ab = _aberrations(beam)
    c10 = float(ab["C10"]) if "C10" in ab else -float(ab.get("defocus", 0.0))
    c12, phi12 = float(ab.get("C12", 0.0)), float(ab.get("phi12", 0.0))
    return {
        "C10": c10 * _FACTOR["C10"],
        "C12.x": c12 * math.cos(2 * phi12) * _FACTOR["C12.x"],
        "C12.y": c12 * math.sin(2 * phi12) * _FACTOR["C12.y"],
        "C30": float(ab.get("C30", 0.0)) * _FACTOR["C30"],
        "ConvergenceAngle": float(beam.get("semiangle_cutoff", 0.0)) * _FACTOR["ConvergenceAngle"],
    }


def instrument_values(instrument) -> dict:
    """The optics controls of ``instrument`` (``GetVal``), Nion units; a control it has not is
    a :class:`BeamRefused` naming it."""
    out = {}
    for name in ("EHT", "BeamCurrent") + SET_CONTROLS:
        ok, value = instrument.TryGetVal(name)
        if not ok or value is None:
            raise BeamRefused(f"the instrument {_name(instrument)} has no control {name!r} (GetVal failed); hypotest "
                              f"needs {['EHT', 'BeamCurrent', *SET_CONTROLS]}")  # fmt: skip
        out[name] = float(value)
    return out


def beam_from_instrument(base: dict, values: dict, sampling, pixel_time_us: float) -> dict:
    """A beam (BEAM.json form) from ``base`` (the detector, simulation and source settings) with
    the optics and dose of the instrument ``values`` (Nion units) for a scan at ``sampling``
    [Å/pixel] and ``pixel_time_us``."""
    s = [float(v) for v in sampling]
    c12x, c12y = values["C12.x"] / _FACTOR["C12.x"], values["C12.y"] / _FACTOR["C12.y"]
    ab = {k: v for k, v in _aberrations(base).items() if k not in ("C10", "defocus", "C12", "phi12", "C30")}
    c10 = values["C10"] / _FACTOR["C10"]
    if c10 != 0:
        ab["defocus"] = -c10
    if c12x or c12y:
        ab["C12"] = math.hypot(c12x, c12y)
        ab["phi12"] = 0.5 * math.atan2(c12y, c12x)
    if values["C30"]:
        ab["C30"] = values["C30"] / _FACTOR["C30"]
    dose = values["BeamCurrent"] * pixel_time_us * 1e-6 / (E_CHARGE * s[0] * s[1])
    return {**base, "energy": values["EHT"], "semiangle_cutoff": values["ConvergenceAngle"] / _FACTOR["ConvergenceAngle"],
            "aberrations": ab, "dose": dose, "sampling": s}  # fmt: skip


def _name(instrument) -> str:
    return str(getattr(instrument, "instrument_id", type(instrument).__name__))


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= max(_READBACK_RTOL * max(abs(a), abs(b)), 1e-15)


class NionSource:
    """Frames from a Nion scan hardware source, beams through its instrument (module docstring).

    Args:
        scan: the scan hardware source (``HardwareSourceManager().get_hardware_source_for_hardware_source_id``).
        instrument: the STEM controller (``Registry.get_component("stem_controller")``).
        beam: the session's initial beam (BEAM.json form, ``stem_annular``): applied at once.
        frame_shape: ``(nx, ny)`` pixels of a frame (the session's model frame shape).
        cell: the periodic cell ``(Lx, Ly)`` [Å] a frame must span.
        channels: scan channel name -> (inner, outer) [mrad] (:data:`DEFAULT_CHANNELS`).
        limits: overrides of :data:`LIMITS`.
        rate_hz: frames per second at most (None: one frame per poll, back to back).
        max_frames: emit ``end`` after this many frames (None: never).
        owner: an object closed with the source (the headless twin of ``nion:usim``).
    """

    name = "Nion scan"
    controllable = True

    def __init__(self, scan, instrument, beam: dict, *, frame_shape, cell, channels=None, limits=None,
                 rate_hz: float | None = None, max_frames: int | None = None, owner=None):  # fmt: skip
        self._scan = scan
        self._instrument = instrument
        self.channels = {str(k): (float(v[0]), float(v[1])) for k, v in (channels or DEFAULT_CHANNELS).items()}
        self.limits = {**LIMITS, **(limits or {})}
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.cell = (float(cell[0]), float(cell[1]))
        self.rate_hz = rate_hz
        self.max_frames = max_frames
        self._owner = owner
        self._lock = threading.RLock()
        self._gen = 0  # bumped by every beam change: a frame begun under an older one is discarded
        self._beam: dict | None = None
        self._applied: dict = {}
        self._fp = None
        self._channel_index: int | None = None
        self._t0: float | None = None
        self._emitted = 0
        self._next_id = 0
        self._ended = False
        self._closed = False
        self.reports: list[ControlReport] = []
        names = [scan.get_channel_state(i).name for i in range(scan.channel_count)]
        self._channel_names = names
        self.initial = self.apply_beam(beam)
        self.settings = {"kind": "nion", "scan": scan.hardware_source_id, "instrument": _name(instrument),
                         "scan_channels": names, "channels": {k: list(v) for k, v in self.channels.items()},
                         "limits": {k: list(v) for k, v in self.limits.items()}, "frame_shape": list(self.frame_shape),
                         "initial_controls": self.initial.as_dict()}  # fmt: skip

    # ------------------------------------------------------------------ control
    def _check(self, beam: dict) -> tuple[dict, int, dict]:
        """The control targets, channel index and scan settings of ``beam``, or BeamRefused."""
        bf = parse_beam(beam, where="beam condition")
        det = bf.beam.detector
        if det.mode != "stem_annular":
            raise BeamRefused(f"the Nion scan acquires annular dark-field STEM; a {det.mode!r} condition needs another "
                              "source (a camera)")  # fmt: skip
        inner, outer = float(det.inner), float(det.outer)
        match = _channels_for(self.channels, inner, outer)
        if not match:
            raise BeamRefused(f"no scan channel collects {inner:g}-{outer:g} mrad; the channels are "
                              + ", ".join(f"{k} {a:g}-{b:g} mrad" for k, (a, b) in self.channels.items()))  # fmt: skip
        channel = match[0]
        if channel not in self._channel_names:
            raise BeamRefused(f"the scan {self._scan.hardware_source_id!r} has no channel {channel!r} "
                              f"(it has {self._channel_names})")  # fmt: skip
        now = instrument_values(self._instrument)
        if not _same(now["EHT"], float(bf.beam.energy)):
            raise BeamRefused(f"the beam asks {bf.beam.energy:g} eV; the instrument's high tension (EHT) is "
                              f"{now['EHT']:g} V, and hypotest does not change it")  # fmt: skip
        targets = control_targets(beam)
        for c, v in targets.items():
            lo, hi = self.limits[c]
            if not lo <= v <= hi:
                raise BeamRefused(f"{c} = {v:.6g} {_UNIT[c]} is outside the range hypotest may set, "
                                  f"[{lo:g}, {hi:g}] {_UNIT[c]}")  # fmt: skip
        sx, sy = bf.sampling
        if abs(sx - sy) > 1e-3 * sx:
            raise BeamRefused(f"the beam's sampling {sx:.6g} x {sy:.6g} Å is not square; a Nion scan has one pixel size")
        nx, ny = self.frame_shape
        misfit = abs(ny * sx - self.cell[1]) / sx
        if misfit > 0.2 or abs(nx * sx - self.cell[0]) / sx > 0.2:
            raise BeamRefused(
                f"a {nx} x {ny} scan at {sx:.6g} Å spans {nx * sx:.4f} x {ny * sx:.4f} Å, not the cell "
                f"{self.cell[0]:.4f} x {self.cell[1]:.4f} Å (off by {misfit:.2f} px); build the session's model with "
                f"square-pixel counts (hypotest.live.nion.square_pixel_gpts gives "
                f"{square_pixel_gpts(self.cell, sx)})"
            )  # fmt: skip
        current = now["BeamCurrent"]
        if not current > 0:
            raise BeamRefused(f"the probe current (BeamCurrent) reads {current:g} A; the dose cannot be set")
        pixel_time_us = float(bf.beam.dose) * sx * sy * E_CHARGE / current * 1e6
        lo, hi = self.limits["pixel_time_us"]
        if not lo <= pixel_time_us <= hi:
            raise BeamRefused(
                f"a dose of {bf.beam.dose:g} e-/Å² at {current:.3g} A and {sx:.4g} Å pixels needs {pixel_time_us:.3g} us "
                f"per pixel, outside the scan's [{lo:g}, {hi:g}] us; change the probe current"
            )  # fmt: skip
        fov_nm = max(nx, ny) * sx / 10.0  # Nion's fov_nm spans the longer side (scan_base.get_scan_calibrations)
        lo, hi = self.limits["fov_nm"]
        if not lo <= fov_nm <= hi:
            raise BeamRefused(f"a field of view of {fov_nm:g} nm is outside [{lo:g}, {hi:g}] nm")
        scan = {"pixel_size": [ny, nx], "fov_nm": fov_nm, "pixel_time_us": pixel_time_us, "rotation_rad": 0.0,
                "center_nm": [0.0, 0.0]}  # fmt: skip
        return targets, self._channel_names.index(channel), scan

    def apply_beam(self, beam: dict) -> ControlReport:
        """Set the instrument and the scan for ``beam`` (module docstring); BeamRefused with the
        reason when it cannot (then nothing was set, or, for a read back that differs, the
        controls set so far are named)."""
        if self._closed:
            raise BeamRefused("the Nion source is closed")
        targets, channel_index, scan = self._check(beam)
        with self._lock:
            self._gen += 1  # frames begun from here on are under the new beam, or discarded
            done = []
            for c, v in targets.items():
                if not self._instrument.SetVal(c, v):
                    raise BeamRefused(f"the instrument refused SetVal({c!r}, {v:.6g}) (set so far: {done})")
                ok, back = self._instrument.TryGetVal(c)
                if not ok or back is None or not _same(float(back), v):
                    raise BeamRefused(f"{c} set to {v:.6g} {_UNIT[c]} reads back {back!r} (set so far: {done})")
                done.append({"control": c, "set": v, "read": float(back), "unit": _UNIT[c]})
            fp = self._scan.get_current_frame_parameters()
            fp.pixel_size = tuple(scan["pixel_size"])
            fp.fov_nm = scan["fov_nm"]
            fp.pixel_time_us = scan["pixel_time_us"]
            fp.rotation_rad = scan["rotation_rad"]
            fp.center_nm = tuple(scan["center_nm"])
            self._scan.set_current_frame_parameters(fp)
            for i in range(self._scan.channel_count):
                self._scan.set_channel_enabled(i, i == channel_index)
            self._fp = fp
            self._channel_index = channel_index
            self._beam = dict(beam)
            self._applied = {d["control"]: d["read"] for d in done}
            self._gen += 1
            report = ControlReport(_name(self._instrument), tuple(done), scan, self._channel_names[channel_index])
            self.reports.append(report)
        return report

    @property
    def beam(self) -> dict | None:
        with self._lock:
            return None if self._beam is None else dict(self._beam)

    # ------------------------------------------------------------------ frames
    def poll(self, timeout: float) -> list[SourceEvent]:
        if self._ended or self._closed:
            return []
        out: list[SourceEvent] = []
        if self._t0 is None:
            self._t0 = time.monotonic()
            out.append(StreamEvent("connected", time.time(), f"Nion scan {self._scan.hardware_source_id} on "
                                                             f"{_name(self._instrument)}"))  # fmt: skip
        if self.max_frames is not None and self._emitted >= self.max_frames:
            self._ended = True
            return out + [StreamEvent("end", time.time(), f"{self._emitted} frames acquired")]
        if self.rate_hz:
            wait = self._t0 + self._emitted / self.rate_hz - time.monotonic()
            if wait > timeout:
                time.sleep(max(timeout, 0.0))
                return out
            if wait > 0:
                time.sleep(wait)
        out.append(self._acquire())
        return out

    def _acquire(self) -> SourceEvent:
        with self._lock:
            gen, fp, beam, index, applied = self._gen, self._fp, dict(self._beam), self._channel_index, dict(self._applied)
        sid = self._next_id
        self._next_id += 1
        t_start = time.time()
        frame_time = fp.pixel_time_us * 1e-6 * fp.pixel_size[0] * fp.pixel_size[1]
        xdatas = self._scan.record_immediate(fp, sync_timeout=max(3.0, 3 * frame_time + 2.0))
        with self._lock:
            changed_during = gen != self._gen
        self._emitted += 1
        if changed_during:
            return BadMessage(sid, time.time(), f"frame {sid} was being acquired while the beam changed (began "
                              f"{t_start:.3f}); discarded, not scored under either beam")  # fmt: skip
        chosen = [x for x in xdatas if x is not None and x.metadata.get("hardware_source", {}).get("channel_index") == index]
        if not chosen:
            return BadMessage(sid, time.time(), f"the scan returned no data for channel {self._channel_names[index]!r} "
                              f"(got {len(xdatas)} channels)")  # fmt: skip
        x = chosen[0]
        data = np.asarray(x.data)
        cal = x.dimensional_calibrations
        units = [c.units for c in cal]
        if data.ndim != 2 or units != ["nm", "nm"]:
            return BadMessage(sid, time.time(), f"the scan returned a {data.shape} array calibrated in {units}; "
                              "expected a 2D frame in nm")  # fmt: skip
        sampling = (float(cal[1].scale) * 10.0, float(cal[0].scale) * 10.0)  # x: columns, y: rows; nm -> Å
        counts = np.ascontiguousarray(data.T)  # Nion [y, x] -> hypotest [x, y]
        if counts.shape != self.frame_shape:
            return BadMessage(sid, time.time(), f"the scan returned {counts.shape[0]} x {counts.shape[1]} pixels; the "
                              f"session expects {self.frame_shape[0]} x {self.frame_shape[1]}")  # fmt: skip
        values = instrument_values(self._instrument)
        moved = {c: {"set": applied[c], "read": values[c]} for c in SET_CONTROLS
                 if c in applied and not _same(applied[c], values[c])}  # fmt: skip
        meta = {"source": self.name, "channel": self._channel_names[index], "instrument": values,
                "scan_id": str(x.metadata.get("scan", {}).get("scan_id", ""))}  # fmt: skip
        if moved:
            # someone else moved the optics: score under what the instrument had
            beam = beam_from_instrument(beam, values, beam["sampling"], fp.pixel_time_us)
            meta["instrument_changed"] = moved
        return RawFrame(source_id=sid, timestamp=t_start, counts=counts, beam=beam, sampling=sampling, meta=meta)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ended = True
        try:
            if self._scan.is_playing:
                self._scan.stop_playing(sync_timeout=5.0)
        finally:
            if self._owner is not None:
                self._owner.close()


def nion_candidates(beam: dict, channels=None, defocus=(-40.0, 40.0)) -> list[tuple[str, dict]]:
    """The beams a design step may propose to a Nion scan: ``beam`` as given (its channel), the
    other channels' detectors at the beam's probe focus, then the beam at each probe ``defocus`` [Å] (the
    annular dark-field depth of field at 25 mrad and 80 kV, ``lambda / alpha^2``, is ~70 Å)."""
    chans = dict(channels or DEFAULT_CHANNELS)
    det = dict(beam.get("detector") or {})
    out = []
    for name, (inner, outer) in chans.items():
        label = f"{name} {inner:g}-{outer:g} mrad"
        if name in _channels_for({name: (inner, outer)}, float(det.get("inner", -1e9)), float(det.get("outer", -1e9))):
            out.insert(0, (label, dict(beam)))  # the beam as given (its frames carry it unchanged)
        else:
            out.append((label, {**beam, "detector": {**det, "mode": "stem_annular", "inner": inner, "outer": outer}}))
    base_ab = {k: v for k, v in _aberrations(beam).items() if k not in ("C10", "defocus")}
    f0 = -float(_aberrations(beam).get("C10", -float(_aberrations(beam).get("defocus", 0.0))))
    for df in defocus:
        out.append((f"probe defocus {f0 + df:+g} Å", {**beam, "aberrations": {**base_ab, "defocus": f0 + df}}))
    return out


def open_nion_source(spec: str, *, beam: dict, model, hypotheses=(), twin: str | None = None,
                     rate_hz: float | None = None, max_frames: int | None = None, seed: int = 0,
                     channels=None, beam_current: float | None = None) -> NionSource:  # fmt: skip
    """The source ``nion:SCAN_ID`` (a scan hardware source registered in this process, with the
    ``stem_controller`` instrument) or ``nion:usim`` (Nion's simulated STEM with ``twin``, a
    hypothesis id or name of ``hypotheses``, on its stage: :class:`hypotest.live.nion_twin.UsimTwin`)."""
    require_nion()
    target = spec.split(":", 1)[1] if ":" in spec else ""
    kw = {"frame_shape": model.frame_shape, "cell": model.cell[:2], "channels": channels, "rate_hz": rate_hz,
          "max_frames": max_frames}  # fmt: skip
    if target == "usim":
        from hypotest.live.model import ImageModel
        from hypotest.live.nion_twin import UsimTwin

        if twin is None:
            raise InputError("nion:usim needs --twin ID (the hypothesis on the simulated microscope's stage: "
                             f"one of {[h.name.split(' @ ')[0] for h in hypotheses]})")  # fmt: skip
        labels = [h.name.split(" @ ")[0] for h in hypotheses]  # "W_Mo @ Mo column ..." -> "W_Mo"
        match = [h for h, lbl in zip(hypotheses, labels) if twin in (h.id, h.name, lbl)]
        if len(match) != 1:
            raise InputError(f"--twin {twin!r} names {'no' if not match else 'more than one'} hypothesis of the library: "
                             f"give an id, a name or a label of {labels}")  # fmt: skip
        m = model.settings
        twin_model = ImageModel([match[0].specimen], sampling=m["sampling"], binning=m["binning"],
                                slice_thickness=m["slice_thickness"], camera_gpts=model.camera_gpts)  # fmt: skip
        opts = {} if beam_current is None else {"beam_current": beam_current}
        scope = UsimTwin(twin_model, 0, beam, channels=channels, seed=seed, **opts)
        try:
            src = NionSource(scope.scan, scope.instrument, beam, owner=scope, **kw)
        except BaseException:
            scope.close()
            raise
        src.settings.update(spec=spec, twin={"hidden": match[0].id, "name": match[0].name, "seed": seed,
                                             "beam_current": float(scope.instrument.GetVal("BeamCurrent"))})  # fmt: skip
        return src
    from nion.instrumentation import HardwareSource
    from nion.utils import Registry

    mgr = HardwareSource.HardwareSourceManager()
    scan = mgr.get_hardware_source_for_hardware_source_id(target) if target else None
    if scan is None:
        raise InputError(f"source {spec!r}: no Nion hardware source {target!r} is registered in this process (registered: "
                         f"{[h.hardware_source_id for h in mgr.hardware_sources]}); give nion:SCAN_ID where the "
                         "instrument's plug-ins are loaded, or nion:usim")  # fmt: skip
    instrument = Registry.get_component("stem_controller")
    if instrument is None:
        raise InputError(f"source {spec!r}: no stem_controller instrument is registered in this process")
    src = NionSource(scan, instrument, beam, **kw)
    src.settings.update(spec=spec)
    return src


def acquire_camera_frame(camera, *, timeout: float = 10.0) -> tuple[np.ndarray, tuple[float, float], dict]:
    """One frame of a Nion camera hardware source (a Ronchigram or diffraction camera): the
    counts ``[kx, ky]`` (hypotest's layout; Nion's arrays are ``[y, x]``), the angular pixel
    size ``(x, y)`` [mrad] from its calibrations (Nion: rad), and the frame parameters. hypotest
    scores scans; a single Ronchigram is acquired and recorded, not scored (no model of it)."""
    camera.start_playing()
    try:
        xdatas = camera.get_next_xdatas_to_finish(timeout)
    finally:
        camera.stop_playing(sync_timeout=timeout)
    if not xdatas or xdatas[0] is None:
        raise InputError(f"the camera {camera.hardware_source_id!r} returned no frame within {timeout:g} s")
    x = xdatas[0]
    cal = x.dimensional_calibrations
    units = [c.units for c in cal]
    if units != ["rad", "rad"]:
        raise InputError(f"the camera {camera.hardware_source_id!r} is calibrated in {units}, not rad: not a diffraction "
                         "camera")  # fmt: skip
    return (np.ascontiguousarray(np.asarray(x.data).T), (float(cal[1].scale) * 1e3, float(cal[0].scale) * 1e3),
            dict(camera.get_current_frame_parameters().as_dict()))  # fmt: skip
