"""EfficientNet-B0 (Tan & Le 2019) with torchvision's exact module layout and ``state_dict`` keys.

``features.0`` is the stem, ``features.1`` ... ``features.7`` the MBConv stages (each an
``nn.Sequential`` of :class:`MBConv`), ``features.8`` the 1x1 head convolution; then
``avgpool`` and ``classifier`` (Dropout, Linear). torchvision itself is never imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn

from .blocks import Conv2dNormActivation, SqueezeExcitation, StochasticDepth, make_divisible

__all__ = ["EfficientNet", "MBConv", "MBConvConfig", "efficientnet_b0"]


class MBConvConfig(NamedTuple):
    """One stage of MBConv blocks (a row of Table 1 of the EfficientNet paper)."""

    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int


# EfficientNet-B0 (width and depth multiplier 1.0)
_B0: tuple[MBConvConfig, ...] = (
    MBConvConfig(1, 3, 1, 32, 16, 1),
    MBConvConfig(6, 3, 2, 16, 24, 2),
    MBConvConfig(6, 5, 2, 24, 40, 2),
    MBConvConfig(6, 3, 2, 40, 80, 3),
    MBConvConfig(6, 5, 1, 80, 112, 3),
    MBConvConfig(6, 5, 2, 112, 192, 4),
    MBConvConfig(6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation and SiLU activations.

    ``block`` = [1x1 expand conv-BN-SiLU] -> kxk depthwise conv-BN-SiLU -> SE (SiLU, sigmoid)
    -> 1x1 project conv-BN; with stride 1 and equal widths the output is
    ``stochastic_depth(block(x)) + x``.

    Parameters
    ----------
    input_channels, out_channels : int
        Channel counts.
    expand_ratio : float
        Width of the expanded representation relative to ``input_channels``.
    kernel, stride : int
        Depthwise convolution settings.
    stochastic_depth_prob : float
        Drop probability of the residual branch in training.
    norm_layer : callable
        Normalisation factory.
    """

    def __init__(
        self,
        input_channels: int,
        out_channels: int,
        expand_ratio: float,
        kernel: int,
        stride: int,
        stochastic_depth_prob: float,
        norm_layer: Callable[..., nn.Module],
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and input_channels == out_channels
        expanded = make_divisible(input_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != input_channels:
            layers.append(
                Conv2dNormActivation(
                    input_channels,
                    expanded,
                    kernel_size=1,
                    norm_layer=norm_layer,
                    activation_layer=nn.SiLU,
                )
            )
        layers.append(
            Conv2dNormActivation(
                expanded,
                expanded,
                kernel_size=kernel,
                stride=stride,
                groups=expanded,
                norm_layer=norm_layer,
                activation_layer=nn.SiLU,
            )
        )
        squeeze = max(1, input_channels // 4)
        layers.append(
            SqueezeExcitation(expanded, squeeze, activation=partial(nn.SiLU, inplace=True))
        )
        layers.append(
            Conv2dNormActivation(
                expanded, out_channels, kernel_size=1, norm_layer=norm_layer, activation_layer=None
            )
        )
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = out_channels

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``block(x)``, plus ``x`` (after stochastic depth) on residual blocks."""
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class EfficientNet(nn.Module):
    """EfficientNet: ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

    Parameters
    ----------
    stages : sequence of MBConvConfig
        The MBConv stages, in order.
    dropout : float
        Dropout probability before the final linear layer.
    stochastic_depth_prob : float
        Largest drop probability; block ``i`` of ``n`` gets ``stochastic_depth_prob * i / n``.
    num_classes : int
        Number of output logits.
    norm_layer : callable or None
        Normalisation factory, ``nn.BatchNorm2d`` by default.
    last_channel : int or None
        Width of the head convolution, ``4 * stages[-1].out_channels`` by default.
    """

    def __init__(
        self,
        stages: Sequence[MBConvConfig],
        dropout: float,
        stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
        last_channel: int | None = None,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("stages must list at least one MBConvConfig")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3,
                stages[0].input_channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm_layer,
                activation_layer=nn.SiLU,
            )
        ]
        total_blocks = sum(cfg.num_layers for cfg in stages)
        block_id = 0
        for cfg in stages:
            stage: list[nn.Module] = []
            for i in range(cfg.num_layers):
                stage.append(
                    MBConv(
                        cfg.input_channels if i == 0 else cfg.out_channels,
                        cfg.out_channels,
                        cfg.expand_ratio,
                        cfg.kernel,
                        cfg.stride if i == 0 else 1,
                        stochastic_depth_prob * float(block_id) / total_blocks,
                        norm_layer,
                    )
                )
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = stages[-1].out_channels
        last_out = last_channel if last_channel is not None else 4 * last_in
        layers.append(
            Conv2dNormActivation(
                last_in, last_out, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.SiLU
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_out, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def efficientnet_b0(num_classes: int = 1000, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0 (dropout 0.2); ``kwargs`` go to :class:`EfficientNet`."""
    return EfficientNet(_B0, kwargs.pop("dropout", 0.2), num_classes=num_classes, **kwargs)
