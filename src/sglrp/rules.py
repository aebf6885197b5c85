"""LRP rules built from small parts, in the manner of zennit.

A rule for a linear layer (``nn.Linear``, ``nn.ConvNd``, or one of them merged with the
``BatchNorm`` that follows it) is described by

* **branches**: forward passes of the layer with a modified input (``x``, ``x+``, ``x-``, ones,
  the lower or upper bound) and modified parameters (``w``, ``w+``, ``w-``, ``w^2``, ones ...);
* **groups**: denominators, signed sums of branch outputs, stabilised by ``epsilon``;
* **terms**: the reducer, ``coef * input_b * W_b^T (R_out / denominator_g)`` summed over terms.

With :math:`z^{(b)}_j = \\sum_i m_b(x)_i\\, v_b(w)_{ij} + v_b(b)_j` and
:math:`d_g = \\mathrm{stab}(\\sum_{b \\in g} s_b z^{(b)})` the input relevance is

.. math::  R_i = \\sum_{(b, c, g)} c\\, m_b(x)_i \\sum_j v_b(w)_{ij} \\frac{R_j}{d_{g,j}}

which covers LRP-0, epsilon, z+ (with or without bias), alpha-beta, gamma, Z^B, flat and
w-square. :class:`Pass` (relevance unchanged through an elementwise layer) and
:class:`Gradient` (the layer's own gradient) complete the set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

import torch
from torch import Tensor

ParamMod = Callable[[Tensor], Tensor]

#: Default stabiliser, as in zennit.
STABILIZER = 1e-6


# --- parameter modifiers -------------------------------------------------------------------


def keep(param: Tensor) -> Tensor:
    """:math:`w`"""
    return param


def positive(param: Tensor) -> Tensor:
    """:math:`w^+ = \\max(0, w)`"""
    return param.clamp(min=0)


def negative(param: Tensor) -> Tensor:
    """:math:`w^- = \\min(0, w)`"""
    return param.clamp(max=0)


def square(param: Tensor) -> Tensor:
    """:math:`w^2`"""
    return param * param


def ones(param: Tensor) -> Tensor:
    """:math:`1`"""
    return torch.ones_like(param)


def add_scaled(gamma: float, part: ParamMod) -> ParamMod:
    """:math:`w + \\gamma\\, \\mathrm{part}(w)` (the gamma rule's modifier)."""

    def modifier(param: Tensor) -> Tensor:
        return param + gamma * part(param)

    modifier.__name__ = f"add_scaled({gamma}, {part.__name__})"
    return modifier


# --- input modifiers -----------------------------------------------------------------------


@dataclass(frozen=True)
class InputMod:
    """What a branch feeds into the layer instead of its input :math:`x`.

    ``sign``: +1 for :math:`x^+`, -1 for :math:`x^-`, 0 otherwise (the branch's contribution
    is masked by the input's sign in the backward pass). ``relevance_form``: the branch does
    not scale with :math:`x` (ones, bounds), so the rule yields relevance directly, not
    relevance per unit of input.
    """

    name: str
    sign: int = 0
    relevance_form: bool = False

    def apply(self, x: Tensor, bounds: tuple[Tensor, Tensor] | None, nonneg: bool) -> Tensor:
        """The modified input; ``nonneg`` says ``x >= 0`` is known (then :math:`x^+ = x`)."""
        if self is X or (self is POSITIVE and nonneg):
            return x
        if self is POSITIVE:
            return x.clamp(min=0)
        if self is NEGATIVE:
            return x.clamp(max=0)
        if self is ONES:
            return x.new_ones((1, *x.shape[1:]))
        if bounds is None:
            raise ValueError(f"input modifier {self.name!r} needs bounds")
        bound = bounds[0] if self is LOW else bounds[1]
        return bound.expand(bound.shape[0], *x.shape[1:])


X = InputMod("x")
"""The input itself."""
POSITIVE = InputMod("x+", sign=1)
""":math:`x^+ = \\max(0, x)`."""
NEGATIVE = InputMod("x-", sign=-1)
""":math:`x^- = \\min(0, x)`."""
ONES = InputMod("ones", relevance_form=True)
"""A constant 1 (flat, w-square)."""
LOW = InputMod("low", relevance_form=True)
"""The lower bound :math:`l` (Z^B)."""
HIGH = InputMod("high", relevance_form=True)
"""The upper bound :math:`h` (Z^B)."""


# --- rule parts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Branch:
    """One modified forward pass: ``layer(inputs(x), weight(w), bias(b) if bias else 0)``."""

    inputs: InputMod
    weight: ParamMod
    bias: ParamMod | None = None


@dataclass(frozen=True)
class Group:
    """A denominator :math:`\\sum_b s_b z^{(b)}`, stabilised.

    ``sign`` is the sign the denominator is known to have (``+1``, ``-1``) or 0 if unknown;
    a known sign lets the stabiliser be one addition. ``select`` restricts the group to output
    positions where the layer's plain output ``z`` is positive (``"pos"``) or negative
    (``"neg"``), as in the generalised gamma rule.
    """

    parts: tuple[tuple[int, float], ...]
    sign: int = 0
    select: Literal["all", "pos", "neg"] = "all"


@dataclass(frozen=True)
class Term:
    """Reducer term ``coef * input_b * W_b^T (R / d_group)``."""

    branch: int
    coef: float
    group: int


@dataclass(frozen=True, eq=False)
class Rule:
    """Base class of all rules. ``name`` is shown in error messages and summaries."""

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, eq=False, kw_only=True)
class LinearRule(Rule):
    """A rule for linear layers, assembled from branches, groups and terms."""

    branches: tuple[Branch, ...] = ()
    groups: tuple[Group, ...] = ()
    terms: tuple[Term, ...] = ()
    stabilizer: float = STABILIZER

    @property
    def relevance_form(self) -> bool:
        """True if the input relevance is not ``x * something`` (Z^B, flat, w-square).

        Such rules are computed directly as relevance and so only apply to layers that take
        the model input.
        """
        return any(b.inputs.relevance_form for b in self.branches)

    @property
    def needs_sign(self) -> bool:
        """True if a branch depends on the sign of the input (:math:`x^+`, :math:`x^-`)."""
        return any(b.inputs.sign != 0 for b in self.branches)

    def bounds(self) -> tuple[Tensor | float, Tensor | float] | None:
        """``(low, high)`` for rules that use input bounds, else None."""
        return None


