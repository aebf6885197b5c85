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

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._guard import preserved
from ..presets import Bounds
from ..propagation import RulesSpec, propagate
from ..propagation.layers import LINEAR_TYPES
from ..targets import TargetSpec, resolve_targets
from ..validation import check_input, check_model, model_logits
from ._core import Aggregate, MetricResult, aggregate, check_maps, check_masks
from .localisation import positive_share
from .similarity import normalise_minmax, spearman, ssim

ExplainFn = Callable[[Tensor, Tensor], Tensor]
"""``explain_fn(x, targets) -> relevance (N, C, H, W) or (N, 1, H, W)``."""

ModelExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain(model, x, targets) -> relevance``: an explanation of a given model."""

__all__ = [
    "CollapseCurve",
    "RandomLogitResult",
    "RandomisationResult",
    "SwapResult",
    "class_collapse",
    "focus",
    "random_logit",
    "randomisation_test",
    "swap_scores",
    "swap_test",
]


# ----------------------------------------------------------------------------- helpers


def _targets(targets: object, n: int, num_classes: int | None = None, name: str = "targets"):
    """(N,) long class indices from a tensor or sequence; errors name the argument."""
    t = torch.as_tensor(targets)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.ndim == 0:
        t = t.expand(n).clone()
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), got {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} holds a negative class index ({int(t.min())})")
    if num_classes is not None and t.numel() and int(t.max()) >= num_classes:
        raise ValueError(
            f"{name} holds class {int(t.max())}, out of range for {num_classes} classes"
        )
    return t


def _explain(explain_fn: ExplainFn, x: Tensor, targets: Tensor) -> Tensor:
    """Call ``explain_fn`` and return its checked, channel-summed (N, H, W) maps."""
    out = explain_fn(x, targets)
    if not isinstance(out, Tensor):
        raise TypeError(f"explain_fn must return a torch.Tensor, got {type(out).__name__}")
    n, _, h, w = x.shape
    if out.ndim != 4 or out.shape[0] != n or tuple(out.shape[-2:]) != (h, w):
        raise ValueError(
            f"explain_fn must return relevance of shape (N, C, H, W) or (N, 1, H, W) = "
            f"({n}, ., {h}, {w}) for one target per image, got {tuple(out.shape)}; "
            "upsample CAM maps to the input size"
        )
    return check_maps(out)


def _warn_nan(scores: Tensor, what: str, reason: str) -> None:
    bad = int(torch.isnan(scores).sum())
    if bad:
        warnings.warn(
            f"{what}: undefined for {bad} of {scores.numel()} scores ({reason}); they are "
            "NaN and left out of the means",
            stacklevel=3,
        )


def _execution_order(model: nn.Module, x: Tensor, names: Sequence[str]) -> list[str]:
    """``names`` in the order their modules first run in a forward pass of ``x``."""
    modules = dict(model.named_modules())
    order: list[str] = []
    with preserved(model) as hooks, torch.no_grad():
        for name in names:

            def hook(module, args, output, _name=name):
                if _name not in order:
                    order.append(_name)

            hooks.add(modules[name].register_forward_hook(hook))
        model(x)
    missing = [name for name in names if name not in order]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} does not run in the model's forward pass; leave it out"
        )
    return order


def _linear_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and isinstance(m, LINEAR_TYPES)]


# ----------------------------------------------------------------------------- collapse


@dataclass(frozen=True)
class CollapseCurve:
    """Class-collapse curve: mean pairwise cosine of per-class relevance at each layer.

    Attributes
    ----------
    layers
        Layer names from the output towards the input; the last entry is ``"input"`` (the
        input relevance).
    mean
        (L,) mean over images of the per-image value (NaN excluded).
    per_image
        (N, L) mean pairwise cosine over the class pairs of each image.
    classes
        (K,) the classes compared.
    aggregates
        One :class:`~sglrp.metrics.Aggregate` (mean with a 95 % interval) per layer.
    """

    layers: tuple[str, ...]
    mean: Tensor
    per_image: Tensor
    classes: Tensor
    aggregates: tuple[Aggregate, ...]

    def as_dict(self) -> dict[str, float]:
        """``{layer: mean}`` in curve order."""
        return {name: float(v) for name, v in zip(self.layers, self.mean, strict=True)}


def _one_hot(logits: Tensor, targets: Tensor) -> Tensor:
    return F.one_hot(targets, logits.shape[1]).to(logits.dtype)


def _mean_pairwise_cosine(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K, D) -> per-image mean cosine over the K(K-1)/2 pairs, and a zero-vector flag."""
    v = vectors.flatten(2).to(torch.float64)
    norm = v.norm(dim=2)
    unit = v / norm.clamp(min=torch.finfo(torch.float64).tiny)[..., None]
    gram = unit @ unit.transpose(1, 2)
    i, j = torch.triu_indices(v.shape[1], v.shape[1], offset=1, device=v.device)
    pairs = gram[:, i, j]
    defined = (norm[:, i] > 0) & (norm[:, j] > 0)
    per_image = pairs.masked_fill(~defined, math.nan).nanmean(dim=1)
    return per_image, ~defined.all(dim=1)


