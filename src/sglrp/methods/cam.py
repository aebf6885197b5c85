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

from sglrp._checks import TargetSpec, check_input, resolve_targets
from sglrp._guard import HookSet, preserved

from .gradient import _freeze, _input_gradient, _target_score
from .guided import ReluOverride

__all__ = ["default_layer", "gradcam", "guided_gradcam", "relevance_cam"]

LayerSpec = str | nn.Module | None
OutputRelevance = str | Callable[[Tensor, Tensor], Tensor]

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


def default_layer(model: nn.Module, x: Tensor) -> tuple[str, Tensor]:
    """The default CAM layer's name, and the logits, from one no-grad forward pass.

    Start at the last ``nn.Conv2d`` executed; move on to a normalisation or activation module
    (:data:`_FOLLOWERS`) whose input is the current output, and to an enclosing module that
    finishes with a feature map of the same height and width (a residual block, or a block
    that concatenates its branches).
    """
    names = {module: name for name, module in model.named_modules() if name}
    chain: dict[str, Any] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        if isinstance(module, nn.Conv2d):
            chain.update(name=name, out=output)
            return
        if not chain or not isinstance(output, Tensor):
            return
        current = chain["out"]
        follows = isinstance(module, _FOLLOWERS) and bool(args) and args[0] is current
        encloses = (
            chain["name"].startswith(name + ".")
            and output.ndim == current.ndim == 4
            and output.shape[0] == current.shape[0]
            and output.shape[-2:] == current.shape[-2:]
        )
        if follows or encloses:
            chain.update(name=name, out=output)

    with preserved(model) as hooks, torch.no_grad():
        for module in names:
            hooks.add(module.register_forward_hook(hook))
        logits = model(x.detach().clone())
    if not chain:
        raise _no_conv_error()
    return chain["name"], logits


def _capture(hooks: HookSet, watched: list[tuple[str, nn.Module]], seen: dict[str, Any]) -> None:
    r"""Hook ``watched`` so that each call's output becomes a fresh leaf ``a`` (kept in ``seen``).

    The hook returns ``a.clone()`` to the model, so in-place ops after the layer (e.g.
    ``ReLU(inplace=True)``) leave ``a`` untouched and :math:`\partial z / \partial a` is the
    gradient at the layer output; no backward pass runs below the layer.
    """

    def make(name: str) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} returns {type(output).__name__}, a CAM needs a tensor output"
                )
            a = output.detach().requires_grad_(True)
            seen["name"], seen["a"] = name, a
            return a.clone()

        return hook

    for name, module in watched:
        hooks.add(module.register_forward_hook(make(name)))


def _gradcam(
    model: nn.Module, x: Tensor, targets: TargetSpec, layer: LayerSpec, upsample: bool
) -> tuple[Tensor, Tensor]:
    """Grad-CAM map and the resolved targets."""
    x = check_input(x)
    n = x.shape[0]
    watched = [_resolve_layer(model, default_layer(model, x)[0] if layer is None else layer)]
    seen: dict[str, Any] = {}
    with preserved(model) as hooks, torch.enable_grad():
        _freeze(model)
        _capture(hooks, watched, seen)
        logits = model(x.detach().clone())
        score, t = _target_score(logits, targets, n)
        if "a" not in seen:
            raise ValueError(f"layer {watched[0][0]!r} was not called in the forward pass")
        name, a = seen["name"], seen["a"]
        _check_feature_map(name, a, n)
        grad = None
        if score.requires_grad:
            (grad,) = torch.autograd.grad(score, a, allow_unused=True)
        if grad is None:
            raise ValueError(f"the target logits do not depend on the output of layer {name!r}")
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * a.detach()).sum(dim=1, keepdim=True))
    if upsample:
        cam = _upsample(cam, x.shape[-2:])
    return cam, t


def gradcam(
    model: nn.Module,
    x: Tensor,
    targets: TargetSpec,
    layer: LayerSpec = None,
    upsample: bool = True,
) -> Tensor:
    r"""Grad-CAM (Selvaraju et al., 2017).

    With :math:`A` the output of ``layer``,
    :math:`\alpha_k = \frac{1}{hw} \sum_{ij} \partial z_t / \partial A_{kij}` and
    :math:`L = \mathrm{ReLU}(\sum_k \alpha_k A_k)`.

    Parameters
    ----------
    model, x, targets
        Classifier, (N, C, H, W) input, (N,) class indices.
    layer
        Module name from ``model.named_modules()``; default: :func:`default_layer`, the
        activation of the last convolution.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps (h, w).

    Returns
    -------
    Tensor
        (N, 1, H, W) map, or (N, 1, h, w) with ``upsample=False``.
    """
    return _gradcam(model, x, targets, layer, upsample)[0]


