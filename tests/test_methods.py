"""Tests of the gradient, guided and CAM methods in sglrp.methods on tiny networks."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state
from torch import Tensor, nn
from torch.overrides import _get_current_function_mode_stack

from sglrp import methods as registry
from sglrp.methods import (
    ReluOverride,
    deconvnet,
    default_layer,
    gradcam,
    gradient,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    last_layer,
    middle_layer,
    random_map,
    relevance_cam,
    relevance_cam_mid,
)
from sglrp.propagation import DEFAULT_LAYER, PropagationResult, propagate

H = W = 8
CLASSES = 3

# ---------------------------------------------------------------------------------------------
# tiny networks


class ModuleNet(nn.Module):
    """conv-BN-ReLU -> conv(stride 2)-ReLU(inplace) -> linear, with nn.ReLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(5 * 4 * 4, CLASSES)
        self.boom = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.bn(self.conv1(x)))
        if self.boom:
            raise RuntimeError("boom")
        h = self.act2(self.conv2(h))
        return self.fc(h.flatten(1))


def _act(h: Tensor, kind: str) -> Tensor:
    """Apply a ReLU in one of its spellings; the in-place ones rely on ``h`` being overwritten."""
    if kind == "F.relu(inplace)":
        F.relu(h, inplace=True)
        return h
    if kind == "torch.relu_":
        torch.relu_(h)
        return h
    if kind == "Tensor.relu_":
        h.relu_()
        return h
    if kind == "F.relu_":
        F.relu_(h)
        return h
    if kind == "torch.relu":
        return torch.relu(h)
    if kind == "Tensor.relu":
        return h.relu()
    if kind == "F.relu":
        return F.relu(h)
    raise AssertionError(kind)


class FunctionalNet(nn.Module):
    """Same layers as :class:`ModuleNet`, with functional ReLU calls in ``forward``."""

    def __init__(self, kinds: tuple[str, str] = ("F.relu(inplace)", "torch.relu_")) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, CLASSES)
        self.kinds = kinds
        self.boom = False

    def forward(self, x: Tensor) -> Tensor:
        h = _act(self.bn(self.conv1(x)), self.kinds[0])
        if self.boom:
            raise RuntimeError("boom")
        h = _act(self.conv2(h), self.kinds[1])
        return self.fc(h.flatten(1))


