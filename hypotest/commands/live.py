"""``hypotest live --library LIB --source SOURCE``: a live session on a frame source, with the
dashboard.

SOURCE is one of

- ``zmq://tcp://127.0.0.1:5555``: bind a ZeroMQ PULL socket there (``hypotest stream send`` or a
  detector connects; protocol in :mod:`hypotest.live.zmqstream`); ``zmq+connect://ADDR`` connects
  to a sender that binds;
- a file or glob of frame files (.npy/.npz, MRC, HDF5/EMD, DM3/DM4, TIFF), replayed at ``--rate``;
- ``sim`` or ``sim:SEED``: the simulated microscope hiding a member of a built-in library;
- ``nion:SCAN_ID``: a Nion scan hardware source registered in this process (the instrument's
  plug-ins loaded: ``pip install hypotest[nion]``), frames acquired and proposals applied through
  Nion's instrumentation API (:mod:`hypotest.live.nion`); ``nion:usim`` starts Nion's simulated
  STEM with ``--twin ID`` (a hypothesis) on its stage, rendered by hypotest
  (:mod:`hypotest.live.nion_twin`). The BEAM.json is an annular STEM one; the frame's pixel
  counts are chosen so that square pixels span the cell.

LIB is a built-in library name or a library file (.h5). With a library file, ``--beam BEAM.json``
gives the beam, the frame sampling and the simulation settings; the design step chooses among a
defocus series around the Scherzer defocus of the beam's C30 (or only the given beam if C30 = 0).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import signal
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="run a live session on a frame source, with the dashboard")
    p.add_argument("--library", required=True,
                   help="built-in library name, library file (.h5) or a directory/glob of structure files")
    p.add_argument("--source", required=True,
                   help="zmq://ADDRESS, zmq+connect://ADDRESS, FILE/GLOB, sim[:SEED], or sim-fov[:SEED] (a field of view "
                        "of an abTEM MoS2 flake, with --library mos2_defects)")
    p.add_argument("--out", type=Path, default=Path("out/live"), help="the session directory (must not hold a record)")
    p.add_argument("--beam", type=Path, help="BEAM.json (required with a library file)")
    p.add_argument("--rate", type=float, default=None, help="replay / simulated frames per second")
    p.add_argument("--twin", metavar="ID", help="with --source nion:usim: the hypothesis (id or name) on the simulated stage")
    p.add_argument("--max-frames", type=int, default=None, help="nion sources: stop after this many frames")
    p.add_argument("--control", help="ZeroMQ control endpoint to send beam conditions to (zmq sources)")
    p.add_argument("--curve-key", type=Path, metavar="RECEIVER.key_secret",
                   help="zmq sources: CURVE secret certificate of this receiver (with --curve-clients)")
    p.add_argument("--curve-clients", type=Path, metavar="DIR", help="zmq sources: the accepted senders' NAME.key files")
    p.add_argument("--allow-remote-stream", action="store_true",
                   help="zmq sources: a non-loopback address without CURVE (anyone reaching it can inject frames)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the dashboard may be reached under (Host header), besides localhost, loopback "
                        "and the address it was reached at (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="dashboard host (other than loopback needs --token)")
    p.add_argument("--port", type=int, default=8765, help="dashboard port (0: any free port)")
    p.add_argument("--token", help="token for control actions; 'auto' makes one and prints it")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--no-auto-apply", action="store_true", help="wait for the operator to apply proposals")
    p.add_argument("--stop-on-decision", action="store_true", help="stop at P >= 0.99 instead of watching on")
    p.add_argument("--scorer", default="laplace", metavar="{laplace,linear,fast}",
                   help="the one scorer (inference.make_scorer): laplace: shift marginalised per hypothesis (tens of "
                        "hypotheses); linear: registered frame, scale and background; fast: as linear with a binned "
                        "screen + exact survivors (hundreds to thousands)")
    p.add_argument("--4dstem", dest="pixelated", action="store_true",
                   help="with --source sim: also offer the library's 4D-STEM condition to the design step")
    p.add_argument("--design", choices=("allocation", "eig"), default="allocation",
                   help="order proposals by Chernoff's allocation of the dose to the decision (default) or by "
                        "one-frame expected information gain per electron")
    p.add_argument("--field-of-view", action="store_true",
                   help="frames of any field of view (the host lattice registered per frame, a posterior per site "
                        "accumulated over frames; hypotest.live.fov); implied by --source sim-fov")
    p.add_argument("--dose", type=float, default=None, help="with --source sim-fov: dose per frame [e-/Å²] (default 5000)")
    p.add_argument("--defect-prior", type=float, default=None,
                   help="field of view: prior probability that a site is not the host (default 0.02)")
    p.set_defaults(func=run)


def source_settings(spec: str) -> dict:
    """What a SOURCE argument names (module docstring): ``{"kind": "zmq", "address", "bind"}`` or
    ``{"kind": "replay", "paths"}`` (``"spec"``: the argument as given). ``sim`` is not a source
    that can be named apart from a session (:func:`hypotest.live.builtin.make_demo_session`)."""
    from forward import InputError

    if spec.startswith("zmq://") or spec.startswith("zmq+connect://"):
        return {"kind": "zmq", "spec": spec, "address": spec.split("://", 1)[1], "bind": spec.startswith("zmq://")}
    if spec.startswith("nion:"):
        if not spec[5:]:
            raise InputError("source 'nion:' names no scan: give nion:SCAN_ID (a registered hardware source) or nion:usim")
        return {"kind": "nion", "spec": spec, "scan": spec[5:]}
    files = sorted(glob.glob(spec)) or ([spec] if Path(spec).exists() or ":/" in spec else [])  # file.h5:/dataset
    if not files:
        raise InputError(f"source {spec!r}: no such file; give zmq://ADDRESS, a frame file or glob, nion:SCAN_ID or "
                         "sim[:SEED]")
    return {"kind": "replay", "spec": spec, "paths": files}


def open_source(spec: str, *, rate=None, control=None, beam=None, sampling=None, curve_key=None, curve_clients=None,
                allow_remote=False):  # fmt: skip
    """A frame source from its command-line form (module docstring)."""
    where = source_settings(spec)
    if where["kind"] == "zmq":
        from hypotest.live.zmqstream import ZmqSource

        return ZmqSource(where["address"], bind=where["bind"], control_address=control, curve_key=curve_key,
                         curve_clients=curve_clients, allow_remote=allow_remote)  # fmt: skip
    from hypotest.live.replay import FileReplaySource

    return FileReplaySource(where["paths"], rate_hz=rate, beam=beam, sampling=sampling)


class StopSignals(contextlib.AbstractContextManager):
    """SIGTERM handled like Ctrl-C (SIGINT) in the main thread while a command runs a session: the
    first of either raises KeyboardInterrupt (``KeyboardInterrupt("SIGTERM")``), so the command
    stops its session as for Ctrl-C: a ``stopped`` line, every queued frame given its fate.
    Signals after the first, or one that arrives while the session is already stopping, do not
    interrupt the stop (it is what completes the record); ``name`` is the first signal's name."""

    def __init__(self):
        self.name: str | None = None
        self.done = False  # set when the session is stopping: no signal interrupts that
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def reason(self) -> str | None:
        """The ``stopped`` line's reason, when a signal stopped the session."""
        return None if self.name is None else ("interrupted (SIGINT)" if self.name == "SIGINT" else
                                               f"terminated ({self.name})")  # fmt: skip

    def _handle(self, signum, frame) -> None:
        first = self.name is None
        if first:
            self.name = signal.Signals(signum).name
        if not first or self.done or _in_stop(frame):
            print(f"{signal.Signals(signum).name}: already stopping; the record is being completed", file=sys.stderr)
            return
        raise KeyboardInterrupt(self.name)


