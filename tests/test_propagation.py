"""The engine on whole networks: identities, conservation, agreement with zennit, safety."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, model_state
from torch import nn

import sglrp
from sglrp import models
from sglrp.propagation import propagate
from sglrp.propagation.output import sglrp_output
from sglrp.rules import Gradient, ZPlus

ARCHS = {
    "vgg11": lambda: models.vgg11(num_classes=10),
    "vgg16_bn": lambda: models.vgg16_bn(num_classes=10),
    "resnet18": lambda: models.resnet18(num_classes=10),
    "resnet50": lambda: models.resnet50(num_classes=10),
    "densenet121": lambda: models.densenet121(num_classes=10),
    "inception_small": lambda: models.inception_small(num_classes=10),
    "shapes_vgg": lambda: models.shapes_vgg(num_classes=10),
    "shapes_vgg_gap": lambda: models.shapes_vgg_gap(num_classes=10),
    "shapes_resnet": lambda: models.shapes_resnet(num_classes=10),
}


def randomise_norms(model: nn.Module, zero_bias: bool) -> nn.Module:
    """Non-trivial BatchNorm statistics; biases (and BN shifts) zeroed if asked."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                if zero_bias:
                    m.running_mean.zero_()
                    m.bias.zero_()
                else:
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.bias.uniform_(-0.2, 0.2)
            elif zero_bias and getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def zero_bias_model(request):
    torch.manual_seed(0)
    return request.param, randomise_norms(ARCHS[request.param]().double(), zero_bias=True)


def input_x_gradient(model, x, weights):
    """x * d(sum_n weights_n z_n)/dx."""
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((model(xx) * weights).sum(), xx)
    return x * g


def test_lrp0_equals_input_x_gradient(zero_bias_model):
    """LRP-0 with zero biases is input x gradient on every architecture: this checks the
    handling of BatchNorm merging, residual sums and concatenations."""
    _, model = zero_bias_model
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([1, 7])
    ours = sglrp.explain(model, x, t, method="lrp", rules="lrp0")
    onehot = torch.zeros(2, 10, dtype=torch.float64).scatter_(1, t[:, None], 1.0)
    torch.testing.assert_close(ours, input_x_gradient(model, x, onehot), rtol=1e-9, atol=1e-12)


def test_sglrp_with_lrp0_is_input_x_gradient_of_weighted_logits(zero_bias_model):
    """LRP-0 from output relevance R_n gives x * grad(sum_n (R_n / z_n) z_n)."""
    _, model = zero_bias_model
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([4, 2])
    with torch.no_grad():
        z = model(x)
    weights = sglrp_output(z, t) / z
    ours = sglrp.explain(model, x, t, method="sglrp", rules="lrp0")
    torch.testing.assert_close(ours, input_x_gradient(model, x, weights), rtol=1e-8, atol=1e-12)


def test_sglrp_dtd_relevance_sums_to_zero(zero_bias_model):
    name, model = zero_bias_model
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([0, 1])
    R = sglrp.explain(model, x, t, method="sglrp", rules="dtd")
    with torch.no_grad():
        R_out = sglrp_output(model(x), t)
    sums = R.sum(dim=(1, 2, 3))
    assert (R.abs().sum(dim=(1, 2, 3)) > 0).all()
    # positive and negative relevance cancel at the input up to rounding of the output's mass
    assert (sums.abs() <= 1e-7 * R_out.abs().sum(1)).all(), (name, sums)


def test_zplus_conserves_layer_by_layer():
    """z+ without bias: the relevance at every conv/linear output sums to z_t (LRP, dtd),
    up to the 1e-6 stabiliser in each denominator."""
    torch.manual_seed(0)
    model = randomise_norms(models.vgg16_bn(num_classes=10).double(), zero_bias=False)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 16
    result = propagate(model, x, torch.tensor([3, 5]), "lrp", "dtd", record=layers)
    z_t = result.logits.gather(1, torch.tensor([[3], [5]]))[:, 0]
    for name in layers:
        sums = result.layer_relevance[name].flatten(1).sum(1)
        torch.testing.assert_close(sums, z_t, rtol=1e-5, atol=0, msg=name)
    torch.testing.assert_close(result.input_relevance.sum((1, 2, 3)), z_t, rtol=1e-5, atol=0)


def test_multi_target_equals_separate_calls():
    torch.manual_seed(0)
    model = randomise_norms(models.resnet18(num_classes=10).double(), zero_bias=False)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[1, 2], [3, 4], [5, 6]])
    both = sglrp.explain(model, x, targets, method="sglrp")
    assert both.shape == (3, 2, 3, 32, 32)
    for k in range(2):
        single = sglrp.explain(model, x, targets[:, k], method="sglrp")
        torch.testing.assert_close(both[:, k], single, rtol=1e-10, atol=1e-12)


