"""Command-line entry point: ``sglrp COMMAND ...``.

Each command lives in ``sglrp.commands.<name>`` and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` to a callable ``(args) -> int``. Errors become one line on
stderr and a non-zero exit status; ``--debug`` (before or after the command) shows the
traceback instead. ``python -m sglrp`` runs the same entry point.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from . import __version__
from .commands import evaluate, explain, inspect, paths, reproduce, serve, train

#: The sub-commands, in the order ``sglrp --help`` lists them.
COMMANDS = (explain, inspect, train, evaluate, reproduce, paths, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sglrp",
        description="Explain image classifiers with SGLRP and the methods it is compared with.",
    )
    parser.add_argument("--version", action="version", version=f"sglrp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    for sub in subparsers.choices.values():  # global flags are accepted after the command too
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    with warnings.catch_warnings():  # sglrp's own warnings are one line too
        show = warnings.showwarning

        def one_line(message, category, *rest, **kw):  # noqa: ANN001, ANN202
            if not category.__module__.startswith("sglrp"):
                return show(message, category, *rest, **kw)
            print(f"sglrp {args.command}: warning: {message}", file=sys.stderr)

        warnings.showwarning = one_line
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("sglrp: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI turns every error into one line
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"sglrp {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
