"""Input validation shared by every public entry point.

Each check raises ``ValueError`` or ``TypeError`` with a message that names the problem and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._guard import preserved

TargetSpec = int | str | Sequence[int] | torch.Tensor


def check_model(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise ``TypeError``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "wrap a plain function in an nn.Module"
        )
    return model


def check_input(x: object) -> torch.Tensor:
    """Check an image batch: a floating (N, C, H, W) tensor of finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}; "
            "convert with torch.as_tensor(...)"
        )
    if x.ndim != 4:
        hint = "; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else ""
        raise ValueError(f"x must have 4 dimensions (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor, got dtype {x.dtype}; "
            "convert with x.float() (and scale 0-255 images to the range the model expects)"
        )
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (N = 0); pass at least one image")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf values; clean or re-normalise the input")
    return x


def check_logits(logits: object, batch_size: int) -> torch.Tensor:
    """Check model output: 2-D (N, classes) logits for the batch."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the model must return a logits tensor, got {type(logits).__name__}; "
            "wrap it so that forward returns the (N, classes) tensor"
        )
    if logits.ndim != 2 or logits.shape[0] != batch_size:
        raise ValueError(
            f"the model must return (N, classes) logits with N = {batch_size}, got shape "
            f"{tuple(logits.shape)}; flatten or select the classifier output"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or Inf logits; check the weights and the input")
    return logits


def resolve_targets(target: TargetSpec, logits: torch.Tensor) -> torch.Tensor:
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
    if isinstance(target, str):
        if target in ("predicted", "pred", "top1"):
            return logits.argmax(dim=1)
        if target in ("second", "top2"):
            if num_classes < 2:
                raise ValueError("target='second' needs a model with at least 2 classes")
            return logits.topk(2, dim=1).indices[:, 1]
        raise ValueError(
            f"unknown target {target!r}; use 'predicted', 'second', a class index "
            "or a tensor of them"
        )
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints, a tensor, or a string")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError) as err:
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
                "per image), "
                f"got shape {tuple(t.shape)}"
            )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(
            f"target {bad} is out of range for a model with {num_classes} classes "
            f"(valid: 0 to {num_classes - 1})"
        )
    return t


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's checked (N, classes) logits for ``x``, without gradients, in eval mode."""
    with preserved(model), torch.no_grad():
        return check_logits(model(x), x.shape[0])
