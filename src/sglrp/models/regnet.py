"""RegNetY-400MF (Radosavovic et al. 2020) with torchvision's exact module layout and keys.

``stem`` (3x3 conv-BN-ReLU, stride 2) -> ``trunk_output.block1`` ... ``block4`` (stages of
:class:`ResBottleneckBlock` named ``block{stage}-{i}``) -> ``avgpool`` -> ``fc``. Each block is
``relu(proj(x) + f(x))`` with ``f`` = 1x1 ``a`` -> grouped 3x3 ``b`` -> ``se`` -> 1x1 ``c``.
torchvision itself is never imported.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn

from .blocks import Conv2dNormActivation, SqueezeExcitation, make_divisible

__all__ = [
    "AnyStage",
    "BottleneckTransform",
    "RegNet",
    "ResBottleneckBlock",
    "SimpleStemIN",
    "StageParams",
    "regnet_stages",
    "regnet_y_400mf",
]

ModuleFactory = Callable[..., nn.Module]


class StageParams(NamedTuple):
    """One RegNet stage: output width, number of blocks, stride, group width, bottleneck ratio."""

    width: int
    depth: int
    stride: int
    group_width: int
    bottleneck_multiplier: float


def regnet_stages(
    depth: int,
    w_0: int,
    w_a: float,
    w_m: float,
    group_width: int,
    bottleneck_multiplier: float = 1.0,
) -> list[StageParams]:
    """Per-stage settings of a RegNet from its quantised linear width rule (paper, Sec. 3.3).

    Block ``j`` gets width ``u_j = w_0 + w_a j``, quantised in log space to
    ``w_0 w_m^round(log(u_j / w_0) / log w_m)`` and rounded to a multiple of 8; consecutive
    blocks of equal width form a stage (stride 2). Widths are then made compatible with the
    group width as torchvision does. Computed in float32 like torchvision, so rounding ties
    fall the same way.
    """
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
        raise ValueError(
            f"invalid RegNet settings w_0={w_0}, w_a={w_a}, w_m={w_m}: need w_a >= 0, "
            "w_0 > 0 and a multiple of 8, w_m > 1"
        )
    # explicit CPU: these are settings, not weights (the caller may build on the meta device)
    widths_cont = torch.arange(depth, device="cpu") * w_a + w_0
    capacity = torch.round(torch.log(widths_cont / w_0) / math.log(w_m))
    block_widths = (torch.round(torch.divide(w_0 * torch.pow(w_m, capacity), 8)) * 8).int()
    stages: list[list[int]] = []  # [width, depth]
    for w in block_widths.tolist():
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    out = []
    for w, d in stages:
        w_bot = int(w * bottleneck_multiplier)
        g = min(group_width, w_bot)
        w_bot = make_divisible(w_bot, g)
        out.append(StageParams(int(w_bot / bottleneck_multiplier), d, 2, g, bottleneck_multiplier))
    return out


class SimpleStemIN(Conv2dNormActivation):
    """ImageNet stem: 3x3 convolution with stride 2, norm, activation."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        norm_layer: ModuleFactory,
        activation_layer: ModuleFactory,
    ) -> None:
        super().__init__(
            width_in,
            width_out,
            kernel_size=3,
            stride=2,
            norm_layer=norm_layer,
            activation_layer=activation_layer,
        )


class BottleneckTransform(nn.Sequential):
    """``a`` (1x1) -> ``b`` (grouped 3x3, strided) -> [``se``] -> ``c`` (1x1, no activation).

    The SE bottleneck width is ``round(se_ratio * width_in)`` (relative to the block input).
    """

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        norm_layer: ModuleFactory,
        activation_layer: ModuleFactory,
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float | None,
    ) -> None:
        w_b = int(round(width_out * bottleneck_multiplier))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = Conv2dNormActivation(
            width_in, w_b, kernel_size=1, norm_layer=norm_layer, activation_layer=activation_layer
        )
        layers["b"] = Conv2dNormActivation(
            w_b,
            w_b,
            kernel_size=3,
            stride=stride,
            groups=w_b // group_width,
            norm_layer=norm_layer,
            activation_layer=activation_layer,
        )
        if se_ratio:
            layers["se"] = SqueezeExcitation(
                w_b, int(round(se_ratio * width_in)), activation=activation_layer
            )
        layers["c"] = Conv2dNormActivation(
            w_b, width_out, kernel_size=1, norm_layer=norm_layer, activation_layer=None
        )
        super().__init__(layers)


