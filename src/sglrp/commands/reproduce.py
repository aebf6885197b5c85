"""``sglrp reproduce``: the paper's comparison end to end, as one HTML report.

The work is :func:`sglrp.app.reproduce.reproduce`; this module reads the options.
"""

from __future__ import annotations

import argparse

from ..app.config import DEFAULT_METHODS, METRIC_NAMES, EvalConfig
from ..app.reproduce import FULL, QUICK, reproduce
from .options import add_run_options, apply_threads, check_out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` sub-command."""
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's comparison and write an HTML report",
        description=(
            "Evaluate LRP, CLRP, SGLRP, Guided Grad-CAM, Relevance-CAM and Random with every "
            "metric and write OUT/index.html (self-contained) and OUT/metrics.json. "
            f"Default: {FULL['n']} multi- and {FULL['n']} single-object images; --quick: "
            f"{QUICK['n']} of each."
        ),
    )
    add_run_options(p)
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--quick", action="store_true", help="small run (under 2 minutes) for CI")
    p.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        default=None,
        help="images per built-in split (overrides the default / --quick size)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start afresh: move the run already in OUT (results, metrics, plots) to "
        "OUT/previous-<time>/ (nothing is deleted)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Evaluate, draw the grids, write the report; print its path."""
    apply_threads(args.threads)
    check_out(args.out)
    preset = QUICK if args.quick else FULL
    cfg = EvalConfig(
        model=args.model,
        data=args.data,
        methods=DEFAULT_METHODS,
        metrics=METRIC_NAMES,
        n=preset["n"] if args.n is None else args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=preset["steps"],
        device=args.device,
    )
    report = reproduce(
        cfg,
        args.out,
        preset["grid_images"],
        progress=not args.no_progress,
        restart=args.restart,
    )
    if report is not None:
        print(f"report: {report.resolve()}")
    return 0
