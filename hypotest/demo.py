"""The demo job: the embedded default, end to end.

1. library: the built-in MoS2 point-defect library (pristine, V_S, V_S2, V_Mo, antisites, O_S,
   W_Mo), as validated hypotheses;
2. pre-simulation: :func:`workflows.presimulate` on a loopback-only local Ray instance; its
   workers compute the HRTEM exit wave of every hypothesis once (the exit wave does not depend on
   the lens, so a new defocus later is one FFT pair per hypothesis);
3. the live session (:mod:`hypotest.live.runner`): a simulated microscope hides one hypothesis
   (chosen by the seed) and streams Poisson frames at a set rate; each frame (or a coalesced group
   when scoring falls behind) updates the posterior, hypotheses the rule rejects are recorded with
   the reason, the next defocus is chosen by expected information gain per electron and applied,
   and the dashboard shows it all; the run stops when one hypothesis reaches P >= 0.99;
4. record: the session directory (``session.json``, ``record.jsonl``, ``frames.bin``; the
   microscope's ``truth.jsonl`` apart) and a summary in ``demo.json``; the truth is compared only
   at the end.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hypotest.hypothesis import load_hypotheses
from hypotest.live.builtin import LIBRARY_SETTINGS, make_demo_session

__all__ = ["run_demo", "summarize", "LIBRARY"]

LIBRARY = "mos2_defects"


def presimulate_exit_waves(hyps, library: str = LIBRARY, workers: int = 2, cache_root=None) -> tuple[list, dict]:
    """Exit waves of every hypothesis, pre-simulated by :func:`workflows.presimulate` on a
    loopback-only local Ray instance (``workers`` simulation actors) into the content-addressed
    cache at ``cache_root`` (a temporary directory by default) and read back.

    The spec (:data:`workflows.spec.SIMULATOR_KINDS` ``"exit_wave"``) is the live image model's
    own: its grid over the shared cell at the library's simulation sampling, slice thickness and
    energy, so the waves are bit for bit those :class:`hypotest.live.model.ImageModel` computes.
    """
    from forward import make_beam, make_grid
    from workflows import local_ray, make_simulation_spec, presimulate, read_images

    st = LIBRARY_SETTINGS[library]
    cell = np.asarray(hyps[0].specimen.cell, dtype=np.float64)
    spec = make_simulation_spec(
        make_grid(extent=tuple(cell[:2]), sampling=st.sampling), make_beam(st.energy), thickness=float(cell[2]),
        slice_thickness=st.slice_thickness, species=sorted({int(z) for h in hyps for z in np.asarray(h.specimen.numbers)}),
        kind="exit_wave",
    )  # fmt: skip
    t = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = cache_root or stack.enter_context(tempfile.TemporaryDirectory(prefix="hypotest-presim-"))
        with local_ray() as r:
            rep = presimulate([(h.id, h.specimen) for h in hyps], [spec], root, n_workers=workers, batch_size=1,
                              progress=False)  # fmt: skip
        waves = list(read_images(root, spec, [h.id for h in hyps]))
    info = {"seconds": round(time.perf_counter() - t, 2), "ray_address": r.address,
            "ray_startup_s": round(r.startup_s, 2), "workers": rep.n_workers or workers,
            "exit_wave_shape": list(waves[0].shape), "spec_digest": rep.digests[0], "computed": rep.n_computed}  # fmt: skip
    return waves, info


def run_demo(out: Path, seed: int = 0, log: Callable[[str], None] = print, *, rate_hz: float = 4.0,
             dashboard: bool = True, port: int = 8765, linger_s: float = 0.0, max_frames: int = 300,
             pixelated: bool = False, defocus_error: float = 0.0, truth_outside: str | None = None,
             dose: float | None = None, generate: dict | None = None, learn_optics: dict | None = None) -> dict:  # fmt: skip
    out = Path(out)
    if (out / "record.jsonl").exists():
        import shutil

        from hypotest.live.record import SessionLock

        SessionLock(out).release()  # refused ("in use by PID n") while a session runs there
        shutil.rmtree(out)  # the demo owns its output directory
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}

    t = time.perf_counter()
    hyps = load_hypotheses(LIBRARY)
    cell = np.asarray(hyps[0].specimen.cell)
    stages["library"] = {"name": LIBRARY, "seconds": round(time.perf_counter() - t, 3),
                         "hypotheses": [{"id": h.id, "name": h.name, "atoms": h.specimen.n_atoms} for h in hyps]}  # fmt: skip
    log(f"[1/4] library {LIBRARY}: {len(hyps)} hypotheses, cell {cell[0]:.2f} x {cell[1]:.2f} x {cell[2]:.2f} Å")

    waves, stages["presimulation"] = presimulate_exit_waves(hyps)
    log(f"[2/4] pre-simulation: {len(hyps)} exit waves on {stages['presimulation']['workers']} Ray workers "
        f"({stages['presimulation']['ray_address']}) in {stages['presimulation']['seconds']} s")  # fmt: skip

    session = make_demo_session(out, seed=seed, library=LIBRARY, frame_rate_hz=rate_hz, exit_waves=waves,
                                max_frames=max_frames, log=lambda s: log("      " + s), pixelated=pixelated,
                                defocus_error=defocus_error, truth_outside=truth_outside, dose=dose,
                                generate=generate, learn_optics=learn_optics)  # fmt: skip
    st = LIBRARY_SETTINGS[LIBRARY]
    server = None
    if dashboard:
        from hypotest.dashboard.server import serve

        server = serve(session, host="127.0.0.1", port=port)
        log(f"      dashboard: {server.url}  (remote machine: ssh -L {server.port}:127.0.0.1:{server.port} HOST)")
    if defocus_error or truth_outside:
        log(f"      the microscope: defocus {defocus_error:+g} Å off what it is told"
            + (f"; its hidden structure is NOT in the library ({truth_outside})" if truth_outside else ""))  # fmt: skip
    log(f"[3/4] live session: simulated microscope with a hidden structure (seed {seed}), {rate_hz:g} frames/s of "
        f"{dose or st.dose:g} e-/Å² at {st.energy / 1e3:g} kV, camera {session.model.frame_shape[0]}x"
        f"{session.model.frame_shape[1]} px; record in {out}")  # fmt: skip
    t = time.perf_counter()
    interrupted = None
    try:
        session.start()
        session.wait()
        if server is not None and linger_s > 0:
            log(f"      keeping the dashboard open for {linger_s:g} s")
            time.sleep(linger_s)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under hypotest.commands.live.StopSignals
        interrupted = str(exc) or "SIGINT"
        log(f"      {interrupted}: stopping; the record in {out} is complete up to here")
    finally:
        if interrupted is None:
            session.stop()
        else:
            session.stop(reason="interrupted (SIGINT)" if interrupted == "SIGINT" else f"terminated ({interrupted})")
        if server is not None:
            server.stop()
    if interrupted is not None:
        raise KeyboardInterrupt(interrupted)
    status = session.status()
    truth = json.loads((out / "truth.jsonl").read_text().splitlines()[-1]) if (out / "truth.jsonl").exists() else None
    rejected = {h["name"]: h["reason"] for h in session.hypotheses() if h["rejected"]}
    summary, line = summarize(status, truth, rejected, outside=bool(truth_outside) and generate is None)
    if status.get("optics"):
        summary["optics"] = {k: status["optics"].get(k) for k in ("defocus_A", "defocus_sd_A", "nominal_defocus_A", "c12_A",
                                                                  "c12_sd_A", "applied", "correction", "step")}  # fmt: skip
    added = [h for h in session.hypotheses() if h.get("family") == "generated"]
    if generate is not None:
        summary["generated"] = {"n": len(added), "elements": generate.get("elements"),
                                "decided_for_generated": bool(status["decision"] and any(h["id"] == status["decision"]["id"] for h in added))}  # fmt: skip
    stages["session"] = {"seconds": round(time.perf_counter() - t, 2), "record": str(out)}
    log(f"[4/4] {line}")
    record = {"schema": "hypotest-demo/2", "seed": seed, "stages": stages, "summary": summary}
    (out / "demo.json").write_text(json.dumps(record, indent=2))
    return record


def summarize(status: dict, truth: dict | None, rejected: dict[str, str], outside: bool = False) -> tuple[dict, str]:
    """The demo's summary and its one-line report, from the session's final ``status``.

    The decision's frames and dose are those AT the decision (its record: ``frames``,
    ``dose_used_e_per_A2``, ``step``); frames received afterwards (while the dashboard lingers, or
    in flight when it stopped) are counted apart, and ``dose_used_e_per_A2`` stays the total scored.
    With the truth ``outside`` the library, the right outcome is no decision and the frames marked
    unexplained by the fit check (``correct`` then means that).
    """
    dec = status["decision"]
    received = status["frames"]["received"]
    summary = {
        "decision": None if dec is None else dec["name"], "decision_id": None if dec is None else dec["id"],
        "posterior_of_decision": None if dec is None else round(dec["posterior"], 6),
        "frames_received": received, "frames": status["frames"],
        "steps": status["step"], "dose_used_e_per_A2": status["dose_used_e_per_A2"],
        "truth": None if truth is None else truth["name"],
        "correct": bool(dec is not None and truth is not None and dec["id"] == truth["id"]),
        "rejected": rejected, "latency_s": status["latency_s"],
    }  # fmt: skip
    fc = status.get("fit_check")
    if fc is not None:
        summary["unexplained_steps"] = fc["unexplained_steps"]
        summary["fit_check_last"] = {k: fc[k] for k in ("z", "p_value", "unexplained")}
    if outside:
        summary["truth_in_library"] = False
        summary["correct"] = bool(dec is None and fc is not None and fc["unexplained_steps"] > 0.9 * max(fc["steps"], 1))
    verdict = f"truth: {summary['truth']} -> {'correct' if summary['correct'] else 'NOT correct'}"
    if outside:
        verdict = (f"truth: {summary['truth']} (not in the library) -> "
                   f"{summary.get('unexplained_steps', 0)}/{status['step']} steps unexplained, "
                   + ("no decision: correct" if summary["correct"] else "NOT correct"))  # fmt: skip
    if dec is None:
        line = (f"undecided after {status['step']} steps: - (P = None) after {received} frames "
                f"({status['frames']['coalesced']} coalesced), {status['dose_used_e_per_A2']:g} e-/Å²; {verdict}")  # fmt: skip
        return summary, line
    frames_at, steps_at = int(dec.get("frames", received)), int(dec.get("step", status["step"] - 1)) + 1
    dose_at = float(dec.get("dose_used_e_per_A2", status["dose_used_e_per_A2"]))
    after = max(received - frames_at, 0)
    summary.update({
        "frames_at_decision": frames_at, "steps_at_decision": steps_at, "coalesced_at_decision": frames_at - steps_at,
        "dose_at_decision_e_per_A2": dose_at, "frames_after_decision": after,
    })  # fmt: skip
    line = (f"identified: {dec['name']} (P = {summary['posterior_of_decision']}) after {frames_at} frames "
            f"({frames_at - steps_at} coalesced), {dose_at:g} e-/Å²; {verdict}")  # fmt: skip
    if after:
        more = status["dose_used_e_per_A2"] - dose_at
        line += f"; {after} more frames received after the decision (not part of it; {more:g} e-/Å² more scored)"
    return summary, line
