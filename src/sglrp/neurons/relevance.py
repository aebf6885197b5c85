"""Neuron relevance, restricted relevance propagation and forward ablation.

A *neuron* is one output channel of a conv layer or one unit of a linear layer. Its relevance
is the relevance arriving at the layer's output, summed over positions:
:math:`R_c = \\sum_{p} R_{c,p}`. For a conv layer merged with the BatchNorm that follows it,
the neuron is the conv + BatchNorm channel (relevance is taken after the BatchNorm).

Restricted propagation keeps a selection of neurons per layer and zeroes the others during the
backward pass: the relevance per activation :math:`s = R / a` arriving at a layer's output is
multiplied by a 0/1 channel mask, so unselected neurons pass no relevance downwards. Because
every LRP rule is linear in the upper relevance, the input heatmap of a restricted pass is the
part of the full heatmap that flows through the selected neurons.

The masks are applied by hooks that run after the propagation engine's own hooks (a forward
pre-hook registers a one-shot forward hook at call time, which therefore comes last), so the
engine in :mod:`sglrp.propagation` is used unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._guard import preserved
from ..presets import Bounds
from ..propagation import PropagationResult, RulesSpec, neuron_sites, propagate
from ..propagation.layers import LINEAR_TYPES
from ..propagation.output import OutputRelevance, output_relevance_fn
from ..targets import TargetSpec, resolve_targets
from ..validation import check_input, check_logits, check_model, model_logits

__all__ = [
    "LayerInfo",
    "NeuronRelevance",
    "ablated_logits",
    "as_masks",
    "neuron_layers",
    "neuron_relevance",
    "propagate_masked",
    "restricted_relevance",
]

#: A selection or mask per layer: layer name -> (C,) or (N, C) tensor (bool or 0/1 float).
Masks = Mapping[str, Tensor]


@dataclass(frozen=True)
class LayerInfo:
    """A conv or linear layer in execution order.

    Attributes
    ----------
    name
        Module name (``model.named_modules()``).
    kind
        ``"conv"`` or ``"linear"``.
    size
        Number of neurons (output channels or units).
    shape
        Output shape without the batch axis.
    is_output
        True for the layer whose output is the model's logits (its neurons are the classes).
    """

    name: str
    kind: str
    size: int
    shape: tuple[int, ...]
    is_output: bool = False


def _order_run(model: nn.Module, x: Tensor) -> tuple[list[LayerInfo], Tensor]:
    """Forward once, noting conv/linear layers in execution order; returns them and the logits."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    last: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        name = names[module]
        if isinstance(output, Tensor) and all(name != s[0] for s in seen):
            seen.append((name, module, tuple(output.shape[1:])))
            last[:] = [output]

    with preserved(model) as hooks, torch.no_grad():
        for module in names:
            if isinstance(module, LINEAR_TYPES):
                hooks.add(module.register_forward_hook(hook))
        logits = check_logits(model(x), x.shape[0])
    out_name = seen[-1][0] if seen and last and last[0] is logits else None
    layers = [
        LayerInfo(
            name=name,
            kind="linear" if isinstance(module, nn.Linear) else "conv",
            size=shape[0] if shape else 1,
            shape=shape,
            is_output=name == out_name,
        )
        for name, module, shape in seen
    ]
    return layers, logits


def neuron_layers(model: nn.Module, x: Tensor) -> list[LayerInfo]:
    """Conv and linear layers of ``model`` in the order ``model(x)`` runs them.

    The last entry has ``is_output=True`` when its output is the logits themselves.
    """
    check_model(model)
    check_input(x)
    return _order_run(model, x)[0]


def _mask_sites(
    model: nn.Module, x: Tensor, rules: RulesSpec, bounds: Bounds | None, epsilon: float | None
) -> dict[str, nn.Module]:
    """Module whose output carries each conv/linear layer's neurons (its BatchNorm if merged)."""
    modules = dict(model.named_modules())
    return {
        name: modules[site] for name, site in neuron_sites(model, x, rules, bounds, epsilon).items()
    }


