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
    y = torch.softmax(logits, dim=1)
    y_t = y.gather(1, targets[:, None])[:, 0]
    return _place(logits, targets, y_t * (1 - y_t), -y_t[:, None] * y)


def sglrp_target_part(logits: Tensor, targets: Tensor) -> Tensor:
    """The target part of SGLRP, :math:`y_t(1-y_t)` one-hot (for the rescaled-dual variant)."""
    y = torch.softmax(logits, dim=1)
    y_t = y.gather(1, targets[:, None])[:, 0]
    return _place(logits, targets, y_t * (1 - y_t), logits.new_zeros(()))


def sglrp_dual_part(logits: Tensor, targets: Tensor, logit_relu: bool = False) -> Tensor:
    """The dual part of SGLRP, :math:`y_t y_n` for :math:`n \\ne t` (positive).

    ``logit_relu`` zeroes classes with :math:`z_n \\le 0`, as iNNvestigate's Deep Taylor does in
    the authors' released code.
    """
    y = torch.softmax(logits, dim=1)
    y_t = y.gather(1, targets[:, None])[:, 0]
    dual = _place(logits, targets, logits.new_zeros(()).expand_as(y_t), y_t[:, None] * y)
    if logit_relu:
        dual = dual * (logits > 0)
    return dual


OUTPUT_RELEVANCE: dict[str, OutputRelevance] = {
    "lrp": lrp_output,
    "clrp": clrp_output,
    "sglrp": sglrp_output,
}


def output_relevance_fn(spec: str | OutputRelevance) -> OutputRelevance:
    """Resolve ``"lrp"``, ``"clrp"``, ``"sglrp"`` or a callable ``(logits, targets) -> R``."""
    if callable(spec):
        return spec
    try:
        return OUTPUT_RELEVANCE[spec]
    except KeyError:
        raise ValueError(
            f"unknown output relevance {spec!r}; use one of {sorted(OUTPUT_RELEVANCE)} or a "
            "callable (logits, targets) -> (N, classes) tensor"
        ) from None
