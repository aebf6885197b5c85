"""What a rule layer keeps between its forward and backward pass, and its backward map.

The backward pass carries relevance per unit of activation, :math:`s = R / a`. A rule layer
with output :math:`z` stores, per denominator group g of its rule, the ratio
:math:`z / d_g` and maps :math:`s_{out}` to
:math:`s_{in} = \\sum_{(b, c, g)} c\\, [\\mathrm{sign}_b(x)]\\, W_b^T (s_{out}\\, z / d_g)`,
so that :math:`R_{in} = x \\odot s_{in}` is the rule's input relevance (see :mod:`sglrp.rules`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..rules import LinearRule, X, keep
from .layers import LinearOp


def signed_epsilon(d: Tensor, eps: float) -> Tensor:
    """``eps * sign(d)`` in ``d``'s dtype, one pass: the sign bit decides, so ``+0.0`` gets
    ``+eps`` and ``-0.0`` gets ``-eps`` (either way the stabilised value is not zero)."""
    return torch.copysign(d.new_tensor(eps), d)


def stabilize(d: Tensor, eps: float, sign: int) -> Tensor:
    """``d + eps * sign(d)`` (``+eps`` at +0), in place; ``sign`` is d's known sign or 0."""
    if eps == 0:
        return d
    if sign > 0:
        return d.add_(eps)
    if sign < 0:
        return d.sub_(eps)
    return d.add_(signed_epsilon(d, eps))


def safe_ratio(value: Tensor, d: Tensor, may_be_zero: bool = True) -> Tensor:
    """``value / d`` written into ``d``, with 0 where ``d`` is 0 (LRP-0 at a dead unit)."""
    if not may_be_zero:
        return torch.div(value, d, out=d)
    zero = d == 0
    torch.div(value, d, out=d)
    return d.masked_fill_(zero, 0.0)


