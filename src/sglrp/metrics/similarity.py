"""Similarity of two relevance maps: SSIM and Spearman rank correlation, batched per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._core import check_maps, gaussian_kernel


def normalise_minmax(maps: Tensor) -> Tensor:
    """Each (H, W) map scaled to [0, 1]: ``(m - min m) / (max m - min m)``.

    Invariant to a positive scale and an offset of the map, so two maps differing only in
    those compare as identical. A constant map has no range and becomes all zeros.

    Parameters
    ----------
    maps
        (N, H, W) or (N, C, H, W) relevance (summed over channels first).

    Returns
    -------
    Tensor
        (N, H, W) float64 in [0, 1].
    """
    m = check_maps(maps).to(torch.float64)
    flat = m.flatten(1)
    low = flat.amin(dim=1)[:, None, None]
    span = flat.amax(dim=1)[:, None, None] - low
    return torch.where(span > 0, (m - low) / span.clamp(min=torch.finfo(m.dtype).tiny), 0.0)


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity of two batches of maps (Wang et al., IEEE TIP 2004).

    With Gaussian-weighted local means :math:`\\mu`, variances :math:`\\sigma^2` and covariance
    :math:`\\sigma_{ab}` (window ``window`` x ``window``, standard deviation ``sigma``, weights
    summing to 1, population moments),

    .. math::
        \\mathrm{SSIM}(a, b) = \\operatorname{mean}_{p}
        \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
        {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)},
        \\quad C_1 = (k_1 L)^2,\\ C_2 = (k_2 L)^2,

    with :math:`L` = ``data_range``, averaged over every position where the window fits
    inside the map (``valid``, no padding), as in the authors' reference code.

    Parameters
    ----------
    a, b
        (N, H, W) or (N, C, H, W) maps (summed over channels), H and W at least ``window``.
        They are compared as given: normalise them first (e.g. :func:`normalise_minmax`).
    data_range, window, sigma, k1, k2
        The standard constants by default (L = 1 for maps in [0, 1]).

    Returns
    -------
    Tensor
        (N,) float64 in [-1, 1]; 1 for identical maps. Symmetric in ``a`` and ``b``.
    """
    x, y = check_maps(a).to(torch.float64), check_maps(b).to(torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"maps to compare differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(
            f"maps of size {tuple(x.shape[-2:])} are smaller than the SSIM window ({window}); "
            "upsample them or pass a smaller odd window"
        )
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    g = gaussian_kernel(window, sigma, torch.float64, x.device)

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t[:, None], g.view(1, 1, -1, 1))
        return F.conv2d(t, g.view(1, 1, 1, -1))[:, 0]

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..M along dim 1, tied values sharing the mean of their ranks.

    A value with ``lo`` values strictly below it and ``hi`` values at most equal to it gets
    rank ``(lo + 1 + hi) / 2``. One sort per batch.

    Parameters
    ----------
    values
        (N, M) tensor.

    Returns
    -------
    Tensor
        (N, M) float64 ranks.
    """
    v = values.contiguous()
    ordered = v.sort(dim=1).values
    lo = torch.searchsorted(ordered, v, side="left")
    hi = torch.searchsorted(ordered, v, side="right")
    return (lo + hi + 1).to(torch.float64) / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per image: the Pearson correlation of average ranks.

    .. math:: \\rho = \\frac{\\sum_p (r_p - \\bar r)(s_p - \\bar s)}
        {\\sqrt{\\sum_p (r_p - \\bar r)^2 \\sum_p (s_p - \\bar s)^2}}

    with :math:`r, s` the :func:`average_ranks` of the flattened maps (Spearman 1904).

    Parameters
    ----------
    a, b
        (N, H, W) or (N, C, H, W) maps (summed over channels).

    Returns
    -------
    Tensor
        (N,) float64 in [-1, 1]; NaN where a map is constant (its ranks have no spread).
    """
    x, y = check_maps(a), check_maps(b)
    if x.shape != y.shape:
        raise ValueError(f"maps to compare differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    r = average_ranks(x.flatten(1))
    s = average_ranks(y.flatten(1))
    r = r - r.mean(dim=1, keepdim=True)
    s = s - s.mean(dim=1, keepdim=True)
    den = (r.square().sum(dim=1) * s.square().sum(dim=1)).sqrt()
    rho = (r * s).sum(dim=1) / den.clamp(min=torch.finfo(torch.float64).tiny)
    return rho.masked_fill(den == 0, float("nan"))
