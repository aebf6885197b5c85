"""The layer maps' shortcuts against their plain forms: chunked dense layers writing modified
weights into one reused buffer, and the stacked input gradient of several terms."""

from __future__ import annotations

import builtins
import gc

import pytest
import torch

from sglrp.propagation import layers
from sglrp.propagation.layers import LinearOp, WeightCache, stacked
from sglrp.rules import keep, negative, positive


def _conv_op(groups: int) -> tuple[LinearOp, torch.Size]:
    weight = torch.randn(8, 4 // groups, 3, 3, dtype=torch.float64)
    op = LinearOp.conv(weight, None, 1, 1, 1, groups, "test")
    return op, torch.Size((2, 4, 5, 5))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_stacked_conv_input_gradient_is_each_term(groups: int) -> None:
    torch.manual_seed(0)
    op, shape = _conv_op(groups)
    grad = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    parts = [(keep, 1.0), (positive, -1.0), (negative, -2.5)]
    stack = op.input_grads(grad, parts, shape)
    assert stack.shape == (2, groups, 3, 4 // groups, 5, 5)
    for t, (modifier, coef) in enumerate(parts):
        alone = coef * torch.nn.grad.conv2d_input(
            shape, modifier(op.weight), grad, (1, 1), (1, 1), (1, 1), groups
        )
        assert torch.allclose(stack[:, :, t].reshape(shape), alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 7])
def test_stacked_dense_input_gradient_is_each_term(monkeypatch, chunk) -> None:
    torch.manual_seed(1)
    if chunk is not None:  # 4 rows of 11 inputs per chunk: 5 chunks of a 20 x 11 weight
        monkeypatch.setattr(layers, "CHUNK_ELEMENTS", 4 * 11)
    weight = torch.randn(20, 11, dtype=torch.float64)
    op = LinearOp.linear(weight, None)
    grad = torch.randn(3, 20, dtype=torch.float64)
    parts = [(positive, 1.0), (negative, 0.5)]
    stack = op.input_grads(grad, parts, torch.Size((3, 11)))
    for t, (modifier, coef) in enumerate(parts):
        assert torch.allclose(stack[..., t, :], coef * grad @ modifier(weight), atol=1e-12)


@pytest.mark.parametrize("modifier", [positive, negative, keep])
def test_chunked_dense_with_a_reused_buffer_equals_one_piece(monkeypatch, modifier) -> None:
    torch.manual_seed(2)
    weight = torch.randn(23, 9, dtype=torch.float64)
    bias = torch.randn(23, dtype=torch.float64)
    x = torch.randn(4, 9, dtype=torch.float64)
    grad = torch.randn(4, 23, dtype=torch.float64)
    whole = LinearOp.linear(weight, bias)
    expected_out = whole.forward(x, modifier, keep)
    expected_grad = whole.input_grad(grad, modifier, x.shape)
    monkeypatch.setattr(layers, "CHUNK_ELEMENTS", 5 * 9)  # chunks of 5 rows, the last of 3
    op = LinearOp.linear(weight, bias, cache=WeightCache(max_elements=10))
    assert len(op._chunks()) == 5
    assert torch.equal(op.forward(x, modifier, keep), expected_out)
    assert torch.allclose(op.input_grad(grad, modifier, x.shape), expected_grad, atol=1e-12)
    assert torch.equal(weight, whole.weight)  # the weight itself is never written


def test_stacked_modifier_is_one_object_per_parts() -> None:
    assert stacked(((positive, 1.0), (negative, -1.0))) is stacked(
        ((positive, 1.0), (negative, -1.0))
    )
    assert stacked(((positive, 1.0),)) is not stacked(((positive, 2.0),))


def _mlp() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(48, 40),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(40, 30),
        torch.nn.ReLU(),
        torch.nn.Linear(30, 5),
    ).double()


@pytest.mark.parametrize(
    ("method", "rules", "target"),
    [
        ("sglrp", "dtd", "predicted"),
        ("lrp", "epsilon-plus", "predicted"),
        ("clrp", "epsilon-gamma-box", "predicted"),
        ("sglrp", "dtd", torch.tensor([[0, 1], [2, 3], [4, 0]])),  # K = 2: one batched pass
    ],
)
def test_deferred_dense_layers_give_the_same_relevance(monkeypatch, method, rules, target):
    """Dense layers too large to keep their modified weights build them per chunk in the
    backward pass (denominators and input gradient from one copy); the relevance is the one
    of the layer in one piece."""
    import sglrp

    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    whole = sglrp.explain(_mlp(), x, target, method=method, rules=rules)
    monkeypatch.setattr(layers, "CHUNK_ELEMENTS", 7 * 48)  # 6 chunks of the first layer
    monkeypatch.setattr(layers, "CACHE_ELEMENTS", 100)  # nothing kept: every layer deferred
    monkeypatch.setattr(layers.WeightCache.__init__, "__defaults__", (100,))
    model = _mlp()
    calls = []
    original = layers.LinearOp.rows

    def rows(self, *args, **kwargs):
        calls.append(self.weight.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layers.LinearOp, "rows", rows)
    chunked = sglrp.explain(model, x, target, method=method, rules=rules)
    assert calls, "no layer was deferred"
    assert torch.allclose(chunked, whole, rtol=1e-10, atol=1e-12)
    # an Explainer keeps every modified weight: the chunks are slices of them, twice over
    explainer = sglrp.Explainer(model, method, rules=rules)
    for _ in range(2):
        calls.clear()
        kept = explainer(x, target)
        assert calls, "no layer was deferred"
        assert torch.allclose(kept, whole, rtol=1e-10, atol=1e-12)
    if rules != "epsilon-plus":  # (its dense layers have the epsilon rule: nothing to keep)
        assert any(value.shape == (40, 48) for *_, value in explainer.cache._entries.values())


def test_weight_cache_serves_an_entry_only_to_its_own_tensor(monkeypatch):
    """Two tensors with one id (as when a freed parameter's id is taken by a new one) and one
    version: the second gets its own modified weight, not the first's; an entry whose tensor
    is freed is dropped."""
    first, second = torch.ones(3), torch.full((3,), -1.0)
    same = {builtins.id(first): 1, builtins.id(second): 1}
    monkeypatch.setattr(
        layers, "id", lambda t: same.get(builtins.id(t), builtins.id(t)), raising=False
    )
    cache = WeightCache()
    torch.testing.assert_close(cache.get(positive, (first,), lambda: first.clamp(min=0)), first)
    served = cache.get(positive, (second,), lambda t=second: t.clamp(min=0))
    torch.testing.assert_close(served, torch.zeros(3))
    assert len(cache) == 1
    del second, served
    gc.collect()
    assert len(cache) == 0
