"""One request flow: forward passes counted, the Explainer equals explain, and a method
registered by a user appears everywhere the registry is read."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import sglrp
from sglrp import methods
from sglrp.models import vit_tiny
from sglrp.targets import Target


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 16, 5),
    ).eval()


def attention_net() -> nn.Module:
    """A one-layer ViT on 8x8 images for the attention baselines."""
    torch.manual_seed(0)
    model = vit_tiny(5, image_size=8, patch_size=4, num_layers=1, hidden_dim=8, mlp_dim=16)
    nn.init.normal_(model.heads.head.weight)
    return model.eval()


class Counter:
    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_hook(self)

    def __call__(self, *args: object) -> None:
        self.calls += 1


@pytest.mark.parametrize("target", ["predicted", torch.tensor([[0, 1], [2, 3]])])
@pytest.mark.parametrize("name", methods.available())
def test_forward_passes_per_call(name: str, target: object) -> None:
    """One forward pass per call, whatever the number of targets, except guided Grad-CAM
    (two: its two gradients need differently built ReLU backwards), Relevance-CAM at the
    middle layer (two: one no-grad pass finds the layer) and the random baseline (none)."""
    model = attention_net() if methods.get(name).family == "attention" else net()
    counter = Counter(model)
    x = torch.rand(2, 3, 8, 8)
    sglrp.explain(model, x, target, method=name)
    counter.handle.remove()
    assert counter.calls == methods.get(name).forward_passes
    expected = {"guided_gradcam": 2, "relevance_cam_mid": 2, "random": 0}.get(name, 1)
    assert methods.get(name).forward_passes == expected


@pytest.mark.parametrize("variant", ["authors", "innvestigate-1.0.0", "innvestigate-1.0.8.3"])
def test_sglrp_variants_take_one_forward_pass(variant: str) -> None:
    model = net()
    counter = Counter(model)
    sglrp.explain(model, torch.rand(2, 3, 8, 8), method="sglrp", variant=variant)
    assert counter.calls == 1


def test_explainer_equals_explain_and_keeps_modified_weights() -> None:
    model = net()
    x = torch.rand(3, 3, 8, 8)
    explainer = sglrp.Explainer(model, "sglrp", rules="epsilon-plus")
    torch.testing.assert_close(explainer(x, 1), sglrp.explain(model, x, 1, rules="epsilon-plus"))
    kept = len(explainer.cache)
    assert kept > 0
    with torch.no_grad():  # a parameter changed in place: its modified copy is rebuilt
        model[4].weight.mul_(-1.0)
    torch.testing.assert_close(explainer(x, 1), sglrp.explain(model, x, 1, rules="epsilon-plus"))
    assert len(explainer.cache) == kept
    with pytest.raises(TypeError, match="does not take 'layer'"):
        sglrp.Explainer(model, "sglrp", layer="0")


def test_explainer_never_serves_the_weights_of_a_replaced_parameter() -> None:
    """A parameter replaced by a new one (not changed in place) that takes the freed one's id
    and version must not get the old one's modified copy: entries are checked by identity."""
    model = net()
    x = torch.rand(2, 3, 8, 8)
    explainer = sglrp.Explainer(model, "sglrp", rules="epsilon-plus")
    explainer(x, 1)
    layer = model[4]
    old_id, old_version = id(layer.weight), layer.weight._version
    shape = layer.weight.shape
    layer.weight = nn.Parameter(torch.randn(shape))  # the old one is freed here
    kept = []
    for _ in range(10_000):  # CPython reuses the freed object for a new one of its size
        candidate = nn.Parameter(torch.randn(shape))
        if id(candidate) == old_id:
            break
        kept.append(candidate)
    else:
        pytest.skip("no new parameter took the freed one's id")
    with torch.no_grad():
        while candidate._version < old_version:  # the same version too
            candidate.add_(0.0)
    assert candidate._version == old_version
    layer.weight = candidate
    torch.testing.assert_close(explainer(x, 1), sglrp.explain(model, x, 1, rules="epsilon-plus"))


def test_a_registered_method_is_available_everywhere() -> None:
    @methods.register("saliency", label="Saliency", summary="max |gradient| over channels")
    def saliency(model: nn.Module, x: Tensor, target: Target) -> Tensor:
        grad = methods.input_gradient(model, x, target)
        return grad.abs().amax(dim=-3, keepdim=True)

    try:
        assert "saliency" in sglrp.available_methods()
        model = net()
        x = torch.rand(2, 3, 8, 8)
        out = sglrp.explain(model, x, "predicted", method="Saliency")
        assert out.shape == (2, 1, 8, 8)
        assert methods.get("saliency").label == "Saliency"
        assert methods.get("saliency").options == ()
        with pytest.raises(ValueError, match="already registered"):
            methods.register("saliency", saliency)
    finally:
        methods.unregister("saliency")
    assert "saliency" not in sglrp.available_methods()


@pytest.mark.parametrize("rules", ["dtd", "epsilon-plus"])
def test_k_targets_in_one_vectorised_backward_equal_k_passes(
    rules: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = net().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([[0, 1, 4], [2, 3, 0]])
    engine = "sglrp.propagation.engine.Propagator.vectorise_targets_up_to"
    monkeypatch.setattr(engine, 2)
    batched = sglrp.explain(model, x, targets, method="sglrp", rules=rules)
    monkeypatch.setattr(engine, 0)
    sequential = sglrp.explain(model, x, targets, method="sglrp", rules=rules)
    torch.testing.assert_close(batched, sequential, rtol=1e-12, atol=1e-15)
    for k in range(3):
        single = sglrp.explain(model, x, targets[:, k], method="sglrp", rules=rules)
        torch.testing.assert_close(batched[:, k], single, rtol=1e-12, atol=1e-15)


def test_underflowed_relevance_is_reported():
    """A map in float32's denormal range (here x * gradient of an input of 1e-39) is flagged:
    it is mostly rounding; the same input in float64 is in range and not flagged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = (torch.rand(2, 1, 2, 4) + 0.5) * 1e-39
    assert 0 < x.abs().max() < torch.finfo(torch.float32).tiny
    with pytest.warns(RuntimeWarning, match="underflowed"):
        sglrp.explain(model, x, 0, method="input_x_gradient")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sglrp.explain(model.double(), x.double(), 0, method="input_x_gradient")
