"""Figures for relevance maps: display maps, rendering, comparison grids and curve plots.

Every function accepts torch tensors (any device, with or without grad) and numpy arrays.
Nothing here touches ``matplotlib.pyplot``: figures are plain ``matplotlib.figure.Figure``
objects drawn with the Agg canvas, so no global matplotlib state is changed and no figure is
kept alive by a registry. Files are written atomically with :func:`sglrp.atomic.atomic_path`.

Display conventions (as in the SGLRP paper, Figs. 6-7):

- :func:`positive_map` keeps positive relevance only, summed over colour channels and divided
  by the largest channel-summed magnitude, so a map that is mostly negative shows up dark.
- :func:`signed_map` sums over channels and divides by ``max|.|``; it is rendered with a
  diverging colour map whose neutral colour sits exactly at zero (red = positive,
  blue = negative for ``"bwr"``).

Grid size rule (:func:`comparison_grid`): with ``n`` rows, ``m`` methods and cell size ``s``
inches, the figure is ``(m + 1) * s + CBAR_IN`` inches wide (the colour bar band only when
``colorbar=True``) and ``HEADER_IN + n * (s + ROW_TITLE_IN)`` inches high (the row title band
only when ``row_titles`` are given). The PNG is ``round(inches * dpi)`` pixels each way.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import Colormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from PIL import Image

from sglrp.atomic import atomic_path

__all__ = [
    "CBAR_IN",
    "HEADER_IN",
    "ROW_TITLE_IN",
    "comparison_grid",
    "denormalize",
    "grid_size_px",
    "overlay",
    "plot_curves",
    "positive_map",
    "render_positive",
    "render_signed",
    "save_map_png",
    "signed_map",
    "to_image",
]

ArrayLike = torch.Tensor | np.ndarray

#: Height (inches) of the column-title band at the top of a comparison grid.
HEADER_IN = 0.32
#: Height (inches) of the title band above each row when ``row_titles`` are given.
ROW_TITLE_IN = 0.26
#: Width (inches) of the colour-bar band at the right of a comparison grid.
CBAR_IN = 0.8

_PAD_IN = 0.03  # blank margin around each image inside its cell
_N_LUT = 255  # odd, so that entry 127 sits exactly at the middle of a diverging map


# --------------------------------------------------------------------------- conversion


def _np(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _float(x: Any) -> np.ndarray:
    """Return ``x`` as a float64 numpy array."""
    return _np(x).astype(np.float64, copy=False)


def _is_channel(n: int) -> bool:
    return n in (1, 3, 4)


def _to_chw(a: np.ndarray, channels_first: bool) -> np.ndarray:
    """Bring a 3-D array to (C, H, W); ``channels_first`` breaks ties like (3, 5, 3)."""
    first, last = _is_channel(a.shape[0]), _is_channel(a.shape[-1])
    if first and (channels_first or not last):
        return a
    if last:
        return np.moveaxis(a, -1, 0)
    raise ValueError(
        f"cannot tell the channel axis of shape {tuple(a.shape)}; "
        "pass (C, H, W) or (H, W, C) with C in {1, 3, 4}"
    )


def _map_chw(R: Any) -> np.ndarray:
    """Bring a relevance map to (C, H, W) float: accepts (H,W), (C,H,W), (1,C,H,W), (H,W,C)."""
    channels_first = isinstance(R, torch.Tensor)
    a = _float(R)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(
            f"a relevance map must be (H, W), (C, H, W) or (1, C, H, W), got {tuple(a.shape)}"
        )
    if not _is_channel(a.shape[0]) and not _is_channel(a.shape[-1]):
        return a  # an unusual channel count: channels-first is the torch convention
    return _to_chw(a, channels_first=channels_first or not _is_channel(a.shape[-1]))


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or Inf values; clean it before display")


def denormalize(x: ArrayLike, mean: Any, std: Any) -> ArrayLike:
    """Undo ``(x - mean) / std`` for display and clip to [0, 1].

    Parameters
    ----------
    x : tensor or array
        (C, H, W) or (N, C, H, W) normalised images.
    mean, std : sequence, tensor or array
        Per-channel statistics (length C) or scalars.

    Returns
    -------
    tensor or array
        Same type and shape as ``x`` (tensors on the CPU, detached), values in [0, 1].
    """
    if isinstance(x, torch.Tensor):
        xt = x.detach().cpu().float()
        if xt.ndim not in (3, 4):
            raise ValueError(f"x must be (C, H, W) or (N, C, H, W), got {tuple(xt.shape)}")
        m = torch.as_tensor(_float(mean), dtype=xt.dtype).reshape(-1, 1, 1)
        s = torch.as_tensor(_float(std), dtype=xt.dtype).reshape(-1, 1, 1)
        return (xt * s + m).clamp(0.0, 1.0)
    a = _float(x)
    if a.ndim not in (3, 4):
        raise ValueError(f"x must be (C, H, W) or (N, C, H, W), got {tuple(a.shape)}")
    m = _float(mean).reshape(-1, 1, 1)
    s = _float(std).reshape(-1, 1, 1)
    return np.clip(a * s + m, 0.0, 1.0)


def to_image(x: Any) -> np.ndarray:
    """Convert an image to a uint8 (H, W, 3) RGB array.

    Parameters
    ----------
    x : tensor or array
        (3, H, W), (H, W, 3), (1, H, W), (H, W, 1) or (H, W); a leading batch dimension of
        size 1 is dropped. Floats are read as [0, 1] (clipped); uint8 is kept as is.
        Channel order is RGB in and out; a 4th (alpha) channel is dropped. For an ambiguous
        shape such as (3, 4, 3), tensors are read channels-first and arrays channels-last.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (H, W, 3).
    """
    channels_first = isinstance(x, torch.Tensor)
    a = _np(x)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
        channels_first = True
    if a.ndim != 3:
        raise ValueError(f"an image must be 2-D or 3-D, got shape {tuple(a.shape)}")
    a = np.moveaxis(_to_chw(a, channels_first), 0, -1)
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        raise TypeError(
            f"integer images must be uint8 (0-255), got {a.dtype}; "
            "convert with .astype(np.uint8) or scale floats to [0, 1]"
        )
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- display maps


def positive_map(R: Any) -> np.ndarray:
    """The paper's displayed map: positive relevance summed over channels, in [0, 1].

    ``P = sum_c max(R_c, 0)`` divided by ``max over pixels of sum_c |R_c|`` (for a
    single-channel map that is exactly ``max|R|``). Negative relevance therefore lowers the
    brightness instead of being ignored; an all-zero map stays zero (never NaN).

    Parameters
    ----------
    R : tensor or array
        (H, W), (C, H, W) or (1, C, H, W) relevance (channels-last (H, W, 3) arrays work too).

    Returns
    -------
    numpy.ndarray
        float64 (H, W) map in [0, 1].
    """
    a = _map_chw(R)
    _check_finite(a, "R")
    pos = np.clip(a, 0.0, None).sum(axis=0)
    scale = np.abs(a).sum(axis=0).max()
    return pos / scale if scale > 0 else np.zeros_like(pos)


def signed_map(R: Any) -> np.ndarray:
    """Relevance summed over channels and divided by ``max|.|``: an (H, W) map in [-1, 1].

    Parameters
    ----------
    R : tensor or array
        (H, W), (C, H, W) or (1, C, H, W) relevance.

    Returns
    -------
    numpy.ndarray
        float64 (H, W) map in [-1, 1]; an all-zero map stays zero.
    """
    a = _map_chw(R)
    _check_finite(a, "R")
    s = a.sum(axis=0)
    scale = np.abs(s).max()
    return s / scale if scale > 0 else np.zeros_like(s)


# --------------------------------------------------------------------------- rendering


def _cmap(cmap: str | Colormap) -> Colormap:
    base = colormaps[cmap] if isinstance(cmap, str) else cmap
    return base.resampled(_N_LUT)


def _lut(cmap: str | Colormap) -> np.ndarray:
    """(255, 3) uint8 colour table; entry 127 is the colour map's exact middle (0.5)."""
    rgba = _cmap(cmap)(np.arange(_N_LUT))
    return np.round(rgba[:, :3] * 255.0).astype(np.uint8)