@dataclass
class RuleState:
    """A rule layer between its forward and its backward pass.

    Attributes
    ----------
    op, rule
        The affine map and its rule.
    input_shape, nonneg
        The layer input's shape, and whether it is known to be non-negative (then the
        :math:`x^-` branches vanish and :math:`x^+ = x`).
    ratios
        :math:`z / d_g` per group (None for unused groups), set by :meth:`compute_ratios`.
    x
        The input, kept only where the backward needs it (signed inputs, relevance form).
    bounds
        ``(low, high)`` broadcastable to the input, for Z^B.
    name
        Where the layer is, for messages.
    last_pass
        Shared with the run; ``last_pass[0]`` is True during the final backward pass, which
        may consume the ratios in place and free them (not when a second entry says the pass
        is vectorised over several output relevance vectors).
    """

    op: LinearOp
    rule: LinearRule
    input_shape: torch.Size
    nonneg: bool
    ratios: list[Tensor | None] = field(default_factory=list)
    x: Tensor | None = None
    bounds: tuple[Tensor, Tensor] | None = None
    name: str = ""
    last_pass: list[bool] = field(default_factory=lambda: [True])
    deferred: tuple[Tensor, Tensor, bool] | None = None

    @property
    def final_pass(self) -> bool:
        """True in the last backward pass that is not vectorised over several output
        relevance vectors: then the layer may consume what it kept, in place."""
        return self.last_pass[0] and len(self.last_pass) == 1

    def active_terms(self) -> list:
        return [t for t in self.rule.terms if self._branch_active(t.branch)]

    def _branch_active(self, index: int) -> bool:
        return not (self.nonneg and self.rule.branches[index].inputs.sign < 0)

    def branch_input(self, index: int, x: Tensor) -> Tensor:
        return self.rule.branches[index].inputs.apply(x, self.bounds, self.nonneg)

    def denominators(self, x: Tensor, value: Tensor) -> list[Tensor | None]:
        """Stabilised denominators :math:`d_g` of every group (fresh tensors)."""
        rule = self.rule
        outputs: dict[int, tuple[Tensor, bool]] = {}
        uses = [
            sum(1 for g in rule.groups for i, _ in g.parts if i == b)
            for b in range(len(rule.branches))
        ]

        def output(index: int) -> tuple[Tensor, bool]:
            """A branch's output and whether this call owns it (may write into it)."""
            if index not in outputs:
                branch = rule.branches[index]
                if branch.inputs is X and branch.weight is keep and branch.bias is keep:
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
            # parts of constant inputs (bounds, ones) have one image: summed first, they are
            # added to the batch in one pass
            d = constant = None
            for index, sign in group.parts:
                if not self._branch_active(index):
                    continue
                part, owned = output(index)
                if part.shape[0] != value.shape[0]:
                    constant = part * sign if constant is None else constant.add_(part, alpha=sign)
                elif d is not None:
                    d = d.add_(part, alpha=sign)
                elif owned and sign > 0 and uses[index] == 1:
                    d = part
                elif constant is not None:
                    d, constant = torch.add(constant, part, alpha=sign), None
                else:
                    d = part * sign
            if d is None:
                d = constant.expand_as(value).clone()
            elif constant is not None:
                d = d.add_(constant)
            result.append(stabilize(d, rule.stabilizer, group.sign))
        return result

    def _select(self, ratio: Tensor, select: str, value: Tensor) -> Tensor:
        if select == "pos":
            ratio.masked_fill_(value <= 0, 0.0)
        elif select == "neg":
            ratio.masked_fill_(value >= 0, 0.0)
        return ratio

    def compute_ratios(self, x: Tensor, value: Tensor, relu: bool = False) -> None:
        """Ratios :math:`z / d_g` (zero outside a group's selected output sign).

        ``relu``: a ReLU applied in place to the output is folded in: the denominators are
        taken from :math:`z`, then ``value`` is clamped in place and the ratios become
        :math:`\\max(z, 0) / d_g`, i.e. :math:`z / d_g` masked by :math:`z > 0`.

        A dense layer processed in chunks (VGG16's first classifier layers) defers its
        denominators to the backward pass, which then takes each chunk of modified weights
        (built there, or kept by an Explainer) once, while it is in cache, for both its
        denominators and its input gradient (:meth:`backward`): the weights are read from
        memory once per call instead of twice.
        """
        self.ratios = []
        if self.op.chunked():
            self.deferred = (x, value.clone(), relu)
            if relu:
                value.clamp_(min=0)
            return
        denominators = self.denominators(x, value)
        if relu:
            value.clamp_(min=0)
        for group, d in zip(self.rule.groups, denominators, strict=True):
            if d is None:
                self.ratios.append(None)
                continue
            ratio = safe_ratio(value, d, self.rule.stabilizer == 0)
            self.ratios.append(self._select(ratio, group.select, value))

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
            self.ratios.append(self._select(inverse, group.select, value))

    def _factor(self, branch: int, relevance_form: bool) -> Tensor | None:
        """What a term's input gradient is multiplied by: the branch input (relevance form),
        the input's sign mask (signed branches), or nothing."""
        inputs = self.rule.branches[branch].inputs
        if relevance_form:
            return self.branch_input(branch, self.x)
        if inputs.sign > 0 and not self.nonneg:
            return self.x > 0
        if inputs.sign < 0:
            return self.x < 0
        return None

    def _grouped(self, factor: Tensor, part: Tensor) -> Tensor:
        """``factor`` (input-shaped) viewed like ``part`` (a slice of a stacked gradient:
        ``(N, G, C/G, ...)`` for convolutions)."""
        if part.dim() == factor.dim():
            return factor
        groups = self.op.groups
        return factor.view(factor.shape[0], groups, factor.shape[1] // groups, *factor.shape[2:])

    def backward(self, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Map the output's relevance per activation to the input's.

        Returns ``(s_in, None)`` for multiplicative rules and ``(None, R_in)`` for rules in
        relevance form (Z^B, flat, w-square).
        """
        if self.deferred is not None:
            return self._backward_in_chunks(grad)
        if not self.ratios:
            raise RuntimeError(
                f"internal: the ratios of layer '{self.name}' were not computed before the "
                "backward pass"
            )
        relevance_form = self.rule.relevance_form
        final = self.final_pass
        by_group: dict[int, list] = {}
        for term in self.active_terms():
            by_group.setdefault(term.group, []).append(term)
        total = None
        for group, terms in by_group.items():
            ratio = self.ratios[group]
            scaled = ratio.mul_(grad) if final else grad * ratio
            if len(terms) == 1 or self.op.groups > 1:
                # one term, or a grouped convolution: stacking its weights would turn a
                # depthwise convolution into a slower grouped one
                parts = [
                    (
                        term,
                        self.op.input_grad(
                            scaled * term.coef if term.coef != 1.0 else scaled,
                            self.rule.branches[term.branch].weight,
                            self.input_shape,
                        ),
                    )
                    for term in terms
                ]
            else:
                # one input gradient of the stacked weights for all terms of the group
                stack = self.op.input_grads(
                    scaled,
                    [(self.rule.branches[t.branch].weight, t.coef) for t in terms],
                    self.input_shape,
                )
                at = 2 if self.op.ndim else -2
                parts = [(t, stack.select(at, i)) for i, t in enumerate(terms)]
            for term, part in parts:
                factor = self._factor(term.branch, relevance_form)
                if factor is not None:
                    part = part * self._grouped(factor, part)
                part = part.reshape(self.input_shape)
                total = part if total is None else total.add_(part)
        if final:
            self.ratios = []
        if relevance_form:
            return None, total
        return total, None

    def _backward_in_chunks(self, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """:meth:`backward` of a deferred dense layer, one chunk of output units at a time:
        the chunk's modified weights (built into reused buffers, or a slice of the kept ones,
        :meth:`LinearOp.row_ops`) serve its denominators and its input gradient."""
        x, z, relu = self.deferred
        modifiers = {
            b.weight
            for i, b in enumerate(self.rule.branches)
            if b.weight is not keep and self._branch_active(i)
        }
        total = None
        for rows, op in self.op.row_ops(modifiers):
            chunk = replace(self, op=op, ratios=[], deferred=None)
            chunk.compute_ratios(x, z[..., rows].clone(), relu=relu)
            s_in, relevance = chunk.backward(grad[..., rows])
            part = s_in if s_in is not None else relevance
            total = part if total is None else total.add_(part)
        if self.final_pass:
            self.deferred = None
        if self.rule.relevance_form:
            return None, total
        return total, None


def check_within(x: Tensor, low: Tensor, high: Tensor, where: str) -> None:
    """Warn when the input leaves the Z^B box (wrong normalisation or bounds)."""
    slack = 1e-4 * float((high - low).abs().max())
    below, above = bool((x < low - slack).any()), bool((x > high + slack).any())
    if below or above:
        warnings.warn(
            f"the input of {where} lies {'below' if below else 'above'} the Z^B bounds "
            f"(x from {float(x.min()):.4g} to {float(x.max()):.4g}, bounds "
            f"{float(low.min()):.4g} to {float(high.max()):.4g}); Z^B assumes low <= x <= high: "
            "check the mean/std given to sglrp.bounds_from_normalization",
            RuntimeWarning,
            stacklevel=2,
        )


def normalise_bound(bound: Tensor | float, x: Tensor) -> Tensor:
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
