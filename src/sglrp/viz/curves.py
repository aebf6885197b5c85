"""Curve plots: one line per method over levels, with 95 % bands."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .maps import _float, save_figure

__all__ = ["plot_curves"]


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """Mean height of a curve (trapezoid area divided by the x range)."""
    span = float(x[-1] - x[0]) if len(x) > 1 else 0.0
    if span == 0:
        return float(np.mean(y))
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / span)


def plot_curves(
    x: Any,
    curves: Mapping[str, Any],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    path: str | os.PathLike,
    ci: Mapping[str, Any] | None = None,
    best: Literal["max", "min"] | None = "max",
    dpi: float = 150,
    figsize: tuple[float, float] = (6.0, 4.0),
) -> Path:
    """Line plot of one evaluation curve per method, written as a PNG (atomically).

    Parameters
    ----------
    x : sequence, tensor or array
        Shared x values (energy level, patch size, fraction deleted, ...).
    curves : dict
        ``method name -> y values`` (same length as ``x``); drawn in the dict's order.
    xlabel, ylabel, title : str
        Axis labels and title.
    path : path-like
        Output ``.png``.
    ci : dict, optional
        ``method name -> band``: either a half-width per point (shaded ``y ± hw``) or a pair
        ``(low, high)``. Methods without an entry get no band.
    best : {"max", "min"} or None
        Whether higher or lower curves are better. The legend then shows each method's
        mean height (area under the curve / x range), ranked best first, the best line is
        drawn thicker and the title says "higher/lower is better". ``None``: no ranking.
    dpi : float
        PNG resolution.
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if best not in ("max", "min", None):
        raise ValueError(f"best must be 'max', 'min' or None, got {best!r}")
    if not curves:
        raise ValueError("curves is empty; pass at least one method's y values")
    xs = _float(x).reshape(-1)
    ys = {str(k): _float(v).reshape(-1) for k, v in curves.items()}
    for name, y in ys.items():
        if len(y) != len(xs):
            raise ValueError(f"curve {name!r} has {len(y)} values but x has {len(xs)}")
    areas = {name: _area(xs, y) for name, y in ys.items()}
    top = None
    if best is not None:
        finite = {k: v for k, v in areas.items() if np.isfinite(v)}
        if finite:
            top = (max if best == "max" else min)(finite, key=finite.get)

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = colormaps["tab10"].colors
    markers = "osD^vP*Xh<>"
    handles = {}
    for k, (name, y) in enumerate(ys.items()):
        color = colors[k % len(colors)]
        label = f"{name} ({areas[name]:.3g})" if best is not None else name
        (line,) = ax.plot(
            xs,
            y,
            label=label,
            color=color,
            lw=2.6 if name == top else 1.5,
            marker=markers[k % len(markers)] if len(xs) <= 25 else None,
            ms=4,
            zorder=3 if name == top else 2,
        )
        handles[name] = line
        if ci is not None and name in ci:
            band = ci[name]
            if isinstance(band, tuple | list) and len(band) == 2:
                lo, hi = _float(band[0]).reshape(-1), _float(band[1]).reshape(-1)
            else:
                hw = _float(band).reshape(-1)
                lo, hi = y - hw, y + hw
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0, zorder=1)
    order = list(ys)
    if best is not None:
        order.sort(key=lambda k: -areas[k] if best == "max" else areas[k])
    legend_title = None
    if best is not None:
        legend_title = "mean over x, best first"
    ax.legend(
        [handles[k] for k in order],
        [handles[k].get_label() for k in order],
        fontsize=8,
        title=legend_title,
        title_fontsize=8,
        frameon=False,
    )
    suffix = {"max": " (higher is better)", "min": " (lower is better)", None: ""}[best]
    ax.set_title(title + suffix, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
