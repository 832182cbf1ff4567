"""What a pre-simulation computes: a frozen :class:`SimulationSpec` and its stable digest.

A spec fixes everything that turns a :class:`forward.Specimen` into a cached image: the
simulator kind (HRTEM camera image, STEM scan, or the HRTEM exit wave), the grid, the specimen thickness and slice
thickness [Å], the beam condition (energy [eV], aperture [mrad], aberrations [Å, rad],
detector), the potential parametrisation, the species the compiled program accepts, and the
camera pixels (HRTEM) or scan (STEM). :func:`spec_digest` is a sha256 of a canonical JSON form of
all of it (floats written as shortest round-trip decimals), so a cache entry is keyed by
``(hypothesis id, spec digest)`` and is found again by any process on any machine; Python's
``hash()`` is salted per process and is never used.

:func:`make_spec_simulator` turns a spec into ``simulate(specimen) -> np.ndarray``: it builds the
forward model (:func:`forward.hrtem.make_hrtem_simulator` or :func:`forward.stem.make_stem_simulator`)
and jit-compiles it *in the calling process*: Ray workers call it inside their task or actor,
so no compiled closure is ever pickled (DESIGN section 6, STYLE anti-pattern 5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np

from forward import BeamCondition, Grid, InputError, Specimen
from forward.stem import Scan

__all__ = [
    "SIMULATOR_KINDS",
    "SimulationSpec",
    "make_simulation_spec",
    "spec_to_json",
    "spec_digest",
    "check_specimen",
    "forward_simulator",
    "make_spec_simulator",
    "output_shape",
]

#: ``"hrtem"``: plane-wave image on a camera ``[mx, my]``; ``"stem"``: a probe scan,
#: ``[sx, sy]`` (annular), ``[sx, sy, segment]`` or ``[sx, sy, kx, ky]`` by the detector mode;
#: ``"exit_wave"``: the HRTEM exit wave ``[gx, gy]`` complex64 on the simulation grid, which depends
#: on the specimen, the energy and the tilt only (a new defocus is then one FFT pair, DESIGN
#: section 3): what :class:`hypotest.live.model.ImageModel` takes as ``exit_waves``.
SIMULATOR_KINDS = ("hrtem", "stem", "exit_wave")

_SCHEMA = "hypotest.simulation-spec/1"


@dataclasses.dataclass(frozen=True, eq=False)
class SimulationSpec:
    """The parameters of one pre-simulation (plain, picklable configuration; compare by
    :func:`spec_digest`).

    Attributes:
        kind: one of :data:`SIMULATOR_KINDS`.
        grid: simulation grid; its extent equals the specimen cell in x and y [Å].
        thickness: specimen thickness along the beam [Å].
        slice_thickness: requested multislice slice thickness [Å].
        beam: :class:`forward.BeamCondition` (its detector mode fixes the output layout).
        species: atomic numbers the compiled program accepts (sorted, unique).
        parametrization: ``"lobato"`` or ``"kirkland"`` scattering factors.
        camera_gpts: HRTEM camera pixels ``(mx, my)`` covering the cell (None: the grid).
        scan: STEM probe positions (:class:`forward.stem.Scan`); None for HRTEM.
    """

    kind: str
    grid: Grid
    thickness: float
    slice_thickness: float
    beam: BeamCondition
    species: tuple[int, ...]
    parametrization: str = "lobato"
    camera_gpts: tuple[int, int] | None = None
    scan: Scan | None = None


def make_simulation_spec(
    grid: Grid,
    beam: BeamCondition,
    *,
    thickness: float,
    slice_thickness: float,
    species: Sequence[int],
    kind: str | None = None,
    parametrization: str = "lobato",
    camera_gpts: int | Sequence[int] | None = None,
    scan: Scan | None = None,
) -> SimulationSpec:
    """A validated :class:`SimulationSpec`.

    Args:
        grid: simulation grid (``forward.make_grid(extent=cell[:2], sampling=...)``).
        beam: beam condition (``forward.make_beam``).
        thickness: specimen thickness [Å] (usually ``cell[2]``).
        slice_thickness: requested slice thickness [Å].
        species: atomic numbers the specimens may contain (e.g. ``(16, 42)`` for MoS2).
        kind: ``"hrtem"``, ``"stem"`` or ``"exit_wave"``; default from ``beam.detector.mode``
            (``"hrtem"`` or ``"stem"``). An exit-wave spec needs an HRTEM beam; of the beam only
            its energy and tilt enter the digest (nothing else changes an exit wave).
        parametrization: ``"lobato"`` (default) or ``"kirkland"``.
        camera_gpts: HRTEM camera pixels (default: the simulation grid).
        scan: STEM scan (required for ``kind="stem"``).
    """
    if not isinstance(grid, Grid):
        raise InputError(f"grid must be a forward.Grid (see forward.make_grid), got {type(grid).__name__}")
    if not isinstance(beam, BeamCondition):
        raise InputError(f"beam must be a forward.BeamCondition (see forward.make_beam), got {type(beam).__name__}")
    mode = beam.detector.mode
    if kind is None:
        kind = "hrtem" if mode == "hrtem" else "stem"
    if kind not in SIMULATOR_KINDS:
        raise InputError(f"unknown simulator kind {kind!r}: expected one of {SIMULATOR_KINDS}")
    if (kind in ("hrtem", "exit_wave")) != (mode == "hrtem"):
        raise InputError(
            f"simulator kind {kind!r} does not match the beam's detector mode {mode!r}: HRTEM and its exit "
            "wave need an 'hrtem' detector, STEM an annular, segmented or 4dstem one (forward.make_detector)"
        )
    t = _positive(thickness, "thickness")
    dz = _positive(slice_thickness, "slice_thickness")
    sp = sorted({int(z) for z in np.asarray(species).reshape(-1)})
    if not sp or sp[0] < 1 or sp[-1] > 103:
        raise InputError(f"species must be atomic numbers in 1..103 (e.g. (16, 42)), got {list(species)!r}")
    cam = None
    if camera_gpts is not None:
        if kind != "hrtem":
            raise InputError(
                "camera_gpts applies to HRTEM only, to its images: a STEM image is sampled by its scan, an "
                "exit wave by the simulation grid"
            )
        c = np.atleast_1d(np.asarray(camera_gpts))
        c = np.repeat(c, 2) if c.size == 1 else c
        if c.shape != (2,) or (c < 1).any() or (c != np.round(c)).any():
            raise InputError(f"camera_gpts must be a positive integer or a pair, got {camera_gpts!r}")
        cam = (int(c[0]), int(c[1]))
    if kind == "stem" and not isinstance(scan, Scan):
        raise InputError(
            f"a STEM spec needs scan=forward.stem.make_scan(...), got {type(scan).__name__}"
        )
    if kind != "stem" and scan is not None:
        raise InputError(f"scan applies to STEM only; leave it None for {kind!r}")
    if parametrization not in ("lobato", "kirkland"):
        raise InputError(f"unknown parametrization {parametrization!r}: expected 'lobato' or 'kirkland'")
    _check_beam_on_grid(kind, grid, beam)
    return SimulationSpec(
        kind=kind,
        grid=grid,
        thickness=t,
        slice_thickness=dz,
        beam=beam,
        species=tuple(sp),
        parametrization=parametrization,
        camera_gpts=cam,
        scan=scan,
    )


def _check_beam_on_grid(kind: str, grid: Grid, beam: BeamCondition) -> None:
    """forward's own eager guards for the beam on this grid (aperture and detector angles within
    the antialias cutoff, probe fits the cell). They run here, once per spec, because inside the
    jit-compiled simulator the beam is traced and forward skips them."""
    from forward.detectors import check_detector
    from forward.guards import check_angles, check_energy
    from forward.probe import check_probe

    e = check_energy(beam.energy)
    if kind == "exit_wave":  # no lens, no detector: the energy is all that is checked
        return
    if kind == "hrtem":
        sa = float(np.asarray(beam.semiangle_cutoff))
        if sa > 0:
            check_angles(grid, e, sa, "objective aperture semiangle")
    else:
        check_probe(grid, beam)
        check_detector(grid, beam.detector, e)


def _positive(x, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{name} [Å] must be a number, got {x!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be positive and finite [Å], got {x!r}")
    return v


def _leaves(tree) -> dict[str, list]:
    """Named leaves of a pytree as float64 lists (canonical, order-independent)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[jax.tree_util.keystr(path)] = np.asarray(leaf, dtype=np.float64).tolist()
    return out


