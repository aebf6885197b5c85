"""The page's pictures: maps side by side on one colour scale with a colour bar, overlays.

Every picture is an RGB ``uint8`` array drawn with :mod:`sglrp.viz` (the same display maps,
colour tables and overlay as ``sglrp explain``'s files) on a pyplot-free matplotlib figure.

Colour scale. A map is reduced to one channel as in :mod:`sglrp.viz`: signed, ``s = sum_c
R_c``; positive-only (the paper's display), ``p = sum_c max(R_c, 0)``. Each is divided by a
scale ``m`` and shown on the one colour bar of the picture, from ``-1`` to ``+1`` (signed,
zero is white) or ``0`` to ``1`` (positive). With ``shared=False`` ``m`` is the map's own
``max |s|`` (``max sum_c |R_c|`` for the positive display), as in :func:`sglrp.viz.signed_map`
and :func:`sglrp.viz.positive_map`: maps of different methods have different units. With
``shared=True`` ``m`` is the largest of those scales over the group of maps drawn together,
so relevance for two classes of one method is compared on one absolute scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from sglrp.viz import overlay, render_positive, render_signed, to_image

from .inputs import draw_boxes

__all__ = ["display_maps", "figure_rgb", "map_panel"]

_CELL_IN = 2.0
_DPI = 100
_BAR_IN = 0.9
_TITLE_IN = 0.5
_TOP_IN = 0.3  # free band at the top, where the page puts the picture's label


def _scale(r: np.ndarray, positive: bool) -> float:
    """The display scale of one (C, H, W) map (see the module description)."""
    r = np.asarray(r, dtype=np.float64)
    if r.ndim == 2:
        r = r[None]
    value = np.abs(r).sum(axis=0).max() if positive else np.abs(r.sum(axis=0)).max()
    return float(value)


def display_maps(
    maps: Sequence[np.ndarray], positive: bool = False, shared: bool = False
) -> list[np.ndarray]:
    """Reduce (C, H, W) relevance maps to (H, W) display maps in [-1, 1] (or [0, 1]).

    Parameters
    ----------
    maps
        Relevance maps, each (C, H, W) or (H, W).
    positive
        The paper's positive-only display instead of the signed one.
    shared
        Divide every map by the largest scale of the group instead of its own.

    Returns
    -------
    list of numpy.ndarray
        float64 (H, W) maps; an all-zero map stays zero.
    """
    arrays = [np.asarray(r, dtype=np.float64) for r in maps]
    arrays = [a[None] if a.ndim == 2 else a for a in arrays]
    for a in arrays:
        if not np.isfinite(a).all():
            raise ValueError("a map contains NaN or Inf values")
    scales = [_scale(a, positive) for a in arrays]
    common = max(scales, default=0.0)
    out = []
    for a, own in zip(arrays, scales, strict=True):
        m = np.clip(a, 0.0, None).sum(axis=0) if positive else a.sum(axis=0)
        scale = common if shared else own
        out.append(m / scale if scale > 0 else np.zeros_like(m))
    return out


def _enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (boxes stay sharp)."""
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def figure_rgb(fig: Figure) -> np.ndarray:
    """Draw a figure with the Agg canvas and return its pixels as uint8 (H, W, 3)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _colorbar_cmap(positive: bool) -> ListedColormap:
    """The renderers' own colour table, so the bar shows exactly the colours of the maps."""
    if positive:
        table = render_positive(np.linspace(0.0, 1.0, 255)[None, :])[0]
    else:
        table = render_signed(np.linspace(-1.0, 1.0, 255)[None, :])[0]
    return ListedColormap(table / 255.0)


