"""``sglrp train``: train a shape model on freshly generated images."""

from __future__ import annotations

import argparse

from .. import train as training


def _run(args: argparse.Namespace) -> int:
    meta = training.train(
        args.model,
        args.out,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        threads=args.threads,
        workers=args.workers,
        multi_fraction=args.multi_fraction,
        val_single=args.val_single,
        val_multi=args.val_multi,
        half=args.half,
        progress=not args.quiet,
        log=None if args.quiet else print,
    )
    final = meta["training"]["final"]
    print(
        f"wrote {args.out} ({meta['bytes'] / 1e6:.2f} MB, sha256 {meta['sha256'][:12]}...): "
        f"val single {training.fmt(final['val_single_acc'])}, val multi top-2 "
        f"{training.fmt(final['val_multi_top2'])}, {meta['training']['seconds']:.0f} s"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train a shape model (weights, .json metadata and .csv log)",
        description="Train a model on generated shape images; every step sees new images. "
        "Writes OUT (weights), OUT.json (metadata with sha256) and OUT.csv (per-epoch log).",
    )
    parser.add_argument(
        "--model", required=True, choices=sorted(training.MODELS), help="architecture"
    )
    parser.add_argument("--out", required=True, help="weights file to write (.pt)")

    def shipped(key: str) -> str:
        return ", ".join(f"{r[key]} for {name}" for name, r in sorted(training.RECIPES.items()))

    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs (default as shipped: {shipped('epochs')})"
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help=f"steps per epoch (default as shipped: {shipped('steps_per_epoch')})",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument(
        "--warmup", type=float, default=0.15, help="fraction of steps warming up (default 0.15)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--workers", type=int, default=1, help="image-generating loader processes (default 1)"
    )
    parser.add_argument(
        "--multi-fraction",
        type=float,
        default=0.6,
        help="fraction of each batch drawn from multi-object images (default 0.6)",
    )
    parser.add_argument(
        "--val-single", type=int, default=600, help="held-out single images per evaluation"
    )
    parser.add_argument(
        "--val-multi", type=int, default=300, help="held-out 2-object images per evaluation"
    )
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    parser.set_defaults(func=lambda args: _run(args))
