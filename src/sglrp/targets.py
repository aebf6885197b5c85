"""Which class to explain: a target specification and its resolution on a model's logits.

A target is given once, by the user, and resolved by each method on the logits of the method's
own forward pass (so no method runs an extra forward pass only to find out what
``"predicted"`` means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TargetSpec = int | str | Sequence[int] | Sequence[Sequence[int]] | Tensor
"""An int (the same class for every image), ``"predicted"``, ``"second"``, a sequence or 1-D
tensor of N class indices, or an (N, K) tensor for K targets per image."""

_NAMED = {"predicted": 0, "pred": 0, "top1": 0, "second": 1, "top2": 1}


def resolve_targets(target: TargetSpec, logits: Tensor) -> Tensor:
    """Turn a target specification into class indices.

    Parameters
    ----------
    target
        ``int`` (same class for every image), a sequence or 1-D tensor of length N,
        ``"predicted"`` (arg max), ``"second"`` (second most probable class), or an
        (N, K) integer tensor for K targets per image.
    logits
        The (N, C) model output.

    Returns
    -------
    torch.Tensor
        Long tensor of shape (N,) or (N, K) on the logits' device.
    """
    n, num_classes = logits.shape
    if target is None:
        raise TypeError(
            "target is None; pass 'predicted', 'second', a class index or a tensor of them"
        )
    if isinstance(target, str):
        rank = _NAMED.get(target.strip().lower())
        if rank is None:
            raise ValueError(
                f"unknown target {target!r}; use 'predicted', 'second', a class index "
                "or a tensor of them"
            )
        if rank >= num_classes:
            raise ValueError(f"target={target!r} needs a model with at least {rank + 1} classes")
        return logits.topk(rank + 1, dim=1).indices[:, rank]
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints, a tensor, or a string")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"target must be an int, a sequence of ints, a tensor, or a string; got {target!r}"
            ) from err
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        t = t.to(device=logits.device, dtype=torch.long)
        if t.ndim == 0:
            t = t.expand(n).clone()
        if t.ndim not in (1, 2) or t.shape[0] != n or (t.ndim == 2 and t.shape[1] == 0):
            raise ValueError(
                f"target must have length N = {n} (or shape (N, K), K >= 1, for K targets "
                f"per image), got shape {tuple(t.shape)}"
            )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(
            f"target {bad} is out of range for a model with {num_classes} classes "
            f"(valid: 0 to {num_classes - 1})"
        )
    return t


@dataclass(frozen=True)
class Target:
    """A target specification, resolved by a method on the logits of its own forward pass.

    ``Target("predicted").resolve(logits)`` gives (N,) indices; an (N, K) specification gives
    (N, K). :meth:`columns` gives the K columns of (N,) indices in either case.
    """

    spec: TargetSpec = "predicted"

    def resolve(self, logits: Tensor) -> Tensor:
        """Class indices (N,) or (N, K) for these logits (see :func:`resolve_targets`)."""
        return resolve_targets(self.spec, logits)

    def columns(self, logits: Tensor) -> tuple[Tensor, bool]:
        """``(indices (N, K), multi)``; ``multi`` is False for a one-target specification."""
        t = self.resolve(logits)
        return (t, True) if t.ndim == 2 else (t[:, None], False)

    @property
    def is_multi(self) -> bool:
        """True for an (N, K) specification (K targets per image)."""
        if isinstance(self.spec, str | int):
            return False
        try:
            return torch.as_tensor(self.spec).ndim == 2
        except (TypeError, ValueError, RuntimeError):
            return False

    @classmethod
    def of(cls, target: TargetSpec | Target) -> Target:
        """``target`` itself if it is a :class:`Target`, else ``Target(target)``."""
        return target if isinstance(target, Target) else cls(target)
