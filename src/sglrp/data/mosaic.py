"""2x2 mosaics of generated single-object images, for the Focus metric (Arias-Duart et al.
2022): two cells hold the target class, two hold two other classes.

Mosaic ``i`` of a seed uses single-object images from two label blocks of the source split
(``generate`` balances labels in blocks of ``len(CLASSES)`` consecutive images): a target
image and the first other class from block ``2i``, a target image and the second other class
from block ``2i + 1``. So no source image is used twice, and mosaic ``i`` depends only on
``(split, i, seed, size)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shapes import CLASSES, _balanced_label, _check_args, generate

__all__ = ["CELLS", "Mosaic", "mosaic"]

CELLS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
"""Cell order of :attr:`Mosaic.labels` and :attr:`Mosaic.cell_masks`."""

_MOSAIC_CODE = 53  # random stream of the mosaics' targets and layouts, apart from the splits'


@dataclass
class Mosaic:
    """A batch of 2x2 mosaics.

    Attributes
    ----------
    images
        ``uint8`` (N, H, W, 3).
    labels
        (N, 4) int64 class of each cell, cells in :data:`CELLS` order.
    targets
        (N,) int64 target class: exactly two cells of each mosaic hold it.
    cell_masks
        Bool (4, H, W) masks of the cells (the same for every mosaic; they tile the image).
    sources
        (N, 4) int64 index of each cell's source image in the source split, so that
        ``generate(split, 1, seed, size, start=sources[i, k])`` is the cell before downscaling.
    """

    images: np.ndarray = field(repr=False)
    labels: np.ndarray
    targets: np.ndarray
    cell_masks: np.ndarray = field(repr=False)
    sources: np.ndarray

    @property
    def target_masks(self) -> np.ndarray:
        """Bool (N, H, W): the cells holding each mosaic's target class."""
        hit = self.labels == self.targets[:, None]
        return (self.cell_masks[None] & hit[:, :, None, None]).any(axis=1)


def _index_of(split: str, block: int, label: int, seed: int) -> int:
    """Index of the image of class ``label`` in label block ``block`` of ``split``."""
    k = len(CLASSES)
    for index in range(block * k, (block + 1) * k):
        if _balanced_label(split, index, seed) == label:
            return index
    raise AssertionError("every label block holds every class")  # pragma: no cover


def _downscale(image: np.ndarray) -> np.ndarray:
    """Halve an (H, W, 3) uint8 image by averaging 2x2 pixel blocks (rounded)."""
    h, w, c = image.shape
    blocks = image.reshape(h // 2, 2, w // 2, 2, c).astype(np.float64).mean(axis=(1, 3))
    return np.rint(blocks).astype(np.uint8)


def _cell_masks(size: int) -> np.ndarray:
    half = size // 2
    masks = np.zeros((4, size, size), dtype=bool)
    for k in range(4):
        row, col = divmod(k, 2)
        masks[k, row * half : (row + 1) * half, col * half : (col + 1) * half] = True
    return masks


def mosaic(
    n: int, seed: int = 0, size: int = 64, *, split: str = "single", start: int = 0
) -> Mosaic:
    """Build ``n`` 2x2 mosaics, each from four downscaled single-object images.

    Each cell is a ``size`` x ``size`` image of :func:`sglrp.data.generate` (split ``split``)
    halved by 2x2 averaging. Two cells hold the target class, the other two hold two
    different other classes, at random positions. Targets are balanced: each block of
    ``len(CLASSES)`` consecutive mosaics has every class once as its target.

    Parameters
    ----------
    n
        Number of mosaics.
    seed
        Non-negative seed; the same arguments always give bit-identical mosaics.
    size
        Mosaic height and width (even, at least 32), the size of the source images.
    split
        Single-object source split: ``"single"`` (held out, default) or ``"train"``.
    start
        Index of the first mosaic: ``mosaic(m, start=s)`` equals mosaics ``s .. s+m-1`` of
        ``mosaic(s + m)``.

    Returns
    -------
    Mosaic
    """
    _check_args(split, n, seed, size, start)
    if split not in ("single", "train"):
        raise ValueError(
            f"mosaic cells come from a single-object split ('single' or 'train'), got {split!r}"
        )
    if size % 2:
        raise ValueError(f"size must be even (the mosaic is 2x2 cells of size / 2), got {size}")
    k = len(CLASSES)
    half = size // 2
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, 4), dtype=np.int64)
    targets = np.empty(n, dtype=np.int64)
    sources = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        m = start + i
        block = np.random.default_rng([seed, _MOSAIC_CODE, 1, m // k])
        target = int(block.permutation(k)[m % k])
        rng = np.random.default_rng([seed, _MOSAIC_CODE, 0, m])
        others = [int(c) for c in rng.choice([c for c in range(k) if c != target], 2, False)]
        chosen = [(target, 2 * m), (others[0], 2 * m), (target, 2 * m + 1), (others[1], 2 * m + 1)]
        layout = rng.permutation(4)
        for cell, (label, blk) in zip(layout, chosen, strict=True):
            index = _index_of(split, blk, label, seed)
            source = generate(split, 1, seed, size, start=index)[0].image
            row, col = divmod(int(cell), 2)
            images[i, row * half : (row + 1) * half, col * half : (col + 1) * half] = _downscale(
                source
            )
            labels[i, cell] = label
            sources[i, cell] = index
        targets[i] = target
    return Mosaic(images, labels, targets, _cell_masks(size), sources)
