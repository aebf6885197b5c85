"""Options shared by the commands, and the parsing and checking of their values.

Method names, their help and their checks come from the method registry
(:func:`sglrp.methods.available`); a method registered before the parser is built is offered
by every command.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import colormaps

from ..framing import CROP_MODES
from ..loading import SHIPPED
from ..methods import available, get

__all__ = [
    "add_compute_options",
    "add_model_options",
    "add_run_options",
    "apply_threads",
    "check_cmap",
    "check_compute",
    "check_out",
    "method_help",
    "parse_crop",
    "parse_floats",
    "parse_methods",
    "resolve_device",
]


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = None,
    weights: bool = True,
    classes: bool = True,
) -> None:
    """``--model`` (``--weights``, ``--num-classes``): the spec :mod:`sglrp.loading` reads."""
    parser.add_argument(
        "--model",
        required=default is None,
        default=default,
        metavar="MODEL",
        help=(
            f"a shipped model ({', '.join(SHIPPED)}), a zoo name with --weights (e.g. "
            "resnet18), a weights file from `sglrp train`, a TorchScript file (model.pt), or "
            "module:factory" + (f" (default: {default})" if default else "")
        ),
    )
    if weights:
        parser.add_argument(
            "--weights", metavar="FILE", help="state_dict file (torch.save(model.state_dict()))"
        )
        parser.add_argument(
            "--random-weights",
            type=int,
            metavar="SEED",
            help="a zoo/shipped model or module:factory with random weights drawn under SEED, "
            "on purpose (e.g. the model-randomisation sanity check); recorded in the outputs",
        )
    if classes:
        parser.add_argument("--num-classes", type=int, metavar="N", help="number of model outputs")


def add_compute_options(
    parser: argparse.ArgumentParser, *, batch_size: int = 16, batch_help: str = "images per batch"
) -> None:
    """``--device``, ``--batch-size`` and ``--threads``: every command that computes has them."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="compute device (default auto: CUDA when available)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        metavar="B",
        help=f"{batch_help} (default {batch_size})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (default: PyTorch's choice; 1 helps on a busy machine)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of the evaluation commands (``evaluate``, ``reproduce``)."""
    add_model_options(parser, default="shapes_vgg", classes=False)
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="class names of a model that has none (one per line, or a JSON list / object); "
        "they must be the names used in the VOC annotations",
    )
    parser.add_argument(
        "--data",
        default="builtin",
        help="'builtin' (generated multi- and single-object images) or a VOC folder "
        "(Annotations/, JPEGImages/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data and random-baseline seed")
    add_compute_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def check_compute(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, check ``--batch-size`` and return the ``--device`` to use."""
    apply_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    return resolve_device(args.device)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"`` as a device."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def apply_threads(threads: int | None) -> None:
    """Set PyTorch's intra-op thread count when asked."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    torch.set_num_threads(threads)


def check_out(out: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an output folder that is a file or cannot be written, before any work.

    Nothing is created: the folder is made when the first output is written.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; pass a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is not writable; pass another folder")
    return path


def method_help(default: Sequence[str]) -> str:
    """Help of a methods option: the registered names and the default."""
    return f"comma-separated methods, from {', '.join(available())} (default: {','.join(default)})"


def parse_methods(text: str | Sequence[str], option: str = "--method") -> list[str]:
    """Split a comma-separated list of methods; unknown names raise ``ValueError``.

    Names are matched as the registry matches them (case-insensitive, ``-`` as ``_``) and
    returned as registered, without repeats.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [m.strip() for m in items if m and m.strip()]
    if not names:
        raise ValueError(f"{option} is empty; give one or more of " + ", ".join(available()))
    return list(dict.fromkeys(get(name).name for name in names))


def parse_floats(text: str, option: str) -> tuple[float, float, float]:
    """``"0.485,0.456,0.406"`` (or one value for all channels) -> three floats."""
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError as err:
        raise ValueError(f"{option} {text!r}: expected numbers like 0.5,0.5,0.5") from err
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} {text!r}: expected 1 or 3 finite numbers (R,G,B)")
    return values[0], values[1], values[2]


def parse_crop(text: str | None) -> tuple[str, int | None]:
    """``--crop``: a mode (center, pad, none), a side C (centre crop C x C) or MODE:C.

    Returns ``(mode, side or None)``; unset is ``("center", None)``.
    """
    if text is None:
        return "center", None
    mode, _, side_text = text.strip().lower().rpartition(":")
    if not mode and not side_text.isdigit():
        mode, side_text = side_text, ""
    mode = {"centre": "center", "": "center"}.get(mode, mode)
    if mode not in CROP_MODES or (mode == "none" and side_text):
        raise ValueError(
            f"--crop {text!r}: expected {', '.join(CROP_MODES)}, a side in pixels, or "
            "center:C / pad:C"
        )
    if not side_text:
        return mode, None
    try:
        side = int(side_text)
    except ValueError:
        raise ValueError(f"--crop {text!r}: the side must be a number of pixels") from None
    if side < 1:
        raise ValueError(
            f"--crop must be a positive number of pixels, got {side}; --crop none keeps the "
            "whole image"
        )
    return mode, side


def check_cmap(name: str | None) -> str | None:
    """A matplotlib colour map name (``--cmap``), or None for the default."""
    if name is None or name in colormaps:
        return name
    close = difflib.get_close_matches(name, list(colormaps), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown colour map {name!r}.{hint} Any matplotlib colour map, e.g. bwr, seismic, "
        "coolwarm (signed), hot, jet, viridis (positive)"
    )
