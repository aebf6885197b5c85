"""The random baseline of the evaluation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sglrp._checks import TargetSpec, check_input

__all__ = ["random_map"]


def random_map(
    model: nn.Module, x: Tensor, targets: TargetSpec = None, seed: int | torch.Generator | None = 0
) -> Tensor:
    r"""Uniform random map :math:`L_{nij} \sim U[0, 1)`, shape (N, 1, H, W).

    The model and targets are ignored (never called). ``seed`` is an int for a fresh CPU
    ``torch.Generator`` (same seed, same maps) or a generator to draw from;
    None draws a fresh seed. The maps are drawn
    for the whole batch at once, so image n's map depends on its position in the batch.
    """
    x = check_input(x)
    n, _, h, w = x.shape
    if isinstance(seed, torch.Generator):
        gen = seed
    elif seed is None:
        gen = torch.Generator()
        gen.seed()
    else:
        gen = torch.Generator().manual_seed(int(seed))
    return torch.rand((n, 1, h, w), generator=gen, dtype=x.dtype, device=gen.device).to(x.device)
