"""Procedurally generated shape images with exact ground truth.

Every image is drawn from a seed with numpy only, so the same ``(split, index, seed, size)``
always gives a bit-identical image. Objects belong to :data:`CLASSES`; several classes share
parts (disc/ring, square/square_cross, triangle/triangle_notch, plus/tee, bar/ell, arrow/
triangle) so that telling them apart needs the discriminative part. Backgrounds carry clutter
(noise, stripes, faint soft blobs and faint one-pixel lines) that is never an object of a class.

Conventions
-----------
* Images are ``uint8`` arrays of shape ``(H, W, 3)`` (RGB), ``H == W == size``.
* A bounding box is ``(x0, y0, x1, y1)`` in pixel coordinates, 0-based and
  inclusive-exclusive: the object's visible pixels are ``image[y0:y1, x0:x1]``.
  It is the tight box of the *visible* mask.
* A mask is a boolean ``(H, W)`` array of the object's visible pixels (after occlusion by
  objects drawn later); masks of one image never overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "CLASSES",
    "MEAN",
    "SPLITS",
    "STD",
    "ObjectAnnotation",
    "Sample",
    "ShapesDataset",
    "dataset_stats",
    "generate",
    "to_images",
    "to_tensor",
]

CLASSES: tuple[str, ...] = (
    "disc",
    "ring",
    "square",
    "square_cross",
    "triangle",
    "triangle_notch",
    "plus",
    "tee",
    "bar",
    "ell",
    "arrow",
    "star",
)
"""Class names; a class index is a position in this tuple."""

SPLITS: tuple[str, ...] = ("train", "single", "multi", "train_multi")
"""``train`` and ``single``: one object per image (different random streams, so ``single``
is held out from ``train`` for the same seed); ``multi``: 2 or 3 objects of distinct classes
with partial occlusion; ``train_multi``: like ``multi`` but its own random stream, for
training (so ``multi`` stays held out)."""

# Per-channel statistics of the "train" split in [0, 1] units (``dataset_stats("train",
# 6000, seed=0)``, rounded); used by ``to_tensor`` for normalisation.
MEAN: tuple[float, float, float] = (0.5013, 0.5013, 0.5017)
STD: tuple[float, float, float] = (0.2912, 0.2912, 0.2901)

_SPLIT_CODE = {"train": 11, "single": 23, "multi": 37, "train_multi": 41}
_MULTI = ("multi", "train_multi")
# Scale (pixels per shape unit) as a fraction of the image size.
_SCALE_SINGLE = (0.14, 0.31)
_SCALE_MULTI = {2: (0.18, 0.28), 3: (0.14, 0.22)}
_ASPECT = (0.87, 1.15)
_MIN_VISIBLE = 0.8  # multi split: each object keeps at least this fraction of its pixels
_RADIUS = 1.16  # every shape fits in a disc of this radius (shape units)


@dataclass
class ObjectAnnotation:
    """One object in an image.

    Attributes
    ----------
    label
        Class index into :data:`CLASSES`.
    name
        Class name.
    box
        ``(x0, y0, x1, y1)``, 0-based, inclusive-exclusive, tight around the visible mask.
    mask
        Boolean ``(H, W)`` array of the visible pixels, or ``None`` when unknown (a data set
        with boxes only, see :func:`sglrp.data.load_voc`).
    """

    label: int
    name: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Sample:
    """An image with its objects.

    Attributes
    ----------
    image
        ``uint8`` array ``(H, W, 3)``.
    objects
        Annotations in drawing order (later objects occlude earlier ones).
    label
        The image label for single-object images, ``None`` for multi-object images.
    """

    image: np.ndarray = field(repr=False)
    objects: list[ObjectAnnotation]
    label: int | None

    @property
    def labels(self) -> list[int]:
        """Class indices of all objects, in drawing order."""
        return [obj.label for obj in self.objects]


# --------------------------------------------------------------------------- shape geometry


def _convex(u: np.ndarray, v: np.ndarray, pts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Points inside a convex polygon given counter-clockwise."""
    inside = np.ones(u.shape, dtype=bool)
    n = len(pts)
    for k in range(n):
        ax, ay = pts[k]
        bx, by = pts[(k + 1) % n]
        inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0
    return inside


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


