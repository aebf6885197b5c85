"""The test reference itself (``tests/reference.py``): a gate is recognised by the tensor, not
by an id that a later tensor can reuse."""

from __future__ import annotations

import torch
from reference import DetachedReference


def test_a_freed_gates_id_reused_by_an_activation_does_not_make_it_a_gate() -> None:
    """A squeeze-excitation block's gate dies when the block returns, and a later block's input
    can get its id (the zoo test on efficientnet_b0 failed so in a full-suite run, CLRP map
    off by 0.98 of its scale): the product ``scale * input`` must still keep the gradient of
    the input, the activation, and stop that of ``scale``."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    mode = DetachedReference()
    with mode:
        freed = id(torch.sigmoid(x))  # a gate, freed at once
        # The next tensors allocated take the freed id (CPython reuses the freed block) unless
        # the reference holds its gates; those that do not are kept so they do not retake theirs.
        kept = []
        for _ in range(10_000):
            activation = x + 1.0
            if id(activation) == freed:
                break
            kept.append(activation)
        scale = x.mean((2, 3), keepdim=True)  # not a gate: a smaller factor
        out = scale * activation
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, scale.detach().expand_as(x), rtol=1e-12, atol=0)
