"""Comparison grids: the inputs and one column of maps per method, with a colour bar."""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import Colormap, ListedColormap, Normalize
from matplotlib.figure import Figure

from .maps import (
    _float,
    _lut,
    _np,
    _to_chw,
    _upscale,
    denormalize,
    positive_map,
    render_positive,
    render_signed,
    save_figure,
    signed_map,
    to_image,
)

__all__ = ["CBAR_IN", "HEADER_IN", "ROW_TITLE_IN", "comparison_grid", "grid_size_px"]

#: Height (inches) of the column-title band at the top of a comparison grid.
HEADER_IN = 0.32
#: Height (inches) of the title band above each row when ``row_titles`` are given.
ROW_TITLE_IN = 0.26
#: Width (inches) of the colour-bar band at the right of a comparison grid.
CBAR_IN = 0.8

_PAD_IN = 0.03  # blank margin around each image inside its cell


# --------------------------------------------------------------------------- grid


def grid_size_px(
    n_rows: int,
    n_methods: int,
    *,
    cell_size: float = 1.5,
    dpi: float = 100,
    row_titles: bool = False,
    colorbar: bool = True,
) -> tuple[int, int]:
    """Pixel (width, height) of a :func:`comparison_grid` PNG; see the module size rule."""
    w_in, h_in = _grid_inches(n_rows, n_methods + 1, cell_size, row_titles, colorbar)
    return round(w_in * dpi), round(h_in * dpi)


def _grid_inches(
    n_rows: int, n_cols: int, cell: float, row_titles: bool, colorbar: bool
) -> tuple[float, float]:
    width = n_cols * cell + (CBAR_IN if colorbar else 0.0)
    height = HEADER_IN + n_rows * (cell + (ROW_TITLE_IN if row_titles else 0.0))
    return width, height


def _grid_images(images: Any, mean: Any, std: Any) -> list[np.ndarray]:
    """Convert the grid's images to uint8 RGB, undoing normalisation if asked."""
    if isinstance(images, torch.Tensor | np.ndarray):
        items = [images[i] for i in range(images.shape[0])] if images.ndim == 4 else [images]
    else:
        items = list(images)
    out = []
    for item in items:
        if mean is not None or std is not None:
            a = _float(item)
            chw = a[None] if a.ndim == 2 else _to_chw(a, isinstance(item, torch.Tensor))
            item = denormalize(
                chw,
                0.0 if mean is None else mean,
                1.0 if std is None else std,
            )
            out.append(to_image(np.moveaxis(item, 0, -1)))
            continue
        a = _np(item)
        if a.dtype != np.uint8 and a.size and (a.min() < -1e-3 or a.max() > 1.0 + 1e-3):
            warnings.warn(
                "an image has values outside [0, 1]; it is shown min-max rescaled. Pass "
                "mean= and std= to undo the model's normalisation instead",
                stacklevel=3,
            )
            a = a.astype(np.float64)
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
            item = torch.as_tensor(a) if isinstance(item, torch.Tensor) else a
        out.append(to_image(item))
    return out


def _grid_maps(maps: Mapping[str, Any], n: int) -> dict[str, list[Any]]:
    """Split each method's maps into a list of ``n`` per-image maps."""
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError("maps must be a non-empty dict: method name -> (N, ...) maps")
    out: dict[str, list[Any]] = {}
    for name, value in maps.items():
        items = list(value) if not isinstance(value, torch.Tensor | np.ndarray) else value
        if isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 2 and n == 1:
            items = [value]
        if len(items) != n:
            raise ValueError(
                f"maps[{name!r}] holds {len(items)} maps but there are {n} images; "
                "give one map per image, shaped (N, C, H, W), (N, 1, H, W) or (N, H, W)"
            )
        out[str(name)] = [items[i] for i in range(n)]
    return out


