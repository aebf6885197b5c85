"""Shared pieces of the metrics: result types, confidence intervals, input handling, forwards.

Conventions used by every metric
--------------------------------
* Relevance maps are (N, H, W) float tensors; (N, C, H, W) maps are summed over channels
  with :func:`to_2d`.
* Ground truth is a boolean (N, H, W) mask; boxes become masks with :func:`boxes_to_masks`.
* A score that is undefined for an image (empty mask, no positive relevance) is NaN. NaN
  scores are left out of every :class:`Aggregate` and counted in ``Aggregate.n_excluded``.
* Model outputs are turned into class probabilities with a softmax over the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._guard import preserved
from ..targets import resolve_targets
from ..validation import check_input, check_logits, check_model

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


@dataclass(frozen=True)
class Aggregate:
    """Mean of per-image scores with a normal-approximation 95 % confidence interval.

    ``low, high = mean -/+ 1.96 * s / sqrt(n)``, ``s`` the sample standard deviation
    (ddof = 1). ``n`` counts the scores used; ``n_excluded`` the NaN scores left out.
    With n < 2 the interval is undefined (``low = high = nan``); with n = 0 the mean is too.
    """

    mean: float
    low: float
    high: float
    n: int
    n_excluded: int = 0

    @property
    def half_width(self) -> float:
        """Half the width of the interval, ``1.96 * s / sqrt(n)``."""
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        text = f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n}"
        if self.n_excluded:
            text += f", {self.n_excluded} excluded"
        return text + ")"


def aggregate(scores: Tensor | Sequence[float]) -> Aggregate:
    """Mean and 95 % confidence interval of finite scores, NaN excluded.

    Parameters
    ----------
    scores
        Per-image scores of any shape (flattened); NaN marks an undefined score.

    Returns
    -------
    Aggregate
        ``mean +- 1.96 * std / sqrt(n)`` over the non-NaN scores (std with ddof = 1), with
        ``n`` the number used and ``n_excluded`` the number of NaN scores.
    """
    if not isinstance(scores, Tensor):  # Python floats: float64, not torch's default float32
        scores = torch.as_tensor(scores, dtype=torch.float64)
    s = scores.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    nan = torch.isnan(s)
    s = s[~nan]
    n, excluded = int(s.numel()), int(nan.sum())
    if n == 0:
        return Aggregate(math.nan, math.nan, math.nan, 0, excluded)
    mean = float(s.mean())
    if n < 2:
        return Aggregate(mean, math.nan, math.nan, n, excluded)
    half = Z95 * float(s.std(correction=1)) / math.sqrt(n)
    return Aggregate(mean, mean - half, mean + half, n, excluded)


@dataclass(frozen=True)
class MetricResult:
    """Per-image scores of one metric and their aggregate.

    Attributes
    ----------
    name
        Metric name (a key of ``sglrp.metrics.METRICS``).
    direction
        ``"higher"`` or ``"lower"``: which way is better.
    scores
        (N,) per-image scores, NaN where undefined.
    aggregate
        :func:`aggregate` of ``scores``.
    """

    name: str
    direction: str
    scores: Tensor
    aggregate: Aggregate


@dataclass(frozen=True)
class CurveResult(MetricResult):
    """A metric measured at several levels (energies, patch sizes, fractions).

    Attributes
    ----------
    levels
        (L,) the levels (x axis).
    curves
        (N, L) per-image score at each level.
    curve_aggregates
        One :class:`Aggregate` per level.
    scores
        (N,) a per-image summary of the curve (documented by each metric).
    """

    levels: Tensor = field(default_factory=lambda: torch.empty(0))
    curves: Tensor = field(default_factory=lambda: torch.empty(0, 0))
    curve_aggregates: tuple[Aggregate, ...] = ()

    @property
    def mean_curve(self) -> Tensor:
        """(L,) mean over images at each level, NaN excluded."""
        return self.curves.nanmean(dim=0)


def curve_result(
    name: str, direction: str, summary: Tensor, levels: Tensor, curves: Tensor
) -> CurveResult:
    """Build a :class:`CurveResult` with all aggregates."""
    return CurveResult(
        name=name,
        direction=direction,
        scores=summary,
        aggregate=aggregate(summary),
        levels=levels,
        curves=curves,
        curve_aggregates=tuple(aggregate(curves[:, j]) for j in range(curves.shape[1])),
    )


# ----------------------------------------------------------------------------- inputs


def to_2d(maps: Tensor) -> Tensor:
    """Relevance maps as (N, H, W): (N, C, H, W) maps are summed over channels.

    ``R_2d[n, h, w] = sum_c R[n, c, h, w]``; (N, H, W) input is returned unchanged.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim == 4:
        return maps.sum(dim=1)
    if maps.ndim == 3:
        return maps
    raise ValueError(
        f"maps must have shape (N, H, W) or (N, C, H, W), got {tuple(maps.shape)}; "
        "add a batch dimension with maps.unsqueeze(0)"
    )


