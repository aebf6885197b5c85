"""Attention, decomposed so that each part gets its LRP treatment.

``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` (through
``F.multi_head_attention_forward``) are rebuilt from their parts, :math:`A =
\\mathrm{softmax}(q k^T s + m)`, :math:`o = A v`, with

* ``"cp"`` (CP-LRP, Ali et al. ICML 2022): :math:`A` held constant, relevance flows through
  the values only (the query and key projections get none, so they are computed plainly);
* ``"attnlrp"`` (AttnLRP, Achtibat et al. ICML 2024): the uniform rule on the two products
  :math:`q k^T` and :math:`A v` (half of the relevance to each factor) and the softmax rule
  on :math:`A`, which in the engine's backward form is the softmax's own gradient.

The projections of ``nn.MultiheadAttention`` get the rule of the module (or of
``nn.Linear``); its ``out_proj`` the rule of that submodule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rules import Gradient, LinearRule
from .layers import LinearOp
from .nodes import Replace

if TYPE_CHECKING:
    from .interceptor import Interceptor


def uniform_product(fn: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor) -> Tensor:
    """``fn(a, b)`` (a product) with the uniform rule: the backward of
    :math:`\\tfrac12 \\mathrm{fn}(a, b_{const}) + \\tfrac12 \\mathrm{fn}(a_{const}, b)`."""
    with torch.no_grad():
        value = fn(a, b)
    return Replace.apply(0.5 * fn(a, b.detach()) + 0.5 * fn(a.detach(), b), value)


def _attend(it: Interceptor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float):
    """:math:`\\mathrm{softmax}(q k^T s + m) v` with the interceptor's attention treatment;
    returns the output and the attention weights (detached)."""
    kt = k.transpose(-2, -1)
    if it.attention == "attnlrp":
        scores = uniform_product(torch.matmul, q, kt) * scale
    else:
        scores = torch.matmul(q.detach(), kt.detach()) * scale
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if it.attention == "attnlrp":
        out = uniform_product(torch.matmul, weights, v)
    else:
        weights = weights.detach()
        out = torch.matmul(weights, v)
    return out, weights.detach()


def _additive_mask(
    mask: Tensor | None, dtype: torch.dtype, shape: tuple[int, int], causal: bool
) -> Tensor | None:
    """A boolean (True = attend) or additive mask as an additive float mask."""
    out = None
    if mask is not None:
        if mask.dtype == torch.bool:
            out = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, float("-inf")
            )
        else:
            out = mask.to(dtype)
    if causal:
        causal_mask = torch.ones(shape, dtype=torch.bool).tril()
        extra = torch.zeros(shape, dtype=dtype).masked_fill(~causal_mask, float("-inf"))
        out = extra if out is None else out + extra
    return out


Attend = Callable[[Tensor, Tensor, Tensor, "Tensor | None", float], tuple[Tensor, Tensor]]
"""``attend(q, k, v, additive_mask, scale) -> (output, weights)``: one attention product."""

Project = Callable[[int, Tensor, Tensor, "Tensor | None"], Tensor]
"""``project(i, x, weight, bias) -> F.linear(x, weight, bias)`` with a treatment; ``i`` is 0, 1,
2 for the query, key and value projections and 3 for the output projection."""


def plain_attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float):
    """:math:`A = \\mathrm{softmax}(q k^T s + m)`, :math:`o = A v` with ordinary autograd;
    returns ``(o, A)`` with ``A`` the tensor used in the product (gradients reach it)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, v), weights