@dataclass(frozen=True, eq=False)
class Epsilon(LinearRule):
    """LRP-epsilon:
    :math:`R_i = \\sum_j \\frac{x_i w_{ij}}{z_j + \\epsilon\\,\\mathrm{sign}(z_j)} R_j`.

    ``epsilon=0`` is LRP-0. The bias is part of :math:`z_j` unless ``bias=False``.
    """

    epsilon: float = 0.25
    bias: bool = True

    def __post_init__(self) -> None:
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")
        object.__setattr__(self, "branches", (Branch(X, keep, keep if self.bias else None),))
        object.__setattr__(self, "groups", (Group(((0, 1.0),)),))
        object.__setattr__(self, "terms", (Term(0, 1.0, 0),))
        object.__setattr__(self, "stabilizer", self.epsilon)


def LRP0(bias: bool = True) -> Epsilon:  # noqa: N802 - reads as a rule name
    """LRP-0: :math:`R_i = \\sum_j x_i w_{ij} / z_j\\, R_j` (epsilon rule with epsilon = 0)."""
    return Epsilon(epsilon=0.0, bias=bias)


@dataclass(frozen=True, eq=False)
class ZPlus(LinearRule):
    """Deep Taylor z+ rule (SGLRP paper eq. 1, alpha=1 beta=0 for signed inputs).

    :math:`R_i = \\sum_j \\frac{x_i^+ w_{ij}^+ + x_i^- w_{ij}^-}
    {\\sum_{i'} x_{i'}^+ w_{i'j}^+ + x_{i'}^- w_{i'j}^- [+ b_j^+]} R_j`.
    ``bias=False`` (the paper's rule) leaves the bias out of the denominator, so the rule
    conserves relevance; ``bias=True`` adds :math:`b^+` as zennit's ``ZPlus`` does.
    """

    bias: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "branches",
            (
                Branch(POSITIVE, positive, positive if self.bias else None),
                Branch(NEGATIVE, negative, None),
            ),
        )
        object.__setattr__(self, "groups", (Group(((0, 1.0), (1, 1.0)), sign=1),))
        object.__setattr__(self, "terms", (Term(0, 1.0, 0), Term(1, 1.0, 0)))


@dataclass(frozen=True, eq=False)
class AlphaBeta(LinearRule):
    """Alpha-beta rule: :math:`R_i = \\sum_j (\\alpha \\frac{z_{ij}^+}{z_j^+}
    - \\beta \\frac{z_{ij}^-}{z_j^-}) R_j` with :math:`\\alpha - \\beta = 1`."""

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(
                f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, got "
                f"alpha={self.alpha}, beta={self.beta}"
            )
        bias_pos = positive if self.bias else None
        bias_neg = negative if self.bias else None
        object.__setattr__(
            self,
            "branches",
            (
                Branch(POSITIVE, positive, bias_pos),
                Branch(NEGATIVE, negative, None),
                Branch(POSITIVE, negative, bias_neg),
                Branch(NEGATIVE, positive, None),
            ),
        )
        object.__setattr__(
            self,
            "groups",
            (Group(((0, 1.0), (1, 1.0)), sign=1), Group(((2, 1.0), (3, 1.0)), sign=-1)),
        )
        object.__setattr__(
            self,
            "terms",
            (
                Term(0, self.alpha, 0),
                Term(1, self.alpha, 0),
                Term(2, -self.beta, 1),
                Term(3, -self.beta, 1),
            ),
        )


