"""``sglrp evaluate``: every method through every metric, streamed, resumable, shardable.

Run it under ``torchrun --nproc_per_node=K`` to share the batches between K processes. The
work is :func:`sglrp.app.runner.run`; this module reads the options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..app.config import DEFAULT_METHODS, METRIC_NAMES, EvalConfig, resolve_metrics
from ..app.runner import run
from .options import add_run_options, check_compute, check_out, method_help, parse_methods


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate explanation methods with localisation and perturbation metrics",
        description=(
            "Compute each method's maps for the ground-truth targets (and the second most "
            "probable class for patch masking), score them with every metric, stream the "
            "per-image results to OUT/parts/*.jsonl (an interrupted run resumes) and write "
            "OUT/metrics.json, OUT/metrics.csv and curve plots. Under torchrun the batches "
            "are shared between the processes and rank 0 merges."
        ),
    )
    add_run_options(p)
    p.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=method_help(DEFAULT_METHODS)
    )
    p.add_argument(
        "--metrics",
        default="all",
        help=f"comma-separated metrics or 'all' ({', '.join(METRIC_NAMES)})",
    )
    p.add_argument("--out", required=True, help="output folder (reused to resume)")
    p.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        default=None,
        help="images per built-in split, or the first N of a folder (default: 48 per split / "
        "all); under torchrun spell it --num-images (torchrun mistakes --n for its own options)",
    )
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start afresh: move the run already in OUT (results, metrics, plots) to "
        "OUT/previous-<time>/ (nothing is deleted)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; print where the results are."""
    check_compute(args)
    check_out(args.out)
    cfg = EvalConfig(
        model=args.model,
        weights=args.weights,
        labels=args.labels,
        random_weights=args.random_weights,
        data=args.data,
        methods=tuple(parse_methods(args.methods, "--methods")),
        metrics=tuple(resolve_metrics(args.metrics)),
        n=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=args.steps,
        device=args.device,
    )
    result = run(cfg, args.out, progress=not args.no_progress, restart=args.restart)
    if result is not None:
        print(f"metrics: {Path(args.out) / 'metrics.json'}", file=sys.stdout)
    return 0
