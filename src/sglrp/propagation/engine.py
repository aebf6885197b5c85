"""One-pass relevance propagation.

Design: the backward pass carries the *relevance per unit of activation*,
:math:`s = R / a`, which is what the ordinary gradient carries for LRP-0. A layer with a rule
keeps its forward value :math:`z` but takes its backward from the rule: in the forward pass it
stores the ratio :math:`z / d` of its output to the rule's denominator, and in the backward
pass it maps :math:`s_{out}` to :math:`s_{in} = \\sum W_{mod}^T (s_{out}\\, z / d)`. Every
operation of the forward pass gets its treatment from the :class:`.Interceptor` (rules for
linear maps, the identity rule for elementwise nonlinearities, gates, normalisation with a
constant standard deviation, attention); operations that are linear in the activations
(sums, pooling, reshapes, concatenation) keep their ordinary gradient, which in this form is
exact proportional redistribution: residual sums split relevance in proportion to their
summands and concatenations route it to their parts, without model-specific canonizers.
Anything else is refused by :func:`.graphcheck.check_graph`. The input relevance is
:math:`R = x \\odot s_x`.

Cost: one extra forward convolution per rule layer and one transposed convolution per active
branch in the backward pass; the normal backward is never computed, and the negative-input
branch of z+ is skipped when the layer input is non-negative.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._guard import HookSet
from ..feature_layer import LayerChain
from ..rules import Gradient, LinearRule, Rule, RuleMap
from ..validation import check_logits
from .graphcheck import UnsupportedOperation, check_graph
from .interceptor import Interceptor, Treatment
from .layers import LINEAR_TYPES, WeightCache, current_cache

__all__ = ["DEFAULT_LAYER", "PassRecord", "Propagator", "RunResult", "describe_layers"]

DEFAULT_LAYER = "<default CAM layer>"
"""A ``record`` entry that stands for the default CAM layer (:class:`sglrp.methods.LayerChain`),
found during the propagation's own forward pass."""


@dataclass
class PassRecord:
    """Results of one backward pass (one output relevance vector)."""

    input_relevance: Tensor | None
    layer_relevance: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class RunResult:
    """What :meth:`Propagator.run` returns."""

    logits: Tensor
    records: list[PassRecord]
    layer_output: dict[str, Tensor]
    treatments: list[Treatment] | None = None
    problems: list[str] = field(default_factory=list)
    no_rule: list[str] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=dict)


def describe_layers(model: nn.Module, limit: int = 40) -> str:
    """``available layers: a, b, ...`` for error messages, shortened for large models."""
    names = [name for name, _ in model.named_modules() if name]
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"available layers: {shown}{more}"


