"""Modern CNN pieces, exactly: gating, any activation, normalisation, and nothing silent.

Each model is checked three ways in float64:
* LRP-0 with every bias (and batch-norm shift) zero conserves the target logit;
* LRP-0 equals x * gradient of the same network with every nonlinearity's ratio, every gate
  and every normaliser's standard deviation detached (``tests/reference.py``, written
  independently of the engine), for LRP, CLRP and SGLRP output relevance;
* SGLRP with the paper's ``dtd`` rules sums to zero.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import reference_relevance
from torch import Tensor, nn

import sglrp
from sglrp.propagation import UnsupportedOperation, propagate
from sglrp.propagation.output import OUTPUT_RELEVANCE
from sglrp.rules import Epsilon, Gate, Gradient, Uniform, ZPlus

torch.set_default_dtype(torch.float32)


class SqueezeExcitation(nn.Module):
    """torchvision's SE: avgpool, fc1, activation, fc2, scale activation, ``scale * x``."""

    def __init__(self, channels: int, squeeze: int, act=nn.SiLU, gate=nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class SENet(nn.Module):
    """The issue's example: SiLU modules and a squeeze-and-excitation block."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU(inplace=True)
        self.se = SqueezeExcitation(8, 4)
        self.head = nn.Linear(8, 5)
        self.functional = functional

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.conv(x))
        h = F.silu(h) if self.functional else self.act(h)
        h = self.se(h)
        return self.head(h.mean(dim=(2, 3)))


class MobileBlock(nn.Module):
    """MobileNetV3-style: hard-swish, depthwise conv, SE with ReLU and hard-sigmoid, ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.bn1 = nn.BatchNorm2d(12)
        self.act1 = nn.Hardswish()
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.bn2 = nn.BatchNorm2d(12)
        self.act2 = nn.ReLU6(inplace=True)
        self.se = SqueezeExcitation(12, 4, act=nn.ReLU, gate=nn.Hardsigmoid)
        self.project = nn.Conv2d(12, 6, 1, groups=3)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        h = self.project(self.se(h))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm, MLP with GELU, layer scale, residual."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.fc2(self.act(self.fc1(self.norm(h)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * h


class ConvNeXtLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8))
        self.block = ConvNeXtBlock(8)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.Flatten(1), nn.LayerNorm(8), nn.Linear(8, 4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(self.stem(x))
        return self.head(self.dropout(F.adaptive_avg_pool2d(h, 1)))


class GatedNet(nn.Module):
    """CBAM-style spatial gate, GLU, GroupNorm, tanh, unmergeable batch norm after a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.gn(self.conv(x)))
        pooled = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], dim=1)
        h = h * torch.sigmoid(self.spatial(pooled))
        h = F.glu(self.conv2(h), dim=1)
        h = self.bn(h + h.roll(1, dims=2))
        return self.head(h.mean(dim=(2, 3)))


MODELS = {
    "se_silu_modules": lambda: SENet(functional=False),
    "se_silu_functional": lambda: SENet(functional=True),
    "mobilenetv3_block": MobileBlock,
    "convnext_block": ConvNeXtLike,
    "cbam_glu_groupnorm": GatedNet,
}


def build(name: str, zero_bias: bool) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                if not zero_bias:
                    m.running_mean.uniform_(-0.3, 0.3)
            for pname, p in m.named_parameters(recurse=False):
                if pname == "bias":
                    if zero_bias:
                        p.zero_()
                    else:
                        p.uniform_(-0.2, 0.2)
    return model


def inputs(n: int = 2) -> Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lrp0_conserves_the_logit_with_zero_biases(name: str) -> None:
    model = build(name, zero_bias=True)
    x = inputs()
    result = propagate(model, x, "predicted", "lrp", "lrp0")
    z_t = result.logits.gather(1, result.targets[:, None])[:, 0]
    torch.testing.assert_close(result.input_relevance.sum((1, 2, 3)), z_t, rtol=1e-9, atol=0)


@pytest.mark.parametrize("output", ["lrp", "clrp", "sglrp"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_lrp0_equals_the_detached_reference(name: str, output: str) -> None:
    model = build(name, zero_bias=False)
    x = inputs()
    result = propagate(model, x, "predicted", output, "lrp0")
    vector = OUTPUT_RELEVANCE[output](result.logits, result.targets)
    expected = reference_relevance(model, x, vector)
    scale = expected.abs().max()
    torch.testing.assert_close(result.input_relevance, expected, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sglrp_sums_to_zero_with_conservative_rules(name: str) -> None:
    model = build(name, zero_bias=True)
    x = inputs()
    relevance = sglrp.explain(model, x, "predicted", method="sglrp", rules="lrp0")
    total = relevance.abs().sum((1, 2, 3))
    assert (relevance.sum((1, 2, 3)).abs() <= 1e-9 * total).all()
    assert (total > 0).all()


@pytest.mark.parametrize("name", ["se_silu_modules", "se_silu_functional"])
def test_sglrp_dtd_sums_to_zero_where_zplus_conserves(name: str) -> None:
    """z+ conserves where every output unit that carries relevance has a positive
    contribution (SiLU/ReLU after each layer); see the next test for where it does not."""
    model = build(name, zero_bias=True)
    x = 100.0 * inputs()  # activations far above the 1e-6 stabilisers
    relevance = sglrp.explain(model, x, "predicted", method="sglrp", rules="dtd")
    total = relevance.abs().sum((1, 2, 3))
    assert (relevance.sum((1, 2, 3)).abs() <= 1e-6 * total).all()


def test_zplus_drops_the_relevance_of_units_without_positive_support() -> None:
    """Why SGLRP with dtd does not sum to zero on linear bottlenecks (MobileNet's projection
    convolution, no ReLU after it): an output unit with z_j < 0 and no positive contribution
    (d_j = 0) passes none of its relevance R_j on, so sum R_in = sum R_out - sum_{d_j=0} R_j."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 1, bias=False), nn.ReLU6(), nn.Conv2d(12, 6, 1, bias=False)
    )
    model.append(nn.Flatten()).append(nn.Linear(6 * 64, 4, bias=False))
    model = model.double().eval()
    x = 100.0 * inputs()
    rules = [((nn.Conv2d, nn.Linear), ZPlus())]
    result = propagate(model, x, "predicted", "lrp", rules, record=["1", "2"])
    r_in, r_out = result.layer_relevance["1"], result.layer_relevance["2"]
    with torch.no_grad():
        h = model[1](model[0](x))
        support = F.conv2d(h, model[2].weight.clamp(min=0))
    dropped = (r_out * (support == 0)).flatten(1).sum(1)
    assert (dropped.abs() > 1e-3 * r_out.abs().flatten(1).sum(1)).any()  # the case occurs
    expected = r_out.flatten(1).sum(1) - dropped
    torch.testing.assert_close(r_in.flatten(1).sum(1), expected, rtol=2e-5, atol=0)


