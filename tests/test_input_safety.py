"""The caller's input, model and global state are never touched, and bad input is named.

Every registered method is run on models that change their input in place; under
``torch.inference_mode()``; with grad mode off; and the RNG state, grad mode and the input are
compared before and after. Bad inputs each raise an error that names the problem.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, model_state
from torch import Tensor, nn

import sglrp
from sglrp import methods
from sglrp.models import vit_tiny

H = W = 8


def base_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 3),
    ).eval()


def attention_net() -> nn.Module:
    """A one-layer ViT on 8x8 images (2x2 patches of 4x4) for the attention baselines."""
    torch.manual_seed(0)
    model = vit_tiny(3, image_size=H, patch_size=4, num_layers=1, hidden_dim=8, mlp_dim=16)
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight)
        model.class_token.normal_()
    return model.eval()


def net_for(name: str) -> nn.Module:
    """The attention baselines need a transformer; every other method gets the CNN."""
    return attention_net() if methods.get(name).family == "attention" else base_net()


class Normalising(nn.Module):
    """Normalises its input in place before the network (a common preprocessing shortcut)."""

    def __init__(self, net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = base_net() if net is None else net

    def forward(self, x: Tensor) -> Tensor:
        x.sub_(0.5).div_(0.25)
        return self.net(x)


class ReluFirst(nn.Module):
    """A first-layer in-place ReLU on the input itself."""

    def __init__(self, net: nn.Module | None = None) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.net = base_net() if net is None else net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.relu(x))


def options(name: str) -> dict:
    if not methods.get(name).takes_layer:
        return {}
    if methods.get(name).family == "attention":
        return {"layer": "net.encoder.layers.encoder_layer_0.ln_1"}
    return {"layer": "net.3"}


def batch(n: int = 2) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, H, W, generator=gen), torch.tensor([0, 2][:n])


@pytest.mark.parametrize("model_type", [Normalising, ReluFirst])
@pytest.mark.parametrize("name", methods.available())
def test_input_never_changes_and_the_map_is_right(model_type: type, name: str) -> None:
    model = model_type(net_for(name))
    x, t = batch()
    x_before = x.clone()
    before = model_state(model)
    rng = torch.get_rng_state()
    with torch.no_grad():
        got = sglrp.explain(model, x, t, method=name, **options(name))
        assert not torch.is_grad_enabled()
    assert torch.equal(x, x_before), "the caller's input was changed"
    assert_same_state(before, model_state(model))
    assert torch.equal(torch.get_rng_state(), rng)
    if model_type is Normalising and name in ("lrp", "clrp", "sglrp", "gradient"):
        # preprocessing inside the model: LRP passes relevance through it unchanged (identity
        # rule before the first layer); the gradient is the chain rule's
        plain = base_net()
        xn = (x - 0.5) / 0.25
        ref = sglrp.explain(plain, xn, t, method=name)
        if name == "gradient":
            ref = ref / 0.25
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", methods.available())
def test_inference_mode_works_and_grad_mode_is_restored(name: str) -> None:
    model = net_for(name)
    x, t = batch()
    expected = sglrp.explain(model, x, t, method=name)
    with torch.inference_mode():
        x_inf = x.clone()
        got = sglrp.explain(model, x_inf, t, method=name)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(got, expected)
    with torch.no_grad():
        sglrp.explain(model, x, t, method=name)
        assert not torch.is_grad_enabled()


def test_bad_inputs_are_named() -> None:
    model = base_net()
    x, t = batch()
    cases = [
        (dict(x=torch.empty(2, 3, H, W, device="meta")), ValueError, "meta device"),
        (dict(target=None), TypeError, "target is None"),
        (dict(x=x.double()), TypeError, r"x is torch.float64 but the model's parameters"),
        (dict(x=x.half()), TypeError, r"x is torch.float16 but"),
        (dict(x=torch.rand(2, 4, H, W)), RuntimeError, r"shape \(2, 4, 8, 8\).*4 channels"),
        (dict(bounds=(float("nan"), 1.0)), ValueError, "bounds must be finite"),
        (dict(bounds=(3.0, -3.0)), ValueError, r"inverted \(low > high\)"),
        (dict(method="sgrlp"), ValueError, r"did you mean 'sglrp'"),
        (dict(method="gradient", rules="dtd"), TypeError, "does not take 'rules'"),
        (dict(method="lrp", layer="0"), TypeError, "does not take 'layer'"),
    ]
    for change, error, message in cases:
        call = {"x": x, "target": t, "method": "sglrp", **change}
        with pytest.raises(error, match=message):
            sglrp.explain(model, call.pop("x"), call.pop("target"), **call)


def test_sglrp_and_clrp_need_two_classes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 1))
    x, _ = batch()
    for name in ("sglrp", "clrp"):
        with pytest.raises(ValueError, match="at least 2 classes"):
            sglrp.explain(model, x, 0, method=name, rules="epsilon")


def test_input_outside_the_bounds_warns() -> None:
    model = base_net()
    x, t = batch()
    with pytest.warns(RuntimeWarning, match=r"below the Z\^B bounds"):
        sglrp.explain(model, x - 5.0, t, method="lrp", bounds=(0.0, 1.0))
