"""Helpers of the class-sensitivity diagnostics (:mod:`sglrp.metrics.sensitivity`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._guard import preserved
from ..propagation.layers import LINEAR_TYPES
from ._core import check_maps

ExplainFn = Callable[[Tensor, Tensor], Tensor]
"""``explain_fn(x, targets) -> relevance (N, C, H, W) or (N, 1, H, W)``."""

ModelExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain(model, x, targets) -> relevance``: an explanation of a given model."""


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
    """Every conv and linear layer whose forward runs: not the ``out_proj`` of an
    ``nn.MultiheadAttention`` (the attention uses its weight directly, its forward never
    runs)."""
    unused = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return [
        name
        for name, m in model.named_modules()
        if name and isinstance(m, LINEAR_TYPES) and id(m) not in unused
    ]
