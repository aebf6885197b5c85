"""A small Inception-style classifier for low-resolution images (32x32 and up).

Each Inception block runs four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3;
3x3 max-pool -> 1x1) and concatenates them along the channel axis with ``torch.cat``.
Every convolution is followed by BatchNorm and ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBNReLU", "InceptionBlock", "InceptionSmall", "inception_small"]


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias) -> ``BatchNorm2d`` -> ``ReLU`` (children ``conv``, ``bn``, ``relu``).

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int
        Square kernel size; padding keeps the spatial size at stride 1.
    stride : int
        Convolution stride.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels.

    Parameters
    ----------
    in_channels : int
        Input channels.
    ch1x1 : int
        Output channels of the 1x1 branch.
    ch3x3_reduce, ch3x3 : int
        Reduction and output channels of the 1x1 -> 3x3 branch.
    ch3x3dbl_reduce, ch3x3dbl : int
        Reduction and output channels of the 1x1 -> 3x3 -> 3x3 branch.
    pool_proj : int
        Output channels of the max-pool -> 1x1 branch.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch3x3dbl_reduce: int,
        ch3x3dbl: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_channels, ch1x1, 1)
        self.branch3x3 = nn.Sequential(
            ConvBNReLU(in_channels, ch3x3_reduce, 1),
            ConvBNReLU(ch3x3_reduce, ch3x3, 3),
        )
        self.branch3x3dbl = nn.Sequential(
            ConvBNReLU(in_channels, ch3x3dbl_reduce, 1),
            ConvBNReLU(ch3x3dbl_reduce, ch3x3dbl, 3),
            ConvBNReLU(ch3x3dbl, ch3x3dbl, 3),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            ConvBNReLU(in_channels, pool_proj, 1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch3x3dbl + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the four branch outputs concatenated along dimension 1."""
        return torch.cat(
            [self.branch1x1(x), self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)], 1
        )


class InceptionSmall(nn.Module):
    """Stem conv -> 3 Inception blocks (2x2 max-pool between) -> global average pool -> ``fc``.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : int
        Input image channels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 32, 3)
        self.block1 = InceptionBlock(32, 16, 16, 24, 8, 12, 12)  # 64 channels
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block2 = InceptionBlock(self.block1.out_channels, 32, 32, 48, 16, 24, 24)  # 128
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block3 = InceptionBlock(self.block2.out_channels, 48, 48, 64, 24, 32, 32)  # 176
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.block3.out_channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, C, H, W)."""
        x = self.stem(x)
        x = self.block1(x)
        x = self.pool1(x)
        x = self.block2(x)
        x = self.pool2(x)
        x = self.block3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def inception_small(num_classes: int = 10, in_channels: int = 3) -> InceptionSmall:
    """Build :class:`InceptionSmall` (about 0.1M parameters; inputs of 32x32 and larger)."""
    return InceptionSmall(num_classes=num_classes, in_channels=in_channels)
