"""Every zoo model (old and new), exactly: the identities of ``test_modern.py`` on torchvision
layouts, in float64 with every bias and batch-norm shift zeroed where conservation is checked.

The transformers are checked in ``test_transformers.py`` (their reference needs the attention
written out).
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_relevance
from torch import nn

import sglrp
from sglrp.models import ZOO
from sglrp.propagation import propagate
from sglrp.propagation.output import OUTPUT_RELEVANCE

# One intra-op thread: tiny models run faster than contending for the two cores. (The random
# failures once blamed on threads, on models with squeeze-excitation, were the reference's:
# it took a later tensor that reused a freed gate's id for a gate; see test_reference.py.)
pytestmark = pytest.mark.usefixtures("one_thread")

CNNS = [name for name in ZOO if "vit" not in name]
SIZE = {"vgg11": 32, "vgg16": 32, "vgg16_bn": 32, "resnet18": 32, "resnet50": 32}


def build(name: str, zero_bias: bool) -> nn.Module:
    """Random weights with batch-norm statistics of the test images (so that the signal does
    not fade over dozens of layers), biases and shifts zeroed or random."""
    torch.manual_seed(0)
    model = ZOO[name](num_classes=10).double()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.momentum = None  # cumulative: the statistics of the calibration batch
            m.reset_running_stats()
        model.train()(inputs(name))
        model.eval()
        for m in norms:
            m.momentum = 0.1
            m.weight.uniform_(0.5, 1.5)
            if zero_bias:
                m.running_mean.zero_()
        for m in model.modules():
            for pname, p in m.named_parameters(recurse=False):
                if pname == "bias":
                    p.copy_(torch.zeros_like(p) if zero_bias else torch.randn_like(p) * 0.05)
    return model


def inputs(name: str) -> torch.Tensor:
    size = SIZE.get(name, 64)
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", CNNS)
def test_lrp0_conserves_the_logit(name: str) -> None:
    model = build(name, zero_bias=True)
    result = propagate(model, inputs(name), "predicted", "lrp", "lrp0")
    z_t = result.logits.gather(1, result.targets[:, None])[:, 0]
    assert (z_t.abs() > 1e-3).all()  # a signal, not rounding noise
    torch.testing.assert_close(result.input_relevance.sum((1, 2, 3)), z_t, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", CNNS)
def test_lrp0_equals_the_detached_reference(name: str) -> None:
    model = build(name, zero_bias=False)
    x = inputs(name)
    for output in ("lrp", "clrp", "sglrp"):
        result = propagate(model, x, "predicted", output, "lrp0")
        vector = OUTPUT_RELEVANCE[output](result.logits, result.targets)
        expected = reference_relevance(model, x, vector)
        # 1e-9 of the map's own largest value (measured: at most 7e-12, efficientnet_b0 and
        # regnet_y_400mf's CLRP); a saturated softmax gives SGLRP a zero vector: then exactly 0
        scale = expected.abs().max()
        difference = (result.input_relevance - expected).abs().max()
        deviation = float(difference / scale if scale > 0 else difference)
        assert deviation <= 1e-9, f"{output}: max deviation {deviation:.3g} of the map's scale"


@pytest.mark.parametrize("name", CNNS)
def test_inspect_lists_every_layer_with_a_treatment(name: str) -> None:
    model = build(name, zero_bias=False)
    report = sglrp.inspect(model, inputs(name)[:1])
    assert report.ok, report.problems
    assert all(row.treatment and not row.treatment.startswith("unsupported") for row in report.rows)
    seen = {row.module for row in report.rows}
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert set(linear) <= seen
