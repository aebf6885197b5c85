"""Plain gradient methods and the helpers every method in this package shares.

All methods take ``(model, x, targets, **options)`` with ``x`` of shape (N, C, H, W) and
``targets`` of shape (N,), and are safe to call directly: each validates its input, runs inside
:func:`sglrp._guard.preserved` and never modifies the model or ``x`` (``x`` is detached and
cloned, so its ``requires_grad`` flag and ``.grad`` are left alone).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from sglrp._checks import TargetSpec, check_input, check_logits, resolve_targets
from sglrp._guard import preserved

__all__ = ["gradient", "input_x_gradient"]


def _freeze(model: nn.Module) -> None:
    """Switch off parameter gradients (inside ``preserved``, which restores the flags)."""
    for param in model.parameters():
        param.requires_grad_(False)


def _target_score(logits: object, targets: TargetSpec, batch_size: int) -> tuple[Tensor, Tensor]:
    r"""Return :math:`\sum_n z_{n, t_n}` and the resolved (N,) targets.

    Summing over the batch gives per-image gradients because images do not interact in an
    eval-mode classifier: :math:`\partial \sum_m z_{m,t_m} / \partial x_n = \partial z_{n,t_n}
    / \partial x_n`.
    """
    logits = check_logits(logits, batch_size)
    t = resolve_targets(targets, logits)
    if t.ndim != 1:
        raise ValueError(
            f"this method explains one target per image, got targets of shape {tuple(t.shape)}; "
            "call it once per column"
        )
    return logits.gather(1, t[:, None]).sum(), t


def _input_gradient(
    model: nn.Module,
    x: Tensor,
    targets: TargetSpec,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[Tensor, Tensor]:
    r"""Gradient :math:`\partial z_t / \partial x` and the resolved targets.

    ``forward_context`` is entered around the forward pass only (e.g. a mode that replaces the
    backward of ReLU); the backward pass runs after it has been left.
    """
    x = check_input(x)
    with preserved(model), torch.enable_grad():
        _freeze(model)
        leaf = x.detach().requires_grad_(True)
        # The model gets a non-leaf copy: in-place ops in its forward never reach x.
        with forward_context():
            logits = model(leaf.clone())
        score, t = _target_score(logits, targets, x.shape[0])
        if not score.requires_grad:
            raise RuntimeError(
                "the target logits do not depend on the input through autograd; "
                "does the model's forward use torch.no_grad() or detach()?"
            )
        (grad,) = torch.autograd.grad(score, leaf)
    return grad, t


def gradient(model: nn.Module, x: Tensor, targets: TargetSpec) -> Tensor:
    r"""Gradient of the target logit: :math:`R = \partial z_t / \partial x`.

    Parameters
    ----------
    model
        Classifier returning (N, classes) logits; evaluated in eval mode.
    x
        Input batch (N, C, H, W).
    targets
        Class index per image, shape (N,) (an int or ``"predicted"`` also works).

    Returns
    -------
    Tensor
        (N, C, H, W) gradient.
    """
    return _input_gradient(model, x, targets)[0]


def input_x_gradient(model: nn.Module, x: Tensor, targets: TargetSpec) -> Tensor:
    r"""Input times gradient: :math:`R = x \odot \partial z_t / \partial x`, shape (N, C, H, W)."""
    grad, _ = _input_gradient(model, x, targets)
    return x.detach() * grad
