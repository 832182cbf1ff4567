"""The ``hypotest`` command line. Each subcommand lives in its own ``hypotest/commands/`` module
exposing ``register(subparsers)``; the module sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import sys

from forward import InputError

#: Subcommand modules, in the order ``hypotest --help`` lists them.
COMMANDS = ("info", "demo", "live", "session", "score", "library", "stream")


def build_parser() -> argparse.ArgumentParser:
    from hypotest import __version__

    parser = argparse.ArgumentParser(
        prog="hypotest",
        description="Simulation-in-the-loop hypothesis testing of atomic structures for electron microscopy.",
    )
    parser.add_argument("--version", action="version", version=f"hypotest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hypotest.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"hypotest {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