class ExecOrderNet(nn.Module):
    """``late`` is registered first but runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 4, 3, padding=1)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * H * W, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.late(F.relu(self.early(x)))).flatten(1))


def _init(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that eval and train mode differ."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net


def module_net() -> ModuleNet:
    return _init(ModuleNet())


def functional_net(kinds: tuple[str, str] = ("F.relu(inplace)", "torch.relu_")) -> FunctionalNet:
    net = FunctionalNet(kinds)
    net.load_state_dict(module_net().state_dict())
    return net.eval()


NETS = {"modules": module_net, "functional": functional_net}
KIND_PAIRS = [
    ("F.relu(inplace)", "torch.relu_"),
    ("Tensor.relu_", "F.relu_"),
    ("torch.relu", "Tensor.relu"),
    ("F.relu", "F.relu(inplace)"),
]


def batch(n: int = 3) -> tuple[Tensor, Tensor]:
    return torch.randn(n, 3, H, W), torch.arange(n) % CLASSES


# ---------------------------------------------------------------------------------------------
# hand computations


def _relu_backward(g: Tensor, pre: Tensor, rule: str) -> Tensor:
    """Backward of ReLU for upstream ``g`` and forward input ``pre``."""
    if rule == "plain":
        return g * (pre > 0)
    if rule == "guided":
        return g.clamp(min=0) * (pre > 0)
    if rule == "deconvnet":
        return g.clamp(min=0)
    raise AssertionError(rule)


def hand_backward(net: nn.Module, x: Tensor, t: Tensor, rule: str) -> Tensor:
    """Layer-by-layer backward of a ModuleNet/FunctionalNet (eval mode) with a ReLU rule."""
    with torch.no_grad():
        pre1 = net.bn(net.conv1(x))
        h1 = pre1.clamp(min=0)
        pre2 = net.conv2(h1)
        g = net.fc.weight[t].view(-1, 5, 4, 4)
        g = _relu_backward(g, pre2, rule)
        g = torch.nn.grad.conv2d_input(h1.shape, net.conv2.weight, g, stride=2, padding=1)
        g = _relu_backward(g, pre1, rule)
        bn = net.bn
        g = g * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None, None]
        return torch.nn.grad.conv2d_input(x.shape, net.conv1.weight, g, padding=1)


def _tail(net: nn.Module, layer: str, a: Tensor) -> Tensor:
    """Logits of a ModuleNet/FunctionalNet computed from the output ``a`` of ``layer``."""
    if layer == "conv1":
        a = net.conv2(net.bn(a).clamp(min=0))
    elif layer == "bn":
        a = net.conv2(a.clamp(min=0))
    return net.fc(a.clamp(min=0).flatten(1))


def _head(net: nn.Module, layer: str, x: Tensor) -> Tensor:
    a = net.conv1(x)
    if layer == "conv1":
        return a
    a = net.bn(a)
    if layer == "bn":
        return a
    return net.conv2(a.clamp(min=0))


def hand_gradcam(net: nn.Module, x: Tensor, t: Tensor, layer: str, upsample: bool = True) -> Tensor:
    net.eval()
    with torch.enable_grad():
        a = _head(net, layer, x).detach().requires_grad_(True)
        z = _tail(net, layer, a)
        (grad,) = torch.autograd.grad(z.gather(1, t[:, None]).sum(), a)
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * a.detach()).sum(dim=1, keepdim=True))
    if upsample:
        cam = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)
    return cam


# ---------------------------------------------------------------------------------------------
# the registry's non-LRP methods, called as the registry calls them

METHODS = {  # the attention baselines need a transformer: tests/test_attention_maps.py
    m.name: functools.partial(registry.call, m.name)
    for m in registry.methods()
    if m.family not in ("lrp", "attention")
}
CAM_METHODS = {m.name for m in registry.methods() if m.family == "cam" and m.returns == "map"}
LAYER_METHODS = {m.name for m in registry.methods() if m.takes_layer and m.name in METHODS}


def _raw_relevance_cam(result: PropagationResult, layer: str) -> Tensor:
    a, r = result.layer_output[layer], result.layer_relevance[layer]
    return (r.sum(dim=(2, 3))[:, :, None, None] * a).sum(dim=1, keepdim=True)


def _up(cam: Tensor) -> Tensor:
    return F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# registry and shapes


def test_registry() -> None:
    assert registry.available(family="lrp") == ["lrp", "clrp", "sglrp"]
    attention = ["attention_rollout", "gradient_rollout", "vit_gradcam"]
    assert registry.available(family="attention") == attention
    assert set(METHODS) == {
        "gradient",
        "input_x_gradient",
        "guided_backprop",
        "deconvnet",
        "gradcam",
        "guided_gradcam",
        "relevance_cam",
        "relevance_cam_mid",
        "random",
    }
    assert {"gradcam", "relevance_cam", "relevance_cam_mid"} == CAM_METHODS
    assert CAM_METHODS - {"relevance_cam_mid"} <= LAYER_METHODS <= set(METHODS)
    assert not registry.get("relevance_cam_mid").takes_layer  # its layer is the rule's
    rules = {m.name: m.layer_rule for m in registry.methods() if m.layer_rule is not None}
    assert rules == {
        "gradcam": last_layer,
        "guided_gradcam": last_layer,
        "relevance_cam": last_layer,
        "relevance_cam_mid": middle_layer,
    }
    record = registry.get("GUIDED-GradCAM")
    assert record.name == "guided_gradcam" and record.label == "Guided Grad-CAM"
    assert record.options == ("layer",) and record.forward_passes == 2
    assert registry.get("relevance_cam").takes_rules and registry.get("sglrp").takes_rules
    assert not registry.get("gradient").takes_rules and not registry.get("gradient").needs_layers
    with pytest.raises(ValueError, match=r"did you mean 'sglrp'"):
        registry.get("sglpr")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_output_shapes(name: str) -> None:
    net = module_net()
    x, t = batch(2)
    out = METHODS[name](net, x, t)
    one_channel = name in CAM_METHODS or name == "random"
    assert out.shape == ((2, 1, H, W) if one_channel else (2, 3, H, W))
    assert out.dtype == x.dtype and not out.requires_grad
    if name in CAM_METHODS:
        assert METHODS[name](net, x, t, upsample=False).shape == (2, 1, 4, 4)


# ---------------------------------------------------------------------------------------------
# gradient methods


@pytest.mark.parametrize("net_name", sorted(NETS))
def test_gradient_equals_autograd(net_name: str) -> None:
    net = NETS[net_name]().eval()
    x, t = batch()
    xi = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(xi).gather(1, t[:, None]).sum(), xi)
    torch.testing.assert_close(gradient(net, x, t), expected)
    torch.testing.assert_close(gradient(net, x, t), hand_backward(net, x, t, "plain"))
    torch.testing.assert_close(input_x_gradient(net, x, t), x * expected)


def test_gradient_under_no_grad_and_string_target() -> None:
    net = module_net().eval()
    x, _ = batch()
    pred = net(x).argmax(1)
    expected = hand_backward(net, x, pred, "plain")
    with torch.no_grad():
        torch.testing.assert_close(gradient(net, x, "predicted"), expected)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize(
    "kinds", [None, *KIND_PAIRS], ids=lambda k: "modules" if k is None else "+".join(k)
)
def test_modified_relu_backward_equals_hand(rule: str, kinds: tuple[str, str] | None) -> None:
    net = module_net().eval() if kinds is None else functional_net(kinds)
    x, t = batch()
    method = guided_backprop if rule == "guided" else deconvnet
    got = method(net, x, t)
    expected = hand_backward(net, x, t, rule)
    torch.testing.assert_close(got, expected)
    # the rule matters on this net: the result is not the plain gradient
    assert not torch.allclose(got, hand_backward(net, x, t, "plain"), atol=1e-4)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize("kinds", KIND_PAIRS, ids="+".join)
def test_relu_override_keeps_forward_values(rule: str, kinds: tuple[str, str]) -> None:
    net = functional_net(kinds)
    x, _ = batch()
    with torch.no_grad():
        expected = net(x)
    xi = x.clone().requires_grad_(True)
    with ReluOverride(rule):
        got = net(xi.clone())
    torch.testing.assert_close(got, expected)


def test_relu_override_inplace_returns_same_tensor() -> None:
    h = torch.randn(5, requires_grad=True).clone()
    with ReluOverride("guided"):
        out = F.relu(h, inplace=True)
        out2 = h.relu_()
    assert out is h and out2 is h
    assert (h >= 0).all()


def test_relu_override_rejects_unknown_rule() -> None:
    with pytest.raises(ValueError, match="guided"):
        ReluOverride("nope")


# ---------------------------------------------------------------------------------------------
# CAM methods


@pytest.mark.parametrize("net_name", sorted(NETS))
@pytest.mark.parametrize("layer", ["conv1", "bn", "conv2"])
@pytest.mark.parametrize("upsample", [True, False])
def test_gradcam_equals_hand(net_name: str, layer: str, upsample: bool) -> None:
    net = NETS[net_name]()
    x, t = batch()
    got = gradcam(net, x, t, layer=layer, upsample=upsample)
    torch.testing.assert_close(got, hand_gradcam(net, x, t, layer, upsample))
    assert got.amax() > 0


def test_gradcam_default_is_the_last_conv_activation() -> None:
    net = module_net()
    x, t = batch()
    # conv2 -> act2 (an nn.ReLU applied to conv2's output): the default is act2's output
    torch.testing.assert_close(gradcam(net, x, t), gradcam(net, x, t, layer="act2"))
    assert not torch.allclose(gradcam(net, x, t), gradcam(net, x, t, layer="conv2"))


@pytest.mark.parametrize(
    ("arch", "size", "expected"),
    [
        ("shapes_vgg", 64, "features.26"),  # conv 24 -> BatchNorm 25 -> ReLU 26 -> max-pool
        ("vgg11", 64, "features.19"),  # no batch norm: conv 18 -> ReLU 19
        ("shapes_resnet", 64, "layer4"),  # conv2 -> bn2 -> (+ identity, relu) = block output
        ("densenet121", 64, "features"),  # new features -> concatenation -> norm5
        ("inception_small", 64, "block3"),  # one branch's conv -> the concatenated block
    ],
)
def test_default_layer_follows_the_last_conv_to_its_activation(arch, size, expected) -> None:
    from sglrp import models

    torch.manual_seed(0)
    net = getattr(models, arch)(num_classes=CLASSES).eval()
    name, logits = default_layer(net, torch.randn(2, 3, size, size))
    assert name == expected
    assert logits.shape == (2, CLASSES)


def test_default_layer_without_conv_says_so() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, CLASSES))
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        default_layer(net, batch()[0])


def test_gradcam_default_uses_execution_order() -> None:
    net = ExecOrderNet()
    x, t = batch()
    default = gradcam(net, x, t)
    torch.testing.assert_close(default, gradcam(net, x, t, layer="late"))
    assert not torch.allclose(default, gradcam(net, x, t, layer="early"))


def test_gradcam_accepts_module_as_layer() -> None:
    net = module_net()
    x, t = batch()
    torch.testing.assert_close(
        gradcam(net, x, t, layer=net.conv1), gradcam(net, x, t, layer="conv1")
    )


def test_guided_gradcam_is_product() -> None:
    net = functional_net()
    x, t = batch()
    expected = guided_backprop(net, x, t) * gradcam(net, x, t, layer="conv1")
    torch.testing.assert_close(guided_gradcam(net, x, t, layer="conv1"), expected)
    expected = hand_backward(net, x, t, "guided") * hand_gradcam(net, x, t, "conv2")
    torch.testing.assert_close(guided_gradcam(net, x, t), expected)


@pytest.mark.parametrize("method", [gradcam, guided_gradcam, relevance_cam])
def test_unknown_layer_lists_names(method: Callable) -> None:
    net = module_net()
    x, t = batch()
    with pytest.raises(ValueError, match="unknown layer 'conv3'") as info:
        method(net, x, t, layer="conv3")
    for name in ("conv1", "bn", "act1", "conv2", "act2", "fc"):
        assert repr(name) in str(info.value) or name in str(info.value)


def test_unknown_layer_truncates_long_lists() -> None:
    net = nn.Sequential(
        *[nn.Conv2d(3, 3, 1) for _ in range(60)], nn.Flatten(), nn.Linear(3 * H * W, 2)
    )
    x, _ = batch(1)
    with pytest.raises(ValueError) as info:
        gradcam(net, x, 0, layer="600")
    msg = str(info.value)
    assert "62 named modules" in msg and "more" in msg
    assert "0, 1, 2" in msg and "60, 61" in msg
    assert ", 30," not in msg
    assert len(msg) < 400


def test_gradcam_rejects_non_feature_map_layer() -> None:
    with pytest.raises(ValueError, match="feature map"):
        gradcam(module_net(), *batch(), layer="fc")


def test_gradcam_needs_a_conv_by_default() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 2))
    with pytest.raises(ValueError, match="layer="):
        gradcam(net, *batch(2))


# ---------------------------------------------------------------------------------------------
# Relevance-CAM


class Recorder:
    """Wraps the real ``propagate`` and records the arguments of every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, model, x, target, output_relevance, rules, bounds, **options):
        self.calls.append(
            {
                "output_relevance": output_relevance,
                "rules": rules,
                "bounds": bounds,
                "record": tuple(options.get("record", ())),
                "target": target,
                "options": {k: v for k, v in options.items() if k != "record"},
            }
        )
        return propagate(model, x, target, output_relevance, rules, bounds, **options)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder()
    monkeypatch.setattr("sglrp.methods.cam.propagate", fake)
    return fake