def sdpa_forward(
    attend: Attend,
    where: str,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` rebuilt from its parts, the product by ``attend``."""
    if dropout_p:
        raise ValueError(
            f"scaled_dot_product_attention in {where} uses dropout_p={dropout_p}; explanations "
            "need a deterministic model (pass dropout_p=0 in eval)"
        )
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    mask = _additive_mask(attn_mask, query.dtype, (query.shape[-2], key.shape[-2]), is_causal)
    return attend(query, key, value, mask, s)[0]


def scaled_dot_product(it: Interceptor, *args, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention`` with the attention treatment."""
    return sdpa_forward(partial(_attend, it), it._where("attention"), *args, **kwargs)


def _projection(
    it: Interceptor, x: Tensor, weight: Tensor, bias: Tensor | None, rule_module, where: str
) -> Tensor:
    """``F.linear(x, weight, bias)`` as a rule node of ``rule_module``'s (or nn.Linear's) rule."""
    value = F.linear(x, weight, bias)
    rule = it.rule_of(rule_module) if rule_module is not None else None
    if not isinstance(rule, LinearRule | Gradient):
        rule = it.rule_map.rule_for_type(nn.Linear)
    op = where.split("(")[-1].rstrip(")'") if "(" in where else "out_proj"
    if rule is None or isinstance(rule, Gradient) or not x.requires_grad:
        if rule is None:
            it.unmatched_linear.append(where)
        it.note(f"linear ({op})", "gradient (LRP-0 with bias)")
        return F.linear(x, weight, bias)
    it.note(f"linear ({op})", f"rule {rule.name}")
    out = it.rule_node(LinearOp.linear(weight, bias, it.cache), rule, x, value, where)
    it.finalize(it.pending[id(out)])
    it.last = None
    return out


def multi_head_forward(
    attend: Attend,
    project: Project,
    where: str,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` (sequence-first inputs) rebuilt from its parts: the
    projections by ``project``, the attention product of each head by ``attend``."""
    unsupported = [
        name
        for name, used in (
            ("bias_k/bias_v", bias_k is not None or bias_v is not None),
            ("add_zero_attn", add_zero_attn),
            ("static_k/static_v", static_k is not None or static_v is not None),
        )
        if used
    ]
    if unsupported:
        raise ValueError(
            f"multi-head attention in {where} uses {', '.join(unsupported)}, which the engine "
            "does not treat; assign the module Gradient() to use its gradient"
        )
    if training and dropout_p:
        raise ValueError(f"multi-head attention in {where} runs with dropout; use eval mode")
    batched = query.dim() == 3
    if not batched:
        query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, batch, embed = query.shape
    src_len = key.shape[0]
    head = embed // num_heads
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        weights = tuple(in_proj_weight.chunk(3))
    biases = (None,) * 3 if in_proj_bias is None else tuple(in_proj_bias.chunk(3))
    parts = [
        project(i, x, w, b)
        for i, (x, w, b) in enumerate(zip((query, key, value), weights, biases, strict=True))
    ]
    q, k, v = (t.reshape(t.shape[0], batch * num_heads, head).transpose(0, 1) for t in parts)
    mask = _additive_mask(attn_mask, q.dtype, (tgt_len, src_len), is_causal and attn_mask is None)
    if mask is not None and mask.dim() == 3:
        mask = mask.view(batch, num_heads, tgt_len, src_len).flatten(0, 1)
    if key_padding_mask is not None:
        if key_padding_mask.dtype == torch.bool:  # True: ignore this key
            pad = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            pad = pad.masked_fill(key_padding_mask, float("-inf"))
        else:
            pad = key_padding_mask.to(q.dtype)
        pad = (
            pad.view(batch, 1, 1, src_len)
            .expand(-1, num_heads, -1, -1)
            .reshape(batch * num_heads, 1, src_len)
        )
        mask = pad if mask is None else mask + pad
    out, weights_ = attend(q, k, v, mask, 1.0 / math.sqrt(head))
    out = out.transpose(0, 1).reshape(tgt_len * batch, embed)
    out = project(3, out, out_proj_weight, out_proj_bias).view(tgt_len, batch, embed)
    attn = None
    if need_weights:
        attn = weights_.detach().view(batch, num_heads, tgt_len, src_len)
        if average_attn_weights:
            attn = attn.mean(dim=1)
    if not batched:
        out = out.squeeze(1)
        attn = attn.squeeze(0) if attn is not None else None
    return out, attn


def multi_head(it: Interceptor, *args, **kwargs) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` (sequence-first inputs) with the attention treatment
    and rules on the input and output projections."""
    module = it.module()
    name = it.names.get(module, "") if module is not None else ""
    out_module = getattr(module, "out_proj", None)
    cp = it.attention == "cp"

    def project(i: int, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if i == 3:
            return _projection(it, x, w, b, out_module, f"layer '{name}.out_proj'")
        if cp and i < 2:
            it.note(f"linear (in_proj {'qkv'[i]})", "no relevance (attention weights constant)")
            return F.linear(x, w, b).detach()
        return _projection(it, x, w, b, module, f"layer '{name}' (in_proj {'qkv'[i]})")

    where = it._where("multi_head_attention_forward")
    return multi_head_forward(partial(_attend, it), project, where, *args, **kwargs)
