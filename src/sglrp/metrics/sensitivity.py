"""Class-sensitivity diagnostics: does an explanation depend on the class it explains?

* :func:`class_collapse`: per layer, how similar the LRP relevance of different classes is
  (Sixt et al., ICML 2020, "When explanations lie").
* :func:`swap_test`: on two-object images, relevance on the target's own object minus on
  the other object.
* :func:`random_logit`: SSIM of the maps for the target and a random other class (Sixt et
  al. 2020; Quantus ``RandomLogit``).
* :func:`focus`: share of positive relevance in the target's cells of a 2x2 mosaic
  (Arias-Duart et al. 2022).
* :func:`randomisation_test`: cascading model-parameter randomisation (Adebayo et al.,
  NeurIPS 2018).

Explanations come from a callable, so these functions do not depend on the api:
``explain_fn(x, targets) -> relevance`` of shape (N, C, H, W) or (N, 1, H, W), for
(N, C, H, W) images and (N,) long targets; e.g.
``lambda x, t: sglrp.explain(model, x, t, method="sglrp")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..validation import check_input
from ._core import MetricResult, aggregate, check_maps, check_masks
from ._diagnostics import (
    ExplainFn,
    _explain,
    _targets,
    _warn_nan,
)
from .collapse import CollapseCurve, class_collapse
from .localisation import positive_share
from .randomisation import RandomisationResult, randomisation_test, randomise_layer
from .similarity import normalise_minmax, ssim

__all__ = [
    "CollapseCurve",
    "RandomLogitResult",
    "RandomisationResult",
    "SwapResult",
    "class_collapse",
    "focus",
    "random_logit",
    "randomisation_test",
    "randomise_layer",
    "swap_scores",
    "swap_test",
]


# ----------------------------------------------------------------------------- swap test


@dataclass(frozen=True)
class SwapResult(MetricResult):
    """Swap test per image (``scores``) with its parts.

    Attributes
    ----------
    own
        (N, 2) share of the map's positive relevance on the target's own mask, for
        target a (column 0) and target b (column 1).
    other
        (N, 2) share on the other object's mask.
    """

    own: Tensor = field(default_factory=lambda: torch.empty(0, 2))
    other: Tensor = field(default_factory=lambda: torch.empty(0, 2))


def swap_scores(maps_a: Tensor, maps_b: Tensor, masks_a: Tensor, masks_b: Tensor) -> SwapResult:
    """Swap test on given maps: does each map point at its own object? Higher is better.

    With :math:`s(R, M) = \\sum_{p \\in M} R^+_p / \\sum_p R^+_p` (positive relevance share of
    channel-summed relevance, :math:`R^+ = \\max(R, 0)`),

    .. math:: \\mathrm{swap} = \\tfrac12 \\big[s(R_a, M_a) - s(R_a, M_b)\\big]
        + \\tfrac12 \\big[s(R_b, M_b) - s(R_b, M_a)\\big]

    for the map :math:`R_a` explaining object a (mask :math:`M_a`) and :math:`R_b` explaining
    object b, in [-1, 1]. 0: the maps do not discriminate between the two objects; 1: each map
    lies on its own object only; -1: each map lies on the other object.

    Parameters
    ----------
    maps_a, maps_b
        (N, H, W) or (N, C, H, W) relevance for target a and target b.
    masks_a, masks_b
        (N, H, W) bool masks of object a and object b; none may be empty (overlap is allowed,
        shared pixels count for both and cancel).

    Returns
    -------
    SwapResult
        (N,) scores; NaN (with a warning) where a map has no positive relevance.
    """
    ra, rb = check_maps(maps_a), check_maps(maps_b)
    if ra.shape != rb.shape:
        raise ValueError(f"maps_a {tuple(ra.shape)} and maps_b {tuple(rb.shape)} differ in shape")
    ma = check_masks(masks_a, tuple(ra.shape))
    mb = check_masks(masks_b, tuple(ra.shape))
    for name, m in (("masks_a", ma), ("masks_b", mb)):
        empty = ~m.flatten(1).any(dim=1)
        if empty.any():
            raise ValueError(
                f"{name} is empty for image {int(empty.nonzero()[0])}; the swap test needs "
                "both objects visible (drop such images)"
            )
    own = torch.stack([positive_share(ra, ma), positive_share(rb, mb)], dim=1)
    other = torch.stack([positive_share(ra, mb), positive_share(rb, ma)], dim=1)
    scores = (own - other).mean(dim=1)
    _warn_nan(scores, "swap test", "a map has no positive relevance")
    return SwapResult("swap_test", "higher", scores, aggregate(scores), own=own, other=other)


def swap_test(
    explain_fn: ExplainFn,
    x: Tensor,
    targets_a: Tensor | Sequence[int],
    targets_b: Tensor | Sequence[int],
    masks_a: Tensor,
    masks_b: Tensor,
) -> SwapResult:
    """Swap test on two-object images: explain each object's class, see where the map lies.

    Calls ``explain_fn(x, targets_a)`` and ``explain_fn(x, targets_b)`` and scores them with
    :func:`swap_scores` (formula there). 0 = no discrimination between the two objects.

    Parameters
    ----------
    explain_fn
        ``(x, targets) -> relevance (N, C, H, W) or (N, 1, H, W)``.
    x
        (N, C, H, W) images with two objects each.
    targets_a, targets_b
        (N,) class of object a and of object b (different in each image).
    masks_a, masks_b
        (N, H, W) bool masks of the two objects.
    """
    check_input(x)
    n = x.shape[0]
    ta = _targets(targets_a, n, name="targets_a")
    tb = _targets(targets_b, n, name="targets_b")
    same = ta == tb
    if same.any():
        raise ValueError(
            f"targets_a and targets_b are the same class ({int(ta[same][0])}) in image "
            f"{int(same.nonzero()[0])}; the swap test needs two objects of different classes"
        )
    maps_a = _explain(explain_fn, x, ta.to(x.device))
    maps_b = _explain(explain_fn, x, tb.to(x.device))
    return swap_scores(maps_a, maps_b, masks_a, masks_b)


# ----------------------------------------------------------------------------- random logit


@dataclass(frozen=True)
class RandomLogitResult(MetricResult):
    """Random-logit SSIM per image (``scores``) and the random classes drawn.

    Attributes
    ----------
    other_targets
        (N,) the class compared with each target.
    """

    other_targets: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


def random_other_classes(targets: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    """For each target, a class drawn uniformly from the ``num_classes - 1`` other classes.

    ``other = (t + u) mod C`` with ``u`` uniform in ``{1, ..., C-1}``, drawn by
    ``torch.randint`` from a ``torch.Generator`` seeded with ``seed`` (the global RNG is not
    used).
    """
    if num_classes < 2:
        raise ValueError(
            f"random-logit needs at least 2 classes to draw another class from, got {num_classes}"
        )
    g = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_classes, (targets.shape[0],), generator=g)
    return (targets.cpu() + offset) % num_classes


def random_logit(
    explain_fn: ExplainFn,
    x: Tensor,
    targets: Tensor | Sequence[int],
    num_classes: int,
    seed: int = 0,
    absolute: bool = False,
) -> RandomLogitResult:
    """Random-logit test (Sixt et al., ICML 2020; Quantus ``RandomLogit``). Lower is better.

    .. math:: \\mathrm{RL} = \\mathrm{SSIM}\\big(\\hat R_t, \\hat R_{t'}\\big),
        \\quad t' \\sim \\mathcal U(\\{0..C-1\\} \\setminus \\{t\\})

    where :math:`\\hat R` is the channel-summed map (its absolute value with ``absolute``)
    min-max normalised to [0, 1] per map (:func:`~sglrp.metrics.similarity.normalise_minmax`:
    sign kept, scale and offset removed; a constant map becomes 0), and SSIM has an 11 x 11
    Gaussian window, sigma 1.5, L = 1 (:func:`~sglrp.metrics.similarity.ssim`). A
    class-sensitive explanation gives a different map for another class, so a low value.

    Parameters
    ----------
    explain_fn
        ``(x, targets) -> relevance (N, C, H, W) or (N, 1, H, W)``.
    x
        (N, C, H, W) images (H, W >= 11).
    targets
        (N,) explained class per image.
    num_classes
        Number of classes of the model (>= 2).
    seed
        Seed of the random other classes (deterministic; global RNG untouched).
    absolute
        Compare :math:`|R|` instead of signed relevance.

    Returns
    -------
    RandomLogitResult
        (N,) SSIM scores and the classes drawn. A constant map (e.g. all zero) gives a
        warning.
    """
    check_input(x)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(
            f"random-logit needs at least 2 classes to draw another class from, got {num_classes}"
        )
    n = x.shape[0]
    t = _targets(targets, n, num_classes)
    other = random_other_classes(t, num_classes, seed)
    maps_t = _explain(explain_fn, x, t.to(x.device))
    maps_o = _explain(explain_fn, x, other.to(x.device))
    if absolute:
        maps_t, maps_o = maps_t.abs(), maps_o.abs()
    for name, m in (("target", maps_t), ("other-class", maps_o)):
        flat = m.flatten(1)
        constant = flat.amax(dim=1) == flat.amin(dim=1)
        if constant.any():
            warnings.warn(
                f"random_logit: {int(constant.sum())} {name} maps are constant (no structure "
                "to compare); they are normalised to all zeros",
                stacklevel=2,
            )
    scores = ssim(normalise_minmax(maps_t), normalise_minmax(maps_o))
    return RandomLogitResult(
        "random_logit", "lower", scores, aggregate(scores), other_targets=other
    )


# ----------------------------------------------------------------------------- focus


def focus(
    maps: Tensor, cell_masks: Tensor, cell_labels: Tensor, targets: Tensor | Sequence[int]
) -> MetricResult:
    """Focus on mosaics (Arias-Duart, Parés, Garcia-Gasulla, Giménez-Ábalos 2022). Higher
    is better.

    .. math:: \\mathrm{Focus} = \\frac{\\sum_{p \\in \\cup\\{Q_k : y_k = t\\}} R^+_p}
        {\\sum_p R^+_p}

    the share of positive (channel-summed) relevance in the mosaic cells :math:`Q_k` whose
    class :math:`y_k` is the target :math:`t`. On the paper's 2x2 mosaics (two target
    cells) a uniform map scores 0.5 and a perfect one 1.

    Parameters
    ----------
    maps
        (N, H, W) or (N, C, H, W) relevance for ``targets``.
    cell_masks
        (K, H, W) bool masks of the K cells (shared by all images) or (N, K, H, W).
    cell_labels
        (N, K) class of each cell.
    targets
        (N,) the explained class; each image needs at least one cell of it.

    Returns
    -------
    MetricResult
        (N,) scores in [0, 1]; NaN (with a warning) where a map has no positive relevance.
    """
    r = check_maps(maps)
    n, h, w = r.shape
    if not isinstance(cell_masks, Tensor) or cell_masks.ndim not in (3, 4):
        raise ValueError("cell_masks must be a (K, H, W) or (N, K, H, W) boolean tensor")
    cells = cell_masks.to(r.device) != 0
    if cells.ndim == 3:
        cells = cells.expand(n, -1, -1, -1)
    k = cells.shape[1]
    if cells.shape != (n, k, h, w):
        raise ValueError(
            f"cell_masks must have shape (K, {h}, {w}) or ({n}, K, {h}, {w}), "
            f"got {tuple(cell_masks.shape)}"
        )
    labels = torch.as_tensor(cell_labels, device=r.device)
    if labels.shape != (n, k):
        raise ValueError(f"cell_labels must have shape ({n}, {k}), got {tuple(labels.shape)}")
    t = _targets(targets, n).to(r.device)
    is_target = labels == t[:, None]
    absent = ~is_target.any(dim=1)
    if absent.any():
        raise ValueError(
            f"image {int(absent.nonzero()[0])} has no cell of its target class; focus needs "
            "mosaics with the target in known cells"
        )
    inside = (cells & is_target[..., None, None]).any(dim=1)
    empty = ~inside.flatten(1).any(dim=1)
    if empty.any():
        raise ValueError(f"the target cells of image {int(empty.nonzero()[0])} are empty masks")
    scores = positive_share(r, inside)
    _warn_nan(scores, "focus", "the map has no positive relevance")
    return MetricResult("focus", "higher", scores, aggregate(scores))
