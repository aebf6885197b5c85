"""The random baseline of the evaluation: a uniform random map per image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..targets import Target
from .registry import register

__all__ = ["random_map"]


@register(
    "random",
    label="Random",
    returns="map",
    family="baseline",
    forward_passes=0,
    summary="uniform random map, the evaluation's baseline",
    needs_layers=False,
)
def random_map(
    model: nn.Module, x: Tensor, target: Target, seed: int | torch.Generator | None = 0
) -> Tensor:
    r"""Uniform random map :math:`L_{nij} \sim U[0, 1)`, shape (N, 1, H, W) (or (N, K, 1, H, W)).

    The model is never called and the targets are ignored. ``seed`` is an int for a fresh CPU
    ``torch.Generator`` (same seed, same maps) or a generator to draw from; None draws a fresh
    seed. The maps are drawn for the whole batch at once, so image n's map depends on its
    position in the batch; with K targets per image every target gets its own map.
    """
    n, _, h, w = x.shape
    if isinstance(seed, torch.Generator):
        gen = seed
    elif seed is None:
        gen = torch.Generator()
        gen.seed()
    else:
        gen = torch.Generator().manual_seed(int(seed))
    k = torch.as_tensor(target.spec).shape[1] if target.is_multi else None
    shape = (n, 1, h, w) if k is None else (n, k, 1, h, w)
    return torch.rand(shape, generator=gen, dtype=x.dtype, device=gen.device).to(x.device)
