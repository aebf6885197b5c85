"""Explaining image files (``sglrp explain``): one image in, a folder of outputs out.

For every image, its folder receives

* ``grid.png``: the input and one column per method (:func:`sglrp.viz.comparison_grid`),
* ``<method>.png``: each map on its own, ``<method>.npy``: the raw relevance (C, H, W),
* ``<method>_overlay.png``: the map over the original image at its own resolution (the map
  upsampled from the model input and the crop or padding mapped back,
  :func:`sglrp.framing.to_original`; parts the model did not see are darkened),
* ``input.png``: the framed image the model saw (:func:`sglrp.framing.frame_image`),
* ``explanation.json``: top-5 classes, the target, the methods and every option (written
  last, so its presence means the image's outputs are complete).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import __version__
from .._guard import preserved
from ..api import explain
from ..atomic import atomic_path, write_json
from ..data.likeness import THRESHOLD, shapes_distance
from ..feature_layer import feature_layers
from ..framing import Framing, frame_image, to_original
from ..images import load_image, to_tensor
from ..loading import ModelBundle
from ..methods import get
from ..viz import comparison_grid, overlay, positive_map, save_map_png, signed_map
from .classes import class_name, format_probability

__all__ = [
    "Settings",
    "check_layer",
    "expand_images",
    "explain_image",
    "explain_images",
    "unique_dirs",
]

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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 1
    crop_mode: str = "center"
    cmap: str | None = None


def check_layer(model: torch.nn.Module, layer: str) -> None:
    """Raise ``ValueError`` unless ``layer`` names a module of ``model``.

    The message suggests close matches among the convolutional (feature) layers
    (:func:`sglrp.feature_layer.feature_layers`), which is where a CAM layer lives, and
    lists the last of them.
    """
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return
    convs = feature_layers(model) or names
    close = difflib.get_close_matches(layer, convs, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown layer {layer!r}.{hint} Last conv/feature layers: {', '.join(convs[-6:])}"
    )


def expand_images(items: Sequence[str], recursive: bool = False) -> list[Path]:
    """Command-line images; a directory stands for the image files directly inside it (and
    in its sub-folders with ``recursive``), sorted by path."""
    suffixes = {s.lower() for s in Image.registered_extensions()}
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            files = sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes)
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


@dataclass
class _Item:
    """One image on its way through :func:`explain_images`."""

    path: Path
    out_dir: Path
    image: Image.Image
    x: torch.Tensor
    shown: Image.Image
    framing: Framing


def _relevance(s: Settings, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    record = get(method)
    options: dict[str, Any] = {}
    if record.takes_rules:
        low, high = s.bounds
        options.update(rules=s.rules, bounds=(low.to(x.device), high.to(x.device)))
    if record.takes_layer and s.layer is not None:
        options["layer"] = s.layer
    return explain(s.bundle.model, x, targets, method=method, **options)


def _pick(s: Settings, order: list[int]) -> int:
    if s.target == "predicted":
        return order[0]
    if s.target == "second":
        return order[1]
    return int(s.target)


def _compute(
    s: Settings, x: torch.Tensor
) -> tuple[torch.Tensor, list[list[int]], list[int], dict[str, torch.Tensor]]:
    """Logits, class orders, targets and every method's maps of a batch (on the CPU)."""
    x = x.to(s.device)
    with preserved(s.bundle.model), torch.no_grad():
        logits = s.bundle.model(x).float().cpu()
    orders = torch.argsort(logits, dim=1, descending=True).tolist()
    targets = [_pick(s, order) for order in orders]
    t = torch.tensor(targets, device=s.device)
    maps: dict[str, torch.Tensor] = {}
    for method in s.methods:
        r = _relevance(s, x, t, method).detach().float().cpu()
        for i in range(len(r)):
            if not torch.isfinite(r[i]).all():
                raise ValueError(f"{method} gave NaN or Inf relevance")
        maps[method] = r
    return logits, orders, targets, maps


def explain_images(
    s: Settings,
    paths: Sequence[Path],
    dirs: Sequence[Path],
    on_error: Callable[[Path, BaseException], None],
) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    """Explain image files ``s.batch_size`` at a time; yield ``(path, folder, summary)``.

    An image that cannot be read, or whose maps fail, is passed to ``on_error`` and skipped;
    a batch that fails is computed again image by image so that only the culprit fails.
    """
    for lo in range(0, len(paths), s.batch_size):
        items = []
        chunk = slice(lo, lo + s.batch_size)
        for path, out_dir in zip(paths[chunk], dirs[chunk], strict=True):
            try:
                image = load_image(path)
                fill = tuple(int(round(255 * m)) for m in s.mean)  # zero after normalising
                shown, framing = frame_image(image, s.crop_mode, s.size, s.crop, fill)
                x = to_tensor(shown, s.mean, s.std)
            except Exception as err:  # noqa: BLE001 - one bad image does not stop the others
                on_error(path, err)
                continue
            items.append(_Item(path, out_dir, image, x, shown, framing))
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for item in items:  # images of one input shape share a batch
            groups.setdefault(tuple(item.x.shape), []).append(item)
        for group in groups.values():
            yield from _explain_group(s, group, on_error)


