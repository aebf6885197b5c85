"""Ground-truth localisation metrics of CLEVR-XAI: relevance mass and relevance rank accuracy."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._core import MetricResult, aggregate, check_maps, check_masks, tied_topk_hits


def positive_share(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the positive relevance inside a mask: ``sum_{p in mask} R+_p / sum_p R+_p``.

    Parameters
    ----------
    maps
        (N, H, W) float relevance (already channel-summed and checked).
    masks
        (N, H, W) bool.

    Returns
    -------
    Tensor
        (N,) float64 in [0, 1]; NaN where the map has no positive relevance.
    """
    n = maps.shape[0]
    pos = maps.clamp(min=0).reshape(n, -1).to(torch.float64)
    total = pos.sum(dim=1)
    share = (pos * masks.reshape(n, -1)).sum(dim=1) / total.clamp(
        min=torch.finfo(torch.float64).tiny
    )
    return share.masked_fill(total == 0, math.nan)


def relevance_mass_accuracy(maps: Tensor, masks: Tensor) -> MetricResult:
    """Relevance mass accuracy (CLEVR-XAI). Higher is better.

    ``mass = sum_{p in mask} R+_p / sum_p R+_p`` with ``R+ = max(R, 0)``: the share of the
    positive relevance that falls inside the mask, in [0, 1].

    Parameters
    ----------
    maps
        (N, H, W) or (N, C, H, W) relevance (summed over channels first).
    masks
        (N, H, W) bool ground truth.

    Returns
    -------
    MetricResult
        (N,) scores; NaN when the map has no positive relevance or the mask is empty.
    """
    r = check_maps(maps)
    gt = check_masks(masks, tuple(r.shape))
    score = positive_share(r, gt)
    score[~gt.flatten(1).any(dim=1)] = math.nan
    return MetricResult("relevance_mass_accuracy", "higher", score, aggregate(score))


def relevance_rank_accuracy(maps: Tensor, masks: Tensor) -> MetricResult:
    """Relevance rank accuracy (CLEVR-XAI). Higher is better.

    With ``K = |mask|``, the share of the ``K`` pixels of highest relevance (signed values,
    so zero and negative pixels rank last) that lie inside the mask: ``|top_K cap mask| / K``.
    Pixels tied with the K-th value share the remaining places (expected value under random
    tie-breaking), so an all-zero map scores the chance level ``K / (H W)``.

    Parameters
    ----------
    maps
        (N, H, W) or (N, C, H, W) relevance.
    masks
        (N, H, W) bool ground truth.

    Returns
    -------
    MetricResult
        (N,) scores in [0, 1]; NaN for an empty mask.
    """
    r = check_maps(maps)
    gt = check_masks(masks, tuple(r.shape))
    n = r.shape[0]
    inside = gt.reshape(n, -1)
    k = inside.sum(dim=1, keepdim=True)
    hits = tied_topk_hits(r.reshape(n, -1), inside, k)[:, 0]
    score = hits / k[:, 0].clamp(min=1).to(torch.float64)
    score[k[:, 0] == 0] = math.nan
    return MetricResult("relevance_rank_accuracy", "higher", score, aggregate(score))
