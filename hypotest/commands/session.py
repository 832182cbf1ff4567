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
    res = ss.add_parser("resume", help="continue a session that stopped or was killed")
    res.add_argument("dir", type=Path)
    res.add_argument("--source", help="reopen with this source (zmq://ADDRESS); default: from session.json")
    res.add_argument("--keep-going", action="store_true", help="do not stop at the decision")
    res.set_defaults(func=run_resume)
    rp = ss.add_parser("replay", help="re-score the stored frames and compare with the recorded posteriors")
    rp.add_argument("dir", type=Path)
    rp.set_defaults(func=run_replay)


def run_show(args: argparse.Namespace) -> int:
    from hypotest.live.record import load_record

    r = load_record(args.dir)
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
    from hypotest.live.resume import resume_session

    source = None
    if args.source:
        from hypotest.commands.live import open_source

        source = open_source(args.source)
    s = resume_session(args.dir, source=source, log=print, stop_on_decision=not args.keep_going)
    print(f"resumed {args.dir}: {s.status()['step']} steps restored")
    s.start()
    try:
        s.wait()
    except KeyboardInterrupt:
        print("interrupted: the record is complete up to here; resume again with the same command")
    finally:
        s.stop()
    st = s.status()
    print(f"stopped: {st['state']}; decision: {st['decision']}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from hypotest.live.resume import replay_record

    rep = replay_record(args.dir)
    print(f"replayed {rep.steps} steps from the stored frames: max |posterior difference| {rep.max_abs_posterior_diff:.2e}, "
          f"max |log evidence difference| {rep.max_abs_log_evidence_diff:.2e} nats; decision reproduced: "
          f"{rep.decision_reproduced}")  # fmt: skip
    return 0 if rep.ok and rep.decision_reproduced else 1
