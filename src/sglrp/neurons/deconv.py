"""DeconvNet reconstruction (Zeiler & Fergus 2014) for VGG-style networks.

A neuron's feature map is projected back to pixel space through the layers below it, each
replaced by its approximate inverse:

* max pooling -> unpooling: each value goes back to the position that won the max in the
  forward pass (the recorded *switches*, i.e. the pooling indices);
* ReLU -> ReLU applied to the reconstructed signal;
* convolution -> transposed convolution with the same filters, no bias:
  :math:`\\hat x_{i} = \\sum_{o} W_{o,i} \\star^{T} \\hat y_{o}`;
* BatchNorm (eval) -> its linear part, :math:`\\hat x = \\hat y\\, \\gamma / \\sigma`;
* average pooling -> its transpose (each value spread evenly over its window);
* dropout / identity -> unchanged.

Only the chosen channel is kept at the start (all other channels zero); with ``mode="max"``
only its strongest activation, as in Zeiler & Fergus' figures. The network part below the
layer must be a plain ``nn.Sequential`` fed with the model input (``model.features`` of VGG).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._guard import preserved
from ..validation import check_input, check_model

__all__ = ["deconvnet", "deconvnet_display", "feature_chain"]

_RELU = (nn.ReLU, nn.ReLU6)
_PASS = (nn.Dropout, nn.Dropout2d, nn.Identity)
_AVG = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class _StopForward(Exception):
    """Raised in a hook to end a probing forward pass early."""


def feature_chain(
    model: nn.Module, layer: str, rectified: bool = True
) -> tuple[nn.Sequential, int]:
    """The ``nn.Sequential`` holding ``layer`` and the index of the module whose output is used.

    With ``rectified`` a conv layer's map is taken after the BatchNorm / ReLU that follow it
    (the rectified feature map Zeiler & Fergus project), so the returned index may lie past
    the layer's own.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"unknown layer {layer!r}; conv layers: {', '.join(names[:30])}")
    parent_name, _, child = layer.rpartition(".")
    parent = modules.get(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential) or not child.isdigit():
        raise ValueError(
            f"layer {layer!r} is not a direct child of an nn.Sequential; DeconvNet needs a "
            "VGG-style plain sequence of layers (such as model.features)"
        )
    index = int(child)
    module = parent[index]
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, *_RELU)):
        raise ValueError(
            f"layer {layer!r} is a {type(module).__name__}; reconstruct a Conv2d, its ReLU, a "
            "BatchNorm2d or a MaxPool2d layer"
        )
    if rectified and isinstance(module, nn.Conv2d | nn.BatchNorm2d):
        while index + 1 < len(parent) and isinstance(parent[index + 1], (nn.BatchNorm2d, *_RELU)):
            index += 1
    return parent, index


def _check_fed_by_input(model: nn.Module, chain: nn.Sequential, x: Tensor) -> None:
    seen: list[Tensor] = []

    def pre_hook(module: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _StopForward

    with preserved(model) as hooks, torch.no_grad():
        hooks.add(chain.register_forward_pre_hook(pre_hook))
        with contextlib.suppress(_StopForward):
            model(x)
    if not seen or seen[0].shape != x.shape or not torch.equal(seen[0], x):
        raise ValueError(
            "the nn.Sequential holding the layer does not receive the model input unchanged; "
            "DeconvNet supports VGG-style models whose features block comes first"
        )


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv padding_mode {conv.padding_mode!r} is not supported; use zeros")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even kernel is not supported; pad explicitly")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


def _conv_transpose(conv: nn.Conv2d, signal: Tensor, in_shape: torch.Size) -> Tensor:
    """Transposed convolution with ``conv``'s filters, output of the forward input's size."""
    padding = _conv_padding(conv)
    out_hw = []
    for dim in range(2):
        size = (
            (signal.shape[2 + dim] - 1) * conv.stride[dim]
            - 2 * padding[dim]
            + conv.dilation[dim] * (conv.kernel_size[dim] - 1)
            + 1
        )
        out_hw.append(in_shape[2 + dim] - size)
    return F.conv_transpose2d(
        signal,
        conv.weight,
        None,
        stride=conv.stride,
        padding=padding,
        output_padding=tuple(out_hw),
        groups=conv.groups,
        dilation=conv.dilation,
    )


def _unpool(signal: Tensor, indices: Tensor, in_shape: torch.Size) -> Tensor:
    """Put every pooled value back at its switch position (values of shared winners add)."""
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, in_shape[2] * in_shape[3])
    out.scatter_add_(2, indices.flatten(2), signal.flatten(2))
    return out.view(n, c, in_shape[2], in_shape[3])


