"""``hypotest stream send FILE [FILE...] --rate R --address ADDR [--loop]``: replay frame files over
the ZeroMQ protocol of :mod:`hypotest.live.zmqstream` (formats: :mod:`hypotest.frames`).

``hypotest stream keys DIR --name NAME``: a CURVE key pair for a stream beyond loopback
(:mod:`hypotest.live.zmqauth`); ``send --curve-key SENDER.key_secret --curve-server-key
RECEIVER.key`` uses it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from forward import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="send frame files over ZeroMQ (protocol hypotest.frame/1)")
    actions = p.add_subparsers(dest="stream_command", metavar="ACTION")
    s = actions.add_parser(
        "send", help="replay frame files to a ZmqSource (`hypotest live --source zmq://tcp://127.0.0.1:5555`)"
    )
    s.add_argument("files", nargs="+", metavar="FILE",
                   help="frame files: .npy .npz .mrc .mrcs .h5 .hdf5 .emd (file.h5:/dataset) .dm3 .dm4 .tif .tiff")
    s.add_argument("--rate", type=float, default=0.0, help="frames per second [Hz]; 0 = as fast as taken (default)")
    s.add_argument("--address", default="tcp://127.0.0.1:5555", help="the receiver's ZeroMQ endpoint")
    s.add_argument("--loop", action="store_true", help="start over after the last file (until Ctrl-C)")
    s.add_argument("--bind", action="store_true", help="bind the address (the receiver connects) instead of connecting")
    s.add_argument("--control", default=None, metavar="ADDR", help="the receiver's control endpoint (beam commands)")
    s.add_argument("--beam", type=Path, default=None, help="BEAM.json sent with every frame")
    s.add_argument("--sampling", type=float, default=None, help="pixel size [Å/pixel]; default: from the files")
    s.add_argument("--start-id", type=int, default=0, help="frame_id of the first frame")
    s.add_argument("--heartbeat", type=float, default=0.5, help="heartbeat interval when idle [s]")
    s.add_argument("--curve-key", type=Path, default=None, metavar="SENDER.key_secret",
                   help="this sender's CURVE secret certificate (with --curve-server-key): encrypted, authenticated")
    s.add_argument("--curve-server-key", type=Path, default=None, metavar="RECEIVER.key",
                   help="the receiver's CURVE public certificate")
    s.add_argument("--allow-remote-stream", action="store_true",
                   help="allow a non-loopback address without CURVE (the network must be trusted)")
    s.set_defaults(func=run)
    k = actions.add_parser("keys", help="make a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    k.add_argument("dir", type=Path, metavar="DIR", help="directory to write the two files into (created)")
    k.add_argument("--name", required=True, help="e.g. receiver or camera1")
    k.set_defaults(func=run_keys)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _frames(paths: list[str], loop: bool, skipped: list[str]):
    """Every frame of every file, in order (again and again with ``loop``); unreadable ones skipped."""
    from hypotest.frames import open_frames

    while True:
        for path in paths:
            with open_frames(path) as reader:
                for i in range(reader.n_frames):
                    try:
                        yield reader.frame(i)
                    except InputError as exc:
                        skipped.append(str(exc))
                        print(f"hypotest stream send: skipped: {exc}", file=sys.stderr)
        if not loop:
            return


def _file_sampling(paths: list[str]) -> tuple[float, float] | None:
    from hypotest.frames import open_frames

    found = {}
    for path in paths:
        with open_frames(path) as reader:
            if reader.sampling is not None:
                found[path] = reader.sampling
    if len(set(found.values())) > 1:
        raise InputError(
            f"the files report different pixel sizes {found} [Å/pixel]; pass --sampling or send them separately"
        )
    return next(iter(found.values()), None)


def run(args: argparse.Namespace) -> int:
    from hypotest.beamfile import parse_beam
    from hypotest.live.zmqstream import send_frames

    sampling = args.sampling if args.sampling is not None else _file_sampling(args.files)  # checks every file
    beam = None
    if args.beam is not None:
        try:
            beam = json.loads(args.beam.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{args.beam}: cannot read BEAM.json ({exc})") from None
        parse_beam(beam, where=str(args.beam))
    rate = args.rate if args.rate > 0 else None
    skipped: list[str] = []
    stop = threading.Event()
    how = "bound at" if args.bind else "to"
    print(f"sending {len(args.files)} file(s) {how} {args.address}" + (f" at {rate:g} Hz" if rate else "")
          + (" in a loop (Ctrl-C stops)" if args.loop else ""))  # fmt: skip
    previous = None
    if threading.current_thread() is threading.main_thread():  # Ctrl-C: stop after the current frame
        def on_sigint(signum, frame):
            stop.set()
            print("interrupted: stopping after the current frame", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        report = send_frames(
            _frames(args.files, args.loop, skipped), args.address, rate_hz=rate, beam=beam,
            sampling=sampling, start_id=args.start_id, heartbeat_s=args.heartbeat,
            connect=not args.bind, control_address=args.control, stop=stop,
            on_beam=lambda b: print(f"beam from the control channel: {json.dumps(b)}"),
            curve_key=args.curve_key, curve_server_key=args.curve_server_key, allow_remote=args.allow_remote_stream,
        )  # fmt: skip
    except TimeoutError as exc:
        print(f"hypotest stream send: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    rate_out = report.sent / report.elapsed_s if report.elapsed_s > 0 else float("nan")
    print(f"sent {report.sent} frame(s) (ids {report.first_id}..{report.last_id}) in {report.elapsed_s:.2f} s "
          f"({rate_out:.1f} frames/s), sender {report.sender}; {len(skipped)} unreadable frame(s) skipped")  # fmt: skip
    if report.ignored_control:
        print(f"ignored {report.ignored_control} control message(s) that were not hypotest.control/1 beams",
              file=sys.stderr)  # fmt: skip
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from hypotest.live.zmqauth import make_stream_keys

    public, secret = make_stream_keys(args.dir, args.name)
    print(f"public key {public} (give it to the other side)\nsecret key {secret} (keep it; mode 600)")
    return 0