def _map2d(map2d: Any) -> np.ndarray:
    m = _float(map2d)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(
            f"map2d must be (H, W), got {tuple(m.shape)}; reduce channels first with "
            "positive_map(R) or signed_map(R)"
        )
    _check_finite(m, "map2d")
    return m


def _vmax(m: np.ndarray, vmax: float | None) -> float:
    if vmax is None:
        vmax = float(np.abs(m).max())
    return vmax if vmax > 0 else 1.0


def render_signed(map2d: Any, cmap: str | Colormap = "bwr", vmax: float | None = 1.0) -> np.ndarray:
    """Colour a signed map with a diverging colour map centred exactly on zero.

    Values are mapped symmetrically: ``0`` gets the middle (neutral) colour and ``+x`` / ``-x``
    get mirror-image entries of a 255-entry colour table, so with ``"bwr"`` zero is pure
    white, positive is red and negative is blue.

    Parameters
    ----------
    map2d : tensor or array
        (H, W) map, typically :func:`signed_map` output in [-1, 1].
    cmap : str or Colormap
        A diverging colour map (``"bwr"``, ``"seismic"``, ``"coolwarm"``, ...).
    vmax : float or None
        Magnitude shown at full colour (values beyond saturate). ``None`` uses the map's
        own ``max|.|``.

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) RGB.
    """
    m = _map2d(map2d)
    v = np.clip(m / _vmax(m, vmax), -1.0, 1.0)
    half = (_N_LUT - 1) // 2
    idx = half + np.sign(v) * np.floor(np.abs(v) * half + 0.5)
    return _lut(cmap)[idx.astype(np.intp)]


