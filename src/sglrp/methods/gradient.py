"""Plain gradient methods and the input gradient every gradient method shares.

Methods receive what :func:`sglrp.methods.registry.call` prepares: the model in eval mode with
parameter gradients off, a private copy of ``x`` and a :class:`~sglrp.targets.Target`. One
forward pass serves every target; K targets cost K backward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from ..targets import Target
from ..validation import check_logits
from .registry import register

__all__ = ["gradient", "input_gradient", "input_x_gradient", "per_target"]


def per_target(logits: Tensor, target: Target) -> tuple[list[Tensor], Tensor, bool]:
    r"""Scores :math:`\sum_n z_{n, t_{nk}}` for each target column k, and the resolved targets.

    Summing over the batch gives per-image gradients because images do not interact in an
    eval-mode classifier: :math:`\partial \sum_m z_{m,t_m} / \partial x_n = \partial z_{n,t_n}
    / \partial x_n`. Returns ``(scores, targets (N, K), multi)``.
    """
    columns, multi = target.columns(logits)
    scores = [logits.gather(1, columns[:, k : k + 1]).sum() for k in range(columns.shape[1])]
    return scores, columns, multi


def stack_targets(parts: list[Tensor], multi: bool) -> Tensor:
    """(N, ...) for one target, (N, K, ...) for K."""
    return torch.stack(parts, dim=1) if multi else parts[0]


def input_gradient(
    model: nn.Module,
    x: Tensor,
    target: Target,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
) -> Tensor:
    r"""Gradient :math:`\partial z_t / \partial x`, (N, C, H, W) or (N, K, C, H, W).

    ``forward_context`` is entered around the forward pass only (e.g. a mode that replaces the
    backward of ReLU); the backward passes run after it has been left. The model gets a
    non-leaf copy of ``x``, so in-place operations in its forward are recorded by autograd.
    """
    leaf = x.detach().requires_grad_(True)
    with forward_context():
        logits = check_logits(model(leaf.clone()), x.shape[0])
    if not logits.requires_grad:
        raise RuntimeError(
            "the target logits do not depend on the input through autograd; "
            "does the model's forward use torch.no_grad() or detach()?"
        )
    scores, _, multi = per_target(logits, target)
    grads = [
        torch.autograd.grad(s, leaf, retain_graph=k < len(scores) - 1)[0]
        for k, s in enumerate(scores)
    ]
    return stack_targets(grads, multi)


@register(
    "gradient",
    label="Gradient",
    family="gradient",
    summary="gradient of the target logit, dz_t/dx",
    reference="Simonyan et al. 2014",
    needs_layers=False,
)
def gradient(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    r"""Gradient of the target logit: :math:`R = \partial z_t / \partial x`, (N, C, H, W)."""
    return input_gradient(model, x, target)


@register(
    "input_x_gradient",
    label="Input x Gradient",
    family="gradient",
    summary="input times gradient, x * dz_t/dx",
    reference="Shrikumar et al. 2016",
    needs_layers=False,
)
def input_x_gradient(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    r"""Input times gradient: :math:`R = x \odot \partial z_t / \partial x`, (N, C, H, W)."""
    grad = input_gradient(model, x, target)
    return (x[:, None] if grad.ndim == x.ndim + 1 else x) * grad
