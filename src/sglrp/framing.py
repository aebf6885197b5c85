"""Framing an image for a model and mapping a map on the model's input back onto the image.

Three framings (``mode``):

* ``"center"``: resize the shorter side to ``size``, cut the central ``crop`` x ``crop``
  square (torchvision's ``Resize`` + ``CenterCrop``; the sides of a non-square photo are not
  seen);
* ``"pad"``: resize the longer side to ``crop`` and pad the shorter one to a square with a
  fill colour (the whole photo is seen, smaller);
* ``"none"``: resize the shorter side to ``size`` and keep the aspect ratio (the model must
  accept non-square inputs, e.g. through global pooling).

:class:`Framing` records the geometry: input pixel ``(u, v)`` is pixel ``(u + ox, v + oy)``
of the resized image, whose pixel ``(x, y)`` covers ``(x W0 / Wr, y H0 / Hr)`` of the
original. :func:`to_original` uses it to bring an (H, W) map on the input to the original's
resolution (bilinear), with a mask of the pixels the model saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import center_crop, resize_shorter

__all__ = ["CROP_MODES", "Framing", "frame_image", "to_original"]

CROP_MODES: tuple[str, ...] = ("center", "pad", "none")


@dataclass(frozen=True)
class Framing:
    """Where the model input lies in the original image.

    Attributes
    ----------
    mode
        One of :data:`CROP_MODES`.
    original
        ``(W0, H0)`` of the image file (after EXIF orientation).
    resized
        ``(Wr, Hr)`` after resizing.
    offset
        ``(ox, oy)``: the resized image's pixel under the input's pixel ``(0, 0)`` (negative
        where the input is padding).
    input
        ``(W, H)`` of the model input.
    """

    mode: str
    original: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    input: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _centre_offset(length: int, crop: int) -> int:
    """Offset of :func:`sglrp.images.center_crop` along one side (padding first if short)."""
    padded = max(length, crop)
    return int(round((padded - crop) / 2.0)) - (padded - length) // 2


def frame_image(
    image: Image.Image,
    mode: str,
    size: int,
    crop: int,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> tuple[Image.Image, Framing]:
    """Frame an RGB image for the model (see the module docstring).

    Parameters
    ----------
    image
        RGB image (:func:`sglrp.images.load_image`).
    mode
        ``"center"``, ``"pad"`` or ``"none"``.
    size
        Shorter side after resizing (``center``, ``none``).
    crop
        Side of the square input (``center``, ``pad``).
    fill
        Colour of the padding (``pad``); the normalisation mean makes it zero input.

    Returns
    -------
    framed : PIL.Image.Image
        The model's input image.
    framing : Framing
        Its geometry.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode {mode!r}; use one of {', '.join(CROP_MODES)}")
    w0, h0 = image.size
    if mode == "pad":
        scale = crop / max(w0, h0)
        wr, hr = max(1, int(round(w0 * scale))), max(1, int(round(h0 * scale)))
        resized = (
            image.resize((wr, hr), Image.Resampling.BILINEAR) if (wr, hr) != (w0, h0) else image
        )
        left, top = (crop - wr) // 2, (crop - hr) // 2
        framed = Image.new("RGB", (crop, crop), fill)
        framed.paste(resized, (left, top))
        return framed, Framing(mode, (w0, h0), (wr, hr), (-left, -top), (crop, crop))
    resized = resize_shorter(image, size)
    wr, hr = resized.size
    if mode == "none":
        return resized, Framing(mode, (w0, h0), (wr, hr), (0, 0), (wr, hr))
    offset = (_centre_offset(wr, crop), _centre_offset(hr, crop))
    return center_crop(resized, crop), Framing(mode, (w0, h0), (wr, hr), offset, (crop, crop))


def to_original(map2d: np.ndarray, framing: Framing) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W) map on the model input, at the original image's resolution.

    The map is placed in the resized image's frame and resized bilinearly to the original's
    ``(H0, W0)``, normalised by the interpolated coverage (so values at the edge of the seen
    region are not pulled towards zero); pixels the model did not see are 0.

    Returns
    -------
    values : numpy.ndarray
        float64 (H0, W0).
    seen : numpy.ndarray
        bool (H0, W0): pixels of the original the model saw.
    """
    m = np.asarray(map2d, dtype=np.float64)
    w, h = framing.input
    if m.shape != (h, w):
        raise ValueError(f"the map is {m.shape[1]}x{m.shape[0]}, the model input {w}x{h}")
    (wr, hr), (ox, oy), (w0, h0) = framing.resized, framing.offset, framing.original
    canvas = np.zeros((2, hr, wr))
    # input rows v in [0, h) lie at resized rows v + oy; keep the part inside [0, hr)
    r0, r1 = max(0, oy), min(hr, oy + h)
    c0, c1 = max(0, ox), min(wr, ox + w)
    if r1 > r0 and c1 > c0:
        canvas[0, r0:r1, c0:c1] = m[r0 - oy : r1 - oy, c0 - ox : c1 - ox]
        canvas[1, r0:r1, c0:c1] = 1.0
    t = torch.from_numpy(canvas)[None]
    if (hr, wr) != (h0, w0):
        t = F.interpolate(t, size=(h0, w0), mode="bilinear", align_corners=False)
    values, weight = t[0, 0].numpy(), t[0, 1].numpy()
    seen = weight >= 0.5  # normalised interpolation: edges are not blended with the zeros
    return np.where(seen, values / np.where(seen, weight, 1.0), 0.0), seen
