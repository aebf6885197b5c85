"""ShuffleNetV2 x1.0 (Ma et al. 2018) with torchvision's exact module layout and keys.

``conv1`` (3x3 conv-BN-ReLU, stride 2) -> ``maxpool`` -> ``stage2`` ... ``stage4`` (of
:class:`InvertedResidual`) -> ``conv5`` (1x1 conv-BN-ReLU) -> global mean (``x.mean([2, 3])``,
functional) -> ``fc``. Channel split (``chunk``), concatenation (``torch.cat``) and the
channel shuffle (:func:`channel_shuffle`, a view/transpose) are functional, in
:meth:`InvertedResidual.forward`. torchvision itself is never imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["InvertedResidual", "ShuffleNetV2", "channel_shuffle", "shufflenet_v2_x1_0"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: channel ``g * (C / groups) + i`` -> ``i *
    groups + g`` (a permutation of the channels; Zhang et al. 2018)."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


def _depthwise_conv(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit.

    Stride 1: split the channels in halves ``x1, x2`` and return
    ``shuffle(cat(x1, branch2(x2)))``. Stride > 1: return
    ``shuffle(cat(branch1(x), branch2(x)))``. ``branch1`` = depthwise 3x3-BN-1x1-BN-ReLU,
    ``branch2`` = 1x1-BN-ReLU-depthwise 3x3-BN-1x1-BN-ReLU.

    Parameters
    ----------
    inp, oup : int
        Input and output channels.
    stride : int
        1, 2 or 3.
    """

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError(f"stride must be 1, 2 or 3, got {stride}")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(
                f"with stride 1 the input channels ({inp}) must equal 2 * (oup // 2) "
                f"= {branch_features << 1}"
            )
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise_conv(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(
                inp if stride > 1 else branch_features,
                branch_features,
                kernel_size=1,
                stride=1,
                padding=0,
                bias=False,
            ),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            _depthwise_conv(branch_features, stride),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the shuffled concatenation of the two branches (see the class docstring)."""
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2: ``conv1`` -> ``maxpool`` -> ``stage2..4`` -> ``conv5`` -> mean -> ``fc``.

    Parameters
    ----------
    stages_repeats : sequence of 3 ints
        Units per stage.
    stages_out_channels : sequence of 5 ints
        Channels of ``conv1``, the three stages and ``conv5``.
    num_classes : int
        Number of output logits.
    """

    def __init__(
        self,
        stages_repeats: Sequence[int],
        stages_out_channels: Sequence[int],
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError(f"stages_repeats must hold 3 positive ints, got {stages_repeats}")
        if len(stages_out_channels) != 5:
            raise ValueError(
                f"stages_out_channels must hold 5 positive ints, got {stages_out_channels}"
            )
        self._stage_out_channels = list(stages_out_channels)
        out = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, out, 3, 2, 1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        )
        inp = out
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage2: nn.Sequential
        self.stage3: nn.Sequential
        self.stage4: nn.Sequential
        for name, repeats, out in zip(
            ("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:4], strict=True
        ):
            units = [InvertedResidual(inp, out, 2)]
            units += [InvertedResidual(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            inp = out
        out = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(inp, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])
        return self.fc(x)


def shufflenet_v2_x1_0(num_classes: int = 1000, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 with 1.0x widths (repeats 4, 8, 4; channels 24, 116, 232, 464, 1024)."""
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes=num_classes, **kwargs)