def _in_stop(frame) -> bool:
    """Whether the main thread is inside :meth:`LiveSession.stop` (a signal must not cut it short)."""
    from hypotest.live.runner import LiveSession

    code = LiveSession.stop.__code__
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def check_dashboard(host: str, port, token: str | None) -> None:
    """The dashboard's bind options, checked before anything is built or written (as
    :func:`hypotest.dashboard.server.serve` checks them)."""
    from hypotest.dashboard.server import check_bind

    check_bind(host, port, token, option="--")


def _session_for_library_file(args, source_spec):
    import numpy as np

    from forward import InputError
    from forward.constants import scherzer_defocus
    from hypotest.beamfile import parse_beam
    from hypotest.live.model import ImageModel
    from hypotest.hypothesis import load_hypotheses
    from hypotest.live.runner import LiveSession

    if args.beam is None:
        raise InputError("a library file needs --beam BEAM.json (beam, frame sampling, simulation settings)")
    try:
        beam = json.loads(args.beam.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{args.beam}: cannot read the beam file ({exc})") from None
    bf = parse_beam(beam, where=str(args.beam))
    where = source_settings(source_spec)
    hyps = load_hypotheses(args.library)
    four_d = bf.beam.detector.mode == "4dstem"
    # 4D-STEM: 'sampling' is the scan step, not a camera pixel (the model checks it spans the cell)
    binning = 1 if four_d else max(1, round(bf.sampling[0] / bf.sim_sampling))
    gpts = None
    if where["kind"] == "nion":
        from hypotest.live.nion import square_pixel_gpts

        if bf.beam.detector.mode != "stem_annular":
            raise InputError(f"{args.beam}: a Nion scan source takes an annular STEM beam (detector.mode "
                             f"'stem_annular'), got {bf.beam.detector.mode!r}")  # fmt: skip
        gpts = square_pixel_gpts(hyps[0].specimen.cell, bf.sampling[0])  # a Nion scan's pixels are square
    model = ImageModel([h.specimen for h in hyps], sampling=bf.sim_sampling, binning=binning,
                       slice_thickness=bf.slice_thickness, camera_gpts=gpts)  # fmt: skip
    if four_d:
        try:
            model.frame_shape_of(beam)
        except InputError as exc:
            raise InputError(f"{args.beam}: {exc}") from None
    else:
        got = np.asarray(model.pixel_sampling)
        if not np.allclose(got, bf.sampling, rtol=0.05):
            raise InputError(
                f"{args.beam}: frame sampling {list(bf.sampling)} Å/pixel is not an integer binning of the simulation "
                f"sampling {bf.sim_sampling} Å over the cell (closest: {got.round(4).tolist()}); adjust "
                "'simulation.sampling'"
            )
        beam["sampling"] = [float(v) for v in got]
    c30 = float((beam.get("aberrations") or {}).get("C30", 0.0))
    cands = [("given beam", beam)]
    if c30 != 0:
        f0 = float(scherzer_defocus(c30, float(beam["energy"])))
        cands = [(f"defocus {k * f0:+.0f} Å ({k:g} x Scherzer)",
                  {**beam, "aberrations": {**{a: v for a, v in beam["aberrations"].items() if a not in ("C10", "defocus")},
                                           "defocus": k * f0}})
                 for k in (-1.0, 0.5, 1.0, 1.5, 2.0, 3.0)] + cands  # fmt: skip
    if where["kind"] == "nion":
        from hypotest.live.nion import nion_candidates, open_nion_source

        s = float(model.pixel_sampling[0])
        beam["sampling"] = [s, s]
        cands = nion_candidates(beam)
        source = open_nion_source(source_spec, beam=beam, model=model, hypotheses=hyps, twin=args.twin, rate_hz=args.rate,
                                  max_frames=args.max_frames)  # fmt: skip
    else:
        source = open_source(source_spec, rate=args.rate, control=args.control, beam=beam, sampling=beam["sampling"],
                             curve_key=args.curve_key, curve_clients=args.curve_clients,
                             allow_remote=args.allow_remote_stream)  # fmt: skip
    return LiveSession(
        args.out, hypotheses=hyps, model=model, source=source, candidate_beams=cands, beam=beam,
        config={"library": str(Path(args.library).resolve()), "model": model.settings,
                "source": {"spec": source_spec, **source.settings}},
        auto_apply=not args.no_auto_apply, stop_on_decision=args.stop_on_decision, log=print, scorer=args.scorer,
        design=args.design,
    )  # fmt: skip


def run_session(session, signals: StopSignals, stopped_hint: str) -> None:
    """Start ``session`` and wait for its end; Ctrl-C or SIGTERM (``signals``) stops it; either
    way :meth:`LiveSession.stop` completes the record (the reason names the signal)."""
    try:
        session.start()
        session.wait()
    except KeyboardInterrupt:
        print(stopped_hint)
    finally:
        signals.done = True
        session.stop(reason=signals.reason)


def run(args: argparse.Namespace) -> int:
    from hypotest.dashboard import new_token
    from hypotest.dashboard.guard import check_allowed_hosts

    check_allowed_hosts(args.allowed_host)  # before the session directory is made
    token = new_token() if args.token == "auto" else args.token
    if not args.no_dashboard:
        check_dashboard(args.host, args.port, token)
    if (args.out / "record.jsonl").exists():
        from forward import InputError

        raise InputError(f"{args.out} already holds a session record; resume it with `hypotest session resume "
                         f"{args.out}` or choose another --out")  # fmt: skip
    made_out = not args.out.exists()
    try:
        return _run(args, token)
    finally:
        if made_out and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()  # refused before the session started: leave nothing behind


def _fov_session(args):
    """``--source sim-fov[:SEED]`` or ``--field-of-view``: a :class:`hypotest.live.fov.FieldOfViewSession`."""
    from forward import InputError
    from hypotest.live.builtin import LIBRARY_SETTINGS

    def bar(items):
        from tqdm import tqdm

        return tqdm(items, desc="simulating hypotheses", unit="hyp")

    if args.source.startswith("sim-fov"):
        from hypotest.live.fovsim import make_fov_demo_session

        if args.library != "mos2_defects":
            raise InputError(f"--source sim-fov scans an abTEM flake of the built-in mos2_defects library's host; "
                             f"use --library mos2_defects (got {args.library!r})")  # fmt: skip
        seed = int(args.source.split(":", 1)[1]) if ":" in args.source else 0
        return make_fov_demo_session(args.out, seed=seed, dose=args.dose or 5e3, rate_hz=args.rate or 1.0,
                                     max_frames=args.max_frames or 30, log=print, progress=bar,
                                     stop_on_decision=args.stop_on_decision)  # fmt: skip
    from hypotest.hypothesis import load_hypotheses
    from hypotest.live.fov import FieldOfViewSession

    if args.beam is None:
        raise InputError("a field-of-view session needs --beam BEAM.json ('sampling' is the nominal pixel size)")
    try:
        beam = json.loads(args.beam.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{args.beam}: cannot read the beam file ({exc})") from None
    library = args.library
    if library in LIBRARY_SETTINGS:
        from library.builtin import library_path

        library = str(library_path(library))
    source = open_source(args.source, rate=args.rate, control=args.control, beam=beam, sampling=beam.get("sampling"),
                         curve_key=args.curve_key, curve_clients=args.curve_clients, allow_remote=args.allow_remote_stream)  # fmt: skip
    return FieldOfViewSession(args.out, hypotheses=load_hypotheses(library), beam=beam, source=source,
                              config={"library": str(Path(library).resolve()) if Path(library).exists() else library,
                                      "source": {"spec": args.source, **getattr(source, "settings", {})}},
                              defect_prior=args.defect_prior, max_frames=args.max_frames, log=print, progress=bar,
                              stop_on_decision=args.stop_on_decision)  # fmt: skip


def _run(args: argparse.Namespace, token: str | None) -> int:
    from hypotest.live.builtin import LIBRARY_SETTINGS, make_demo_session

    if args.source.startswith("sim-fov") or args.field_of_view:
        session = _fov_session(args)
    elif args.source.startswith("sim"):
        if args.library not in LIBRARY_SETTINGS:
            raise SystemExit("hypotest live: the simulated microscope ('sim') needs a built-in library")
        seed = int(args.source.split(":", 1)[1]) if ":" in args.source else 0
        session = make_demo_session(args.out, seed=seed, library=args.library, frame_rate_hz=args.rate or 4.0,
                                    auto_apply=not args.no_auto_apply, stop_on_decision=args.stop_on_decision,
                                    max_frames=None, log=print, scorer=args.scorer,
                                    design=args.design, pixelated=args.pixelated)  # fmt: skip
    elif args.library in LIBRARY_SETTINGS and args.beam is None:
        raise SystemExit("hypotest live: a built-in library on a real source needs --beam BEAM.json for the frames")
    else:
        if args.library in LIBRARY_SETTINGS:
            from library.builtin import library_path

            args.library = str(library_path(args.library))
        session = _session_for_library_file(args, args.source)
    server = None
    try:
        if not args.no_dashboard:
            from hypotest.dashboard.server import serve

            server = serve(session, host=args.host, port=args.port, token=token, allowed_hosts=args.allowed_host)
            print(f"dashboard: {server.url}" + (f"  token: {token}" if token else ""))
    except BaseException:
        session.stop()  # nothing was recorded: the source is closed, no record is left
        raise
    fov = hasattr(session, "sites")
    print(f"live session on {args.source}; record in {args.out}; Ctrl-C or SIGTERM stops"
          + (f" (the sites as RESULT.json: {args.out / 'sites.json'})" if fov else
             f" (resume: hypotest session resume {args.out})"))  # fmt: skip
    with StopSignals() as signals:
        run_session(session, signals, stopped_hint="stopping")
        if server is not None:
            server.stop()
    st = session.status()
    if fov:
        f = st["field_of_view"] or {}
        counts = ", ".join(f"{k.split(' @')[0]} {v}" for k, v in (f.get("counts") or {}).items())
        print(f"stopped: {st['state']}; frames {st['frames']}; {f.get('n_sites', 0)} sites, {f.get('undecided', 0)} "
              f"undecided: {counts}")  # fmt: skip
        return 0
    print(f"stopped: {st['state']}; frames {st['frames']}; decision: {st['decision']}")
    return 0


def start_session(out, *, library: str, beam, source: str, twin: str | None = None, rate: float | None = None,
                  max_frames: int | None = None, scorer: str = "laplace", design: str = "allocation",
                  auto_apply: bool = True, stop_on_decision: bool = False, dashboard: bool = True,
                  host: str = "127.0.0.1", port: int = 8765, token: str | None = None):  # fmt: skip
    """``hypotest live`` from Python, returning at once: ``(session, server)`` with the session
    started (its threads run beside the caller) and the dashboard served (``server`` None with
    ``dashboard=False``). For a process that must keep its main thread, such as Nion Swift's
    Python console at a microscope (``source="nion:SCAN_ID"``, the instrument's plug-ins loaded);
    ``library``: a built-in name or a library file; ``beam``: the BEAM.json path. Stop with
    ``session.stop()`` and ``server.stop()``."""
    from hypotest.live.builtin import LIBRARY_SETTINGS

    if library in LIBRARY_SETTINGS:
        from library.builtin import library_path

        library = str(library_path(library))
    if dashboard:
        check_dashboard(host, port, token)
    args = argparse.Namespace(library=library, beam=Path(beam), out=Path(out), rate=rate, control=None, curve_key=None,
                              curve_clients=None, allow_remote_stream=False, no_auto_apply=not auto_apply,
                              stop_on_decision=stop_on_decision, scorer=scorer, design=design, twin=twin,
                              max_frames=max_frames, field_of_view=False, dose=None, defect_prior=None)  # fmt: skip
    if (args.out / "record.jsonl").exists():
        from forward import InputError

        raise InputError(f"{args.out} already holds a session record; choose another directory")
    session = _session_for_library_file(args, source)
    server = None
    try:
        if dashboard:
            from hypotest.dashboard.server import serve

            server = serve(session, host=host, port=port, token=token)
        session.start()
    except BaseException:
        if server is not None:
            server.stop()
        session.stop()
        raise
    return session, server