def _beam_leaves(spec: SimulationSpec) -> dict[str, list]:
    """The beam's named leaves that determine the output: all of them, or for an exit wave the
    energy and tilt only (so any lens, dose or detector shares the cached wave)."""
    leaves = _leaves(spec.beam)
    if spec.kind == "exit_wave":
        return {k: v for k, v in leaves.items() if k in (".energy", ".tilt")}
    return leaves


def spec_to_json(spec: SimulationSpec) -> dict:
    """A canonical JSON-serialisable description of ``spec`` (what :func:`spec_digest` hashes)."""
    if not isinstance(spec, SimulationSpec):
        raise InputError(f"expected a SimulationSpec (see make_simulation_spec), got {type(spec).__name__}")
    d = {
        "schema": _SCHEMA,
        "kind": spec.kind,
        "grid": {"gpts": list(spec.grid.gpts), "sampling_A": [float(s) for s in spec.grid.sampling]},
        "thickness_A": spec.thickness,
        "slice_thickness_A": spec.slice_thickness,
        "species": list(spec.species),
        "parametrization": spec.parametrization,
        "camera_gpts": None if spec.camera_gpts is None else list(spec.camera_gpts),
        "beam": _beam_leaves(spec),
        "detector_mode": spec.beam.detector.mode,
        "detector_segments": spec.beam.detector.n_segments,
        "scan": None,
    }
    if spec.scan is not None:
        d["scan"] = {**_leaves(spec.scan), "gpts": list(spec.scan.gpts), "endpoint": bool(spec.scan.endpoint)}
    return d