def test_batch_equals_single_images():
    torch.manual_seed(0)
    model = randomise_norms(models.shapes_resnet(num_classes=10).double(), zero_bias=False)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    batch = sglrp.explain(model, x, "predicted", method="clrp")
    for n in range(3):
        one = sglrp.explain(model, x[n : n + 1], "predicted", method="clrp")
        torch.testing.assert_close(batch[n : n + 1], one, rtol=1e-9, atol=1e-12)


def test_output_relevance_vectors():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], dtype=torch.float64)
    t = torch.tensor([0, 2])
    from sglrp.propagation.output import clrp_output, lrp_output

    torch.testing.assert_close(
        lrp_output(z, t), torch.tensor([[2.0, 0, 0], [0, 0, 3.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        clrp_output(z, t),
        torch.tensor([[2.0, -1.0, -1.0], [-1.5, -1.5, 3.0]], dtype=torch.float64),
    )
    y = torch.softmax(z, 1)
    expected = -y[torch.arange(2), t][:, None] * y
    expected[0, 0] = y[0, 0] * (1 - y[0, 0])
    expected[1, 2] = y[1, 2] * (1 - y[1, 2])
    torch.testing.assert_close(sglrp_output(z, t), expected)
    torch.testing.assert_close(sglrp_output(z, t).sum(1), torch.zeros(2, dtype=torch.float64))
    # and it is the gradient of the target's softmax probability
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.softmax(zz, 1)[torch.arange(2), t].sum(), zz)
    torch.testing.assert_close(sglrp_output(z, t), g)


def test_sglrp_authors_variant_rescales_the_dual():
    torch.manual_seed(0)
    model = models.shapes_vgg(num_classes=10).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    R = sglrp.explain(model, x, "predicted", method="sglrp", variant="authors")
    # T - D * sum(T)/sum(D) sums to zero per image by construction
    sums = R.sum((1, 2, 3))
    assert sums.abs().max() <= 1e-8 * R.abs().sum((1, 2, 3)).max()
    assert not torch.allclose(R, sglrp.explain(model, x, "predicted", method="sglrp"))


# --- agreement with zennit -----------------------------------------------------------------


def zennit_attribution(zennit, model, x, R_out, preset, bounds, norm_stabilizer=1e-6):
    """zennit's relevance for the same output relevance.

    zennit splits residual sums and average pooling with its Norm rule, which adds a 1e-6
    stabiliser to the sum; the engine splits them exactly (their ordinary gradient). Where a
    pre-activation sum is near zero the two differ, so ``norm_stabilizer`` can shrink it.
    """
    from zennit.attribution import Gradient
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, Flat, ZBox, ZPlus
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution
    from zennit.types import Linear as AnyLinear

    canonizer = ResNetCanonizer() if isinstance(model, models.ResNet) else VGGCanonizer()
    base = layer_map_base(norm_stabilizer)
    if preset == "dtd":
        layer_map = base + [
            (Convolution, ZPlus(zero_params="bias")),
            (nn.Linear, ZPlus(zero_params="bias")),
        ]
        first_map = [(Convolution, ZBox(*bounds))]
    else:  # zennit's EpsilonPlusFlat, spelled out to set the Norm stabiliser
        layer_map = base + [(Convolution, ZPlus()), (nn.Linear, Epsilon())]
        first_map = [(AnyLinear, Flat())]
    composite = SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=first_map, canonizers=[canonizer]
    )
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x.clone(), attr_output=R_out)
    return relevance


ZENNIT_CASES = [
    pytest.param("vgg16", 1e-6, "dtd", id="vgg16-dtd"),
    pytest.param("vgg16", 1e-6, "epsilon-plus-flat", id="vgg16-epsilon-plus-flat"),
    pytest.param("resnet18", 1e-12, "dtd", id="resnet18-dtd"),
    pytest.param(
        "resnet18",
        1e-12,
        "epsilon-plus-flat",
        id="resnet18-epsilon-plus-flat",
        marks=pytest.mark.xfail(
            strict=True,
            reason="zennit's epsilon relevance at the ResNet fc input differs by 0.8% from the "
            "explicit formula, which the engine matches to 1e-16 (test_fc_epsilon_is_exact)",
        ),
    ),
]


