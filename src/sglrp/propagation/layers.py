"""The linear map of a layer: forward with modified parameters and its input gradient.

A :class:`LinearOp` is a dense or convolutional affine map ``x -> x W^T + b`` as called by
``F.linear`` / ``F.convNd`` (from a module or written functionally), optionally merged with
the eval-mode ``BatchNorm`` applied directly to its output
(:math:`w' = w\\,\\gamma/\\sigma`, :math:`b' = (b - \\mu)\\,\\gamma/\\sigma + \\beta`), so
that a rule sees one affine layer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rules import ParamMod, keep, negative, positive

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Linear layers with more weights than this are processed in row chunks, so a modified copy
#: of a large weight matrix (VGG16's first classifier layer has 103 M) never exists at once.
CHUNK_ELEMENTS = 1 << 20

#: Modified weights up to this size are kept from the forward to the backward pass (and, in an
#: :class:`sglrp.Explainer`, across calls); larger ones are rebuilt where they are used.
CACHE_ELEMENTS = 1 << 22


_INTO: dict[Callable, Callable[[Tensor, Tensor], Tensor]] = {
    positive: lambda w, out: torch.clamp(w, min=0, out=out),
    negative: lambda w, out: torch.clamp(w, max=0, out=out),
}
"""Modifiers that can write into a given buffer (a chunk loop reuses one buffer instead of
allocating, and page-faulting, a fresh copy per chunk)."""


def _modified(weight: Tensor, modifier: ParamMod, buffer: Tensor | None) -> Tensor:
    """``modifier(weight)``, written into ``buffer`` (at least as long) where it can be."""
    if buffer is not None and modifier in _INTO:
        return _INTO[modifier](weight, buffer[: weight.shape[0]])
    return modifier(weight)


@cache
def stacked(parts: tuple[tuple[ParamMod, float], ...]) -> ParamMod:
    r"""The modifier :math:`w \mapsto [c_1 m_1(w), \dots, c_T m_T(w)]` stacked along the
    input dimension (dim 1), so that one input gradient of the stacked weight gives the T
    terms :math:`c_t\, m_t(W)^T g` at once. The same ``parts`` give the same function object
    (a stable key for :class:`WeightCache`)."""

    def modifier(param: Tensor) -> Tensor:
        return torch.cat([m(param) * c if c != 1.0 else m(param) for m, c in parts], dim=1)

    modifier.__name__ = "stacked(" + ", ".join(f"{c:g}*{m.__name__}" for m, c in parts) + ")"
    return modifier


class WeightCache:
    """Modified weights (:math:`w^+`, :math:`w^-`, ...) computed once and shared.

    An entry is keyed by a modifier and the tensors its weight is derived from (the layer's
    weight, the batch norm merged into it). It is served only to those very tensors (held by
    weak reference: a parameter replaced by a new one that takes the freed one's ``id`` gets
    its own entry) at the versions it was built from (a parameter changed in place, by an
    optimiser step, is rebuilt); an entry whose tensor is freed is dropped with it.
    """

    def __init__(self, max_elements: int = CACHE_ELEMENTS) -> None:
        self.max_elements = max_elements
        self._entries: dict[tuple, tuple[tuple, tuple, Tensor]] = {}

    def get(
        self, modifier: Callable, sources: tuple[Tensor, ...], compute: Callable[[], Tensor]
    ) -> Tensor:
        """The entry of ``modifier`` applied to what ``sources`` give, computed if missing or
        stale."""
        entry = self._entries.get(self._key(modifier, sources))
        if entry is not None and self._current(entry, sources):
            return entry[2]
        value = compute()
        self.put(modifier, sources, value)
        return value

    def put(self, modifier: Callable, sources: tuple[Tensor, ...], value: Tensor) -> None:
        """Store ``value`` (computed elsewhere, e.g. into a reused buffer)."""
        key = self._key(modifier, sources)

        def drop(_ref: weakref.ref, entries: dict = self._entries, key: tuple = key) -> None:
            entry = entries.get(key)
            if entry is not None and any(r() is None for r in entry[0]):
                del entries[key]

        refs = tuple(weakref.ref(t, drop) for t in sources)
        self._entries[key] = (refs, tuple(t._version for t in sources), value)

    @staticmethod
    def _key(modifier: Callable, sources: tuple[Tensor, ...]) -> tuple:
        return (modifier, *map(id, sources))

    @staticmethod
    def _current(entry: tuple, sources: tuple[Tensor, ...]) -> bool:
        refs, versions, _ = entry
        return all(r() is t for r, t in zip(refs, sources, strict=True)) and versions == tuple(
            t._version for t in sources
        )

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_SHARED: ContextVar[WeightCache | None] = ContextVar("sglrp_weight_cache", default=None)


@contextmanager
def shared_cache(cache: WeightCache) -> Iterator[WeightCache]:
    """Let every propagation inside the block use ``cache`` (how an Explainer keeps its
    modified weights across calls)."""
    token = _SHARED.set(cache)
    try:
        yield cache
    finally:
        _SHARED.reset(token)


def current_cache() -> WeightCache | None:
    """The cache of the enclosing :func:`shared_cache` block, if any."""
    return _SHARED.get()


_CONV_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_INPUT_GRAD = {
    1: torch.nn.grad.conv1d_input,
    2: torch.nn.grad.conv2d_input,
    3: torch.nn.grad.conv3d_input,
}


def _tuple(value: int | tuple[int, ...] | list[int], ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * ndim


def conv_padding(
    padding: str | int | tuple[int, ...],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    where: str,
) -> tuple[int, ...]:
    """Explicit integer padding of a convolution; raise for what the rules cannot handle."""
    ndim = len(kernel_size)
    if padding == "valid":
        return (0,) * ndim
    if padding == "same":
        pads = []
        for k, d in zip(kernel_size, dilation, strict=True):
            total = d * (k - 1)
            if total % 2:
                raise ValueError(
                    f"{where} uses padding='same' with an even kernel, which pads "
                    "asymmetrically; the LRP rules support symmetric padding only (pad "
                    "explicitly with F.pad, or assign the layer Gradient())"
                )
            pads.append(total // 2)
        return tuple(pads)
    return _tuple(padding, ndim)


@dataclass
class LinearOp:
    """An affine map ``x -> x W^T + b`` (dense or convolution) with parameter modifiers."""

    weight: Tensor
    bias: Tensor | None
    ndim: int = 0  # 0 for dense layers, else the convolution's spatial dimensions
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    sources: tuple[Tensor, ...] = field(default=(), repr=False)
    cache: WeightCache | None = field(default=None, repr=False)

    @classmethod
    def linear(
        cls, weight: Tensor, bias: Tensor | None, cache: WeightCache | None = None
    ) -> LinearOp:
        """The op of ``F.linear(x, weight, bias)``."""
        return cls(
            weight.detach(),
            None if bias is None else bias.detach(),
            sources=(weight,),
            cache=cache,
        )

    @classmethod
    def conv(
        cls,
        weight: Tensor,
        bias: Tensor | None,
        stride: int | tuple[int, ...],
        padding: str | int | tuple[int, ...],
        dilation: int | tuple[int, ...],
        groups: int,
        where: str,
        cache: WeightCache | None = None,
    ) -> LinearOp:
        """The op of ``F.convNd(x, weight, bias, stride, padding, dilation, groups)``."""
        ndim = weight.ndim - 2
        dilation = _tuple(dilation, ndim)
        return cls(
            weight.detach(),
            None if bias is None else bias.detach(),
            ndim=ndim,
            stride=_tuple(stride, ndim),
            padding=conv_padding(padding, tuple(weight.shape[2:]), dilation, where),
            dilation=dilation,
            groups=int(groups),
            sources=(weight,),
            cache=cache,
        )

    def merged(
        self,
        running_mean: Tensor,
        running_var: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> LinearOp:
        """This op followed by an eval-mode batch norm, as one affine op."""
        scale = (running_var.detach() + eps).rsqrt()
        if weight is not None:
            scale = scale * weight.detach()
        shift = -running_mean.detach() * scale
        if bias is not None:
            shift = shift + bias.detach()
        w = self.weight * scale.view(-1, *([1] * (self.weight.ndim - 1)))
        b = shift if self.bias is None else self.bias * scale + shift
        merged_from = tuple(t for t in (running_mean, running_var, weight) if t is not None)
        return replace(self, weight=w, bias=b, sources=self.sources + merged_from)

    def rows(self, rows: slice, cache: WeightCache | None) -> LinearOp:
        """The dense op of output units ``rows`` (a view of the weight), with its own cache."""
        bias = None if self.bias is None else self.bias[rows]
        return replace(self, weight=self.weight[rows], bias=bias, sources=(), cache=cache)

    def kept(self) -> bool:
        """True if modified weights of this op are kept (:class:`WeightCache`) rather than
        rebuilt where they are used."""
        return self.cache is not None and self.weight.numel() <= self.cache.max_elements

    def chunked(self) -> bool:
        """True for a dense op processed in row chunks (see :data:`CHUNK_ELEMENTS`)."""
        return not self.ndim and len(self._chunks()) > 1

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    # -- parameters -------------------------------------------------------------------------

    def _chunks(self) -> list[slice]:
        rows = self.weight.shape[0]
        if self.ndim or self.weight.numel() <= CHUNK_ELEMENTS:
            return [slice(0, rows)]
        step = max(1, CHUNK_ELEMENTS // self.weight[0].numel())
        return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]

    def param(
        self,
        modifier: Callable[[Tensor], Tensor],
        rows: slice | None = None,
        buffer: Tensor | None = None,
    ) -> Tensor:
        """``modifier(weight[rows])``, from the cache for weights small enough to keep, else
        written into ``buffer`` (at least ``rows`` long) where the modifier can."""
        weight = self.weight if rows is None else self.weight[rows]
        if modifier is keep:
            return weight
        if not self.kept():
            return _modified(weight, modifier, buffer)
        full = self.cache.get(modifier, self.sources, lambda: modifier(self.weight))
        return full if rows is None else full[rows]

    def row_ops(
        self, modifiers: set[Callable[[Tensor], Tensor]]
    ) -> Iterator[tuple[slice, LinearOp]]:
        """The dense op chunk by chunk (:meth:`_chunks`): the rows and their op, with
        ``modifiers`` of those rows in the chunk's own cache, so that the chunk's forward and
        input gradient share them: slices of the kept modified weights (:meth:`kept`), else
        built per chunk (into one reused buffer per modifier where it can be)."""
        chunks = self._chunks()
        kept = self.kept()
        buffers = {m: None if kept else self._chunk_buffer(chunks, m) for m in modifiers}
        for rows in chunks:
            op = self.rows(rows, WeightCache(max_elements=self.weight.numel()))
            for modifier, buffer in buffers.items():
                op.cache.put(modifier, op.sources, self.param(modifier, rows, buffer))
            yield rows, op

    # -- maps -------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        weight_mod: Callable[[Tensor], Tensor],
        bias_mod: Callable[[Tensor], Tensor] | None,
    ) -> Tensor:
        """The layer applied to ``x`` with modified weight and bias (``None``: no bias)."""
        bias = bias_mod(self.bias) if (bias_mod is not None and self.bias is not None) else None
        if self.ndim:
            return _CONV_FORWARD[self.ndim](
                x,
                self.param(weight_mod),
                bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        chunks = self._chunks()
        if len(chunks) == 1:
            return F.linear(x, self.param(weight_mod), bias)
        out = x.new_empty(*x.shape[:-1], self.weight.shape[0])
        buffer = self._chunk_buffer(chunks, weight_mod)
        for rows in chunks:
            out[..., rows] = F.linear(
                x, self.param(weight_mod, rows, buffer), None if bias is None else bias[rows]
            )
        return out

    def _chunk_buffer(self, chunks: list[slice], modifier: Callable) -> Tensor | None:
        if modifier not in _INTO:
            return None
        return self.weight.new_empty(chunks[0].stop - chunks[0].start, *self.weight.shape[1:])

    def input_grad(
        self, grad: Tensor, weight_mod: Callable[[Tensor], Tensor], input_shape: torch.Size
    ) -> Tensor:
        """:math:`W_{mod}^T g`: the gradient of the modified layer with respect to its input."""
        if self.ndim:
            return _CONV_INPUT_GRAD[self.ndim](
                input_shape,
                self.param(weight_mod),
                grad,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        chunks = self._chunks()
        if len(chunks) == 1:
            return grad.matmul(self.param(weight_mod))
        out = None
        buffer = self._chunk_buffer(chunks, weight_mod)
        for rows in chunks:
            part = grad[..., rows].matmul(self.param(weight_mod, rows, buffer))
            out = part if out is None else out.add_(part)
        return out

    def input_grads(
        self,
        grad: Tensor,
        parts: Sequence[tuple[Callable[[Tensor], Tensor], float]],
        input_shape: torch.Size,
    ) -> Tensor:
        """:math:`c_t W_t^T g` for every ``(modifier_t, c_t)`` in ``parts``, from one input
        gradient of the weights stacked along the input dimension (the output gradient is
        read once).

        Returns
        -------
        Tensor
            Shape ``(N, G, T, C/G, *spatial)`` for a convolution with ``G`` groups and
            ``(..., T, C)`` for a dense layer: term ``t`` is ``[:, :, t]`` / ``[..., t, :]``.
        """
        modifier = stacked(tuple(parts))
        count = len(parts)
        if self.ndim:
            n, channels, *spatial = input_shape
            out = self.input_grad(grad, modifier, torch.Size((n, count * channels, *spatial)))
            return out.view(n, self.groups, count, channels // self.groups, *spatial)
        *lead, features = input_shape
        out = self.input_grad(grad, modifier, torch.Size((*lead, count * features)))
        return out.view(*out.shape[:-1], count, features)