def guided_gradcam(
    model: nn.Module, x: Tensor, targets: TargetSpec, layer: LayerSpec = None
) -> Tensor:
    r"""Guided Grad-CAM: guided backprop :math:`\odot` upsampled Grad-CAM, shape (N, C, H, W).

    ``layer`` as in :func:`gradcam`; the (N, 1, H, W) map is broadcast over channels.
    """
    cam, t = _gradcam(model, x, targets, layer, upsample=True)
    guided, _ = _input_gradient(model, x, t, lambda: ReluOverride("guided"))
    return guided * cam


def _propagate() -> Callable[..., Any]:
    try:
        from sglrp.propagation import propagate
    except ImportError as err:
        raise ImportError(
            "relevance_cam needs the LRP engine sglrp.propagation.propagate, "
            "which is not available in this installation"
        ) from err
    return propagate


def relevance_cam(
    model: nn.Module,
    x: Tensor,
    targets: TargetSpec,
    layer: LayerSpec = None,
    relevance: OutputRelevance = "clrp",
    rules: Any = "dtd",
    bounds: Any = None,
    relu: bool = False,
    normalize: bool = False,
    upsample: bool = True,
    **propagate_options: Any,
) -> Tensor:
    r"""Relevance-CAM (Lee et al., CVPR 2021).

    With :math:`A` the output of ``layer`` and :math:`R` the LRP relevance arriving at that
    output, :math:`\alpha_k = \sum_{ij} R_{kij}` and :math:`L = \sum_k \alpha_k A_k`. Works at
    any depth, including early layers.

    Parameters
    ----------
    model, x, targets
        Classifier, (N, C, H, W) input, (N,) class indices.
    layer
        Module name from ``model.named_modules()``; default: :func:`default_layer`, the
        activation of the last convolution (found with one extra no-grad forward pass).
    relevance
        Output relevance for :func:`sglrp.propagation.propagate`: ``"clrp"`` (default, the
        contrastive relevance the paper uses), ``"lrp"``, ``"sglrp"``, or a callable
        ``(logits (N, classes), targets (N,)) -> (N, classes)``.
    rules, bounds, **propagate_options
        Passed through to ``propagate`` (default ``rules="dtd"``).
    relu
        Apply :math:`\mathrm{ReLU}` to :math:`L` (default False: the raw weighted sum).
    normalize
        Min-max normalise each map to [0, 1] after upsampling (default False; the authors'
        code normalises). A constant map becomes 0.
    upsample
        Bilinearly resize (``align_corners=False``) to (H, W); False keeps (h, w).

    Returns
    -------
    Tensor
        (N, 1, H, W) map, or (N, 1, h, w) with ``upsample=False``.
    """
    x = check_input(x)
    n = x.shape[0]
    propagate = _propagate()
    with preserved(model):
        name = None if layer is None else _resolve_layer(model, layer)[0]
        resolved = (
            isinstance(targets, Tensor)
            and targets.ndim == 1
            and targets.shape[0] == n
            and not targets.is_floating_point()
            and targets.dtype != torch.bool
        )
        if name is None or not resolved:
            default, logits = default_layer(model, x)
            name = default if name is None else name
            t = resolve_targets(targets, logits)
        else:
            t = targets.to(device=x.device, dtype=torch.long)
        if t.ndim != 1:
            raise ValueError(
                f"relevance_cam explains one target per image, got shape {tuple(t.shape)}"
            )
        result = propagate(
            model,
            x.detach().clone(),
            t,
            relevance,
            rules=rules,
            bounds=bounds,
            record=(name,),
            **propagate_options,
        )
    a = result.layer_output[name].detach()
    r = result.layer_relevance[name].detach()
    _check_feature_map(name, a, n)
    if r.shape != a.shape:
        raise ValueError(
            f"relevance at layer {name!r} has shape {tuple(r.shape)}, its output {tuple(a.shape)}"
        )
    alpha = r.sum(dim=(2, 3), keepdim=True)
    cam = (alpha * a).sum(dim=1, keepdim=True)
    if relu:
        cam = torch.relu(cam)
    if upsample:
        cam = _upsample(cam, x.shape[-2:])
    if normalize:
        lo = cam.amin(dim=(1, 2, 3), keepdim=True)
        span = cam.amax(dim=(1, 2, 3), keepdim=True) - lo
        cam = torch.where(span > 0, (cam - lo) / span.clamp_min(torch.finfo(cam.dtype).tiny), 0)
    return cam