def _explain_group(
    s: Settings, group: list[_Item], on_error: Callable[[Path, BaseException], None]
) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    try:
        logits, orders, targets, maps = _compute(s, torch.cat([it.x for it in group]))
    except Exception as err:  # noqa: BLE001 - find the image that fails
        if len(group) == 1:
            on_error(group[0].path, err)
            return
        for item in group:
            yield from _explain_group(s, [item], on_error)
        return
    for i, item in enumerate(group):
        try:
            one = {m: r[i : i + 1] for m, r in maps.items()}
            summary = _write(s, item, logits[i], orders[i], targets[i], one)
        except Exception as err:  # noqa: BLE001 - one bad image does not stop the others
            on_error(item.path, err)
            continue
        yield item.path, item.out_dir, summary


def explain_image(s: Settings, path: Path, out_dir: Path) -> dict[str, Any]:
    """Explain one image file and write its outputs; return the JSON summary."""
    errors: list[BaseException] = []
    done = list(explain_images(s, [path], [out_dir], lambda p, e: errors.append(e)))
    if errors:
        raise errors[0]
    return done[0][2]


def _write(
    s: Settings,
    item: _Item,
    logits: torch.Tensor,
    order: list[int],
    target: int,
    maps: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Write one image's outputs from its logits and maps; return the JSON summary."""
    path, out_dir, image, x, shown = item.path, item.out_dir, item.image, item.x, item.shown
    probs = torch.softmax(logits, dim=0)

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
    caution = _caution(s, shown)
    title = f"{path.name}: predicted {p_name} ({format_probability(p_prob)})"
    if caution and caution["unlike"]:
        title += f"\ncaution: {caution['short']}"
    comparison_grid(
        x,
        maps,
        row_titles=[title],
        column_titles=[f"target: {t_name} ({format_probability(t_prob)})", *s.methods],
        signed=signed,
        mean=s.mean,
        std=s.std,
        path=out_dir / "grid.png",
        cmap=s.cmap,
    )
    files = []
    for method, r in maps.items():
        arr = r[0].numpy().astype(np.float32)
        with atomic_path(out_dir / f"{method}.npy") as tmp:
            np.save(tmp, arr)
        save_map_png(arr, out_dir / f"{method}.png", signed=signed, cmap=s.cmap)
        _write_overlay(s, item, arr, out_dir / f"{method}_overlay.png")
        files.append(
            {
                "name": method,
                "png": f"{method}.png",
                "overlay": f"{method}_overlay.png",
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
        "framing": item.framing.as_dict(),
        "model": _model_summary(s),
        "target": {"requested": str(s.target), **entry(target)},
        "top5": [entry(i) for i in order[:_TOP]],
        "caution": caution if caution and caution["unlike"] else None,
        "likeness": caution,
        "methods": files,
        "grid": "grid.png",
        "input": "input.png",
        "options": {
            "rules": s.rules,
            "bounds": {"low": low.tolist(), "high": high.tolist()},
            "size": s.size,
            "crop": s.crop,
            "crop_mode": s.crop_mode,
            "cmap": s.cmap,
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


def _caution(s: Settings, shown: Image.Image) -> dict[str, Any] | None:
    """For a shipped shapes model: how unlike the generated images the input is
    (:func:`sglrp.data.likeness.shapes_distance`), with a caution above the threshold."""
    if s.bundle.kind != "shipped":
        return None
    distance = shapes_distance(np.asarray(shown.convert("RGB")))
    unlike = distance > THRESHOLD
    short = f"image unlike the generated shapes the model was trained on (D = {distance:.1f})"
    return {
        "statistic": "Mahalanobis distance D of the input's per-channel mean and std from "
        "those of generated shapes images (sglrp.data.likeness)",
        "distance": distance,
        "threshold": THRESHOLD,
        "unlike": unlike,
        "short": short,
        "message": (
            f"image unlike the generated shapes the model was trained on (D = {distance:.1f} > "
            f"{THRESHOLD}): the model knows only generated shapes, so its classes and maps may "
            "mean little for this image"
            if unlike
            else None
        ),
    }


def _write_overlay(s: Settings, item: _Item, relevance: np.ndarray, path: Path) -> None:
    """The display map upsampled onto the original image (darkened where not seen)."""
    signed = s.display == "signed"
    m = signed_map(relevance) if signed else positive_map(relevance)
    values, seen = to_original(m, item.framing)
    rgb = overlay(item.image, values, signed=signed, cmap=s.cmap, vmax=1.0, seen=seen)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")


def _model_summary(s: Settings) -> dict[str, Any]:
    return {
        "spec": s.model_spec,
        "weights": s.weights,
        "kind": s.bundle.kind,
        "num_classes": s.num_classes,
        "notes": s.bundle.notes,
        "random_weights": s.bundle.random_weights,
        "sha256": s.bundle.weights or None,
    }
