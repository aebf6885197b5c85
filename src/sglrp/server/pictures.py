"""The page's pictures: maps side by side on one colour scale with a colour bar, overlays.

Every map cell is :func:`sglrp.viz.overlay` of the display map on the (grey) input, with
the colour tables of :func:`sglrp.viz.render_signed` / :func:`sglrp.viz.render_positive`
(the same colours as ``sglrp explain``'s files), enlarged by an integer factor and laid out
with Pillow (a matplotlib figure per slider move would cost ten times more).

Colour scale. A map is reduced to one channel as in :mod:`sglrp.viz`: signed, ``s = sum_c
R_c``; positive-only (the paper's display), ``p = sum_c max(R_c, 0)``. Each is divided by a
scale ``m`` and shown on the one colour bar of the picture, from ``-1`` to ``+1`` (signed,
zero is white) or ``0`` to ``1`` (positive). With ``shared=False`` ``m`` is the map's own
``max |s|`` (``max sum_c |R_c|`` for the positive display), as in :func:`sglrp.viz.signed_map`
and :func:`sglrp.viz.positive_map`: maps of different methods have different units. With
``shared=True`` ``m`` is the largest of those scales over the maps of one row, so relevance
for two classes of one method is compared on one absolute scale.

Size. An ``h x w`` input is enlarged by ``f = cell_factor(h, w)`` (about :data:`CELL_PX`
pixels); with ``k`` maps per row, ``r`` rows and ``L = LABEL_PX`` when rows have titles
(else 0) the picture is ``L + (k + 1) (f w + PAD_PX) + PAD_PX + BAR_BAND_PX`` pixels wide and
``TOP_PX + r (TITLE_PX + f h + PAD_PX)`` high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from sglrp.viz import overlay, render_positive, render_signed, to_image

from .inputs import draw_boxes

__all__ = ["cell_factor", "display_maps", "figure_rgb", "map_panel"]

#: Layout in pixels (see the module description).
CELL_PX = 200
PAD_PX = 8
TITLE_PX = 26
TOP_PX = 30
LABEL_PX = 26
BAR_PX = 16
BAR_BAND_PX = 84


def cell_factor(h: int, w: int) -> int:
    """Integer enlargement of an (h, w) image so its cells are about :data:`CELL_PX` wide."""
    return max(1, round(CELL_PX / max(h, w)))


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


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_width(text: str, size: int) -> float:
    return _font(size).getlength(text)


def _fit(text: str, width: int, size: int = 14, smallest: int = 9) -> int:
    """The largest font size (at most ``size``) at which ``text`` fits in ``width`` pixels."""
    while size > smallest and _text_width(text, size) > width:
        size -= 1
    return size


def _colour_bar(height: int, positive: bool) -> np.ndarray:
    """A vertical (height, BAR_PX, 3) bar: top = +max (or max), bottom = -max (or 0).

    Its colours come from the renderers themselves, so they are exactly the maps' colours.
    """
    if positive:
        column = render_positive(np.linspace(1.0, 0.0, height)[:, None])
    else:
        column = render_signed(np.linspace(1.0, -1.0, height)[:, None])
    return np.repeat(column, BAR_PX, axis=1)


def _cell(rgb: np.ndarray, factor: int, boxes: list[dict[str, Any]] | None) -> np.ndarray:
    return draw_boxes(_enlarge(rgb, factor), boxes or [], factor)


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
        Display and scale (see the module description); ``shared`` shares within a row.
    opacity
        Weight of the map over the (grey) image (:func:`sglrp.viz.overlay`'s ``alpha``):
        1 shows the map alone, 0 the image alone.
    boxes
        Ground-truth boxes in input pixels, outlined on every cell.
    row_titles
        One caption per row, left of the row.
    scale_note
        Colour-bar label (default: what the scale is).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) picture; see the module description for its size.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if rows < 1 or not columns or len(columns) % rows:
        raise ValueError(f"{len(columns)} maps do not fill {rows} rows")
    rgb = to_image(image)
    per_row = len(columns) // rows
    display: list[np.ndarray] = []
    for row in range(rows):
        group = [r for _, r in columns[row * per_row : (row + 1) * per_row]]
        display += display_maps(group, positive=positive, shared=shared)
    h, w = rgb.shape[:2]
    factor = cell_factor(h, w)
    ch, cw = h * factor, w * factor
    left = LABEL_PX if row_titles else 0
    n_cols = per_row + 1
    width = left + n_cols * (cw + PAD_PX) + PAD_PX + BAR_BAND_PX
    height = TOP_PX + rows * (TITLE_PX + ch + PAD_PX)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    base = _cell(rgb, factor, boxes)
    for row in range(rows):
        y = TOP_PX + row * (TITLE_PX + ch + PAD_PX) + TITLE_PX
        if row_titles:
            size = _fit(row_titles[row], ch)
            label = Image.new("RGB", (ch, LABEL_PX), "white")
            ImageDraw.Draw(label).text(
                (ch / 2, LABEL_PX / 2),
                row_titles[row],
                fill="black",
                anchor="mm",
                font=_font(size),
            )
            canvas.paste(label.rotate(90, expand=True), (0, y))
        for col in range(n_cols):
            x = left + PAD_PX + col * (cw + PAD_PX)
            if col == 0:
                title, cell = "input", base
            else:
                k = row * per_row + col - 1
                m = display[k]
                shown = overlay(rgb, m, alpha=opacity, signed=not positive, vmax=1.0)
                title = columns[k][0] + ("" if np.any(m) else " (all zero)")
                cell = _cell(shown, factor, boxes)
                draw.rectangle((x - 1, y - 1, x + cw, y + ch), outline=(60, 60, 60))
            canvas.paste(Image.fromarray(cell), (x, y))
            size = _fit(title, cw)
            draw.text((x + cw / 2, y - 6), title, fill="black", anchor="md", font=_font(size))
    # the colour bar spans all rows
    x = left + PAD_PX + n_cols * (cw + PAD_PX) + 4
    top, bottom = TOP_PX + TITLE_PX, height - PAD_PX
    canvas.paste(Image.fromarray(_colour_bar(bottom - top, positive)), (x, top))
    draw.rectangle((x - 1, top - 1, x + BAR_PX, bottom), outline=(60, 60, 60))
    ticks = (
        (("max", 0.0), ("half", 0.5), ("0", 1.0))
        if positive
        else (("+max", 0.0), ("0", 0.5), ("-max", 1.0))
    )
    small = _font(12)
    for text, at in ticks:
        ty = top + at * (bottom - top)
        draw.line((x + BAR_PX, ty, x + BAR_PX + 4, ty), fill="black")
        draw.text((x + BAR_PX + 6, ty), text, fill="black", anchor="lm", font=small)
    note = scale_note or (
        ("positive relevance" if positive else "relevance")
        + (" (one scale per row)" if shared else " (each map / its max)")
    )
    span = bottom - top
    label = Image.new("RGB", (span, 18), "white")
    ImageDraw.Draw(label).text(
        (span / 2, 9), note, fill="black", anchor="mm", font=_font(_fit(note, span, 12))
    )
    canvas.paste(label.rotate(90, expand=True), (x + BAR_PX + 40, top))
    return np.asarray(canvas)
