"""Validation of models, inputs and logits, shared by every public entry point.

Each check raises ``ValueError`` or ``TypeError`` with a message that names the problem and the fix.
"""

from __future__ import annotations

import torch
from torch import nn

from ._guard import preserved


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
    if x.device.type == "meta":
        raise ValueError(
            "x is on the meta device and holds no values; pass a real tensor (x.to('cpu'))"
        )
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


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's checked (N, classes) logits for ``x``, without gradients, in eval mode."""
    with preserved(model), torch.no_grad():
        return check_logits(model(x), x.shape[0])
