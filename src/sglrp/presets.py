"""Named rule presets (composites) and conversion of user rule maps."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .rules import (
    MAXPOOL_TYPES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    ProportionalPool,
    Rule,
    RuleKey,
    RuleMap,
    ZBox,
    ZPlus,
)

Bounds = tuple[Tensor | float, Tensor | float]
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _dtd(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES + (nn.Linear,), ZPlus(bias=False))], first=ZBox(*bounds))


def _lrp0(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES + (nn.Linear,), Epsilon(0.0))])


def _epsilon(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES + (nn.Linear,), Epsilon(epsilon))])


def _epsilon_plus(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES, ZPlus(bias=True)), (nn.Linear, Epsilon(epsilon))])


def _epsilon_plus_flat(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES, ZPlus(bias=True)), (nn.Linear, Epsilon(epsilon))], first=Flat())


def _epsilon_gamma_box(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES, Gamma(0.25)), (nn.Linear, Epsilon(epsilon))], first=ZBox(*bounds))


def _epsilon_alpha2beta1(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap([(CONV_TYPES, AlphaBeta(2.0, 1.0)), (nn.Linear, Epsilon(epsilon))])


def _epsilon_cp(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap(
        [(CONV_TYPES + (nn.Linear,), Epsilon(epsilon))], first=ZBox(*bounds), attention="cp"
    )


def _epsilon_attnlrp(bounds: Bounds, epsilon: float) -> RuleMap:
    return RuleMap(
        [(CONV_TYPES + (nn.Linear,), Epsilon(epsilon))], first=ZBox(*bounds), attention="attnlrp"
    )


def _innvestigate_1_0_8_3(bounds: Bounds, epsilon: float) -> RuleMap:
    alpha1beta0 = AlphaBeta(1.0, 0.0, bias=True)
    return RuleMap([(CONV_TYPES + (nn.Linear,), alpha1beta0)], first=ZBox(*bounds))


def _innvestigate_1_0_0(bounds: Bounds, epsilon: float) -> RuleMap:
    rule_map = _innvestigate_1_0_8_3(bounds, epsilon)
    return RuleMap([(MAXPOOL_TYPES, ProportionalPool()), *rule_map.entries], first=rule_map.first)


#: Preset name -> (builder(bounds, epsilon), description). ``epsilon`` defaults to 1e-6 in
#: the composite presets (as zennit) and 0.25 in ``"epsilon"``.
PRESETS: dict[str, tuple[Callable[[Bounds, float], RuleMap], str]] = {
    "dtd": (_dtd, "z+ without bias on every conv/linear layer, Z^B at the first (the paper)"),
    "lrp0": (_lrp0, "LRP-0 everywhere (equals input x gradient for zero biases)"),
    "epsilon": (_epsilon, "LRP-epsilon (epsilon=0.25) everywhere"),
    "epsilon-plus": (_epsilon_plus, "z+ (with bias) on conv, epsilon on linear layers"),
    "epsilon-plus-flat": (_epsilon_plus_flat, "as epsilon-plus, flat at the first layer"),
    "epsilon-gamma-box": (
        _epsilon_gamma_box,
        "gamma (0.25) on conv, epsilon on linear, Z^B at the first layer",
    ),
    "epsilon-alpha2beta1": (_epsilon_alpha2beta1, "alpha2-beta1 on conv, epsilon on linear"),
    "epsilon-cp": (
        _epsilon_cp,
        "transformers: epsilon on every linear layer, Z^B on the pixels (patch embedding), "
        "identity through GELU and LayerNorm (constant std), attention weights constant "
        "(CP-LRP, Ali et al. 2022; LXT's ViT recipe)",
    ),
    "epsilon-attnlrp": (
        _epsilon_attnlrp,
        "transformers: as epsilon-cp with AttnLRP's softmax and uniform product rules in "
        "attention (Achtibat et al. 2024)",
    ),
    "innvestigate-1.0.8.3": (
        _innvestigate_1_0_8_3,
        "alpha1-beta0 with bias on every conv/linear layer, Z^B at the first (the SGLRP "
        "authors' code on iNNvestigate 1.0.8.3)",
    ),
    "innvestigate-1.0.0": (
        _innvestigate_1_0_0,
        "as innvestigate-1.0.8.3, and max-pool relevance spread in proportion to the inputs "
        "(iNNvestigate 1.0.0)",
    ),
}


def is_transformer(model: nn.Module) -> bool:
    """True if ``model`` has an ``nn.MultiheadAttention`` or a module whose class name says
    ``Transformer``."""
    return any(
        isinstance(m, nn.MultiheadAttention) or "Transformer" in type(m).__name__
        for m in model.modules()
    )


def default_preset(model: nn.Module) -> str:
    """The preset an evaluation uses for ``model``.

    * a CNN: ``"dtd"`` (the SGLRP paper's rules);
    * a transformer (:func:`is_transformer`) whose only convolution is the patch embedding:
      ``"epsilon-cp"`` (LXT's and Ali et al. 2022's ViT recipe);
    * a hybrid transformer with a CNN stem: ``"epsilon-plus"`` (z+ on the stem's
      convolutions, epsilon on the linear layers, CP attention). On the shipped hybrid
      ``shapes_vit`` SGLRP's swap test is +0.445 with it and +0.095 with ``"epsilon-cp"``,
      whose epsilon on the stem spreads relevance over both objects
      (``benchmarks/vit_contrast.py``).
    """
    if not is_transformer(model):
        return "dtd"
    convs = sum(isinstance(m, CONV_TYPES) for m in model.modules())
    return "epsilon-plus" if convs > 1 else "epsilon-cp"


def bounds_from_normalization(
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    low: float = 0.0,
    high: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-channel Z^B bounds for inputs normalised as ``(x - mean) / std`` from ``[low, high]``.

    For ImageNet statistics this gives low = (-2.118, -2.036, -1.804) and
    high = (2.249, 2.429, 2.640); the CLRP authors' code uses the global pair (-2.1179, 2.64).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)
    if mean_t.shape != std_t.shape or mean_t.ndim != 1:
        raise ValueError("mean and std must be 1-D sequences of equal length (one per channel)")
    if (std_t <= 0).any():
        raise ValueError("std must be positive")
    return ((low - mean_t) / std_t).float(), ((high - mean_t) / std_t).float()


def scalar_bounds(bounds: Bounds | None, x: Tensor) -> tuple[Tensor, Tensor]:
    """One lower and one upper bound for all channels, as a global Z^B of the released code.

    The lowest of the lower and the highest of the upper per-channel bounds; with
    ``bounds=None`` per image from :func:`default_bounds` (shape (N, 1)).
    """
    if bounds is None:
        low, high = default_bounds(x)
        return low.amin(dim=1, keepdim=True), high.amax(dim=1, keepdim=True)
    low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    return low.min(), high.max()


def default_bounds(x: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds used when none are given: each image's own per-channel minimum and maximum.

    Per image, so an explanation does not depend on the other images in the batch.
    """
    flat = x.detach().flatten(2)
    return flat.amin(dim=2), flat.amax(dim=2)


def resolve_rules(
    rules: str | RuleMap | Mapping[RuleKey, Rule] | Sequence[tuple[RuleKey, Rule]],
    x: Tensor,
    bounds: Bounds | None = None,
    epsilon: float | None = None,
) -> RuleMap:
    """Turn a preset name, a mapping or a list of ``(key, rule)`` pairs into a :class:`RuleMap`.

    ``bounds=None``: presets with Z^B take each image's own per-channel minimum and maximum
    of the first layer's input (:func:`default_bounds` of what that layer sees).
    """
    if isinstance(rules, RuleMap):
        return rules
    if isinstance(rules, str):
        key = rules.lower().replace("_", "-")
        if key not in PRESETS:
            raise ValueError(
                f"unknown rules preset {rules!r}; available: {', '.join(PRESETS)} "
                "(or pass a list of (module type or name, rule) pairs)"
            )
        builder, _ = PRESETS[key]
        eps = epsilon if epsilon is not None else (0.25 if key == "epsilon" else 1e-6)
        return builder(bounds if bounds is not None else (None, None), eps)
    if isinstance(rules, Mapping):
        return RuleMap(list(rules.items()))
    if isinstance(rules, Sequence):
        entries = list(rules)
        for entry in entries:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Rule)):
                raise TypeError(
                    "a rule map is a list of (module type or name, rule) pairs, e.g. "
                    "[(torch.nn.Conv2d, ZPlus()), ('classifier.6', Epsilon())]; got "
                    f"{entry!r}"
                )
        return RuleMap(entries)
    raise TypeError(f"rules must be a preset name, a RuleMap or a list of pairs, got {rules!r}")
