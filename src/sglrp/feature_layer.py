"""The feature layer a class activation map uses by default: the last convolution's activation.

:class:`LayerChain` follows it during a forward pass (module forward hooks call
:meth:`LayerChain.accepts` and :meth:`LayerChain.move`), so the CAM methods and the
propagation engine find it in the same pass that computes the map.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["LayerChain", "feature_layers"]

_FOLLOWERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
)
"""Modules that :func:`default_layer` follows from the last convolution's output."""


class LayerChain:
    """The default CAM layer, followed during a forward pass.

    Start at the last ``nn.Conv2d`` executed; move on to a normalisation or activation module
    (:data:`_FOLLOWERS`) whose input is the current output, and to an enclosing module that
    finishes with a feature map of the same height and width (a residual block, or a block
    that concatenates its branches).
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.out: Tensor | None = None

    def accepts(self, name: str, module: nn.Module, args: Any, output: Any) -> bool:
        """True if the default layer moves on to this module's output."""
        if isinstance(module, nn.Conv2d):
            return True
        if self.name is None or not isinstance(output, Tensor):
            return False
        current = self.out
        follows = isinstance(module, _FOLLOWERS) and bool(args) and args[0] is current
        encloses = (
            self.name.startswith(name + ".")
            and output.ndim == current.ndim == 4
            and output.shape[0] == current.shape[0]
            and output.shape[-2:] == current.shape[-2:]
        )
        return follows or encloses

    def move(self, name: str, output: Tensor) -> None:
        self.name, self.out = name, output


def feature_layers(model: nn.Module) -> list[str]:
    """Names of the layers a class activation map can use, in definition order.

    Every ``nn.Conv2d``, every non-root module that contains one (a VGG's ``features``, a
    ResNet's ``layer4`` or one of its blocks) and the normalisation and activation modules
    (:data:`_FOLLOWERS`) defined before the last convolution or right after it; the
    classifier's layers after them are not among them.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    convs = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)]
    if not convs:
        return []
    end = convs[-1] + 1
    while end < len(named) and isinstance(named[end][1], _FOLLOWERS):
        end += 1
    return [
        n
        for i, (n, m) in enumerate(named)
        if isinstance(m, nn.Conv2d)
        or (i < end and isinstance(m, _FOLLOWERS))
        or any(isinstance(c, nn.Conv2d) for c in m.modules())
    ]
