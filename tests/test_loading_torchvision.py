"""``--model NAME`` takes torchvision's model where torchvision imports, the zoo's mirror where
it does not (torchvision cannot be imported on the project's machine: a stand-in plays it)."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch

from sglrp import loading
from sglrp.models import get_model
from sglrp.models.resnet import resnet18


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r18.pt"
    torch.save(resnet18(num_classes=10).state_dict(), path)
    return path


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A torchvision whose ``models`` lists and builds one classifier (our resnet18 layout,
    which equals torchvision's), recording the calls."""
    calls = []

    def get(name, weights=None, num_classes=1000):
        calls.append((name, weights, num_classes))
        return resnet18(num_classes=num_classes)

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["resnet18"]
    models.get_model = get
    package = types.ModuleType("torchvision")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    package.__path__ = []
    package.models = models
    models.__spec__ = importlib.machinery.ModuleSpec("torchvision.models", None)
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_torchvision_builds_the_model_where_it_imports(fake_torchvision, weights):
    bundle = loading.load_model("resnet18", weights=str(weights))
    assert bundle.kind == "torchvision"
    assert fake_torchvision == [("resnet18", None, 10)]
    reference = get_model("resnet18", 10, weights)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(bundle.model(x), reference(x))


def test_torchvision_weights_go_through_the_fit_check(fake_torchvision, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(10, 3)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        loading.load_model("resnet18", weights=str(bad))


def test_the_zoo_mirror_serves_where_torchvision_does_not_import(weights):
    assert loading._torchvision_models() is None  # as on the project's machine
    bundle = loading.load_model("resnet18", weights=str(weights))
    assert bundle.kind == "zoo"
