"""Shared fixtures. zennit imports torchvision at import time; torchvision cannot be imported
here, so tests that compare with zennit install a minimal stand-in first
(``benchmarks/torchvision_standin.py``, shared with the speed benchmark)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision_standin import install_torchvision_standin


@pytest.fixture
def zennit():
    install_torchvision_standin()
    import zennit as zennit_module

    return zennit_module


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny models run faster than contending for the
    shared cores (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def model_state(model: nn.Module) -> dict:
    """Everything a call must leave unchanged, for equality checks."""
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "forward": [("forward" in vars(m)) for m in model.modules()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "hooks", "forward"):
        assert before[key] == after[key], key
    for group in ("params", "buffers"):
        assert before[group].keys() == after[group].keys()
        for name, value in before[group].items():
            assert torch.equal(value, after[group][name]), f"{group} {name} changed"
