"""Guided backpropagation and DeconvNet: gradients with a modified ReLU backward.

Instead of patching ``nn.ReLU`` modules (which misses functional ``F.relu``/``torch.relu`` calls
and, in the popular implementation, leaves patched modules behind when the forward raises), the
forward pass runs inside :class:`ReluOverride`, a :class:`torch.overrides.TorchFunctionMode`
that routes every ReLU call through :class:`_ModifiedReLU`. Being a context manager, the mode is
left on every path, including exceptions. Intercepted calls: ``nn.ReLU`` (any ``inplace``),
``F.relu`` (any ``inplace``), ``F.relu_``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu`` and
``Tensor.relu_``. Other activations (``relu6``, ``leaky_relu``, ``clamp``, ``threshold``) keep
their ordinary backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from ..targets import Target
from .gradient import input_gradient
from .registry import register

__all__ = ["ReluOverride", "deconvnet", "guided_backprop"]

Rule = Literal["guided", "deconvnet"]

_OUT_OF_PLACE = (torch.relu, torch.Tensor.relu)
_IN_PLACE = (torch.relu_, torch.Tensor.relu_, F.relu_)


class _ModifiedReLU(torch.autograd.Function):
    r"""ReLU forward, modified backward for upstream gradient :math:`g`.

    ``"guided"`` (Springenberg et al.): :math:`g' = \max(g, 0) \cdot [x > 0]`.
    ``"deconvnet"`` (Zeiler & Fergus): :math:`g' = \max(g, 0)`, ignoring the forward mask.
    """

    @staticmethod
    def forward(ctx: Any, inp: Tensor, rule: str) -> Tensor:
        out = torch.relu(inp)
        ctx.rule = rule
        if rule == "guided":
            ctx.save_for_backward(out)  # out > 0 exactly where inp > 0
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        grad = grad_out.clamp(min=0)
        if ctx.rule == "guided":
            (out,) = ctx.saved_tensors
            grad = grad.masked_fill(out <= 0, 0)
        return grad, None


class ReluOverride(TorchFunctionMode):
    """Torch-function mode that gives every ReLU call the ``rule`` backward while active.

    Out-of-place calls return the :class:`_ModifiedReLU` output; in-place calls compute it
    out of place and copy it into their argument (``t.copy_(out)``, recorded by autograd), so
    code that relies on the argument being overwritten sees the same values, and the same
    tensor object is returned. Calls on tensors that do not require grad, or made with grad
    mode off, run unchanged.
    """

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        if rule not in ("guided", "deconvnet"):
            raise ValueError(f"unknown ReLU rule {rule!r}; use 'guided' or 'deconvnet'")
        self.rule = rule

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is F.relu:
            inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        elif func in _OUT_OF_PLACE:
            inplace = False
        elif func in _IN_PLACE:
            inplace = True
        else:
            return func(*args, **kwargs)
        inp = args[0] if args else kwargs.get("input", kwargs.get("self"))
        if not (isinstance(inp, Tensor) and inp.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        # The mode is switched off while this handler runs, so these calls are not re-routed.
        out = _ModifiedReLU.apply(inp, self.rule)
        if inplace:
            inp.copy_(out)
            return inp
        return out


@register(
    "guided_backprop",
    label="Guided Backprop",
    family="gradient",
    summary="gradient with ReLUs passing only positive gradients where their input was positive",
    reference="Springenberg et al. 2015",
)
def guided_backprop(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    r"""Guided backpropagation (Springenberg et al., 2015), shape (N, C, H, W).

    The gradient :math:`\partial z_t / \partial x` in which each ReLU's backward passes only
    positive gradients at positions where its forward input was positive:
    :math:`g_{in} = [x > 0] \cdot \max(g_{out}, 0)`.
    """
    return input_gradient(model, x, target, lambda: ReluOverride("guided"))


@register(
    "deconvnet",
    label="DeconvNet",
    family="gradient",
    summary="gradient with ReLUs passing the ReLU of the incoming gradient",
    reference="Zeiler & Fergus 2014",
)
def deconvnet(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    r"""DeconvNet (Zeiler & Fergus, 2014), shape (N, C, H, W).

    The gradient :math:`\partial z_t / \partial x` in which each ReLU's backward is the ReLU of
    the incoming gradient, ignoring the forward mask: :math:`g_{in} = \max(g_{out}, 0)`.
    """
    return input_gradient(model, x, target, lambda: ReluOverride("deconvnet"))
