"""``sglrp evaluate``: every method through every metric, streamed, resumable, shardable.

Run it under ``torchrun --nproc_per_node=K`` to share the batches between K processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluate.runner import DEFAULT_METHODS, METRIC_NAMES, EvalConfig


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``reproduce``."""
    parser.add_argument(
        "--model",
        default="shapes_vgg",
        help="shipped model name or a weights file from `sglrp train` (default: shapes_vgg)",
    )
    parser.add_argument(
        "--data",
        default="builtin",
        help="'builtin' (generated multi- and single-object images) or a VOC folder",
    )
    parser.add_argument("--seed", type=int, default=0, help="data and random-baseline seed")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (default: PyTorch's choice; 1 helps on a busy machine)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def apply_threads(threads: int | None) -> None:
    """Set PyTorch's intra-op thread count when asked."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    import torch

    torch.set_num_threads(threads)


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
    add_common(p)
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})",
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
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; print where the results are."""
    from ..evaluate.runner import resolve_metrics, run

    apply_threads(args.threads)
    metrics = resolve_metrics(args.metrics)
    cfg = EvalConfig(
        model=args.model,
        data=args.data,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        metrics=tuple(metrics),
        n=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=args.steps,
        device=args.device,
    )
    result = run(cfg, args.out, progress=not args.no_progress)
    if result is not None:
        print(f"metrics: {Path(args.out) / 'metrics.json'}", file=sys.stdout)
    return 0
