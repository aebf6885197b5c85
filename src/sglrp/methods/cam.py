"""Class activation maps: Grad-CAM, guided Grad-CAM and Relevance-CAM.

``layer`` is a module name as listed by ``model.named_modules()`` (an ``nn.Module`` of the
model is accepted too). A module that is called several times in one forward contributes its
last call. By default the maps use the *activation of the last convolution*, found in one
no-grad forward pass (:func:`default_layer`): the last ``nn.Conv2d`` in execution order,
followed through the normalisation and activation modules applied directly to its output
and out to the enclosing blocks that end there. That is ``features.<last ReLU>`` of a VGG
(``vgg*_bn`` included), ``layer4`` of a ResNet and ``features`` of a DenseNet (as
pytorch-grad-cam advises), the feature maps Grad-CAM and Relevance-CAM are defined on; the
convolution's raw output would be before BatchNorm's shift and the ReLU.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._guard import HookSet
from ..feature_layer import LayerChain, feature_layers
from ..presets import Bounds
from ..propagation import DEFAULT_LAYER, RulesSpec, propagate
from ..propagation.output import OutputRelevanceSpec
from ..targets import Target
from ..validation import check_logits
from .gradient import input_gradient, per_target, stack_targets
from .guided import ReluOverride
from .registry import register

__all__ = [
    "default_layer",
    "gradcam",
    "guided_gradcam",
    "last_layer",
    "middle_layer",
    "relevance_cam",
    "relevance_cam_mid",
]

LayerSpec = str | nn.Module | None

_MAX_LISTED = 20


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _unknown_layer(layer: object, names: list[str]) -> ValueError:
    """ValueError naming the available layers (first and last ten of a long list)."""
    if len(names) > _MAX_LISTED:
        half = _MAX_LISTED // 2
        skipped = len(names) - 2 * half
        shown = [*names[:half], f"... ({skipped} more) ...", *names[-half:]]
    else:
        shown = names
    close = difflib.get_close_matches(str(layer), names, n=3) if isinstance(layer, str) else []
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"unknown layer {layer!r}{hint} The model has {len(names)} named modules: "
        + ", ".join(shown)
    )


def _resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` for a layer given by name or as a submodule."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name, module
        raise ValueError(
            f"the module {type(layer).__name__} passed as layer is not a submodule of the model"
        )
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or not layer or layer not in modules:
        raise _unknown_layer(layer, _layer_names(model))
    return layer, modules[layer]


def _no_conv_error() -> ValueError:
    return ValueError(
        "the model has no nn.Conv2d that runs in its forward pass; pass layer=<module name>"
    )


def _check_feature_map(name: str, a: Tensor, batch_size: int) -> None:
    if a.ndim != 4 or a.shape[0] != batch_size:
        raise ValueError(
            f"layer {name!r} outputs shape {tuple(a.shape)}; a CAM needs an (N, K, h, w) "
            "feature map, choose a convolutional layer"
        )


def _upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


def default_layer(model: nn.Module, x: Tensor) -> tuple[str, Tensor]:
    """The default CAM layer's name (:class:`LayerChain`) and the logits, from one no-grad
    forward pass."""
    names = {module: name for name, module in model.named_modules() if name}
    chain = LayerChain()

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if chain.accepts(names[module], module, args, output):
            chain.move(names[module], output)

    with HookSet() as hooks, torch.no_grad():
        for module in names:
            hooks.add(module.register_forward_hook(hook))
        logits = model(x.detach().clone())
    if chain.name is None:
        raise _no_conv_error()
    return chain.name, logits


def last_layer(model: nn.Module, x: Tensor) -> str:
    """Name of the default CAM layer (:func:`default_layer`), the layer the CAMs use."""
    return default_layer(model, x)[0]


def middle_layer(model: nn.Module, x: Tensor) -> str:
    """The network's middle stage: the intermediate layer of ``relevance_cam_mid``.

    Rule: the layers of :func:`~sglrp.feature_layer.feature_layers` that run in one no-grad
    forward pass of ``x`` with an (N, K, h, w) output are grouped by their spatial size
    (h, w), in order of first appearance: the network's stages from the input. Of ``m``
    stages the one at index ``m // 2`` is the middle one, and its last output in execution
    order is the layer. For 64 px inputs: ``layer2`` of :func:`~sglrp.models.shapes_resnet`
    (stages 64, 32, 16, 8, 4 px: stem, ``layer1`` ... ``layer4``) and ``features.19``, the
    ReLU ending the 16 px stage, of :func:`~sglrp.models.shapes_vgg`; on 224 px inputs
    ``features.22`` (conv4_3's ReLU) of VGG16 and ``layer2`` of a ResNet.
    """
    names = set(feature_layers(model))
    order: list[tuple[str, tuple[int, int]]] = []
    modules = {m: n for n, m in model.named_modules() if n in names}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and output.shape[0] == x.shape[0]:
            order.append((modules[module], tuple(output.shape[-2:])))

    with HookSet() as hooks, torch.no_grad():
        for module in modules:
            hooks.add(module.register_forward_hook(hook))
        model(x.detach().clone())
    if not order:
        raise _no_conv_error()
    stages = list(dict.fromkeys(size for _, size in order))
    middle = stages[len(stages) // 2]
    return [name for name, size in order if size == middle][-1]


def capture_layer(
    model: nn.Module, x: Tensor, layer: LayerSpec, hooks: HookSet
) -> tuple[Tensor, str, Tensor]:
    r"""Run the forward pass once and capture the CAM layer's output as a fresh leaf.

    With ``layer=None`` the default layer (:class:`LayerChain`) is found in the same pass.
    Every captured output is replaced by ``leaf.clone()``, where ``leaf`` is a detached copy
    that requires grad: in-place operations after the layer (``ReLU(inplace=True)``) then
    leave ``leaf`` untouched, and :math:`\partial z / \partial` leaf is the gradient at the
    layer output; no backward pass runs below the layer. Returns the logits, the layer's
    name and the leaf.
    """
    if layer is None:
        watched = [(name, m) for name, m in model.named_modules() if name]
    else:
        watched = [_resolve_layer(model, layer)]
    chain = LayerChain()
    leaves: dict[str, Tensor] = {}

    def make(name: str) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: Any, output: Any) -> Tensor | None:
            if layer is None and not chain.accepts(name, module, args, output):
                return None
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} returns {type(output).__name__}, a CAM needs a tensor output"
                )
            leaf = output.detach().requires_grad_(True)
            out = leaf.clone()
            chain.move(name, out)
            leaves[name] = leaf
            return out

        return hook

    for name, module in watched:
        hooks.add(module.register_forward_hook(make(name)))
    logits = check_logits(model(x), x.shape[0])
    if chain.name is None:
        if layer is None:
            raise _no_conv_error()
        raise ValueError(f"layer {watched[0][0]!r} was not called in the forward pass")
    leaf = leaves[chain.name]
    _check_feature_map(chain.name, leaf, x.shape[0])
    return logits, chain.name, leaf


def _gradcam(
    model: nn.Module, x: Tensor, target: Target, layer: LayerSpec
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps at layer resolution (N[, K], 1, h, w) and the targets (N, K)."""
    with HookSet() as hooks:
        logits, name, a = capture_layer(model, x, layer, hooks)
    scores, columns, multi = per_target(logits, target)
    cams = []
    for k, score in enumerate(scores):
        grad = None
        if score.requires_grad:
            (grad,) = torch.autograd.grad(
                score, a, retain_graph=k < len(scores) - 1, allow_unused=True
            )
        if grad is None:
            raise ValueError(f"the target logits do not depend on the output of layer {name!r}")
        alpha = grad.mean(dim=(2, 3), keepdim=True)
        cams.append(torch.relu((alpha * a.detach()).sum(dim=1, keepdim=True)))
    return stack_targets(cams, multi), columns


def _upsample_maps(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, 1, h, w) or (N, K, 1, h, w) maps to ``size``."""
    if cam.ndim == 5:
        n, k = cam.shape[:2]
        return _upsample(cam.flatten(0, 1), size).unflatten(0, (n, k))
    return _upsample(cam, size)


@register(
    "gradcam",
    label="Grad-CAM",
    layer_rule=last_layer,
    returns="map",
    family="cam",
    summary="feature maps weighted by their mean gradient, ReLU",
    reference="Selvaraju et al. 2017",
)
def gradcam(
    model: nn.Module, x: Tensor, target: Target, layer: LayerSpec = None, upsample: bool = True
) -> Tensor:
    r"""Grad-CAM (Selvaraju et al., 2017).

    With :math:`A` the output of ``layer``,
    :math:`\alpha_k = \frac{1}{hw} \sum_{ij} \partial z_t / \partial A_{kij}` and
    :math:`L = \mathrm{ReLU}(\sum_k \alpha_k A_k)`.

    Parameters
    ----------
    model, x, target
        Classifier, (N, C, H, W) input, the target.
    layer
        Module name from ``model.named_modules()``; default: :func:`default_layer`, the
        activation of the last convolution, found in the same forward pass.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps (h, w).

    Returns
    -------
    Tensor
        (N, 1, H, W) map, or (N, 1, h, w) with ``upsample=False``.
    """
    cam, _ = _gradcam(model, x, target, layer)
    return _upsample_maps(cam, x.shape[-2:]) if upsample else cam


@register(
    "guided_gradcam",
    label="Guided Grad-CAM",
    layer_rule=last_layer,
    family="cam",
    forward_passes=2,
    summary="guided backprop times upsampled Grad-CAM",
    reference="Selvaraju et al. 2017",
)
def guided_gradcam(model: nn.Module, x: Tensor, target: Target, layer: LayerSpec = None) -> Tensor:
    r"""Guided Grad-CAM: guided backprop :math:`\odot` upsampled Grad-CAM, shape (N, C, H, W).

    ``layer`` as in :func:`gradcam`; the (N, 1, H, W) map is broadcast over channels. Two
    forward passes by definition: Grad-CAM's gradient uses the ordinary ReLU backward above
    the layer, guided backprop's the modified one everywhere, so the two need differently
    built graphs.
    """
    cam, columns = _gradcam(model, x, target, layer)
    guided = input_gradient(
        model,
        x,
        Target(columns if cam.ndim == 5 else columns[:, 0]),
        lambda: ReluOverride("guided"),
    )
    return guided * _upsample_maps(cam, x.shape[-2:])


@register(
    "relevance_cam",
    label="Relevance-CAM",
    layer_rule=last_layer,
    returns="map",
    family="cam",
    summary="feature maps weighted by their summed LRP relevance, at any depth",
    reference="Lee et al. 2021",
)
def relevance_cam(
    model: nn.Module,
    x: Tensor,
    target: Target,
    layer: LayerSpec = None,
    output_relevance: OutputRelevanceSpec = "relevance_cam",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    epsilon: float | None = None,
    attention: str | None = None,
    relu: bool = False,
    normalize: bool = False,
    upsample: bool = True,
) -> Tensor:
    r"""Relevance-CAM (Lee et al., CVPR 2021).

    With :math:`A` the output of ``layer`` and :math:`R` the LRP relevance arriving at that
    output, :math:`\alpha_k = \sum_{ij} R_{kij}` and :math:`L = \sum_k \alpha_k A_k`. Works at
    any depth, including early layers.

    Parameters
    ----------
    model, x, target
        Classifier, (N, C, H, W) input, the target.
    layer
        Module name from ``model.named_modules()``; default: :func:`default_layer`, the
        activation of the last convolution.
    output_relevance
        ``"relevance_cam"`` (default, the authors' code: 1 at the target and :math:`-1/C`
        elsewhere, not scaled by :math:`z_t`, so the map does not flip sign when
        :math:`z_t < 0`), ``"clrp"``, ``"lrp"``, ``"sglrp"`` or a callable
        ``(logits (N, classes), targets (N,)) -> (N, classes)``.
    rules, bounds, epsilon
        LRP rules above the layer (default ``"dtd"``: z+ on every layer, as the authors).
    relu
        Apply :math:`\mathrm{ReLU}` to :math:`L` (default False: the raw weighted sum, as the
        authors' code).
    normalize
        Min-max normalise each map to [0, 1] after upsampling (default False; the authors'
        code normalises). A constant map becomes 0.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps (h, w).

    Returns
    -------
    Tensor
        (N, 1, H, W) map, or (N, 1, h, w) with ``upsample=False`` (a K axis after N for K
        targets per image).
    """
    requested = DEFAULT_LAYER if layer is None else _resolve_layer(model, layer)[0]
    result = propagate(
        model,
        x,
        target,
        output_relevance,
        rules,
        bounds,
        record=(requested,),
        epsilon=epsilon,
        attention=attention,
        input_relevance=False,
    )
    ((name, a),) = result.layer_output.items()
    r = result.layer_relevance[name]
    _check_feature_map(name, a, x.shape[0])
    if r.ndim == a.ndim + 1:  # K targets: (N, K, ...) relevance of one (N, ...) output
        a = a[:, None]
    alpha = r.sum(dim=(-2, -1), keepdim=True)
    cam = (alpha * a).sum(dim=-3, keepdim=True)
    if relu:
        cam = torch.relu(cam)
    if upsample:
        cam = _upsample_maps(cam, x.shape[-2:])
    if normalize:
        dims = tuple(range(cam.ndim - 3, cam.ndim))
        lo = cam.amin(dim=dims, keepdim=True)
        span = cam.amax(dim=dims, keepdim=True) - lo
        cam = torch.where(span > 0, (cam - lo) / span.clamp_min(torch.finfo(cam.dtype).tiny), 0)
    return cam


@register(
    "relevance_cam_mid",
    label="Relevance-CAM (middle layer)",
    returns="map",
    family="cam",
    forward_passes=2,
    summary="Relevance-CAM at the network's middle stage (middle_layer)",
    reference="Lee et al. 2021",
    layer_rule=middle_layer,
)
def relevance_cam_mid(
    model: nn.Module,
    x: Tensor,
    target: Target,
    output_relevance: OutputRelevanceSpec = "relevance_cam",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    epsilon: float | None = None,
    attention: str | None = None,
    relu: bool = False,
    normalize: bool = False,
    upsample: bool = True,
) -> Tensor:
    """Relevance-CAM (:func:`relevance_cam`) at the layer :func:`middle_layer` picks.

    Relevance-CAM's claim is useful maps at intermediate layers too (Lee et al., CVPR
    2021); this is the evaluation's fixed intermediate depth. One extra no-grad forward
    pass finds the layer. Options as :func:`relevance_cam`.
    """
    return relevance_cam.method.fn(
        model,
        x,
        target,
        layer=middle_layer(model, x),
        output_relevance=output_relevance,
        rules=rules,
        bounds=bounds,
        epsilon=epsilon,
        attention=attention,
        relu=relu,
        normalize=normalize,
        upsample=upsample,
    )
