"""Comparison grids of the report: one row per (image, present class), one column per method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import to_tensor
from ..loading import ModelBundle
from ..viz import comparison_grid
from .batch import explain_relevance
from .classes import format_probability
from .config import method_label as label
from .sources import DataSource

__all__ = ["comparison_rows", "write_grid"]


def comparison_rows(
    bundle: ModelBundle, source: DataSource, indices: Sequence[int]
) -> tuple[torch.Tensor, list[int], list[int], list[str]]:
    """One row per (image, present class): the inputs, image positions, targets and titles.

    Titles name the image, the target class with its probability, every class present and
    the model's top-1 class with its probability.
    """
    samples = [source.load(i) for i in indices]
    x = to_tensor([s.image for s in samples], bundle.mean, bundle.std)
    with torch.no_grad():
        probs = bundle.model(x).double().softmax(dim=1)
    rows, targets, titles = [], [], []
    names = bundle.classes
    for i, s in enumerate(samples):
        present = list(dict.fromkeys(s.labels))
        top = int(probs[i].argmax())
        for c in present:
            rows.append(i)
            targets.append(int(c))
            others = ", ".join(names[k] for k in present if k != c)
            p_c, p_top = (format_probability(float(probs[i, k])) for k in (c, top))
            titles.append(
                f"{source.ids[indices[i]]}: target {names[c]} (p={p_c})"
                f" | also present: {others or '-'}"
                f" | top-1: {names[top]} ({p_top})"
            )
    return x[rows], rows, targets, titles


def write_grid(
    bundle: ModelBundle,
    source: DataSource,
    indices: Sequence[int],
    methods: Sequence[str],
    path: str | Path,
    seed: int = 0,
) -> Path:
    """Comparison grid PNG: rows = image x present class, columns = methods (positive maps)."""
    x, _, targets, titles = comparison_rows(bundle, source, indices)
    t = torch.tensor(targets, dtype=torch.long)
    maps = {label(m): explain_relevance(bundle, x, t, m, seed) for m in methods}
    fig = comparison_grid(
        x,
        maps,
        row_titles=titles,
        signed=False,
        mean=bundle.mean,
        std=bundle.std,
        path=path,
        cell_size=1.45,
        dpi=100,
    )
    del fig
    return Path(path)