_TRIANGLE = [(math.cos(a), math.sin(a)) for a in np.deg2rad([90.0, 210.0, 330.0])]
_STAR_OUT = [(math.cos(a), math.sin(a)) for a in np.deg2rad(90.0 + 72.0 * np.arange(5))]
_STAR_IN = [
    (0.42 * math.cos(a), 0.42 * math.sin(a)) for a in np.deg2rad(126.0 + 72.0 * np.arange(5))
]
_ARM = 0.28  # half width of plus / tee arms


def _shape(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator):
    """Silhouette of class ``name`` and an optional painted part (or ``None``)."""
    part = None
    if name == "disc":
        body = u * u + v * v <= 1.0
    elif name == "ring":
        r2 = u * u + v * v
        hole = rng.uniform(0.45, 0.6)
        body = (r2 <= 1.0) & (r2 > hole * hole)
    elif name in ("square", "square_cross"):
        body = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
        if name == "square_cross":
            half = 0.17 * math.sqrt(2.0)
            part = body & ((np.abs(u - v) <= half) | (np.abs(u + v) <= half))
    elif name == "triangle":
        body = _convex(u, v, _TRIANGLE)
    elif name == "triangle_notch":
        body = _convex(u, v, _TRIANGLE) & ~_box(u, v, -0.25, 0.25, -1.0, 0.0)
    elif name == "plus":
        body = _box(u, v, -_ARM, _ARM, -1.0, 1.0) | _box(u, v, -1.0, 1.0, -_ARM, _ARM)
    elif name == "tee":
        body = _box(u, v, -_ARM, _ARM, -1.0, _ARM) | _box(u, v, -1.0, 1.0, -_ARM, _ARM)
    elif name == "bar":
        body = _box(u, v, -1.0, 1.0, -0.25, 0.25)
    elif name == "ell":
        body = _box(u, v, -0.78, -0.3, -0.78, 0.78) | _box(u, v, -0.78, 0.78, 0.3, 0.78)
    elif name == "arrow":
        shaft = _box(u, v, -1.0, 0.3, -0.2, 0.2)
        body = shaft | _convex(u, v, [(0.25, -0.62), (1.05, 0.0), (0.25, 0.62)])
    elif name == "star":
        body = _convex(u, v, _STAR_IN)
        for k in range(5):
            body |= _convex(u, v, [_STAR_IN[k - 1], _STAR_OUT[k], _STAR_IN[k]])
    else:  # pragma: no cover - names come from CLASSES
        raise ValueError(f"unknown shape {name!r}")
    return body, part


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xs, ys


def _local(size: int, cx: float, cy: float, scale: float, angle: float, aspect: float):
    xs, ys = _grid(size)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / (scale * aspect)
    v = (-s * dx + c * dy) / (scale / aspect)
    return u, v


# --------------------------------------------------------------------------- colour, texture


