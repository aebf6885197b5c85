"""Explanation methods and their registry.

Every method is registered with :func:`register` and described by a :class:`Method` record;
:func:`available` lists the names, :func:`get` returns a record. Built in:

==================  ========================================================================
family              methods
==================  ========================================================================
lrp                 ``lrp``, ``clrp``, ``sglrp`` (options ``rules``, ``bounds``, ``epsilon``;
                    ``variant`` for SGLRP)
gradient            ``gradient``, ``input_x_gradient``, ``guided_backprop``, ``deconvnet``
cam                 ``gradcam``, ``guided_gradcam``, ``relevance_cam`` (option ``layer``),
                    ``relevance_cam_mid`` (Relevance-CAM at :func:`middle_layer`)
attention           ``attention_rollout``, ``gradient_rollout``, ``vit_gradcam`` (transformers;
                    option ``layer`` for ``vit_gradcam``)
baseline            ``random`` (option ``seed``)
==================  ========================================================================

Calling a method function directly (``sglrp.methods.gradcam(model, x, "predicted")``) is the
same as ``sglrp.explain(model, x, "predicted", method="gradcam")``.
"""

from .lrp import SGLRP_VARIANTS, clrp, lrp, sglrp

# isort: split
from .attention_maps import attention_rollout, gradient_rollout, vit_gradcam
from .cam import (
    LayerChain,
    capture_layer,
    default_layer,
    gradcam,
    guided_gradcam,
    last_layer,
    middle_layer,
    relevance_cam,
    relevance_cam_mid,
)
from .gradient import gradient, input_gradient, input_x_gradient
from .guided import ReluOverride, deconvnet, guided_backprop
from .random_baseline import random_map
from .registry import Method, available, call, get, methods, register, unregister

__all__ = [
    "SGLRP_VARIANTS",
    "LayerChain",
    "Method",
    "ReluOverride",
    "attention_rollout",
    "available",
    "call",
    "capture_layer",
    "clrp",
    "deconvnet",
    "default_layer",
    "get",
    "gradcam",
    "gradient",
    "gradient_rollout",
    "guided_backprop",
    "guided_gradcam",
    "input_gradient",
    "input_x_gradient",
    "last_layer",
    "lrp",
    "methods",
    "middle_layer",
    "random_map",
    "register",
    "relevance_cam",
    "relevance_cam_mid",
    "sglrp",
    "unregister",
    "vit_gradcam",
]
