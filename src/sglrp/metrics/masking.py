"""Maximal patch masking (CLRP, SGLRP): occlude a patch at the relevance maximum."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ._core import (
    CurveResult,
    baseline_tensor,
    check_maps,
    check_model_input,
    chunked,
    curve_result,
    predict_logits,
    target_index,
)

DEFAULT_SIZES: tuple[int, ...] = (1, 3, 5, 7, 9)


def map_maxima(maps: Tensor) -> Tensor:
    """(N, 2) long ``(row, col)`` of each map's maximum; ties: first in row-major order."""
    r = check_maps(maps)
    w = r.shape[-1]
    idx = r.reshape(r.shape[0], -1).argmax(dim=1)
    return torch.stack([idx // w, idx % w], dim=1)


def random_patch_centres(
    n: int, height: int, width: int, seed: int = 0, device: torch.device | str = "cpu"
) -> Tensor:
    """(N, 2) uniformly random ``(row, col)`` centres from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, height, (n,), generator=g)
    cols = torch.randint(0, width, (n,), generator=g)
    return torch.stack([rows, cols], dim=1).to(device)


def _patch_mask(centres: Tensor, sizes: Tensor, height: int, width: int) -> Tensor:
    """(B, H, W) bool: rows ``[c - (p-1)//2, c - (p-1)//2 + p)``, same for columns, clipped."""
    lo = centres - ((sizes[:, None] - 1) // 2)  # (B, 2)
    hi = lo + sizes[:, None]
    rows = torch.arange(height, device=centres.device)
    cols = torch.arange(width, device=centres.device)
    in_r = (rows >= lo[:, :1]) & (rows < hi[:, :1])  # (B, H)
    in_c = (cols >= lo[:, 1:]) & (cols < hi[:, 1:])  # (B, W)
    return in_r[:, :, None] & in_c[:, None, :]


def masked_patches(
    x: Tensor,
    centres: Tensor,
    sizes: Sequence[int] = DEFAULT_SIZES,
    baseline: float | Sequence[float] | Tensor = 0.0,
) -> Tensor:
    """Copies of ``x`` with a ``p x p`` patch per size set to the baseline.

    The patch covers rows ``c_r - (p-1)//2 .. c_r - (p-1)//2 + p - 1`` (centred for odd
    ``p``; for even ``p`` the extra row/column is below/right) and likewise columns,
    clipped at the border, so it changes ``p * p`` pixels per channel, fewer at the border.

    Returns
    -------
    Tensor
        (N, P, C, H, W).
    """
    n, c, h, w = x.shape
    p = torch.as_tensor(list(sizes), dtype=torch.long, device=x.device)
    cen = centres.to(x.device).long()[:, None, :].expand(n, p.numel(), 2).reshape(-1, 2)
    mask = _patch_mask(cen, p.repeat(n), h, w).reshape(n, p.numel(), 1, h, w)
    base = baseline_tensor(baseline, x)[None]  # (1, 1, C, 1, 1)
    return torch.where(mask, base, x[:, None])


def patch_masking(
    model: nn.Module,
    x: Tensor,
    maps: Tensor | Mapping[str, Tensor] | None,
    target: object,
    sizes: Sequence[int] = DEFAULT_SIZES,
    baseline: float | Sequence[float] | Tensor = 0.0,
    random_centres: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
) -> CurveResult | dict[str, CurveResult]:
    """Maximal patch masking (Gu et al. CLRP; Iwana et al. SGLRP). Lower is better.

    A ``p x p`` patch centred on the map's maximum (first maximum in row-major order) is set
    to ``baseline`` (the dataset mean in normalised space, per channel) and the score is the
    change of the target's softmax probability, ``y_t(masked) - y_t(original)``: a bigger
    drop (more negative) means the maximum found more important evidence.

    The originals and every (method, image, size) copy go through the model in one forward
    (or in chunks of ``batch_size`` images to bound memory).

    Parameters
    ----------
    model
        Returns (N, classes) logits.
    x
        (N, C, H, W) normalised images.
    maps
        (N, H, W)/(N, C, H, W) relevance, or a dict ``name -> maps`` to evaluate several
        methods in the same forward. Ignored (may be None) with ``random_centres``.
    target
        (N,) classes, an int, ``"predicted"`` or ``"second"`` (see also
        :func:`second_most_probable`).
    sizes
        Patch sizes ``p``.
    baseline
        Replacement value: a number or one value per channel.
    random_centres
        Random baseline: patch centres drawn uniformly (seeded by ``seed``) instead of the
        maxima.
    batch_size
        Largest forward batch (None: everything at once).

    Returns
    -------
    CurveResult or dict of them
        ``levels`` the sizes, ``curves`` (N, P) probability changes, ``scores`` (N,) their
        mean over the sizes. A dict (same keys) when ``maps`` is a dict.
    """
    model, x = check_model_input(model, x)
    n, _, h, w = x.shape
    if random_centres:
        named: dict[str, Tensor] = {"random": random_patch_centres(n, h, w, seed, x.device)}
    elif maps is None:
        raise ValueError("maps is required unless random_centres=True")
    elif isinstance(maps, Mapping):
        named = {k: map_maxima(check_maps(v, n, (h, w))) for k, v in maps.items()}
    else:
        named = {"maps": map_maxima(check_maps(maps, n, (h, w)))}
    size_t = torch.as_tensor(list(sizes), dtype=torch.long, device=x.device)
    if size_t.numel() == 0 or bool((size_t < 1).any()):
        raise ValueError("sizes must be a non-empty sequence of positive integers")
    m, p = len(named), size_t.numel()
    # Virtual batch: N originals, then (method, image, size) copies in that order.
    centres = torch.stack(list(named.values()))  # (M, N, 2)
    cen = centres[:, :, None, :].expand(m, n, p, 2).reshape(-1, 2)
    img = torch.arange(n, device=x.device)[None, :, None].expand(m, n, p).reshape(-1)
    psz = size_t[None, None, :].expand(m, n, p).reshape(-1)
    base = baseline_tensor(baseline, x)

    def build(lo: int, hi: int) -> Tensor:
        parts = []
        if lo < n:
            parts.append(x[lo : min(hi, n)])
        if hi > n:
            a, b = max(lo, n) - n, hi - n
            mask = _patch_mask(cen[a:b], psz[a:b], h, w)[:, None]
            parts.append(torch.where(mask, base, x[img[a:b]]))
        return torch.cat(parts)

    chunks: Iterator[Tensor] = chunked(n + m * n * p, batch_size, build)
    logits = predict_logits(model, chunks)
    probs = logits.softmax(dim=1)
    t = target_index(target, logits[:n])
    y0 = probs[:n].gather(1, t[:, None])  # (N, 1)
    ym = probs[n:].reshape(m, n, p, -1).gather(3, t[None, :, None, None].expand(m, n, p, 1))
    delta = ym[..., 0] - y0[None]  # (M, N, P)
    levels = size_t.to(torch.float64)
    out = {
        k: curve_result("patch_masking", "lower", delta[i].mean(dim=1), levels, delta[i])
        for i, k in enumerate(named)
    }
    if isinstance(maps, Mapping) and not random_centres:
        return out
    return next(iter(out.values()))
