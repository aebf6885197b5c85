"""Model zoo: torchvision-identical layouts, small Inception net, get_model loading and errors.

Big models are built on the meta device (shapes only, no memory) wherever values are not needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sglrp.models import (
    ZOO,
    BasicBlock,
    Bottleneck,
    DenseNet,
    ResNet,
    densenet121,
    get_model,
    inception_small,
    resnet18,
    resnet50,
    vgg11,
    vgg16,
    vgg16_bn,
)
from sglrp.models.densenet import remap_legacy_keys


def on_meta(factory: Callable[..., nn.Module], **kwargs) -> nn.Module:
    with torch.device("meta"):
        return factory(**kwargs)


# name: (factory, torchvision parameter count, number of state_dict keys, sample key -> shape)
TORCHVISION = {
    "vgg11": (
        vgg11,
        132_863_336,
        22,
        {
            "features.0.weight": (64, 3, 3, 3),
            "features.3.bias": (128,),
            "features.18.weight": (512, 512, 3, 3),
            "classifier.0.weight": (4096, 25088),
            "classifier.6.bias": (1000,),
        },
    ),
    "vgg16": (
        vgg16,
        138_357_544,
        32,
        {
            "features.2.weight": (64, 64, 3, 3),
            "features.28.weight": (512, 512, 3, 3),
            "classifier.3.weight": (4096, 4096),
            "classifier.6.weight": (1000, 4096),
        },
    ),
    "vgg16_bn": (
        vgg16_bn,
        138_365_992,
        97,
        {
            "features.1.running_mean": (64,),
            "features.1.num_batches_tracked": (),
            "features.40.weight": (512, 512, 3, 3),
            "features.41.running_var": (512,),
            "classifier.6.weight": (1000, 4096),
        },
    ),
    "resnet18": (
        resnet18,
        11_689_512,
        122,
        {
            "conv1.weight": (64, 3, 7, 7),
            "bn1.num_batches_tracked": (),
            "layer1.0.conv1.weight": (64, 64, 3, 3),
            "layer2.0.downsample.0.weight": (128, 64, 1, 1),
            "layer2.0.downsample.1.running_var": (128,),
            "layer4.1.bn2.weight": (512,),
            "fc.weight": (1000, 512),
        },
    ),
    "resnet50": (
        resnet50,
        25_557_032,
        320,
        {
            "layer1.0.conv1.weight": (64, 64, 1, 1),
            "layer1.0.downsample.0.weight": (256, 64, 1, 1),
            "layer2.0.conv2.weight": (128, 128, 3, 3),
            "layer3.5.bn3.running_mean": (1024,),
            "layer4.2.conv3.weight": (2048, 512, 1, 1),
            "fc.weight": (1000, 2048),
        },
    ),
    "densenet121": (
        densenet121,
        7_978_856,
        727,
        {
            "features.conv0.weight": (64, 3, 7, 7),
            "features.denseblock1.denselayer1.norm1.weight": (64,),
            "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
            "features.denseblock1.denselayer6.conv2.weight": (32, 128, 3, 3),
            "features.transition1.conv.weight": (128, 256, 1, 1),
            "features.denseblock4.denselayer16.norm2.num_batches_tracked": (),
            "features.norm5.running_var": (1024,),
            "classifier.weight": (1000, 1024),
        },
    ),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_counts_and_keys(name: str) -> None:
    factory, n_params, n_keys, samples = TORCHVISION[name]
    model = on_meta(factory)
    assert sum(p.numel() for p in model.parameters()) == n_params
    state = model.state_dict()
    assert len(state) == n_keys
    for key, shape in samples.items():
        assert tuple(state[key].shape) == shape, key
    assert ZOO[name] is factory


def test_module_layout_matches_torchvision() -> None:
    res = on_meta(resnet18)
    assert isinstance(res, ResNet)
    assert [n for n, _ in res.named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"
    ]  # fmt: skip
    block = res.layer2[0]
    assert isinstance(block, BasicBlock) and block.stride == 2
    assert [n for n, _ in block.named_children()] == [
        "conv1", "bn1", "relu", "conv2", "bn2", "downsample"
    ]  # fmt: skip
    assert res.layer1[0].downsample is None and res.relu.inplace

    bott = on_meta(resnet50).layer3[0]
    assert isinstance(bott, Bottleneck) and bott.stride == 2 and bott.conv2.stride == (2, 2)
    assert [n for n, _ in bott.named_children()] == [
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"
    ]  # fmt: skip

    vgg = on_meta(vgg16_bn)
    assert [n for n, _ in vgg.named_children()] == ["features", "avgpool", "classifier"]
    assert vgg.avgpool.output_size == (7, 7)
    kinds = [type(m).__name__ for m in vgg.features[:7]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in vgg.classifier] == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"
    ]  # fmt: skip
    assert all(m.inplace for m in vgg.modules() if isinstance(m, nn.ReLU))

    dense = on_meta(densenet121)
    assert isinstance(dense, DenseNet)
    assert [n for n, _ in dense.features.named_children()] == [
        "conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
        "transition2", "denseblock3", "transition3", "denseblock4", "norm5",
    ]  # fmt: skip
    layer = dense.features.denseblock1.denselayer1
    assert [n for n, _ in layer.named_children()] == [
        "norm1", "relu1", "conv1", "norm2", "relu2", "conv2"
    ]  # fmt: skip


def test_torchvision_initialisation() -> None:
    model = resnet18(zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for b in model.modules() if isinstance(b, BasicBlock))
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    std = model.conv1.weight.std().item()  # kaiming fan_out: sqrt(2 / (64 * 49))
    assert std == pytest.approx((2 / (64 * 49)) ** 0.5, rel=0.1)
    dense = densenet121(num_classes=10)
    assert torch.all(dense.classifier.bias == 0)


def test_forward_shapes_num_classes_10() -> None:
    x = torch.randn(1, 3, 32, 32)
    for factory in (resnet18, resnet50, densenet121, inception_small):
        model = factory(num_classes=10).eval()
        with torch.no_grad():
            assert model(x).shape == (1, 10), factory.__name__
    # one real VGG (big, but 32x32 is cheap); the other two only shape-checked on meta
    model = vgg11(num_classes=10, dropout=0.2).eval()
    assert model.classifier[2].p == 0.2
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    for factory in (vgg16, vgg16_bn):
        assert on_meta(factory, num_classes=10).eval()(x.to("meta")).shape == (1, 10)


def test_block_forward_semantics() -> None:
    block = resnet50(num_classes=10).layer2[0].eval()
    x = torch.randn(2, 256, 8, 8)
    h = block.relu(block.bn1(block.conv1(x)))
    h = block.relu(block.bn2(block.conv2(h)))
    expected = torch.relu(block.bn3(block.conv3(h)) + block.downsample(x))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)

    layer = densenet121(num_classes=10).features.denseblock1.eval()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        out = layer(x)
        assert out.shape == (1, 64 + 6 * 32, 8, 8)
        torch.testing.assert_close(out[:, :64], x)  # dense block keeps its input channels


def test_zennit_resnet_canonizer_accepts_blocks(zennit) -> None:
    from zennit.torchvision import ResNetCanonizer

    model = resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        handles = ResNetCanonizer().apply(model)
        assert all("forward" in vars(b) for b in model.modules() if isinstance(b, BasicBlock))
        after = model(x)
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_inception_small() -> None:
    model = inception_small(num_classes=7).eval()
    assert model.block1.out_channels == 64
    cats = [m for m in model.modules() if type(m).__name__ == "InceptionBlock"]
    assert len(cats) == 3
    with torch.no_grad():
        for size in (32, 48, 64):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert inception_small(in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_zoo_contents() -> None:
    expected = {"vgg11", "vgg16", "vgg16_bn", "resnet18", "resnet50", "densenet121"}
    expected |= {"efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf"}
    expected |= {"convnext_tiny", "shufflenet_v2_x1_0", "vit_b_16", "vit_tiny"}
    assert expected | {"inception_small"} <= set(ZOO)
    own = {"inception_small", "shapes_vgg", "shapes_vgg_gap", "shapes_resnet", "shapes_vit"}
    assert set(ZOO) <= expected | own
    assert all(callable(f) for f in ZOO.values())


def test_get_model_round_trip(tmp_path) -> None:
    source = resnet18(num_classes=10)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    model = get_model("resnet18", num_classes=10, weights=path)
    assert not model.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x), rtol=0, atol=0)
    assert not get_model("inception_small", num_classes=3).training


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_get_model_unwraps_checkpoints(tmp_path, wrap: str) -> None:
    state = inception_small(num_classes=4).state_dict()
    if wrap == "module.":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "ckpt.pt")
    model = get_model("inception_small", num_classes=4, weights=str(tmp_path / "ckpt.pt"))
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_get_model_densenet_legacy_keys(tmp_path) -> None:
    state = densenet121(num_classes=10).state_dict()
    pattern = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.")
    legacy = {pattern.sub(r"\1.\2.", k): v for k, v in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert list(remap_legacy_keys(legacy)) == list(state)
    # torchvision's downloadable file also predates the BatchNorm step counters
    legacy = {k: v for k, v in legacy.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "old.pth")
    model = get_model("densenet121", num_classes=10, weights=tmp_path / "old.pth")
    assert torch.equal(model.classifier.weight, state["classifier.weight"])


def test_get_model_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*available models:.*resnet18"):
        get_model("resnet19")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        get_model("inception_small", num_classes=0)


def test_get_model_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        get_model("inception_small", weights=path)


def test_get_model_unreadable_file(tmp_path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x00garbage, not a checkpoint" * 10)
    with pytest.raises(ValueError, match="could not read weights file"):
        get_model("inception_small", weights=path)
    with pytest.raises(ValueError, match="is a directory"):
        get_model("inception_small", weights=tmp_path)


def test_get_model_pickled_module_or_non_state_dict(tmp_path) -> None:
    torch.save(inception_small(), tmp_path / "whole.pt")
    with pytest.raises(ValueError, match=r"could not read.*model\.state_dict\(\)"):
        get_model("inception_small", weights=tmp_path / "whole.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state_dict"):
        get_model("inception_small", weights=tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "ints.pt")
    with pytest.raises(ValueError, match="not a state_dict: entries 'a'"):
        get_model("inception_small", weights=tmp_path / "ints.pt")


def test_get_model_wrong_num_classes(tmp_path) -> None:
    torch.save(resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError) as info:
        get_model("resnet18", num_classes=1000, weights=tmp_path / "r18.pt")
    msg = str(info.value)
    assert "2 shape mismatches" in msg
    assert "'fc.weight': file (10, 512) vs model (1000, 512)" in msg
    assert "get_model('resnet18', num_classes=10)" in msg


def test_get_model_wrong_architecture(tmp_path) -> None:
    torch.save(resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError) as info:
        get_model("inception_small", num_classes=10, weights=tmp_path / "r18.pt")
    msg = str(info.value)
    assert "does not fit 'inception_small'" in msg
    assert re.search(r"132 missing keys \('stem\.conv\.weight', 'stem\.bn\.weight'", msg)
    assert re.search(r"120 unexpected keys \('conv1\.weight', 'bn1\.weight'", msg)
    assert "... (120 in all)" in msg
    assert "'fc.weight': file (10, 512) vs model (10, 176)" in msg
    assert "The file fits get_model('resnet18', num_classes=10)" in msg

    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="matches no zoo architecture"):
        get_model("inception_small", weights=tmp_path / "odd.pt")