def test_issue_example_relevance_stays_out_of_the_gate() -> None:
    """Before: +0.074 and -0.0055 for logits +0.067 and +0.003 (relevance leaked into the
    gate branch). The gate's branch gets no relevance at all now."""
    model = build("se_silu_modules", zero_bias=True)
    x = inputs()
    result = propagate(model, x, "predicted", "lrp", "lrp0", record=["se.fc2", "se.fc1"])
    assert torch.equal(
        result.layer_relevance["se.fc2"], torch.zeros_like(result.layer_relevance["se.fc2"])
    )
    z_t = result.logits.gather(1, result.targets[:, None])[:, 0]
    torch.testing.assert_close(result.input_relevance.sum((1, 2, 3)), z_t, rtol=1e-9, atol=0)


def test_uniform_rule_gives_half_to_each_factor() -> None:
    """``scale * x`` with the uniform rule: the gate branch gets half of the relevance; the
    SE input gets the other half directly and the gate's half back through the SE branch."""
    model = build("se_silu_modules", zero_bias=True)
    x = inputs()
    for rule, gate_share in ((Uniform(), 0.5), (Gate(), 0.0), (Gate(operand=1), 1.0)):
        rules = [("se", rule), ((nn.Conv2d, nn.Linear), Epsilon(0.0))]
        result = propagate(
            model, x, "predicted", "lrp", rules, record=["se.scale_activation", "act"]
        )
        z_t = result.logits.gather(1, result.targets[:, None])[:, 0]
        gate = result.layer_relevance["se.scale_activation"].flatten(1).sum(1)
        signal = result.layer_relevance["act"].flatten(1).sum(1)
        torch.testing.assert_close(gate, gate_share * z_t, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(signal, z_t, rtol=1e-9, atol=0)


# --- nothing silent --------------------------------------------------------------------------


class Product(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * x.flip(1)


class Ratio(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x / (x.abs().sum(1, keepdim=True) + 1.0)


class Exp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class Custom(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return Square.apply(x)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (Product, r"Mul.* in layer '1' \(Product\): a product of two activations"),
        (Ratio, r"in layer '1' \(Ratio\): division by an activation"),
        (Exp, r"Exp.* in layer '1' \(Exp\): Exp has no LRP treatment"),
        (Custom, r"in layer '1' \(Custom\): custom autograd.Function Square"),
    ],
)
def test_unsupported_operations_name_op_and_module(block: type, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), block(), nn.Flatten(), nn.Linear(4 * 36, 2))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedOperation, match=message) as info:
        sglrp.explain(model, x, 0, method="lrp")
    assert "sglrp.rules.Gradient()" in str(info.value)
    report = sglrp.inspect(model, x)
    assert not report.ok and "layer '1'" in report.problems[0]
    # asking for the gradient is accepted
    rules = [("1", Gradient()), ((nn.Conv2d, nn.Linear), ZPlus())]
    assert sglrp.explain(model, x, 0, method="lrp", rules=rules).shape == x.shape


def test_rule_map_naming_no_layer_is_an_error_and_unmatched_types_are_reported() -> None:
    model = build("se_silu_modules", zero_bias=False)
    x = inputs()
    with pytest.raises(ValueError, match=r"names layer 'se.fc3'.*available layers: .*se.fc2"):
        sglrp.explain(model, x, method="lrp", rules=[("se.fc3", ZPlus())])
    report = sglrp.inspect(
        model, x, rules=[(nn.Conv3d, ZPlus()), ((nn.Conv2d, nn.Linear), ZPlus())]
    )
    assert report.unmatched == ["(Conv3d, ZPlus)"]
    with pytest.warns(RuntimeWarning, match=r"no rule matches 1 linear layer\(s\) \(layer 'head'"):
        sglrp.explain(model, x, method="lrp", rules=[(nn.Conv2d, ZPlus())])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inspect_gives_every_operation_a_treatment(name: str) -> None:
    model = build(name, zero_bias=False)
    report = sglrp.inspect(model, inputs(1))
    assert report.ok, report.problems
    text = str(report)
    assert all(row.treatment for row in report.rows)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for layer in linear:
        assert any(row.module == layer for row in report.rows), layer
    if name.startswith("se"):
        assert "gate (factor 0 held constant)" in text and "identity rule" in text
    if name == "convnext_block":
        assert "standard deviation held constant" in text
