"""Leave the user's model exactly as it was: mode, requires_grad and hooks, also on error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Handles of hooks registered during one call; all are removed on exit."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        self.handles.append(handle)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextmanager
def preserved(model: nn.Module, eval_mode: bool = True) -> Iterator[HookSet]:
    """Run a block on ``model`` and restore its state afterwards.

    Puts every module in eval mode (explanations must be deterministic) unless ``eval_mode``
    is False, and yields a :class:`HookSet` for hooks the block registers. On exit, with or
    without an exception, the hooks are removed and each module's ``training`` flag and each
    parameter's ``requires_grad`` flag are set back to what they were.
    """
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    hooks = HookSet()
    try:
        if eval_mode:
            model.eval()
        yield hooks
    finally:
        hooks.remove()
        for module, flag in training:
            module.training = flag
        for param, flag in grads:
            param.requires_grad_(flag)


@contextmanager
def frozen(model: nn.Module) -> Iterator[HookSet]:
    """:func:`preserved` with every parameter's ``requires_grad`` off inside the block
    (explanations need gradients with respect to the input only)."""
    with preserved(model) as hooks:
        for param in model.parameters():
            param.requires_grad_(False)
        yield hooks
