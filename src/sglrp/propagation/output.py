"""Output relevance: the vector :math:`R^{(L)}` at the logits that propagation starts from."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

OutputRelevance = Callable[[Tensor, Tensor], Tensor]


def _place(logits: Tensor, targets: Tensor, at_target: Tensor, elsewhere: Tensor) -> Tensor:
    """(N, C) tensor with ``elsewhere`` (broadcast) and ``at_target`` (N,) at the targets."""
    out = elsewhere.expand_as(logits).clone()
    return out.scatter_(1, targets[:, None], at_target[:, None])


def lrp_output(logits: Tensor, targets: Tensor) -> Tensor:
    """LRP (paper eq. 3): :math:`R_n = z_t` for :math:`n = t`, else 0."""
    z_t = logits.gather(1, targets[:, None])[:, 0]
    return _place(logits, targets, z_t, logits.new_zeros(()))


def clrp_output(logits: Tensor, targets: Tensor) -> Tensor:
    """Contrastive LRP (eq. 7): :math:`z_t` at :math:`t`, :math:`-z_t/(C-1)` elsewhere."""
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError("CLRP needs a model with at least 2 classes")
    z_t = logits.gather(1, targets[:, None])[:, 0]
    return _place(logits, targets, z_t, (-z_t / (num_classes - 1))[:, None])


def sglrp_output(logits: Tensor, targets: Tensor) -> Tensor:
    """SGLRP (eq. 10): :math:`\\partial y_t / \\partial z_n`, i.e. :math:`y_t(1-y_t)` at
    :math:`t` and :math:`-y_t y_n` elsewhere, with :math:`y = \\mathrm{softmax}(z)`.

    The entries sum to zero, so a conservative rule gives input relevance summing to zero.
    """
    if logits.shape[1] < 2:
        raise ValueError(
            "SGLRP needs a model with at least 2 classes: with one class y_t = 1 and the "
            "softmax gradient is 0"
        )
    y = torch.softmax(logits, dim=1)
    y_t = y.gather(1, targets[:, None])[:, 0]
    return _place(logits, targets, y_t * (1 - y_t), -y_t[:, None] * y)


def relevance_cam_output(logits: Tensor, targets: Tensor) -> Tensor:
    """Relevance-CAM's output relevance (the authors' code, ``LRP_util.CLRP``): 1 at the
    target and :math:`-1/C` elsewhere, not scaled by :math:`z_t`."""
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError("Relevance-CAM's contrastive output relevance needs at least 2 classes")
    return _place(
        logits,
        targets,
        logits.new_ones(()).expand_as(targets).to(logits.dtype),
        logits.new_full((), -1.0 / num_classes),
    )


def sglrp_parts(
    logits: Tensor, targets: Tensor, *, relu_logits: bool = False, dual_relu: bool = False
) -> Tensor:
    """The authors' two maps' output relevance, (N, 2, C): target part and dual part.

    Target part :math:`T`: :math:`y_t(1-y_t)` at :math:`t`; dual part :math:`D`:
    :math:`y_t y_n` for :math:`n \\ne t` (positive), with :math:`y = \\mathrm{softmax}(z)`.
    ``relu_logits`` (iNNvestigate 1.0.8.3) takes :math:`y = \\mathrm{softmax}(\\max(z, 0))`
    and zeroes every class with :math:`z_n \\le 0`, the target included; ``dual_relu``
    zeroes such classes in the dual part only.
    """
    positive = logits > 0
    y = torch.softmax(logits.clamp(min=0) if relu_logits else logits, dim=1)
    y_t = y.gather(1, targets[:, None])[:, 0]
    zero = logits.new_zeros(())
    target_part = _place(logits, targets, y_t * (1 - y_t), zero)
    dual = _place(logits, targets, zero.expand_as(y_t), y_t[:, None] * y)
    if relu_logits:
        target_part = target_part * positive
    if relu_logits or dual_relu:
        dual = dual * positive
    return torch.stack([target_part, dual], dim=1)


def combine_parts(relevance: Tensor) -> Tensor:
    """The authors' combination :math:`T - D \\sum T / \\sum D` per image (0 where
    :math:`\\sum D = 0`), for relevance (N, 2, ...) of :func:`sglrp_parts`."""
    target_map, dual_map = relevance[:, 0], relevance[:, 1]
    dims = tuple(range(1, target_map.ndim))
    t_sum = target_map.sum(dim=dims, keepdim=True)
    d_sum = dual_map.sum(dim=dims, keepdim=True)
    scale = torch.where(d_sum == 0, torch.zeros_like(d_sum), t_sum / d_sum)
    return target_map - dual_map * scale


OUTPUT_RELEVANCE: dict[str, OutputRelevance] = {
    "lrp": lrp_output,
    "clrp": clrp_output,
    "sglrp": sglrp_output,
    "relevance_cam": relevance_cam_output,
}
"""Named output relevances: ``(logits (N, C), targets (N,)) -> (N, C)``."""

OutputRelevanceSpec = str | OutputRelevance


def output_relevance_fn(spec: OutputRelevanceSpec) -> OutputRelevance:
    """Resolve a name of :data:`OUTPUT_RELEVANCE` or a callable ``(logits, targets) -> R``.

    A callable may return (N, C), or (N, J, C) for J output relevance vectors per target
    (propagated separately; the results get a J axis).
    """
    if callable(spec):
        return spec
    try:
        return OUTPUT_RELEVANCE[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown output relevance {spec!r}; use one of {sorted(OUTPUT_RELEVANCE)} or a "
            "callable (logits, targets) -> (N, classes) tensor"
        ) from None
