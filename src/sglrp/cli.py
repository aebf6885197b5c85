"""Command-line entry point: ``sglrp COMMAND ...``.

Each command lives in ``sglrp.commands.<name>`` and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` to a callable ``(args) -> int``. Errors become one line on
stderr and a non-zero exit status (130 after Ctrl-C, at any moment of a command); a full disk
says so and names the file being written; ``--debug`` (before or after the command) shows the
traceback instead. ``python -m sglrp`` runs the same entry point. Under ``torchrun`` what
rank 0 reports for the whole job (a refused run folder, Ctrl-C) is not repeated by the other
ranks; torchrun itself still prints its ``ChildFailedError`` report when a worker exits
non-zero, which a worker cannot prevent.
"""

from __future__ import annotations

import argparse
import errno
import os
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
    """Run ``sglrp ARGV``; returns the exit status (0, 1 on errors, 2 on usage, 130 on Ctrl-C).

    The ``sglrp`` console script starts in :mod:`sglrp_cli`, which covers Ctrl-C during the
    imports before this runs.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # Ctrl-C reaches every torchrun worker: say it once
            print("sglrp: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
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
    except Exception as err:  # noqa: BLE001 - the CLI turns every error into one line
        if args.debug:
            raise
        if not getattr(err, "reported_by_root", False):
            print(f"sglrp {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 1


def error_line(err: BaseException) -> str:
    """The one line that describes ``err`` (a full disk: the file that was being written)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device while writing {err.filename or 'a file'}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
