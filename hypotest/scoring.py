"""The batch front door behind ``hypotest score``: library + frames + BEAM.json -> RESULT.json.

1. hypotheses from a built-in library, a library file (``library.format``, HDF5) or a
   directory/glob of structure files (one hypothesis per file, id = file stem;
   :func:`hypotest.hypothesis.load_hypotheses`), all in one shared orthogonal cell;
2. frames from any file :mod:`hypotest.frames` reads (.npy/.npz, MRC, HDF5/EMD, DM3/DM4, TIFF;
   one frame [nx, ny] or a stack [T, nx, ny], :func:`hypotest.frames.read_image_frames`) that
   span exactly that cell, pixel (0, 0) at the cell origin;
3. one simulation per hypothesis (HRTEM: multislice + CTF on the camera grid; STEM annular:
   multislice over a scan of one probe position per frame pixel);
4. :func:`inference.score_frames`: shift, scale and background marginalised per frame (Laplace),
   posterior with the prior weights, rejections with their reasons;
5. HRTEM: the next defocus ranked by expected information gain per electron over a defocus series
   (the exit waves are reused: one FFT pair per hypothesis and condition).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np

from forward import InputError, Specimen, make_grid, replace
from forward.constants import scherzer_defocus
from hypotest.beamfile import BeamFile
from inference import SCORERS, ScoreResult, ScorerConfig, noise_from_detector, rank_conditions, score_frames

__all__ = ["ScoringInput", "run_score", "run_score_optics", "spans_field_of_view", "CELL_RTOL", "MAX_COUNT", "check_frame_counts", "check_result_finite"]

#: Relative tolerance for "the frame spans the cell" and "the hypotheses share a cell".
CELL_RTOL = 2e-3
#: The largest magnitude a frame pixel may hold [counts]. Frames are scored in float32 (largest
#: 3.4e38); 1e12 counts in one pixel is far beyond any detector (a 32-bit counter stops at 4.3e9,
#: a pixel at 1e9 e-/Å², the highest dose a BEAM.json takes, over 1 Å² and gain 1 holds 1e9) and
#: keeps float32 sums of counts, squares and logs over a frame finite.
MAX_COUNT = 1e12


@dataclasses.dataclass(frozen=True)
class ScoringInput:
    ids: tuple[str, ...]
    names: tuple[str, ...]
    specimens: tuple[Specimen, ...]
    priors: np.ndarray

    @classmethod
    def from_hypotheses(cls, hyps) -> ScoringInput:
        """The scoring input of :class:`hypotest.Hypothesis` objects (:func:`hypotest.hypothesis.load_hypotheses`)."""
        return cls(tuple(h.id for h in hyps), tuple(h.name for h in hyps), tuple(h.specimen for h in hyps),
                   np.asarray([float(h.prior) for h in hyps]))  # fmt: skip


def _shared_cell(hyps: ScoringInput) -> np.ndarray:
    cells = np.stack([np.asarray(s.cell) for s in hyps.specimens])
    bad = np.flatnonzero(np.abs(cells - cells[0]).max(axis=1) > CELL_RTOL * cells[0].max())
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"hypotheses must share one periodic cell to be compared pixel for pixel: {hyps.ids[0]} has "
            f"{cells[0].round(4).tolist()} Å, {hyps.ids[i]} has {cells[i].round(4).tolist()} Å"
        )
    return cells[0]


def _check_frame_geometry(cell, shape, sampling) -> None:
    span = np.asarray(shape, float) * np.asarray(sampling)
    if np.any(np.abs(span - cell[:2]) > CELL_RTOL * cell[:2]):
        fit = (cell[0] / shape[0], cell[1] / shape[1])
        raise InputError(
            f"frames of {shape[0]}x{shape[1]} pixels at {sampling[0]:g} x {sampling[1]:g} Å/pixel span "
            f"{span[0]:.4g} x {span[1]:.4g} Å, but the hypotheses' cell is {cell[0]:.4g} x {cell[1]:.4g} Å: "
            f"a frame must span exactly the cell (sampling {fit[0]:.5g} x {fit[1]:.5g} Å/pixel), or be larger than the "
            "cell along both axes (a field of view: the lattice is registered and every site scored)"
        )


def spans_field_of_view(hyps: ScoringInput, shape, sampling) -> bool:
    """True when frames of ``shape`` at ``sampling`` are a field of view larger than the hypotheses'
    shared cell (:mod:`hypotest.fieldofview`), False when they span exactly the cell (the
    closed-world path); a frame smaller than the cell but not equal to it is an error there."""
    cell = _shared_cell(hyps)
    span = np.asarray(shape, float) * np.asarray(sampling)
    if np.all(np.abs(span - cell[:2]) <= CELL_RTOL * cell[:2]):
        return False
    if np.any(span < cell[:2] * (1 - CELL_RTOL)):
        _check_frame_geometry(cell, shape, sampling)
    return True


def _defocus_series(beam):
    """Defocus candidates around the given beam: the current one and steps of a Scherzer unit."""
    unit = float(abs(scherzer_defocus(max(abs(float(beam.aberrations.C30)), 1e4), float(beam.energy))))
    current = -float(beam.aberrations.C10)
    offsets = (0.0, -1.0, -0.5, 0.5, 1.0, 2.0)
    beams, labels = [], []
    for k in offsets:
        df = current + k * unit
        beams.append(replace(beam, aberrations=replace(beam.aberrations, C10=np.asarray(-df))))
        labels.append(f"defocus {df:.1f} Å" + (" (current)" if k == 0 else ""))
    return beams, labels


def check_frame_counts(counts: np.ndarray, where: str = "frames") -> None:
    """Frames ``[T, ...]`` that can be counts: at least one frame, every pixel finite and within
    :data:`MAX_COUNT` (so nothing overflows in float32); errors name ``where``, the frame and the pixel."""
    c = np.asarray(counts)
    if c.ndim < 3 or c.shape[0] == 0:
        raise InputError(f"no frames in {where}: got shape {list(c.shape)}; give one frame [nx, ny] or a stack [T, nx, ny]")
    if c.dtype.kind not in "uif":
        raise InputError(f"{where}: frames must be numeric counts, got dtype {c.dtype}")
    if c.dtype.kind == "f":
        bad = ~np.isfinite(c)
        if bad.any():
            t, *px = (int(k) for k in np.argwhere(bad)[0])
            raise InputError(
                f"{where}: frame {t} pixel {tuple(px)} is {c[(t, *px)]}: counts must be finite; mask or repair bad pixels"
            )
    big = np.abs(c) > MAX_COUNT
    if big.any():
        t, *px = (int(k) for k in np.argwhere(big)[0])
        raise InputError(
            f"{where}: frame {t} pixel {tuple(px)} holds {float(c[(t, *px)]):.4g}, which cannot be a count: a pixel may hold "
            f"at most {MAX_COUNT:g} counts in magnitude (hypotest.scoring.MAX_COUNT; frames are scored in float32, whose "
            f"range ends at {float(np.finfo(np.float32).max):.3g}); check the file's units and dtype"
        )


def _first_nonfinite(x, path: str = ""):
    """(path, value) of the first non-finite float in a JSON-like ``x``, or None."""
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return path, float(x)
    if isinstance(x, dict):
        for k, v in x.items():
            hit = _first_nonfinite(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            hit = _first_nonfinite(v, f"{path}[{i}]")
            if hit:
                return hit
    return None


def check_result_finite(out: dict, names: dict | None = None) -> None:
    """Every number of a RESULT.json dict is finite (JSON has no NaN or infinity), else an
    :class:`InputError` naming the hypothesis, the field and (for per-frame values) the frame."""
    names = names or {}
    for h in out.get("hypotheses", []):
        hit = _first_nonfinite({k: v for k, v in h.items() if k != "nuisance"})
        frame = _first_nonfinite(h.get("nuisance", {}))
        if hit is None and frame is None:
            continue
        field, value = hit if hit is not None else (f"nuisance.{frame[0]}", frame[1])
        where = ""
        if frame is not None:
            t = re.search(r"\[(\d+)\]", frame[0])
            where = f" (frame {t.group(1)}: nuisance {frame[0]} = {frame[1]})" if t else f" (nuisance {frame[0]} = {frame[1]})"
        hid = h.get("id", "?")
        label = f"{names[hid]} ({hid})" if hid in names and names[hid] != hid else str(hid)
        raise InputError(
            f"the score of hypothesis {label} is not finite: {field} = {value}{where}; nothing was written. The "
            "frames are outside what the model can score (check their counts, dose and sampling against BEAM.json)"
        )
    rest = _first_nonfinite({k: v for k, v in out.items() if k != "hypotheses"})
    if rest is not None:
        raise InputError(f"the result is not finite: {rest[0]} = {rest[1]}; nothing was written")


def simulation_grid(cell, bf: BeamFile):
    """The grid the hypotheses are simulated on: over the cell at BEAM.json's simulation sampling,
    at most half the frame's pixel (so the camera bins whole simulation pixels or resamples a
    band-limited image); a grid too large is an error naming the setting that asked for it."""
    sim_sampling = min(bf.sim_sampling, 0.5 * min(bf.sampling))
    try:
        return make_grid(extent=np.asarray(cell)[:2], sampling=sim_sampling)
    except InputError as exc:
        what = "BEAM.json simulation.sampling" if sim_sampling == bf.sim_sampling else "half the frame sampling"
        raise InputError(f"the simulation grid ({what}, {sim_sampling:g} Å): {exc}") from None


def run_score(hyps: ScoringInput, counts: np.ndarray, bf: BeamFile, *, seed: int = 0, progress=None,
              scorer: str = "laplace", where: str = "frames", optics=None, fit_rate: float | None = None) -> ScoreResult:
    """Simulate every hypothesis under ``bf``, score ``counts`` and (HRTEM) propose the next defocus.

    ``counts`` are checked first (:func:`check_frame_counts`; ``where`` names their file in errors),
    and the scorer's name, before any simulation. ``optics``: an :class:`inference.OpticsPrior`
    (HRTEM only): the defocus, astigmatism and thickness learned from the frames and marginalised
    (:func:`run_score_optics`) instead of BEAM.json's taken as exact.
    """
    if scorer not in SCORERS:
        raise InputError(f"unknown scorer {scorer!r}: expected one of {SCORERS}")
    check_frame_counts(counts, where)
    if optics is not None:
        return run_score_optics(hyps, counts, bf, optics, seed=seed, progress=progress, fit_rate=fit_rate)
    cell = _shared_cell(hyps)
    shape = counts.shape[1:]
    _check_frame_geometry(cell, shape, bf.sampling)
    grid = simulation_grid(cell, bf)
    mode = bf.beam.detector.mode
    it = progress(hyps.specimens) if progress else hyps.specimens
    if mode == "hrtem":
        from forward.hrtem import make_hrtem_simulator

        sim = make_hrtem_simulator(
            grid, float(cell[2]), bf.slice_thickness, parametrization=bf.parametrization, camera_gpts=shape
        )
        waves = [sim.exit_wave(s, bf.beam) for s in it]
        images = np.stack([np.asarray(sim.image_from_exit_wave(w, bf.beam)) for w in waves])
    elif mode == "stem_annular":
        from forward.stem import make_scan, make_stem_simulator

        scan = make_scan(start=(0.0, 0.0), end=tuple(cell[:2]), gpts=shape)
        sim = make_stem_simulator(grid, float(cell[2]), bf.slice_thickness, scan, parametrization=bf.parametrization)
        images = np.stack([np.asarray(sim(s, bf.beam)) for s in it])
    else:
        raise InputError(
            f"hypotest score handles detector modes 'hrtem' and 'stem_annular', got {mode!r}: "
            "4D-STEM frames are scored by `hypotest live --library LIB --source FRAMES --beam BEAM.json`, "
            "segmented-detector data through the Python API (inference.score_frames)"
        )
    noise = noise_from_detector(bf.beam.detector)
    config = ScorerConfig(kind=scorer, noise=noise)  # background prior relative to the images' level
    result = score_frames(counts, images, hyps.priors, bf.beam, bf.sampling, ids=hyps.ids, names=hyps.names, scorer=config,
                          **({} if fit_rate is None else {"fit_rate": fit_rate}))  # fmt: skip
    if mode == "hrtem":
        beams, labels = _defocus_series(bf.beam)
        cand = np.stack([np.stack([np.asarray(sim.image_from_exit_wave(w, b)) for w in waves]) for b in beams])
        log_post = np.log(np.maximum(result.posterior, 1e-300))
        ranked = rank_conditions(
            jax.random.key(seed), cand, float(bf.beam.dose), bf.sampling[0] * bf.sampling[1], log_post,
            noise, labels=labels,
        )  # fmt: skip
        result = result.with_proposals(ranked)
    return result


def run_score_optics(hyps: ScoringInput, counts: np.ndarray, bf: BeamFile, optics, *, seed: int = 0, progress=None,
                     fit_rate: float | None = None) -> ScoreResult:  # fmt: skip
    """HRTEM frames scored with the optics as nuisance (:func:`inference.score_frames_optics`).

    Each hypothesis is simulated with ``optics.extra_cells`` host unit cells added at the exit
    surface (:func:`forward.add_exit_layers`: one multislice per thickness choice); the defocus and
    astigmatism are one FFT pair per exit wave from there (:func:`forward.make_optics_image_fn`).
    The defocus series of the design step is centred on the learned defocus, and the result's
    ``optics`` carries the correction as text ("set defocus to ...").
    """
    from forward import add_exit_layers, make_optics_image_fn
    from forward.hrtem import make_hrtem_simulator
    from inference import score_frames_optics

    mode = bf.beam.detector.mode
    if mode != "hrtem":
        raise InputError(
            f"optics learned from one-cell frames are HRTEM's (defocus, astigmatism, thickness); the detector is {mode!r}. "
            "ADF-STEM's source size and inner angle are learned from a field of view's host lattice (--optics frame with a "
            "frame larger than the cell)"
        )
    cell = _shared_cell(hyps)
    shape = counts.shape[1:]
    _check_frame_geometry(cell, shape, bf.sampling)
    grid = simulation_grid(cell, bf)
    sims: dict[float, object] = {}
    waves = []
    it = progress(range(len(hyps.specimens))) if progress else range(len(hyps.specimens))
    for h in it:
        row = []
        for k in optics.extra_cells:
            try:
                spec = add_exit_layers(hyps.specimens[h], k)
            except InputError as exc:
                raise InputError(f"hypothesis {hyps.names[h]!r} ({hyps.ids[h]}), thickness +{k} unit cell(s): {exc}") from None
            tz = float(np.asarray(spec.cell)[2])
            if tz not in sims:
                sims[tz] = make_hrtem_simulator(grid, tz, bf.slice_thickness, parametrization=bf.parametrization,
                                                camera_gpts=shape)  # fmt: skip
            row.append(np.asarray(sims[tz].exit_wave(spec, bf.beam)))
        waves.append(row)
    waves = np.asarray(waves)
    image_fn = make_optics_image_fn(grid, bf.beam, shape)
    result, fit = score_frames_optics(counts, waves, image_fn, hyps.priors, bf.beam, bf.sampling, optics, ids=hyps.ids,
                                      names=hyps.names, fit_rate=fit_rate)  # fmt: skip
    est = result.optics
    learned = replace(bf.beam, aberrations=replace(bf.beam.aberrations, C10=np.asarray(-est["defocus_A"], np.float32)))
    beams, labels = _defocus_series(learned)
    import jax.numpy as jnp

    kbest = [fit.best_cells(h) for h in range(len(hyps.ids))]
    cand = []
    for bm in beams:
        d = float(-bm.aberrations.C10) - optics.nominal_defocus
        cand.append(np.stack([np.asarray(image_fn(waves[h, kbest[h]], jnp.asarray([d, *fit.theta[h, kbest[h], 1:]], jnp.float32)))
                              for h in range(len(hyps.ids))]))  # fmt: skip
    log_post = np.log(np.maximum(result.posterior, 1e-300))
    ranked = rank_conditions(jax.random.key(seed), np.stack(cand), float(bf.beam.dose), bf.sampling[0] * bf.sampling[1],
                             log_post, noise_from_detector(bf.beam.detector), labels=labels)  # fmt: skip
    optics_out = {**est, "correction": f"set defocus to {est['defocus_A']:.1f} Å (nominal {optics.nominal_defocus:.1f} Å)"
                  + (f"; correct C12 {est['c12_A']:.1f} Å at {est['phi12_rad']:.2f} rad" if est["c12_A"] > 2 * est["c12_sd_A"] else "")
                  + (f"; the crystal is {est['extra_cells']} unit cell(s) thicker than the hypotheses' cells" if est["extra_cells"] else "")}  # fmt: skip
    return dataclasses.replace(result.with_proposals(ranked), optics=optics_out)


def proposal_beams(bf: BeamFile, defocus: float | None = None) -> list[dict]:
    """The defocus candidates as BEAM.json-style aberration dicts, in proposal index order (around
    ``defocus`` [Å] when the optics were learned, else around BEAM.json's)."""
    beam = bf.beam if defocus is None else replace(bf.beam, aberrations=replace(bf.beam.aberrations, C10=np.asarray(-defocus)))
    beams, _ = _defocus_series(beam)
    return [{"defocus": round(-float(b.aberrations.C10), 3)} for b in beams]


