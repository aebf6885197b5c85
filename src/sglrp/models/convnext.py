"""ConvNeXt-Tiny (Liu et al. 2022) with torchvision's exact module layout and ``state_dict`` keys.

``features.0`` is the 4x4 patchify stem (conv + :class:`LayerNorm2d`), ``features.1/3/5/7`` the
stages of :class:`CNBlock`, ``features.2/4/6`` the downsampling layers (LayerNorm2d + 2x2
conv); then ``avgpool`` and ``classifier`` (LayerNorm2d, Flatten, Linear).
torchvision itself is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Conv2dNormActivation, Permute, StochasticDepth

__all__ = ["CNBlock", "CNBlockConfig", "ConvNeXt", "LayerNorm2d", "convnext_tiny"]


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of an (N, C, H, W) map, at every position.

    ``y = (x - mean_c x) / sqrt(var_c x + eps) * weight + bias``; computed by permuting to
    channels-last and calling ``F.layer_norm`` (functional, inside this module).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W) over C."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: ``x + stochastic_depth(layer_scale * block(x))``.

    ``block`` = 7x7 depthwise conv -> Permute to channels-last -> ``nn.LayerNorm`` (eps 1e-6)
    -> Linear (4x) -> GELU -> Linear -> Permute back. ``layer_scale`` is a learnt per-channel
    parameter of shape (C, 1, 1).

    Parameters
    ----------
    dim : int
        Channels.
    layer_scale : float
        Initial value of ``layer_scale``.
    stochastic_depth_prob : float
        Drop probability of the residual branch in training.
    norm_layer : callable or None
        Normalisation factory for the channels-last norm, ``nn.LayerNorm(eps=1e-6)`` by default.
    """

    def __init__(
        self,
        dim: int,
        layer_scale: float,
        stochastic_depth_prob: float,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``input + stochastic_depth(layer_scale * block(input))``."""
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class CNBlockConfig(NamedTuple):
    """One stage: input channels, output channels of the following downsampling (or None), depth."""

    input_channels: int
    out_channels: int | None
    num_layers: int


_TINY: tuple[CNBlockConfig, ...] = (
    CNBlockConfig(96, 192, 3),
    CNBlockConfig(192, 384, 3),
    CNBlockConfig(384, 768, 9),
    CNBlockConfig(768, None, 3),
)


class ConvNeXt(nn.Module):
    """ConvNeXt: ``features`` -> ``avgpool`` -> ``classifier`` (LayerNorm2d, Flatten, Linear).

    Parameters
    ----------
    block_setting : sequence of CNBlockConfig
        The stages, in order.
    stochastic_depth_prob : float
        Largest drop probability; block ``i`` of ``n`` gets ``stochastic_depth_prob * i / (n-1)``.
    layer_scale : float
        Initial value of every block's ``layer_scale``.
    num_classes : int
        Number of output logits.
    norm_layer : callable or None
        Channels-first normalisation factory, ``LayerNorm2d(eps=1e-6)`` by default.
    """

    def __init__(
        self,
        block_setting: Sequence[CNBlockConfig],
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not block_setting:
            raise ValueError("block_setting must list at least one CNBlockConfig")
        if norm_layer is None:
            norm_layer = partial(LayerNorm2d, eps=1e-6)
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3,
                block_setting[0].input_channels,
                kernel_size=4,
                stride=4,
                padding=0,
                norm_layer=norm_layer,
                activation_layer=None,
                bias=True,
            )
        ]
        total_blocks = sum(cnf.num_layers for cnf in block_setting)
        block_id = 0
        for cnf in block_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                sd_prob = stochastic_depth_prob * block_id / (total_blocks - 1.0)
                stage.append(CNBlock(cnf.input_channels, layer_scale, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if cnf.out_channels is not None:
                layers.append(
                    nn.Sequential(
                        norm_layer(cnf.input_channels),
                        nn.Conv2d(cnf.input_channels, cnf.out_channels, kernel_size=2, stride=2),
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = block_setting[-1]
        last_channels = last.out_channels if last.out_channels is not None else last.input_channels
        self.classifier = nn.Sequential(
            norm_layer(last_channels), nn.Flatten(1), nn.Linear(last_channels, num_classes)
        )

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(x)


def convnext_tiny(num_classes: int = 1000, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-Tiny (stochastic depth 0.1); ``kwargs`` go to :class:`ConvNeXt`."""
    kwargs.setdefault("stochastic_depth_prob", 0.1)
    return ConvNeXt(_TINY, num_classes=num_classes, **kwargs)
