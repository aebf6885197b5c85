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
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        init=args.init,
        head_epochs=args.head_epochs,
        init_lr_scale=args.init_lr_scale,
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
        "Writes OUT (weights), OUT.json (metadata with sha256) and OUT.csv (per-epoch log). "
        "Every setting not given is the shipped model's (its recipe), so `sglrp train --model "
        "NAME --out NAME.pt` rebuilds the shipped NAME.pt.",
    )
    parser.add_argument(
        "--model", required=True, choices=sorted(training.MODELS), help="architecture"
    )
    parser.add_argument("--out", required=True, help="weights file to write (.pt)")

    def shipped(key: str) -> str:
        values = (
            f"{training.resolve_recipe(name)[key]} for {name}" for name in sorted(training.MODELS)
        )
        return f"default as shipped: {', '.join(values)}"

    for flag, kind, what in (
        ("--epochs", int, "epochs"),
        ("--steps-per-epoch", int, "steps per epoch"),
        ("--batch-size", int, "images per step"),
        ("--lr", float, "peak learning rate"),
        ("--weight-decay", float, "AdamW weight decay"),
        ("--warmup", float, "fraction of steps warming up"),
        ("--multi-fraction", float, "fraction of each batch drawn from multi-object images"),
        ("--head-epochs", int, "first epochs training only the layers not warm-started"),
        ("--init-lr-scale", float, "learning rate of the warm-started layers / --lr"),
    ):
        key = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=kind, default=None, help=f"{what} ({shipped(key)})")
    inits = (
        f"{(training.resolve_recipe(name)['init'] or {}).get('model', 'none')} for {name}"
        for name in sorted(training.MODELS)
    )
    parser.add_argument(
        "--init",
        default=None,
        metavar="NAME",
        help="warm-start the convolutional features from this shipped model's checksum-"
        f"verified weights, or 'none' (default as shipped: {', '.join(inits)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--workers", type=int, default=1, help="image-generating loader processes (default 1)"
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