def spec_digest(spec: SimulationSpec) -> str:
    """Stable 16-hex-digit sha256 digest of :func:`spec_to_json` (same in every process)."""
    text = json.dumps(spec_to_json(spec), sort_keys=True, separators=(",", ":"))
    return "s" + hashlib.sha256(text.encode()).hexdigest()[:16]


def output_shape(spec: SimulationSpec) -> tuple[int, ...]:
    """Shape of one simulated image: ``[mx, my]`` (HRTEM), the grid ``[gx, gy]`` (exit wave) or
    the STEM layout's leading ``[sx, sy]``."""
    if spec.kind == "hrtem":
        return tuple(spec.camera_gpts or spec.grid.gpts)
    if spec.kind == "exit_wave":
        return tuple(spec.grid.gpts)
    return tuple(spec.scan.gpts)


def check_specimen(spec: SimulationSpec, specimen: Specimen, hyp_id: str = "") -> None:
    """Raise :class:`InputError` unless ``specimen`` fits ``spec``: one structure, its cell equal to
    the grid extent in x, y [Å], its thickness ``cell[2]`` within the spec's, its species in
    ``spec.species`` (under jit atoms of other species would silently contribute nothing)."""
    who = f"hypothesis {hyp_id}" if hyp_id else "specimen"
    if not isinstance(specimen, Specimen):
        raise InputError(f"{who}: expected a forward.Specimen, got {type(specimen).__name__}")
    cell = np.asarray(specimen.cell, dtype=np.float64)
    if cell.shape != (3,):
        raise InputError(f"{who}: expected one specimen with cell [3], got cell shape {list(cell.shape)}")
    ext = np.asarray(spec.grid.extent)
    if np.abs(cell[:2] - ext).max() > 1e-4 * max(1.0, float(ext.max())):
        raise InputError(
            f"{who}: cell {cell[:2].round(4).tolist()} Å does not match the grid extent "
            f"{ext.round(4).tolist()} Å; make one spec per cell (forward.make_grid(extent=cell[:2], ...))"
        )
    if cell[2] > spec.thickness * (1 + 1e-6):
        raise InputError(
            f"{who}: cell thickness {cell[2]:.4g} Å exceeds the spec thickness {spec.thickness:.4g} Å; "
            "set thickness to the specimen's cell[2]"
        )
    z = set(np.asarray(specimen.numbers).reshape(-1).tolist())
    extra = sorted(z - set(spec.species))
    if extra:
        raise InputError(
            f"{who}: atomic numbers {extra} are not in the spec's species {list(spec.species)}; "
            "add them to species= in make_simulation_spec"
        )


