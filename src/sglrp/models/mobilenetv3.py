"""MobileNetV3-Small (Howard et al. 2019) with torchvision's exact module layout and keys.

``features.0`` is the stem (conv-BN-Hardswish), ``features.1`` ... ``features.11`` the
inverted residual blocks, ``features.12`` the 1x1 head convolution; then ``avgpool`` and
``classifier`` (Linear, Hardswish, Dropout, Linear). All batch norms use ``eps=0.001``.
torchvision itself is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn

from .blocks import Conv2dNormActivation, SqueezeExcitation, make_divisible

__all__ = ["InvertedResidual", "InvertedResidualConfig", "MobileNetV3", "mobilenet_v3_small"]


class InvertedResidualConfig(NamedTuple):
    """One block (a row of Table 2 of the MobileNetV3 paper)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool  # Hardswish instead of ReLU
    stride: int
    dilation: int = 1


# MobileNetV3-Small, width multiplier 1.0
_SMALL: tuple[InvertedResidualConfig, ...] = (
    InvertedResidualConfig(16, 3, 16, 16, True, False, 2),
    InvertedResidualConfig(16, 3, 72, 24, False, False, 2),
    InvertedResidualConfig(24, 3, 88, 24, False, False, 1),
    InvertedResidualConfig(24, 5, 96, 40, True, True, 2),
    InvertedResidualConfig(40, 5, 240, 40, True, True, 1),
    InvertedResidualConfig(40, 5, 240, 40, True, True, 1),
    InvertedResidualConfig(40, 5, 120, 48, True, True, 1),
    InvertedResidualConfig(48, 5, 144, 48, True, True, 1),
    InvertedResidualConfig(48, 5, 288, 96, True, True, 2),
    InvertedResidualConfig(96, 5, 576, 96, True, True, 1),
    InvertedResidualConfig(96, 5, 576, 96, True, True, 1),
)
_SMALL_LAST_CHANNEL = 1024


class InvertedResidual(nn.Module):
    """[1x1 expand] -> kxk depthwise -> [SE (ReLU, Hardsigmoid)] -> 1x1 project (no activation).

    Activations are ``Hardswish`` or ``ReLU`` (``cnf.use_hs``); with stride 1 and equal widths
    the output is ``block(x) + x``.

    Parameters
    ----------
    cnf : InvertedResidualConfig
        Block settings.
    norm_layer : callable
        Normalisation factory.
    """

    def __init__(self, cnf: InvertedResidualConfig, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {cnf.stride}")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                Conv2dNormActivation(
                    cnf.input_channels,
                    cnf.expanded_channels,
                    kernel_size=1,
                    norm_layer=norm_layer,
                    activation_layer=activation,
                )
            )
        layers.append(
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                kernel_size=cnf.kernel,
                stride=1 if cnf.dilation > 1 else cnf.stride,
                dilation=cnf.dilation,
                groups=cnf.expanded_channels,
                norm_layer=norm_layer,
                activation_layer=activation,
            )
        )
        if cnf.use_se:
            squeeze = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(
                SqueezeExcitation(cnf.expanded_channels, squeeze, scale_activation=nn.Hardsigmoid)
            )
        layers.append(
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.out_channels,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        )
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels
        self._is_cn = cnf.stride > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``block(x)``, plus ``x`` on residual blocks."""
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class MobileNetV3(nn.Module):
    """MobileNetV3: ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

    Parameters
    ----------
    inverted_residual_setting : sequence of InvertedResidualConfig
        The blocks, in order.
    last_channel : int
        Width of the hidden classifier layer.
    num_classes : int
        Number of output logits.
    norm_layer : callable or None
        Normalisation factory, ``BatchNorm2d(eps=0.001, momentum=0.01)`` by default.
    dropout : float
        Dropout probability before the final linear layer.
    """

    def __init__(
        self,
        inverted_residual_setting: Sequence[InvertedResidualConfig],
        last_channel: int,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("inverted_residual_setting must list at least one block")
        if norm_layer is None:
            norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3,
                inverted_residual_setting[0].input_channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        ]
        layers += [InvertedResidual(cnf, norm_layer) for cnf in inverted_residual_setting]
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(
            Conv2dNormActivation(
                last_in,
                last_out,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
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
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v3_small(num_classes: int = 1000, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small (width 1.0); ``kwargs`` go to :class:`MobileNetV3`."""
    return MobileNetV3(_SMALL, _SMALL_LAST_CHANNEL, num_classes=num_classes, **kwargs)
