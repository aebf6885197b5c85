"""Relevance propagation: the engine behind the LRP family of methods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import TargetSpec, check_input, check_model, resolve_targets
from .._guard import preserved
from ..presets import Bounds, resolve_rules
from ..rules import Rule, RuleKey, RuleMap
from .engine import PassRecord, Propagator, describe_layers
from .output import OUTPUT_RELEVANCE, OutputRelevance, output_relevance_fn

__all__ = [
    "OUTPUT_RELEVANCE",
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

    input_relevance: Tensor
    layer_relevance: dict[str, Tensor]
    layer_output: dict[str, Tensor]
    logits: Tensor
    targets: Tensor


def _stack(records: list[PassRecord], multi: bool) -> tuple[Tensor, dict[str, Tensor]]:
    if not multi:
        return records[0].input_relevance, records[0].layer_relevance
    relevance = torch.stack([r.input_relevance for r in records], dim=1)
    layers = {
        name: torch.stack([r.layer_relevance[name] for r in records], dim=1)
        for name in records[0].layer_relevance
    }
    return relevance, layers


def propagate(
    model: nn.Module,
    x: Tensor,
    targets: TargetSpec,
    output_relevance: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    record: Iterable[str] = (),
    epsilon: float | None = None,
) -> PropagationResult:
    """Propagate an output relevance from the logits to the input with LRP rules.

    Parameters
    ----------
    model, x
        Classifier returning (N, classes) logits, and the (N, C, H, W) input batch.
    targets
        Class indices (N,) or (N, K), an int, ``"predicted"`` or ``"second"``; resolved on the
        logits of the one forward pass (see :func:`sglrp._checks.resolve_targets`).
    output_relevance
        ``"lrp"``, ``"clrp"``, ``"sglrp"`` or a callable ``(logits, targets) -> (N, classes)``.
    rules, bounds, epsilon
        Rule preset or map, Z^B bounds and the epsilon of epsilon rules.
    record
        Module names whose output relevance (and output) to return.

    One forward pass serves all K targets; each target costs one backward pass.
    """
    check_model(model)
    check_input(x)
    rule_map = resolve_rules(rules, x, bounds, epsilon)
    fn = output_relevance_fn(output_relevance)
    resolved: list[Tensor] = []

    def vectors(logits: Tensor) -> list[Tensor]:
        columns = resolve_targets(targets, logits)
        resolved.append(columns)
        if columns.ndim == 1:
            columns = columns[:, None]
        out = []
        for k in range(columns.shape[1]):
            vector = fn(logits, columns[:, k])
            if vector.shape != logits.shape:
                raise ValueError(
                    f"output relevance must have the logits' shape {tuple(logits.shape)}, "
                    f"got {tuple(vector.shape)}"
                )
            out.append(vector.to(logits.dtype))
        return out

    with preserved(model) as hooks:
        propagator = Propagator(model, rule_map)
        logits, records, outputs = propagator.run(x, vectors, hooks, record)
    relevance, layers = _stack(records, resolved[-1].ndim == 2)
    return PropagationResult(relevance, layers, outputs, logits, resolved[-1])
