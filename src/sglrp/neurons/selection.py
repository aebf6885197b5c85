"""Choosing neurons: top-k and relevance-fraction selections, MSE / SMAPE, curves over k.

A selection maps layer names to boolean (N, C) tensors (True = kept). The quality of a
selection is measured two ways, each with MSE and SMAPE:

* *heatmap*: the restricted input heatmap (relevance flowing only through the selected
  neurons) against the full heatmap; heatmaps are summed over colour channels and both are
  divided by the full heatmap's :math:`\\max|\\cdot|` before the MSE, so tolerances do not
  depend on the relevance scale (SMAPE is scale-free anyway);
* *output*: the logits with only the selected neurons active in the forward pass (the others
  zeroed) against the full logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..presets import Bounds
from ..propagation import RulesSpec
from ..propagation.output import OutputRelevance
from ..targets import TargetSpec
from .relevance import (
    _mask_sites,
    ablated_logits,
    neuron_relevance,
    propagate_masked,
)

__all__ = [
    "METRICS",
    "SelectionCurve",
    "choose_k",
    "default_ks",
    "mse",
    "select",
    "select_fraction",
    "select_top_k",
    "selection_curve",
    "smape",
]

#: Names of the error curves of :class:`SelectionCurve`.
METRICS = ("heatmap_mse", "heatmap_smape", "output_mse", "output_smape")


# --------------------------------------------------------------------------- errors


def _pair(forecast: Tensor, actual: Tensor) -> tuple[Tensor, Tensor]:
    f = torch.as_tensor(forecast, dtype=torch.float64)
    a = torch.as_tensor(actual, dtype=torch.float64)
    if f.shape != a.shape:
        raise ValueError(
            f"forecast and actual must have the same shape, got {tuple(f.shape)} and "
            f"{tuple(a.shape)}"
        )
    if f.ndim == 0:
        f, a = f[None], a[None]
    if f.ndim == 1:
        f, a = f[None], a[None]
    return f.flatten(1), a.flatten(1)


def mse(forecast: Tensor, actual: Tensor) -> Tensor:
    """Mean squared error per sample: :math:`\\frac1n \\sum_i (F_i - A_i)^2`.

    Inputs of shape (N, ...) give (N,) (float64); 1-D inputs count as one sample.
    """
    f, a = _pair(forecast, actual)
    return (f - a).square().mean(dim=1)


def smape(forecast: Tensor, actual: Tensor) -> Tensor:
    """Symmetric mean absolute percentage error per sample, in [0, 200].

    :math:`\\mathrm{SMAPE} = \\frac{100}{n} \\sum_i \\frac{|F_i - A_i|}{(|A_i| + |F_i|)/2}`,
    where a term with :math:`F_i = A_i = 0` counts as 0. Inputs (N, ...) give (N,).
    """
    f, a = _pair(forecast, actual)
    num = (f - a).abs()
    den = (a.abs() + f.abs()) / 2
    terms = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return 100.0 * terms.mean(dim=1)


# --------------------------------------------------------------------------- selections


def _as_relevance(relevance: Mapping[str, Tensor] | object) -> Mapping[str, Tensor]:
    rel = getattr(relevance, "relevance", relevance)
    if not isinstance(rel, Mapping):
        raise TypeError(
            "relevance must be a NeuronRelevance or a dict layer -> (N, C) tensor, got "
            f"{type(relevance).__name__}"
        )
    return rel


def _score(r: Tensor, by: str) -> Tensor:
    if by == "positive":
        return r
    if by == "absolute":
        return r.abs()
    raise ValueError(f"by must be 'positive' or 'absolute', got {by!r}")


def _ranks(score: Tensor) -> Tensor:
    """Rank of each neuron per row (0 = most relevant; ties broken by index)."""
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def select_top_k(
    relevance: Mapping[str, Tensor] | object,
    k: int | Mapping[str, int],
    layers: Sequence[str] | None = None,
    by: str = "absolute",
) -> dict[str, Tensor]:
    """Keep the ``k`` most relevant neurons of each layer.

    Parameters
    ----------
    relevance
        :class:`~sglrp.neurons.NeuronRelevance` or layer -> (N, C) neuron relevance.
    k
        Neurons kept per layer (capped at the layer's width), or a dict layer -> k.
    layers
        Layers to select in (default: every layer in ``relevance``, or the keys of ``k``).
    by
        ``"absolute"`` (default): largest :math:`|R_c|`; ``"positive"``: largest signed
        relevance (only the neurons speaking *for* the target). For LRP with z+ all neuron
        relevance is non-negative and both agree; for SGLRP and CLRP the neurons with negative
        relevance carry the evidence for the other classes, and the full heatmap and output
        are only approached when they are kept too, so ``"absolute"`` is the default.

    Returns
    -------
    dict
        Layer -> bool (N, C) selection.
    """
    rel = _as_relevance(relevance)
    if layers is None:
        layers = list(k) if isinstance(k, Mapping) else list(rel)
    out = {}
    for name in layers:
        if name not in rel:
            raise ValueError(f"no relevance for layer {name!r}; known: {', '.join(rel)}")
        kk = k[name] if isinstance(k, Mapping) else k
        if isinstance(kk, bool) or not isinstance(kk, int) or kk < 1:
            raise ValueError(f"k must be a positive int, got {kk!r} for layer {name!r}")
        out[name] = _ranks(_score(rel[name], by)) < kk
    return out


def select_fraction(
    relevance: Mapping[str, Tensor] | object,
    fraction: float,
    layers: Sequence[str] | None = None,
    by: str = "absolute",
) -> dict[str, Tensor]:
    """Keep the smallest set of neurons holding ``fraction`` of each layer's relevance.

    Neurons are taken in decreasing order of :math:`|R_c|` (``by="absolute"``, default) or of
    :math:`R_c` (``by="positive"``) until they hold ``fraction`` of the layer's total
    :math:`\\sum_c |R_c|` (or :math:`\\sum_c \\max(R_c, 0)`). At least one neuron is kept.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    rel = _as_relevance(relevance)
    out = {}
    for name in layers if layers is not None else list(rel):
        if name not in rel:
            raise ValueError(f"no relevance for layer {name!r}; known: {', '.join(rel)}")
        score = _score(rel[name], by).double()
        values, order = score.sort(dim=1, descending=True)
        mass = values.clamp(min=0)
        total = mass.sum(dim=1, keepdim=True)
        before = mass.cumsum(dim=1) - mass  # mass held by the neurons ranked above
        keep = before < fraction * total * (1 - 1e-12)
        keep[:, 0] = True
        out[name] = torch.zeros_like(keep).scatter_(1, order, keep)
    return out


def select(
    relevance: Mapping[str, Tensor] | object,
    k: int | Mapping[str, int] | None = None,
    fraction: float | None = None,
    layers: Sequence[str] | None = None,
    by: str = "absolute",
) -> dict[str, Tensor]:
    """Top-``k`` (:func:`select_top_k`) or relevance-``fraction`` (:func:`select_fraction`)."""
    if (k is None) == (fraction is None):
        raise ValueError("give exactly one of k (neurons per layer) or fraction (of relevance)")
    if k is not None:
        return select_top_k(relevance, k, layers, by)
    return select_fraction(relevance, fraction, layers, by)


# --------------------------------------------------------------------------- curves


@dataclass
class SelectionCurve:
    """Errors of top-k selections against the full model, averaged over the images.

    Attributes
    ----------
    ks
        Neurons kept per layer.
    layers
        Layers restricted (the same k in each, capped at the layer width).
    heatmap_mse, heatmap_smape
        Restricted vs full input heatmap (channel-summed; MSE after dividing both by the
        full map's max magnitude).
    output_mse, output_smape
        Logits with only the selected neurons active vs the full logits.
    per_image
        Metric name -> (len(ks), N) array of the same errors per image.
    """

    ks: list[int]
    layers: list[str]
    heatmap_mse: list[float]
    heatmap_smape: list[float]
    output_mse: list[float]
    output_smape: list[float]
    per_image: dict[str, np.ndarray]

    def to_dict(self) -> dict:
        """JSON-ready dict (per-image arrays as nested lists)."""
        d = asdict(self)
        d["per_image"] = {k: np.asarray(v).tolist() for k, v in self.per_image.items()}
        return d


def default_ks(width: int, points: int = 24) -> list[int]:
    """Every k up to 8, then about ``points`` values spaced geometrically up to ``width``."""
    dense = list(range(1, min(width, 8) + 1))
    geo = np.unique(np.round(np.geomspace(1, width, points)).astype(int)).tolist()
    return sorted({*dense, *(int(g) for g in geo if 1 <= g <= width), width})


def _heatmap(relevance: Tensor) -> Tensor:
    return relevance.sum(dim=1)


def selection_curve(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str],
    ks: Sequence[int] | None = None,
    target: TargetSpec = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    *,
    by: str = "absolute",
    batch_size: int = 16,
    epsilon: float | None = None,
) -> SelectionCurve:
    """MSE and SMAPE of top-k selections at ``layers`` for every k in ``ks``.

    For each k, the k most relevant neurons of each layer in ``layers`` are kept (ranked by
    the full relevance), and the restricted heatmap and the ablated output are compared with
    the full ones. All k are computed in batched passes of at most ``batch_size`` copies of
    the input.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; name at least one conv or linear layer")
    full = neuron_relevance(model, x, target, method, rules, bounds, epsilon=epsilon)
    for name in layers:
        if name not in full.relevance:
            raise ValueError(
                f"layer {name!r} is not a hidden conv/linear layer; choose from: "
                f"{', '.join(full.layers)}"
            )
    width = max(full.relevance[name].shape[1] for name in layers)
    ks = default_ks(width) if ks is None else sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    n = x.shape[0]
    sites = _mask_sites(model, x, rules, bounds, epsilon)
    full_map = _heatmap(full.input_relevance).double()
    scale = full_map.flatten(1).abs().amax(dim=1).clamp(min=torch.finfo(torch.float64).tiny)
    scale = scale.view(n, 1, 1)

    # every (k, image) pair is one copy of the input; copies are processed in chunks
    jobs = [(k, i) for k in ks for i in range(n)]
    errors = {m: np.zeros((len(ks), n)) for m in METRICS}
    per_chunk = max(1, int(batch_size))
    for start in range(0, len(jobs), per_chunk):
        chunk = jobs[start : start + per_chunk]
        idx = torch.tensor([i for _, i in chunk])
        xs = x[idx]
        rel = {name: full.relevance[name][idx] for name in layers}
        k_rows = torch.tensor([k for k, _ in chunk])[:, None]
        sel = {name: _ranks(_score(rel[name], by)) < k_rows for name in layers}
        result = propagate_masked(
            model, xs, full.targets[idx], sel, method, rules, bounds, epsilon=epsilon
        )
        restricted = _heatmap(result.input_relevance).double()
        logits = ablated_logits(model, xs, sel, sites=sites).double()
        ref_map = full_map[idx]
        ref_logits = full.logits[idx].double()
        values = {
            "heatmap_mse": mse(restricted / scale[idx], ref_map / scale[idx]),
            "heatmap_smape": smape(restricted, ref_map),
            "output_mse": mse(logits, ref_logits),
            "output_smape": smape(logits, ref_logits),
        }
        for j, (k, i) in enumerate(chunk):
            row = ks.index(k)
            for metric, v in values.items():
                errors[metric][row, i] = float(v[j])
    means = {m: errors[m].mean(axis=1).tolist() for m in METRICS}
    return SelectionCurve(ks=list(ks), layers=layers, per_image=errors, **means)


def choose_k(curve: SelectionCurve, tolerance: float, metric: str = "heatmap_smape") -> int | None:
    """Smallest k whose mean error ``metric`` is at most ``tolerance`` (None if none is).

    ``metric`` is one of :data:`METRICS`; SMAPE is in percent (0-200).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    for k, err in zip(curve.ks, getattr(curve, metric), strict=True):
        if err <= tolerance:
            return int(k)
    return None
