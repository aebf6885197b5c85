"""The torch functions the engine recognises, and how to read their arguments.

Each set lists every spelling of one kind of operation (``torch.nn.functional``, ``torch``,
tensor methods and operators, in-place variants), so that a treatment does not depend on how a
model's author wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

T = torch.Tensor

LINEAR_KINDS: dict[Callable, type[nn.Module]] = {
    F.linear: nn.Linear,
    F.conv1d: nn.Conv1d,
    F.conv2d: nn.Conv2d,
    F.conv3d: nn.Conv3d,
}
"""Functional linear maps, with the module type whose rules they follow."""

#: Elementwise nonlinearities (identity rule) -> position of their ``inplace`` argument.
ACTIVATIONS: dict[Callable, int | None] = {
    F.silu: 1,
    F.gelu: None,
    F.hardswish: 1,
    F.mish: 1,
    F.elu: 2,
    F.selu: 1,
    F.celu: 2,
    F.leaky_relu: 2,
    F.relu6: 1,
    F.hardtanh: 3,
    F.hardsigmoid: 1,
    F.softplus: None,
    F.logsigmoid: None,
    F.softsign: None,
    F.tanhshrink: None,
    F.prelu: None,
    F.rrelu: 4,
    F.threshold: 3,
    torch.sigmoid: None,
    T.sigmoid: None,
    torch.tanh: None,
    T.tanh: None,
    T.sigmoid_: -1,
    T.tanh_: -1,
    torch.sigmoid_: -1,
    torch.tanh_: -1,
}
GATE_FUNCTIONS = frozenset({F.hardsigmoid, torch.sigmoid, T.sigmoid, T.sigmoid_, torch.sigmoid_})
"""Functions whose output is a gate in [0, 1] (the factor a :class:`Gate` holds constant)."""
RELUS: dict[Callable, bool] = {
    F.relu: False,
    torch.relu: False,
    T.relu: False,
    torch.relu_: True,
    T.relu_: True,
}
PRODUCTS = frozenset(
    {torch.mul, T.mul, T.__mul__, T.__rmul__, T.mul_, T.__imul__, torch.multiply, T.multiply}
)
MATMULS = frozenset(
    {torch.matmul, T.matmul, T.__matmul__, T.__rmatmul__, torch.bmm, T.bmm, torch.mm, T.mm}
)
SOFTMAXES = frozenset({F.softmax, torch.softmax, T.softmax})
TRANSPOSED = frozenset({F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d})
"""Transposed convolutions: their gradient (LRP-0) is used, with the warning given to linear
layers without a rule."""
SHIFTS = frozenset(
    {
        torch.add,
        torch.sub,
        T.add,
        T.sub,
        T.__add__,
        T.__radd__,
        T.__sub__,
        T.__rsub__,
        T.add_,
        T.sub_,
        T.__iadd__,
        T.__isub__,
    }
)
"""Additions of a constant: before the first linear layer (preprocessing inside the model,
``x - mean``) they take the identity rule, so the image keeps all relevance."""
NORMS = frozenset({F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm})
METADATA = {
    "size",
    "dim",
    "numel",
    "__get__",
    "__set__",
    "stride",
    "is_contiguous",
    "element_size",
}

ATTENTION_MODES = ("cp", "attnlrp")
REORDERLESS = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "clone",
    "view_as",
    "reshape_as",
}
"""Operations that keep a tensor's values in memory order (a relevance-form rule may read the
image through them)."""


def tensors(args: Any) -> Iterator[Tensor]:
    """Every tensor among ``args`` (also inside lists and tuples)."""
    for arg in args:
        if isinstance(arg, Tensor):
            yield arg
        elif isinstance(arg, list | tuple):
            yield from tensors(arg)


def active(t: object) -> bool:
    return isinstance(t, Tensor) and t.requires_grad


def inplace_flag(args: tuple, kwargs: dict, position: int | None) -> bool:
    if position is None:
        return False
    if position < 0:
        return True
    return bool(kwargs.get("inplace", args[position] if len(args) > position else False))


def bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def bind_linear(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    if func is F.linear:
        return bind(("input", "weight", "bias"), args, kwargs)
    return bind(
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args, kwargs
    )


def out_of_place(func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """The function's value without modifying its input."""
    x = args[0] if args else kwargs["input"]
    if func in (T.sigmoid_, torch.sigmoid_):
        return torch.sigmoid(x)
    if func in (T.tanh_, torch.tanh_):
        return torch.tanh(x)
    position = ACTIVATIONS[func]
    if position is not None and len(args) > position:
        args = (*args[:position], False, *args[position + 1 :])
    if "inplace" in kwargs:
        kwargs = {**kwargs, "inplace": False}
    return func(*args, **kwargs)


def max_pool_args(args: tuple, kwargs: dict) -> tuple | None:
    """(x, kernel, stride, padding, dilation, ceil_mode) of a max_pool2d call, or None."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
    bound = dict(zip(names, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k != "return_indices"})
    if kwargs.get("return_indices") or len(args) > 6 or "input" not in bound:
        return None
    if "kernel_size" not in bound or bound["input"].ndim not in (3, 4):
        return None
    stride = bound.get("stride") or bound["kernel_size"]
    return (
        bound["input"],
        bound["kernel_size"],
        stride,
        bound.get("padding", 0),
        bound.get("dilation", 1),
        bool(bound.get("ceil_mode", False)),
    )