def forward_simulator(spec: SimulationSpec):
    """The forward simulator ``spec`` describes: an :class:`forward.hrtem.HRTEMSimulator` (HRTEM,
    exit wave) or the ``simulate(specimen, beam)`` of :func:`forward.stem.make_stem_simulator` (STEM)."""
    from forward.hrtem import make_hrtem_simulator
    from forward.stem import make_stem_simulator

    if spec.kind == "exit_wave":
        # Called eagerly (make_spec_simulator does not jit it), so the potential takes the species
        # of each specimen, exactly as the live image model computes its exit waves: the cached
        # wave is bit for bit the one ImageModel would compute (a species list padded with absent
        # elements changes the summation order and the last bit of some pixels).
        return make_hrtem_simulator(spec.grid, spec.thickness, spec.slice_thickness, parametrization=spec.parametrization)
    if spec.kind == "hrtem":
        return make_hrtem_simulator(
            spec.grid,
            spec.thickness,
            spec.slice_thickness,
            parametrization=spec.parametrization,
            species=spec.species,
            camera_gpts=spec.camera_gpts,
        )
    return make_stem_simulator(
        spec.grid,
        spec.thickness,
        spec.slice_thickness,
        spec.scan,
        parametrization=spec.parametrization,
        species=spec.species,
    )


def make_spec_simulator(spec: SimulationSpec) -> Callable[[Specimen], np.ndarray]:
    """``simulate(specimen) -> float32 numpy image`` for ``spec``, jit-compiled in this process
    (an exit wave: ``complex64 [gx, gy]``, see below).

    Calls :func:`forward.hrtem.make_hrtem_simulator` (Kirkland 2010 eq. 3.62-3.66) or
    :func:`forward.stem.make_stem_simulator` (Kirkland 2010 sec. 6.6). The result is in the
    units :mod:`inference.noise` expects: intensity relative to the incident beam (HRTEM:
    vacuum = 1; STEM: the detected fraction of the probe per scan position), so expected electrons
    per pixel = intensity x dose [e-/Å²] x pixel (or scan-step) area [Å²]. One compilation per
    atom count. Build it inside a Ray task or actor, never ship the result. An exit wave (the
    plane wave after the multislice, Kirkland 2010 eq. 6.92, relative to the incident wave) is
    computed by :meth:`forward.hrtem.HRTEMSimulator.exit_wave` as it stands, its propagation jitted
    inside, the potential compiled per atom count and species set.
    """
    sim = forward_simulator(spec)
    if spec.kind == "exit_wave":
        beam = spec.beam

        def exit_wave(specimen: Specimen) -> np.ndarray:
            check_specimen(spec, specimen)
            return np.asarray(sim.exit_wave(specimen, beam), dtype=np.complex64)

        return exit_wave
    if spec.kind == "hrtem":
        sim = sim.simulate
    jitted = jax.jit(sim)
    beam = spec.beam

    def simulate(specimen: Specimen) -> np.ndarray:
        check_specimen(spec, specimen)
        return np.asarray(jitted(specimen, beam), dtype=np.float32)

    return simulate
