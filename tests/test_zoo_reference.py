"""Zoo mirrors against the real torchvision: parameter counts, ``state_dict`` keys and shapes,
module names, classes and settings, and eval-mode logits after a deterministic fill.

The reference (tests/data/torchvision_reference.json) was written by
benchmarks/torchvision_reference.py with torchvision imported; the fill and the input come
from that same file, so both sides compute on identical float32 numbers. Measured logit
differences: at most 4.3e-8 (relative to the largest logit) with 1 thread, as the reference
was made and as this file runs, and 8.6e-6 (regnet_y_400mf) with 2 threads, where summation
order differs; the tolerance, 5e-5, leaves room for other CPUs. Settings too small to show
in float32 logits (an eps of 1e-6 vs 1e-5) are compared exactly in the module table.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from sglrp.models import ZOO, get_model
from sglrp.models import shufflenet as shufflenet_module

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests" / "data" / "torchvision_reference.json").read_text())
MODELS: dict[str, dict] = REFERENCE["models"]
# sglrp's own designs
NOT_TORCHVISION = {"inception_small", "shapes_vgg", "shapes_vgg_gap", "shapes_resnet", "shapes_vit"}
HEAVY = {"vgg11", "vgg16", "vgg16_bn", "resnet50", "convnext_tiny", "vit_b_16"}
RTOL = 5e-5


def _load_reference_script() -> ModuleType:
    path = ROOT / "benchmarks" / "torchvision_reference.py"
    spec = importlib.util.spec_from_file_location("torchvision_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TVREF = _load_reference_script()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread, as the reference was made: same summation order, and no oversubscription of
    a shared 2-core machine (2 threads under load ran this file 6x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(names) -> list:
    return [pytest.param(n, marks=pytest.mark.heavy) if n in HEAVY else n for n in names]


def _build_filled(name: str) -> nn.Module:
    """The zoo model with the reference fill (built on meta: no time spent on random init)."""
    with torch.device("meta"):
        model = ZOO[name]()
    model.to_empty(device="cpu")
    return TVREF.deterministic_fill_(model).eval()


def _logit_error(model: nn.Module, entry: dict) -> float:
    """``max |ours - torchvision|`` over the stored logits divided by ``max |torchvision|``, or the
    difference of the sum / norm of all logits divided by their norm, whichever is larger."""
    with torch.no_grad():
        logits = model(TVREF.reference_input(entry["input_side"]))[0].double()
    assert logits.numel() == entry["num_classes"]
    ref = torch.tensor(entry["logits"], dtype=torch.float64)
    ours = logits[entry["logit_index"]]
    per_logit = ((ours - ref).abs().max() / ref.abs().max()).item()
    whole = max(
        abs(logits.sum().item() - entry["logits_sum"]) / entry["logits_norm"],
        abs(logits.norm().item() - entry["logits_norm"]) / entry["logits_norm"],
    )
    return max(per_logit, whole)


def test_reference_covers_every_torchvision_mirror() -> None:
    assert set(MODELS) == set(ZOO) - NOT_TORCHVISION
    assert REFERENCE["torchvision_version"].startswith("0.")


@pytest.mark.parametrize("name", _params(MODELS))
def test_layout_matches_torchvision(name: str) -> None:
    entry = MODELS[name]
    with torch.device("meta"):
        model = ZOO[name]()
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == entry["state_dict"]
    ours = TVREF.module_table(model)
    diff = [(a, b) for a, b in zip(ours, entry["modules"], strict=False) if a != b]
    assert not diff, f"{name}: first modules differing (ours, torchvision): {diff[:3]}"
    assert len(ours) == len(entry["modules"])


@pytest.mark.parametrize("name", _params(MODELS))
def test_logits_match_torchvision(name: str) -> None:
    error = _logit_error(_build_filled(name), MODELS[name])
    assert error <= RTOL, f"{name}: logits differ from torchvision by {error:.2e} (relative)"


def _bn_eps_1e5(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-5  # torchvision's MobileNetV3 uses 1e-3


def _se_relu(model: nn.Module) -> None:
    for m in model.modules():
        if type(m).__name__ == "SqueezeExcitation":
            m.activation = nn.ReLU()  # torchvision's EfficientNet uses SiLU


def _gelu_tanh(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.GELU):
            m.approximate = "tanh"  # torchvision's ViT uses the exact GELU


@pytest.mark.parametrize(
    ("name", "mutate"),
    [("mobilenet_v3_small", _bn_eps_1e5), ("efficientnet_b0", _se_relu), ("vit_tiny", _gelu_tanh)],
)
def test_comparison_catches_subtle_deviations(name: str, mutate) -> None:
    model = _build_filled(name)
    mutate(model)
    assert _logit_error(model, MODELS[name]) > 2 * RTOL
    assert TVREF.module_table(model) != MODELS[name]["modules"]


def test_module_table_catches_a_layer_norm_eps() -> None:
    with torch.device("meta"):
        model = ZOO["convnext_tiny"]()
    assert TVREF.module_table(model) == MODELS["convnext_tiny"]["modules"]
    model.features[1][0].block[2].eps = 1e-5  # torchvision: 1e-6
    assert TVREF.module_table(model) != MODELS["convnext_tiny"]["modules"]


def test_comparison_catches_missing_channel_shuffle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shufflenet_module, "channel_shuffle", lambda x, groups: x)
    model = _build_filled("shufflenet_v2_x1_0")
    assert _logit_error(model, MODELS["shufflenet_v2_x1_0"]) > 2 * RTOL


def test_vit_loads_legacy_mlp_keys(tmp_path: Path) -> None:
    """Old torchvision ViT files name the MLP layers ``linear_1`` / ``linear_2``."""
    model = _build_filled("vit_tiny")
    legacy = {
        k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
        for k, v in model.state_dict().items()
    }
    assert any("mlp.linear_1.weight" in k for k in legacy)
    torch.save(legacy, tmp_path / "legacy.pt")
    loaded = get_model("vit_tiny", weights=tmp_path / "legacy.pt")
    assert _logit_error(loaded, MODELS["vit_tiny"]) <= RTOL
    fresh = ZOO["vit_tiny"]()
    fresh.load_state_dict(legacy)  # plain strict load_state_dict too
    assert torch.equal(fresh.encoder.layers[0].mlp[3].weight, model.encoder.layers[0].mlp[3].weight)
