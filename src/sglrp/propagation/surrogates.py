"""Surrogates: ordinary operations whose gradient is a rule, paired with the exact value.

:class:`~sglrp.propagation.nodes.Replace` gives the exact forward value and the surrogate's
backward: normalisation with its standard deviation held constant (AttnLRP), max pooling
spread in proportion to its inputs (iNNvestigate 1.0.0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .nodes import Replace
from .operations import bind


def constant_std_norm(func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """The normalisation rebuilt from ordinary operations with its standard deviation (or
    root mean square) detached: linear in the input (AttnLRP; LXT ``layer_norm_forward``)."""
    if func is F.layer_norm or func is F.rms_norm:
        if func is F.layer_norm:
            b = bind(("input", "normalized_shape", "weight", "bias", "eps"), args, kwargs)
        else:
            b = bind(("input", "normalized_shape", "weight", "eps"), args, kwargs)
        x = b["input"]
        dims = tuple(range(-len(tuple(b["normalized_shape"])), 0))
        eps = b.get("eps")
        if eps is None:
            eps = 1e-5 if func is F.layer_norm else torch.finfo(x.dtype).eps
        centred = x - x.mean(dim=dims, keepdim=True) if func is F.layer_norm else x
        scale = (centred.detach().pow(2).mean(dim=dims, keepdim=True) + eps).rsqrt()
        y = centred * scale
        if b.get("weight") is not None:
            y = y * b["weight"]
        if b.get("bias") is not None:
            y = y + b["bias"]
        return y
    if func is F.group_norm:
        b = bind(("input", "num_groups", "weight", "bias", "eps"), args, kwargs)
        x = b["input"]
        n, c = x.shape[:2]
        grouped = x.reshape(n, int(b["num_groups"]), -1)
        centred = grouped - grouped.mean(dim=-1, keepdim=True)
        scale = (centred.detach().pow(2).mean(dim=-1, keepdim=True) + b.get("eps", 1e-5)).rsqrt()
        y = (centred * scale).reshape(x.shape)
        shape = (1, c, *([1] * (x.ndim - 2)))
        if b.get("weight") is not None:
            y = y * b["weight"].view(shape)
        if b.get("bias") is not None:
            y = y + b["bias"].view(shape)
        return y
    b = bind(
        (
            "input",
            "running_mean",
            "running_var",
            "weight",
            "bias",
            "use_input_stats",
            "momentum",
            "eps",
        ),
        args,
        kwargs,
    )
    x = b["input"]
    shape = (1, x.shape[1], *([1] * (x.ndim - 2)))
    dims = tuple(range(2, x.ndim))
    if b.get("use_input_stats", True) or b.get("running_mean") is None:
        centred = x - x.mean(dim=dims, keepdim=True)
        scale = (centred.detach().pow(2).mean(dim=dims, keepdim=True) + b.get("eps", 1e-5)).rsqrt()
    else:
        centred = x - b["running_mean"].view(shape)
        scale = (b["running_var"].view(shape) + b.get("eps", 1e-5)).rsqrt()
    y = centred * scale
    if b.get("weight") is not None:
        y = y * b["weight"].view(shape)
    if b.get("bias") is not None:
        y = y + b["bias"].view(shape)
    return y


def proportional_pool(x, kernel, stride, padding, dilation, ceil_mode, where: str) -> Tensor:
    r"""Max pooling whose relevance is spread over the window in proportion to the inputs:
    :math:`s_{in} = s_{out} \max_w x / \sum_w x` (sum pooling with the ratio held constant)."""
    if dilation not in (1, (1, 1), [1, 1]):
        raise ValueError(f"ProportionalPool on {where} does not support dilation")
    with torch.no_grad():
        value = F.max_pool2d(x, kernel, stride, padding, 1, ceil_mode)
        sums = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, True, 1)
        ratio = torch.where(sums == 0, torch.zeros_like(sums), value / sums)
    surrogate = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, True, 1) * ratio
    return Replace.apply(surrogate, value)