class Propagator:
    """Assigns rules to a model's operations and runs forward + rule backward passes.

    Parameters
    ----------
    model
        Any ``nn.Module`` returning (N, classes) logits.
    rule_map
        Which rule each layer gets (first match wins); ``rule_map.first`` overrides the rule of
        the first linear layer in execution order.
    attention
        ``"cp"`` (attention weights constant) or ``"attnlrp"``.
    """

    #: K output relevance vectors in one vectorised backward pass (when no layer is recorded)
    #: for batches of at most this many images, else K passes. Measured on VGG16 (RESULTS.md,
    #: "K targets"): vectorised, one image's dense layers read their weights once for all K
    #: (K = 5: 1.39 s vs 1.56 s); at 8 images the convolutions dominate and the vectorised
    #: passes cost copies that K passes do not (K = 5: 12.7 s vs 10.6 s) and K times the memory.
    vectorise_targets_up_to: int = 1

    def __init__(
        self,
        model: nn.Module,
        rule_map: RuleMap,
        attention: str = "cp",
        cache: WeightCache | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.rule_map = rule_map
        self.attention = attention
        self.names: dict[nn.Module, str] = {}
        for name, module in model.named_modules():
            self.names.setdefault(module, name or type(model).__name__)
        self.by_name = {name: module for module, name in self.names.items()}
        self._check_rule_map()

    def _check_rule_map(self) -> None:
        """Named entries must name layers; linear rules go to linear layers and vice versa."""
        for key, _rule in self.rule_map.entries:
            if isinstance(key, str) and not self.rule_map.matches_any(key, self.by_name):
                raise ValueError(
                    f"the rule map names layer {key!r}, which the model does not have; "
                    f"{describe_layers(self.model)}"
                )
        for module, name in self.names.items():
            if next(iter(module.children()), None) is not None:
                continue
            rule = self.rule_map.rule_for(name, module)
            if isinstance(module, LINEAR_TYPES) and not isinstance(
                rule, LinearRule | Gradient | None
            ):
                raise ValueError(
                    f"layer '{name}' ({type(module).__name__}) got rule {rule.name}, which is for "
                    "elementwise layers; use a linear rule such as ZPlus or Epsilon"
                )
            if isinstance(rule, LinearRule) and not isinstance(module, LINEAR_TYPES):
                raise ValueError(
                    f"layer '{name}' ({type(module).__name__}) got the linear rule {rule.name}; "
                    "linear rules apply to Linear and Conv layers (and the BatchNorm merged into "
                    "them); use Pass() or Gradient() here"
                )

    def unmatched_entries(self) -> list[str]:
        """Rule-map entries (by type) that match no module of the model."""
        out = []
        for key, rule in self.rule_map.entries:
            if not isinstance(key, str) and not any(isinstance(m, key) for m in self.names):
                out.append(f"({getattr(key, '__name__', key)}, {rule.name})")
        return out

    # -- one run ----------------------------------------------------------------------------

    def run(
        self,
        x: Tensor,
        relevance_vectors: Callable[[Tensor], Sequence[Tensor]],
        record: Iterable[str] = (),
        input_relevance: bool = True,
        inspect: bool = False,
        masks: Mapping[str, Tensor] | None = None,
    ) -> RunResult:
        """Forward once, then one rule backward pass per output relevance vector.

        ``record`` names modules whose output relevance (and output) to keep; the entry
        :data:`DEFAULT_LAYER` stands for the default CAM layer, reported under its own name.
        With ``input_relevance=False`` the backward passes stop at the recorded layers.
        With ``inspect`` no backward runs: the result lists every operation's treatment and
        the unsupported ones instead of raising. ``masks`` maps layer names to (N, C) masks
        that multiply the relevance arriving at the layer's output (restricted propagation;
        relevance recorded there is the masked one).
        """
        record = tuple(record)
        masks = dict(masks or {})
        missing = [r for r in (*record, *masks) if r != DEFAULT_LAYER and r not in self.by_name]
        if missing:
            raise ValueError(f"unknown layer {missing[0]!r}; {describe_layers(self.model)}")
        last_pass = [True]
        # modified weights live from the forward to the last backward pass (or, with a cache
        # of the caller's, as long as the caller keeps it)
        cache = self.cache if self.cache is not None else current_cache()
        if cache is None:
            cache = WeightCache()
        it = Interceptor(
            self.rule_map, self.names, self.attention, last_pass, log=inspect, cache=cache
        )
        it.image_shape = x.shape
        x_in = x.detach().requires_grad_(True)
        with HookSet() as hooks:
            self._hook(hooks, it, record, masks)
            with torch.enable_grad():
                x_model = x_in.clone()  # in-place operations of the model never reach x_in
                it.layout[id(x_model)] = x_model
                with it:
                    logits = self.model(x_model)
            logits = check_logits(logits, x.shape[0])
            start_with_relevance = it.finish(logits)
        chosen = self._chosen_records(it, record)
        problems = check_graph(logits, it.sites, allow_softmax=self.attention == "attnlrp")
        if inspect:
            return RunResult(
                logits.detach(),
                [],
                {},
                it.treatments,
                [p.message() for p in problems],
                it.unmatched_linear,
                it.merged,
            )
        if problems:
            raise UnsupportedOperation(problems[0].message())
        if it.unmatched_linear:
            warnings.warn(
                f"no rule matches {len(it.unmatched_linear)} linear layer(s) "
                f"({', '.join(dict.fromkeys(it.unmatched_linear[:3]))}"
                f"{', ...' if len(it.unmatched_linear) > 3 else ''}); they use their gradient "
                "(LRP-0 with bias). Add a rule, or Gradient() to say so",
                RuntimeWarning,
                stacklevel=4,
            )
        vectors = list(relevance_vectors(logits.detach()))
        records = self._backward(
            x_in, it, logits, vectors, chosen, start_with_relevance, input_relevance, last_pass
        )
        outputs = {label: it.recorded[tap] for label, tap in chosen.items()}
        return RunResult(logits.detach(), records, outputs)

    def _hook(
        self,
        hooks: HookSet,
        it: Interceptor,
        record: tuple[str, ...],
        masks: Mapping[str, Tensor],
    ) -> None:
        """Module stack for the interceptor, taps at the recorded layers and masks (the masks'
        hooks after the taps', so that a tap sits below its mask and sees masked relevance)."""

        def push(module: nn.Module, args: Any) -> None:
            it.stack.append(module)

        def pop(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.grad_fn is not None:
                it.attribute(output.grad_fn, module)  # e.g. a custom autograd.Function's node
            if it.stack and it.stack[-1] is module:
                it.stack.pop()

        for module in self.names:
            hooks.add(module.register_forward_pre_hook(push))
            hooks.add(module.register_forward_hook(pop, always_call=True))
        for name in record:
            if name == DEFAULT_LAYER:
                self._hook_default_layer(hooks, it)
                continue

            def tap(module: nn.Module, args: Any, output: Any, _name: str = name) -> Tensor:
                return it.tap(_name, output)

            hooks.add(self.by_name[name].register_forward_hook(tap))
        for name, mask in masks.items():

            def restrict(
                module: nn.Module, args: Any, output: Any, _name: str = name, _mask: Tensor = mask
            ) -> Tensor:
                return it.mask(_name, output, _mask)

            hooks.add(self.by_name[name].register_forward_hook(restrict))

    def neuron_sites(self, x: Tensor) -> dict[str, str]:
        """Linear layer -> the module whose output carries its neurons: the layer itself, or
        the batch norm merged into it (from one inspecting forward pass)."""
        it_merged = self.run(x, lambda logits: [], inspect=True).merged
        return {
            name: it_merged.get(name, name)
            for module, name in self.names.items()
            if isinstance(module, LINEAR_TYPES)
        }

    def _hook_default_layer(self, hooks: HookSet, it: Interceptor) -> None:
        chain = LayerChain()
        it.default_chain = chain

        def follow(module: nn.Module, args: Any, output: Any) -> Tensor | None:
            name = self.names[module]
            if not chain.accepts(name, module, args, output):
                return None
            tapped = it.tap(f"{DEFAULT_LAYER}{name}", output)
            chain.move(name, tapped)
            return tapped

        for module in self.names:
            if module is not self.model:
                hooks.add(module.register_forward_hook(follow))

    def _chosen_records(self, it: Interceptor, record: tuple[str, ...]) -> dict[str, str]:
        """Label (a recorded name) -> tap name."""
        chosen = {}
        for name in record:
            if name != DEFAULT_LAYER:
                if name not in it.recorded:
                    raise ValueError(
                        f"layer {name!r} does not run in the model's forward pass (its module "
                        "is never called; e.g. nn.MultiheadAttention uses out_proj's weight "
                        "directly); record another layer"
                    )
                chosen[name] = name
                continue
            chain = getattr(it, "default_chain", None)
            if chain is None or chain.name is None:
                raise ValueError(
                    "the model has no nn.Conv2d that runs in its forward pass; pass layer=<module "
                    "name>"
                )
            chosen[chain.name] = f"{DEFAULT_LAYER}{chain.name}"
        return chosen

    def _backward(
        self,
        x_in: Tensor,
        it: Interceptor,
        logits: Tensor,
        vectors: list[Tensor],
        chosen: dict[str, str],
        start_with_relevance: bool,
        input_relevance: bool,
        last_pass: list[bool],
    ) -> list[PassRecord]:
        # without input relevance the backward stops at the recorded layers, unless a tapped
        # output was changed in place afterwards (then its tap's sink is read instead)
        stop_at = {
            tap: it.tapped[tap]
            for tap in chosen.values()
            if not input_relevance and it.tapped[tap]._version == it.tapped_version[tap]
        }
        needs_input = input_relevance or len(stop_at) < len(chosen)
        inputs = [*([x_in, *it.sinks] if needs_input else []), *stop_at.values()]
        z = logits.detach()
        grad_outs = [
            vector if start_with_relevance else torch.where(z == 0, torch.zeros_like(z), vector / z)
            for vector in vectors
        ]
        vectorise = x_in.shape[0] <= self.vectorise_targets_up_to
        if len(grad_outs) > 1 and not chosen and vectorise:
            return self._backward_batched(x_in, it, logits, grad_outs, inputs, last_pass)
        records: list[PassRecord] = []
        for k, grad_out in enumerate(grad_outs):
            for sink in it.taps.values():
                sink.clear()
            last_pass[0] = k == len(grad_outs) - 1
            grads = torch.autograd.grad(
                logits,
                inputs,
                grad_outputs=grad_out,
                retain_graph=k < len(grad_outs) - 1,
                allow_unused=True,
            )
            relevance = None
            if input_relevance:
                head = grads[: len(grads) - len(stop_at)]
                relevance = self._input_relevance(x_in, head)
            stopped = dict(zip(stop_at, grads[len(grads) - len(stop_at) :], strict=True))
            layers = {}
            for label, tap in chosen.items():
                value = it.recorded[tap]
                parts = [stopped[tap]] if tap in stopped else it.taps[tap]
                parts = [g for g in parts if g is not None]
                total = sum(parts[1:], parts[0]) if parts else torch.zeros_like(value)
                at_logits = start_with_relevance and it.tapped[tap] is logits
                layers[label] = total.detach() if at_logits else (value * total).detach()
            records.append(PassRecord(relevance, layers))
        return records

    def _backward_batched(
        self,
        x_in: Tensor,
        it: Interceptor,
        logits: Tensor,
        grad_outs: list[Tensor],
        inputs: list[Tensor],
        last_pass: list[bool],
    ) -> list[PassRecord]:
        """All output relevance vectors in one backward pass, vectorised over them
        (``is_grads_batched``): the transposed convolutions run once on K x N images."""
        last_pass[0] = True
        last_pass.append(True)  # batched: the rules' backward must not work in place
        try:
            grads = torch.autograd.grad(
                logits,
                inputs,
                grad_outputs=torch.stack(grad_outs),
                allow_unused=True,
                is_grads_batched=True,
            )
        finally:
            last_pass.pop()
        per_vector = [[None if g is None else g[k] for g in grads] for k in range(len(grad_outs))]
        return [PassRecord(self._input_relevance(x_in, g), {}) for g in per_vector]

    @staticmethod
    def _input_relevance(x_in: Tensor, grads: Sequence[Tensor | None]) -> Tensor:
        """:math:`x \\odot s_x` plus the relevance of rules in relevance form (their sinks)."""
        base = grads[0]
        relevance = torch.zeros_like(x_in) if base is None else x_in.detach() * base
        for g in grads[1:]:
            if g is not None:  # a sink, in the image's memory order
                relevance = relevance + g.reshape(x_in.shape)
        return relevance.detach()


def rule_kind(rule: Rule | None) -> str:
    """A short name for a rule in messages."""
    if rule is None:
        return "none"
    if isinstance(rule, Gradient):
        return "gradient"
    return rule.name
