"""Reading image files and class-name files, and torchvision-style preprocessing.

:func:`load_image` turns any image Pillow can read into an 8-bit RGB ``PIL.Image``: EXIF
orientation is applied, grayscale / palette / CMYK images are converted, transparency is
composited onto a background (white by default) and 16-bit images are scaled to 8 bits
(65535 -> 255) instead of being clipped. Images are decoded lazily: the header is read first
and an image of more than :data:`MAX_PIXELS` pixels is refused before its pixels are decoded
(:func:`open_image`, :func:`image_size`). :func:`preprocess` then does what
``torchvision.transforms`` ``Resize(size)``, ``CenterCrop(crop)``, ``ToTensor()`` and
``Normalize(mean, std)`` do, without importing torchvision.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "ImageTooLargeError",
    "center_crop",
    "image_size",
    "load_image",
    "open_image",
    "preprocess",
    "read_labels",
    "resize_shorter",
    "to_tensor",
]

#: torchvision's ImageNet channel means (RGB, values in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: torchvision's ImageNet channel standard deviations.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


#: Largest image, in pixels (width x height), that is decoded: 50 megapixels, 150 MB as 8-bit
#: RGB. Larger files are refused from their header, before any pixel is decoded. Raise it
#: (``sglrp.images.MAX_PIXELS = ...``) or pass ``max_pixels=`` to read larger images; beyond
#: ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 megapixels) Pillow refuses them too.
MAX_PIXELS: int = 50_000_000

_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class ImageTooLargeError(ValueError):
    """An image file holds more pixels than the limit (:data:`MAX_PIXELS`)."""


@contextlib.contextmanager
def open_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Open an image file with its pixel count checked before anything is decoded.

    Only the header is read (``PIL.Image.open`` is lazy); the caller decodes inside the
    ``with`` block, where Pillow's errors become ``ValueError`` naming ``path``.

    Parameters
    ----------
    path
        Any file Pillow can read.
    max_pixels
        Limit on width x height; ``None`` uses :data:`MAX_PIXELS` (read at call time).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ImageTooLargeError
        Width x height exceeds ``max_pixels`` (a ``ValueError``).
    ValueError
        ``path`` is a directory, or not a readable (complete) image.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_pixels must be a positive int, got {limit!r}")
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes, bomb warnings
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise ImageTooLargeError(
                        f"{path}: image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the "
                        f"limit of {limit / 1e6:g} megapixels; shrink the image, or raise "
                        "sglrp.images.MAX_PIXELS (or pass max_pixels=) to read it"
                    )
                yield im
    except ImageTooLargeError:
        raise
    except UnidentifiedImageError as err:
        raise ValueError(f"cannot read image {path}: not a recognised image format") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(
            f"cannot read image {path}: {err} Raise PIL.Image.MAX_IMAGE_PIXELS as well as "
            "sglrp.images.MAX_PIXELS to read it"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # Pillow raises OSError for truncated data, SyntaxError/ValueError for bad headers
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read image {path}: corrupt or truncated ({detail})") from err


def image_size(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of the image :func:`load_image` returns, from the header only.

    EXIF orientations that rotate by 90 degrees swap the stored width and height. A PNG whose
    EXIF chunk follows the pixel data is not inspected (that would decode it). Raises as
    :func:`open_image`.
    """
    with open_image(path, max_pixels=max_pixels) as im:
        w, h = im.size
        header_exif = "exif" in im.info or im.format not in ("PNG", "APNG")
        orientation = im.getexif().get(_ORIENTATION, 1) if header_exif else 1
    return (h, w) if orientation in _TRANSPOSED else (w, h)


def load_image(
    path: str | os.PathLike,
    background: tuple[int, int, int] = (255, 255, 255),
    *,
    max_pixels: int | None = None,
) -> Image.Image:
    """Read an image file as an 8-bit RGB image.

    Parameters
    ----------
    path
        Any file Pillow can read (the first frame of animations).
    background
        Colour that transparent pixels are composited onto.
    max_pixels
        Limit on width x height, checked before decoding; ``None`` uses :data:`MAX_PIXELS`.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, EXIF orientation applied.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ImageTooLargeError
        The image has more than ``max_pixels`` pixels (a ``ValueError``).
    ValueError
        ``path`` is a directory, or not a readable (complete) image.
    """
    with open_image(path, max_pixels=max_pixels) as im:
        im.load()
        bits = _bit_depth(im)  # before exif_transpose, which drops format and tags
        with contextlib.suppress(Exception):  # broken EXIF: keep pixels as stored
            im = ImageOps.exif_transpose(im)
        return _to_rgb(im, bits, background)


