"""``sglrp reproduce``: the paper's comparison end to end, as one HTML report.

The work is :func:`sglrp.app.reproduce.reproduce`; this module reads the options.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..app.compare import reproduce_models
from ..app.config import METRIC_NAMES, REPRODUCE_METHODS, EvalConfig
from ..app.reproduce import FULL, QUICK, reproduce
from ..loading import SHIPPED
from .options import add_run_options, check_compute, check_out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` sub-command."""
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's comparison and write an HTML report",
        description=(
            "Evaluate LRP, CLRP, SGLRP, Guided Grad-CAM, Relevance-CAM (at the last and at a "
            "middle layer) and Random with every metric and write OUT/index.html "
            "(self-contained) and OUT/metrics.json. "
            f"Default: {FULL['n']} multi- and {FULL['n']} single-object images; --quick: "
            f"{QUICK['n']} of each. Without --model every shipped model "
            f"({', '.join(SHIPPED)}) is evaluated, sharing that budget, into OUT/<model>/, "
            "and OUT/index.html compares them."
        ),
    )
    add_run_options(p)
    p.set_defaults(model=None)
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
    p.add_argument(
        "--restart",
        action="store_true",
        help="start afresh: move the run already in OUT (results, metrics, plots) to "
        "OUT/previous-<time>/ (nothing is deleted)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Evaluate, draw the grids, write the report; print its path."""
    check_compute(args)
    check_out(args.out)
    preset = QUICK if args.quick else FULL
    cfg = EvalConfig(
        model=args.model or SHIPPED[0],
        weights=args.weights,
        labels=args.labels,
        random_weights=args.random_weights,
        data=args.data,
        methods=REPRODUCE_METHODS,
        metrics=METRIC_NAMES,
        n=preset["n"] if args.n is None else args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=preset["steps"],
        device=args.device,
    )
    models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else SHIPPED
    if len(models) > 1 and (args.weights or args.labels):
        raise ValueError("--weights and --labels apply to one model: pass --model NAME with them")
    if len(models) == 1:
        cfg = replace(cfg, model=models[0])
        report = reproduce(
            cfg,
            args.out,
            preset["grid_images"],
            progress=not args.no_progress,
            restart=args.restart,
        )
    else:
        report = reproduce_models(
            cfg,
            models,
            args.out,
            preset["grid_images"],
            progress=not args.no_progress,
            restart=args.restart,
        )
    if report is not None:
        print(f"report: {report.resolve()}")
    return 0