class ResBottleneckBlock(nn.Module):
    """Residual bottleneck block: ``activation(proj(x) + f(x))`` (``proj`` only if shapes change).

    Parameters
    ----------
    width_in, width_out : int
        Input and output channels.
    stride : int
        Stride of ``f.b`` and ``proj``.
    norm_layer, activation_layer : callable
        Normalisation and activation factories.
    group_width : int
        Channels per group of the 3x3 convolution.
    bottleneck_multiplier : float
        Bottleneck width relative to ``width_out``.
    se_ratio : float or None
        Squeeze-and-excitation ratio; ``None`` for no SE (RegNetX).
    """

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        norm_layer: ModuleFactory,
        activation_layer: ModuleFactory,
        group_width: int = 1,
        bottleneck_multiplier: float = 1.0,
        se_ratio: float | None = None,
    ) -> None:
        super().__init__()
        self.proj: nn.Module | None = None
        if width_in != width_out or stride != 1:
            self.proj = Conv2dNormActivation(
                width_in,
                width_out,
                kernel_size=1,
                stride=stride,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        self.f = BottleneckTransform(
            width_in,
            width_out,
            stride,
            norm_layer,
            activation_layer,
            group_width,
            bottleneck_multiplier,
            se_ratio,
        )
        self.activation = activation_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``activation(proj(x) + f(x))``, or ``activation(x + f(x))`` without ``proj``."""
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class AnyStage(nn.Sequential):
    """``depth`` blocks of equal output width, children named ``block{stage_index}-{i}``."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        depth: int,
        block_constructor: Callable[..., nn.Module],
        norm_layer: ModuleFactory,
        activation_layer: ModuleFactory,
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float | None = None,
        stage_index: int = 0,
    ) -> None:
        super().__init__()
        for i in range(depth):
            block = block_constructor(
                width_in if i == 0 else width_out,
                width_out,
                stride if i == 0 else 1,
                norm_layer,
                activation_layer,
                group_width,
                bottleneck_multiplier,
                se_ratio,
            )
            self.add_module(f"block{stage_index}-{i}", block)


class RegNet(nn.Module):
    """RegNet: ``stem`` -> ``trunk_output`` -> ``avgpool`` -> flatten -> ``fc``.

    Parameters
    ----------
    stages : sequence of StageParams
        The stages, in order (see :func:`regnet_stages`).
    num_classes : int
        Number of output logits.
    stem_width : int
        Channels of the stem.
    se_ratio : float or None
        Squeeze-and-excitation ratio of every block (RegNetY: 0.25).
    norm_layer : callable or None
        Normalisation factory, ``nn.BatchNorm2d`` by default.
    activation : callable or None
        Activation factory, ``nn.ReLU`` by default.
    """

    def __init__(
        self,
        stages: Sequence[StageParams],
        num_classes: int = 1000,
        stem_width: int = 32,
        se_ratio: float | None = None,
        norm_layer: ModuleFactory | None = None,
        activation: ModuleFactory | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if activation is None:
            activation = nn.ReLU
        self.stem = SimpleStemIN(3, stem_width, norm_layer, activation)
        current = stem_width
        blocks = []
        for i, st in enumerate(stages):
            blocks.append(
                (
                    f"block{i + 1}",
                    AnyStage(
                        current,
                        st.width,
                        st.stride,
                        st.depth,
                        ResBottleneckBlock,
                        norm_layer,
                        activation,
                        st.group_width,
                        st.bottleneck_multiplier,
                        se_ratio,
                        stage_index=i + 1,
                    ),
                )
            )
            current = st.width
        self.trunk_output = nn.Sequential(OrderedDict(blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_features=current, out_features=num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        return self.fc(x)


def regnet_y_400mf(num_classes: int = 1000, **kwargs: Any) -> RegNet:
    """RegNetY-400MF (depth 16, w_0 48, w_a 27.89, w_m 2.09, group width 8, SE 0.25).

    ``kwargs`` go to :class:`RegNet` (``norm_layer``, ``activation``, ...).
    """
    stages = regnet_stages(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8)
    kwargs.setdefault("norm_layer", partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1))
    return RegNet(stages, num_classes=num_classes, se_ratio=0.25, **kwargs)
