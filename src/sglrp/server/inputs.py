"""What the page accepts as an image: uploads, the built-in generated examples, a folder.

Uploads are checked before anything is decoded (:func:`sglrp.images.image_size` refuses
more than :data:`sglrp.images.MAX_PIXELS` pixels from the header) and read with
:func:`sglrp.images.load_image`, which converts grayscale, palette, CMYK and 16-bit images
to 8-bit RGB and composites transparency onto white; the page is told about each
conversion. Every problem becomes an :class:`UploadError` whose message names the file the
user chose (not the server's temporary copy) and what to do.

The built-in examples are :func:`sglrp.data.generate` images (held-out ``single`` and
``multi`` splits) with their ground-truth boxes, mapped through the same resize and centre
crop as the image (:func:`boxes_in_input`) so they can be drawn over the model's input.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sglrp.data import generate
from sglrp.images import image_size, load_image, open_image

__all__ = [
    "EXAMPLE_COUNT",
    "Example",
    "Upload",
    "UploadError",
    "boxes_in_input",
    "draw_boxes",
    "example",
    "example_choices",
    "folder_images",
    "read_upload",
]

#: Built-in examples offered per split (single- and multi-object).
EXAMPLE_COUNT = 6
_SPLITS = ("single", "multi")
_BOX_COLOURS = ((0, 200, 0), (255, 160, 0), (200, 0, 200))

#: Pillow modes and what converting them to RGB means for the user.
_CONVERSIONS = {
    "1": "black-and-white image converted to RGB",
    "L": "grayscale image converted to RGB (three equal channels)",
    "I": "high bit-depth grayscale image scaled to 8 bits and converted to RGB",
    "I;16": "16-bit grayscale image scaled to 8 bits and converted to RGB",
    "I;16B": "16-bit grayscale image scaled to 8 bits and converted to RGB",
    "I;16L": "16-bit grayscale image scaled to 8 bits and converted to RGB",
    "F": "floating-point image scaled to 8 bits and converted to RGB",
    "P": "palette image converted to RGB",
    "CMYK": "CMYK image converted to RGB",
    "YCbCr": "YCbCr image converted to RGB",
    "LAB": "Lab image converted to RGB",
    "HSV": "HSV image converted to RGB",
}
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}


class UploadError(ValueError):
    """An input the page cannot use; the message is shown in the page as it is."""


@dataclass
class Upload:
    """An image ready for the model.

    Attributes
    ----------
    path
        The file (the server's copy).
    image
        8-bit RGB image as the model's preprocessing reads it.
    name
        The file name the user chose.
    notes
        Conversions applied (grayscale to RGB, transparency composited, ...).
    objects
        Ground truth for built-in examples: ``{"label", "name", "box"}`` with
        ``box = (x0, y0, x1, y1)`` in the pixels of ``image`` (inclusive-exclusive).
    """

    path: Path
    image: Image.Image
    name: str
    notes: list[str] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)


def _user_message(err: BaseException, path: Path, name: str) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.replace(str(path), name)


def read_upload(path: str | os.PathLike | None, name: str | None = None) -> Upload:
    """Check and read an uploaded file.

    Parameters
    ----------
    path
        The uploaded file on the server (``None``: nothing was uploaded).
    name
        The name the user's file had (default: ``path``'s name).

    Raises
    ------
    UploadError
        No file, not an image, a corrupt or truncated image, or an image of more than
        :data:`sglrp.images.MAX_PIXELS` pixels (refused from its header, before decoding).
    """
    if path is None or str(path) == "":
        raise UploadError("no file was uploaded; choose an image file (PNG, JPEG, ...)")
    path = Path(path)
    name = name or path.name
    try:
        image_size(path)  # header only: refuses huge images before decoding
        with open_image(path) as im:
            mode, info = im.mode, dict(im.info)
        image = load_image(path)
    except (ValueError, OSError) as err:
        raise UploadError(
            f"{_user_message(err, path, name)} (choose a PNG, JPEG, BMP, GIF, TIFF or WebP image)"
        ) from err
    notes = []
    if mode in _CONVERSIONS:
        notes.append(_CONVERSIONS[mode])
    if mode in _ALPHA or "transparency" in info:
        notes.append("transparent pixels composited onto white")
    return Upload(path=path, image=image, name=name, notes=notes)


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One built-in example: ``key`` is ``"single:N"`` or ``"multi:N"``."""

    key: str
    label: str


