"""The engine's autograd nodes: each keeps a value and gives it the backward of a rule.

All of them work on the relevance per unit of activation :math:`s = R / a` that the backward
pass carries (see :mod:`sglrp.propagation.engine`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .state import RuleState, safe_ratio, signed_epsilon


class RuleNode(torch.autograd.Function):
    """Output keeps the layer's value; backward is the rule's (see :class:`RuleState`)."""

    @staticmethod
    def forward(ctx, x: Tensor, sink: Tensor | None, value: Tensor, state: RuleState) -> Tensor:
        ctx.state = state
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        s_in, relevance = ctx.state.backward(grad)
        return s_in, relevance, None, None


class PassNode(torch.autograd.Function):
    """Identity rule: relevance passes unchanged through an elementwise function,
    :math:`R_{in} = R_{out}`, i.e. :math:`s_{in} = s_{out}\\, y / x` (stabilised)."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, eps: float) -> Tensor:
        x = x.detach()
        if eps > 0:  # x + eps sign(x) is never 0: no zero mask needed
            d = x + signed_epsilon(x, eps)
            ctx.ratio = torch.div(value.detach(), d, out=d)
        else:
            ctx.ratio = safe_ratio(value, x.clone())
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.ratio, None, None


class Replace(torch.autograd.Function):
    """The exact ``value`` forward, the backward of ``surrogate`` (a function of the same
    inputs built from ordinary operations, e.g. with a denominator held constant)."""

    @staticmethod
    def forward(ctx, surrogate: Tensor, value: Tensor) -> Tensor:
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class FusedRelu(torch.autograd.Function):
    """In-place ReLU on a rule layer's fresh output whose mask was folded into the rule's
    ratios (which also clamped ``value`` already): its backward is the identity and it saves
    nothing."""

    @staticmethod
    def forward(ctx, value: Tensor) -> Tensor:
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad


class MaxPoolIndices(torch.autograd.Function):
    """2-D max pooling that keeps only the indices for its backward (not its input): all
    relevance to the winner of each window."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> Tensor:
        out, indices = F.max_pool2d(
            x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
        )
        ctx.save_for_backward(indices)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        shape = ctx.input_shape
        lead = tuple(shape[:-2])
        flat = grad.reshape(*lead, -1)
        out = flat.new_zeros(*lead, shape[-2] * shape[-1])
        out.scatter_add_(-1, indices.reshape(*lead, -1), flat)
        return out.reshape(shape), None, None, None, None, None


class Tap(torch.autograd.Function):
    """Identity that records the gradient arriving at a layer's output.

    In place (the same tensor object, so BatchNorm merging and ReLU fusion still recognise
    it) when the output comes from one of the engine's own nodes, which do not save it;
    otherwise a copy, since e.g. ``nn.ReLU`` saves its output for the backward pass.
    """

    @staticmethod
    def forward(ctx, value: Tensor, sink: list, inplace: bool) -> Tensor:
        ctx.sink = sink
        if not inplace:
            return value.clone()
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.sink.append(grad)
        return grad, None, None


class GradMask(torch.autograd.Function):
    """Identity in the forward pass; the backward multiplies the relevance per activation by
    a mask (neurons left out of a restricted propagation)."""

    @staticmethod
    def forward(ctx, value: Tensor, mask: Tensor, inplace: bool) -> Tensor:
        ctx.mask = mask
        if not inplace:
            return value.clone()
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.mask, None, None


ENGINE_FUNCTIONS = (RuleNode, PassNode, Replace, FusedRelu, MaxPoolIndices, Tap, GradMask)
"""The engine's own autograd functions (their nodes are always allowed in the graph)."""

UNSAVED_OUTPUTS = tuple(node._backward_cls for node in ENGINE_FUNCTIONS)
"""Backward nodes of the engine's functions, none of which keeps its output."""
