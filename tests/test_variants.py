"""SGLRP as the authors' released code computed it, each version against its formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sglrp
from sglrp.presets import resolve_rules
from sglrp.propagation import propagate
from sglrp.propagation.output import combine_parts, sglrp_parts
from sglrp.rules import AlphaBeta, ProportionalPool, ZBox


def test_parts_follow_each_released_version() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-0.5, 1.0, 3.0, -2.0]])
    t = torch.tensor([0, 0])
    y = torch.softmax(z, dim=1)
    paper = sglrp_parts(z, t)  # iNNvestigate 1.0.0: softmax of the raw logits
    assert torch.allclose(paper[:, 0, 0], y[:, 0] * (1 - y[:, 0]))
    assert torch.allclose(paper[:, 1, 1:], y[:, :1] * y[:, 1:])
    yr = torch.softmax(z.clamp(min=0), dim=1)  # 1.0.8.3: softmax of ReLU(z), z <= 0 zeroed
    late = sglrp_parts(z, t, relu_logits=True)
    assert late[0, 0, 0] == pytest.approx(float(yr[0, 0] * (1 - yr[0, 0])))
    assert late[1, 0, 0] == 0  # target with z_t <= 0: nothing
    assert torch.equal(late[:, 1] != 0, (z > 0) & (torch.arange(4) != 0))
    authors = sglrp_parts(z, t, dual_relu=True)  # the combination step's own default
    assert torch.allclose(authors[:, 0], paper[:, 0])
    assert torch.equal(authors[:, 1] != 0, (z > 0) & (torch.arange(4) != 0))


def test_combination_rescales_the_dual_to_the_targets_total() -> None:
    both = torch.tensor([[[1.0, 2.0], [3.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])[:, :, None]
    out = combine_parts(both)
    torch.testing.assert_close(out[0], torch.tensor([[1.0 - 3 * 3 / 4, 2.0 - 1 * 3 / 4]])[0][None])
    torch.testing.assert_close(out[1], torch.tensor([[1.0, 1.0]]))  # no dual: the target part


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5)
    ).double()


@pytest.mark.parametrize("variant", ["innvestigate-1.0.0", "innvestigate-1.0.8.3"])
def test_released_variants_equal_their_recipe(variant: str) -> None:
    model = _net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    bounds = (torch.tensor([0.0, -0.1, 0.0]), torch.tensor([1.0, 1.0, 1.2]))
    got = sglrp.explain(model, x, 1, method="sglrp", variant=variant, bounds=bounds)
    scalar = (torch.tensor(-0.1, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64))
    alpha1beta0 = AlphaBeta(1.0, 0.0, bias=True)
    entries = [((nn.Conv2d, nn.Linear), alpha1beta0)]
    if variant == "innvestigate-1.0.0":
        entries.insert(0, (nn.MaxPool2d, ProportionalPool()))
    rules = sglrp.RuleMap(entries, first=ZBox(*scalar))

    def parts(logits, t):
        return sglrp_parts(logits, t, relu_logits=variant.endswith("1.0.8.3"))

    both = propagate(model, x, 1, parts, rules).input_relevance
    torch.testing.assert_close(got, combine_parts(both))
    assert resolve_rules(variant, x, bounds).first is not None


def test_proportional_pool_spreads_relevance_in_proportion() -> None:
    """R_i = x_i / sum_window x R_window (iNNvestigate 1.0.0), against the explicit sum."""
    pool = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        pool[2].weight.fill_(1.0)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64) + 0.1
    pool = pool.double()
    rules = [(nn.MaxPool2d, ProportionalPool()), (nn.Linear, sglrp.rules.Epsilon(0.0))]
    got = propagate(pool, x, 0, "lrp", rules).input_relevance
    windows = F.max_pool2d(x, 2)  # R of each window = its max (LRP-0 through the sum)
    sums = F.avg_pool2d(x, 2) * 4
    expected = x * torch.repeat_interleave(
        torch.repeat_interleave(windows / sums, 2, dim=2), 2, dim=3
    )
    torch.testing.assert_close(got, expected)
    winner = propagate(pool, x, 0, "lrp", [(nn.Linear, sglrp.rules.Epsilon(0.0))]).input_relevance
    assert (winner != 0).sum() == 4  # the default: all to the winner of each window


def test_nonpositive_target_logit_gives_the_released_codes_zero_map() -> None:
    model = _net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        model[4].bias.fill_(-100.0)  # every logit negative
    with pytest.warns(RuntimeWarning, match="all-zero map"):
        r = sglrp.explain(model, x, 0, method="sglrp", variant="innvestigate-1.0.8.3")
    assert torch.equal(r, torch.zeros_like(r))