@dataclass(frozen=True, eq=False)
class Gamma(LinearRule):
    """Generalised gamma rule (as zennit): favour positive contributions by ``gamma``.

    For outputs :math:`z_j > 0`: :math:`R_i = \\sum_j \\frac{x_i^+ (w + \\gamma w^+)_{ij}
    + x_i^- (w + \\gamma w^-)_{ij}}{\\sum_{i'} \\ldots} R_j`, and symmetrically for
    :math:`z_j < 0`. For non-negative inputs this is :math:`x_i (w_{ij} + \\gamma w_{ij}^+)`.
    """

    gamma: float = 0.25
    bias: bool = True

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        g = self.gamma
        bias = self.bias
        object.__setattr__(
            self,
            "branches",
            (
                Branch(
                    POSITIVE, add_scaled(g, positive), add_scaled(g, positive) if bias else None
                ),
                Branch(NEGATIVE, add_scaled(g, negative), None),
                Branch(
                    POSITIVE, add_scaled(g, negative), add_scaled(g, negative) if bias else None
                ),
                Branch(NEGATIVE, add_scaled(g, positive), None),
            ),
        )
        object.__setattr__(
            self,
            "groups",
            (
                Group(((0, 1.0), (1, 1.0)), select="pos"),
                Group(((2, 1.0), (3, 1.0)), select="neg"),
            ),
        )
        object.__setattr__(
            self,
            "terms",
            (Term(0, 1.0, 0), Term(1, 1.0, 0), Term(2, 1.0, 1), Term(3, 1.0, 1)),
        )


@dataclass(frozen=True, eq=False)
class ZBox(LinearRule):
    """Z^B rule for inputs bounded by ``low <= x <= high`` (SGLRP paper eq. 2).

    :math:`R_i = \\sum_j \\frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
    {\\sum_{i'} x_{i'} w_{i'j} - l_{i'} w_{i'j}^+ - h_{i'} w_{i'j}^-} R_j`.
    ``low`` and ``high`` are scalars or per-channel tensors (shape (C,) or broadcastable to
    the input); see :func:`sglrp.bounds_from_normalization`. Both None: each image's own
    per-channel minimum and maximum of the layer's input (what the layer really sees, also
    when the model normalises its input itself).
    """

    low: Tensor | float | None = None
    high: Tensor | float | None = None

    def __post_init__(self) -> None:
        self._branches()
        if self.low is None and self.high is None:
            return
        if self.low is None or self.high is None:
            raise ValueError("Z^B needs both bounds (low, high), or neither (the input's own)")
        low, high = torch.as_tensor(self.low), torch.as_tensor(self.high)
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError(
                f"Z^B bounds must be finite, got low={self.low!r}, high={self.high!r}; "
                "compute them with sglrp.bounds_from_normalization(mean, std)"
            )
        try:
            inverted = bool((low > high).any())
        except RuntimeError as err:
            raise ValueError(
                f"Z^B bounds of shapes {tuple(low.shape)} and {tuple(high.shape)} do not match"
            ) from err
        if inverted:
            raise ValueError(
                f"Z^B bounds are inverted (low > high): low={self.low!r}, high={self.high!r}; "
                "pass bounds=(low, high)"
            )

    def _branches(self) -> None:
        object.__setattr__(
            self,
            "branches",
            (
                Branch(X, keep, keep),
                Branch(LOW, positive, positive),
                Branch(HIGH, negative, negative),
            ),
        )
        object.__setattr__(self, "groups", (Group(((0, 1.0), (1, -1.0), (2, -1.0))),))
        object.__setattr__(self, "terms", (Term(0, 1.0, 0), Term(1, -1.0, 0), Term(2, -1.0, 0)))

    def bounds(self) -> tuple[Tensor | float | None, Tensor | float | None]:
        return self.low, self.high


@dataclass(frozen=True, eq=False)
class Flat(LinearRule):
    """Flat rule: relevance spread uniformly over the receptive field,
    :math:`R_i = \\sum_j \\frac{1}{\\sum_{i'} 1} R_j`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", (Branch(ONES, ones, None),))
        object.__setattr__(self, "groups", (Group(((0, 1.0),), sign=1),))
        object.__setattr__(self, "terms", (Term(0, 1.0, 0),))


@dataclass(frozen=True, eq=False)
class WSquare(LinearRule):
    """w-square rule: :math:`R_i = \\sum_j \\frac{w_{ij}^2}{\\sum_{i'} w_{i'j}^2} R_j`
    (bias left out)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", (Branch(ONES, square, None),))
        object.__setattr__(self, "groups", (Group(((0, 1.0),), sign=1),))
        object.__setattr__(self, "terms", (Term(0, 1.0, 0),))


