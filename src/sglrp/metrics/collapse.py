"""Class collapse: per layer, how similar the LRP relevance of different classes is
(Sixt et al., ICML 2020, "When explanations lie").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import Bounds
from ..propagation import RulesSpec, propagate
from ..validation import check_input, check_model, model_logits
from ._core import Aggregate, aggregate
from ._diagnostics import (
    _linear_layers,
    _targets,
)

__all__ = ["CollapseCurve", "class_collapse"]


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
