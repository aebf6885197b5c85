"""Curve plots of an evaluation (pointing game, patch masking, deletion, insertion)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..viz import plot_curves
from .config import method_label

__all__ = ["PLOTS", "PLOT_TITLES", "write_plots"]

PLOTS: dict[str, tuple[str, str, str]] = {
    "extended_pointing_game": (
        "pointing_game_curve.png",
        "energy level E (share of positive relevance kept)",
        "pointing accuracy",
    ),
    "patch_masking": ("patch_masking.png", "patch size p (pixels)", "change in probability"),
    "patch_masking_second": (
        "patch_masking_second.png",
        "patch size p (pixels)",
        "change in probability",
    ),
    "deletion": ("deletion_curve.png", "fraction of pixels deleted", "target probability"),
    "insertion": ("insertion_curve.png", "fraction of pixels inserted", "target probability"),
}

PLOT_TITLES: dict[str, str] = {
    "extended_pointing_game": "Extended pointing game (cf. Fig. 13)",
    "patch_masking": "Patch masking, ground truth (cf. Fig. 11)",
    "patch_masking_second": "Patch masking, 2nd target (cf. Fig. 11)",
    "deletion": "Deletion curve",
    "insertion": "Insertion curve",
}


def write_plots(out: Path, metrics: Mapping[str, Any]) -> dict[str, Path]:
    """Curve plots (one line per method, 95 % bands) for every measure with levels."""
    written = {}
    for key, (name, xlabel, ylabel) in PLOTS.items():
        entry = metrics.get(key)
        if not entry or not entry.get("levels"):
            continue
        curves, bands = {}, {}
        for m, st in entry["methods"].items():
            if "curve" not in st:
                continue
            label = method_label(m)
            curves[label] = [np.nan if c["mean"] is None else c["mean"] for c in st["curve"]]
            low = [np.nan if c["low"] is None else c["low"] for c in st["curve"]]
            high = [np.nan if c["high"] is None else c["high"] for c in st["curve"]]
            bands[label] = (low, high)
        if not curves:
            continue
        written[key] = plot_curves(
            entry["levels"],
            curves,
            xlabel=xlabel,
            ylabel=ylabel,
            title=PLOT_TITLES[key],
            path=out / name,
            ci=bands,
            best="max" if entry["direction"] == "higher" else "min",
        )
    return written