@dataclass(frozen=True, eq=False)
class Pass(Rule):
    """Identity rule: relevance passes unchanged through an elementwise function
    (SiLU, GELU, sigmoid, tanh, ...): :math:`R_{in} = R_{out}`, computed as
    :math:`s_{in} = s_{out}\\, y / (x + \\epsilon\\, \\mathrm{sign}\\, x)`.

    ``stabilizer=None`` (default) takes :math:`\\epsilon = \\sqrt{\\mathrm{tiny}}` of the dtype
    (1e-19 for float32, 1e-154 for float64): exact wherever :math:`x \\ne 0` is a normal
    number, and no overflow at subnormal inputs.
    """

    stabilizer: float | None = None

    def epsilon(self, dtype: torch.dtype) -> float:
        """The stabiliser for tensors of ``dtype``."""
        if self.stabilizer is not None:
            return self.stabilizer
        return torch.finfo(dtype).tiny ** 0.5


@dataclass(frozen=True, eq=False)
class Gradient(Rule):
    """Use the layer's own gradient (for an affine layer this is LRP-0 including its bias)."""


@dataclass(frozen=True, eq=False)
class Gate(Rule):
    """Signal-take-all for a product of two activations :math:`a = s \\cdot g`: all relevance
    to the signal :math:`s`, none to the gate :math:`g`, which acts as a constant (LRP for
    LSTMs, Arras et al. 2017; squeeze-and-excitation, spatial gates, GLU).

    ``operand``: ``"auto"`` (the factor that comes out of a sigmoid or hard-sigmoid, else the
    one broadcast over the other), or 0 / 1 for the first / second factor of the product.
    """

    operand: Literal["auto", 0, 1] = "auto"

    def __post_init__(self) -> None:
        if self.operand not in ("auto", 0, 1):
            raise ValueError(f"Gate(operand=...) takes 'auto', 0 or 1, got {self.operand!r}")


@dataclass(frozen=True, eq=False)
class Uniform(Rule):
    """Uniform rule for a product of two activations: half of the relevance to each factor
    (AttnLRP, Achtibat et al. 2024): :math:`R_a = R_b = R_{ab} / 2`."""


MAXPOOL_TYPES = (torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d)


@dataclass(frozen=True, eq=False)
class ProportionalPool(Rule):
    """Max pooling that spreads relevance over its window in proportion to the inputs,
    :math:`R_i = x_i / \\sum_{i' \\in w} x_{i'}\\, R_w`, as if it were sum pooling
    (iNNvestigate 1.0.0). The default for max pooling is the gradient: all relevance to the
    winner (the SGLRP paper)."""


# --- rule maps -----------------------------------------------------------------------------

RuleKey = type | tuple[type, ...] | str


@dataclass
class RuleMap:
    """Assigns rules to modules; the first matching entry wins (as zennit's layer maps).

    Parameters
    ----------
    entries
        ``(key, rule)`` pairs. A key is a module type (or tuple of types), matched with
        ``isinstance``, or a string matched against the module's name in
        ``model.named_modules()``: exactly, or as a glob (``"features.*"``) via fnmatch.
    first
        Rule for the first linear layer in execution order (e.g. Z^B or flat), or None.
    attention
        Treatment of attention: ``"cp"`` (CP-LRP, attention weights constant) or ``"attnlrp"``;
        None leaves it to the caller (default ``"cp"``).
    """

    entries: Sequence[tuple[RuleKey, Rule]] = field(default_factory=list)
    first: LinearRule | None = None
    attention: str | None = None

    def rule_for(self, name: str, module: torch.nn.Module) -> Rule | None:
        """The rule of the first entry matching ``name`` or ``module``'s type, or None."""
        for key, rule in self.entries:
            if isinstance(key, str):
                if key == name or fnmatchcase(name, key):
                    return rule
            elif isinstance(module, key):
                return rule
        return None

    def rule_for_type(self, kind: type) -> Rule | None:
        """The rule of the first type entry that ``kind`` (a module class) falls under.

        For operations called functionally (``F.conv2d`` in a custom module): they follow the
        rules of the module type they stand for.
        """
        for key, rule in self.entries:
            if not isinstance(key, str) and issubclass(kind, key):
                return rule
        return None

    @staticmethod
    def matches_any(key: str, names: Iterable[str]) -> bool:
        """True if the name pattern ``key`` matches one of ``names`` (exactly or as a glob)."""
        return any(key == name or fnmatchcase(name, key) for name in names)
