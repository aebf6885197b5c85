"""The one-verb API: :func:`explain`, and :func:`heatmap` for the paper's displayed map."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .methods import available, call, get
from .methods.lrp import output_relevance_method
from .presets import Bounds
from .propagation import RulesSpec
from .propagation.layers import WeightCache, shared_cache
from .propagation.output import OutputRelevance
from .targets import Target, TargetSpec

__all__ = ["Explainer", "available_methods", "explain", "heatmap"]


def available_methods() -> list[str]:
    """Names accepted by ``explain(method=...)`` (the method registry's, :mod:`sglrp.methods`)."""
    return available()


def explain(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec | Target = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec | None = None,
    bounds: Bounds | None = None,
    **options: Any,
) -> Tensor:
    """Explain a classifier's decision for ``target`` with a relevance map per input pixel.

    Parameters
    ----------
    model
        Classifier returning (N, classes) logits (pre-softmax). It is left exactly as it was.
    x
        Input batch (N, C, H, W), floating point, already preprocessed for the model. It is
        left exactly as it was (the model sees a private copy).
    target
        Class index (int), sequence or 1-D tensor of N indices, ``"predicted"``, ``"second"``,
        or an (N, K) tensor to explain K targets per image in one call.
    method
        A registered method (:func:`sglrp.methods.available`): ``"sglrp"`` (softmax gradient,
        paper eq. 10), ``"lrp"`` (z_t, eq. 3), ``"clrp"`` (eq. 7), gradient and CAM methods,
        ``"random"``, or one added with :func:`sglrp.methods.register`. A callable
        ``(logits (N, C), targets (N,)) -> (N, C)`` is an output relevance of your own,
        propagated with the LRP rules.
    rules
        For methods that propagate with LRP rules: a preset (``"dtd"``, the default: z+
        everywhere and Z^B at the first layer, the paper's choice) or a rule map
        ``[(module type or name, rule), ...]``, first match wins.
    bounds
        ``(low, high)`` for Z^B, scalars or per-channel tensors
        (:func:`sglrp.bounds_from_normalization`). ``None``: each image's own per-channel
        minimum and maximum.
    **options
        The method's options (its :class:`~sglrp.methods.Method` record lists them):
        ``epsilon``, ``variant`` (SGLRP), ``layer`` (CAM methods), ``seed`` (random), ...

    Returns
    -------
    torch.Tensor
        Signed relevance of x's shape (N, C, H, W), or (N, K, C, H, W) for K targets per image.
        Map methods (Grad-CAM, Relevance-CAM, random) give one channel. Use
        :func:`sglrp.heatmap` for the paper's displayed map.
    """
    if rules is not None:
        options["rules"] = rules
    if bounds is not None:
        options["bounds"] = bounds
    if callable(method):
        method = output_relevance_method(method)
    return call(method, model, x, target, **options)


def heatmap(relevance: Tensor, normalize: bool = True) -> Tensor:
    """The paper's displayed map: ``R.clamp(min=0)`` summed over channels.

    ``relevance`` (..., C, H, W) gives (..., H, W); with ``normalize`` each map is divided by
    the maximum absolute channel-summed relevance (an all-zero map stays zero).
    """
    if relevance.ndim < 3:
        raise ValueError(f"relevance must have shape (..., C, H, W), got {tuple(relevance.shape)}")
    positive = relevance.clamp(min=0).sum(dim=-3)
    if not normalize:
        return positive
    scale = relevance.sum(dim=-3).abs().flatten(-2).amax(dim=-1)[..., None, None]
    return torch.where(scale > 0, positive / scale.clamp(min=torch.finfo(scale.dtype).tiny), 0.0)


class Explainer:
    """One model, one method, many calls: what can be prepared once is prepared once.

    ``Explainer(model, method, rules, bounds, **options)(x, target)`` equals
    ``explain(model, x, target, method, rules, bounds, **options)``. The method record, the
    options' check and the modified weights of the LRP rules (:math:`w^+`, :math:`w^-`, the
    batch norm merged into them) are kept across calls; a weight is rebuilt when its
    parameter changes in place (its version changes), so training between calls is safe.

    Parameters
    ----------
    model, method, rules, bounds, **options
        As for :func:`explain`.
    keep_weights
        Largest modified weight (in elements) to keep between calls; None keeps every one
        (VGG16's first classifier layer alone is 103 M weights, 412 MB as float32).

    Examples
    --------
    >>> explainer = sglrp.Explainer(model, "sglrp", bounds=bounds)  # doctest: +SKIP
    >>> maps = [explainer(x, "predicted") for x in batches]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | OutputRelevance = "sglrp",
        rules: RulesSpec | None = None,
        bounds: Bounds | None = None,
        keep_weights: int | None = None,
        **options: Any,
    ) -> None:
        self.model = model
        self.record = output_relevance_method(method) if callable(method) else get(method)
        if rules is not None:
            options["rules"] = rules
        if bounds is not None:
            options["bounds"] = bounds
        unknown = [k for k in options if k not in self.record.options]
        if unknown:
            raise TypeError(
                f"method {self.record.name!r} does not take {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(self.record.options) or 'no options'}"
            )
        self.options = options
        self.cache = WeightCache(max_elements=keep_weights if keep_weights is not None else 1 << 62)

    def __call__(self, x: Tensor, target: TargetSpec | Target = "predicted") -> Tensor:
        with shared_cache(self.cache):
            return call(self.record, self.model, x, target, **self.options)