@pytest.mark.parametrize("layer", ["conv1", "bn", "conv2"])
def test_relevance_cam_weights_equal_layer_relevance(layer: str, recorder: Recorder) -> None:
    net = module_net()
    x, t = batch()
    got = relevance_cam(net, x, t, layer=layer, upsample=False)
    call = recorder.calls[-1]
    assert call["record"] == (layer,)
    assert call["output_relevance"] == "relevance_cam" and call["rules"] == "dtd"
    assert call["bounds"] is None
    result = propagate(net.eval(), x, t, "relevance_cam", record=(layer,))
    raw = _raw_relevance_cam(result, layer)
    torch.testing.assert_close(got, raw)
    assert (raw < 0).any()  # so that relu=True below is a real check
    torch.testing.assert_close(relevance_cam(net, x, t, layer=layer), _up(raw))
    torch.testing.assert_close(relevance_cam(net, x, t, layer=layer, relu=True), _up(raw.relu()))
    normed = relevance_cam(net, x, t, layer=layer, normalize=True)
    up = _up(raw)
    lo, hi = up.amin(dim=(1, 2, 3), keepdim=True), up.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(normed, (up - lo) / (hi - lo))
    assert normed.amin() == 0 and normed.amax() == 1


def test_relevance_cam_output_relevance_is_the_authors() -> None:
    """1 at the target and -1/C elsewhere, whatever the sign of z_t (Lee et al.'s code)."""
    from sglrp.propagation.output import relevance_cam_output

    logits = torch.tensor([[-2.0, 1.0, 3.0], [4.0, -1.0, 0.5]])
    expected = torch.tensor([[1.0, -1 / 3, -1 / 3], [-1 / 3, -1 / 3, 1.0]])
    torch.testing.assert_close(relevance_cam_output(logits, torch.tensor([0, 2])), expected)


