"""Display maps and their rendering: conversion, positive and signed maps, colour, overlays,
PNG files and figure output.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image

from ..atomic import atomic_path

__all__ = [
    "denormalize",
    "overlay",
    "positive_map",
    "render_positive",
    "render_signed",
    "save_figure",
    "save_map_png",
    "signed_map",
    "to_image",
]

ArrayLike = torch.Tensor | np.ndarray

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
    seen: Any | None = None,
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
    seen : array or None
        Boolean (H, W) at the image's size: where False (parts of the image the model did not
        see) the image is shown darkened and without map colour.

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
    out = (1.0 - alpha) * img + alpha * heat
    if seen is not None:
        mask = np.asarray(seen, dtype=bool)
        if mask.shape != img.shape[:2]:
            raise ValueError(f"seen must be (H, W) = {img.shape[:2]}, got {mask.shape}")
        out = np.where(mask[..., None], out, 0.5 * img)
    return np.round(out).clip(0, 255).astype(np.uint8)


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


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float) -> Path:
    """Draw ``fig`` at ``dpi`` on a white background and write it as an RGB PNG."""
    fig.set_dpi(dpi)
    fig.patch.set_facecolor("white")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG", dpi=(dpi, dpi))
    return Path(path)
