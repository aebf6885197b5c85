"""One-pass relevance propagation.

Design: the backward pass carries the *relevance per unit of activation*,
:math:`s = R / a`, which is what the ordinary gradient carries for LRP-0. A layer with a rule
keeps its forward value :math:`z` but takes its backward from the rule: in the forward pass it
stores the ratio :math:`z / d` of its output to the rule's denominator, and in the backward pass
it maps :math:`s_{out}` to :math:`s_{in} = \\sum W_{mod}^T (s_{out}\\, z / d)`. Everything
between rule layers (ReLU, pooling, additions, concatenations, flatten) keeps its ordinary
gradient, which in this form is exactly proportional relevance redistribution: residual sums
split relevance in proportion to their summands and concatenations route it to their parts,
without model-specific canonizers. The input relevance is :math:`R = x \\odot s_x`.

Cost: one extra forward convolution per rule layer and one transposed convolution per active
branch in the backward pass; the normal backward is never computed, and the negative-input
branch of z+ is skipped when the layer input is non-negative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._guard import HookSet
from ..rules import Gradient, LinearRule, Pass, Rule, RuleMap
from .layers import BATCHNORM_TYPES, LINEAR_TYPES, LinearOp

ELEMENTWISE_TYPES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.PReLU,
)


class PairingError(RuntimeError):
    """A layer assumed to feed only its BatchNorm was used elsewhere; retried unmerged."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__("internal: BatchNorm merge assumption failed")
        self.layer = layer


# --- autograd nodes ------------------------------------------------------------------------


def _stabilize(d: Tensor, eps: float, sign: int) -> Tensor:
    """``d + eps * sign(d)`` (``+eps`` at 0), in place; ``sign`` is d's known sign or 0."""
    if eps == 0:
        return d
    if sign > 0:
        return d.add_(eps)
    if sign < 0:
        return d.sub_(eps)
    return d.add_((d >= 0).to(d.dtype).mul_(2 * eps).sub_(eps))


def _safe_ratio(value: Tensor, d: Tensor, may_be_zero: bool = True) -> Tensor:
    """``value / d`` written into ``d``, with 0 where ``d`` is 0 (LRP-0 at a dead unit)."""
    if not may_be_zero:
        return torch.div(value, d, out=d)
    zero = d == 0
    torch.div(value, d, out=d)
    return d.masked_fill_(zero, 0.0)