def test_relevance_cam_passes_options_through(recorder: Recorder) -> None:
    net = module_net()
    x, t = batch()

    def contrast(logits: Tensor, targets: Tensor) -> Tensor:
        return F.one_hot(targets, logits.shape[1]).to(logits.dtype) * 2 - 0.5

    relevance_cam(
        net, x, t, output_relevance=contrast, rules="epsilon", bounds=(-1.0, 1.0), epsilon=0.1
    )
    call = recorder.calls[-1]
    assert call["output_relevance"] is contrast
    assert call["rules"] == "epsilon" and call["bounds"] == (-1.0, 1.0)
    assert call["options"]["epsilon"] == 0.1
    assert call["record"] == (DEFAULT_LAYER,)  # found in the propagation's own pass
    with pytest.raises(TypeError, match="does not take 'extra'"):
        relevance_cam(net, x, t, extra=3)


def test_relevance_cam_default_layer_and_string_target(recorder: Recorder) -> None:
    net = ExecOrderNet()
    x, _ = batch()
    got = relevance_cam(net, x, "predicted", upsample=False)
    result = propagate(net, x, net(x).argmax(1), "relevance_cam", record=("late",))
    torch.testing.assert_close(got, _raw_relevance_cam(result, "late"))


def _sequential_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, CLASSES),
    )