def render_positive(
    map2d: Any, cmap: str | Colormap = "hot", vmax: float | None = 1.0
) -> np.ndarray:
    """Colour a non-negative map (e.g. :func:`positive_map` output) with a sequential map.

    Parameters
    ----------
    map2d : tensor or array
        (H, W) map; negative values are shown as zero.
    cmap : str or Colormap
        ``"hot"`` (black = no relevance) or ``"jet"`` as in the paper, or any colour map.
    vmax : float or None
        Value shown at full colour. The default 1.0 keeps :func:`positive_map`'s
        ``max|R|`` scale; ``None`` stretches the map to its own maximum.

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) RGB.
    """
    m = _map2d(map2d)
    v = np.clip(m / _vmax(m, vmax), 0.0, 1.0)
    idx = np.floor(v * (_N_LUT - 1) + 0.5)
    return _lut(cmap)[idx.astype(np.intp)]


def _resize_nearest(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, ...) array to ``shape`` = (H', W')."""
    h, w = img.shape[:2]
    if (h, w) == tuple(shape):
        return img
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(np.intp)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(np.intp)
    return img[rows][:, cols]


def _upscale(img: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def overlay(
    image: Any,
    map2d: Any,
    alpha: float = 0.5,
    signed: bool = False,
    cmap: str | Colormap | None = None,
    vmax: float | None = 1.0,
    gray: bool = True,
) -> np.ndarray:
    """Blend a rendered map over an image.

    Parameters
    ----------
    image : tensor or array
        Anything :func:`to_image` accepts, values in [0, 1] (or uint8).
    map2d : tensor or array
        (H', W') map; resized to the image with nearest neighbour if sizes differ.
    alpha : float
        Weight of the map colour (0 = image only, 1 = map only).
    signed : bool
        Render with :func:`render_signed` (default cmap ``"bwr"``) instead of
        :func:`render_positive` (default cmap ``"hot"``).
    cmap : str, Colormap or None
        Colour map; ``None`` picks the default for ``signed``.
    vmax : float or None
        Passed to the renderer.
    gray : bool
        Show the image in grey underneath so the map colours are not confused with it.

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) RGB at the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = to_image(image).astype(np.float64)
    if gray:
        lum = img @ np.array([0.299, 0.587, 0.114])
        img = np.repeat(lum[..., None], 3, axis=-1)
    if signed:
        heat = render_signed(map2d, cmap or "bwr", vmax)
    else:
        heat = render_positive(map2d, cmap or "hot", vmax)
    heat = _resize_nearest(heat, img.shape[:2]).astype(np.float64)
    return np.round((1.0 - alpha) * img + alpha * heat).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- files


def _save_rgb(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
    return Path(path)


def save_map_png(
    map2d: Any,
    path: str | os.PathLike,
    signed: bool = True,
    image: Any | None = None,
    *,
    cmap: str | Colormap | None = None,
    alpha: float = 0.5,
    min_size: int = 224,
) -> Path:
    """Write one relevance map as a PNG (optionally over its image), atomically.

    Parameters
    ----------
    map2d : tensor or array
        (H, W) map or (C, H, W) relevance; it is reduced and normalised with
        :func:`signed_map` or :func:`positive_map` (per map).
    path : path-like
        Output ``.png``.
    signed : bool
        Diverging signed rendering (default) or the positive-only display map.
    image : tensor, array or None
        If given (values in [0, 1] or uint8), the map is overlaid on it with ``alpha``.
    cmap : str, Colormap or None
        Colour map; ``None`` = ``"bwr"`` (signed) or ``"hot"`` (positive).
    alpha : float
        Map weight in the overlay.
    min_size : int
        Small maps are enlarged by an integer nearest-neighbour factor until the shorter side
        is at least this many pixels (64x64 becomes 256x256).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    m = signed_map(map2d) if signed else positive_map(map2d)
    if image is not None:
        rgb = overlay(image, m, alpha=alpha, signed=signed, cmap=cmap, vmax=1.0)
    elif signed:
        rgb = render_signed(m, cmap or "bwr", vmax=1.0)
    else:
        rgb = render_positive(m, cmap or "hot", vmax=1.0)
    rgb = _upscale(rgb, math.ceil(min_size / min(rgb.shape[:2])))
    return _save_rgb(rgb, path)


def _save_figure(fig: Figure, path: str | os.PathLike, dpi: float) -> Path:
    """Draw ``fig`` at ``dpi`` on a white background and write it as an RGB PNG."""
    fig.set_dpi(dpi)
    fig.patch.set_facecolor("white")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG", dpi=(dpi, dpi))
    return Path(path)


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
        _save_figure(fig, path, dpi)
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


# --------------------------------------------------------------------------- curves


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
    return _save_figure(fig, path, dpi)