def class_collapse(
    model: nn.Module,
    x: Tensor,
    rules: RulesSpec = "dtd",
    layers: Sequence[str] | None = None,
    classes: Sequence[int] | Tensor | None = None,
    bounds: Bounds | None = None,
    epsilon: float | None = None,
) -> CollapseCurve:
    """Class-collapse curve of LRP relevance (Sixt, Granz, Landgraf, ICML 2020).

    For each class :math:`c` the output relevance is the one-hot vector :math:`e_c` and is
    propagated with ``rules``; :math:`R^{(l)}_c` is the relevance at the output of layer
    :math:`l` (flattened). Per image and layer,

    .. math:: \\mathrm{collapse}_l = \\frac{2}{K(K-1)} \\sum_{c < c'}
        \\frac{\\langle R^{(l)}_c, R^{(l)}_{c'} \\rangle}{\\|R^{(l)}_c\\| \\|R^{(l)}_{c'}\\|}.

    At the logits it is 0 (distinct one-hot vectors). A value near 1 means the relevance no
    longer depends on the class: z+ through a stack of dense layers drives it there, and then
    LRP maps are class-independent.

    Parameters
    ----------
    model, x
        Classifier returning (N, classes) logits, and the (N, C, H, W) input batch.
    rules, bounds, epsilon
        As in :func:`sglrp.propagation.propagate`.
    layers
        Module names to record (any order). Default: every conv and linear layer. The curve
        lists them in execution order from the output towards the input, then ``"input"``.
    classes
        The K >= 2 classes to compare (default: all). All K come from one forward pass and
        K backward passes.

    Returns
    -------
    CollapseCurve
        A pair involving a class whose relevance at a layer is all zero is left out (with a
        warning); an image with no defined pair is NaN.
    """
    check_model(model)
    check_input(x)
    n = x.shape[0]
    num_classes = model_logits(model, x[:1]).shape[1]
    if classes is None:
        cls = torch.arange(num_classes)
    else:
        cls = torch.as_tensor(classes)
        if cls.ndim != 1:
            raise ValueError(f"classes must be a 1-D sequence, got shape {tuple(cls.shape)}")
        cls = _targets(cls, cls.shape[0], num_classes, "classes")
    if cls.numel() < 2 or cls.unique().numel() != cls.numel():
        raise ValueError(
            f"class_collapse compares at least 2 distinct classes, got {cls.tolist()}; pass "
            "classes=None to compare all"
        )
    names = list(layers) if layers is not None else _linear_layers(model)
    if not names:
        raise ValueError("the model has no conv or linear layer; pass layers=[...] to record")
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r}; use names from model.named_modules()")
    targets = cls.to(x.device).expand(n, -1)
    result = propagate(
        model,
        x,
        targets,
        output_relevance=_one_hot,
        rules=rules,
        bounds=bounds,
        record=names,
        epsilon=epsilon,
    )
    missing = [name for name in names if name not in result.layer_output]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} does not run in the model's forward pass; leave it out"
        )
    order = [*reversed(list(result.layer_output)), "input"]
    columns, degenerate = [], []
    for name in order:
        rel = result.input_relevance if name == "input" else result.layer_relevance[name]
        per_image, zero = _mean_pairwise_cosine(rel)
        columns.append(per_image)
        if zero.any():
            degenerate.append(f"{name} ({int(zero.sum())} images)")
    if degenerate:
        warnings.warn(
            "class_collapse: some classes get all-zero relevance at "
            + ", ".join(degenerate)
            + "; pairs with them are left out of the mean cosine",
            stacklevel=2,
        )
    per_image = torch.stack(columns, dim=1)
    return CollapseCurve(
        layers=tuple(order),
        mean=per_image.nanmean(dim=0),
        per_image=per_image,
        classes=cls,
        aggregates=tuple(aggregate(per_image[:, k]) for k in range(per_image.shape[1])),
    )


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


# ----------------------------------------------------------------------------- randomisation


@dataclass(frozen=True)
class RandomisationResult:
    """Cascading model-parameter randomisation: similarity to the original map per step.

    Attributes
    ----------
    layers
        Layer names in the order they were randomised (output layer first); step ``k``
        has layers ``0..k`` randomised.
    spearman
        (N, L) Spearman rank correlation of :math:`|R|` with the original map.
    ssim
        (N, L) SSIM of the min-max normalised :math:`|R|` with the original map's.
    """

    layers: tuple[str, ...]
    spearman: Tensor
    ssim: Tensor

    @property
    def spearman_mean(self) -> Tensor:
        """(L,) mean over images (NaN excluded)."""
        return self.spearman.nanmean(dim=0)

    @property
    def ssim_mean(self) -> Tensor:
        """(L,) mean over images."""
        return self.ssim.nanmean(dim=0)


