"""An LRP-0 reference that is independent of the engine.

The same network with every nonlinearity's ratio a/z, every gate and every normaliser's
standard deviation detached is linear in its input along the computed path; LRP-0 relevance
from output relevance R is then x * d(sum_n (R_n / z_n) z_n)/dx of that network. This module
builds that network with a small torch-function mode of its own (nothing of
``sglrp.propagation`` is used) and returns the input relevance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

T = torch.Tensor
UNARY = {
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.softplus,
    torch.sigmoid,
    T.sigmoid,
    torch.tanh,
    T.tanh,
}
GATES = {F.hardsigmoid, torch.sigmoid, T.sigmoid}
PRODUCTS = {torch.mul, T.mul, T.__mul__, T.__rmul__}


def _plain(func, args, kwargs):
    """``func`` out of place (``inplace`` arguments turned off)."""
    kwargs = {k: (False if k == "inplace" else v) for k, v in kwargs.items()}
    args = tuple(False if isinstance(a, bool) and i > 0 else a for i, a in enumerate(args))
    return func(*args, **kwargs)


class DetachedReference(TorchFunctionMode):
    """Forward of the linearised network (see the module docstring)."""

    def __init__(self, attention_constant: bool = True) -> None:
        super().__init__()
        # id -> the gate tensor itself: holding it keeps its id from being reused by a later
        # tensor (a bare set of ids matched a later block's input to a freed gate's id)
        self.gates: dict[int, Tensor] = {}
        self.attention_constant = attention_constant

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in UNARY and args and isinstance(args[0], Tensor) and args[0].requires_grad:
            x = args[0]
            y = _plain(func, args, kwargs)
            ratio = torch.where(x == 0, torch.zeros_like(y), y / x).detach()
            out = x * ratio
            if func in GATES:
                self.gates[id(out)] = out
            return out
        if func in PRODUCTS and len(args) == 2:
            a, b = args
            if (
                isinstance(a, Tensor)
                and isinstance(b, Tensor)
                and a.requires_grad
                and b.requires_grad
            ):
                gate_a, gate_b = (self.gates.get(id(t)) is t for t in (a, b))
                if gate_b or (not gate_a and b.numel() < a.numel()):
                    return a * b.detach()
                return a.detach() * b
        if func is F.glu:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            signal, gate = args[0].chunk(2, dim=dim)
            return signal * torch.sigmoid(gate).detach()
        if func is F.layer_norm:
            x, shape = args[0], args[1]
            weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
            bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
            eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
            dims = tuple(range(-len(shape), 0))
            mean = x.mean(dim=dims, keepdim=True)
            std = torch.sqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + eps).detach()
            y = (x - mean) / std
            y = y * weight if weight is not None else y
            return y + bias if bias is not None else y
        if func is F.group_norm:
            x, groups = args[0], args[1]
            weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
            bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
            eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
            g = x.reshape(x.shape[0], groups, -1)
            mean = g.mean(dim=-1, keepdim=True)
            std = torch.sqrt(((g - mean) ** 2).mean(dim=-1, keepdim=True) + eps).detach()
            y = ((g - mean) / std).reshape(x.shape)
            shape = (1, -1, *([1] * (x.ndim - 2)))
            y = y * weight.view(shape) if weight is not None else y
            return y + bias.view(shape) if bias is not None else y
        if func in (F.softmax, torch.softmax, T.softmax) and self.attention_constant:
            return func(*args, **kwargs).detach()
        if func is F.scaled_dot_product_attention and self.attention_constant:
            q, k, v = args[:3]
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            return torch.softmax(scores, dim=-1).detach() @ v
        return func(*args, **kwargs)


def reference_relevance(model: nn.Module, x: Tensor, output_relevance: Tensor) -> Tensor:
    """x * gradient of the linearised network for output relevance R (N, C): LRP-0."""
    model = model.eval()
    leaf = x.detach().clone().requires_grad_(True)
    with DetachedReference():
        logits = model(leaf * 1.0)
    z = logits.detach()
    grad_out = torch.where(z == 0, torch.zeros_like(z), output_relevance / z)
    (grad,) = torch.autograd.grad(logits, leaf, grad_outputs=grad_out)
    return (leaf * grad).detach()