@dataclass
class RuleState:
    """What a rule layer keeps between its forward and backward pass."""

    op: LinearOp
    rule: LinearRule
    input_shape: torch.Size
    nonneg: bool
    ratios: list[Tensor | None]
    x: Tensor | None = None  # kept only where the backward needs the input itself
    bounds: tuple[Tensor, Tensor] | None = None
    name: str = ""
    #: shared with the run; ``last_pass[0]`` is True during the final backward pass, which
    #: may consume the ratios in place and free them
    last_pass: list[bool] = field(default_factory=lambda: [True])

    def active_terms(self) -> list:
        return [t for t in self.rule.terms if self._branch_active(t.branch)]

    def _branch_active(self, index: int) -> bool:
        return not (self.nonneg and self.rule.branches[index].inputs == "neg")

    def branch_input(self, index: int, x: Tensor) -> Tensor:
        kind = self.rule.branches[index].inputs
        if kind == "x" or (kind == "pos" and self.nonneg):
            return x
        if kind == "pos":
            return x.clamp(min=0)
        if kind == "neg":
            return x.clamp(max=0)
        if kind == "ones":
            return x.new_ones((1, *x.shape[1:]))
        low, high = self.bounds
        bound = low if kind == "low" else high
        return bound.expand(bound.shape[0], *x.shape[1:])

    def denominators(self, x: Tensor, value: Tensor) -> list[Tensor | None]:
        """Stabilised denominators :math:`d_g` of every group (fresh tensors)."""
        rule = self.rule
        outputs: dict[int, tuple[Tensor, bool]] = {}

        def output(index: int) -> tuple[Tensor, bool]:
            """A branch's output and whether this call owns it (may write into it)."""
            if index not in outputs:
                branch = rule.branches[index]
                if branch.inputs == "x" and branch.weight.__name__ == "keep" and branch.bias:
                    outputs[index] = (value, False)  # the layer's own output: no recomputation
                else:
                    out = self.op.forward(self.branch_input(index, x), branch.weight, branch.bias)
                    outputs[index] = (out, True)
            return outputs[index]

        result: list[Tensor | None] = []
        used = {t.group for t in self.active_terms()}
        for g, group in enumerate(rule.groups):
            if g not in used:
                result.append(None)
                continue
            d = None
            for index, sign in group.parts:
                if not self._branch_active(index):
                    continue
                part, owned = output(index)
                if d is None:
                    d = (
                        part
                        if owned
                        and sign > 0
                        and sum(1 for t in rule.groups for i, _ in t.parts if i == index) == 1
                        else part * sign
                    )
                    if d.shape[0] != value.shape[0]:
                        d = d.expand_as(value).clone()
                else:
                    d = d.add_(part, alpha=sign)
            result.append(_stabilize(d, rule.stabilizer, group.sign))
        return result

    def compute_ratios(self, x: Tensor, value: Tensor) -> None:
        """Ratios :math:`z / d_g` (zero outside a group's selected output sign)."""
        self.ratios = []
        for group, d in zip(self.rule.groups, self.denominators(x, value), strict=True):
            if d is None:
                self.ratios.append(None)
                continue
            ratio = _safe_ratio(value, d, self.rule.stabilizer == 0)
            if group.select == "pos":
                ratio.masked_fill_(value <= 0, 0.0)
            elif group.select == "neg":
                ratio.masked_fill_(value >= 0, 0.0)
            self.ratios.append(ratio)

    def mask_ratios(self, keep: Tensor) -> None:
        """Zero the ratios where ``keep`` is False (a following ReLU's mask)."""
        for ratio in self.ratios:
            if ratio is not None:
                ratio.mul_(keep)

    def start_from_relevance(self, x: Tensor, value: Tensor) -> None:
        """Make the backward take relevance (not relevance per activation) at the output.

        Used for the model's output layer, where the output relevance is given and dividing
        it by the logits would be unstable: the ratios become :math:`1 / d_g`.
        """
        self.ratios = []
        for group, d in zip(self.rule.groups, self.denominators(x, value), strict=True):
            if d is None:
                self.ratios.append(None)
                continue
            inverse = torch.where(d == 0, torch.zeros_like(d), d.reciprocal())
            if group.select == "pos":
                inverse.masked_fill_(value <= 0, 0.0)
            elif group.select == "neg":
                inverse.masked_fill_(value >= 0, 0.0)
            self.ratios.append(inverse)

    def backward(self, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Map the output's relevance per activation to the input's.

        Returns ``(s_in, None)`` for multiplicative rules and ``(None, R_in)`` for rules in
        relevance form (Z^B, flat, w-square).
        """
        scaled: dict[int, Tensor] = {}
        total = None
        relevance_form = self.rule.relevance_form
        final = self.last_pass[0]
        for term in self.active_terms():
            if term.group not in scaled:
                ratio = self.ratios[term.group]
                scaled[term.group] = ratio.mul_(grad) if final else grad * ratio
            branch = self.rule.branches[term.branch]
            part = self.op.input_grad(
                scaled[term.group] * term.coef if term.coef != 1.0 else scaled[term.group],
                branch.weight,
                self.input_shape,
            )
            if relevance_form:
                part = part * self.branch_input(term.branch, self.x)
            elif branch.inputs == "pos" and not self.nonneg:
                part = part * (self.x > 0)
            elif branch.inputs == "neg":
                part = part * (self.x < 0)
            total = part if total is None else total.add_(part)
        if final:
            self.ratios = []
        if relevance_form:
            return None, total
        return total, None


class _RuleNode(torch.autograd.Function):
    """Output keeps the layer's value; backward is the rule's (see :class:`RuleState`)."""

    @staticmethod
    def forward(ctx, x: Tensor, sink: Tensor | None, value: Tensor, state: RuleState) -> Tensor:
        ctx.state = state
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        s_in, relevance = ctx.state.backward(grad)
        return s_in, relevance, None, None


class _PassNode(torch.autograd.Function):
    """Relevance passes unchanged through an elementwise layer: :math:`s_{in} = s_{out}\\,y/x`."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, eps: float) -> Tensor:
        ctx.ratio = _safe_ratio(value, _stabilize(x.detach().clone(), eps, 0))
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.ratio, None, None


class _FusedRelu(torch.autograd.Function):
    """In-place ReLU on a rule layer's fresh output whose mask was folded into the rule's
    ratios: its backward is the identity and it saves nothing."""

    @staticmethod
    def forward(ctx, value: Tensor) -> Tensor:
        ctx.mark_dirty(value)
        return value.clamp_(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad


class _MaxPoolIndices(torch.autograd.Function):
    """2-D max pooling that keeps only the indices for its backward (not its input)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> Tensor:
        out, indices = torch.nn.functional.max_pool2d(
            x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
        )
        ctx.save_for_backward(indices)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        shape = ctx.input_shape
        flat = grad.new_zeros(*shape[:-2], shape[-2] * shape[-1])
        flat.scatter_add_(-1, indices.flatten(-2), grad.flatten(-2))
        return flat.view(shape), None, None, None, None, None


def _max_pool_args(args: tuple, kwargs: dict) -> tuple | None:
    """(x, kernel, stride, padding, dilation, ceil_mode) of a max_pool2d call, or None."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
    bound = dict(zip(names, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k != "return_indices"})
    if kwargs.get("return_indices") or len(args) > 6 or "input" not in bound:
        return None
    if "kernel_size" not in bound or bound["input"].ndim not in (3, 4):
        return None
    stride = bound.get("stride") or bound["kernel_size"]
    return (
        bound["input"],
        bound["kernel_size"],
        stride,
        bound.get("padding", 0),
        bound.get("dilation", 1),
        bool(bound.get("ceil_mode", False)),
    )


_INPLACE_RELUS = {torch.relu_, Tensor.relu_}
_RELUS = {torch.nn.functional.relu, torch.relu, Tensor.relu, *_INPLACE_RELUS}
_METADATA = {"size", "dim", "numel", "__get__", "stride", "is_contiguous", "element_size"}


class _ReluFusion(torch.overrides.TorchFunctionMode):
    """Folds an in-place ReLU that directly follows a rule layer into that layer's ratios.

    The ratio then carries the ReLU's mask, so the ReLU needs to save nothing for its
    backward: this halves what the backward pass keeps per layer. A rule output that is
    used by anything else first is left alone. Max pooling keeps only its indices, so the
    activations between rule layers are not kept alive for the backward pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fresh: dict[int, tuple[Tensor, int, RuleState]] = {}

    def register(self, value: Tensor, state: RuleState) -> None:
        self.fresh[id(value)] = (value, value._version, state)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.fresh and func in _RELUS and args:
            inplace = func in _INPLACE_RELUS or (
                func is torch.nn.functional.relu
                and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            )
            entry = self.fresh.pop(id(args[0]), None)
            if inplace and entry is not None and entry[0] is args[0]:
                value, version, state = entry
                if value._version == version:
                    state.mask_ratios(value > 0)
                    return _FusedRelu.apply(value)
        elif getattr(func, "__name__", "") == "max_pool2d":
            pool = _max_pool_args(args, kwargs)
            if pool is not None and pool[0].requires_grad:
                return _MaxPoolIndices.apply(*pool)
        if self.fresh and getattr(func, "__name__", "") not in _METADATA:
            for arg in (*args, *kwargs.values()):
                for item in arg if isinstance(arg, list | tuple) else (arg,):
                    if isinstance(item, Tensor):
                        self.fresh.pop(id(item), None)
        return func(*args, **kwargs)


class _Tap(torch.autograd.Function):
    """Identity that records the gradient arriving at a layer's output.

    In place (the same tensor object, so BatchNorm pairing and ReLU fusion still recognise
    it) when the output comes from one of the engine's own nodes, which do not save it;
    otherwise a copy, since e.g. ``nn.ReLU`` saves its output for the backward pass.
    """

    @staticmethod
    def forward(ctx, value: Tensor, sink: list, inplace: bool) -> Tensor:
        ctx.sink = sink
        if not inplace:
            return value.clone()
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.sink.append(grad)
        return grad, None, None


_UNSAVED_OUTPUTS = tuple(
    node._backward_cls for node in (_RuleNode, _PassNode, _FusedRelu, _MaxPoolIndices, _Tap)
)
"""Backward nodes of the engine's functions, none of which keeps its output."""


class _Guard(torch.autograd.Function):
    """Marks a layer output that is assumed to feed only the BatchNorm merged into it."""

    @staticmethod
    def forward(ctx, anchor: Tensor, value: Tensor, layer: nn.Module) -> Tensor:
        ctx.layer = layer
        ctx.mark_dirty(value)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        if bool(grad.ne(0).any()):
            raise PairingError(ctx.layer)
        return None, None, None


# --- the propagation -----------------------------------------------------------------------


@dataclass
class PassRecord:
    """Results of one backward pass (one output relevance vector)."""

    input_relevance: Tensor
    layer_relevance: dict[str, Tensor] = field(default_factory=dict)


def _is_leaf_module(module: nn.Module) -> bool:
    return next(iter(module.children()), None) is None


def _normalise_bound(bound: Tensor | float, x: Tensor) -> Tensor:
    """A bound as a tensor broadcastable to ``x``: scalar, (C,), (N, C) or full shape."""
    bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    if bound.ndim == 0:
        return bound.view(1, *([1] * (x.ndim - 1)))
    if bound.ndim == 1:
        if bound.shape[0] != x.shape[1]:
            raise ValueError(
                f"per-channel bounds have {bound.shape[0]} values but the input has "
                f"{x.shape[1]} channels"
            )
        return bound.view(1, -1, *([1] * (x.ndim - 2)))
    if bound.ndim == 2:
        return bound.view(*bound.shape, *([1] * (x.ndim - 2)))
    return bound


class Propagator:
    """Assigns rules to a model's layers and runs forward + rule backward passes.

    Parameters
    ----------
    model
        Any ``nn.Module`` returning (N, classes) logits.
    rule_map
        Which rule each layer gets (first match wins); ``rule_map.first`` overrides the rule of
        the first linear layer in execution order.
    """

    def __init__(self, model: nn.Module, rule_map: RuleMap) -> None:
        self.model = model
        self.rule_map = rule_map
        self.names: dict[nn.Module, str] = {}
        self.rules: dict[nn.Module, Rule | None] = {}
        for name, module in model.named_modules():
            self.names.setdefault(module, name or type(model).__name__)
        self._assign_rules()
        self.pairs = self._candidate_pairs()

    # -- set-up -----------------------------------------------------------------------------

    def _assign_rules(self) -> None:
        for module, name in self.names.items():
            has_params = next(iter(module.parameters(recurse=False)), None) is not None
            if not (_is_leaf_module(module) or has_params):
                continue
            rule = self.rule_map.rule_for(name, module)
            if isinstance(module, LINEAR_TYPES):
                if rule is not None and not isinstance(rule, (LinearRule, Gradient)):
                    raise ValueError(
                        f"layer '{name}' ({type(module).__name__}) got rule {rule.name}, which "
                        "is for elementwise layers; use a linear rule such as ZPlus or Epsilon"
                    )
            elif isinstance(rule, LinearRule):
                raise ValueError(
                    f"layer '{name}' ({type(module).__name__}) got the linear rule {rule.name}; "
                    "linear rules apply to Linear and Conv layers (and the BatchNorm merged "
                    "into them); use Pass() or Gradient() here"
                )
            elif (
                rule is None
                and isinstance(module, ELEMENTWISE_TYPES)
                and not isinstance(module, nn.ReLU)
            ):
                rule = Pass()
            elif (
                rule is None
                and has_params
                and not isinstance(module, BATCHNORM_TYPES)
                and not isinstance(module, ELEMENTWISE_TYPES)
            ):
                raise ValueError(
                    f"unsupported layer '{name}' ({type(module).__name__}): no LRP rule "
                    f"applies to it; assign one in the rule map, e.g. rules=[('{name}', "
                    "sglrp.rules.Pass()), ...] for an elementwise layer or Gradient() to use "
                    "its gradient"
                )
            self.rules[module] = rule

    def _candidate_pairs(self) -> dict[nn.Module, nn.Module]:
        """BatchNorm registered right after a linear layer of the same parent: merge them."""
        pairs: dict[nn.Module, nn.Module] = {}
        for parent in self.model.modules():
            children = list(parent.children())
            for layer, norm in zip(children, children[1:], strict=False):
                if (
                    isinstance(layer, LINEAR_TYPES)
                    and isinstance(norm, BATCHNORM_TYPES)
                    and norm.track_running_stats
                    and norm.running_mean is not None
                    and layer.weight.shape[0] == norm.num_features
                    and isinstance(self.rules.get(layer), LinearRule | None)
                ):
                    pairs[layer] = norm
        return pairs

    # -- one run ----------------------------------------------------------------------------

    def run(
        self,
        x: Tensor,
        relevance_vectors: Callable[[Tensor], Sequence[Tensor]],
        hooks: HookSet,
        record: Iterable[str] = (),
    ) -> tuple[Tensor, list[PassRecord], dict[str, Tensor]]:
        """Forward once, then one rule backward pass per output relevance vector.

        Returns the logits, one :class:`PassRecord` per vector, and the recorded layers'
        outputs. Retries without a BatchNorm merge if the merge assumption fails.
        """
        while True:
            try:
                return self._run_once(x, relevance_vectors, hooks, tuple(record))
            except PairingError as err:
                hooks.remove()
                self.pairs.pop(err.layer, None)

    def _run_once(self, x, relevance_vectors, hooks, record):
        names = self.names
        by_name = {name: module for module, name in names.items()}
        missing = [r for r in record if r not in by_name]
        if missing:
            raise ValueError(f"unknown layer {missing[0]!r}; {describe_layers(self.model)}")
        x_in = x.detach().requires_grad_(True)
        state = _RunState(x_in=x_in)
        taps: dict[str, list[Tensor]] = {}
        tapped_objects: dict[str, Tensor] = {}
        fusion = _ReluFusion()
        recorded_outputs: dict[str, Tensor] = {}

        def make_rule_node(module, op_source, rule, layer_input, value):
            name = names[op_source]
            op = LinearOp.of(op_source, name, module if module is not op_source else None)
            if (
                rule.relevance_form
                and layer_input is not x_in
                and layer_input is not (state.first_input)
            ):
                raise ValueError(
                    f"rule {rule.name} on layer '{name}' needs the model input as the layer "
                    "input; apply it only to the first layer"
                )
            nonneg = bool(layer_input.min() >= 0) if _needs_sign(rule) else False
            node_state = RuleState(
                op=op,
                rule=rule,
                input_shape=layer_input.shape,
                nonneg=nonneg,
                ratios=[],
                name=name,
                last_pass=state.last_pass,
            )
            if rule.relevance_form or (not nonneg and _needs_sign(rule)):
                node_state.x = layer_input.detach()
            if rule.bounds() is not None:
                low, high = rule.bounds()
                node_state.bounds = (
                    _normalise_bound(low, layer_input),
                    _normalise_bound(high, layer_input),
                )
            value = value.detach()
            with torch.no_grad():
                node_state.compute_ratios(layer_input.detach(), value)
            # modified weights are rebuilt in the backward pass instead of held until then
            op.release()
            sink = None
            if rule.relevance_form:
                sink = torch.zeros((), dtype=x_in.dtype, device=x_in.device).expand_as(layer_input)
                sink = sink.detach().requires_grad_(True)
                state.sinks.append(sink)
            out = _RuleNode.apply(layer_input, sink, value, node_state)
            state.last = (out, node_state, layer_input)
            fusion.register(out, node_state)
            return out

        def linear_hook(module, args, output):
            layer_input = args[0]
            rule = self.rules.get(module)
            if not state.first_seen:
                state.first_seen = True
                state.first_input = layer_input
                if self.rule_map.first is not None:
                    rule = self.rule_map.first
            if rule is None or isinstance(rule, Gradient):
                return None
            if not isinstance(layer_input, Tensor) or not layer_input.requires_grad:
                return None
            if module in self.pairs:
                guarded = _Guard.apply(layer_input, output.detach(), module)
                state.pending[self.pairs[module]] = (module, rule, layer_input, guarded)
                return guarded
            return make_rule_node(module, module, rule, layer_input, output)

        def norm_hook(module, args, output):
            pending = state.pending.pop(module, None)
            if pending is not None:
                layer, rule, layer_input, guarded = pending
                if args[0] is not guarded:
                    raise PairingError(layer)
                return make_rule_node(module, layer, rule, layer_input, output)
            return pass_hook(module, args, output)

        def pass_hook(module, args, output):
            rule = self.rules.get(module)
            if not isinstance(rule, Pass):
                return None
            layer_input = args[0]
            if not isinstance(layer_input, Tensor) or not layer_input.requires_grad:
                return None
            if output.shape != layer_input.shape:
                raise ValueError(
                    f"Pass rule on layer '{names[module]}' needs equal input and output shapes"
                )
            return _PassNode.apply(layer_input, output.detach(), rule.stabilizer)

        def tap_hook(name):
            def hook(module, args, output):
                sink: list[Tensor] = []
                taps[name] = sink
                recorded_outputs[name] = output.detach().clone()
                inplace = output.grad_fn is None or isinstance(output.grad_fn, _UNSAVED_OUTPUTS)
                tapped = _Tap.apply(output, sink, inplace)
                tapped_objects[name] = tapped
                return tapped

            return hook

        for module in self.names:
            if isinstance(module, LINEAR_TYPES):
                hooks.add(module.register_forward_hook(linear_hook))
            elif isinstance(module, BATCHNORM_TYPES):
                hooks.add(module.register_forward_hook(norm_hook))
            elif isinstance(self.rules.get(module), Pass):
                hooks.add(module.register_forward_hook(pass_hook))
        for name in record:
            # Registered last, so it sees the rule hooks' output. A layer merged with its
            # BatchNorm is tapped after the BatchNorm: relevance is the same on both sides.
            module = by_name[name]
            module = self.pairs.get(module, module)
            hooks.add(module.register_forward_hook(tap_hook(name)))

        with torch.enable_grad(), fusion:
            logits = self.model(x_in)
        fusion.fresh.clear()
        if state.pending:
            layer = next(iter(state.pending.values()))[0]
            raise PairingError(layer)
        from .._checks import check_logits

        check_logits(logits, x.shape[0])
        vectors = list(relevance_vectors(logits.detach()))

        start_with_relevance = False
        if state.last is not None and logits is state.last[0]:
            _, node_state, layer_input = state.last
            with torch.no_grad():
                node_state.start_from_relevance(layer_input.detach(), logits.detach())
            start_with_relevance = True
        state.last = None

        inputs = [x_in, *state.sinks]
        # Relevance is read at the input of the first layer when that input is x itself or
        # an elementwise (or reshaping) function of it: preprocessing inside the model then
        # passes relevance through unchanged.
        use_first = (
            state.first_input is not None
            and state.first_input is not x_in
            and state.first_input.numel() == x_in.numel()
            and state.first_input.requires_grad
        )
        if use_first:
            inputs.append(state.first_input)
        for sink in state.sinks:
            if sink.numel() != x_in.numel():
                raise ValueError(
                    "a rule in relevance form (Z^B, flat, w-square) is applied to a layer whose "
                    "input is not the model input; apply it to the first layer only"
                )
        records: list[PassRecord] = []
        for k, vector in enumerate(vectors):
            if start_with_relevance:
                grad_out = vector
            else:
                z = logits.detach()
                grad_out = torch.where(z == 0, torch.zeros_like(z), vector / z)
            for sink in taps.values():
                sink.clear()
            state.last_pass[0] = k == len(vectors) - 1
            grads = torch.autograd.grad(
                logits,
                inputs,
                grad_outputs=grad_out,
                retain_graph=k < len(vectors) - 1,
                allow_unused=True,
            )
            if use_first:
                base, value = grads[-1], state.first_input.detach()
            else:
                base, value = grads[0], x_in.detach()
            relevance = torch.zeros_like(x_in) if base is None else (value * base).view_as(x_in)
            for g in grads[1 : 1 + len(state.sinks)]:
                if g is not None:
                    relevance = relevance + g.reshape(x_in.shape)
            layer_relevance = {}
            for name, sink in taps.items():
                g = sink[0] if sink else torch.zeros_like(recorded_outputs[name])
                at_logits = start_with_relevance and tapped_objects[name] is logits
                # at the logits the backward starts with relevance itself, not R / z
                layer_relevance[name] = g if at_logits else recorded_outputs[name] * g
            records.append(PassRecord(relevance.detach(), layer_relevance))
        return logits.detach(), records, recorded_outputs


def describe_layers(model: nn.Module, limit: int = 40) -> str:
    """``available layers: a, b, ...`` for error messages, shortened for large models."""
    names = [name for name, _ in model.named_modules() if name]
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"available layers: {shown}{more}"


def _needs_sign(rule: Rule) -> bool:
    return isinstance(rule, LinearRule) and any(b.inputs in ("pos", "neg") for b in rule.branches)


@dataclass
class _RunState:
    x_in: Tensor
    last_pass: list[bool] = field(default_factory=lambda: [True])
    first_seen: bool = False
    first_input: Tensor | None = None
    last: tuple | None = None
    sinks: list[Tensor] = field(default_factory=list)
    pending: dict = field(default_factory=dict)