def _bit_depth(im: Image.Image) -> int:
    """Bits per sample of an integer image of mode ``"I"``/``"I;16*"`` (8 otherwise)."""
    if im.mode.startswith("I;16"):
        return 16
    if im.mode != "I":
        return 8
    tags = getattr(im, "tag_v2", None)  # TIFF: ask the file
    if tags is not None and 258 in tags:
        bits = tags[258]
        return int(bits[0] if isinstance(bits, tuple) else bits)
    # PNG (older Pillow) and most writers use mode "I" for 16-bit samples.
    return 16 if im.format in (None, "PNG", "PPM", "PGM") else 32


def _to_rgb(im: Image.Image, bits: int, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see :func:`load_image`)."""
    if im.mode in _HIGH_DEPTH_MODES:
        a = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            scale = 1.0 if a.size == 0 or np.nanmax(a) <= 1.0 else 255.0
        else:
            scale = float(2 ** min(bits, 31) - 1)
        a = np.nan_to_num(a / scale, nan=0.0)
        gray = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if im.mode == "P" or "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect kept), like torchvision's ``Resize(size)``.

    Bilinear with antialiasing; the longer side is ``int(size * long / short)``.
    """
    if size < 1:
        raise ValueError(f"size must be a positive int, got {size}")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, crop: int) -> Image.Image:
    """Crop the central ``crop`` x ``crop`` square (zero padding if the image is smaller)."""
    if crop < 1:
        raise ValueError(f"crop must be a positive int, got {crop}")
    w, h = image.size
    if w < crop or h < crop:  # as torchvision: pad with black, then crop
        padded = Image.new(image.mode, (max(w, crop), max(h, crop)))
        padded.paste(image, ((max(w, crop) - w) // 2, (max(h, crop) - h) // 2))
        image, (w, h) = padded, padded.size
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def to_tensor(
    image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """An RGB image as a normalised float32 ``(1, 3, H, W)`` tensor: ``(v / 255 - mean) / std``."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return ((x - m) / s).unsqueeze(0).contiguous()


def preprocess(
    image: Image.Image,
    size: int | None = 256,
    crop: int | None = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, Image.Image]:
    """Resize the shorter side to ``size``, centre-crop ``crop``, normalise.

    Parameters
    ----------
    image
        An RGB image (:func:`load_image`).
    size, crop
        ``None`` skips that step.
    mean, std
        Per-channel normalisation statistics (values in [0, 1] units).

    Returns
    -------
    x : torch.Tensor
        ``(1, 3, crop, crop)`` float32 model input.
    shown : PIL.Image.Image
        The resized and cropped RGB image that ``x`` was made from.
    """
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std need 3 values each (R, G, B)")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if size is not None:
        image = resize_shorter(image, size)
    if crop is not None:
        image = center_crop(image, crop)
    return to_tensor(image, mean, std), image


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read class names: one per line, a JSON list, or a JSON object ``{"0": name, ...}``.

    In a JSON object a value may also be a list, whose last entry is the name (as in the
    common ``imagenet_class_index.json``: ``{"0": ["n01440764", "tench"], ...}``).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is empty, holds an empty name, or is malformed JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"labels file {path} is not UTF-8 text") from err
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise ValueError(f"labels file {path} is not valid JSON: {err}") from err
        names = _json_labels(data, path)
    else:
        lines = [line.strip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        names = lines
    if not names:
        raise ValueError(f"labels file {path} holds no class names")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"labels file {path}: class {empty[0]} has an empty name")
    return names


def _json_labels(data: object, path: Path) -> list[str]:
    if isinstance(data, list):
        return [_json_name(v, path) for v in data]
    if isinstance(data, dict):
        try:
            keys = sorted(data, key=int)
        except (TypeError, ValueError) as err:
            raise ValueError(f"labels file {path}: JSON object keys must be class indices") from err
        if [int(k) for k in keys] != list(range(len(keys))):
            raise ValueError(f"labels file {path}: JSON object keys must be 0 ... {len(keys) - 1}")
        return [_json_name(data[k], path) for k in keys]
    raise ValueError(f"labels file {path}: expected a JSON list or object of class names")


def _json_name(value: object, path: Path) -> str:
    if isinstance(value, list) and value:
        value = value[-1]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"labels file {path}: class names must be strings, got {value!r}")
    return str(value).strip()
