"""Transformer baselines: attention rollout, gradient rollout and Grad-CAM on tokens, proven.

* :func:`rollout` and :func:`rollout_gradient` on explicit small matrices against results
  worked out by hand;
* a hand-made 2-layer attention network (hand-written softmax attention): both rollouts
  through ``sglrp.explain`` against the formulas applied to the attention weights and their
  gradients computed by an independent written-out forward;
* the ViT (``nn.MultiheadAttention``): the captured weights equal the module's own
  ``need_weights`` output, gradient rollout and Grad-CAM on tokens against their formulas on
  a written-out forward; targets (int, ``"predicted"``, ``"second"``, (N, K)); the model is
  left unchanged, also after an error; a CNN gets the named error.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state
from torch import Tensor, nn

import sglrp
from sglrp.methods import available, get
from sglrp.methods.attention_maps import rollout, rollout_gradient, token_grid
from sglrp.models import vit_tiny


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------- explicit small matrices


def test_rollout_by_hand() -> None:
    # layer 1, two heads: mean [[0, .75, .25], [0, 1, 0], [0, 0, 1]];
    # 0.5 mean + 0.5 I = [[.5, .375, .125], [0, 1, 0], [0, 0, 1]] (rows already sum to 1)
    a1 = torch.tensor(
        [
            [[0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        ],
        dtype=torch.float64,
    )[None]
    # layer 2, one head whose first row sums to 0.5 (a masked key): 0.5 A + 0.5 I has rows
    # [.5, .125, .125] -> / .75 = [2/3, 1/6, 1/6], [0, 1, 0] and [.25, 0, .75]
    a2 = torch.tensor(
        [[[[0.0, 0.25, 0.25], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]]], dtype=torch.float64
    )
    r = rollout([a1, a2])
    row0 = torch.tensor([2 / 3 * 0.5, 2 / 3 * 0.375 + 1 / 6, 2 / 3 * 0.125 + 1 / 6])
    row2 = torch.tensor([0.25 * 0.5, 0.25 * 0.375, 0.25 * 0.125 + 0.75])
    torch.testing.assert_close(r[0, 0], row0.double())
    torch.testing.assert_close(r[0, 1], torch.tensor([0.0, 1.0, 0.0]).double())
    torch.testing.assert_close(r[0, 2], row2.double())
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 3).double())


def test_gradient_rollout_by_hand() -> None:
    a1 = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]], [[1.0, 0.0], [0.5, 0.5]]]]).double()
    g1 = torch.tensor([[[[2.0, -1.0], [4.0, 1.0]], [[1.0, 3.0], [-2.0, 2.0]]]]).double()
    # relu(g * a): head 1 [[1, 0], [1, .75]], head 2 [[1, 0], [0, 1]]; mean [[1, 0], [.5, .875]]
    a2 = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]]).double()
    g2 = torch.tensor([[[[2.0, 2.0], [0.0, -1.0]]]]).double()
    # relu(g * a) = [[1, 1], [0, 0]]
    # R1 = I + [[1, 0], [.5, .875]] = [[2, 0], [.5, 1.875]]
    # R2 = R1 + [[1, 1], [0, 0]] @ R1 = R1 + [[2.5, 1.875], [0, 0]] = [[4.5, 1.875], [.5, 1.875]]
    r = rollout_gradient([a1, a2], [g1, g2])
    torch.testing.assert_close(r[0], torch.tensor([[4.5, 1.875], [0.5, 1.875]]).double())


def test_token_grid() -> None:
    assert token_grid(64, 64, 64) == (8, 8)
    assert token_grid(8, 32, 64) == (2, 4)
    with pytest.raises(ValueError, match="grid"):
        token_grid(7, 64, 64)


# ------------------------------------------------------------- a hand-made 2-layer network


class TwoLayerAttention(nn.Module):
    """Pixels of a (N, 1, 2, 2) image as 4 tokens of width 3, a class token, two layers of
    one-head hand-written attention ``t <- t + softmax(q k^T) v``, a linear head on the class
    token."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.embed = nn.Linear(1, 3)
        self.cls = nn.Parameter(torch.randn(1, 1, 3, generator=g))
        self.qkv = nn.ModuleList(nn.Linear(3, 9) for _ in range(2))
        self.head = nn.Linear(3, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x.flatten(2).transpose(1, 2))
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1)
        for layer in self.qkv:
            q, k, v = layer(t).chunk(3, dim=-1)
            a = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
            t = t + a @ v
        return self.head(t[:, 0])


