"""DenseNet-BC with torchvision's exact module layout and ``state_dict`` keys.

torchvision itself is never imported. :func:`remap_legacy_keys` converts the old key style
(``denselayer1.norm.1.weight``) still found in torchvision's downloadable ImageNet files.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

__all__ = ["DenseNet", "densenet121", "remap_legacy_keys"]

_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)

V = TypeVar("V")


def remap_legacy_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename old-style dense-layer keys (``...norm.1.weight`` -> ``...norm1.weight``).

    Parameters
    ----------
    state_dict : mapping
        A DenseNet ``state_dict``, old or new style.

    Returns
    -------
    dict
        A new dict with the same values in the same order; new-style keys are unchanged.
    """
    out: dict[str, V] = {}
    for key, value in state_dict.items():
        match = _LEGACY_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 producing ``growth_rate`` new channels."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
        )
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate all previous feature maps and apply norm1-relu1-conv1."""
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, input: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Return the new feature maps computed from ``input`` (a tensor or list of tensors)."""
        prev_features = [input] if isinstance(input, torch.Tensor) else list(input)
        if self.memory_efficient and any(t.requires_grad for t in prev_features):
            bottleneck_output = cp.checkpoint(
                lambda *ts: self.bn_function(list(ts)), *prev_features, use_reentrant=False
            )
        else:
            bottleneck_output = self.bn_function(prev_features)
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each seeing the concatenation of all earlier outputs."""

    _version = 2

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        """Return the input concatenated with every layer's new features."""
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1-AvgPool2x2 between dense blocks."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            num_input_features, num_output_features, kernel_size=1, stride=1, bias=False
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """DenseNet-BC: ``features`` -> ReLU -> global average pool -> ``classifier``.

    Parameters
    ----------
    growth_rate : int
        Channels added by each dense layer (``k`` in the paper).
    block_config : sequence of int
        Number of dense layers per block.
    num_init_features : int
        Channels of the first convolution.
    bn_size : int
        Bottleneck width multiplier (``bn_size * growth_rate`` channels).
    drop_rate : float
        Dropout after each dense layer.
    num_classes : int
        Number of output logits.
    memory_efficient : bool
        Recompute the concatenations in backward (gradient checkpointing).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0,
        num_classes: int = 1000,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(
                            3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False
                        ),
                    ),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )

        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(
                num_layers=num_layers,
                num_input_features=num_features,
                bn_size=bn_size,
                growth_rate=growth_rate,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_features, num_features // 2)
                self.features.add_module(f"transition{i + 1}", trans)
                num_features = num_features // 2

        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def densenet121(num_classes: int = 1000, **kwargs: Any) -> DenseNet:
    """DenseNet-121 (growth 32, blocks (6, 12, 24, 16), 64 stem channels).

    ``kwargs`` go to :class:`DenseNet` (``drop_rate``, ``memory_efficient``, ...).
    """
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, **kwargs)