def boxes_to_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean masks from boxes ``x0, y0, x1, y1`` with exclusive ends.

    Pixel (row y, column x) is inside when ``x0 <= x < x1`` and ``y0 <= y < y1``; boxes are
    clipped to the image. ``boxes`` is (N, 4), or (N, K, 4) for K boxes per image, whose
    masks are united (pad with empty boxes such as ``0, 0, 0, 0``).

    Returns
    -------
    Tensor
        Bool (N, height, width).
    """
    b = torch.as_tensor(boxes)
    if b.ndim == 2:
        b = b[:, None]
    if b.ndim != 3 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) or (N, K, 4), got {tuple(b.shape)}")
    xs = torch.arange(width, device=b.device)
    ys = torch.arange(height, device=b.device)
    x0, y0, x1, y1 = (b[..., i, None] for i in range(4))  # each (N, K, 1)
    in_x = (xs >= x0) & (xs < x1)  # (N, K, W)
    in_y = (ys >= y0) & (ys < y1)  # (N, K, H)
    return (in_y[..., :, None] & in_x[..., None, :]).any(dim=1)


def check_maps(maps: Tensor, n: int | None = None, hw: tuple[int, int] | None = None) -> Tensor:
    """Validate relevance maps and return them as finite float (N, H, W)."""
    m = to_2d(maps)
    if not m.is_floating_point():
        m = m.float()
    if n is not None and m.shape[0] != n:
        raise ValueError(f"maps hold {m.shape[0]} images but the batch has {n}")
    if hw is not None and tuple(m.shape[-2:]) != tuple(hw):
        raise ValueError(
            f"maps are {tuple(m.shape[-2:])} but the images are {tuple(hw)}; upsample the maps "
            "to the input size first (e.g. torch.nn.functional.interpolate)"
        )
    if not torch.isfinite(m).all():
        raise ValueError("maps contain NaN or Inf values")
    return m.detach()


def check_masks(masks: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Validate ground-truth masks: boolean with the maps' (N, H, W) shape."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.ndim == 2 and masks.shape[-1] == 4:
        raise ValueError("masks look like boxes; convert them with boxes_to_masks(boxes, H, W)")
    if tuple(masks.shape) != tuple(shape):
        raise ValueError(f"masks must have shape {tuple(shape)}, got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        masks = masks != 0
    return masks


def gaussian_kernel(
    kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """1-D Gaussian window ``g(d) = exp(-d^2 / (2 sigma^2)) / sum``, ``d = -(k-1)/2 .. (k-1)/2``.

    Its outer product with itself is the separable 2-D window (which also sums to 1).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    half = kernel_size // 2
    d = torch.arange(-half, half + 1, dtype=dtype, device=device)
    g = torch.exp(-(d**2) / (2 * sigma**2))
    return g / g.sum()


def baseline_tensor(baseline: float | Sequence[float] | Tensor, x: Tensor) -> Tensor:
    """A per-channel baseline broadcastable to ``x`` (N, C, H, W): shape (1, C, 1, 1)."""
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).reshape(-1)
    c = x.shape[1]
    if b.numel() == 1:
        b = b.expand(c)
    if b.numel() != c:
        raise ValueError(f"baseline must be a number or hold one value per channel ({c})")
    return b.reshape(1, c, 1, 1)