def _check_layer_names(masks: Iterable[str], sites: Iterable[str]) -> None:
    for name in masks:
        if name not in sites:
            known = ", ".join(list(sites)[:30])
            raise ValueError(
                f"layer {name!r} is not a conv or linear layer of the model; choose one of: {known}"
            )


def as_masks(selection: Masks, batch: int, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Turn a selection (bool or 0/1 per neuron, (C,) or (N, C)) into (N, C) float masks."""
    out = {}
    for name, sel in selection.items():
        m = torch.as_tensor(sel)
        if m.ndim == 1:
            m = m[None].expand(batch, -1)
        if m.ndim != 2 or m.shape[0] != batch:
            raise ValueError(
                f"selection for layer {name!r} must have shape (C,) or (N, C) with N = {batch}, "
                f"got {tuple(m.shape)}"
            )
        out[name] = m.to(dtype)
    return out


def _view_mask(mask: Tensor, output: Tensor, name: str) -> Tensor:
    if output.ndim < 2 or output.shape[1] != mask.shape[1]:
        raise ValueError(
            f"mask for layer {name!r} has {mask.shape[1]} neurons but the layer output has "
            f"shape {tuple(output.shape)}; give one entry per output channel"
        )
    if mask.shape[0] != output.shape[0]:
        raise ValueError(
            f"mask for layer {name!r} is for {mask.shape[0]} images but the batch has "
            f"{output.shape[0]}"
        )
    mask = mask.to(device=output.device, dtype=output.dtype)
    return mask.view(*mask.shape, *([1] * (output.ndim - 2)))


def propagate_masked(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    masks: Masks | None = None,
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    record: Iterable[str] = (),
    epsilon: float | None = None,
) -> PropagationResult:
    """:func:`sglrp.propagation.propagate` with gradient masks at chosen layers.

    ``masks`` maps layer names to (C,) or (N, C) selections (bool or 0/1); the relevance of an
    unselected neuron is set to zero before it is propagated further down. With no masks (or
    all-ones masks) the result equals ``propagate``'s exactly. Relevance recorded at a masked
    layer is the masked relevance.
    """
    masks = as_masks(masks or {}, x.shape[0], x.dtype)
    layers = {name for name, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
    _check_layer_names(masks, layers)
    return propagate(model, x, targets, method, rules, bounds, record, epsilon, masks=masks)


@dataclass
class NeuronRelevance:
    """Relevance of every neuron of every conv/linear layer for one target per image.

    Attributes
    ----------
    layers
        Hidden conv/linear layers in execution order (input side first).
    relevance
        Layer name -> (N, C) neuron relevance :math:`R_c = \\sum_p R_{c,p}`.
    maps
        Layer name -> relevance at the layer's output, (N, C, h, w) or (N, C) (only with
        ``keep_maps=True``).
    info
        Layer name -> :class:`LayerInfo` (hidden layers and the output layer).
    output_layer
        Name of the layer producing the logits, or None if the logits come from elsewhere.
    output_relevance
        (N, classes) relevance at the logits (the method's starting vector).
    input_relevance
        (N, C, H, W) relevance at the input.
    logits, targets
        (N, classes) model output and (N,) explained classes.
    """

    layers: list[str]
    relevance: dict[str, Tensor]
    info: dict[str, LayerInfo]
    output_layer: str | None
    output_relevance: Tensor
    input_relevance: Tensor
    logits: Tensor
    targets: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)


def _resolve(
    model: nn.Module, x: Tensor, target: TargetSpec
) -> tuple[list[LayerInfo], Tensor, Tensor]:
    check_model(model)
    check_input(x)
    layers, logits = _order_run(model, x)
    targets = resolve_targets(target, logits)
    if targets.ndim != 1:
        raise ValueError(
            "neuron analysis takes one target per image; pass an int, 'predicted', or N indices "
            "(call it once per target for several)"
        )
    if not layers:
        raise ValueError("the model has no conv or linear layers whose neurons could be analysed")
    return layers, logits, targets


def neuron_relevance(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    *,
    selection: Masks | None = None,
    keep_maps: bool = False,
    epsilon: float | None = None,
) -> NeuronRelevance:
    """Relevance of every neuron at every conv/linear layer, in one backward pass.

    Parameters
    ----------
    model, x
        Classifier and (N, C, H, W) input batch; the model is left exactly as it was.
    target
        Class index, N indices, ``"predicted"`` or ``"second"`` (one target per image).
    method
        Output relevance: ``"lrp"``, ``"clrp"``, ``"sglrp"`` or a callable.
    rules, bounds, epsilon
        As for :func:`sglrp.explain` (default: the paper's z+ / Z^B rules).
    selection
        Optional layer -> neuron selection: relevance is then computed with the unselected
        neurons zeroed during the backward pass (restricted propagation).
    keep_maps
        Also return the relevance at each layer's output before summing over positions.

    Returns
    -------
    NeuronRelevance
        Per-layer (N, C) relevance, the input relevance and the output relevance vector.
    """
    layers, logits, targets = _resolve(model, x, target)
    hidden = [info.name for info in layers if not info.is_output]
    output_layer = next((info.name for info in layers if info.is_output), None)
    if selection and output_layer in selection:
        raise ValueError(
            f"layer {output_layer!r} produces the logits; its neurons are the classes, which "
            "the method's output relevance already weights; select neurons in hidden layers"
        )
    result = propagate_masked(
        model, x, targets, selection, method, rules, bounds, hidden, epsilon=epsilon
    )
    relevance = {}
    maps = {}
    for name in hidden:
        r = result.layer_relevance[name]
        relevance[name] = r.flatten(2).sum(dim=2) if r.ndim > 2 else r
        if keep_maps:
            maps[name] = r
    out_vec = output_relevance_fn(method)(result.logits, targets)
    return NeuronRelevance(
        layers=hidden,
        relevance=relevance,
        info={info.name: info for info in layers},
        output_layer=output_layer,
        output_relevance=out_vec.detach(),
        input_relevance=result.input_relevance,
        logits=result.logits,
        targets=targets,
        maps=maps,
    )


def restricted_relevance(
    model: nn.Module,
    x: Tensor,
    selection: Masks,
    target: TargetSpec = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    epsilon: float | None = None,
) -> Tensor:
    """Input relevance (N, C, H, W) flowing only through the selected neurons.

    ``selection`` maps layer names to (C,) or (N, C) bool/0-1 selections. Selecting every
    neuron gives exactly the full relevance of :func:`sglrp.explain`.
    """
    check_model(model)
    check_input(x)
    logits = model_logits(model, x)
    targets = resolve_targets(target, logits)
    return propagate_masked(
        model, x, targets, selection, method, rules, bounds, epsilon=epsilon
    ).input_relevance


def ablated_logits(
    model: nn.Module,
    x: Tensor,
    selection: Masks,
    *,
    sites: Mapping[str, nn.Module] | None = None,
) -> Tensor:
    """Model output with only the selected neurons active: the others are set to zero.

    A conv neuron's whole output channel is zeroed (after its BatchNorm when one follows, so
    that the neuron is really off); later layers see the change.
    """
    check_model(model)
    check_input(x)
    masks = as_masks(selection, x.shape[0], x.dtype)
    if sites is None:
        sites = _mask_sites(model, x, "dtd", None, None)
    _check_layer_names(masks, sites)

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            return output * _view_mask(masks[name], output, name)

        return hook

    with preserved(model) as hooks, torch.no_grad():
        for name in masks:
            hooks.add(sites[name].register_forward_hook(hook_for(name)))
        return check_logits(model(x), x.shape[0])


def repeat_batch(x: Tensor, times: int) -> Tensor:
    """``x`` repeated ``times`` times along the batch axis (image-major: x0, x0, ..., x1, ...)."""
    return x.repeat_interleave(times, dim=0)


def layer_names(layers: Sequence[LayerInfo], hidden_only: bool = True) -> list[str]:
    """Names of ``layers`` (without the output layer by default)."""
    return [info.name for info in layers if not (hidden_only and info.is_output)]
