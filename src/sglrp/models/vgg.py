"""VGG networks with torchvision's exact module layout and ``state_dict`` keys.

A checkpoint saved from ``torchvision.models.vgg16()`` loads into :func:`vgg16` with
``load_state_dict(strict=True)``; torchvision itself is never imported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["VGG", "make_layers", "vgg11", "vgg16", "vgg16_bn"]

# Layer plans: an int is a 3x3 convolution with that many output channels, "M" a 2x2 max-pool.
_CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG classifier: ``features`` -> ``avgpool`` (7x7) -> flatten -> ``classifier``.

    Parameters
    ----------
    features : nn.Module
        Convolutional trunk ending in 512 channels (see :func:`make_layers`).
    num_classes : int
        Number of output logits.
    init_weights : bool
        Apply torchvision's initialisation (Kaiming-normal convolutions, N(0, 0.01) linears).
    dropout : float
        Dropout probability of the two hidden classifier layers.
    """

    def __init__(
        self,
        features: nn.Module,
        num_classes: int = 1000,
        init_weights: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def make_layers(cfg: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    """Build a VGG trunk from a layer plan (ints: 3x3 conv widths, ``"M"``: 2x2 max-pool).

    Parameters
    ----------
    cfg : list of int or str
        Layer plan, e.g. ``[64, "M", 128, "M"]``.
    batch_norm : bool
        Insert ``BatchNorm2d`` between each convolution and its ReLU.

    Returns
    -------
    nn.Sequential
        Flat sequence numbered like torchvision's (``features.0``, ``features.1``, ...).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(v)
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, **kwargs: Any) -> VGG:
    return VGG(make_layers(_CFGS[cfg], batch_norm=batch_norm), num_classes=num_classes, **kwargs)


def vgg11(num_classes: int = 1000, **kwargs: Any) -> VGG:
    """VGG-11 (configuration "A"); ``kwargs`` go to :class:`VGG` (``init_weights``, ``dropout``)."""
    return _vgg("A", False, num_classes, **kwargs)


def vgg16(num_classes: int = 1000, **kwargs: Any) -> VGG:
    """VGG-16 (configuration "D"); ``kwargs`` go to :class:`VGG` (``init_weights``, ``dropout``)."""
    return _vgg("D", False, num_classes, **kwargs)


def vgg16_bn(num_classes: int = 1000, **kwargs: Any) -> VGG:
    """VGG-16 with batch normalisation; ``kwargs`` go to :class:`VGG`."""
    return _vgg("D", True, num_classes, **kwargs)