def randomise_layer(layer: nn.Module, generator: torch.Generator) -> None:
    """Redraw each parameter of ``layer`` (in place) with its own mean and spread.

    For every parameter :math:`w` of the module itself (registration order),
    :math:`w \\leftarrow \\bar w + \\sigma_w \\varepsilon`, :math:`\\varepsilon \\sim
    \\mathcal N(0, 1)` elementwise from ``generator`` (``torch.randn``), with :math:`\\bar w`
    the mean and :math:`\\sigma_w` the population standard deviation of :math:`w`; so the
    layer keeps its scale (a constant parameter, e.g. zero biases, stays constant).
    """
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            mean, std = p.mean(), p.std(correction=0)
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.copy_(mean + std * noise.to(p.device))


def randomisation_test(
    model: nn.Module,
    x: Tensor,
    targets: TargetSpec,
    explain: ModelExplainFn,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> RandomisationResult:
    """Cascading model-parameter randomisation test (Adebayo et al., NeurIPS 2018).

    On a deep copy of ``model`` (the model itself is never changed), the parameterised
    layers are randomised one at a time from the output layer downwards, cumulatively
    (:func:`randomise_layer`, one ``torch.Generator`` seeded with ``seed`` for all draws, in
    that order). After each step the map is compared with the original map of the copy:

    .. math:: \\rho_k = \\mathrm{Spearman}(|R|, |R^{(k)}|), \\quad
        s_k = \\mathrm{SSIM}(\\widehat{|R|}, \\widehat{|R^{(k)}|})

    with channel-summed maps and :math:`\\widehat{\\cdot}` the per-map min-max normalisation
    to [0, 1]. A method whose maps depend on the learned parameters gives values falling
    towards 0 as more layers are randomised; maps that stay similar do not explain the model.

    Parameters
    ----------
    model
        Classifier; deep-copied, so it must support ``copy.deepcopy``.
    x
        (N, C, H, W) images (H, W >= 11 for SSIM).
    targets
        Class indices (N,) or an int, ``"predicted"``, ``"second"``; strings are resolved
        once on the original parameters and kept fixed through the randomisation.
    explain
        ``explain(model_copy, x, targets) -> relevance (N, C, H, W) or (N, 1, H, W)``, e.g.
        ``lambda m, x, t: sglrp.explain(m, x, t, method="lrp")``.
    layers
        Module names to randomise (each with parameters); default every conv and linear
        layer. They are randomised in reverse execution order whatever the order given.
    seed
        Seed of the random parameters (the global RNG is not used).

    Returns
    -------
    RandomisationResult
        NaN Spearman values (constant maps) come with a warning.
    """
    check_model(model)
    check_input(x)
    x = x.detach()
    try:
        work = copy.deepcopy(model)
    except Exception as err:
        raise TypeError(
            f"randomisation_test needs a deep copy of the model and copy.deepcopy failed "
            f"({err}); make the model deep-copyable"
        ) from err
    modules = dict(work.named_modules())
    names = list(layers) if layers is not None else _linear_layers(work)
    if not names:
        raise ValueError("the model has no conv or linear layer; pass layers=[...]")
    for name in names:
        if name not in modules:
            raise ValueError(f"unknown layer {name!r}; use names from model.named_modules()")
        if next(iter(modules[name].parameters(recurse=False)), None) is None:
            raise ValueError(f"layer {name!r} has no parameters of its own to randomise")
    order = list(reversed(_execution_order(work, x, names)))
    t = resolve_targets(targets, model_logits(work, x))
    if t.ndim != 1:
        raise ValueError("randomisation_test takes one target per image: shape (N,)")

    def absolute_map(m: nn.Module) -> Tensor:
        return _explain(lambda xx, tt: explain(m, xx, tt), x, t).abs()

    original = absolute_map(work)
    original_norm = normalise_minmax(original)
    generator = torch.Generator().manual_seed(seed)
    rho, sim = [], []
    for name in order:
        randomise_layer(modules[name], generator)
        current = absolute_map(work)
        rho.append(spearman(original, current))
        sim.append(ssim(original_norm, normalise_minmax(current)))
    spearman_all = torch.stack(rho, dim=1)
    _warn_nan(spearman_all, "randomisation test", "a map is constant, so it has no ranking")
    return RandomisationResult(tuple(order), spearman_all, torch.stack(sim, dim=1))
