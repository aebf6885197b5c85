"""Class-sensitivity diagnostics of a reproduction: the class-collapse curve per rule set.

For a few multi-object images, every class's one-hot output relevance is propagated and the
mean pairwise cosine between the classes' relevance is taken at every conv/linear layer
(:func:`sglrp.metrics.class_collapse`, Sixt et al. 2020). A curve that reaches 1 before the
input means the rules forget the class there, and then LRP maps cannot differ between
targets and SGLRP is left with a small remainder. Written as ``collapse.json`` and
``collapse.png`` beside the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..data import to_tensor
from ..loading import ModelBundle
from ..metrics import class_collapse
from ..presets import bounds_from_normalization
from ..viz import plot_curves
from .sources import DataSource

__all__ = ["COLLAPSE_RULES", "collapse_curves", "write_collapse"]

#: Rule sets whose collapse is compared: the paper's, and epsilon on dense layers.
COLLAPSE_RULES = ("dtd", "epsilon-plus")


def collapse_curves(
    bundle: ModelBundle, source: DataSource, indices: Sequence[int], rules=COLLAPSE_RULES
) -> dict[str, Any]:
    """``{"layers": [...], "images": n, "curves": {rules: [mean per layer]}}`` (output first)."""
    x = to_tensor([source.load(i).image for i in indices], bundle.mean, bundle.std)
    bounds = bounds_from_normalization(bundle.mean, bundle.std)
    curves, layers = {}, None
    for name in rules:
        curve = class_collapse(bundle.model, x, rules=name, bounds=bounds)
        layers = list(curve.layers)
        curves[name] = [None if math.isnan(v) else float(v) for v in curve.mean.tolist()]
    return {"layers": layers, "images": len(indices), "curves": curves}


def write_collapse(out: Path, result: dict[str, Any], model: str) -> tuple[Path, str]:
    """``collapse.json`` and ``collapse.png`` in ``out``; returns the figure and its caption."""
    write_json(out / "collapse.json", result)
    layers = result["layers"]
    curves = {k: [math.nan if v is None else v for v in vs] for k, vs in result["curves"].items()}
    path = plot_curves(
        list(range(len(layers))),
        curves,
        xlabel="layer, from the logits (0) to the input",
        ylabel="mean pairwise cosine of the classes' relevance",
        title=f"{model}: class collapse",
        path=out / "collapse.png",
        best=None,
    )
    first = {k: next((i for i, v in enumerate(vs) if v > 0.99), None) for k, vs in curves.items()}
    said = "; ".join(
        f"{k}: above 0.99 from layer {i} ({layers[i]})" if i is not None else f"{k}: never 0.99"
        for k, i in first.items()
    )
    caption = (
        f"Class collapse on {result['images']} multi-object images (1 = relevance no longer "
        f"depends on the class). {said}."
    )
    return path, caption
