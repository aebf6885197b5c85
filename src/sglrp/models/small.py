"""Small VGG- and ResNet-style classifiers for 64x64 images (the shipped shape models).

Both keep torchvision's module layout so that code written for ``torchvision.models.vgg16``
or ``resnet18`` (and LRP canonizers matching :class:`sglrp.models.resnet.BasicBlock`) works on
them unchanged:

* :class:`SmallVGG`: ``features`` (3x3 conv [+ batch norm] + ``ReLU(inplace=True)`` blocks
  and 2x2 max pooling, laid out as torchvision's ``vgg*`` / ``vgg*_bn``), ``avgpool``,
  ``classifier`` (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear).
  :func:`shapes_vgg` has VGG16's head: the final 4x4 feature map of a 64x64 image is
  flattened into the classifier (``avgpool`` to 4x4 is then the identity, as torchvision's
  7x7 pooling is on 224x224 inputs). :func:`shapes_vgg_gap` pools it globally (1x1) first.
* :class:`SmallResNet`: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ... ``layer4``
  of :class:`~sglrp.models.resnet.BasicBlock`, ``avgpool``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .resnet import BasicBlock

__all__ = ["SmallResNet", "SmallVGG", "shapes_resnet", "shapes_vgg", "shapes_vgg_gap"]

VGG_CFG: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, 64, "M", 128, 128, "M")
"""Layer plan of :func:`shapes_vgg`: ints are 3x3 conv widths, ``"M"`` a 2x2 max-pool."""


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


class SmallVGG(nn.Module):
    """VGG-style network: ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

    Parameters
    ----------
    num_classes
        Number of output logits.
    cfg
        Layer plan (ints: 3x3 conv widths, ``"M"``: 2x2 max-pool).
    pool
        Output side of the adaptive average pooling before the flatten; the classifier's
        input has ``channels * pool**2`` features. 1: global average pooling (a translation
        invariant head, the class evidence of all positions summed before the classifier);
        the side of the final feature map (4 for 64x64 images): VGG16's flattened head.
    hidden
        Width of the two hidden fully connected layers.
    dropout
        Dropout probability after each hidden layer.
    batch_norm
        Put a ``BatchNorm2d`` after every convolution (torchvision's ``vgg*_bn`` layout). LRP
        merges it into the convolution; without it the net is plain as the paper's VGG16,
        but trains several times slower from scratch.
    """

    def __init__(
        self,
        num_classes: int = 12,
        cfg: Sequence[int | str] = VGG_CFG,
        pool: int = 1,
        hidden: int = 256,
        dropout: float = 0.3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(channels, int(item), 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(item)))
                layers.append(nn.ReLU(inplace=True))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class SmallResNet(nn.Module):
    """ResNet-style network of :class:`~sglrp.models.resnet.BasicBlock` stages.

    Parameters
    ----------
    num_classes
        Number of output logits.
    widths
        Channels of ``layer1`` ... ``layer4`` (the stem has ``widths[0]``).
    blocks
        Number of blocks per stage.
    """

    def __init__(
        self,
        num_classes: int = 12,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("widths and blocks must have 4 entries each (layer1 ... layer4)")
        self.inplanes = int(widths[0])
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(int(widths[0]), int(blocks[0]), stride=1)
        self.layer2 = self._make_layer(int(widths[1]), int(blocks[1]), stride=2)
        self.layer3 = self._make_layer(int(widths[2]), int(blocks[2]), stride=2)
        self.layer4 = self._make_layer(int(widths[3]), int(blocks[3]), stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(int(widths[3]), num_classes)
        _init(self)

    def _make_layer(self, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def shapes_vgg(num_classes: int = 12, **kwargs: object) -> SmallVGG:
    """VGG16 in miniature for 64x64 shape images (about 0.92 M parameters).

    Batch norm, and VGG16's head: the final 128 x 4 x 4 feature map is flattened into three
    fully connected layers (``pool=4``; no global pooling). ``batch_norm=False`` gives the
    plain variant (``vgg*`` instead of ``vgg*_bn`` layout).
    """
    kwargs.setdefault("batch_norm", True)
    kwargs.setdefault("pool", 4)
    return SmallVGG(num_classes=num_classes, **kwargs)


def shapes_vgg_gap(num_classes: int = 12, **kwargs: object) -> SmallVGG:
    """:func:`shapes_vgg` with global average pooling before the classifier (``pool=1``).

    About 0.4 M parameters; the classifier sees only the channel means of the final feature
    map, so class information is summed over positions before relevance reaches the
    convolutions.
    """
    kwargs.setdefault("batch_norm", True)
    kwargs.setdefault("pool", 1)
    return SmallVGG(num_classes=num_classes, **kwargs)


def shapes_resnet(num_classes: int = 12, **kwargs: object) -> SmallResNet:
    """ResNet-style model for 64x64 shape images (about 0.7 M parameters)."""
    return SmallResNet(num_classes=num_classes, **kwargs)
