"""Building blocks of the modern zoo models against explicit formulas, and the models on small
inputs (64x64, few classes) as the shapes data set will use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sglrp.models import (
    convnext_tiny,
    efficientnet_b0,
    get_model,
    mobilenet_v2,
    mobilenet_v3_small,
    regnet_y_400mf,
    shufflenet_v2_x1_0,
    vit_tiny,
)
from sglrp.models.blocks import SqueezeExcitation, StochasticDepth, make_divisible
from sglrp.models.convnext import LayerNorm2d
from sglrp.models.regnet import StageParams, regnet_stages
from sglrp.models.shufflenet import channel_shuffle


def test_make_divisible() -> None:
    # max(divisor, floor((v + d/2) / d) d), plus d if that fell below 0.9 v
    assert make_divisible(32, 8) == 32
    assert make_divisible(36, 8) == 40  # rounds half up
    assert make_divisible(35, 8) == 32  # 32 >= 0.9 * 35
    assert make_divisible(35.9, 8) == 40  # 32 < 0.9 * 35.9 -> one more step
    assert make_divisible(3, 8) == 8  # never below the divisor
    assert make_divisible(60, 16) == 64


def test_squeeze_excitation_formula() -> None:
    se = SqueezeExcitation(6, 2, activation=nn.SiLU, scale_activation=nn.Hardsigmoid).eval()
    x = torch.randn(2, 6, 5, 4)
    pooled = x.mean(dim=(2, 3), keepdim=True)
    gate = F.hardsigmoid(se.fc2(F.silu(se.fc1(pooled))))
    with torch.no_grad():
        torch.testing.assert_close(se(x), gate * x)


def test_stochastic_depth() -> None:
    x = torch.randn(64, 3, 2, 2)
    row = StochasticDepth(0.25, "row")
    assert row.eval()(x) is x
    row.train()
    torch.manual_seed(0)
    out = row(x)
    kept = (out != 0).flatten(1).any(1)
    assert 0 < kept.sum() < 64  # some rows dropped, some kept
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert torch.all(out[~kept] == 0)
    batch = StochasticDepth(0.5, "batch").train()
    outs = [batch(x) for _ in range(20)]
    assert all(torch.all(o == 0) or torch.allclose(o, 2 * x) for o in outs)
    assert StochasticDepth(0.0, "row").train()(x) is x
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        StochasticDepth(1.5, "row")
    with pytest.raises(ValueError, match="mode must be"):
        StochasticDepth(0.1, "column")


def test_channel_shuffle_is_the_interleaving_permutation() -> None:
    groups, per_group = 3, 4
    x = torch.randn(2, groups * per_group, 3, 3)
    out = channel_shuffle(x, groups)
    for g in range(groups):
        for i in range(per_group):
            assert torch.equal(out[:, i * groups + g], x[:, g * per_group + i])


def test_layer_norm_2d_normalises_channels() -> None:
    norm = LayerNorm2d(5, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, 3, 4)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None]
    expected = expected + norm.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(norm(x), expected)


def test_regnet_y_400mf_stages() -> None:
    # RegNetY-400MF in the paper (Radosavovic et al. 2020, Table 4 / Fig. 15): widths
    # 48, 104, 208, 440 and depths 1, 3, 6, 6 with group width 8
    assert regnet_stages(16, 48, 27.89, 2.09, 8) == [
        StageParams(48, 1, 2, 8, 1.0),
        StageParams(104, 3, 2, 8, 1.0),
        StageParams(208, 6, 2, 8, 1.0),
        StageParams(440, 6, 2, 8, 1.0),
    ]
    with pytest.raises(ValueError, match="invalid RegNet settings"):
        regnet_stages(16, 50, 27.89, 2.09, 8)


@pytest.mark.parametrize(
    "factory",
    [
        efficientnet_b0,
        mobilenet_v2,
        mobilenet_v3_small,
        regnet_y_400mf,
        convnext_tiny,
        shufflenet_v2_x1_0,
    ],
)
def test_cnn_mirrors_on_64x64(factory) -> None:
    model = factory(num_classes=12).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 12) and torch.isfinite(out).all()


def test_vit_tiny_for_64x64_shapes() -> None:
    model = vit_tiny(num_classes=12)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 563_328 + 129 * 12
    assert model.seq_length == 65 and model.encoder.pos_embedding.shape == (1, 65, 128)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    model.train()
    out = model(x)
    assert out.shape == (2, 12)
    out[:, 3].sum().backward()
    assert model.heads.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, 64, 64\).*resize"):
        model(torch.randn(1, 3, 224, 224))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        vit_tiny(image_size=60)
    assert vit_tiny(num_layers=2, hidden_dim=64, num_heads=2).encoder.ln.normalized_shape == (64,)


def test_get_model_vit_tiny_round_trip_and_suggestion(tmp_path) -> None:
    source = vit_tiny(num_classes=12)
    nn.init.normal_(source.heads.head.weight)  # torchvision zero-initialises the head
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    model = get_model("vit_tiny", num_classes=12, weights=tmp_path / "vit.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"fits get_model\('vit_tiny', num_classes=12\)"):
        get_model("vit_tiny", num_classes=10, weights=tmp_path / "vit.pt")