# ----------------------------------------------------------------------------- model


def predict_logits(model: nn.Module, chunks: Iterable[Tensor]) -> Tensor:
    """Float64 logits of the model for a stream of image chunks, without gradients.

    The model is put in eval mode for the call and restored afterwards. Probabilities are
    ``logits.softmax(dim=1)``; targets such as ``"second"`` are resolved on the logits
    (probabilities can underflow to tied zeros).
    """
    outs = []
    with torch.no_grad(), preserved(model):
        for chunk in chunks:
            outs.append(check_logits(model(chunk), chunk.shape[0]).double())
    return torch.cat(outs)


def split(x: Tensor, batch_size: int | None) -> tuple[Tensor, ...]:
    """``x`` in chunks of at most ``batch_size`` along dim 0 (one chunk if None)."""
    if batch_size is None:
        return (x,)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return x.split(batch_size)


def chunked(
    total: int, batch_size: int | None, build: Callable[[int, int], Tensor]
) -> Iterator[Tensor]:
    """Yield ``build(lo, hi)`` over ``[0, total)`` in pieces of at most ``batch_size``.

    Lets a metric describe a large virtual batch and materialise only one chunk at a time.
    """
    step = total if batch_size is None else batch_size
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for lo in range(0, total, step):
        yield build(lo, min(lo + step, total))


def check_model_input(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """Shared validation of (model, images)."""
    return check_model(model), check_input(x).detach()


def target_index(target: object, logits: Tensor) -> Tensor:
    """Target classes (N,) from an int, sequence, tensor, ``"predicted"`` or ``"second"``."""
    t = resolve_targets(target, logits)  # type: ignore[arg-type]
    if t.ndim != 1:
        raise ValueError("these metrics take one target class per image: shape (N,)")
    return t


def second_most_probable(model: nn.Module, x: Tensor, batch_size: int | None = None) -> Tensor:
    """Class with the second highest logit per image, (N,) long (the CLRP/SGLRP 2nd target)."""
    model, x = check_model_input(model, x)
    logits = predict_logits(model, split(x, batch_size))
    if logits.shape[1] < 2:
        raise ValueError("second_most_probable needs a model with at least 2 classes")
    return logits.topk(2, dim=1).indices[:, 1]


# ----------------------------------------------------------------------------- ranking


def tied_topk_hits(values: Tensor, inside: Tensor, k: Tensor) -> Tensor:
    """Expected number of ``inside`` pixels among the ``k`` largest values, ties shared.

    Pixels strictly above the k-th largest value ``tau`` are counted fully; the ``t`` pixels
    equal to ``tau`` share the remaining ``k - a`` places (``a`` = number above ``tau``), so
    each counts ``(k - a) / t``. This is the exact expectation under random tie-breaking and
    does not depend on pixel positions (or on the sort's order within ties). One sort
    per batch.

    Parameters
    ----------
    values
        (N, M) pixel values.
    inside
        (N, M) bool, pixel inside the ground truth.
    k
        (N, L) long, 0 <= k <= M.

    Returns
    -------
    Tensor
        (N, L) float64 expected hit counts.
    """
    n, m = values.shape
    neg, order = (-values).sort(dim=1)  # ascending -R = descending R
    ins = inside.gather(1, order).to(torch.float64)
    cum = torch.cat([ins.new_zeros(n, 1), ins.cumsum(dim=1)], dim=1)  # (N, M + 1)
    kk = k.clamp(0, m)
    tau = neg.gather(1, (kk - 1).clamp(min=0)).contiguous()  # -(k-th largest value)
    a = torch.searchsorted(neg, tau, side="left")  # pixels strictly above tau
    e = torch.searchsorted(neg, tau, side="right")  # ... plus those tied with it
    above = cum.gather(1, a)
    tied = cum.gather(1, e) - above
    return above + (kk - a).to(torch.float64) * tied / (e - a).to(torch.float64)  # 0 if k = 0
