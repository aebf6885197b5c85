"""Explaining image files (``sglrp explain``): one image in, a folder of outputs out.

For every image, its folder receives

* ``grid.png``: the input and one column per method (:func:`sglrp.viz.comparison_grid`),
* ``<method>.png``: each map on its own, ``<method>.npy``: the raw relevance (C, H, W),
* ``input.png``: the resized and cropped image the model saw,
* ``explanation.json``: top-5 classes, the target, the methods and every option (written
  last, so its presence means the image's outputs are complete).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import __version__
from .._guard import preserved
from ..api import explain
from ..atomic import atomic_path, write_json
from ..images import load_image, preprocess
from ..loading import ModelBundle
from ..methods import get
from ..viz import comparison_grid, save_map_png
from .classes import class_name

__all__ = ["Settings", "expand_images", "explain_image", "unique_dirs"]

_TOP = 5


@dataclass
class Settings:
    """Everything fixed before the first image is read."""

    bundle: ModelBundle
    methods: list[str]
    classes: Sequence[str] | None
    num_classes: int
    target: str | int
    rules: str
    size: int | None
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bounds: tuple[torch.Tensor, torch.Tensor]
    layer: str | None
    display: str
    out: Path
    model_spec: str
    weights: str | None


def expand_images(items: Sequence[str]) -> list[Path]:
    """Command-line images; a directory stands for the image files directly inside it."""
    suffixes = {s.lower() for s in Image.registered_extensions()}
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
            )
            out.extend(files or [path])  # an empty folder is reported as a bad image
        else:
            out.append(path)
    return out


def unique_dirs(paths: Sequence[Path], out: Path) -> list[Path]:
    """``out/<stem>`` per image, with ``-2``, ``-3`` ... for repeated stems."""
    seen: dict[str, int] = {}
    dirs = []
    for p in paths:
        stem = p.stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def _relevance(s: Settings, x: torch.Tensor, target: int, method: str) -> torch.Tensor:
    record = get(method)
    options: dict[str, Any] = {}
    if record.takes_rules:
        options.update(rules=s.rules, bounds=s.bounds)
    if record.takes_layer and s.layer is not None:
        options["layer"] = s.layer
    return explain(s.bundle.model, x, torch.tensor([target]), method=method, **options)


def explain_image(s: Settings, path: Path, out_dir: Path) -> dict[str, Any]:
    """Explain one image file and write its outputs; return the JSON summary."""
    image = load_image(path)
    x, shown = preprocess(image, s.size, s.crop, s.mean, s.std)
    with preserved(s.bundle.model), torch.no_grad():
        logits = s.bundle.model(x).float()[0]
    probs = torch.softmax(logits, dim=0)
    order = torch.argsort(probs, descending=True).tolist()
    if s.target == "predicted":
        target = order[0]
    elif s.target == "second":
        target = order[1]
    else:
        target = int(s.target)

    maps: dict[str, torch.Tensor] = {}
    for method in s.methods:
        r = _relevance(s, x, target, method).detach().float()
        if not torch.isfinite(r).all():
            raise ValueError(f"{method} gave NaN or Inf relevance")
        maps[method] = r

    def entry(i: int) -> dict[str, Any]:
        return {
            "rank": order.index(i) + 1,
            "index": i,
            "name": class_name(s.classes, i),
            "probability": float(probs[i]),
            "logit": float(logits[i]),
        }

    t_name, t_prob = class_name(s.classes, target), float(probs[target])
    p_name, p_prob = class_name(s.classes, order[0]), float(probs[order[0]])
    signed = s.display == "signed"
    comparison_grid(
        x,
        maps,
        row_titles=[f"{path.name}: predicted {p_name} ({p_prob:.2f})"],
        column_titles=[f"target: {t_name} ({t_prob:.2f})", *s.methods],
        signed=signed,
        mean=s.mean,
        std=s.std,
        path=out_dir / "grid.png",
    )
    files = []
    for method, r in maps.items():
        arr = r[0].numpy().astype(np.float32)
        with atomic_path(out_dir / f"{method}.npy") as tmp:
            np.save(tmp, arr)
        save_map_png(arr, out_dir / f"{method}.png", signed=signed)
        files.append(
            {
                "name": method,
                "png": f"{method}.png",
                "npy": f"{method}.npy",
                "shape": list(arr.shape),
                "sum": float(arr.sum()),
                "positive_sum": float(arr.clip(min=0).sum()),
                "max_abs": float(np.abs(arr).max()),
            }
        )
    with atomic_path(out_dir / "input.png") as tmp:
        shown.save(tmp, format="PNG")
    low, high = s.bounds
    summary = {
        "image": str(path),
        "image_size": list(image.size),
        "input_shape": list(x.shape),
        "model": _model_summary(s),
        "target": {"requested": str(s.target), **entry(target)},
        "top5": [entry(i) for i in order[:_TOP]],
        "methods": files,
        "grid": "grid.png",
        "input": "input.png",
        "options": {
            "rules": s.rules,
            "bounds": {"low": low.tolist(), "high": high.tolist()},
            "size": s.size,
            "crop": s.crop,
            "mean": list(s.mean),
            "std": list(s.std),
            "layer": s.layer,
            "display": s.display,
        },
        "sglrp_version": __version__,
        "torch_version": torch.__version__,
    }
    write_json(out_dir / "explanation.json", summary)
    return summary


def _model_summary(s: Settings) -> dict[str, Any]:
    return {
        "spec": s.model_spec,
        "weights": s.weights,
        "kind": s.bundle.kind,
        "num_classes": s.num_classes,
        "notes": s.bundle.notes,
        "sha256": s.bundle.weights or None,
    }
