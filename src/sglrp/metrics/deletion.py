"""Deletion and insertion curves (Petsiuk et al., RISE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._core import (
    CurveResult,
    baseline_tensor,
    check_maps,
    check_model_input,
    chunked,
    curve_result,
    gaussian_kernel,
    predict_logits,
    target_index,
)


def gaussian_blur(x: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Per-channel Gaussian blur of (N, C, H, W) images (RISE's insertion start: 11 px, 5).

    Separable kernel ``g(d) = exp(-d^2 / (2 sigma^2)) / sum``, ``d = -(k-1)/2 .. (k-1)/2``,
    applied as two depthwise conv2d with replicate padding (borders are not darkened).
    """
    g = gaussian_kernel(kernel_size, sigma, x.dtype, x.device)
    c = x.shape[1]
    half = kernel_size // 2
    out = F.pad(x, (half, half, half, half), mode="replicate")
    out = F.conv2d(out, g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(out, g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def relevance_ranks(maps: Tensor, seed: int | None = 0) -> Tensor:
    """(N, H*W) rank of each pixel in descending relevance (0 = most relevant).

    Ties are broken by a random permutation from a generator seeded with ``seed`` (so a
    constant map gives a random order); ``seed=None`` breaks them in row-major order.
    """
    r = check_maps(maps)
    n = r.shape[0]
    flat = r.reshape(n, -1)
    m = flat.shape[1]
    if seed is None:
        shuffle = torch.arange(m, device=r.device).expand(n, m)
    else:
        g = torch.Generator().manual_seed(seed)
        shuffle = torch.rand(n, m, generator=g).argsort(dim=1).to(r.device)
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(m, device=r.device).expand(n, m))
    return ranks


def _curve(
    kind: str,
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    steps: int,
    start: Tensor,
    seed: int | None,
    batch_size: int | None,
) -> CurveResult:
    n, _, h, w = x.shape
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ranks = relevance_ranks(check_maps(maps, n, (h, w)), seed).reshape(n, h, w)
    hw = h * w
    counts = torch.tensor([s * hw // steps for s in range(steps + 1)], device=x.device)
    s1 = steps + 1
    # Virtual batch of N * (steps + 1) images: image i // s1 after counts[i % s1] pixels.
    if kind == "deletion":
        changed, unchanged = start, x  # deleted pixels take the baseline
    else:
        changed, unchanged = x, start  # inserted pixels take the original values

    def build(lo: int, hi: int) -> Tensor:
        idx = torch.arange(lo, hi, device=x.device)
        img, step = idx // s1, idx % s1
        mask = (ranks[img] < counts[step][:, None, None])[:, None]
        return torch.where(mask, changed[img], unchanged[img])

    logits = predict_logits(model, chunked(n * s1, batch_size, build)).reshape(n, s1, -1)
    probs = logits.softmax(dim=2)
    t = target_index(target, logits[:, 0] if kind == "deletion" else logits[:, -1])
    curves = probs.gather(2, t[:, None, None].expand(n, s1, 1))[..., 0]
    fractions = counts.to(torch.float64) / hw
    auc = torch.trapezoid(curves, x=fractions, dim=1)
    direction = "lower" if kind == "deletion" else "higher"
    return curve_result(kind, direction, auc, fractions, curves)


def deletion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    steps: int = 16,
    baseline: float | Sequence[float] | Tensor = 0.0,
    seed: int | None = 0,
    batch_size: int | None = 64,
) -> CurveResult:
    """Deletion curve and AUC (RISE). Lower AUC is better.

    Pixels are ranked by relevance (descending; ties see :func:`relevance_ranks`). At step
    ``s = 0..steps`` the first ``floor(s * H W / steps)`` pixels (all channels) are set to
    ``baseline`` and the target's softmax probability ``p_s`` is recorded.
    ``AUC = trapz(p_s, f_s)`` over the deleted fractions ``f_s`` in [0, 1].

    Parameters
    ----------
    model
        Returns (N, classes) logits.
    x
        (N, C, H, W) normalised images.
    maps
        (N, H, W)/(N, C, H, W) relevance.
    target
        (N,) classes, an int, ``"predicted"`` or ``"second"``.
    steps
        Number of deletion steps (``steps + 1`` points).
    baseline
        Deleted value in normalised space, a number or one per channel (0 = dataset mean).
    seed
        Tie-breaking seed of the ordering.
    batch_size
        Largest forward batch; images are built one chunk at a time.

    Returns
    -------
    CurveResult
        ``levels`` the fractions, ``curves`` (N, steps + 1) probabilities, ``scores`` (N,)
        the AUCs.
    """
    model, x = check_model_input(model, x)
    start = baseline_tensor(baseline, x).expand_as(x)
    return _curve("deletion", model, x, maps, target, steps, start, seed, batch_size)


def insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    steps: int = 16,
    sigma: float = 5.0,
    kernel_size: int = 11,
    seed: int | None = 0,
    batch_size: int | None = 64,
) -> CurveResult:
    """Insertion curve and AUC (RISE). Higher AUC is better.

    Starts from :func:`gaussian_blur` of the image; at step ``s = 0..steps`` the first
    ``floor(s * H W / steps)`` pixels by relevance get their original values back and the
    target's softmax probability ``p_s`` is recorded; ``AUC = trapz(p_s, f_s)``, f in [0, 1].

    Parameters
    ----------
    model, x, maps, target, steps, seed, batch_size
        As in :func:`deletion`.
    sigma, kernel_size
        Gaussian blur of the starting image.

    Returns
    -------
    CurveResult
        ``levels`` the inserted fractions, ``curves`` (N, steps + 1), ``scores`` the AUCs.
    """
    model, x = check_model_input(model, x)
    start = gaussian_blur(x, sigma, kernel_size)
    return _curve("insertion", model, x, maps, target, steps, start, seed, batch_size)
