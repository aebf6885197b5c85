"""The forward pass of a propagation: every operation on activations gets its LRP treatment.

:class:`Interceptor` is a :class:`torch.overrides.TorchFunctionMode`: it sees every torch
function the model calls, whatever its spelling (module, ``torch.nn.functional``, tensor
method, operator), and gives each one that acts on activations its treatment:

* ``F.linear`` / ``F.convNd`` with constant weights: the rule of the module that calls it
  (a :class:`~sglrp.propagation.nodes.RuleNode`); an eval-mode batch norm applied directly to
  its output is merged into it, and an in-place ReLU directly after it is folded into it;
* elementwise nonlinearities (SiLU, GELU, sigmoid, tanh, hard-swish, ...): the identity rule;
* a product of two activations: the gating rule (:class:`~sglrp.rules.Gate`, the default:
  the factor from a sigmoid or hard-sigmoid, or the broadcast one, is a constant gate) or the
  uniform rule (:class:`~sglrp.rules.Uniform`);
* LayerNorm, GroupNorm, instance and RMS norm: the standard deviation held constant;
* softmax (attention weights): constant under CP-LRP, its gradient (AttnLRP's softmax rule)
  under AttnLRP; ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` are
  decomposed so that their projections get rules;
* max pooling: all relevance to the winner (or :class:`~sglrp.rules.ProportionalPool`).

Everything else keeps its ordinary gradient, which in the backward pass's form (relevance
per unit of activation) is exact proportional redistribution for operations linear in the
activations (sums, means, pooling, reshapes, concatenation, constant scaling). What the
engine cannot treat is found afterwards in the autograd graph (:mod:`.graphcheck`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..rules import (
    Gradient,
    LinearRule,
    Pass,
    Rule,
    RuleMap,
)
from .graphcheck import Site, judge
from .layers import LinearOp, WeightCache
from .nodes import (
    UNSAVED_OUTPUTS,
    FusedRelu,
    GradMask,
    PassNode,
    RuleNode,
    Tap,
)
from .operations import (
    ACTIVATIONS,
    ATTENTION_MODES,
    LINEAR_KINDS,
    MATMULS,
    METADATA,
    NORMS,
    PRODUCTS,
    RELUS,
    REORDERLESS,
    SHIFTS,
    SOFTMAXES,
    TRANSPOSED,
    active,
    bind,
    bind_linear,
    tensors,
)
from .state import RuleState, check_within, normalise_bound
from .treatments import NonlinearTreatments


@dataclass
class Treatment:
    """One row of :func:`sglrp.inspect`: an operation and what the engine does with it."""

    index: int
    module: str
    module_type: str
    op: str
    treatment: str


@dataclass
class Pending:
    """A rule node whose ratios are computed when its output is first used.

    Deferring lets an eval-mode batch norm that directly follows be merged into the layer
    and an in-place ReLU be folded into its ratios.
    """

    out: Tensor
    version: int
    state: RuleState
    layer_input: Tensor
    input_version: int
    sink: Tensor | None
    taps: list[str] = field(default_factory=list)
    masks: list[tuple[str, Tensor]] = field(default_factory=list)
    module: str = ""
    superseded: bool = False


class Interceptor(NonlinearTreatments, TorchFunctionMode):
    """The treatments of one forward pass (see the module docstring).

    Parameters
    ----------
    rule_map
        Rules by module name or type; ``rule_map.first`` overrides the first linear layer.
    names
        Module -> name.
    attention_mode
        ``"cp"`` or ``"attnlrp"``.
    last_pass
        Shared with the rule states (see :class:`RuleState`).
    log
        Keep a :class:`Treatment` per operation (for :func:`sglrp.inspect`).
    """

    def __init__(
        self,
        rule_map: RuleMap,
        names: dict[nn.Module, str],
        attention_mode: str,
        last_pass: list[bool],
        log: bool = False,
        cache: WeightCache | None = None,
    ) -> None:
        super().__init__()
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(
                f"unknown attention treatment {attention_mode!r}; use 'cp' (CP-LRP, attention "
                "weights constant) or 'attnlrp'"
            )
        self.rule_map = rule_map
        self.cache = cache
        self.names = names
        self.attention = attention_mode
        self.last_pass = last_pass
        self.stack: list[nn.Module] = []
        self.pending: dict[int, Pending] = {}
        self.last: Pending | None = None
        self.first_input: Tensor | None = None
        self.image_shape: torch.Size | None = None
        self.layout: dict[int, Tensor] = {}  # tensors holding the image's values in its order
        self.sinks: list[Tensor] = []
        self.gates: dict[int, Tensor] = {}
        self.sites: dict[int, tuple[str, Site]] = {}
        self.kept: list[Any] = []  # grad_fn nodes whose site says gradient_ok
        self.treatments: list[Treatment] | None = [] if log else None
        self.unmatched_linear: list[str] = []
        self.taps: dict[str, list[Tensor]] = {}
        self.recorded: dict[str, Tensor] = {}
        self.tapped: dict[str, Tensor] = {}
        self.tapped_version: dict[str, int] = {}
        self.merged: dict[str, str] = {}  # linear layer (where) -> module of its merged norm
        self.quiet = False
        self._rules: dict[tuple[int, type | None], Rule | None] = {}

    # -- sites and rules --------------------------------------------------------------------

    def module(self) -> nn.Module | None:
        return self.stack[-1] if self.stack else None

    def rule_of(self, module: nn.Module | None) -> Rule | None:
        if module is None:
            return None
        key = (id(module), None)
        if key not in self._rules:
            self._rules[key] = self.rule_map.rule_for(self.names[module], module)
        return self._rules[key]

    def site(self, op: str) -> Site:
        module = self.module()
        name = self.names[module] if module is not None else ""
        gradient_ok = any(isinstance(self.rule_of(m), Gradient) for m in self.stack)
        return Site(op, name, type(module).__name__ if module is not None else "", gradient_ok)

    def note(self, op: str, treatment: str) -> None:
        if self.treatments is not None:
            site = self.site(op)
            self.treatments.append(
                Treatment(len(self.treatments), site.module, site.module_type, op, treatment)
            )

    def _record(self, result: Any, op: str) -> None:
        site = None
        for t in tensors(result if isinstance(result, tuple | list) else (result,)):
            node = t.grad_fn
            if node is None:
                continue
            site = site or self.site(op)
            self.sites[id(node)] = (type(node).__name__, site)
            if site.gradient_ok:
                self.kept.append(node)

    def attribute(self, node: Any, module: nn.Module) -> None:
        """Attribute a module's output node to the module if no operation claimed it."""
        if id(node) not in self.sites:
            self.sites[id(node)] = (type(node).__name__, self.site(type(node).__name__))

    def linear_rule(self, kind: type[nn.Module], where: str) -> Rule | None:
        """The rule of a linear op: the calling module's, else the first entry of its kind."""
        module = self.module()
        rule = self.rule_of(module)
        if not isinstance(rule, LinearRule | Gradient):
            if rule is not None and not isinstance(rule, Gradient):
                raise ValueError(
                    f"{where} got the rule {rule.name}, which is not a rule for linear layers; "
                    "use a linear rule such as ZPlus or Epsilon, or Gradient()"
                )
            rule = self.rule_map.rule_for_type(kind)
        return rule

    # -- lazily computed ratios -------------------------------------------------------------

    def finalize(
        self, pending: Pending, start_from_relevance: bool = False, relu: bool = False
    ) -> None:
        """Compute the ratios of a pending rule node (its output is about to be used);
        ``relu`` folds an in-place ReLU on its output in (and applies it)."""
        self.pending.pop(id(pending.out), None)
        if pending.layer_input._version != pending.input_version:
            raise RuntimeError(
                f"the input of layer '{pending.state.name}' was changed in place after the "
                "layer, before its output was used; the rules need the input as the layer saw "
                "it (avoid the in-place operation, or assign the layer Gradient())"
            )
        x, value = pending.layer_input.detach(), pending.out.detach()
        with torch.no_grad():
            if start_from_relevance:
                pending.state.start_from_relevance(x, value)
            else:
                pending.state.compute_ratios(x, value, relu=relu)

    def consume(self, args: tuple, kwargs: dict) -> None:
        """Finalize every pending rule node whose output this call uses."""
        if not self.pending:
            return
        for t in tensors((*args, *kwargs.values())):
            pending = self.pending.get(id(t))
            if pending is not None and pending.out is t:
                self.finalize(pending)

    def finish(self, logits: Tensor) -> bool:
        """End of the forward pass: finalize what is left; True if the logits come straight
        from a rule layer (then the backward starts with relevance, not relevance / z)."""
        start = False
        for pending in list(self.pending.values()):
            if pending.out is logits and not pending.superseded:
                self.finalize(pending, start_from_relevance=True)
                start = True
            elif not pending.superseded:
                self.finalize(pending)
        self.pending.clear()
        self.last = None
        return start

    # -- dispatch ---------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in METADATA or self.quiet:
            return func(*args, **kwargs)
        last, self.last = self.last, None
        if not any(active(t) for t in tensors((*args, *kwargs.values()))):
            self.consume(args, kwargs)
            return func(*args, **kwargs)
        handler = self._handler(func, name)
        if handler is None:
            self.consume(args, kwargs)
            result = func(*args, **kwargs)
            if name in REORDERLESS and args and self.layout.get(id(args[0])) is args[0]:
                self.layout[id(result)] = result
            if self.treatments is not None:
                node = getattr(result, "grad_fn", None)
                why = None if node is None else judge(node, self.attention == "attnlrp")
                self.note(name, "gradient" if why is None else f"unsupported: {why}")
        else:
            result = handler(func, args, kwargs, last)
        self._record(result, name)
        return result

    def _handler(self, func: Callable, name: str) -> Callable | None:
        if func in LINEAR_KINDS:
            return self._linear
        if func is F.batch_norm:
            return self._batch_norm
        if func in TRANSPOSED:
            return self._transposed
        if func in RELUS:
            return self._relu
        if func in ACTIVATIONS:
            return self._activation
        if func in PRODUCTS:
            return self._product
        if func in MATMULS:
            return self._matmul
        if func in SOFTMAXES:
            return self._softmax
        if func in NORMS:
            return self._norm
        if func is F.glu:
            return self._glu
        if func in SHIFTS and self.first_input is None:
            return self._preprocessing
        if func is F.scaled_dot_product_attention:
            return self._sdpa
        if func is F.multi_head_attention_forward:
            return self._mha
        if name == "max_pool2d":
            return self._max_pool
        return None

    # -- linear layers, batch norm, ReLU ----------------------------------------------------

    def rule_node(
        self,
        op: LinearOp,
        rule: LinearRule,
        layer_input: Tensor,
        value: Tensor,
        where: str,
    ) -> Tensor:
        """Wrap ``value`` (the layer's output) in a pending rule node."""
        if rule.relevance_form and (
            layer_input is not self.first_input
            or self.layout.get(id(layer_input)) is not layer_input
        ):
            raise ValueError(
                f"rule {rule.name} on {where} needs the image itself as the layer's input "
                f"(shape {tuple(self.image_shape or ())}, or a reshape of it), got shape "
                f"{tuple(layer_input.shape)}; "
                "apply it only to a first layer that sees the image, or choose rules without "
                "it (e.g. 'lrp0', 'epsilon')"
            )
        nonneg = bool(layer_input.min() >= 0) if rule.needs_sign else False
        state = RuleState(
            op=op,
            rule=rule,
            input_shape=layer_input.shape,
            nonneg=nonneg,
            name=where,
            last_pass=self.last_pass,
        )
        if rule.relevance_form or (not nonneg and rule.needs_sign):
            state.x = layer_input.detach()
        if rule.bounds() is not None:
            low, high = rule.bounds()
            if low is None:  # the input's own per-image, per-channel range
                seen = layer_input.detach()
                # (N, C, ...) per channel; a dense layer's (N, F) per image
                flat = seen.flatten(2) if seen.dim() > 2 else seen.unsqueeze(1)
                low, high = flat.amin(dim=2), flat.amax(dim=2)
            state.bounds = (normalise_bound(low, layer_input), normalise_bound(high, layer_input))
            check_within(layer_input.detach(), *state.bounds, where)
        sink = None
        if rule.relevance_form:
            sink = torch.zeros((), dtype=layer_input.dtype, device=layer_input.device)
            sink = sink.expand_as(layer_input).detach().requires_grad_(True)
            self.sinks.append(sink)
        out = RuleNode.apply(layer_input, sink, value.detach(), state)
        pending = Pending(out, out._version, state, layer_input, layer_input._version, sink)
        pending.module = self.stack_name()
        self.pending[id(out)] = pending
        self.last = pending
        return out

    def _linear(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        bound = bind_linear(func, args, kwargs)
        x, weight = bound["input"], bound["weight"]
        if not active(x) or active(weight) or active(bound.get("bias")):
            result = func(*args, **kwargs)
            self.note(func.__name__, "gradient (weights depend on the input)")
            return result
        where = self._where(func.__name__)
        if func is F.linear:
            op = LinearOp.linear(weight, bound.get("bias"), self.cache)
        else:
            op = LinearOp.conv(
                weight,
                bound.get("bias"),
                bound.get("stride", 1),
                bound.get("padding", 0),
                bound.get("dilation", 1),
                bound.get("groups", 1),
                where,
                self.cache,
            )
        return self.linear_node(op, x, func(*args, **kwargs), LINEAR_KINDS[func], func.__name__)

    def linear_node(
        self, op: LinearOp, x: Tensor, value: Tensor, kind: type[nn.Module], name: str
    ) -> Tensor:
        """``value = op(x)`` with the rule of the calling module (or of ``kind``), or of the
        rule map's first layer if it is the first linear map applied to activations."""
        where = self._where(name)
        first = self.first_input is None
        if first:
            self.first_input = x
        rule = self.rule_map.first if first and self.rule_map.first is not None else None
        rule = rule or self.linear_rule(kind, where)
        if rule is None or isinstance(rule, Gradient):
            if rule is None:
                self.unmatched_linear.append(where)
            self.note(name, "gradient (LRP-0 with bias)" + ("" if rule else ": no rule"))
            return value
        self.note(name, f"rule {_describe(rule)}")
        return self.rule_node(op, rule, x, value, where)

    def _transposed(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        if not isinstance(self.rule_of(self.module()), Gradient):  # asked for: no warning
            self.unmatched_linear.append(f"{self._where(func.__name__)}, transposed")
        self.note(func.__name__, "gradient (LRP-0 with bias): no rules for transposed maps")
        return func(*args, **kwargs)

    def _preprocessing(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        operands = [a for a in args[:2] if isinstance(a, Tensor)]
        active = [a for a in operands if a.requires_grad]
        if len(active) != 1:
            return func(*args, **kwargs)
        x = active[0]
        with torch.no_grad():
            value = func(*args, **kwargs) if not func.__name__.endswith("_") else None
        inplace = func.__name__.endswith("_") or func.__name__.startswith("__i")
        if inplace:
            with torch.no_grad():
                value = x.clone()
                getattr(value, func.__name__)(*args[1:], **kwargs)
        out = PassNode.apply(x, value, Pass().epsilon(x.dtype))
        self.note(func.__name__, "identity rule (preprocessing before the first layer)")
        if inplace:
            x.copy_(out)
            out = x
        if self.layout.get(id(x)) is x:
            self.layout[id(out)] = out
        return out

    def _batch_norm(self, func, args, kwargs, last):
        bound = bind(
            (
                "input",
                "running_mean",
                "running_var",
                "weight",
                "bias",
                "training",
                "momentum",
                "eps",
            ),
            args,
            kwargs,
        )
        x = bound["input"]
        if bound.get("training", False) or bound.get("running_mean") is None:
            raise ValueError(
                f"batch norm in {self._where('batch_norm')} normalises with the batch's own "
                "statistics (no running statistics), so each image's explanation would depend on "
                "the others; use running statistics (track_running_stats=True)"
            )
        if self.first_input is None and active(x):
            with torch.no_grad():
                value = func(*args, **kwargs)
            self.note("batch_norm", "identity rule (preprocessing before the first layer)")
            out = PassNode.apply(x, value, Pass().epsilon(x.dtype))
            if self.layout.get(id(x)) is x:
                self.layout[id(out)] = out
            return out
        value = func(*args, **kwargs)
        fresh = last is not None and x is last.out and x._version == last.version
        if not (fresh and isinstance(last.state.rule, LinearRule)) or active(bound.get("weight")):
            self.consume(args, kwargs)
            self.note("batch_norm", "gradient (affine with running statistics)")
            return value
        op = last.state.op.merged(
            bound["running_mean"],
            bound["running_var"],
            bound.get("weight"),
            bound.get("bias"),
            float(bound.get("eps", 1e-5)),
        )
        last.superseded = True
        self.note("batch_norm", f"merged into {last.state.name}")
        out = self.rule_node(op, last.state.rule, last.layer_input, value, last.state.name)
        self.pending[id(out)].module = last.module
        for name in last.taps:  # relevance is the same on both sides of the pair
            out = self.tap(name, out)
        for name, mask in last.masks:
            out = self.mask(name, out, mask)
        self.merged[last.module] = self.stack_name()
        return out

    def stack_name(self) -> str:
        module = self.module()
        return self.names[module] if module is not None else ""

    def mask(self, name: str, output: Tensor, mask: Tensor) -> Tensor:
        """Multiply the relevance arriving at ``output`` (layer ``name``) by a per-channel
        ``mask`` (N, C) in the backward pass."""
        if output.ndim < 2 or output.shape[1] != mask.shape[1] or output.shape[0] != mask.shape[0]:
            raise ValueError(
                f"the mask of layer {name!r} selects among {mask.shape[1]} neurons of "
                f"{mask.shape[0]} images but the layer output has shape {tuple(output.shape)}; "
                "give (N, C) with one entry per output channel"
            )
        self.quiet = True
        try:
            view = mask.to(output.dtype).view(*mask.shape, *([1] * (output.ndim - 2)))
            inplace = output.grad_fn is None or isinstance(output.grad_fn, UNSAVED_OUTPUTS)
            masked = GradMask.apply(output, view, inplace)
        finally:
            self.quiet = False
        pending = self.pending.get(id(masked))
        if pending is not None and pending.out is masked:
            pending.version = masked._version
            pending.masks.append((name, mask))
        return masked

    def tap(self, name: str, output: Tensor) -> Tensor:
        """Record the relevance arriving at ``output`` (a module's output) under ``name``."""
        self.quiet = True  # the calls below are the engine's own, not the model's
        try:
            sink = self.taps.setdefault(name, [])
            self.recorded[name] = output.detach().clone()
            inplace = output.grad_fn is None or isinstance(output.grad_fn, UNSAVED_OUTPUTS)
            tapped = Tap.apply(output, sink, inplace)
        finally:
            self.quiet = False
        self.tapped[name] = tapped
        self.tapped_version[name] = tapped._version
        pending = self.pending.get(id(tapped))
        if pending is not None and pending.out is tapped:
            pending.version = tapped._version
            pending.taps.append(name)
        return tapped

    def _relu(self, func, args, kwargs, last):
        x = args[0] if args else kwargs["input"]
        inplace = RELUS[func] or (
            func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        )
        fresh = last is not None and x is last.out and x._version == last.version
        # a tapped output must keep the ReLU above the tap: folding the mask into the rule's
        # ratios would apply it below the recorded relevance
        if inplace and fresh and not last.taps:
            self.finalize(last, relu=True)
            self.note(func.__name__, f"identity, folded into {last.state.name}")
            return FusedRelu.apply(x)
        self.consume(args, kwargs)
        self.note(func.__name__, "identity (its gradient)")
        return func(*args, **kwargs)

    def _where(self, op: str) -> str:
        module = self.module()
        if module is None:
            return f"operation {op} in the model's forward"
        return f"layer '{self.names[module]}' ({type(module).__name__})"


# --- helpers ---------------------------------------------------------------------------------


def _describe(rule: Rule) -> str:
    fields = getattr(rule, "__dataclass_fields__", {})
    shown = [
        f"{k}={getattr(rule, k)!r}"
        for k in ("epsilon", "gamma", "alpha", "beta", "bias", "operand")
        if k in fields and k not in ("branches", "groups", "terms")
    ]
    return f"{rule.name}({', '.join(shown)})"
