r"""Transformer baselines: attention rollout, gradient-weighted rollout, Grad-CAM on tokens.

All three read the attention weights of the model's own forward pass, captured by
:class:`AttentionRecorder` without changing the model: ``nn.MultiheadAttention`` (through
``F.multi_head_attention_forward``) and ``F.scaled_dot_product_attention`` are computed from
their parts (:func:`sglrp.propagation.attention.multi_head_forward`, ordinary autograd, so
gradients reach the weights), and a hand-written ``softmax(q @ k.transpose(-2, -1) * s)`` is
recorded where its softmax runs. Tokens are laid out as in ViT: a class token at position 0,
then the patch tokens row by row; maps are read off the class token's row and reshaped to the
patch grid (its aspect ratio that of the input), then resized (bilinear) to the input size.

* :func:`attention_rollout` (Abnar & Zuidema, ACL 2020):
  :math:`\bar A_l = \mathrm{rownorm}(\tfrac12 \mathrm{mean}_h A_l + \tfrac12 I)`,
  :math:`R = \bar A_L \cdots \bar A_1`, map :math:`R_{0, 1:}`. It does not depend on the
  target.
* :func:`gradient_rollout` (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
  Explainability"): :math:`\bar A_l = \mathrm{mean}_h (\nabla_{A_l} z_t \odot A_l)^+`,
  :math:`R \leftarrow R + \bar A_l R` from :math:`R = I` over the layers in order, map
  :math:`R_{0, 1:}`.
* :func:`vit_gradcam` (Grad-CAM, Selvaraju et al. 2017, on tokens as pytorch-grad-cam does for
  ViTs): with patch tokens :math:`a_{pc}` of a layer and :math:`g = \partial z_t / \partial a`,
  :math:`w_c = \mathrm{mean}_p\, g_{pc}`, map :math:`\mathrm{ReLU}(\sum_c w_c a_{pc})`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._guard import HookSet
from ..propagation.attention import multi_head_forward, plain_attend, sdpa_forward
from ..propagation.operations import SOFTMAXES
from ..targets import Target
from ..validation import check_logits
from .cam import _resolve_layer, _upsample_maps
from .gradient import per_target, stack_targets
from .registry import register

__all__ = [
    "AttentionRecorder",
    "Recorded",
    "attention_rollout",
    "gradient_rollout",
    "rollout",
    "rollout_gradient",
    "token_grid",
    "vit_gradcam",
]


def _no_attention_error() -> ValueError:
    return ValueError(
        "the model computes no attention in its forward pass (no nn.MultiheadAttention, "
        "F.scaled_dot_product_attention or softmax over the last axis of an (..., T, S) "
        "score tensor); the attention baselines need a transformer, use gradcam for CNNs"
    )


@dataclass
class Recorded:
    """One attention computation of a forward pass.

    Attributes
    ----------
    weights
        The attention weights as used in the forward pass (gradients reach them), leading
        axes batch-major: (N, H, T, S), (N * H, T, S) or (N, T, S).
    module
        Name of the innermost module that computed them (``""``: the model itself).
    tokens
        That module's first tensor input (for ``nn.MultiheadAttention``: the query tokens).
    """

    weights: Tensor
    module: str
    tokens: Tensor | None


class AttentionRecorder(TorchFunctionMode):
    """Record every attention computation of a forward pass (:class:`Recorded`).

    Use as a context manager around the forward pass, with :meth:`watch` called first to
    follow the module stack (its hooks go into a :class:`~sglrp._guard.HookSet` the caller
    removes). The model's outputs are those of ordinary autograd.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[Recorded] = []
        self.stack: list[tuple[str, Tensor | None]] = []

    def watch(self, model: nn.Module, hooks: HookSet) -> None:
        """Follow which module runs (forward pre-hooks and hooks on every module)."""

        def push(name: str):
            def hook(module: nn.Module, args: Any) -> None:
                first = next((a for a in args if isinstance(a, Tensor)), None)
                self.stack.append((name, first))

            return hook

        def pop(module: nn.Module, args: Any, output: Any) -> None:
            if self.stack:
                self.stack.pop()

        for name, module in model.named_modules():
            hooks.add(module.register_forward_pre_hook(push(name)))
            hooks.add(module.register_forward_hook(pop))

    def _record(self, weights: Tensor) -> None:
        name, tokens = self.stack[-1] if self.stack else ("", None)
        self.records.append(Recorded(weights, name, tokens))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float):
        out, weights = plain_attend(q, k, v, mask, scale)
        self._record(weights)
        return out, weights

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = f"module '{self.stack[-1][0]}'" if self.stack else "the model"
        if func is F.multi_head_attention_forward:

            def project(i: int, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
                return F.linear(x, w, b)

            return multi_head_forward(self._attend, project, where, *args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return sdpa_forward(self._attend, where, *args, **kwargs)
        result = func(*args, **kwargs)
        if func in SOFTMAXES and isinstance(result, Tensor) and result.ndim >= 3:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int) and dim % result.ndim == result.ndim - 1:
                self._record(result)
        return result


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of ``tokens`` patch tokens for an input of ``height`` x ``width``:
    ``h * w = tokens`` with ``h / w = height / width``."""
    h = round(math.sqrt(tokens * height / width)) if tokens > 0 else 0
    if h < 1 or tokens % h or abs((tokens // h) * height - h * width) > max(height, width) // 2:
        raise ValueError(
            f"cannot lay {tokens} patch tokens (after the class token) out as a grid with the "
            f"input's aspect ratio {height}x{width}; the attention baselines need ViT tokens "
            "(class token first, then the patches row by row)"
        )
    return h, tokens // h


def _forward(
    model: nn.Module, x: Tensor, layer: str | nn.Module | None = None
) -> tuple[Tensor, list[Recorded], Tensor | None]:
    """Logits, attention records and (with ``layer``) that module's output, one forward pass."""
    recorder = AttentionRecorder()
    captured: list[Tensor] = []
    with HookSet() as hooks:
        recorder.watch(model, hooks)
        if layer is not None:
            name, module = _resolve_layer(model, layer)

            def keep(module: nn.Module, args: Any, output: Any) -> None:
                if not isinstance(output, Tensor) or output.ndim != 3:
                    raise ValueError(
                        f"layer {name!r} outputs {type(output).__name__}"
                        f"{tuple(output.shape) if isinstance(output, Tensor) else ''}; "
                        "vit_gradcam needs (N, tokens, channels) tokens"
                    )
                captured.append(output)

            hooks.add(module.register_forward_hook(keep))
        leaf = x.detach().requires_grad_(True)
        with recorder:
            logits = check_logits(model(leaf.clone()), x.shape[0])
    if not recorder.records:
        raise _no_attention_error()
    if layer is not None and not captured:
        raise ValueError(f"layer {name!r} was not called in the forward pass")
    return logits, recorder.records, captured[-1] if captured else None


def _per_image(records: list[Recorded], n: int) -> list[Tensor]:
    """Each record's weights as (N, H, T, T); errors name what does not fit."""
    out = []
    for r in records:
        w = r.weights
        if w.shape[-1] != w.shape[-2] or w.numel() % (n * w.shape[-1] ** 2):
            raise ValueError(
                f"attention in {r.module or 'the model'} has weights of shape "
                f"{tuple(w.shape)}; rollout needs square self-attention over the batch of {n}"
            )
        out.append(w.reshape(n, -1, w.shape[-2], w.shape[-1]))
    tokens = {w.shape[-1] for w in out}
    if len(tokens) > 1:
        raise ValueError(
            f"the attention layers see different numbers of tokens ({sorted(tokens)}); "
            "rollout needs the same tokens in every layer"
        )
    return out


def rollout(weights: list[Tensor]) -> Tensor:
    r"""Attention rollout (Abnar & Zuidema 2020) of per-layer weights (N, H, T, T), in order.

    :math:`\bar A_l = \tfrac12 \mathrm{mean}_h A_l + \tfrac12 I`, rows divided by their sums,
    and :math:`R = \bar A_L \cdots \bar A_2 \bar A_1`; returns :math:`R` (N, T, T).
    """
    eye = torch.eye(weights[0].shape[-1], dtype=weights[0].dtype, device=weights[0].device)
    result = eye.expand(weights[0].shape[0], -1, -1)
    for a in weights:
        bar = 0.5 * a.mean(dim=1) + 0.5 * eye
        bar = bar / bar.sum(dim=-1, keepdim=True)
        result = bar @ result
    return result


def rollout_gradient(weights: list[Tensor], grads: list[Tensor]) -> Tensor:
    r"""Gradient-weighted rollout (Chefer et al. 2021) of per-layer weights and gradients.

    With :math:`\bar A_l = \mathrm{mean}_h (\nabla A_l \odot A_l)^+` (heads on axis 1 of
    (N, H, T, T)), :math:`R \leftarrow R + \bar A_l R` for :math:`l = 1 \dots L` from
    :math:`R = I`; returns :math:`R` (N, T, T).
    """
    eye = torch.eye(weights[0].shape[-1], dtype=weights[0].dtype, device=weights[0].device)
    result = eye.expand(weights[0].shape[0], -1, -1)
    for a, g in zip(weights, grads, strict=True):
        bar = (g * a).clamp(min=0).mean(dim=1)
        result = result + bar @ result
    return result


def _entering_tokens(record: Recorded, n: int) -> tuple[Tensor, bool]:
    """The tokens entering an attention computation and whether they are sequence-first
    ((T, N, D), ``nn.MultiheadAttention(batch_first=False)``)."""
    tokens = record.tokens
    if tokens is not None and tokens.ndim == 3 and n in tokens.shape[:2]:
        return tokens, tokens.shape[0] != n
    raise ValueError(
        f"the last attention ({record.module or 'the model'}) has no (N, tokens, channels) "
        "input; pass layer=<module name> whose output holds the tokens"
    )


def _class_row_maps(relevance: Tensor, x: Tensor) -> Tensor:
    """The class token's row over the patch tokens, (N, 1, h, w) on the patch grid."""
    patches = relevance[:, 0, 1:]
    h, w = token_grid(patches.shape[-1], x.shape[-2], x.shape[-1])
    return patches.reshape(-1, 1, h, w)


def _finish(maps: list[Tensor], multi: bool, x: Tensor, upsample: bool) -> Tensor:
    cam = stack_targets(maps, multi)
    return _upsample_maps(cam, x.shape[-2:]) if upsample else cam


@register(
    "attention_rollout",
    label="Attention rollout",
    returns="map",
    family="attention",
    summary="product over layers of head-averaged attention plus identity, class token row",
    reference="Abnar & Zuidema 2020",
)
def attention_rollout(model: nn.Module, x: Tensor, target: Target, upsample: bool = True) -> Tensor:
    r"""Attention rollout (Abnar & Zuidema, ACL 2020), (N, 1, H, W).

    :math:`R = \prod_l \mathrm{rownorm}(\tfrac12 \mathrm{mean}_h A_l + \tfrac12 I)` (last
    layer on the left, :func:`rollout`); the map is the class token's row over the patch
    tokens. The same map for every target (attention does not depend on the class); the
    target is still resolved and a K axis returned for K targets.

    Parameters
    ----------
    model, x, target
        A transformer classifier (class token first), (N, C, H, W) input, the target.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps the patch grid.
    """
    logits, records, _ = _forward(model, x)
    columns, multi = target.columns(logits)
    with torch.no_grad():
        weights = [w.detach() for w in _per_image(records, x.shape[0])]
        cam = _class_row_maps(rollout(weights), x)
    return _finish([cam] * columns.shape[1], multi, x, upsample)


@register(
    "gradient_rollout",
    label="Gradient rollout",
    returns="map",
    family="attention",
    summary="R <- R + mean_h (grad A * A)^+ R over the layers, class token row",
    reference="Chefer et al. 2021 (Generic Attention-model Explainability)",
)
def gradient_rollout(model: nn.Module, x: Tensor, target: Target, upsample: bool = True) -> Tensor:
    r"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021), (N, 1, H, W).

    :math:`\bar A_l = \mathrm{mean}_h (\partial z_t / \partial A_l \odot A_l)^+` and
    :math:`R \leftarrow R + \bar A_l R` from :math:`R = I`, layers in order
    (:func:`rollout_gradient`); the map is the class token's row over the patch tokens.

    Parameters
    ----------
    model, x, target
        A transformer classifier (class token first), (N, C, H, W) input, the target.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps the patch grid.
    """
    logits, records, _ = _forward(model, x)
    scores, _, multi = per_target(logits, target)
    raw = [r.weights for r in records]
    weights = [w.detach() for w in _per_image(records, x.shape[0])]
    maps = []
    for k, score in enumerate(scores):
        grads = torch.autograd.grad(score, raw, retain_graph=k < len(scores) - 1, allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g for w, g in zip(raw, grads, strict=True)]
        per_image = [g.reshape(w.shape) for g, w in zip(grads, weights, strict=True)]
        with torch.no_grad():
            maps.append(_class_row_maps(rollout_gradient(weights, per_image), x))
    return _finish(maps, multi, x, upsample)


@register(
    "vit_gradcam",
    label="Grad-CAM (ViT)",
    returns="map",
    family="attention",
    summary="Grad-CAM on patch tokens: tokens weighted by their mean gradient, ReLU",
    reference="Selvaraju et al. 2017; tokens as pytorch-grad-cam",
)
def vit_gradcam(
    model: nn.Module,
    x: Tensor,
    target: Target,
    layer: str | nn.Module | None = None,
    upsample: bool = True,
) -> Tensor:
    r"""Grad-CAM on the patch tokens of a transformer, (N, 1, H, W).

    With patch tokens :math:`a_{pc}` (class token dropped) and
    :math:`g_{pc} = \partial z_t / \partial a_{pc}`: :math:`w_c = \frac1P \sum_p g_{pc}` and
    the map :math:`\mathrm{ReLU}(\sum_c w_c a_{pc})` on the patch grid.

    Parameters
    ----------
    model, x, target
        A transformer classifier (class token first), (N, C, H, W) input, the target.
    layer
        Module whose (N, T, D) output tokens are used. Default: the tokens entering the last
        attention (the first input of the module that computes it: for torchvision's ViT the
        last block's ``ln_1`` output, pytorch-grad-cam's ``blocks[-1].norm1``). The last
        block's output would give a zero map: only its class token reaches the head.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps the patch grid.
    """
    logits, records, tokens = _forward(model, x, layer)
    seq_first = False
    if tokens is None:
        tokens, seq_first = _entering_tokens(records[-1], x.shape[0])
    scores, _, multi = per_target(logits, target)
    a = (tokens.transpose(0, 1) if seq_first else tokens).detach()[:, 1:]
    grid = token_grid(a.shape[1], x.shape[-2], x.shape[-1])
    maps = []
    for k, score in enumerate(scores):
        (grad,) = torch.autograd.grad(
            score, tokens, retain_graph=k < len(scores) - 1, allow_unused=True
        )
        if grad is None:
            raise ValueError("the target logits do not depend on the chosen tokens")
        if seq_first:
            grad = grad.transpose(0, 1)
        weights = grad[:, 1:].mean(dim=1, keepdim=True)
        cam = torch.relu((weights * a).sum(dim=-1))
        maps.append(cam.reshape(-1, 1, *grid))
    return _finish(maps, multi, x, upsample)
