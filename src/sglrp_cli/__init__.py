"""Launcher of the ``sglrp`` command: Ctrl-C while it starts is one line, like Ctrl-C later.

``import sglrp`` loads PyTorch and the library, which takes seconds; an interrupt then would
print a long traceback from inside an import, or break an import half-way and surface as an
unrelated error. This module lives outside the ``sglrp`` package so that importing it loads
nothing: :func:`main` answers SIGINT with one line and exit status 130 until the command line
is loaded, then hands over to :func:`sglrp.cli.main`, which turns later interrupts into the
same line after its clean-up.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["main"]


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """Nothing was written yet: say so in one line and leave at once."""
    sys.stderr.write("sglrp: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> int:
    """Entry point of the ``sglrp`` console script."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not when the shell ignores SIGINT
        signal.signal(signal.SIGINT, _interrupted)
    from sglrp.cli import main as cli_main  # the slow import this launcher guards

    signal.signal(signal.SIGINT, previous)
    return cli_main()
