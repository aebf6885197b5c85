"""Relevance propagation: the engine behind the LRP family of methods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._guard import frozen
from ..presets import Bounds, resolve_rules
from ..rules import Rule, RuleKey, RuleMap
from ..targets import Target, TargetSpec
from ..validation import check_input, check_model
from .engine import DEFAULT_LAYER, PassRecord, Propagator, describe_layers
from .graphcheck import UnsupportedOperation
from .output import OUTPUT_RELEVANCE, OutputRelevanceSpec, output_relevance_fn

__all__ = [
    "DEFAULT_LAYER",
    "neuron_sites",
    "OUTPUT_RELEVANCE",
    "UnsupportedOperation",
    "PropagationResult",
    "Propagator",
    "describe_layers",
    "output_relevance_fn",
    "propagate",
]

RulesSpec = str | RuleMap | Mapping[RuleKey, Rule] | Sequence[tuple[RuleKey, Rule]]


@dataclass
class PropagationResult:
    """Relevance at the input (and at recorded layers) for every target.

    Shapes: with targets (N,) ``input_relevance`` is (N, C, H, W) and each
    ``layer_relevance[name]`` has the layer output's shape; with targets (N, K) a K axis
    follows N. ``layer_output[name]`` holds the recorded layers' outputs (no K axis).
    """

    input_relevance: Tensor | None
    layer_relevance: dict[str, Tensor]
    layer_output: dict[str, Tensor]
    logits: Tensor
    targets: Tensor


def _stack(
    records: list[PassRecord], shape: tuple[int, ...]
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Stack the passes' results into (N, *shape, ...) (``shape`` the target/vector axes)."""
    if not shape:
        return records[0].input_relevance, records[0].layer_relevance

    def stacked(parts: list[Tensor]) -> Tensor:
        out = torch.stack(parts, dim=1)
        return out.unflatten(1, shape)

    first = records[0].input_relevance
    relevance = None if first is None else stacked([r.input_relevance for r in records])
    layers = {
        name: stacked([r.layer_relevance[name] for r in records])
        for name in records[0].layer_relevance
    }
    return relevance, layers


def propagate(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec | Target,
    output_relevance: OutputRelevanceSpec = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    record: Iterable[str] = (),
    epsilon: float | None = None,
    attention: str | None = None,
    input_relevance: bool = True,
    masks: Mapping[str, Tensor] | None = None,
) -> PropagationResult:
    """Propagate an output relevance from the logits to the input with LRP rules.

    Parameters
    ----------
    model, x
        Classifier returning (N, classes) logits, and the (N, C, H, W) input batch.
    target
        Class indices (N,) or (N, K), an int, ``"predicted"`` or ``"second"``; resolved on the
        logits of the one forward pass (see :class:`sglrp.targets.Target`).
    output_relevance
        ``"lrp"``, ``"clrp"``, ``"sglrp"``, ``"relevance_cam"`` or a callable
        ``(logits, targets) -> (N, classes)`` (or (N, J, classes) for J vectors per target).
    rules, bounds, epsilon
        Rule preset or map, Z^B bounds and the epsilon of epsilon rules.
    record
        Module names whose output relevance (and output) to return; :data:`DEFAULT_LAYER`
        stands for the default CAM layer (reported under its name).
    attention
        ``"cp"`` (CP-LRP: attention weights constant) or ``"attnlrp"``; None: the preset's
        (``"epsilon-attnlrp"``) or ``"cp"``.
    input_relevance
        False: stop the backward passes at the recorded layers (``input_relevance`` is then
        None).
    masks
        Layer name -> (N, C) mask multiplying the relevance at the layer's output (restricted
        propagation through selected neurons; see :mod:`sglrp.neurons`).

    One forward pass serves all K targets (and J vectors); each vector costs one backward
    pass. Results have shape (N, [K,] [J,] ...).
    """
    check_model(model)
    check_input(x)
    target = Target.of(target)
    rule_map = resolve_rules(rules, x, bounds, epsilon)
    fn = output_relevance_fn(output_relevance)
    resolved: list[Tensor] = []
    axes: list[tuple[int, ...]] = []

    def vectors(logits: Tensor) -> list[Tensor]:
        columns, multi = target.columns(logits)
        resolved.append(columns if multi else columns[:, 0])
        out: list[Tensor] = []
        per_target = None
        for k in range(columns.shape[1]):
            vector = fn(logits, columns[:, k])
            if not (
                isinstance(vector, Tensor)
                and vector.ndim in (2, 3)
                and vector.shape[0] == logits.shape[0]
                and vector.shape[-1] == logits.shape[1]
            ):
                raise ValueError(
                    f"output relevance must have shape {tuple(logits.shape)} (or (N, J, "
                    f"{logits.shape[1]})), got "
                    f"{tuple(vector.shape) if isinstance(vector, Tensor) else type(vector)}"
                )
            parts = [vector] if vector.ndim == 2 else list(vector.unbind(1))
            per_target = (vector.ndim == 3, len(parts))
            out.extend(p.to(logits.dtype) for p in parts)
        shape = (columns.shape[1],) if multi else ()
        if per_target and per_target[0]:
            shape = (*shape, per_target[1])
        axes.append(shape)
        return out

    with frozen(model):
        propagator = Propagator(model, rule_map, attention or rule_map.attention or "cp")
        run = propagator.run(x, vectors, record, input_relevance=input_relevance, masks=masks)
    relevance, layers = _stack(run.records, axes[-1])
    return PropagationResult(relevance, layers, run.layer_output, run.logits, resolved[-1])


def neuron_sites(
    model: nn.Module,
    x: Tensor,
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    epsilon: float | None = None,
) -> dict[str, str]:
    """Conv/linear layer name -> name of the module whose output carries its neurons: the
    layer itself, or the batch norm that the engine merges into it (one forward pass)."""
    check_model(model)
    check_input(x)
    with frozen(model):
        return Propagator(model, resolve_rules(rules, x, bounds, epsilon)).neuron_sites(x)
