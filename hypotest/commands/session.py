"""``hypotest session show|resume|replay DIR``: look at, continue, or verify a session record."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("session", help="show, resume or replay a recorded session")
    ss = p.add_subparsers(dest="session_command", metavar="ACTION", required=True)
    show = ss.add_parser("show", help="summary of a session directory")
    show.add_argument("dir", type=Path)
    show.add_argument("--steps", type=int, default=10, help="how many of the last steps to list")
    show.set_defaults(func=run_show)
    res = ss.add_parser("resume", help="continue a session that stopped or was killed",
                        description="Continue the session recorded in DIR: every setting is restored from the record "
                                    "(session.json, the operator's auto-apply toggles, earlier resumes) unless given "
                                    "here; what is given is stated in the record's 'resumed' line.")  # fmt: skip
    res.add_argument("dir", type=Path)
    res.add_argument("--source", help="reopen with this source (zmq://ADDRESS, zmq+connect://ADDRESS, FILE/GLOB); "
                                      "default: the recorded one (a file replay passes over the frames recorded)")
    res.add_argument("--rate", type=float, help="replay / simulated frames per second (default: as recorded)")
    res.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                     help="file replay: start over after the last file (default: as recorded)")
    res.add_argument("--control", help="zmq sources: the control endpoint (default: as recorded)")
    res.add_argument("--curve-key", type=Path, metavar="RECEIVER.key_secret", help="zmq sources: CURVE secret "
                     "certificate of this receiver, with --curve-clients (default: as recorded)")
    res.add_argument("--curve-clients", type=Path, metavar="DIR", help="zmq sources: the accepted senders' NAME.key files")
    res.add_argument("--allow-remote-stream", action="store_const", const=True, default=None,
                     help="zmq sources: a non-loopback address without CURVE (default: as recorded)")
    res.add_argument("--auto-apply", action=argparse.BooleanOptionalAction, default=None,
                     help="apply the best proposal automatically, or wait for the operator (default: as the session "
                          "last had it)")
    res.add_argument("--stop-on-decision", action=argparse.BooleanOptionalAction, default=None,
                     help="stop at the decision, or keep watching (default: as recorded)")
    res.add_argument("--keep-going", dest="stop_on_decision", action="store_const", const=False,
                     help="do not stop at the decision (= --no-stop-on-decision)")
    res.add_argument("--max-steps", type=int, help="stop after this many steps in all (default: as recorded)")
    res.set_defaults(func=run_resume)
    rp = ss.add_parser("replay", help="re-score the stored frames and compare with the recorded posteriors")
    rp.add_argument("dir", type=Path)
    rp.set_defaults(func=run_replay)


def run_show(args: argparse.Namespace) -> int:
    from hypotest.live.record import load_record

    r = load_record(args.dir)
    if r.config.get("kind") == "field_of_view":
        return _show_fov(r)
    fates: dict[str, int] = {}
    for f in r.frames:
        fates[str(f["fate"] or "in flight")] = fates.get(str(f["fate"] or "in flight"), 0) + 1
    print(f"session {r.dir}  library {r.config.get('library')}  source {r.config.get('source', {}).get('kind')}")
    print(f"frames received {len(r.frames)}: " + ", ".join(f"{k} {v}" for k, v in sorted(fates.items())))
    print(f"steps {len(r.steps)}, dose used {sum(s.get('dose_e_per_A2', 0.0) for s in r.steps):g} e-/Å², "
          f"change points {r.change_points}")  # fmt: skip
    bad = [e for e in r.events if e["kind"] == "bad_message"]
    if bad:
        print(f"bad messages {len(bad)}: last: {bad[-1].get('reason', '')}")
    for dmg in r.damaged:  # a line cut by a crash, or one damaged on disk: ignored, never fatal
        cut = "cut by a crash?" in dmg["reason"]
        print(f"note: record line {dmg['line']} is {'cut by a crash' if cut else 'damaged'} and is ignored"
              f"{'' if cut else ': ' + dmg['reason']}")  # fmt: skip
    if r.steps:
        post = r.posterior[-1]
        print("\nposterior at the last step:")
        rejected = r.steps[-1].get("rejected", {})
        for i in sorted(range(len(r.ids)), key=lambda i: -(post[i] if post[i] == post[i] else -1)):
            rej = str(rejected.get(r.ids[i], ""))
            print(f"  {post[i]:8.5f}  {r.names[i][:52]:<52} {'REJECTED: ' + rej if rej else ''}")
        print(f"\nlast {min(args.steps, len(r.steps))} steps:")
        for s in r.steps[-args.steps :]:
            ms = s.get("map_state")
            best = r.names[r.ids.index(ms)] if ms in r.ids else "?"
            ps = [p for p in s["posterior"] if p is not None]
            total = s.get("latency_s", {}).get("total")
            print(f"  step {s['step']:4d}  frames {len(s['frames'])}  [{s.get('beam_label', '')}]  best {best[:40]:<40} "
                  f"P={max(ps) if ps else float('nan'):.4f}  "
                  f"{'-' if not isinstance(total, (int, float)) else f'{total * 1e3:.0f}'} ms")  # fmt: skip
    d = r.decision
    print(f"\ndecision: {d['name']} (P = {d['posterior']:.4f}) at step {d['step']}" if d else "\ndecision: none yet")
    if r.truth is not None:
        print(f"truth (simulated microscope): {', '.join(r.truth['states'])}")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from forward import InputError
    from hypotest.commands.live import StopSignals, run_session, source_settings
    from hypotest.live.resume import resume_session

    if args.source is not None and args.source.startswith("sim"):
        raise InputError("the simulated microscope is reopened from session.json: omit --source")
    if args.rate is not None and not args.rate > 0:
        raise InputError(f"--rate must be a positive number of frames per second, got {args.rate}")
    if args.max_steps is not None and args.max_steps < 0:
        raise InputError(f"--max-steps must be >= 0, got {args.max_steps}")
    given = source_settings(args.source) if args.source else {}
    options = {"rate_hz": args.rate, "loop": args.loop, "control_address": args.control,
               "curve_key": args.curve_key and str(args.curve_key.resolve()),
               "curve_clients": args.curve_clients and str(args.curve_clients.resolve()),
               "allow_remote": args.allow_remote_stream}  # fmt: skip
    given.update({k: v for k, v in options.items() if v is not None})
    s = resume_session(args.dir, source_settings=given or None, log=print, stop_on_decision=args.stop_on_decision,
                       auto_apply=args.auto_apply, max_steps=args.max_steps)  # fmt: skip
    st = s.status()
    limit = "" if s.max_steps is None else f", at most {s.max_steps} steps in all"
    print(f"resumed {args.dir}: {st['step']} steps restored; auto-apply {'on' if s.auto_apply else 'off'}, "
          f"{'stop' if s.stop_on_decision else 'keep going'} at the decision{limit}; Ctrl-C or SIGTERM stops")  # fmt: skip
    with StopSignals() as signals:
        run_session(s, signals, stopped_hint="interrupted: the record is complete up to here; resume again with the "
                                             "same command")  # fmt: skip
    st = s.status()
    print(f"stopped: {st['state']}; decision: {st['decision']}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from hypotest.live.record import _load_config
    from hypotest.live.resume import replay_record

    if _load_config(args.dir).get("kind") == "field_of_view":
        from tqdm import tqdm

        from hypotest.live.fov import replay_fov_record

        rep = replay_fov_record(args.dir, progress=lambda it: tqdm(it, desc="simulating hypotheses", unit="hyp"))
        same = rep["max_abs_posterior_diff"] < 1e-6
        print(f"replayed {rep['frames']} frames of the field of view in one batch: {rep['sites']} sites, max |posterior "
              f"difference| {rep['max_abs_posterior_diff']:.2e} against sites.json; "
              f"{'reproduced' if same else 'NOT reproduced'}")  # fmt: skip
        return 0 if same else 1

    rep = replay_record(args.dir)
    print(f"replayed {rep.steps} steps from the stored frames: max |posterior difference| {rep.max_abs_posterior_diff:.2e}, "
          f"max |log evidence difference| {rep.max_abs_log_evidence_diff:.2e} nats; decision reproduced: "
          f"{rep.decision_reproduced}")  # fmt: skip
    return 0 if rep.ok and rep.decision_reproduced else 1


def _show_fov(r) -> int:
    """``session show`` of a field-of-view record: frames, the last step's calibration and counts."""
    steps = [e for e in r.events if e["kind"] == "fov_step"]
    refused = [f for f in r.frames if f["fate"] == "rejected"]
    print(f"field-of-view session {r.dir}  library {r.config.get('library')}  source "
          f"{r.config.get('source', {}).get('spec', '')}")  # fmt: skip
    print(f"frames received {len(r.frames)}: scored {len(steps)}, refused {len(refused)}")
    for f in refused[-3:]:
        print(f"  refused frame {f['source_id']}: {f['reason']}")
    if steps:
        e = steps[-1]
        c = e["calibration"]
        print(f"pixel {c['pixel_x_A']:.5f} x {c['pixel_y_A']:.5f} Å, rotation {c['rotation_deg']:.3f}°, drift "
              f"{e['drift_px'][0]:+.2f}, {e['drift_px'][1]:+.2f} px at frame {e['step']}")  # fmt: skip
        print(f"{e['n_sites']} sites, {e['undecided']} undecided: "
              + ", ".join(f"{k.split(' @')[0]} {v}" for k, v in e["counts"].items()))
        print(f"sites (RESULT.json form): {r.dir / 'sites.json'}")
    return 0