@pytest.mark.parametrize(
    ("make", "layer", "default"),
    [
        (_sequential_net, "0", "3"),
        (_sequential_net, "2", "3"),
        (_sequential_net, "3", "3"),  # an nn.ReLU that saves its output for its backward
        (module_net, "conv1", "act2"),
        (functional_net, "bn", "conv2"),  # functional ReLUs are not modules: the conv
    ],
)
def test_relevance_cam_real_engine(make: Callable, layer: str, default: str) -> None:
    net = make().train()
    x, t = batch()
    before = model_state(net)
    got = relevance_cam(net, x, t, layer=layer, upsample=False)
    assert_same_state(before, model_state(net))
    assert got.shape == ((3, 1, H, W) if layer in ("0", "conv1", "bn") else (3, 1, 4, 4))
    if layer == "3":  # a ReLU passes relevance on unchanged; its output is the clamped conv's
        both = propagate(net, x, t, "clrp", rules="dtd", bounds=None, record=("2", "3"))
        torch.testing.assert_close(both.layer_relevance["3"], both.layer_relevance["2"])
        torch.testing.assert_close(both.layer_output["3"], both.layer_output["2"].relu())
    result = propagate(net, x, t, "relevance_cam", rules="dtd", bounds=None, record=(layer,))
    torch.testing.assert_close(got, _raw_relevance_cam(result, layer))
    result = propagate(net, x, t, "sglrp", rules="dtd", bounds=None, record=(default,))
    torch.testing.assert_close(
        relevance_cam(net, x, t, output_relevance="sglrp"),
        _up(_raw_relevance_cam(result, default)),
    )
    single = torch.cat([relevance_cam(net, x[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(relevance_cam(net, x, t), single)
    assert_same_state(before, model_state(net))


# ---------------------------------------------------------------------------------------------
# batches, model and input untouched, exceptions


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"random"}))
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_batch_equals_per_image(name: str, net_name: str) -> None:
    net = NETS[net_name]()
    x, t = batch(3)
    whole = METHODS[name](net, x, t)
    single = torch.cat([METHODS[name](net, x[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, single)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("net_name", sorted(NETS))
@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_model_and_input_untouched(name: str, net_name: str, x_requires_grad: bool) -> None:
    net = NETS[net_name]().train()
    net.conv1.bias.requires_grad_(False)
    before = model_state(net)
    x, t = batch()
    x.requires_grad_(x_requires_grad)
    x_before = x.detach().clone()
    with torch.no_grad():
        eval_logits = net.eval()(x)
    net.train()
    METHODS[name](net, x, t)
    assert_same_state(before, model_state(net))
    assert torch.equal(x, x_before)
    assert x.requires_grad == x_requires_grad and x.grad is None
    assert all(p.grad is None for p in net.parameters())
    assert _get_current_function_mode_stack() == []
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), eval_logits)


def _relu_backward_is_plain() -> bool:
    t = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    (g,) = torch.autograd.grad((torch.relu(t) * torch.tensor([5.0, -3.0, 2.0])).sum(), t)
    (g2,) = torch.autograd.grad((F.relu(t.clone(), inplace=True) * -1.0).sum(), t)
    return torch.equal(g, torch.tensor([0.0, -3.0, 2.0])) and torch.equal(
        g2, torch.tensor([0.0, -1.0, -1.0])
    )


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"random"}))
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_exception_inside_forward_restores_everything(name: str, net_name: str) -> None:
    net = NETS[net_name]().train()
    net.fc.weight.requires_grad_(False)
    before = model_state(net)
    net.boom = True
    x, t = batch()
    with pytest.raises(RuntimeError, match="boom"):
        METHODS[name](net, x, t, layer="conv1") if name in LAYER_METHODS else METHODS[name](
            net, x, t
        )
    assert_same_state(before, model_state(net))
    assert _get_current_function_mode_stack() == []
    assert _relu_backward_is_plain()
    net.boom = False
    torch.testing.assert_close(gradient(net, x, t), hand_backward(net.eval(), x, t, "plain"))


