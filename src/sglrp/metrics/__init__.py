"""Metrics for relevance maps: localisation, pointing, perturbation, with 95 % intervals.

Every metric returns a result object with per-image ``scores`` (NaN where undefined) and
an ``aggregate`` (:class:`Aggregate`: mean with a 95 % interval, NaN excluded and counted).

Call conventions (for a runner):

* localisation metrics take ``(maps, masks, **options)``: ``extended_pointing_game``,
  ``pointing_game`` (also ``classes=``), ``relevance_mass_accuracy``,
  ``relevance_rank_accuracy``;
* model metrics take ``(model, x, maps, target, **options)``: ``patch_masking``,
  ``average_drop``, ``increase_in_confidence``, ``deletion``, ``insertion``.

:func:`random_expectation` gives a uniformly random map's expected score on the localisation
metrics (the share of the image inside the mask); :data:`RANDOM_EXPECTATIONS` says, for every
metric, what that chance level is or that only the random baseline estimates it.

``METRICS`` maps each name to ``(function, direction)``, direction ``"higher"`` or
``"lower"`` telling which way is better; ``LOCALISATION_METRICS`` names the first group.
"""

from __future__ import annotations

from collections.abc import Callable

from ._core import (
    Aggregate,
    CurveResult,
    MetricResult,
    aggregate,
    boxes_to_masks,
    second_most_probable,
    to_2d,
)
from .chance import CLOSED_FORM, RANDOM_EXPECTATIONS, area_share, random_expectation
from .confidence import (
    ConfidenceResult,
    average_drop,
    explanation_weights,
    increase_in_confidence,
)
from .deletion import deletion, gaussian_blur, insertion, relevance_ranks
from .localisation import relevance_mass_accuracy, relevance_rank_accuracy
from .masking import (
    DEFAULT_SIZES,
    map_maxima,
    masked_patches,
    patch_masking,
    random_patch_centres,
)
from .pointing import (
    DEFAULT_ENERGIES,
    PointingResult,
    disc_dilate,
    extended_pointing_game,
    pointing_game,
)
from .sensitivity import (
    CollapseCurve,
    RandomisationResult,
    RandomLogitResult,
    SwapResult,
    class_collapse,
    focus,
    random_logit,
    randomisation_test,
    swap_scores,
    swap_test,
)
from .similarity import average_ranks, normalise_minmax, spearman, ssim

METRICS: dict[str, tuple[Callable[..., MetricResult | dict[str, CurveResult]], str]] = {
    "extended_pointing_game": (extended_pointing_game, "higher"),
    "pointing_game": (pointing_game, "higher"),
    "relevance_mass_accuracy": (relevance_mass_accuracy, "higher"),
    "relevance_rank_accuracy": (relevance_rank_accuracy, "higher"),
    "patch_masking": (patch_masking, "lower"),
    "average_drop": (average_drop, "lower"),
    "increase_in_confidence": (increase_in_confidence, "higher"),
    "deletion": (deletion, "lower"),
    "insertion": (insertion, "higher"),
}

#: Metrics called as ``f(maps, masks)``; the others as ``f(model, x, maps, target)``.
LOCALISATION_METRICS: frozenset[str] = frozenset(
    {
        "extended_pointing_game",
        "pointing_game",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
    }
)

__all__ = [
    "CLOSED_FORM",
    "DEFAULT_ENERGIES",
    "DEFAULT_SIZES",
    "LOCALISATION_METRICS",
    "METRICS",
    "RANDOM_EXPECTATIONS",
    "Aggregate",
    "CollapseCurve",
    "ConfidenceResult",
    "CurveResult",
    "MetricResult",
    "PointingResult",
    "RandomLogitResult",
    "RandomisationResult",
    "SwapResult",
    "aggregate",
    "area_share",
    "average_drop",
    "average_ranks",
    "boxes_to_masks",
    "class_collapse",
    "deletion",
    "disc_dilate",
    "explanation_weights",
    "extended_pointing_game",
    "focus",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion",
    "map_maxima",
    "masked_patches",
    "normalise_minmax",
    "patch_masking",
    "pointing_game",
    "random_expectation",
    "random_logit",
    "random_patch_centres",
    "randomisation_test",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "relevance_ranks",
    "second_most_probable",
    "spearman",
    "ssim",
    "swap_scores",
    "swap_test",
    "to_2d",
]