def _two_layer_parts(model: TwoLayerAttention, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """The network written out: its logits and the attention weights of each layer as
    intermediate tensors of the graph, so that their gradients are total derivatives (the
    first layer's also through the second layer's weights, as autograd gives Chefer et al.)."""
    t = x.flatten(2).transpose(1, 2) @ model.embed.weight.T + model.embed.bias
    t = torch.cat([model.cls.expand(len(x), -1, -1), t], dim=1)
    weights = []
    for layer in model.qkv:
        q, k, v = (t @ layer.weight.T + layer.bias).chunk(3, dim=-1)
        e = torch.exp(q @ k.transpose(-2, -1))
        a = e / e.sum(-1, keepdim=True)
        weights.append(a)
        t = t + a @ v
    return weights, t[:, 0] @ model.head.weight.T + model.head.bias


def test_two_layer_rollout_against_hand_computation() -> None:
    model = TwoLayerAttention().eval()
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves, logits = _two_layer_parts(model, x)
    torch.testing.assert_close(logits.detach(), model(x).detach())
    a1, a2 = (a.detach() for a in leaves)
    eye = torch.eye(5, dtype=torch.float64)
    bar1 = (0.5 * a1 + 0.5 * eye) / (0.5 * a1 + 0.5 * eye).sum(-1, keepdim=True)
    bar2 = (0.5 * a2 + 0.5 * eye) / (0.5 * a2 + 0.5 * eye).sum(-1, keepdim=True)
    expected = (bar2 @ bar1)[:, 0, 1:].reshape(3, 1, 2, 2)
    got = sglrp.explain(model, x, 2, method="attention_rollout", upsample=False)
    torch.testing.assert_close(got, expected)
    # upsampling a 2x2 grid to the 2x2 input changes nothing
    torch.testing.assert_close(sglrp.explain(model, x, 2, method="attention_rollout"), expected)


def test_two_layer_gradient_rollout_against_hand_computation() -> None:
    model = TwoLayerAttention().eval()
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.tensor([1, 3, 2])
    leaves, logits = _two_layer_parts(model, x)
    g1, g2 = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), leaves)
    a1, a2 = (a.detach() for a in leaves)
    r = torch.eye(5, dtype=torch.float64).expand(3, 5, 5)
    r = r + (g1 * a1).clamp(min=0) @ r
    r = r + (g2 * a2).clamp(min=0) @ r
    got = sglrp.explain(model, x, target, method="gradient_rollout", upsample=False)
    torch.testing.assert_close(got, r[:, 0, 1:].reshape(3, 1, 2, 2))


# ------------------------------------------------------------- the ViT (nn.MultiheadAttention)


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = vit_tiny(num_classes=5, num_layers=2, image_size=32, hidden_dim=32, mlp_dim=64)
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.5)
        model.class_token.normal_(std=0.5)
    return model.double().eval()


def images(n: int = 2) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3)).double()