@pytest.mark.parametrize(("arch", "norm_stabilizer", "preset"), ZENNIT_CASES)
def test_agrees_with_zennit(zennit, arch, norm_stabilizer, preset):
    torch.manual_seed(0)
    model = getattr(models, arch)(num_classes=10).double()
    model = randomise_norms(model, zero_bias=False)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    bounds = (float(x.min()), float(x.max()))
    t = torch.tensor([1, 3])
    with torch.no_grad():
        R_out = sglrp_output(model(x), t)
    before = model_state(model)
    theirs = zennit_attribution(zennit, model, x, R_out, preset, bounds, norm_stabilizer)
    assert_same_state(before, model_state(model))
    ours = sglrp.explain(model, x, t, method="sglrp", rules=preset, bounds=bounds)
    error = (ours - theirs).abs().max() / theirs.abs().max()
    assert error <= 1e-4, float(error)


def test_fc_epsilon_is_exact():
    """The epsilon rule at ResNet18's classifier equals x_i w_ij / (z_j + eps sign z_j) R_j."""
    from sglrp.rules import Epsilon, Flat, RuleMap, ZPlus

    torch.manual_seed(0)
    model = randomise_norms(models.resnet18(num_classes=10).double(), zero_bias=False)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    t = torch.tensor([1, 3])
    rules = RuleMap([(nn.Conv2d, ZPlus(bias=True)), (nn.Linear, Epsilon(1e-6))], first=Flat())
    result = propagate(model, x, t, "sglrp", rules, record=["avgpool"])
    features = result.layer_output["avgpool"].flatten(1)
    z = features @ model.fc.weight.detach().T + model.fc.bias.detach()
    d = z + 1e-6 * torch.where(z >= 0, 1.0, -1.0).to(z)
    expected = features * ((sglrp_output(result.logits, t) / d) @ model.fc.weight.detach())
    torch.testing.assert_close(
        result.layer_relevance["avgpool"].flatten(1), expected, rtol=1e-10, atol=1e-14
    )


# --- safety --------------------------------------------------------------------------------


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)
        self.explode = False

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        if self.explode:
            raise RuntimeError("boom")
        return self.fc(h)


def test_model_untouched_after_call_and_after_exception():
    torch.manual_seed(0)
    model = models.resnet18(num_classes=10)
    model.train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 3, 32, 32)
    x_before = x.clone()
    for method in ("lrp", "clrp", "sglrp"):
        sglrp.explain(model, x, "second", method=method)
    assert_same_state(before, model_state(model))
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None

    small = Exploding()
    x = torch.randn(1, 3, 8, 8)
    sglrp.explain(small, x, 0)
    small.explode = True
    before = model_state(small)
    with pytest.raises(RuntimeError, match="boom"):
        propagate(small, x, torch.tensor([0]))
    assert_same_state(before, model_state(small))


def test_bad_inputs_are_named():
    model = Exploding().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="4 dimensions"):
        sglrp.explain(model, x[0], 0)
    with pytest.raises(TypeError, match="floating-point"):
        sglrp.explain(model, (x * 255).to(torch.uint8), 0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sglrp.explain(model, bad, 0)
    with pytest.raises(ValueError, match="out of range"):
        sglrp.explain(model, x, 3)
    with pytest.raises(ValueError, match="length N = 1"):
        sglrp.explain(model, x, [0, 1])
    with pytest.raises(ValueError, match="unknown rules preset"):
        sglrp.explain(model, x, 0, rules="nope")
    with pytest.raises(ValueError, match="unknown method"):
        sglrp.explain(model, x, 0, method="nope")
    with pytest.raises(TypeError, match="nn.Module"):
        sglrp.explain(lambda v: v, x, 0)

    class Image2D(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"\(N, classes\) logits"):
        sglrp.explain(Image2D(), x, 0)


class Softplus2(nn.Module):
    """exp and log of activations: no LRP treatment."""

    def forward(self, x):
        return torch.log1p(torch.exp(x))


def test_unsupported_operation_names_its_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Softplus2(), nn.Flatten(), nn.Linear(4 * 36, 2))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(
        ValueError, match=r"unsupported operation \w+ \(\w+\) in layer '1' \(Softplus2\)"
    ):
        sglrp.explain(model, x, 0)
    # assigning a rule makes it work
    R = sglrp.explain(model, x, 0, rules=[("1", Gradient()), (nn.Conv2d | nn.Linear, ZPlus())])
    assert R.shape == x.shape


def test_heatmap_is_clipped_channel_sum():
    R = torch.tensor([[[[1.0, -2.0]], [[0.5, 1.0]]]])
    hm = sglrp.heatmap(R)
    # channel sums: 1.5 and -1.0; positive parts summed: 1.5 and 1.0; max |sum| = 1.5
    torch.testing.assert_close(hm, torch.tensor([[[1.0, 1.0 / 1.5]]]))
    assert torch.equal(sglrp.heatmap(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 2, 2))