def map_panel(
    image: Any,
    columns: Sequence[tuple[str, np.ndarray]],
    *,
    positive: bool = False,
    opacity: float = 1.0,
    shared: bool = False,
    boxes: list[dict[str, Any]] | None = None,
    rows: int = 1,
    row_titles: Sequence[str] | None = None,
    scale_note: str | None = None,
) -> np.ndarray:
    """Input image and maps side by side, one colour scale, one colour bar at the right.

    Parameters
    ----------
    image
        The model's input as an RGB image (anything :func:`sglrp.viz.to_image` takes).
    columns
        ``(title, relevance (C, H, W))`` in display order, filled row by row over ``rows``
        rows of ``len(columns) // rows`` maps (each row starts with the image).
    positive, shared
        Display and scale (see the module description).
    opacity
        Weight of the map over the (grey) image: 1 shows the map alone, 0 the image alone.
    boxes
        Ground-truth boxes in input pixels, outlined on every cell.
    row_titles
        One caption per row, left of the row.
    scale_note
        Colour-bar label (default: what the scale is).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) picture.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if rows < 1 or len(columns) % rows:
        raise ValueError(f"{len(columns)} maps do not fill {rows} rows")
    rgb = to_image(image)
    per_row = len(columns) // rows
    display: list[np.ndarray] = []
    for row in range(rows):
        group = [r for _, r in columns[row * per_row : (row + 1) * per_row]]
        display += display_maps(group, positive=positive, shared=shared)
    n_cols = per_row + 1
    label_in = 0.35 if row_titles else 0.0
    width = label_in + n_cols * _CELL_IN + _BAR_IN
    height = _TOP_IN + rows * (_CELL_IN + _TITLE_IN)
    fig = Figure(figsize=(width, height), dpi=_DPI)
    fig.patch.set_facecolor("white")
    factor = max(1, int(round(_CELL_IN * _DPI / max(rgb.shape[:2]))))
    base = draw_boxes(_enlarge(rgb, factor), boxes or [], factor)
    for row in range(rows):
        top = 1.0 - (_TOP_IN + row * (_CELL_IN + _TITLE_IN)) / height
        bottom = top - (_CELL_IN + _TITLE_IN * 0.5) / height
        if row_titles:
            fig.text(
                0.12 / width,
                bottom + 0.5 * _CELL_IN / height,
                row_titles[row],
                rotation=90,
                ha="center",
                va="center",
                fontsize=9,
                fontweight="bold",
            )
        for col in range(n_cols):
            ax = fig.add_axes(
                (
                    (label_in + col * _CELL_IN + 0.05) / width,
                    bottom,
                    (_CELL_IN - 0.1) / width,
                    (_CELL_IN - 0.1) / height,
                )
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.imshow(base, interpolation="nearest")
                ax.set_title("input", fontsize=9)
                continue
            k = row * per_row + col - 1
            m = display[k]
            shown = overlay(rgb, m, alpha=opacity, signed=not positive, vmax=1.0)
            shown = draw_boxes(_enlarge(shown, factor), boxes or [], factor)
            ax.imshow(shown, interpolation="nearest")
            title = columns[k][0] + ("\n(all zero)" if not np.any(m) else "")
            ax.set_title(title, fontsize=9)
    bar = fig.add_axes(
        (
            (label_in + n_cols * _CELL_IN + 0.12) / width,
            0.5 * _TITLE_IN / height,
            0.15 / width,
            1.0 - (1.2 * _TITLE_IN + _TOP_IN) / height,
        )
    )
    norm = Normalize(0.0, 1.0) if positive else Normalize(-1.0, 1.0)
    cb = ColorbarBase(bar, cmap=_colorbar_cmap(positive), norm=norm, orientation="vertical")
    if positive:
        cb.set_ticks([0.0, 0.5, 1.0])
        cb.set_ticklabels(["0", "½max", "max"])
    else:
        cb.set_ticks([-1.0, 0.0, 1.0])
        cb.set_ticklabels(["−max", "0", "+max"])
    cb.ax.tick_params(labelsize=8)
    note = scale_note or (
        ("positive relevance" if positive else "relevance")
        + (" (one scale per row)" if shared else " (each map / its max)")
    )
    cb.set_label(note, fontsize=8)
    return figure_rgb(fig)
