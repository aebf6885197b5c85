"""Pointing games: the extended (energy-based) game of the SGLRP paper and the classic game."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._core import (
    Aggregate,
    CurveResult,
    MetricResult,
    aggregate,
    check_maps,
    check_masks,
    curve_result,
    tied_topk_hits,
)

#: 0.05, 0.10, ..., 1.00: the 0.1 grid of the SGLRP paper's Fig. 13 plus the levels between.
DEFAULT_ENERGIES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))


def extended_pointing_game(
    maps: Tensor, masks: Tensor, energies: Sequence[float] = DEFAULT_ENERGIES
) -> CurveResult:
    """Extended pointing game (SGLRP paper, eqs. 11-12). Higher is better.

    For energy ``E`` the threshold ``tau`` keeps the ``k = ceil(E * P)`` largest of the
    ``P`` positive pixels (``R > 0``); ``E * P`` is rounded up with a 1e-6 tolerance for
    floating-point error (0.55 * 100 is 55.00000000000001 in floats;
    55 pixels are kept, not 56), and at least one pixel is kept.
    The accuracy is ``hits / (hits + misses) = hits / k``, a hit being a kept pixel inside
    the mask.

    Ties: pixels equal to ``tau`` share the places left after the pixels strictly above it,
    each counting ``(k - a) / t`` (``a`` above, ``t`` tied): the exact expectation under
    random tie-breaking, exactly ``k`` pixels kept, independent of pixel positions.

    Parameters
    ----------
    maps
        (N, H, W) or (N, C, H, W) relevance (summed over channels).
    masks
        (N, H, W) bool ground truth (:func:`boxes_to_masks` for boxes).
    energies
        Levels in (0, 1].

    Returns
    -------
    CurveResult
        ``curves`` (N, L) accuracy per energy, ``levels`` the energies, ``mean_curve`` the
        mean curve, ``scores`` (N,) the mean accuracy over the levels. NaN for images with no
        positive relevance or an empty mask.
    """
    r = check_maps(maps)
    gt = check_masks(masks, tuple(r.shape))
    e = torch.as_tensor(list(energies), dtype=torch.float64, device=r.device).reshape(-1)
    if e.numel() == 0 or bool(((e <= 0) | (e > 1)).any()):
        raise ValueError("energies must be a non-empty sequence of levels in (0, 1]")
    n = r.shape[0]
    values = r.reshape(n, -1)
    inside = gt.reshape(n, -1)
    n_pos = (values > 0).sum(dim=1, keepdim=True).to(torch.float64)  # (N, 1)
    k = torch.ceil(e[None, :] * n_pos - 1e-6)
    k = torch.minimum(k.clamp(min=1), n_pos).to(torch.long)  # (N, L); 0 when P = 0
    hits = tied_topk_hits(values, inside, k)
    acc = hits / k.clamp(min=1).to(torch.float64)
    undefined = (n_pos[:, 0] == 0) | ~inside.any(dim=1)
    acc[undefined] = math.nan
    return curve_result("extended_pointing_game", "higher", acc.mean(dim=1), e, acc)


@dataclass(frozen=True)
class PointingResult(MetricResult):
    """Classic pointing game result.

    Attributes
    ----------
    scores
        (N,) hit in [0, 1] (1/0 with a unique maximum), NaN for skipped images (empty mask).
    aggregate
        Overall accuracy over non-skipped images.
    per_class
        (num_classes,) accuracy per class, NaN for classes without a non-skipped image;
        None if no classes were given.
    class_mean
        Mean of the per-class accuracies (VOC/COCO convention); equals the overall
        accuracy when no classes were given.
    class_aggregate
        :func:`aggregate` over the defined per-class accuracies (interval across classes).
    n_skipped
        Number of images skipped for an empty mask.
    """

    per_class: Tensor | None = None
    class_mean: float = math.nan
    class_aggregate: Aggregate | None = None
    n_skipped: int = 0


def disc_dilate(masks: Tensor, radius: float) -> Tensor:
    """Dilate (N, H, W) bool masks by a disc: pixels within Euclidean distance ``radius``.

    ``out[p] = any(mask[q] for |p - q| <= radius)``, distances between pixel centres. The
    disc is the union over row offsets ``dy`` of horizontal segments of half-width
    ``floor(sqrt(radius^2 - dy^2))``; each segment is a windowed count from one cumulative
    sum, so the cost is O((2r + 1) H W) for the whole batch.
    """
    if radius < 0:
        raise ValueError(f"tolerance must be >= 0, got {radius}")
    r = int(math.floor(radius))
    h, w = masks.shape[-2:]
    # cs[..., j] = number of mask pixels in padded columns < j (padding r on both sides)
    cs = F.pad(F.pad(masks.to(torch.int32), (r, r)).cumsum(dim=-1), (1, 0))
    count = torch.uint8 if 2 * r + 1 <= 255 else torch.int32  # sums at most 2r + 1 ones
    out = torch.zeros_like(masks, dtype=count)
    segments: dict[int, Tensor] = {}
    for dy in range(-r, r + 1):
        a = int(math.floor(math.sqrt(max(radius**2 - dy**2, 0.0)) + 1e-9))
        if a not in segments:  # any mask pixel in columns [x - a, x + a] of the same row
            seg = cs[..., r + a + 1 : r + a + 1 + w] - cs[..., r - a : r - a + w]
            segments[a] = (seg > 0).to(count)
        seg = segments[a]
        if abs(dy) >= h:
            continue
        if dy >= 0:  # row y looks at mask row y + dy
            out[..., : h - dy, :] += seg[..., dy:, :]
        else:
            out[..., -dy:, :] += seg[..., : h + dy, :]
    return out > 0


def pointing_game(
    maps: Tensor,
    masks: Tensor,
    classes: Tensor | None = None,
    tolerance: float = 15,
    ties: str = "expected",
    num_classes: int | None = None,
) -> PointingResult:
    """Classic pointing game (Zhang et al.; TorchRay benchmark). Higher is better.

    A hit is a maximum of the map within ``tolerance`` pixels (Euclidean distance between
    pixel centres, inclusive: 15 px is a hit, 16 px is not) of a pixel of the mask.
    Images with an empty mask are skipped (NaN), never hits.

    Ties at the maximum: ``ties="expected"`` (default) scores the fraction of maximal pixels
    within tolerance, the expected hit when one of them is picked at random (a constant map
    then scores the share of the image near the object, like a random point);
    ``ties="first"`` uses ``torch.argmax`` (first maximum in row-major order), as TorchRay.

    Parameters
    ----------
    maps
        (N, H, W) or (N, C, H, W) relevance.
    masks
        (N, H, W) bool ground truth (union of the target class' objects).
    classes
        (N,) long class of each image's target, for the per-class accuracy.
    tolerance
        Radius in pixels.
    ties
        ``"expected"`` or ``"first"``.
    num_classes
        Length of ``per_class`` (default ``classes.max() + 1``).

    Returns
    -------
    PointingResult
    """
    r = check_maps(maps)
    gt = check_masks(masks, tuple(r.shape))
    n = r.shape[0]
    flat = r.reshape(n, -1)
    if ties == "expected":
        is_max = flat == flat.amax(dim=1, keepdim=True)
    elif ties == "first":
        is_max = torch.zeros_like(flat, dtype=torch.bool)
        is_max.scatter_(1, flat.argmax(dim=1, keepdim=True), True)
    else:
        raise ValueError(f"ties must be 'expected' or 'first', got {ties!r}")
    near = disc_dilate(gt, tolerance).reshape(n, -1)
    hit = (is_max & near).sum(dim=1).to(torch.float64) / is_max.sum(dim=1).to(torch.float64)
    skipped = ~gt.reshape(n, -1).any(dim=1)
    hit[skipped] = math.nan
    overall = aggregate(hit)

    per_class = None
    class_mean = overall.mean
    class_agg = None
    if classes is not None:
        c = torch.as_tensor(classes, device=r.device).reshape(-1).to(torch.long)
        if c.numel() != n:
            raise ValueError(f"classes must have length N = {n}, got {c.numel()}")
        size = int(num_classes) if num_classes is not None else int(c.max()) + 1
        if int(c.min()) < 0 or int(c.max()) >= size:
            raise ValueError("classes must lie in [0, num_classes)")
        valid = ~skipped
        counts = torch.bincount(c[valid], minlength=size).to(torch.float64)
        sums = torch.zeros(size, dtype=torch.float64, device=r.device)
        sums.index_add_(0, c[valid], hit[valid])
        per_class = torch.where(counts > 0, sums / counts.clamp(min=1), math.nan)
        class_agg = aggregate(per_class)
        class_mean = class_agg.mean
    return PointingResult(
        name="pointing_game",
        direction="higher",
        scores=hit,
        aggregate=overall,
        per_class=per_class,
        class_mean=class_mean,
        class_aggregate=class_agg,
        n_skipped=int(skipped.sum()),
    )
