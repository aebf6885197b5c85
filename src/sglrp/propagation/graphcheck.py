"""Nothing passes silently: the autograd graph of a propagation, checked node by node.

After the forward pass every node between the logits and the input is one of

* the engine's own nodes (rules, identity rule, gates, taps, ...);
* an operation that is linear in the activations (reshapes, sums, means, average pooling,
  concatenation, padding, interpolation, scaling by a constant, a linear map with constant
  weights), whose ordinary gradient in the backward form of the engine (relevance per unit
  of activation) is exact proportional redistribution;
* ReLU (its gradient is the identity rule) or a max selection (all relevance to the winner);
* any operation inside a module whose rule is :class:`~sglrp.rules.Gradient` (asked for).

Anything else (an unclassified product or a division of two activations, an exponential, a
nonlinearity the interceptor did not see, a custom ``autograd.Function``) is reported with
the operation and the module it ran in: :class:`UnsupportedOperation`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .nodes import ENGINE_FUNCTIONS

_STRUCTURAL = re.compile(
    r"(View|UnsafeView|ReshapeAlias|Alias|Permute|Transpose|T|Expand|Squeeze\d*|Unsqueeze\d*|"
    r"Select|Slice|Index|IndexSelect|Gather|Cat|Stack|Split|SplitWithSizes|Unbind|Clone|Copy"
    r"Backwards|CopySlices|AsStrided|ConstantPadNd|ReflectionPad\dD|ReplicationPad\dD|Flip|Roll|"
    r"Repeat|RepeatInterleave|Diagonal|Add|Sub|Neg|Sum|Mean|AvgPool\dD|AdaptiveAvgPool\dD|"
    r"UpsampleBilinear\dD|UpsampleNearest\dD|UpsampleNearestExact\dD|UpsampleBicubic2D|"
    r"UpsampleLinear1D|UpsampleTrilinear3D|PixelShuffle|PixelUnshuffle|ChannelShuffle|Where|"
    r"MaskedFill|ToCopy|Cumsum|Unfold|Im2Col|Col2Im|NativeBatchNorm|Relu|MaxPool\dDWithIndices|"
    r"AdaptiveMaxPool\dD|Amax|Amin|Max|Min|Unflatten|Narrow)(Backward\d*|Backwards)?$"
)
"""Node names whose ordinary gradient is the right treatment, whatever their inputs."""

_SCALING = re.compile(
    r"(Mul|Div|Mm|Bmm|Addmm|Baddbmm|Addbmm|Mv|Linear|Convolution|Dot|Matmul)Backward\d*$"
)
"""Node names that are linear if exactly one input is an activation (the rest constant)."""

_SOFTMAX = re.compile(r"SoftmaxBackward\d*$")


@dataclass
class Site:
    """Where an operation ran: its function, the innermost module, and whether an enclosing
    module's rule is :class:`Gradient` (then any operation inside is accepted)."""

    op: str
    module: str
    module_type: str
    gradient_ok: bool = False


class UnsupportedOperation(ValueError):
    """An operation on the activations that the engine cannot treat correctly."""


@dataclass(frozen=True)
class Problem:
    """One unsupported node: its autograd name, where it ran, and why it is refused."""

    node: str
    site: Site | None
    why: str

    def message(self) -> str:
        if self.site is not None and self.site.module:
            where = f"in layer '{self.site.module}' ({self.site.module_type})"
            fix = (
                f"assign a rule to that module, e.g. rules=[..., ('{self.site.module}', "
                "sglrp.rules.Gradient())] to use its gradient"
            )
        else:
            where = "in the model's own forward (outside any submodule)"
            fix = "move it into a submodule and assign that module a rule"
        op = f" ({self.site.op})" if self.site is not None and self.site.op else ""
        return f"unsupported operation {self.node}{op} {where}: {self.why}; {fix}"


def _activation_inputs(node: Any) -> int:
    return sum(1 for child, _ in node.next_functions if child is not None)


def judge(node: Any, allow_softmax: bool) -> str | None:
    """Why ``node`` is unsupported, or None if its gradient (or its engine rule) is right."""
    name = type(node).__name__
    forward_cls = getattr(node, "_forward_cls", None)
    if forward_cls is not None:
        if forward_cls in ENGINE_FUNCTIONS:
            return None
        return f"custom autograd.Function {forward_cls.__name__}, whose backward is not an LRP rule"
    if name == "AccumulateGrad" or _STRUCTURAL.match(name):
        return None
    if _SCALING.match(name):
        inputs = _activation_inputs(node)
        if inputs <= 1:
            return None
        if name.startswith("Div"):
            return "division by an activation"
        return (
            "a product of two activations that the engine could not classify (neither factor "
            "comes from a sigmoid or hard-sigmoid, and neither is broadcast over the other); "
            "sglrp.rules.Gate(operand=0 or 1) or sglrp.rules.Uniform() on the module say how "
            "to treat it"
        )
    if allow_softmax and _SOFTMAX.match(name):
        return None
    return f"{name.removesuffix('Backward0')} has no LRP treatment"


def check_graph(
    output: Tensor, sites: dict[int, tuple[str, Site]], allow_softmax: bool
) -> list[Problem]:
    """Walk the autograd graph from ``output`` and list the unsupported nodes.

    ``sites`` maps ``id(node)`` to ``(node type name, Site)`` as recorded by the interceptor;
    a node without a site inherits the site of the node that uses it.
    """
    problems: list[Problem] = []
    root = output.grad_fn
    if root is None:
        return problems
    seen: set[int] = set()
    stack: list[tuple[Any, Site | None]] = [(root, None)]
    while stack:
        node, inherited = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        name = type(node).__name__
        recorded = sites.get(id(node))
        site = recorded[1] if recorded is not None and recorded[0] == name else inherited
        if not (site is not None and site.gradient_ok):
            why = judge(node, allow_softmax)
            if why is not None:
                problems.append(Problem(name, site, why))
        for child, _ in node.next_functions:
            if child is not None:
                stack.append((child, site))
    return problems