def _vit_parts(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """Logits of the ViT written out, its attention weights (N, H, T, T) (gradients reach
    them) and the tokens entering the last block's attention (the ``ln_1`` output)."""
    n = len(x)
    p = model.conv_proj
    h = F.conv2d(x, p.weight, p.bias, stride=p.stride).flatten(2).transpose(1, 2)
    h = torch.cat([model.class_token.expand(n, -1, -1), h], dim=1) + model.encoder.pos_embedding
    weights, entering = [], None
    for block in model.encoder.layers:
        attn = block.self_attention
        e, heads = attn.embed_dim, attn.num_heads
        y = F.layer_norm(h, (e,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        entering = y
        q, k, v = (
            (y @ w.T + b).view(n, -1, heads, e // heads).transpose(1, 2)
            for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3), strict=True)
        )
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // heads), dim=-1)
        weights.append(a)
        o = (a @ v).transpose(1, 2).reshape(n, -1, e)
        h = h + o @ attn.out_proj.weight.T + attn.out_proj.bias
        y = F.layer_norm(h, (e,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        h = h + block.mlp(y)
    h = model.encoder.ln(h)[:, 0]
    return model.heads(h), weights, entering


def test_captured_weights_are_the_modules_own() -> None:
    model = small_vit()
    x = images()
    own = []

    def hook(module, args, kwargs, output):
        options = {**kwargs, "need_weights": True, "average_attn_weights": False}
        with torch.no_grad():
            _, w = module.forward(*args, **options)
        own.append(w)

    handles = [
        b.self_attention.register_forward_hook(hook, with_kwargs=True) for b in model.encoder.layers
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    eye = torch.eye(own[0].shape[-1], dtype=torch.float64)
    bars = [(0.5 * a.mean(1) + 0.5 * eye) for a in own]
    bars = [b / b.sum(-1, keepdim=True) for b in bars]
    expected = (bars[1] @ bars[0])[:, 0, 1:].reshape(2, 1, 4, 4)
    got = sglrp.explain(model, x, "predicted", method="attention_rollout", upsample=False)
    torch.testing.assert_close(got, expected)
    up = sglrp.explain(model, x, "predicted", method="attention_rollout")
    assert up.shape == (2, 1, 32, 32)
    torch.testing.assert_close(up, F.interpolate(expected, size=(32, 32), mode="bilinear"))


def test_vit_gradient_rollout_formula() -> None:
    model = small_vit()
    x = images()
    logits, weights, _ = _vit_parts(model, x)
    torch.testing.assert_close(logits, model(x))
    t = logits.argmax(1)
    grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), weights)
    r = torch.eye(17, dtype=torch.float64).expand(2, 17, 17)
    for a, g in zip(weights, grads, strict=True):
        r = r + (g * a.detach()).clamp(min=0).mean(1) @ r
    got = sglrp.explain(model, x, "predicted", method="gradient_rollout", upsample=False)
    torch.testing.assert_close(got, r[:, 0, 1:].reshape(2, 1, 4, 4))


def test_vit_gradcam_formula() -> None:
    model = small_vit()
    x = images()
    logits, _, tokens = _vit_parts(model, x)
    t = torch.tensor([1, 4])
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), tokens)
    w = g[:, 1:].mean(dim=1, keepdim=True)
    cam = torch.relu((w * tokens.detach()[:, 1:]).sum(-1)).reshape(2, 1, 4, 4)
    assert cam.abs().sum() > 0
    got = sglrp.explain(model, x, t, method="vit_gradcam", upsample=False)
    torch.testing.assert_close(got, cam)
    # the same tokens named explicitly: the last block's ln_1 output
    named = sglrp.explain(
        model, x, t, method="vit_gradcam", layer="encoder.layers.encoder_layer_1.ln_1"
    )
    torch.testing.assert_close(named, F.interpolate(cam, size=(32, 32), mode="bilinear"))


@pytest.mark.parametrize("method", ["attention_rollout", "gradient_rollout", "vit_gradcam"])
def test_targets(method: str) -> None:
    model = small_vit()
    x = images(3)
    with torch.no_grad():
        top = model(x).topk(2, dim=1).indices
    predicted = sglrp.explain(model, x, "predicted", method=method)
    second = sglrp.explain(model, x, "second", method=method)
    assert predicted.shape == second.shape == (3, 1, 32, 32)
    torch.testing.assert_close(predicted, sglrp.explain(model, x, top[:, 0], method=method))
    torch.testing.assert_close(second, sglrp.explain(model, x, top[:, 1], method=method))
    both = sglrp.explain(model, x, top, method=method)
    assert both.shape == (3, 2, 1, 32, 32)
    torch.testing.assert_close(both[:, 0], predicted)
    torch.testing.assert_close(both[:, 1], second)
    fixed = sglrp.explain(model, x, 3, method=method)
    torch.testing.assert_close(fixed, sglrp.explain(model, x, [3, 3, 3], method=method))
    if method != "attention_rollout":  # rollout ignores the class by construction
        assert not torch.allclose(predicted, second)


def test_registered() -> None:
    assert {"attention_rollout", "gradient_rollout", "vit_gradcam"} <= set(available("attention"))
    for name in ("attention_rollout", "gradient_rollout", "vit_gradcam"):
        assert get(name).returns == "map"
    assert get("vit_gradcam").takes_layer


@pytest.mark.parametrize("method", ["attention_rollout", "gradient_rollout", "vit_gradcam"])
def test_model_and_input_untouched(method: str) -> None:
    model = small_vit()
    model.train()  # explanations run in eval mode and restore the flags
    x = images()
    x_before = x.clone()
    before = model_state(model)
    sglrp.explain(model, x, "predicted", method=method)
    assert_same_state(before, model_state(model))
    assert torch.equal(x, x_before)
    # an error raised inside the forward pass (a hook of ours) leaves nothing behind
    bad = "encoder.layers.encoder_layer_1.self_attention"  # outputs a tuple, not tokens
    with pytest.raises(ValueError, match="tokens"):
        sglrp.explain(model, x, "predicted", method="vit_gradcam", layer=bad)
    assert_same_state(before, model_state(model))


def test_no_attention_is_a_named_error() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    cnn(torch.zeros(1, 3, 8, 8))
    for method in ("attention_rollout", "gradient_rollout", "vit_gradcam"):
        with pytest.raises(ValueError, match="no attention"):
            sglrp.explain(cnn, torch.randn(2, 3, 8, 8), "predicted", method=method)


def test_scaled_dot_product_attention_is_captured() -> None:
    class SdpaNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(1, 4)
            self.qkv = nn.Linear(4, 12)
            self.head = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            t = self.embed(x.flatten(2).transpose(1, 2))
            t = torch.cat([t.mean(1, keepdim=True), t], dim=1)
            q, k, v = (u.view(len(x), -1, 2, 2).transpose(1, 2) for u in self.qkv(t).chunk(3, -1))
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(x), -1, 4)
            return self.head((t + o)[:, 0])

    model = SdpaNet().double().eval()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        t = model.embed(x.flatten(2).transpose(1, 2))
        t = torch.cat([t.mean(1, keepdim=True), t], dim=1)
        q, k, _ = (u.view(2, -1, 2, 2).transpose(1, 2) for u in model.qkv(t).chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(2), dim=-1)
    eye = torch.eye(5, dtype=torch.float64)
    bar = 0.5 * a.mean(1) + 0.5 * eye
    expected = bar[:, 0, 1:].reshape(2, 1, 2, 2)
    got = sglrp.explain(model, x, 0, method="attention_rollout", upsample=False)
    torch.testing.assert_close(got, expected)
