"""Gradient, guided and CAM explanation methods.

Every method is ``fn(model, x, targets, **options) -> Tensor`` with ``x`` (N, C, H, W) and
``targets`` (N,) class indices. Pixel methods return (N, C, H, W); the methods in
:data:`CAM_METHODS` return (N, 1, H, W) (option ``upsample=False``: layer resolution (N, 1, h,
w)); ``"random"`` returns (N, 1, H, W). The methods in :data:`LAYER_METHODS` take ``layer=``.

==================  ===========================================================================
name                options (defaults)
==================  ===========================================================================
gradient            --
input_x_gradient    --
guided_backprop     --
deconvnet           --
gradcam             ``layer=None`` (last executed nn.Conv2d), ``upsample=True``
guided_gradcam      ``layer=None``
relevance_cam       ``layer=None``, ``relevance="clrp"``, ``rules="dtd"``, ``bounds=None``,
                    ``relu=False``, ``normalize=False``, ``upsample=True``, more ``propagate``
                    options
random              ``seed=0``
==================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .baseline import random_map
from .cam import default_layer, gradcam, guided_gradcam, relevance_cam
from .gradient import gradient, input_x_gradient
from .guided import ReluOverride, deconvnet, guided_backprop

__all__ = [
    "CAM_METHODS",
    "LAYER_METHODS",
    "METHODS",
    "ReluOverride",
    "deconvnet",
    "default_layer",
    "gradcam",
    "gradient",
    "guided_backprop",
    "guided_gradcam",
    "input_x_gradient",
    "random_map",
    "relevance_cam",
]

METHODS: dict[str, Callable[..., Tensor]] = {
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "gradcam": gradcam,
    "guided_gradcam": guided_gradcam,
    "relevance_cam": relevance_cam,
    "random": random_map,
}

#: Methods returning one-channel class activation maps with ``layer=`` and ``upsample=``.
CAM_METHODS: frozenset[str] = frozenset({"gradcam", "relevance_cam"})

#: Methods that take a ``layer=`` option.
LAYER_METHODS: frozenset[str] = frozenset({"gradcam", "guided_gradcam", "relevance_cam"})
