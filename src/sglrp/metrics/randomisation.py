"""Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018): do the maps change
when the model's layers are randomised, from the output down?
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..targets import TargetSpec, resolve_targets
from ..validation import check_input, check_model, model_logits
from ._diagnostics import (
    ModelExplainFn,
    _execution_order,
    _explain,
    _linear_layers,
    _warn_nan,
)
from .similarity import normalise_minmax, spearman, ssim

__all__ = ["RandomisationResult", "randomisation_test", "randomise_layer"]


@dataclass(frozen=True)
class RandomisationResult:
    """Cascading model-parameter randomisation: similarity to the original map per step.

    Attributes
    ----------
    layers
        Layer names in the order they were randomised (output layer first); step ``k``
        has layers ``0..k`` randomised.
    spearman
        (N, L) Spearman rank correlation of :math:`|R|` with the original map.
    ssim
        (N, L) SSIM of the min-max normalised :math:`|R|` with the original map's.
    """

    layers: tuple[str, ...]
    spearman: Tensor
    ssim: Tensor

    @property
    def spearman_mean(self) -> Tensor:
        """(L,) mean over images (NaN excluded)."""
        return self.spearman.nanmean(dim=0)

    @property
    def ssim_mean(self) -> Tensor:
        """(L,) mean over images."""
        return self.ssim.nanmean(dim=0)


def randomise_layer(layer: nn.Module, generator: torch.Generator) -> None:
    """Redraw each parameter of ``layer`` (in place) with its own mean and spread.

    For every parameter :math:`w` of the module itself (registration order),
    :math:`w \\leftarrow \\bar w + \\sigma_w \\varepsilon`, :math:`\\varepsilon \\sim
    \\mathcal N(0, 1)` elementwise from ``generator`` (``torch.randn``), with :math:`\\bar w`
    the mean and :math:`\\sigma_w` the population standard deviation of :math:`w`; so the
    layer keeps its scale (a constant parameter, e.g. zero biases, stays constant).
    """
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            mean, std = p.mean(), p.std(correction=0)
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.copy_(mean + std * noise.to(p.device))


def randomisation_test(
    model: nn.Module,
    x: Tensor,
    targets: TargetSpec,
    explain: ModelExplainFn,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> RandomisationResult:
    """Cascading model-parameter randomisation test (Adebayo et al., NeurIPS 2018).

    On a deep copy of ``model`` (the model itself is never changed), the parameterised
    layers are randomised one at a time from the output layer downwards, cumulatively
    (:func:`randomise_layer`, one ``torch.Generator`` seeded with ``seed`` for all draws, in
    that order). After each step the map is compared with the original map of the copy:

    .. math:: \\rho_k = \\mathrm{Spearman}(|R|, |R^{(k)}|), \\quad
        s_k = \\mathrm{SSIM}(\\widehat{|R|}, \\widehat{|R^{(k)}|})

    with channel-summed maps and :math:`\\widehat{\\cdot}` the per-map min-max normalisation
    to [0, 1]. A method whose maps depend on the learned parameters gives values falling
    towards 0 as more layers are randomised; maps that stay similar do not explain the model.

    Parameters
    ----------
    model
        Classifier; deep-copied, so it must support ``copy.deepcopy``.
    x
        (N, C, H, W) images (H, W >= 11 for SSIM).
    targets
        Class indices (N,) or an int, ``"predicted"``, ``"second"``; strings are resolved
        once on the original parameters and kept fixed through the randomisation.
    explain
        ``explain(model_copy, x, targets) -> relevance (N, C, H, W) or (N, 1, H, W)``, e.g.
        ``lambda m, x, t: sglrp.explain(m, x, t, method="lrp")``.
    layers
        Module names to randomise (each with parameters); default every conv and linear
        layer. They are randomised in reverse execution order whatever the order given.
    seed
        Seed of the random parameters (the global RNG is not used).

    Returns
    -------
    RandomisationResult
        NaN Spearman values (constant maps) come with a warning.
    """
    check_model(model)
    check_input(x)
    x = x.detach()
    try:
        work = copy.deepcopy(model)
    except Exception as err:
        raise TypeError(
            f"randomisation_test needs a deep copy of the model and copy.deepcopy failed "
            f"({err}); make the model deep-copyable"
        ) from err
    modules = dict(work.named_modules())
    names = list(layers) if layers is not None else _linear_layers(work)
    if not names:
        raise ValueError("the model has no conv or linear layer; pass layers=[...]")
    for name in names:
        if name not in modules:
            raise ValueError(f"unknown layer {name!r}; use names from model.named_modules()")
        if next(iter(modules[name].parameters(recurse=False)), None) is None:
            raise ValueError(f"layer {name!r} has no parameters of its own to randomise")
    order = list(reversed(_execution_order(work, x, names)))
    t = resolve_targets(targets, model_logits(work, x))
    if t.ndim != 1:
        raise ValueError("randomisation_test takes one target per image: shape (N,)")

    def absolute_map(m: nn.Module) -> Tensor:
        return _explain(lambda xx, tt: explain(m, xx, tt), x, t).abs()

    original = absolute_map(work)
    original_norm = normalise_minmax(original)
    generator = torch.Generator().manual_seed(seed)
    rho, sim = [], []
    for name in order:
        randomise_layer(modules[name], generator)
        current = absolute_map(work)
        rho.append(spearman(original, current))
        sim.append(ssim(original_norm, normalise_minmax(current)))
    spearman_all = torch.stack(rho, dim=1)
    _warn_nan(spearman_all, "randomisation test", "a map is constant, so it has no ranking")
    return RandomisationResult(tuple(order), spearman_all, torch.stack(sim, dim=1))