def _colour_far(rng: np.random.Generator, others: Sequence[np.ndarray], dist: float) -> np.ndarray:
    """A random RGB colour at least ``dist`` (Euclidean, 0-255 units) from every colour given."""
    best, best_d = None, -1.0
    for _ in range(64):
        c = rng.uniform(0.0, 255.0, 3)
        d = min((float(np.linalg.norm(c - o)) for o in others), default=dist)
        if d >= dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _pattern(kind: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture in [0, 1] in the object's own coordinates (so it rotates with the object)."""
    if kind == 0:  # solid
        return np.zeros(u.shape, np.float32)
    if kind == 1:  # stripes
        a = rng.uniform(0.0, math.pi)
        f = rng.uniform(2.0, 5.0)
        return 0.5 + 0.5 * np.sin(f * math.pi * (math.cos(a) * u + math.sin(a) * v))
    if kind == 2:  # checker
        f = rng.uniform(2.0, 4.0)
        return ((np.floor(f * u) + np.floor(f * v)) % 2).astype(np.float32)
    if kind == 3:  # gradient
        a = rng.uniform(0.0, 2.0 * math.pi)
        return np.clip(0.5 + 0.5 * (math.cos(a) * u + math.sin(a) * v), 0.0, 1.0)
    return rng.uniform(0.0, 1.0, u.shape).astype(np.float32)  # speckle


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cluttered background (float RGB) and its base colour."""
    xs, ys = _grid(size)
    base = rng.uniform(0.0, 255.0, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    if rng.random() < 0.5:  # smooth colour gradient
        a = rng.uniform(0.0, 2.0 * math.pi)
        ramp = (math.cos(a) * xs + math.sin(a) * ys) / size - 0.5
        img += ramp[..., None] * rng.uniform(-40.0, 40.0, 3)
    if rng.random() < 0.5:  # stripes
        a = rng.uniform(0.0, math.pi)
        period = rng.uniform(3.0, 14.0)
        wave = np.sin(2 * math.pi * (math.cos(a) * xs + math.sin(a) * ys) / period)
        img += wave[..., None] * rng.uniform(-22.0, 22.0, 3)
    if rng.random() < 0.6:  # faint soft blobs
        for _ in range(int(rng.integers(2, 8))):
            bx, by = rng.uniform(0, size, 2)
            sigma = rng.uniform(2.0, 0.12 * size)
            blob = np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * sigma * sigma))
            img += blob[..., None] * rng.uniform(-30.0, 30.0, 3)
    if rng.random() < 0.5:  # faint one-pixel lines
        for _ in range(int(rng.integers(1, 6))):
            x0, y0, x1, y1 = rng.uniform(0, size, 4)
            length = max(abs(x1 - x0), abs(y1 - y0), 1.0)
            t = np.linspace(0.0, 1.0, int(length * 2) + 2)
            px = np.clip((x0 + t * (x1 - x0)).astype(int), 0, size - 1)
            py = np.clip((y0 + t * (y1 - y0)).astype(int), 0, size - 1)
            img[py, px] += rng.uniform(-35.0, 35.0, 3)
    if rng.random() < 0.6:  # noise
        img += rng.normal(0.0, rng.uniform(2.0, 16.0), img.shape).astype(np.float32)
    return img, base


# --------------------------------------------------------------------------- sampling


@dataclass
class _Placed:
    label: int
    body: np.ndarray
    part: np.ndarray | None
    u: np.ndarray
    v: np.ndarray


def _place(
    label: int, size: int, scale_range: tuple[float, float], rng: np.random.Generator
) -> _Placed:
    scale = rng.uniform(*scale_range) * size
    aspect = rng.uniform(*_ASPECT)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    reach = _RADIUS * scale * max(aspect, 1.0 / aspect) + 1.0
    cx, cy = rng.uniform(reach, size - reach, 2)
    u, v = _local(size, cx, cy, scale, angle, aspect)
    body, part = _shape(CLASSES[label], u, v, rng)
    return _Placed(label, body, part, u, v)


def _paint(img: np.ndarray, obj: _Placed, bg: np.ndarray, rng: np.random.Generator) -> None:
    fill = _colour_far(rng, [bg], 120.0)
    second = _colour_far(rng, [bg], 90.0)
    second = fill + (second - fill) * rng.uniform(0.2, 0.45)
    t = _pattern(int(rng.integers(0, 5)), obj.u, obj.v, rng)
    colour = fill + t[..., None] * (second - fill)
    img[obj.body] = colour[obj.body]
    if obj.part is not None:
        ink = _colour_far(rng, [fill, second], 130.0)
        img[obj.part] = ink


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _balanced_label(split: str, index: int, seed: int) -> int:
    """Class of image ``index``: every block of ``len(CLASSES)`` images is a permutation."""
    k = len(CLASSES)
    block = np.random.default_rng([seed, _SPLIT_CODE[split], 1, index // k])
    return int(block.permutation(k)[index % k])


def _make(split: str, index: int, seed: int, size: int, num_objects: int | None) -> Sample:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 0, index])
    first = _balanced_label(split, index, seed)
    if split in _MULTI:
        k = num_objects if num_objects is not None else 2 + index % 2
        others = [c for c in range(len(CLASSES)) if c != first]
        labels = [first] + [int(c) for c in rng.choice(others, size=k - 1, replace=False)]
        labels = [labels[i] for i in rng.permutation(k)]
        scale_range = _SCALE_MULTI[k]
    else:
        labels = [first]
        scale_range = _SCALE_SINGLE
    img, bg = _background(size, rng)
    for _attempt in range(200):
        placed = [_place(lab, size, scale_range, rng) for lab in labels]
        visible = []
        cover = np.zeros((size, size), dtype=bool)
        for obj in reversed(placed):
            visible.append(obj.body & ~cover)
            cover |= obj.body
        visible.reverse()
        if all(
            vis.sum() >= max(_MIN_VISIBLE * obj.body.sum(), 1)
            for vis, obj in zip(visible, placed, strict=True)
        ):
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError("could not place the objects; use a larger image size")
    for obj in placed:
        _paint(img, obj, bg, rng)
    if rng.random() < 0.5:  # mild sensor noise over everything
        img += rng.normal(0.0, rng.uniform(1.0, 6.0), img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    objects = [
        ObjectAnnotation(obj.label, CLASSES[obj.label], _bbox(vis), vis)
        for obj, vis in zip(placed, visible, strict=True)
    ]
    return Sample(image, objects, None if split in _MULTI else labels[0])


def _check_args(split: str, n: int, seed: int, size: int, start: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    for name, value in (("n", n), ("seed", seed), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int >= 32 (objects need room), got {size!r}")


def generate(
    split: str,
    n: int,
    seed: int = 0,
    size: int = 64,
    *,
    start: int = 0,
    num_objects: int | None = None,
) -> list[Sample]:
    """Generate ``n`` annotated images.

    Parameters
    ----------
    split
        ``"train"``, ``"single"`` (held-out single-object images), ``"multi"`` (held-out
        multi-object images) or ``"train_multi"`` (multi-object images for training).
    n
        Number of images. Labels are balanced: each block of ``len(CLASSES)`` consecutive
        images holds every class once as its (first) label.
    seed
        Non-negative seed; the same arguments always give bit-identical images.
    size
        Image height and width (at least 32).
    start
        Index of the first image: image ``i`` depends only on ``(split, start + i, seed,
        size)``, so ``generate(s, 10, start=5)`` equals ``generate(s, 15)[5:]``.
    num_objects
        Multi-object splits only: 2 or 3 objects per image; ``None`` alternates 2 and 3.

    Returns
    -------
    list of Sample
    """
    _check_args(split, n, seed, size, start)
    if num_objects is not None:
        if split not in _MULTI:
            raise ValueError("num_objects applies to the multi-object splits only; drop it")
        if num_objects not in (2, 3):
            raise ValueError(f"num_objects must be 2, 3 or None, got {num_objects!r}")
    return [_make(split, start + i, int(seed), int(size), num_objects) for i in range(n)]


# --------------------------------------------------------------------------- tensors


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.stack([np.asarray(im) for im in images]) if isinstance(images, list) else images
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 arrays of shape (H, W, 3) or (N, H, W, 3), got shape "
            f"{arr.shape}; convert grey or RGBA images to RGB first"
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"images must have dtype uint8 (0-255), got {arr.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    return arr


def to_tensor(
    images: np.ndarray | Sequence[np.ndarray],
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """Map ``uint8`` images ``(H, W, 3)`` / ``(N, H, W, 3)`` to a normalised ``(N, 3, H, W)``.

    ``x = (image / 255 - mean) / std`` per channel, as float32.
    """
    arr = _as_batch(images)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def to_images(
    x: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> np.ndarray:
    """Inverse of :func:`to_tensor`: ``(N, 3, H, W)`` / ``(3, H, W)`` to ``uint8 (N, H, W, 3)``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must have shape (N, 3, H, W), got {tuple(x.shape)}")
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    y = (x.detach().float().cpu() * s + m) * 255.0
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def dataset_stats(
    split: str = "train", n: int = 6000, seed: int = 0, size: int = 64
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (in [0, 1] units) of generated images."""
    images = np.stack([s.image for s in generate(split, n, seed, size)]).astype(np.float64)
    images /= 255.0
    mean = images.mean(axis=(0, 1, 2))
    std = images.std(axis=(0, 1, 2))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class ShapesDataset(Dataset):
    """Single-object images as ``(normalised float tensor (3, H, W), label)`` pairs.

    Images are generated on access (deterministic per index), so a large ``n`` costs no
    memory; use a different ``start`` per epoch for fresh samples.

    Parameters
    ----------
    split
        ``"train"`` or ``"single"``.
    n
        Number of images.
    seed, size, start
        As in :func:`generate`.
    transform
        Optional callable applied to the tensor.
    """

    def __init__(
        self,
        split: str = "train",
        n: int = 10_000,
        seed: int = 0,
        size: int = 64,
        *,
        start: int = 0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        _check_args(split, n, seed, size, start)
        if split in _MULTI:
            raise ValueError(
                "ShapesDataset holds single-object images (split 'train' or 'single'); "
                "use generate('multi', ...) for multi-object images"
            )
        self.split, self.n, self.seed, self.size, self.start = split, n, seed, size, start
        self.transform = transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} images")
        index %= self.n
        sample = _make(self.split, self.start + index, self.seed, self.size, None)
        x = to_tensor(sample.image)[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(sample.label)
