"""``sglrp explain IMAGE... --model M --out DIR``: relevance maps for image files.

The outputs per image are described in :mod:`sglrp.app.explain`. Errors that concern the
whole call (unknown method, model or class name, a missing or unfitting weights file, an
output folder that cannot be written) stop it before any image is read. Errors that concern
one image (missing, unreadable or corrupt file) are reported on one stderr line each; the
other images are still processed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..app.classes import default_classes, format_probability, resolve_target
from ..app.config import PAPER_METHODS
from ..app.explain import Settings, check_layer, expand_images, explain_images, unique_dirs
from ..app.explain_summary import summary_row, write_summary
from ..images import read_labels
from ..loading import SHIPPED, load_model, output_size
from ..methods import get, methods
from ..presets import PRESETS, bounds_from_normalization
from .options import (
    add_compute_options,
    add_model_options,
    check_cmap,
    check_compute,
    check_out,
    method_help,
    parse_crop,
    parse_floats,
    parse_methods,
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``explain`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "explain",
        help="explain a classifier's decision on image files",
        description=(
            "Compute relevance maps (SGLRP, CLRP, LRP, Grad-CAM variants, ...) for image files "
            "and write a comparison grid, per-method PNG and .npy files, overlays on the "
            "original image at its own resolution and a JSON summary per image into "
            "OUT/<image stem>/, and OUT/summary.json and OUT/summary.csv across images."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
    add_model_options(p, classes=False)
    p.add_argument(
        "--method",
        default=",".join(PAPER_METHODS),
        metavar="M1,M2",
        help=method_help(PAPER_METHODS),
    )
    p.add_argument(
        "--target",
        default="predicted",
        metavar="T",
        help="class to explain: predicted (default), second, a class index or a class name",
    )
    p.add_argument("--rules", default="dtd", metavar="PRESET", help="LRP rule preset (dtd)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--labels", metavar="FILE", help="class names: one per line, or a JSON list / object"
    )
    p.add_argument("--num-classes", type=int, metavar="N", help="number of model outputs")
    p.add_argument(
        "--size",
        type=int,
        metavar="S",
        help="resize the shorter side to S (default 256; shapes models 64)",
    )
    p.add_argument(
        "--crop",
        metavar="MODE",
        help="center (default: shorter side to --size, centre square of the model's input "
        "size), pad (whole image, longer side to the input size, padded square), none (whole "
        "image, shorter side to --size; the model must accept any shape), a side C (centre "
        "crop C x C; default 224, shapes models 64), or center:C / pad:C",
    )
    p.add_argument(
        "--cmap",
        metavar="NAME",
        help="matplotlib colour map of maps, overlays and grid (default bwr signed, hot positive)",
    )
    p.add_argument(
        "--recursive", action="store_true", help="read folders' sub-folders too (IMAGE folders)"
    )
    p.add_argument(
        "--mean", metavar="R,G,B", help="normalisation mean (default ImageNet or the model's own)"
    )
    p.add_argument(
        "--std", metavar="R,G,B", help="normalisation std (default ImageNet or the model's own)"
    )
    p.add_argument("--layer", metavar="NAME", help="layer for gradcam/guided_gradcam/relevance_cam")
    p.add_argument(
        "--display",
        choices=("signed", "positive"),
        default="signed",
        help="signed maps (red +, blue -; default) or positive relevance only (the paper)",
    )
    add_compute_options(p, batch_size=8, batch_help="images per forward/backward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def prepare(args: argparse.Namespace) -> Settings:
    """Check every option and load the model; raises on the first problem."""
    out = check_out(args.out)
    device = check_compute(args)
    method_names = parse_methods(args.method)
    if args.rules not in PRESETS:
        raise ValueError(f"unknown rules preset {args.rules!r}; available: {', '.join(PRESETS)}")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {args.size}")
    crop_mode, crop_side = parse_crop(args.crop)
    cmap = check_cmap(args.cmap)
    mean = parse_floats(args.mean, "--mean") if args.mean else None
    std = parse_floats(args.std, "--std") if args.std else None
    if std is not None and min(std) <= 0:
        raise ValueError(f"--std must be positive, got {args.std}")
    labels = read_labels(args.labels) if args.labels else None
    num_classes = args.num_classes
    if num_classes is None and labels is not None and args.model not in SHIPPED:
        num_classes = len(labels)

    bundle = load_model(args.model, args.weights, num_classes, args.random_weights)
    if bundle.compiled:
        safe = [m.name for m in methods() if not m.needs_layers]
        blocked = [m for m in method_names if get(m).needs_layers]
        if blocked:
            raise ValueError(
                f"method(s) {', '.join(blocked)} cannot run on the compiled TorchScript model "
                f"{args.model} (they need its layers); methods that can: "
                f"{', '.join(safe)}. Or pass the architecture: --model NAME "
                "--weights FILE, or module:factory"
            )

    mean = mean or bundle.mean
    std = std or bundle.std
    default_size, default_crop = bundle.resize, bundle.size
    crop = crop_side or default_crop
    size = args.size or (
        default_size if crop_side is None else round(crop * default_size / default_crop)
    )
    if crop_mode == "none" and args.size is None:
        size = crop  # the whole image, its shorter side the model's input size

    out_classes = output_size(bundle.model, crop)
    classes, note = default_classes(labels or bundle.classes, out_classes)
    if note:
        bundle.notes.append(note)
    if classes is not None and len(classes) != out_classes:
        source = f"--labels {args.labels}" if labels else "the model's class list"
        raise ValueError(
            f"{source} has {len(classes)} names but the model outputs {out_classes} classes"
        )
    target = resolve_target(args.target, classes, out_classes)

    if args.layer is not None:
        if not any(get(m).takes_layer for m in method_names):
            layered = [m.name for m in methods() if m.takes_layer]
            raise ValueError(f"--layer applies to {', '.join(layered)}; none was requested")
        check_layer(bundle.model, args.layer)
    low, high = bounds_from_normalization(mean, std)
    bundle.model.to(device)  # the loader's own copy, not the user's model
    return Settings(
        bundle=bundle,
        methods=method_names,
        classes=classes,
        num_classes=out_classes,
        target=target,
        rules=args.rules,
        size=size,
        crop=crop,
        mean=tuple(mean),
        std=tuple(std),
        bounds=(low, high),
        layer=args.layer,
        display=args.display,
        out=out,
        model_spec=args.model,
        weights=args.weights,
        device=device,
        batch_size=args.batch_size,
        crop_mode=crop_mode,
        cmap=cmap,
    )


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run(args: argparse.Namespace) -> int:
    """Entry point of ``sglrp explain``; returns the exit status."""
    settings = prepare(args)
    images = expand_images(args.images, recursive=args.recursive)
    dirs = unique_dirs(images, settings.out)
    rows: dict[Path, dict] = {}

    def on_error(path: Path, err: BaseException) -> None:
        message = _line(err)
        if str(path) not in message:
            message = f"{path}: {message}"
        rows[path] = summary_row(path, path, error=message)
        tqdm.write(f"sglrp explain: error: {message}", file=sys.stderr)
        bar.update(1)

    quiet = True if args.no_progress else None
    bar = tqdm(total=len(images), desc="explain", unit="image", file=sys.stderr, disable=quiet)
    with bar:
        for path, out_dir, summary in explain_images(settings, images, dirs, on_error):
            rows[path] = summary_row(path, out_dir, summary)
            t = summary["target"]
            p = format_probability(t["probability"])
            note = " (caution: unlike the training data)" if summary.get("caution") else ""
            tqdm.write(f"{path}: {t['name']} ({p}) -> {out_dir}{note}", file=sys.stdout)
            bar.update(1)
    write_summary(settings.out, [rows[p] for p in images if p in rows], vars_summary(args))
    failed = sum(r["status"] != "ok" for r in rows.values())
    done = len(images) - failed
    if done:  # after failures only, their error lines say it all
        print(f"explained {done} of {len(images)} images into {settings.out}")
    return 1 if failed else 0


def vars_summary(args: argparse.Namespace) -> dict:
    """The options as given, for ``summary.json``."""
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}
