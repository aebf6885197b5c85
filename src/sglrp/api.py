"""The one-verb API: :func:`explain`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._checks import TargetSpec, check_input, check_model, model_logits, resolve_targets
from ._guard import preserved
from .presets import Bounds
from .propagation import OUTPUT_RELEVANCE, RulesSpec, propagate
from .propagation.output import OutputRelevance, sglrp_dual_part, sglrp_target_part

LRP_METHODS = tuple(OUTPUT_RELEVANCE)
#: Registry methods that use the LRP rules and so take ``rules`` and ``bounds``.
_RULE_METHODS = {"relevance_cam"}


def _method_registry() -> dict[str, Callable]:
    from .methods import METHODS

    return METHODS


def available_methods() -> list[str]:
    """Names accepted by ``explain(method=...)``."""
    return [*LRP_METHODS, *_method_registry()]


def explain(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    **options,
) -> Tensor:
    """Explain a classifier's decision for ``target`` with a relevance map per input pixel.

    Parameters
    ----------
    model
        Classifier returning (N, classes) logits (pre-softmax). It is left exactly as it was.
    x
        Input batch (N, C, H, W), floating point, already preprocessed for the model.
    target
        Class index (int), sequence or 1-D tensor of N indices, ``"predicted"``, ``"second"``,
        or an (N, K) tensor to explain K targets per image in one call.
    method
        ``"sglrp"`` (softmax gradient, paper eq. 10), ``"lrp"`` (z_t, eq. 3), ``"clrp"``
        (z_t at t, -z_t/(C-1) elsewhere, eq. 7), a callable ``(logits, targets) -> (N, C)``
        output relevance, or one of the gradient/CAM methods (see :func:`available_methods`).
    rules
        LRP rule preset (``"dtd"``: z+ everywhere and Z^B at the first layer, the paper's
        choice) or a rule map: ``[(module type or name, rule), ...]``, first match wins.
    bounds
        ``(low, high)`` for Z^B, scalars or per-channel tensors
        (:func:`sglrp.bounds_from_normalization`). ``None``: each image's own per-channel
        minimum and maximum.
    **options
        ``epsilon`` for epsilon rules; ``variant="authors"`` for SGLRP as in the authors'
        released code (target and dual propagated separately, dual rescaled to the target's
        total, logits passed through ReLU for the dual); method options for other methods.

    Returns
    -------
    torch.Tensor
        Signed relevance of x's shape (N, C, H, W), or (N, K, C, H, W) for K targets per image.
        CAM methods give one channel. Use :func:`sglrp.heatmap` for the paper's displayed map.
    """
    check_model(model)
    check_input(x)
    if callable(method) or method in LRP_METHODS:
        variant = options.pop("variant", "paper")
        epsilon = options.pop("epsilon", None)
        if options:
            raise TypeError(f"unexpected options for {method!r}: {', '.join(options)}")
        if variant == "authors" and method == "sglrp":
            targets = resolve_targets(target, model_logits(model, x))
            return _sglrp_authors(model, x, targets, rules, bounds, epsilon)
        if variant != "paper":
            raise ValueError(f"unknown variant {variant!r}; use 'paper' or 'authors' (SGLRP only)")
        return propagate(model, x, target, method, rules, bounds, epsilon=epsilon).input_relevance
    methods = _method_registry()
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    fn = methods[method]
    targets = resolve_targets(target, model_logits(model, x))
    if method in _RULE_METHODS:
        options = {"rules": rules, "bounds": bounds, **options}
    with preserved(model):
        if targets.ndim == 1:
            return fn(model, x, targets, **options)
        return torch.stack(
            [fn(model, x, targets[:, k], **options) for k in range(targets.shape[1])], dim=1
        )


def _sglrp_authors(model, x, targets, rules, bounds, epsilon) -> Tensor:
    """SGLRP as the authors' code computes it: :math:`T - D \\sum T / \\sum D` per image."""
    columns = targets if targets.ndim == 2 else targets[:, None]
    maps = []
    for k in range(columns.shape[1]):
        t = columns[:, k]
        pair = torch.stack([t, t], dim=1)
        calls = iter((sglrp_target_part, lambda z, tt: sglrp_dual_part(z, tt, logit_relu=True)))

        def part(z: Tensor, tt: Tensor, _calls=calls) -> Tensor:
            return next(_calls)(z, tt)

        both = propagate(model, x, pair, part, rules, bounds, epsilon=epsilon).input_relevance
        target_map, dual_map = both[:, 0], both[:, 1]
        dims = tuple(range(1, target_map.ndim))
        t_sum = target_map.sum(dim=dims, keepdim=True)
        d_sum = dual_map.sum(dim=dims, keepdim=True)
        scale = torch.where(d_sum == 0, torch.zeros_like(d_sum), t_sum / d_sum)
        maps.append(target_map - dual_map * scale)
    out = torch.stack(maps, dim=1)
    return out if targets.ndim == 2 else out[:, 0]


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