def deconvnet(
    model: nn.Module,
    x: Tensor,
    layer: str,
    channel: int | Sequence[int] | Tensor,
    *,
    mode: str = "map",
    rectified: bool = True,
) -> Tensor:
    """Project feature maps of ``layer`` back to pixel space (Zeiler & Fergus DeconvNet).

    Parameters
    ----------
    model, x
        VGG-style classifier (the layer must sit in a ``nn.Sequential`` fed with the input)
        and an (N, C, H, W) input batch. The model is left unchanged.
    layer
        Conv2d, ReLU, BatchNorm2d or MaxPool2d module name, e.g. ``"features.10"``.
    channel
        One channel (int), K channels (sequence; the same for every image) or an (N,) tensor
        of one channel per image.
    mode
        ``"map"``: project the channel's whole feature map; ``"max"``: only its largest
        activation.
    rectified
        For a conv layer, start from its rectified map (after the following BatchNorm / ReLU).

    Returns
    -------
    torch.Tensor
        (N, C, H, W) for an int or per-image channels, (N, K, C, H, W) for K channels.
    """
    check_model(model)
    check_input(x)
    if mode not in ("map", "max"):
        raise ValueError(f"mode must be 'map' or 'max', got {mode!r}")
    chain, stop = feature_chain(model, layer, rectified)
    _check_fed_by_input(model, chain, x)
    n = x.shape[0]
    with preserved(model), torch.no_grad():
        records: list[object] = []
        h = x
        for module in list(chain)[: stop + 1]:
            if isinstance(module, nn.MaxPool2d):
                out, idx = F.max_pool2d(
                    h,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    module.ceil_mode,
                    return_indices=True,
                )
                records.append((idx, h.shape))
                h = out
            elif isinstance(module, (nn.Conv2d, *_AVG)):
                records.append(h.shape)
                h = module(h)
            elif isinstance(module, nn.BatchNorm2d):
                if module.training or module.running_var is None:
                    raise ValueError("BatchNorm2d layers must use running statistics (eval mode)")
                scale = torch.rsqrt(module.running_var + module.eps)
                if module.weight is not None:
                    scale = scale * module.weight
                records.append(scale)
                h = module(h)
            elif isinstance(module, _RELU + _PASS):
                records.append(None)
                h = F.relu(h) if isinstance(module, nn.ReLU) else module(h)
            else:
                raise ValueError(
                    f"DeconvNet cannot invert a {type(module).__name__} layer; supported: "
                    "Conv2d, ReLU, MaxPool2d, BatchNorm2d, AvgPool2d, Dropout"
                )
        fmap = h
        channels, single = _channels(channel, n, fmap.shape[1])
        k = channels.shape[1]
        signal = fmap.repeat_interleave(k, dim=0)
        flat_channels = channels.reshape(-1)
        keep = torch.zeros_like(signal)
        rows = torch.arange(signal.shape[0])
        keep[rows, flat_channels] = 1.0
        signal = signal * keep
        if mode == "max":
            picked = signal[rows, flat_channels].flatten(1)
            top = picked.argmax(dim=1)
            only = torch.zeros_like(picked).scatter_(1, top[:, None], 1.0)
            signal = signal * only.view(-1, 1, *signal.shape[2:])
        for module, rec in zip(reversed(list(chain)[: stop + 1]), reversed(records), strict=True):
            if isinstance(module, nn.MaxPool2d):
                idx, shape = rec
                signal = _unpool(signal, idx.repeat_interleave(k, dim=0), shape)
            elif isinstance(module, nn.Conv2d):
                signal = _conv_transpose(module, signal, rec)
            elif isinstance(module, _AVG):
                signal = _avg_transpose(module, signal, rec)
            elif isinstance(module, nn.BatchNorm2d):
                signal = signal * rec.view(1, -1, 1, 1)
            elif isinstance(module, _RELU):
                signal = F.relu(signal)
    out = signal.view(n, k, *signal.shape[1:])
    return out[:, 0] if single else out


def _avg_transpose(module: nn.Module, signal: Tensor, in_shape: torch.Size) -> Tensor:
    with torch.enable_grad():
        probe = torch.zeros(
            (signal.shape[0], *in_shape[1:]), dtype=signal.dtype, device=signal.device
        ).requires_grad_(True)
        (grad,) = torch.autograd.grad(module(probe), probe, signal)
    return grad


def _channels(channel: int | Sequence[int] | Tensor, n: int, width: int) -> tuple[Tensor, bool]:
    """(N, K) channel indices and whether a single channel per image was asked for."""
    if isinstance(channel, Tensor) and channel.ndim == 1 and channel.shape[0] == n:
        out, single = channel.long()[:, None], True
    elif isinstance(channel, int) and not isinstance(channel, bool):
        out, single = torch.full((n, 1), channel, dtype=torch.long), True
    else:
        values = torch.as_tensor(list(channel) if not isinstance(channel, Tensor) else channel)
        if values.ndim != 1 or values.numel() == 0 or values.is_floating_point():
            raise ValueError(
                f"channel must be an int, a non-empty sequence of ints or an (N,) tensor, got "
                f"{channel!r}"
            )
        out, single = values.long()[None].expand(n, -1), False
    if int(out.min()) < 0 or int(out.max()) >= width:
        raise ValueError(f"channel {out.tolist()} out of range for a layer with {width} channels")
    return out, single


def deconvnet_display(reconstruction: Tensor, percentile: float = 99.5) -> np.ndarray:
    """Reconstructions as RGB images in [0, 1]: grey is zero, :math:`0.5 + r / (2 s)`.

    ``s`` is the ``percentile`` of :math:`|r|` over each image (100: its maximum); values
    beyond it saturate, so that a few extreme pixels do not leave the rest flat grey.
    ``reconstruction`` (..., C, H, W) gives (..., H, W, 3); each image uses its own scale.
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    r = reconstruction.detach().cpu().double()
    if r.ndim < 3:
        raise ValueError(f"reconstruction must be (..., C, H, W), got {tuple(r.shape)}")
    scale = torch.quantile(r.flatten(-3).abs(), float(percentile) / 100.0, dim=-1)
    scale = scale[..., None, None, None]
    shown = torch.where(scale > 0, 0.5 + r / (2 * scale.clamp(min=1e-300)), 0.5)
    if shown.shape[-3] == 1:
        shown = shown.expand(*shown.shape[:-3], 3, *shown.shape[-2:])
    return shown.movedim(-3, -1).clamp(0, 1).numpy()