def test_relu_override_left_on_exception() -> None:
    with pytest.raises(KeyError), ReluOverride("guided"):
        assert len(_get_current_function_mode_stack()) == 1
        raise KeyError("x")
    assert _get_current_function_mode_stack() == []
    assert _relu_backward_is_plain()


# ---------------------------------------------------------------------------------------------
# random baseline


def test_random_map() -> None:
    net = module_net()
    before = model_state(net)
    x, t = batch(4)
    a = random_map(net, x, t, seed=1)
    assert a.shape == (4, 1, H, W) and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() < 1
    assert torch.equal(a, random_map(net, x, t, seed=1))
    assert not torch.equal(a, random_map(net, x, t, seed=2))
    assert not torch.equal(a[0], a[1])
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(random_map(net, x, t, seed=gen), a)
    assert random_map(net, x.double(), t).dtype == torch.float64
    assert_same_state(before, model_state(net))


class InputInplaceNet(nn.Module):
    """Overwrites its input in place before the ModuleNet layers."""

    def __init__(self) -> None:
        super().__init__()
        self.net = module_net()

    def forward(self, x: Tensor) -> Tensor:
        x.mul_(1.5)
        return self.net(x)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_model_overwriting_its_input_never_reaches_x(name: str) -> None:
    model = InputInplaceNet()
    x, t = batch()
    x_before = x.clone()
    kwargs = {"layer": "net.conv1"} if name in LAYER_METHODS else {}
    out = METHODS[name](model, x, t, **kwargs)
    assert torch.equal(x, x_before)
    if name == "gradient":  # d z(1.5 x) / dx = 1.5 * (grad of the inner net at 1.5 x)
        torch.testing.assert_close(out, 1.5 * hand_backward(model.net.eval(), 1.5 * x, t, "plain"))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_dispatch_through_explain_matches_direct_call(name: str) -> None:
    from sglrp import explain

    net = functional_net()
    x, t = batch()
    before = model_state(net)
    torch.testing.assert_close(explain(net, x, t, method=name), METHODS[name](net, x, t))
    assert_same_state(before, model_state(net))


def _staged_net() -> nn.Module:
    """Stages at 8, 4, 2 and 1 px (a ReLU closes each): middle stage m // 2 = 2 of 4 is the
    2 px one, closed by module "7"."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),  # "1": 8 px
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),  # "3": 4 px
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),  # "7": 2 px
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),  # "9": 1 px
        nn.Flatten(),
        nn.Linear(4, CLASSES),
    )


def test_middle_layer_rule_and_relevance_cam_there() -> None:
    """The rule on hand-made stage layouts, and relevance_cam_mid = relevance_cam at it."""
    net = _staged_net().eval()
    x, t = batch()
    assert middle_layer(net, x) == "7" and last_layer(net, x) == "9"
    odd = nn.Sequential(*list(_staged_net())[:8], nn.Flatten(), nn.Linear(16, CLASSES))
    # stages 8, 4, 2 px: index 3 // 2 = 1, the 4 px one, whose last output is conv "4"
    assert middle_layer(odd, x) == "4"
    assert middle_layer(_sequential_net(), x) == "3"  # 8 and 4 px: index 1, the last stage
    got = relevance_cam_mid(net, x, t)
    torch.testing.assert_close(got, relevance_cam(net, x, t, layer="7"))
    assert not torch.equal(got, relevance_cam(net, x, t))
    with pytest.raises(TypeError, match="does not take 'layer'"):
        relevance_cam_mid(net, x, t, layer="3")
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        middle_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, CLASSES)), x)
