"""What the engine will do to a model, before anyone trusts a map: :func:`inspect`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ._guard import frozen
from .presets import Bounds, resolve_rules
from .propagation import Propagator, RulesSpec
from .propagation.interceptor import Treatment
from .validation import check_input, check_model

__all__ = ["Inspection", "inspect"]


@dataclass
class Inspection:
    """Every operation of one forward pass and its treatment, in execution order.

    Attributes
    ----------
    rows
        One :class:`~sglrp.propagation.interceptor.Treatment` per operation on activations:
        index, module name and type, operation, treatment (``rule ZPlus(...)``, ``merged into
        ...``, ``identity rule``, ``gate (factor 1 held constant)``, ``normalisation with the
        standard deviation held constant``, ``gradient``, ``unsupported: ...``).
    problems
        The operations ``explain`` would refuse, each with its module and the fix.
    unmatched
        Rule-map entries (by type) that match no module of the model.
    no_rule
        Linear layers that no rule matches (they would use their gradient, with a warning).
    """

    rows: list[Treatment]
    problems: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    no_rule: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every operation has a treatment (``explain`` would not refuse the model)."""
        return not self.problems

    def table(self) -> str:
        """The rows as a plain-text table."""
        header = ("#", "module", "type", "operation", "treatment")
        cells = [header] + [
            (str(r.index), r.module or "(model)", r.module_type, r.op, r.treatment)
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
            for row in cells
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        out = [self.table()]
        for title, items in (
            ("unsupported", self.problems),
            ("rule-map entries matching no layer", self.unmatched),
            ("linear layers without a rule (gradient)", self.no_rule),
        ):
            if items:
                out.append(f"\n{title}:")
                out.extend(f"  {item}" for item in items)
        return "\n".join(out)


def inspect(
    model: nn.Module,
    example_input: Tensor,
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    epsilon: float | None = None,
    attention: str | None = None,
) -> Inspection:
    """List every layer and operation the forward pass meets and what LRP does with each.

    Runs one forward pass of ``model`` on ``example_input`` (the model is left as it was).
    Nothing is raised for unsupported operations: they are listed in
    :attr:`Inspection.problems` with the module they run in and how to assign a rule.

    Examples
    --------
    >>> print(sglrp.inspect(model, x[:1], rules="epsilon-plus"))  # doctest: +SKIP
    """
    check_model(model)
    check_input(example_input)
    rule_map = resolve_rules(rules, example_input, bounds, epsilon)
    with frozen(model):
        propagator = Propagator(model, rule_map, attention or rule_map.attention or "cp")
        run = propagator.run(example_input, lambda logits: [], inspect=True)
    return Inspection(
        rows=run.treatments or [],
        problems=run.problems,
        unmatched=propagator.unmatched_entries(),
        no_rule=list(dict.fromkeys(run.no_rule)),
    )