@functools.lru_cache(maxsize=8)
def _samples(split: str, side: int) -> tuple[Any, ...]:
    return tuple(generate(split, EXAMPLE_COUNT, seed=0, size=side))


def example_choices(side: int = 64) -> list[Example]:
    """The built-in examples with their class names, single-object ones first."""
    out = []
    for split in _SPLITS:
        for i, sample in enumerate(_samples(split, max(32, side))):
            names = " + ".join(o.name for o in sample.objects)
            kind = "one object" if split == "single" else f"{len(sample.objects)} objects"
            out.append(Example(f"{split}:{i}", f"{kind} #{i}: {names}"))
    return out


def example(key: str, side: int, folder: str | os.PathLike) -> Upload:
    """Write built-in example ``key`` as a PNG into ``folder`` and return it with its boxes.

    ``side`` is the generated image's size (the model's resize size, so that resizing is
    the identity and only the centre crop moves the boxes).
    """
    split, _, index = key.partition(":")
    if split not in _SPLITS or not index.isdigit() or int(index) >= EXAMPLE_COUNT:
        raise UploadError(f"unknown example {key!r}")
    sample = _samples(split, max(32, side))[int(index)]
    path = Path(folder) / f"builtin-{split}-{index}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(sample.image, mode="RGB")
    image.save(path, format="PNG")
    objects = [{"label": o.label, "name": o.name, "box": tuple(o.box)} for o in sample.objects]
    return Upload(path=path, image=image, name=path.name, objects=objects)


def boxes_in_input(
    objects: list[dict[str, Any]],
    image_size_wh: tuple[int, int],
    size: int | None,
    crop: int | None,
) -> list[dict[str, Any]]:
    """Map boxes through :func:`sglrp.images.preprocess` (resize shorter side, centre crop).

    A box ``(x0, y0, x1, y1)`` of a ``w x h`` image becomes ``x * w' / w - left`` (and the
    same for y), where ``w' x h'`` is the resized size and ``left, top`` the crop's offsets
    (negative when the crop pads); the result is clipped to the ``crop x crop`` input.
    """
    w, h = image_size_wh
    if size is not None:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)  # as sglrp.images.resize_shorter
        rw, rh = (size, new_long) if w <= h else (new_long, size)
    else:
        rw, rh = w, h
    side_w, side_h = (crop, crop) if crop is not None else (rw, rh)
    pad_x, pad_y = max(0, side_w - rw) // 2, max(0, side_h - rh) // 2
    left = int(round((max(rw, side_w) - side_w) / 2.0)) - pad_x
    top = int(round((max(rh, side_h) - side_h) / 2.0)) - pad_y
    out = []
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        box = (
            min(max(round(x0 * rw / w) - left, 0), side_w),
            min(max(round(y0 * rh / h) - top, 0), side_h),
            min(max(round(x1 * rw / w) - left, 0), side_w),
            min(max(round(y1 * rh / h) - top, 0), side_h),
        )
        if box[2] > box[0] and box[3] > box[1]:
            out.append({**obj, "box": box})
    return out


def draw_boxes(rgb: np.ndarray, objects: list[dict[str, Any]], scale: int = 1) -> np.ndarray:
    """Outline each object's box (and its class name) on a uint8 (H, W, 3) image.

    ``scale`` is how much larger ``rgb`` is than the pixels the boxes are given in.
    """
    if not objects:
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, scale // 2)
    for i, obj in enumerate(objects):
        x0, y0, x1, y1 = (v * scale for v in obj["box"])
        colour = _BOX_COLOURS[i % len(_BOX_COLOURS)]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
        if scale >= 2:
            draw.text((x0 + 2, y0 + 1), str(obj["name"]), fill=colour)
    return np.asarray(image)


# --------------------------------------------------------------------------- folder


def folder_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by the extensions Pillow reads), sorted.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        ``folder`` does not exist or is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; --folder takes a directory")
    suffixes = {s.lower() for s in Image.registered_extensions()}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
