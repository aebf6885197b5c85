"""Building blocks shared by the torchvision-layout zoo models (torchvision's ``ops`` layers).

Each block has torchvision's class name, attribute names and forward, so ``state_dict`` keys
and module paths of the networks built from them equal torchvision's. torchvision itself is
never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "Conv2dNormActivation",
    "Permute",
    "SqueezeExcitation",
    "StochasticDepth",
    "make_divisible",
]

ModuleFactory = Callable[..., nn.Module]


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going more than 10% below ``v``.

    ``max(min_value, floor((v + divisor / 2) / divisor) * divisor)``, plus ``divisor`` when that
    is below ``0.9 v`` (the channel rounding of the MobileNet/EfficientNet papers).
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """``Conv2d`` -> optional norm -> optional activation, children numbered ``0``, ``1``, ``2``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size, stride, groups, dilation : int
        Convolution settings.
    padding : int or None
        ``(kernel_size - 1) // 2 * dilation`` ("same" at stride 1) when ``None``.
    norm_layer : callable or None
        Normalisation factory called with ``out_channels``; ``None`` for none.
    activation_layer : callable or None
        Activation factory; ``None`` for none.
    inplace : bool or None
        Passed to the activation as ``inplace=``; ``None`` passes nothing.
    bias : bool or None
        Convolution bias; by default only when there is no norm layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        norm_layer: ModuleFactory | None = nn.BatchNorm2d,
        activation_layer: ModuleFactory | None = nn.ReLU,
        dilation: int = 1,
        inplace: bool | None = True,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(**({} if inplace is None else {"inplace": inplace})))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation gate (Hu et al. 2018, eq. 3): ``x * sigma(fc2(delta(fc1(avg x))))``.

    The returned ``scale * input`` is a product of two activations (the gate depends on the
    input), computed in :meth:`forward` with ``*``, not by a module.

    Parameters
    ----------
    input_channels : int
        Channels of the gated feature map.
    squeeze_channels : int
        Width of the bottleneck (``fc1`` output).
    activation : callable
        ``delta``, called without arguments (``nn.ReLU`` by default).
    scale_activation : callable
        ``sigma``, called without arguments (``nn.Sigmoid`` by default).
    """

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: ModuleFactory = nn.ReLU,
        scale_activation: ModuleFactory = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``scale(input) * input`` with one gate value per sample and channel."""
        scale = self._scale(input)
        return scale * input


class StochasticDepth(nn.Module):
    """Randomly drop a residual branch in training (Huang et al. 2016); identity in eval.

    In training each row (``mode="row"``) or the whole batch (``mode="batch"``) is zeroed
    with probability ``p`` and the survivors are divided by ``1 - p``.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1].
    mode : {"row", "batch"}
        Drop per sample or for the whole batch.
    """

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability p must be in [0, 1], got {p}")
        if mode not in ("batch", "row"):
            raise ValueError(f"mode must be 'batch' or 'row', got {mode!r}")
        self.p = p
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``input`` in eval mode (or when ``p == 0``), else the randomly dropped input."""
        if not self.training or self.p == 0.0:
            return input
        survival = 1.0 - self.p
        size = [input.shape[0]] + [1] * (input.ndim - 1) if self.mode == "row" else [1] * input.ndim
        noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return input * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class Permute(nn.Module):
    """Return a permuted view of the input (``torch.permute(x, dims)``).

    Parameters
    ----------
    dims : sequence of int
        The new order of the dimensions.
    """

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x.permute(dims)``."""
        return torch.permute(x, self.dims)
