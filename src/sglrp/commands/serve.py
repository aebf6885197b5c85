"""``sglrp serve [--model M] [--weights W] [--host H] [--port P] [--folder DIR]``: the page.

Opens a local web page (Gradio, the optional extra ``pip install "sglrp[app]"``) to explore
one model: upload an image or pick a generated example, see the top-5 classes, the chosen
methods' maps side by side, the contrast view and the critical-path graph, and download
what ``sglrp explain`` writes for the same settings.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

__all__ = ["register", "run"]

INSTALL_HINT = 'pip install "sglrp[app]"'


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "serve",
        help="interactive explorer in the browser (needs the app extra)",
        description=(
            "Serve a local web page to explain one model's decisions interactively: upload an "
            "image or pick a generated example, choose target, contrast class and methods, "
            "download the maps. Needs the optional extra: " + INSTALL_HINT
        ),
    )
    p.add_argument(
        "--model",
        default="shapes_vgg",
        metavar="MODEL",
        help="as for sglrp explain: shipped model (default shapes_vgg), zoo name with "
        "--weights, TorchScript file or module:factory",
    )
    p.add_argument("--weights", metavar="FILE", help="state_dict file for a zoo model")
    p.add_argument("--num-classes", type=int, metavar="N", help="number of model outputs")
    p.add_argument("--labels", metavar="FILE", help="class names (one per line, or JSON)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--folder", metavar="DIR", help="offer the image files of this folder")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (default: 1 for inputs up to 128 pixels, else one per core but one)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of ``sglrp serve``; returns the exit status (after Ctrl+C)."""
    if importlib.util.find_spec("gradio") is None:
        raise ModuleNotFoundError(
            f"sglrp serve needs gradio, which is not installed: {INSTALL_HINT}"
        )
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1 ... 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.folder is not None and not Path(args.folder).is_dir():
        raise NotADirectoryError(f"--folder {args.folder} is not a folder")
    from sglrp.server.app import serve

    try:
        serve(
            args.model,
            args.weights,
            host=args.host,
            port=args.port,
            folder=args.folder,
            num_classes=args.num_classes,
            labels=args.labels,
            threads=args.threads,
        )
    except KeyboardInterrupt:
        return 0
    return 0
