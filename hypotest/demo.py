"""The demo job: the embedded default, end to end, on what exists so far.

1. library: the built-in MoS2 point-defect library (pristine, V_S, V_S2, V_Mo, antisites, O_S,
   W_Mo), as validated hypotheses;
2. pre-simulation: a loopback-only local Ray instance; workers compute the HRTEM exit wave of
   every hypothesis once (the exit wave does not depend on the lens, so a new defocus later is
   one FFT per hypothesis);
3. the simulated microscope hides one hypothesis (chosen by the seed) and emits Poisson frames;
   each frame updates the posterior (shift, scale and background marginalised); hypotheses
   whose Bayes factor against the best falls below the rule are rejected with the reason;
   after each frame the next defocus is chosen by expected information gain per electron and
   applied; the run stops when one hypothesis reaches P >= 0.99;
4. record: every frame's beam, dose and posterior in ``record.jsonl`` (append-only) and a
   summary in ``demo.json``; the truth is revealed only at the end and compared.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from forward import make_beam, make_detector, make_grid, replace
from forward.constants import scherzer_defocus
from forward.hrtem import make_hrtem_simulator
from forward.noise import pixel_area
from hypotest.hypothesis import Hypothesis, make_hypothesis
from hypotest.microscope import SimulatedMicroscope, Truth
from inference import (
    find_rejections,
    init_posterior,
    make_rejection_rule,
    noise_from_detector,
    posterior_probs,
    rank_conditions,
    score_frames,
    update_posterior,
)
from inference.posterior import log_posterior

LIBRARY = "mos2_defects"
#: Simulation sampling [Å] and camera binning (camera pixel = BIN x sampling).
SAMPLING, BIN = 0.05, 2
SLICE_THICKNESS = 1.0  # [Å]
ENERGY = 80e3  # [eV]: below the knock-on threshold of S in MoS2
C30 = -1.5e5  # [Å] = -15 µm, aberration-corrected (negative Cs imaging)
DOSE_PER_FRAME = 40.0  # [e-/Å²]
TARGET = 0.99
MAX_FRAMES = 60


def load_hypotheses(name: str = LIBRARY) -> list[Hypothesis]:
    """The built-in library ``name`` as hypotheses (ids are the library's content hashes)."""
    from library.builtin import load

    hyps = []
    for e in load(name):
        h = make_hypothesis(e.specimen, name=e.name, family=e.family, prior=float(e.prior), provenance=e.provenance)
        if h.id != e.id:
            raise RuntimeError(f"library id {e.id} differs from the hypothesis id {h.id} of {e.name!r}")
        hyps.append(h)
    return hyps


def _simulator(cell):
    grid = make_grid(extent=cell[:2], sampling=SAMPLING)
    cam = (grid.gpts[0] // BIN, grid.gpts[1] // BIN)
    return make_hrtem_simulator(grid, float(cell[2]), SLICE_THICKNESS, camera_gpts=cam)


def _exit_waves_task(specimens, cell, energy):
    """Ray task body: exit waves of a batch of specimens (simulator built inside the worker)."""
    sim = _simulator(np.asarray(cell))
    beam = make_beam(energy)
    return [np.asarray(sim.exit_wave(s, beam)) for s in specimens]


def candidate_beams(base):
    """Defocus series the design step chooses from: multiples of the Scherzer defocus."""
    f0 = float(scherzer_defocus(C30, ENERGY))
    factors = (-1.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    beams = []
    for k in factors:
        ab = replace(base.aberrations, C10=np.asarray(-k * f0))
        beams.append(replace(base, aberrations=ab))
    labels = [f"defocus {k * f0:+.0f} Å ({k:g} x Scherzer)" for k in factors]
    return beams, labels


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What every session of the demo shares: hypotheses, simulator, candidate beams, images."""

    hyps: tuple[Hypothesis, ...]
    sim: object  # forward.hrtem.HRTEMSimulator (not pickled: built in this process)
    beams: tuple
    labels: tuple[str, ...]
    images: np.ndarray  # [C, H, mx, my] intensity relative to the beam, per candidate beam
    detector: object


def prepare(hyps, waves) -> Prepared:
    """Images of every hypothesis under every candidate beam, from their exit waves."""
    cell = np.asarray(hyps[0].specimen.cell)
    sim = _simulator(cell)
    det = make_detector("hrtem")
    base = make_beam(
        ENERGY, semiangle_cutoff=25.0, aberrations={"C30": C30}, defocus=-float(scherzer_defocus(C30, ENERGY)),
        focal_spread=20.0, angular_spread=0.1, dose=DOSE_PER_FRAME, detector=det,
    )  # fmt: skip
    beams, labels = candidate_beams(base)
    images = np.stack(
        [np.stack([np.asarray(sim.image_from_exit_wave(w, b)) for w in waves]) for b in beams]
    )  # [C, H, mx, my]
    return Prepared(tuple(hyps), sim, tuple(beams), tuple(labels), images, det)


def run_session(
    p: Prepared, seed: int, *, adaptive: bool = True, start: int = 2, max_frames: int = MAX_FRAMES,
    record=None, log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """One session: a hidden hypothesis (by ``seed``), frames until P >= TARGET or ``max_frames``.

    ``adaptive``: apply the beam proposed by expected information gain per electron after every
    frame; otherwise stay at candidate ``start`` (Scherzer). ``record``: a text file that gets one
    JSON line per frame, flushed as it goes.
    """
    hyps = p.hyps
    rng = np.random.default_rng(seed)
    true_index = int(rng.integers(len(hyps)))
    truth = Truth(hyps[true_index].id, hyps[true_index].name)
    scope = SimulatedMicroscope(p.sim, hyps[true_index].specimen, truth, p.beams[start], jax.random.key(seed))
    current = start
    area = pixel_area(scope.sampling)
    noise = noise_from_detector(p.detector)
    rule = make_rejection_rule()
    ids = [h.id for h in hyps]
    state = init_posterior([float(h.prior) for h in hyps])
    latencies = []
    rejected_log: dict[str, dict] = {}
    for frame_id in range(max_frames):
        counts = scope.acquire()
        t_frame = time.perf_counter()
        res = score_frames(counts, p.images[current], [1.0] * len(hyps), scope.beam, scope.sampling, ids=ids, noise=noise)
        state = update_posterior(state, res.log_evidence, DOSE_PER_FRAME)
        post = np.asarray(posterior_probs(state), dtype=np.float64)
        for rj in find_rejections(state, rule, ids):
            rejected_log.setdefault(rj.hypothesis_id, {"name": hyps[rj.index].name, "frame": frame_id, "reason": rj.reason})
        proposal = None
        best = int(np.argmax(post))
        if adaptive and post[best] < TARGET:
            ranked = rank_conditions(
                jax.random.fold_in(jax.random.key(seed + 1), frame_id), p.images, DOSE_PER_FRAME, area,
                np.asarray(log_posterior(state)), noise, n_samples=32, labels=p.labels,
            )  # fmt: skip
            proposal = ranked[0]
        latencies.append(time.perf_counter() - t_frame)
        if record is not None:
            entry = {
                "frame_id": frame_id,
                "beam": p.labels[current],
                "dose_e_per_A2": DOSE_PER_FRAME,
                "posterior": post.round(6).tolist(),
                "rejected": sorted(rejected_log),
                "proposal": None if proposal is None else proposal.to_dict(),
                "latency_s": round(latencies[-1], 4),
            }
            record.write(json.dumps(entry) + "\n")
            record.flush()
        log(f"      frame {frame_id:2d} [{p.labels[current]}]  best {hyps[best].name:<40.40} P={post[best]:.4f}"
            f"  rejected {len(rejected_log)}/{len(hyps)}")
        if post[best] >= TARGET:
            break
        if proposal is not None and proposal.index != current:
            current = proposal.index
            scope.set_beam(p.beams[current])
    n_frames = frame_id + 1
    best = int(np.argmax(post))
    decided = bool(post[best] >= TARGET)
    revealed = scope.reveal()
    return {
        "decision": hyps[best].name if decided else None,
        "decision_id": hyps[best].id if decided else None,
        "best": hyps[best].name,
        "posterior_of_decision": round(float(post[best]), 6),
        "frames": n_frames,
        "dose_used_e_per_A2": n_frames * DOSE_PER_FRAME,
        "truth": revealed.name,
        "correct": decided and revealed.hypothesis_id == hyps[best].id,
        "rejected": {k: v["reason"] for k, v in rejected_log.items()},
        "median_frame_latency_s": round(float(np.median(latencies)), 4),
    }


def run_demo(out: Path, seed: int = 0, log: Callable[[str], None] = print, adaptive: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "record.jsonl"
    record_path.unlink(missing_ok=True)
    stages: dict[str, dict] = {}

    t = time.perf_counter()
    hyps = load_hypotheses()
    cell = np.asarray(hyps[0].specimen.cell)
    stages["library"] = {
        "name": LIBRARY,
        "seconds": round(time.perf_counter() - t, 3),
        "hypotheses": [{"id": h.id, "name": h.name, "atoms": h.specimen.n_atoms} for h in hyps],
    }
    log(f"[1/4] library {LIBRARY}: {len(hyps)} hypotheses, cell {cell[0]:.2f} x {cell[1]:.2f} x {cell[2]:.2f} Å")

    from workflows.local import local_ray

    t = time.perf_counter()
    with local_ray() as r:
        import ray

        task = ray.remote(_exit_waves_task)
        halves = [hyps[0::2], hyps[1::2]]
        refs = [task.remote([h.specimen for h in half], cell, ENERGY) for half in halves]
        waves_halves = ray.get(refs, timeout=600)
    waves = [None] * len(hyps)
    for k, half in enumerate(waves_halves):
        for j, w in enumerate(half):
            waves[2 * j + k] = w
    stages["presimulation"] = {
        "seconds": round(time.perf_counter() - t, 2),
        "ray_address": r.address,
        "ray_startup_s": round(r.startup_s, 2),
        "workers": len(halves),
        "exit_wave_shape": list(waves[0].shape),
    }
    log(f"[2/4] pre-simulation: {len(hyps)} exit waves on {len(halves)} Ray workers ({r.address}) "
        f"in {stages['presimulation']['seconds']} s")

    prepared = prepare(hyps, waves)
    log(f"[3/4] simulated microscope: hidden structure chosen by seed {seed}; frames of "
        f"{DOSE_PER_FRAME:g} e-/Å² at {ENERGY / 1e3:g} kV, camera {prepared.images.shape[2]}x"
        f"{prepared.images.shape[3]} px; {'adaptive' if adaptive else 'fixed'} defocus")
    t = time.perf_counter()
    with record_path.open("a") as rec:
        summary = run_session(prepared, seed, adaptive=adaptive, record=rec, log=log)
    stages["session"] = {"seconds": round(time.perf_counter() - t, 2), "record": str(record_path)}
    outcome = "identified" if summary["decision"] else f"undecided after {summary['frames']} frames"
    log(f"[4/4] {outcome}: {summary['decision'] or summary['best']} (P = {summary['posterior_of_decision']:.4f}) "
        f"after {summary['frames']} frames, {summary['dose_used_e_per_A2']:g} e-/Å²; truth: {summary['truth']} -> "
        f"{'correct' if summary['correct'] else 'NOT correct'}")
    record = {"schema": "hypotest-demo/1", "seed": seed, "stages": stages, "summary": summary}
    (out / "demo.json").write_text(json.dumps(record, indent=2))
    return record
