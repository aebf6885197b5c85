"""Vision Transformers: CP-LRP and AttnLRP through attention, proven.

* CP-LRP with every bias, the class token and the position embedding zero (float64): LRP-0
  conserves the target logit, and equals x * gradient of the same ViT written out below with
  the attention weights, LayerNorm standard deviations and GELU ratios detached (an
  independent reference: the model's parameters, explicit operations, no engine).
* AttnLRP: the softmax rule and the uniform product rule against their formulas on a single
  attention layer, and the uniform rule's conservation.
* SGLRP sums to zero on the ViT; hand-written attention and ``F.scaled_dot_product_attention``
  are treated like ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sglrp
from sglrp.models import vit_b_16, vit_tiny
from sglrp.propagation import propagate
from sglrp.propagation.output import OUTPUT_RELEVANCE


def tiny_vit(zero_bias: bool) -> nn.Module:
    torch.manual_seed(0)
    model = vit_tiny(num_classes=6, num_layers=2).double().eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.5)
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if "bias" in name:
                    p.copy_(torch.zeros_like(p) if zero_bias else 0.05 * torch.randn_like(p))
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
        if zero_bias:
            model.class_token.zero_()
            model.encoder.pos_embedding.zero_()
        else:
            model.class_token.normal_(std=0.1)
            model.encoder.pos_embedding.normal_(std=0.1)
    return model


def images(n: int = 2) -> Tensor:
    return torch.randn(
        n, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )


def _ln(x: Tensor, ln: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    std = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + ln.eps).detach()
    return (x - mean) / std * ln.weight + ln.bias


def _gelu(x: Tensor) -> Tensor:
    y = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    return x * torch.where(x == 0, torch.zeros_like(x), y / x).detach()


def reference_vit(model: nn.Module, x: Tensor) -> Tensor:
    """The ViT's forward, written out, with attention weights, LayerNorm std and GELU ratio
    detached (CP-LRP's linearisation)."""
    n = x.shape[0]
    p = model.conv_proj
    h = F.conv2d(x, p.weight, p.bias, stride=p.stride)
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([model.class_token.expand(n, -1, -1), h], dim=1)
    h = h + model.encoder.pos_embedding
    for block in model.encoder.layers:
        attn = block.self_attention
        e, heads = attn.embed_dim, attn.num_heads
        y = _ln(h, block.ln_1)
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

        def split(t: Tensor, heads: int = heads, e: int = e) -> Tensor:
            return t.view(n, -1, heads, e // heads).transpose(1, 2)

        q, k, v = (split(y @ w.T + b) for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // heads), dim=-1).detach()
        o = (a @ v).transpose(1, 2).reshape(n, -1, e)
        h = h + o @ attn.out_proj.weight.T + attn.out_proj.bias
        y = _ln(h, block.ln_2)
        fc1, fc2 = block.mlp[0], block.mlp[3]
        h = h + _gelu(y @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
    h = _ln(h, model.encoder.ln)[:, 0]
    return h @ model.heads.head.weight.T + model.heads.head.bias


def test_reference_forward_equals_the_model() -> None:
    model = tiny_vit(zero_bias=False)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(reference_vit(model, x), model(x), rtol=1e-10, atol=1e-12)


def test_cp_lrp0_conserves_the_logit() -> None:
    model = tiny_vit(zero_bias=True)
    result = propagate(model, images(), "predicted", "lrp", "lrp0", attention="cp")
    z_t = result.logits.gather(1, result.targets[:, None])[:, 0]
    assert (z_t.abs() > 1e-2).all()
    torch.testing.assert_close(result.input_relevance.sum((1, 2, 3)), z_t, rtol=1e-9, atol=0)


@pytest.mark.parametrize("output", ["lrp", "clrp", "sglrp"])
def test_cp_lrp0_equals_the_reference(output: str) -> None:
    model = tiny_vit(zero_bias=False)
    x = images()
    result = propagate(model, x, "predicted", output, "lrp0", attention="cp")
    vector = OUTPUT_RELEVANCE[output](result.logits, result.targets)
    leaf = x.clone().requires_grad_(True)
    z = reference_vit(model, leaf)
    (grad,) = torch.autograd.grad(z, leaf, grad_outputs=vector / z.detach())
    expected = (x * grad).detach()
    scale = expected.abs().max()
    torch.testing.assert_close(result.input_relevance, expected, rtol=1e-9, atol=1e-9 * scale)


def test_sglrp_sums_to_zero_on_the_vit() -> None:
    model = tiny_vit(zero_bias=True)
    for attention in ("cp", "attnlrp"):
        r = sglrp.explain(
            model, images(), "predicted", method="sglrp", rules="lrp0", attention=attention
        )
        if attention == "cp":
            assert (r.sum((1, 2, 3)).abs() <= 1e-9 * r.abs().sum((1, 2, 3))).all()
        assert torch.isfinite(r).all() and (r.abs().sum((1, 2, 3)) > 0).all()


# --- AttnLRP's rules against their formulas ----------------------------------------------------


class OneHead(nn.Module):
    """q = x Wq, k = x Wk, v = x Wv; A = softmax(q k^T / sqrt(d)); out = A v; then a head."""

    def __init__(self, d: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.head = nn.Linear(d, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)  # (N, T, d) tokens from a (N, d, h, w) "image"
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.head((a @ v).sum(1))


def test_attnlrp_rules_equal_their_formulas() -> None:
    torch.manual_seed(1)
    model = OneHead().double()
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    t = torch.tensor([0, 2])
    got = propagate(model, x, t, "lrp", "lrp0", attention="attnlrp").input_relevance

    # by hand: LRP-0 on the linear maps, the uniform rule on both products, the softmax rule
    tok = x.flatten(2).transpose(1, 2)
    wq, wk, wv, wh = (m.weight for m in (model.q, model.k, model.v, model.head))
    q, k, v = tok @ wq.T, tok @ wk.T, tok @ wv.T
    scores = q @ k.transpose(-2, -1) / 2.0
    a = torch.softmax(scores, dim=-1)
    o = a @ v  # (N, T, d)
    pooled = o.sum(1)
    z = pooled @ wh.T
    r_z = torch.zeros_like(z).scatter_(1, t[:, None], z.gather(1, t[:, None]))
    r_pooled = pooled * ((r_z / z) @ wh)  # LRP-0 at the head
    r_o = o * (r_pooled / pooled)[:, None, :]  # the sum spreads in proportion
    s_o = r_o / o
    # uniform rule on o = a v: each factor gets half, spread like LRP-0 over the products
    r_a = 0.5 * a * torch.einsum("ntd,nsd->nts", s_o, v)
    r_v = 0.5 * v * torch.einsum("nts,ntd->nsd", a, s_o)
    assert torch.allclose(r_a.sum() + r_v.sum(), r_o.sum())  # the uniform rule conserves
    # softmax rule (AttnLRP Prop. 3.1): R_in_i = x_i (R_i - s_i sum_j R_j) on the logits
    r_scores = scores * (r_a - a * r_a.sum(-1, keepdim=True))
    # uniform rule on scores = q k^T / 2
    s_s = r_scores / scores
    r_q = 0.5 * q * torch.einsum("nts,nsd->ntd", s_s, k) / 2.0
    r_k = 0.5 * k * torch.einsum("nts,ntd->nsd", s_s, q) / 2.0
    # LRP-0 through the projections back to the tokens
    r_tok = sum(tok * ((r / p) @ w) for r, p, w in ((r_q, q, wq), (r_k, k, wk), (r_v, v, wv)))
    expected = r_tok.transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spelling", ["handwritten", "sdpa"])
def test_other_attention_spellings_are_treated(spelling: str) -> None:
    torch.manual_seed(2)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(4, 12, bias=False)
            self.head = nn.Linear(4, 3, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            tok = x.flatten(2).transpose(1, 2)
            q, k, v = self.qkv(tok).chunk(3, dim=-1)
            if spelling == "sdpa":
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) @ v
            return self.head(o.mean(1))

    model = Attention().double()
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    result = propagate(model, x, "predicted", "lrp", "lrp0", attention="cp")
    z_t = result.logits.gather(1, result.targets[:, None])[:, 0]
    torch.testing.assert_close(result.input_relevance.sum((1, 2, 3)), z_t, rtol=1e-9, atol=0)
    assert sglrp.inspect(model, x, rules="lrp0").ok
    with pytest.raises(ValueError, match=r"ZBox on layer 'qkv' .* needs the image itself"):
        sglrp.explain(model, x, method="lrp", rules="dtd")


def test_inspect_names_the_attention_treatment() -> None:
    model = tiny_vit(zero_bias=False)
    for attention in ("cp", "attnlrp"):
        report = sglrp.inspect(model, images(1), rules="epsilon-" + attention)
        assert report.ok, report.problems
        text = str(report)
        assert f"attention ({attention})" in text
        assert "linear (out_proj)" in text and "linear (in_proj v)" in text


@pytest.mark.heavy
def test_vit_b_16_is_treated_everywhere() -> None:
    report = sglrp.inspect(vit_b_16().eval(), torch.randn(1, 3, 224, 224))
    assert report.ok, report.problems


def test_collapse_curve_runs_on_a_vit_and_a_layer_that_never_runs_is_named() -> None:
    """``nn.MultiheadAttention`` never calls its ``out_proj`` module (it uses the weight):
    the default layers of the class-collapse curve leave it out, and asking to record it is
    an error naming it."""
    from sglrp.metrics import class_collapse
    from sglrp.propagation import propagate

    model = tiny_vit(zero_bias=False)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    curve = class_collapse(model, x, rules="epsilon-cp")
    assert not any(name.endswith("out_proj") for name in curve.layers)
    assert "heads.head" in curve.layers
    unused = "encoder.layers.encoder_layer_0.self_attention.out_proj"
    with pytest.raises(ValueError, match="does not run in the model's forward pass"):
        propagate(model, x, "predicted", rules="epsilon-cp", record=[unused])
