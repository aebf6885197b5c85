"""Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._core import (
    Aggregate,
    MetricResult,
    aggregate,
    baseline_tensor,
    check_maps,
    check_model_input,
    chunked,
    predict_logits,
    target_index,
)


@dataclass(frozen=True)
class ConfidenceResult(MetricResult):
    """Average Drop / Increase in Confidence result.

    Attributes
    ----------
    y, o
        (N,) target probability on the full and on the explanation-masked image.
    average_drop
        Aggregate of ``100 * max(0, y - o) / y`` over all N images (lower is better).
    increase_in_confidence
        Aggregate of ``100 * [o > y]`` over all N images: percent of images (higher is better).
    """

    y: Tensor = field(default_factory=lambda: torch.empty(0))
    o: Tensor = field(default_factory=lambda: torch.empty(0))
    average_drop: Aggregate | None = None
    increase_in_confidence: Aggregate | None = None


def explanation_weights(maps: Tensor, keep_top: float | None = None) -> Tensor:
    """Per-image min-max normalised maps ``m = (R - min R) / (max R - min R)`` in [0, 1].

    A constant map gives ``m = 0`` (it explains nothing, so nothing is kept). With
    ``keep_top = q`` only the ``ceil(q * H * W)`` highest pixels keep their weight, the
    rest get 0 (Relevance-CAM uses q = 0.5); pixels tied with the threshold are all kept.
    """
    r = check_maps(maps).to(torch.float64)
    n = r.shape[0]
    flat = r.reshape(n, -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    m = torch.where(span > 0, (flat - lo) / span.clamp(min=torch.finfo(span.dtype).tiny), 0.0)
    if keep_top is not None:
        if not 0 < keep_top <= 1:
            raise ValueError(f"keep_top must lie in (0, 1], got {keep_top}")
        k = max(1, math.ceil(keep_top * flat.shape[1] - 1e-6))
        tau = flat.topk(k, dim=1).values[:, -1:]
        m = torch.where(flat >= tau, m, 0.0)
    return m.reshape(r.shape)


def _confidences(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    baseline: float | Sequence[float] | Tensor,
    keep_top: float | None,
    batch_size: int | None,
) -> ConfidenceResult:
    model, x = check_model_input(model, x)
    n, _, h, w = x.shape
    weights = explanation_weights(check_maps(maps, n, (h, w)), keep_top).to(x.dtype)[:, None]
    base = baseline_tensor(baseline, x)

    def build(lo: int, hi: int) -> Tensor:
        parts = []
        if lo < n:
            parts.append(x[lo : min(hi, n)])
        if hi > n:
            a, b = max(lo, n) - n, hi - n
            parts.append(base + weights[a:b] * (x[a:b] - base))
        return torch.cat(parts)

    logits = predict_logits(model, chunked(2 * n, batch_size, build))
    probs = logits.softmax(dim=1)
    t = target_index(target, logits[:n])
    y = probs[:n].gather(1, t[:, None])[:, 0]
    o = probs[n:].gather(1, t[:, None])[:, 0]
    drop = torch.where(y > 0, 100 * (y - o).clamp(min=0) / y.clamp(min=1e-300), 0.0)
    inc = 100 * (o > y).to(torch.float64)
    ad, ic = aggregate(drop), aggregate(inc)
    return ConfidenceResult(
        name="average_drop",
        direction="lower",
        scores=drop,
        aggregate=ad,
        y=y,
        o=o,
        average_drop=ad,
        increase_in_confidence=ic,
    )


def average_drop(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    baseline: float | Sequence[float] | Tensor = 0.0,
    keep_top: float | None = None,
    batch_size: int | None = None,
) -> ConfidenceResult:
    """Average Drop (Grad-CAM++). Lower is better.

    ``AD = 1/N sum_i 100 * max(0, y_i - o_i) / y_i`` over ALL N images (images whose
    confidence rises count 0; Relevance-CAM's code divides by the number of drops instead),
    ``y`` on the full image, ``o`` on the explanation-masked image.

    Parameters
    ----------
    model
        Returns (N, classes) logits; ``y`` and ``o`` are softmax probabilities of the target.
    x
        (N, C, H, W) normalised images.
    maps
        (N, H, W)/(N, C, H, W) explanations, min-max normalised per image to ``m`` in [0, 1]
        (see :func:`explanation_weights`).
    target
        (N,) classes, an int, ``"predicted"`` or ``"second"``.
    baseline
        Value the masking blends towards in normalised space, a number or one per channel:
        ``x_masked = baseline + m * (x - baseline)`` (0 = dataset mean; equals ``m * x`` then).
    keep_top
        Keep only the top fraction of pixels (Relevance-CAM: 0.5); None keeps all.
    batch_size
        Largest forward batch; the 2N images go in one forward if None.

    Returns
    -------
    ConfidenceResult
        ``scores`` (N,) per-image drop in percent; also holds the Increase in Confidence.
    """
    return _confidences(model, x, maps, target, baseline, keep_top, batch_size)


def increase_in_confidence(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    baseline: float | Sequence[float] | Tensor = 0.0,
    keep_top: float | None = None,
    batch_size: int | None = None,
) -> ConfidenceResult:
    """Increase in Confidence (Grad-CAM++). Higher is better.

    ``IC = 100/N sum_i [o_i > y_i]``: percent of all N images whose target probability rises
    when only the explanation is shown. Same inputs and masking as :func:`average_drop`.

    Parameters
    ----------
    model
        Returns (N, classes) logits; ``y`` and ``o`` are softmax probabilities of the target.
    x
        (N, C, H, W) normalised images.
    maps
        (N, H, W)/(N, C, H, W) explanations, min-max normalised per image to ``m`` in [0, 1]
        (see :func:`explanation_weights`).
    target
        (N,) classes, an int, ``"predicted"`` or ``"second"``.
    baseline
        Value the masking blends towards in normalised space, a number or one per channel:
        ``x_masked = baseline + m * (x - baseline)`` (0 = dataset mean; equals ``m * x`` then).
    keep_top
        Keep only the top fraction of pixels (Relevance-CAM: 0.5); None keeps all.
    batch_size
        Largest forward batch; the 2N images go in one forward if None.

    Returns
    -------
    ConfidenceResult
        ``scores`` (N,) 100 or 0 per image; also holds the Average Drop.
    """
    res = _confidences(model, x, maps, target, baseline, keep_top, batch_size)
    return ConfidenceResult(
        name="increase_in_confidence",
        direction="higher",
        scores=100 * (res.o > res.y).to(torch.float64),
        aggregate=res.increase_in_confidence,
        y=res.y,
        o=res.o,
        average_drop=res.average_drop,
        increase_in_confidence=res.increase_in_confidence,
    )
