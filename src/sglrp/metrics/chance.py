"""What a uniformly random map is expected to score: the chance level of each metric.

A map :math:`L_p \\sim U[0, 1)` i.i.d. over the :math:`P = HW` pixels (the evaluation's
``random`` baseline) has, with probability 1, all pixels positive and no ties, and its pixel
order is a uniformly random permutation. For the localisation metrics this gives exact
per-image expectations from the ground truth alone:

* extended pointing game (SGLRP paper, eqs. 11-12): at every energy level the ``k`` kept
  pixels are a uniform random ``k``-subset, so ``E[hits / k] = |box| / P``, the share of the
  image inside the target's boxes; the mean over levels has the same expectation;
* pointing game: the maximum is a uniformly random pixel, so the hit rate is
  ``|D_r(mask)| / P``, the share of pixels within the tolerance ``r`` of the object
  (:func:`~sglrp.metrics.pointing.disc_dilate`);
* relevance mass accuracy: by exchangeability :math:`E[L_p / \\sum_q L_q] = 1 / P` for every
  pixel, so ``E = |mask| / P``;
* relevance rank accuracy: the top ``K = |mask|`` pixels are a uniform random ``K``-subset
  (hypergeometric mean ``K^2 / P`` hits), so ``E = |mask| / P``.

The model-based metrics (patch masking, average drop, increase in confidence, deletion,
insertion) depend on the model's response to the perturbed images: they have no closed form,
and the Random row of an evaluation is their estimate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._core import check_masks
from .pointing import disc_dilate

__all__ = ["CLOSED_FORM", "RANDOM_EXPECTATIONS", "area_share", "random_expectation"]

#: One line per metric: what a uniformly random map is expected to score, and why.
RANDOM_EXPECTATIONS: dict[str, str] = {
    "extended_pointing_game": "share of the image inside the target's boxes, |box| / HW "
    "(the kept pixels of a random map are a uniform random subset at every energy level)",
    "pointing_game": "share of the image within the tolerance of the object, |dilated mask| / HW "
    "(the maximum of a random map is a uniformly random pixel)",
    "relevance_mass_accuracy": "share of the image inside the object mask, |mask| / HW "
    "(each pixel's expected share of i.i.d. relevance is 1 / HW)",
    "relevance_rank_accuracy": "share of the image inside the object mask, |mask| / HW "
    "(the top-|mask| pixels of a random map are a uniform random subset)",
    "patch_masking": "no closed form (depends on the model's response to a patch at a random "
    "place); estimated by the Random row",
    "average_drop": "no closed form (depends on the model's response to a random half of the "
    "pixels); estimated by the Random row",
    "increase_in_confidence": "no closed form (depends on the model's response to a random half "
    "of the pixels); estimated by the Random row",
    "deletion": "no closed form (the model's probability under deletion in random order); "
    "estimated by the Random row",
    "insertion": "no closed form (the model's probability under insertion in random order); "
    "estimated by the Random row",
}

#: Metrics whose random-map expectation :func:`random_expectation` computes exactly.
CLOSED_FORM: frozenset[str] = frozenset(
    {
        "extended_pointing_game",
        "pointing_game",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
    }
)


def _check(masks: Tensor) -> Tensor:
    if isinstance(masks, Tensor) and masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    return check_masks(masks, tuple(masks.shape))


def area_share(masks: Tensor) -> Tensor:
    """Share of each image's pixels inside its mask, ``|mask| / HW``.

    Parameters
    ----------
    masks
        (N, H, W) bool.

    Returns
    -------
    Tensor
        (N,) float64 in [0, 1]; NaN for an empty mask (the metrics skip those images too).
    """
    gt = _check(masks)
    flat = gt.reshape(gt.shape[0], -1)
    share = flat.sum(dim=1).to(torch.float64) / flat.shape[1]
    return share.masked_fill(~flat.any(dim=1), math.nan)


def random_expectation(metric: str, masks: Tensor, tolerance: float = 15) -> Tensor:
    """Per-image expected score of a uniformly random map on a localisation metric.

    Parameters
    ----------
    metric
        One of :data:`CLOSED_FORM`.
    masks
        (N, H, W) bool ground truth, as the metric gets it (boxes for the extended pointing
        game in the SGLRP protocol, object masks for the others).
    tolerance
        The pointing game's tolerance in pixels (as :func:`~sglrp.metrics.pointing_game`).

    Returns
    -------
    Tensor
        (N,) float64: :func:`area_share` of the mask, of the mask dilated by ``tolerance``
        for the pointing game; NaN where the metric skips the image (empty mask).
    """
    if metric not in CLOSED_FORM:
        known = ", ".join(sorted(CLOSED_FORM))
        raise ValueError(
            f"metric {metric!r} has no closed-form random-map expectation (it depends on the "
            f"model); estimate it with the random baseline. Closed form: {known}"
        )
    gt = _check(masks)
    if metric == "pointing_game":
        share = area_share(disc_dilate(gt, tolerance))
        return share.masked_fill(~gt.reshape(gt.shape[0], -1).any(dim=1), math.nan)
    return area_share(gt)
