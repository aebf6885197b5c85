"""The LRP family: LRP, Contrastive LRP and Softmax-Gradient LRP.

Each propagates an output relevance vector at the logits to the input with LRP rules
(:mod:`sglrp.rules`, presets in :mod:`sglrp.presets`); they differ only in that vector
(:mod:`sglrp.propagation.output`). One forward pass serves every target.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..presets import Bounds, scalar_bounds
from ..propagation import RulesSpec, propagate
from ..propagation.output import (
    OutputRelevance,
    OutputRelevanceSpec,
    combine_parts,
    sglrp_parts,
)
from ..targets import Target
from .registry import Method, MethodFn, register

__all__ = ["SGLRP_VARIANTS", "clrp", "lrp", "output_relevance_method", "sglrp"]

#: SGLRP variants: the paper's formula and the behaviours of the authors' released code.
SGLRP_VARIANTS: dict[str, str] = {
    "paper": "the paper's eq. 10: dy_t/dz_n propagated once with the given rules",
    "authors": (
        "the combination step of the authors' code with the given rules: target part "
        "y_t(1-y_t) and dual part y_t y_n (classes with z_n <= 0 removed from the dual only) "
        "propagated separately, result T - D sum(T)/sum(D); it follows neither released "
        "iNNvestigate version exactly (see the innvestigate-* variants)"
    ),
    "innvestigate-1.0.0": (
        "the released code on iNNvestigate 1.0.0 (paper time): softmax of the raw logits, "
        "alpha1-beta0 with bias, proportional max-pool relevance, scalar Z^B bounds at the "
        "input; T - D sum(T)/sum(D)"
    ),
    "innvestigate-1.0.8.3": (
        "the released code on iNNvestigate 1.0.8.3 (README/Docker since Dec 2019): softmax of "
        "ReLU(z) and every class with z <= 0 zeroed, the target included (z_t <= 0 gives an "
        "all-zero map), alpha1-beta0 with bias, scalar Z^B bounds at the input; "
        "T - D sum(T)/sum(D)"
    ),
}


def _lrp(model, x, target, output_relevance, rules, bounds, epsilon, attention) -> Tensor:
    result = propagate(
        model, x, target, output_relevance, rules, bounds, epsilon=epsilon, attention=attention
    )
    return result.input_relevance


_OPTIONS_DOC = """

    ``rules``: a preset name (``"dtd"``: z+ everywhere and Z^B at the first layer, the paper's
    choice) or a rule map ``[(module type or name, rule), ...]``, first match wins.
    ``bounds``: ``(low, high)`` for Z^B (:func:`sglrp.bounds_from_normalization`); None takes
    each image's own per-channel minimum and maximum. ``epsilon``: of the epsilon rules.
    ``attention``: ``"cp"`` (attention weights constant) or ``"attnlrp"`` for transformers
    (default: the preset's, else ``"cp"``).
    """


def _propagating(output_relevance: OutputRelevanceSpec, name: str, doc: str) -> MethodFn:
    """A method propagating ``output_relevance`` with LRP rules (LRP, CLRP, a user's)."""

    def method(
        model: nn.Module,
        x: Tensor,
        target: Target,
        rules: RulesSpec = "dtd",
        bounds: Bounds | None = None,
        epsilon: float | None = None,
        attention: str | None = None,
    ) -> Tensor:
        return _lrp(model, x, target, output_relevance, rules, bounds, epsilon, attention)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc + _OPTIONS_DOC
    return method


lrp = register(
    "lrp",
    _propagating(
        "lrp", "lrp", "LRP: output relevance :math:`R_n = z_t` for :math:`n = t`, else 0 (eq. 3)."
    ),
    label="LRP",
    family="lrp",
    summary="z_t at the target, propagated with LRP rules",
    reference="Bach et al. 2015; Iwana et al. 2019 eq. 3",
)

clrp = register(
    "clrp",
    _propagating(
        "clrp",
        "clrp",
        "Contrastive LRP: :math:`z_t` at :math:`t`, :math:`-z_t/(C-1)` elsewhere (eq. 7).",
    ),
    label="CLRP",
    family="lrp",
    summary="z_t at the target, -z_t/(C-1) elsewhere, propagated with LRP rules",
    reference="Gu et al. 2018 (CLRP1); Iwana et al. 2019 eq. 7",
)


@register(
    "sglrp",
    label="SGLRP",
    family="lrp",
    summary="the softmax gradient dy_t/dz_n, propagated with LRP rules; sums to zero",
    reference="Iwana, Kuroki & Uchida 2019 eq. 10",
)
def sglrp(
    model: nn.Module,
    x: Tensor,
    target: Target,
    rules: RulesSpec | None = None,
    bounds: Bounds | None = None,
    epsilon: float | None = None,
    variant: str = "paper",
    attention: str | None = None,
) -> Tensor:
    """Softmax-Gradient LRP: :math:`R_n = \\partial y_t / \\partial z_n`, i.e.
    :math:`y_t(1-y_t)` at :math:`t` and :math:`-y_t y_n` elsewhere (eq. 10).

    ``variant`` (:data:`SGLRP_VARIANTS`): ``"paper"`` (default), ``"authors"``,
    ``"innvestigate-1.0.0"`` or ``"innvestigate-1.0.8.3"``. ``rules`` default to ``"dtd"``,
    and to the released code's preset for the ``innvestigate-*`` variants (passing rules
    to those is an error: the variant fixes them).
    """
    if variant not in SGLRP_VARIANTS:
        raise ValueError(
            f"unknown SGLRP variant {variant!r}; use one of {', '.join(SGLRP_VARIANTS)}"
        )
    if variant == "paper":
        return _lrp(model, x, target, "sglrp", rules or "dtd", bounds, epsilon, attention)
    if variant.startswith("innvestigate"):
        if rules is not None:
            raise ValueError(
                f"variant {variant!r} fixes its rules (the released code's); leave rules unset"
            )
        rules = variant
        bounds = scalar_bounds(bounds, x)
    relu_logits = variant == "innvestigate-1.0.8.3"
    dual_relu = variant == "authors"

    def parts(logits: Tensor, t: Tensor) -> Tensor:
        return sglrp_parts(logits, t, relu_logits=relu_logits, dual_relu=dual_relu)

    both = _lrp(model, x, target, parts, rules or "dtd", bounds, epsilon, attention)
    if target.is_multi:
        n, k = both.shape[:2]
        return combine_parts(both.flatten(0, 1)).unflatten(0, (n, k))
    return combine_parts(both)


def output_relevance_method(output_relevance: OutputRelevance) -> Method:
    """An unregistered LRP method propagating a user's output relevance
    ``(logits (N, C), targets (N,)) -> (N, C)`` (what ``explain(method=callable)`` runs)."""
    name = getattr(output_relevance, "__name__", "custom")
    fn = _propagating(output_relevance, name, "A user's output relevance.")
    return Method(
        name=name,
        fn=fn,
        label=name,
        options=("rules", "bounds", "epsilon", "attention"),
        family="lrp",
        summary="a user's output relevance, propagated with LRP rules",
    )