def _fit_fontsize(text: str, width_in: float, base: float, lines: int = 1) -> float:
    """Shrink ``base`` so ``text`` (in at most ``lines`` lines) fits ``width_in`` inches."""
    longest = max((len(s) for s in text.split("\n")), default=1) / max(lines, 1)
    needed = 0.55 * base / 72.0 * max(longest, 1)
    return max(5.0, min(base, base * width_in / needed)) if needed > 0 else base


def _show(ax: Any, rgb: np.ndarray | None, cell_px: float, frame: bool) -> None:
    """Draw an RGB array in ``ax`` (enlarged by nearest neighbour if small), without ticks."""
    if rgb is not None:
        factor = max(1, math.ceil(cell_px / max(rgb.shape[:2])))
        ax.imshow(_upscale(rgb, factor), interpolation="antialiased", resample=False)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame)
        spine.set_color("0.75")
        spine.set_linewidth(0.6)


def _note(ax: Any, text: str) -> None:
    """A small boxed note in the middle of a cell."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=7,
        color="0.25",
        bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7", "lw": 0.5},
    )


def comparison_grid(
    images: Any,
    maps: Mapping[str, Any],
    *,
    row_titles: Sequence[str] | None = None,
    column_titles: Sequence[str] | None = None,
    signed: bool = True,
    mean: Any = None,
    std: Any = None,
    path: str | os.PathLike | None = None,
    dpi: float = 100,
    cell_size: float = 1.5,
    cmap: str | Colormap | None = None,
    colorbar: bool = True,
    fontsize: float = 8.0,
) -> Figure:
    """Grid of input images and relevance maps: one row per image, one column per method.

    Parameters
    ----------
    images : tensor, array or list
        (N, 3, H, W) / (N, 1, H, W) batch (normalised if ``mean``/``std`` are given) or a
        list of per-image arrays (anything :func:`to_image` accepts).
    maps : dict
        Ordered ``method name -> maps`` with maps shaped (N, C, H, W), (N, 1, H, W) or
        (N, H, W) (or a list of N per-image maps). Each cell is normalised on its own:
        :func:`signed_map` (symmetric) when ``signed``, else :func:`positive_map`.
    row_titles : sequence of str, optional
        One caption per row, e.g. ``"zebra 0.71 / target: elephant 0.21"``.
    column_titles : sequence of str, optional
        ``len(maps) + 1`` titles; default ``["input", *maps]``.
    signed : bool
        Diverging signed maps (default) or positive-only maps as in the paper.
    mean, std : optional
        Per-channel normalisation of ``images`` to undo for display.
    path : path-like, optional
        If given, the figure is written there as PNG (atomically).
    dpi : float
        Resolution of the written PNG and of the figure.
    cell_size : float
        Side of one image cell in inches; see the module size rule.
    cmap : str, Colormap or None
        Default ``"bwr"`` (signed) or ``"hot"`` (positive).
    colorbar : bool
        Add a colour bar explaining the scale at the right.
    fontsize : float
        Title font size in points (long titles shrink to fit).

    Returns
    -------
    matplotlib.figure.Figure
        A pyplot-free figure (no global registry holds it, so it is freed when dropped).
    """
    rgbs = _grid_images(images, mean, std)
    n = len(rgbs)
    if n == 0:
        raise ValueError("images is empty; pass at least one image")
    per_method = _grid_maps(maps, n)
    names = list(per_method)
    n_cols = len(names) + 1
    titles = list(column_titles) if column_titles is not None else ["input", *names]
    if len(titles) != n_cols:
        raise ValueError(
            f"column_titles needs {n_cols} entries (the input column + {n_cols - 1} methods), "
            f"got {len(titles)}"
        )
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"row_titles needs {n} entries (one per image), got {len(row_titles)}")
    cmap = cmap or ("bwr" if signed else "hot")

    has_rt = row_titles is not None
    w_in, h_in = _grid_inches(n, n_cols, cell_size, has_rt, colorbar)
    w_px, h_px = round(w_in * dpi), round(h_in * dpi)
    # +0.25 px: Agg truncates the canvas size, so this lands exactly on the rounded size.
    fig = Figure(figsize=((w_px + 0.25) / dpi, (h_px + 0.25) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    W, H = fig.get_size_inches()
    row_h = cell_size + (ROW_TITLE_IN if has_rt else 0.0)
    inner = cell_size - 2 * _PAD_IN
    cell_px = inner * dpi

    for j, title in enumerate(titles):
        text = "\n".join(textwrap.wrap(str(title), width=max(8, int(inner * 72 / (0.55 * 8)))))
        fig.text(
            (j + 0.5) * cell_size / W,
            1.0 - (HEADER_IN / 2) / H,
            text,
            ha="center",
            va="center",
            fontsize=_fit_fontsize(text, inner, fontsize),
            fontweight="bold",
        )

    for i in range(n):
        top = HEADER_IN + i * row_h
        if has_rt:
            caption = str(row_titles[i])
            fig.text(
                _PAD_IN / W,
                1.0 - (top + ROW_TITLE_IN / 2) / H,
                caption,
                ha="left",
                va="center",
                fontsize=_fit_fontsize(caption, n_cols * cell_size - 2 * _PAD_IN, fontsize),
            )
            top += ROW_TITLE_IN
        bottom = 1.0 - (top + cell_size - _PAD_IN) / H
        for j in range(n_cols):
            ax = fig.add_axes(
                (
                    (j * cell_size + _PAD_IN) / W,
                    bottom,
                    inner / W,
                    inner / H,
                )
            )
            if j == 0:
                _show(ax, rgbs[i], cell_px, frame=False)
                continue
            raw = per_method[names[j - 1]][i]
            if not np.isfinite(_float(raw)).all():
                ax.set_facecolor("0.85")
                _show(ax, None, cell_px, frame=True)
                _note(ax, "NaN / Inf\nin map")
                continue
            if signed:
                m = signed_map(raw)
                rgb = render_signed(m, cmap, vmax=1.0)
            else:
                m = positive_map(raw)
                rgb = render_positive(m, cmap, vmax=1.0)
            _show(ax, rgb, cell_px, frame=True)
            if not np.any(m):
                _note(ax, "all zero")

    if colorbar:
        _add_colorbar(fig, W, H, n * row_h, cell_size, n_cols, cmap, signed, fontsize)

    if path is not None:
        save_figure(fig, path, dpi)
    return fig


def _add_colorbar(
    fig: Figure,
    W: float,
    H: float,
    grid_h: float,
    cell: float,
    n_cols: int,
    cmap: str | Colormap,
    signed: bool,
    fontsize: float,
) -> None:
    """A vertical colour bar, centred on the grid, labelled in units of the cell's max."""
    bar_h = min(grid_h, 3 * cell) - 2 * _PAD_IN - 0.1
    bar_h = max(bar_h, 0.6)
    y0 = HEADER_IN + (grid_h - bar_h) / 2
    ax = fig.add_axes(
        (
            (n_cols * cell + 0.08) / W,
            1.0 - (y0 + bar_h) / H,
            0.13 / W,
            bar_h / H,
        )
    )
    cm = ListedColormap(_lut(cmap) / 255.0)
    if signed:
        norm = Normalize(-1.0, 1.0)
        ticks, labels = [-1.0, 0.0, 1.0], ["−max", "0", "+max"]
        label = "relevance (neg. / pos.)"
    else:
        norm = Normalize(0.0, 1.0)
        ticks, labels = [0.0, 0.5, 1.0], ["0", "½max", "max"]
        label = "positive relevance"
    cb = ColorbarBase(ax, cmap=cm, norm=norm, orientation="vertical")
    cb.set_ticks(ticks)
    cb.set_ticklabels(labels)
    cb.ax.tick_params(labelsize=fontsize - 1, length=2, pad=1)
    cb.outline.set_linewidth(0.5)
    cb.set_label(label, fontsize=fontsize - 1, labelpad=2)
