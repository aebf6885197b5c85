"""Each rule against its explicit matrix formula, on small random layers in float64.

A layer is linear in its input, so it has a dense matrix W (out x in). For a rule with
contributions z_ij and denominators d_j, R_i = sum_j z_ij / d_j R_j. Convolutions are checked
through their dense matrix (the Jacobian), whose entries are kernel entries or 0, so
clamping the kernel clamps the matrix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sglrp
from sglrp.rules import (
    LRP0,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    RuleMap,
    WSquare,
    ZBox,
    ZPlus,
)

EPS = 1e-6


def stab(d, eps=EPS):
    return d + eps * torch.where(d >= 0, 1.0, -1.0).to(d)


def dense(layer: nn.Module, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrix (out, in) and bias vector (out,) of a linear or conv layer."""
    n_in = int(torch.tensor(shape).prod())

    def f(v):
        return layer(v.view(1, *shape)).flatten()

    zero = torch.zeros(n_in, dtype=torch.float64)
    bias = f(zero).detach()
    matrix = torch.autograd.functional.jacobian(f, zero)
    return matrix, bias


def explicit(rule, W, b, x, R):
    """R_i for one sample: x (in,), W (out, in), b (out,), R (out,)."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    if isinstance(rule, Epsilon):
        z = W * x[None, :]
        zj = z.sum(1) + (b if rule.bias else 0)
        if rule.epsilon == 0:
            return (z / zj[:, None] * R[:, None]).sum(0)
        return (z / stab(zj, rule.epsilon)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, ZPlus):
        z = Wp * xp[None, :] + Wn * xn[None, :]
        d = z.sum(1) + (b.clamp(min=0) if rule.bias else 0)
        return (z / stab(d)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, AlphaBeta):
        zp = Wp * xp[None, :] + Wn * xn[None, :]
        zn = Wn * xp[None, :] + Wp * xn[None, :]
        dp = zp.sum(1) + b.clamp(min=0)
        dn = zn.sum(1) + b.clamp(max=0)
        return (
            (rule.alpha * zp / stab(dp)[:, None] - rule.beta * zn / stab(dn)[:, None])
            .mul(R[:, None])
            .sum(0)
        )
    if isinstance(rule, Gamma):
        g = rule.gamma
        zpos = (W + g * Wp) * xp[None, :] + (W + g * Wn) * xn[None, :]
        zneg = (W + g * Wn) * xp[None, :] + (W + g * Wp) * xn[None, :]
        out = W @ x + b
        dpos = zpos.sum(1) + b + g * b.clamp(min=0)
        dneg = zneg.sum(1) + b + g * b.clamp(max=0)
        frac = torch.where(
            (out > 0)[:, None],
            zpos / stab(dpos)[:, None],
            torch.where((out < 0)[:, None], zneg / stab(dneg)[:, None], 0.0),
        )
        return (frac * R[:, None]).sum(0)
    if isinstance(rule, ZBox):
        low = torch.as_tensor(rule.low, dtype=x.dtype).expand_as(x)
        high = torch.as_tensor(rule.high, dtype=x.dtype).expand_as(x)
        z = W * x[None, :] - Wp * low[None, :] - Wn * high[None, :]
        return (z / stab(z.sum(1))[:, None] * R[:, None]).sum(0)
    if isinstance(rule, Flat):
        z = (W != 0).to(W) if W.ndim else W
        z = torch.ones_like(W) * (W != 0)
        return (z / stab(z.sum(1))[:, None] * R[:, None]).sum(0)
    if isinstance(rule, WSquare):
        z = W * W
        return (z / stab(z.sum(1))[:, None] * R[:, None]).sum(0)
    raise AssertionError(rule)


RULES = [
    LRP0(),
    Epsilon(0.5),
    Epsilon(0.1, bias=False),
    ZPlus(),
    ZPlus(bias=True),
    AlphaBeta(2.0, 1.0),
    AlphaBeta(1.0, 0.0),
    Gamma(0.25),
    ZBox(-3.0, 3.0),
    Flat(),
    WSquare(),
]
RULE_IDS = [
    "lrp0",
    "epsilon0.5",
    "epsilon0.1-nobias",
    "zplus",
    "zplus-bias",
    "alpha2beta1",
    "alpha1beta0",
    "gamma",
    "zbox",
    "flat",
    "wsquare",
]


def layers():
    torch.manual_seed(1)
    linear = nn.Linear(7, 5).double()
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    return [("linear", linear, (7,)), ("conv", conv, (2, 5, 5))]


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("nonneg", [False, True], ids=["signed", "nonneg"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_rule_matches_explicit_formula(rule, nonneg, kind):
    name, layer, shape = next(item for item in layers() if item[0] == kind)
    if isinstance(layer, nn.Conv2d) and isinstance(rule, Flat):
        pass  # flat uses the receptive field: the dense matrix's non-zero pattern
    torch.manual_seed(2)
    x = torch.randn(3, *shape, dtype=torch.float64)
    if nonneg:
        x = x.clamp(min=0)
    model = nn.Sequential(layer, nn.Flatten()) if kind == "conv" else nn.Sequential(layer)
    out = model(x)
    R_out = torch.randn_like(out)
    rule_map = RuleMap([((nn.Linear, nn.Conv2d), rule)])
    ours = (
        sglrp.explain(
            model,
            x.view(3, 1, 1, -1) if kind == "linear" else x,
            target=0,
            method=lambda logits, t: R_out,
            rules=rule_map,
        )
        if kind == "conv"
        else None
    )
    if kind == "linear":
        wrapped = nn.Sequential(nn.Flatten(), layer)
        ours = sglrp.explain(
            wrapped, x.view(3, 1, 1, 7), 0, method=lambda logits, t: R_out, rules=rule_map
        ).view(3, 7)
    W, b = dense(layer, shape)
    for n in range(3):
        expected = explicit(rule, W, b, x[n].flatten(), R_out[n])
        torch.testing.assert_close(ours[n].flatten(), expected, rtol=1e-8, atol=1e-10)


def test_zbox_per_channel_bounds():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    model = nn.Sequential(conv, nn.Flatten())
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    low = torch.tensor([-1.0, -2.0, -1.5], dtype=torch.float64)
    high = torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64)
    R_out = torch.randn(2, 64, dtype=torch.float64)
    ours = sglrp.explain(
        model, x, 0, method=lambda z, t: R_out, rules=RuleMap([], first=ZBox(low, high))
    )
    W, _ = dense(conv, (3, 4, 4))
    lo = low[:, None, None].expand(3, 4, 4).flatten()
    hi = high[:, None, None].expand(3, 4, 4).flatten()
    for n in range(2):
        xf = x[n].flatten()
        z = W * xf - W.clamp(min=0) * lo - W.clamp(max=0) * hi
        expected = (z / stab(z.sum(1))[:, None] * R_out[n][:, None]).sum(0)
        torch.testing.assert_close(ours[n].flatten(), expected, rtol=1e-8, atol=1e-10)


def test_rule_parameters_are_checked():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        Epsilon(-1.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        Gamma(-0.1)


def test_first_match_wins_by_name_and_type():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    a, b = ZPlus(), Epsilon()
    rule_map = RuleMap([("2", a), (nn.Linear, b), ("0", a)])
    assert rule_map.rule_for("2", model[2]) is a
    assert rule_map.rule_for("0", model[0]) is b
    glob = RuleMap([("features.*", a)])
    assert glob.rule_for("features.3", model[0]) is a
    assert glob.rule_for("classifier.0", model[0]) is None
