"""Class-sensitivity diagnostics (sglrp.metrics.sensitivity, similarity) and the mosaic
builder, on constructed cases with known answers."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_state, model_state
from torch import nn

import sglrp.metrics.sensitivity as sensitivity_module
import sglrp.metrics.similarity as similarity_module
from sglrp.data import CELLS, CLASSES, generate, mosaic
from sglrp.metrics import (
    average_ranks,
    class_collapse,
    focus,
    normalise_minmax,
    random_logit,
    randomisation_test,
    spearman,
    ssim,
    swap_scores,
    swap_test,
)
from sglrp.rules import ZPlus

C1, C2 = 0.01**2, 0.03**2
ZPLUS = [(nn.Linear, ZPlus())]


# ----------------------------------------------------------------------------- layering


@pytest.mark.parametrize("module", [sensitivity_module, similarity_module])
def test_metrics_import_no_application_or_api(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
    for name in imported:
        for banned in ("api", "models", "data", "viz", "methods", "commands"):
            assert name not in (f"..{banned}", f"sglrp.{banned}"), name
            assert not name.startswith((f"..{banned}.", f"sglrp.{banned}.")), name


# ----------------------------------------------------------------------------- SSIM


def _centre_weight(size: int = 11, sigma: float = 1.5) -> float:
    """Weight of the centre pixel of the normalised 2-D Gaussian window, from scratch."""
    total = sum(
        math.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-(size // 2), size // 2 + 1)
    )
    return 1.0 / total**2


def _ssim_delta_vs_complement() -> float:
    """SSIM of a centred one-pixel delta and 1 - delta on an 11 x 11 map (one window)."""
    w = _centre_weight()
    var = w * (1 - w)  # both maps; covariance is -var
    return ((2 * w * (1 - w) + C1) * (-2 * var + C2)) / (
        (w**2 + (1 - w) ** 2 + C1) * (2 * var + C2)
    )


def test_ssim_identical_maps_is_one():
    a = torch.rand(3, 20, 17, dtype=torch.float64)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_ssim_constant_maps_closed_form():
    p, q = 0.3, 0.8
    a = torch.full((1, 11, 11), p)
    b = torch.full((1, 11, 11), q)
    expected = (2 * p * q + C1) / (p * p + q * q + C1)
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-7)


def test_ssim_hand_computed_delta_case():
    a = torch.zeros(1, 11, 11, dtype=torch.float64)
    a[0, 5, 5] = 1.0
    assert ssim(a, 1 - a).item() == pytest.approx(_ssim_delta_vs_complement(), abs=1e-12)
    # the value is far from 1: the two maps are anti-correlated
    assert _ssim_delta_vs_complement() < 0


def test_ssim_symmetric_and_matches_a_window_loop():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 14, 13, generator=g, dtype=torch.float64)
    b = torch.rand(2, 14, 13, generator=g, dtype=torch.float64)
    got = ssim(a, b)
    assert torch.allclose(got, ssim(b, a), atol=0, rtol=0)
    d = np.arange(-5, 6)
    g1 = np.exp(-(d**2) / (2 * 1.5**2))
    window = np.outer(g1, g1) / np.outer(g1, g1).sum()
    for n in range(2):
        x, y = a[n].numpy(), b[n].numpy()
        values = []
        for i in range(14 - 10):
            for j in range(13 - 10):
                px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
                mx, my = (window * px).sum(), (window * py).sum()
                vx = (window * (px - mx) ** 2).sum()
                vy = (window * (py - my) ** 2).sum()
                cxy = (window * (px - mx) * (py - my)).sum()
                values.append(
                    ((2 * mx * my + C1) * (2 * cxy + C2))
                    / ((mx * mx + my * my + C1) * (vx + vy + C2))
                )
        assert got[n].item() == pytest.approx(float(np.mean(values)), abs=1e-12)


def test_ssim_rejects_small_or_mismatched_maps():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(torch.rand(1, 12, 12), torch.rand(1, 12, 13))


def test_normalise_minmax():
    m = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = normalise_minmax(m)
    assert out[0].flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    assert out[1].abs().sum() == 0  # constant map -> zeros
    # channels are summed first
    assert torch.equal(normalise_minmax(m[:, None].expand(2, 3, 2, 2)), out)


# ----------------------------------------------------------------------------- Spearman


def test_average_ranks_ties():
    r = average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0]]))
    assert r.tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]


def test_spearman_hand_computed():
    a = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0, 2.0, 3.0]], [[1.0, 2.0, 3.0, 4.0]]])
    b = torch.tensor([[[1.0, 3.0, 2.0, 4.0]], [[1.0, 2.0, 3.0, 4.0]], [[4.0, 3.0, 2.0, 1.0]]])
    rho = spearman(a, b)
    assert rho[0].item() == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8, no ties
    assert rho[1].item() == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))  # average ranks for ties
    assert rho[2].item() == pytest.approx(-1.0)
    # monotone transforms leave it unchanged
    assert spearman(a, b.exp()).tolist() == pytest.approx(rho.tolist())


def test_spearman_constant_map_is_nan():
    rho = spearman(torch.ones(1, 3, 3), torch.rand(1, 3, 3))
    assert math.isnan(rho.item())


# ----------------------------------------------------------------------------- class collapse


def test_collapse_shared_features_reaches_one():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].bias.fill_(1.0)  # keeps the hidden units alive
        model[1].weight.abs_()
        u = torch.tensor([0.5, 1.0, 2.0, 0.25])
        model[3].weight.copy_(torch.tensor([1.0, 2.0, 0.5])[:, None] * u)  # rows a_k * u
    x = torch.randn(5, 1, 2, 3)
    before = model_state(model)
    curve = class_collapse(model, x, rules=ZPLUS)
    assert_same_state(before, model_state(model))
    assert curve.layers == ("3", "1", "input")
    assert curve.per_image[:, 0].abs().max() < 1e-12  # distinct one-hot vectors at the logits
    assert torch.allclose(curve.per_image[:, 1:], torch.ones(5, 2, dtype=torch.float64))
    assert curve.as_dict()["input"] == pytest.approx(1.0)
    assert curve.classes.tolist() == [0, 1, 2]


def test_collapse_disjoint_features_stays_zero():
    k = 3
    w1 = torch.zeros(2 * k, 4 * k)
    w2 = torch.zeros(k, 2 * k)
    for c in range(k):  # hidden units 2c, 2c+1 read input channel c; class c reads them
        w1[2 * c : 2 * c + 2, 4 * c : 4 * c + 4] = torch.rand(2, 4) + 0.1
        w2[c, 2 * c : 2 * c + 2] = torch.rand(2) + 0.1
    model = nn.Sequential(nn.Flatten(), nn.Linear(4 * k, 2 * k), nn.ReLU(), nn.Linear(2 * k, k))
    with torch.no_grad():
        model[1].weight.copy_(w1)
        model[1].bias.zero_()
        model[3].weight.copy_(w2)
    x = torch.rand(4, k, 2, 2) + 0.1
    curve = class_collapse(model, x, rules=ZPLUS)
    assert curve.layers == ("3", "1", "input")
    assert curve.per_image.abs().max() < 1e-12


def test_collapse_hand_computed_cosines():
    # z+ on one layer with x = (1, 1): class 0 -> R = (1, 0), class 1 -> (1/2, 1/2),
    # class 2 -> (0, 1); cosines 1/sqrt2, 0, 1/sqrt2.
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    x = torch.ones(1, 1, 1, 2)
    curve = class_collapse(model, x, rules=ZPLUS)
    assert curve.layers == ("1", "input")
    assert curve.mean[1].item() == pytest.approx(2 / math.sqrt(2) / 3)
    pair = class_collapse(model, x, rules=ZPLUS, classes=[0, 1])
    assert pair.mean[1].item() == pytest.approx(1 / math.sqrt(2))
    assert pair.classes.tolist() == [0, 1]


def test_collapse_leaves_out_zero_relevance_class_with_warning():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    with pytest.warns(UserWarning, match="all-zero relevance at input"):
        curve = class_collapse(model, torch.ones(1, 1, 1, 2), rules=ZPLUS)
    assert curve.mean[1].item() == pytest.approx(1 / math.sqrt(2))  # only pair (0, 1)


def test_collapse_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    x = torch.ones(1, 1, 1, 2)
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        class_collapse(model, x, rules=ZPLUS, classes=[1])
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        class_collapse(model, x, rules=ZPLUS, classes=[1, 1])
    with pytest.raises(ValueError, match="out of range"):
        class_collapse(model, x, rules=ZPLUS, classes=[0, 3])
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        class_collapse(model, x, rules=ZPLUS, layers=["nope"])


# ----------------------------------------------------------------------------- swap test


def _halves(n: int = 2, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.zeros(n, size, size, dtype=torch.bool)
    a[:, :, :2] = True
    b = torch.zeros_like(a)
    b[:, :, 3:] = True  # column 2 is background
    return a, b


def _on(mask: torch.Tensor, value: float) -> torch.Tensor:
    return mask.float() * value / mask[0].sum()


def test_swap_perfect_swapped_and_blind_maps():
    ma, mb = _halves()
    perfect = swap_scores(_on(ma, 1.0), _on(mb, 1.0), ma, mb)
    assert perfect.scores.tolist() == [1.0, 1.0]
    assert perfect.own.tolist() == [[1.0, 1.0]] * 2 and perfect.other.abs().sum() == 0
    assert swap_scores(_on(mb, 1.0), _on(ma, 1.0), ma, mb).scores.tolist() == [-1.0, -1.0]
    blind = _on(ma, 1.0) + _on(mb, 3.0)  # the same map for both targets
    assert swap_scores(blind, blind, ma, mb).scores.abs().max() < 1e-12
    assert perfect.direction == "higher" and perfect.aggregate.mean == 1.0


def test_swap_partial_shares_and_negative_relevance_ignored():
    ma, mb = _halves()
    background = ~(ma | mb)
    # 70 % own, 20 % other, 10 % background for both targets -> 0.7 - 0.2
    ra = _on(ma, 0.7) + _on(mb, 0.2) + background.float() * 0.1 / background[0].sum()
    rb = _on(mb, 0.7) + _on(ma, 0.2) + background.float() * 0.1 / background[0].sum()
    res = swap_scores(ra, rb, ma, mb)
    assert res.scores.tolist() == pytest.approx([0.5, 0.5])
    # net negative background: map a's positive total is 0.9, so (0.7 - 0.2) / 0.9
    res_neg = swap_scores(ra - _on(background, 5.0), rb, ma, mb)
    assert res_neg.scores.tolist() == pytest.approx([(0.5 / 0.9 + 0.5) / 2] * 2)
    # net negative on object b: map a keeps 0.7 own of 0.8 positive, 0 other
    res_b = swap_scores(ra - _on(mb, 5.0), rb, ma, mb)
    assert res_b.scores.tolist() == pytest.approx([(0.7 / 0.8 + 0.5) / 2] * 2)
    # channels are summed before the positive part
    assert swap_scores(ra[:, None], rb[:, None], ma, mb).scores.tolist() == pytest.approx([0.5] * 2)


def test_swap_test_calls_explain_per_target():
    ma, mb = _halves()
    x = torch.zeros(2, 3, 4, 4)
    regions = {4: ma[0], 7: mb[0]}  # class 4 is object a, class 7 object b
    calls = []

    def explain_fn(xx, t):
        calls.append(t.clone())
        return torch.stack([regions[int(c)].float() for c in t])[:, None]

    res = swap_test(explain_fn, x, [4, 4], torch.tensor([7, 7]), ma, mb)
    assert res.scores.tolist() == [1.0, 1.0]
    assert [c.tolist() for c in calls] == [[4, 4], [7, 7]]
    blind = swap_test(lambda xx, t: torch.ones(2, 1, 4, 4), x, [4, 4], [7, 7], ma, mb)
    assert blind.scores.tolist() == [0.0, 0.0]


def test_swap_errors_and_degenerate_maps():
    ma, mb = _halves()
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="masks_b is empty for image 1"):
        empty = mb.clone()
        empty[1] = False
        swap_scores(torch.rand(2, 4, 4), torch.rand(2, 4, 4), ma, empty)
    with pytest.raises(ValueError, match="same class"):
        swap_test(lambda xx, t: torch.rand(2, 1, 4, 4), x, [1, 2], [3, 2], ma, mb)
    with pytest.raises(ValueError, match="explain_fn must return relevance of shape"):
        swap_test(lambda xx, t: torch.rand(2, 1, 2, 2), x, [1, 2], [3, 4], ma, mb)
    with pytest.raises(ValueError, match="targets_a must have shape"):
        swap_test(lambda xx, t: torch.rand(2, 1, 4, 4), x, [1, 2, 3], [3, 4], ma, mb)
    with pytest.warns(UserWarning, match="no positive relevance"):
        res = swap_scores(-torch.rand(2, 4, 4), _on(mb, 1.0), ma, mb)
    assert torch.isnan(res.scores).all() and res.aggregate.n_excluded == 2


# ----------------------------------------------------------------------------- random logit


def test_random_logit_target_independent_map_is_one():
    x = torch.randn(4, 3, 12, 12)
    maps = torch.rand(4, 3, 12, 12)
    res = random_logit(lambda xx, t: maps, x, [0, 1, 2, 3], num_classes=5)
    assert torch.allclose(res.scores, torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert res.direction == "lower"


def test_random_logit_hand_computed_two_classes():
    # With 2 classes the other class is 1 - t. Class 0: +delta, class 1: 5 - 3 * delta;
    # normalised to [0, 1] they are delta and 1 - delta: the hand-computed SSIM.
    delta = torch.zeros(11, 11)
    delta[5, 5] = 1.0

    def explain_fn(xx, t):
        return torch.stack([delta if c == 0 else 5 - 3 * delta for c in t.tolist()])[:, None]

    res = random_logit(explain_fn, torch.zeros(2, 1, 11, 11), [0, 1], num_classes=2, seed=9)
    assert res.other_targets.tolist() == [1, 0]
    assert res.scores.tolist() == pytest.approx([_ssim_delta_vs_complement()] * 2, abs=1e-12)
    # |R| option: |5 - 3 delta| = 5 - 3 delta, unchanged here
    res_abs = random_logit(explain_fn, torch.zeros(2, 1, 11, 11), [0, 1], 2, absolute=True)
    assert torch.equal(res_abs.scores, res.scores)


def test_random_logit_draws_other_classes_uniformly_and_reproducibly():
    n, c = 1200, 4
    targets = torch.arange(n) % c
    x = torch.zeros(n, 1, 11, 11)
    seen = {}

    def explain_fn(xx, t):
        seen.setdefault("calls", []).append(t)
        return torch.rand(n, 1, 11, 11, generator=torch.Generator().manual_seed(int(t[0])))

    rng_before = torch.get_rng_state()
    first = random_logit(explain_fn, x, targets, c, seed=5).other_targets
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(first, random_logit(explain_fn, x, targets, c, seed=5).other_targets)
    assert not torch.equal(first, random_logit(explain_fn, x, targets, c, seed=6).other_targets)
    assert (first != targets).all()
    for t in range(c):  # each of the 3 other classes about 100 times out of 300
        counts = torch.bincount(first[targets == t], minlength=c)
        assert counts[t] == 0
        assert ((counts[torch.arange(c) != t] - 100).abs() < 30).all()
    assert torch.equal(seen["calls"][1], first)


def test_random_logit_errors_and_warnings():
    x = torch.zeros(2, 1, 11, 11)
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_logit(lambda xx, t: torch.rand(2, 1, 11, 11), x, [0, 0], num_classes=1)
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        random_logit(lambda xx, t: torch.rand(2, 1, 11, 11), x, [0, 3], num_classes=3)
    with pytest.warns(UserWarning, match="maps are constant"):
        random_logit(lambda xx, t: torch.zeros(2, 1, 11, 11), x, [0, 1], num_classes=3)


# ----------------------------------------------------------------------------- focus


def _quadrants(size: int = 4) -> torch.Tensor:
    h = size // 2
    cells = torch.zeros(4, size, size, dtype=torch.bool)
    cells[0, :h, :h] = cells[1, :h, h:] = cells[2, h:, :h] = cells[3, h:, h:] = True
    return cells


def test_focus_known_values():
    cells = _quadrants()
    labels = torch.tensor([[3, 5, 3, 7], [1, 1, 2, 0], [4, 6, 8, 4]])
    targets = torch.tensor([3, 1, 4])
    target_area = (cells[None] & (labels == targets[:, None])[..., None, None]).any(dim=1)
    inside = focus(target_area.float(), cells, labels, targets)
    assert inside.scores.tolist() == [1.0, 1.0, 1.0]
    uniform = focus(torch.ones(3, 2, 4, 4), cells, labels, targets)
    assert uniform.scores.tolist() == [0.5, 0.5, 0.5]
    outside = focus((~target_area).float() - target_area.float(), cells, labels, targets)
    assert outside.scores.tolist() == [0.0, 0.0, 0.0]  # negative relevance does not count
    weighted = focus(3 * target_area.float() + 1, cells, labels, targets)  # 8*4 vs 8*4+8
    assert weighted.scores.tolist() == pytest.approx([0.8] * 3)
    assert inside.name == "focus" and inside.direction == "higher"


def test_focus_on_generated_mosaics():
    m = mosaic(3, seed=1)
    cells = torch.from_numpy(m.cell_masks)
    labels = torch.from_numpy(m.labels)
    targets = torch.from_numpy(m.targets)
    assert focus(torch.ones(3, 64, 64), cells, labels, targets).scores.tolist() == [0.5] * 3
    inside = torch.from_numpy(m.target_masks).float()
    assert focus(inside, cells, labels, targets).scores.tolist() == [1.0] * 3


def test_focus_errors():
    cells = _quadrants()
    with pytest.raises(ValueError, match="no cell of its target class"):
        focus(torch.ones(1, 4, 4), cells, torch.tensor([[1, 2, 3, 4]]), [0])
    with pytest.raises(ValueError, match="cell_labels must have shape"):
        focus(torch.ones(1, 4, 4), cells, torch.tensor([[1, 2, 3]]), [1])
    with pytest.raises(ValueError, match="cell_masks must have shape"):
        focus(torch.ones(1, 4, 4), cells[:, :2], torch.tensor([[1, 2, 3, 4]]), [1])
    with pytest.warns(UserWarning, match="no positive relevance"):
        focus(torch.zeros(1, 4, 4), cells, torch.tensor([[1, 1, 3, 4]]), [1])


# ----------------------------------------------------------------------------- mosaic


def test_mosaic_structure_and_sources():
    m = mosaic(14, seed=2)
    assert m.images.shape == (14, 64, 64, 3) and m.images.dtype == np.uint8
    assert sorted(m.targets[:12].tolist()) == list(range(len(CLASSES)))  # balanced
    for i in range(14):
        is_target = m.labels[i] == m.targets[i]
        assert is_target.sum() == 2
        others = m.labels[i][~is_target]
        assert others[0] != others[1]
        for k in range(4):
            source = generate("single", 1, 2, 64, start=int(m.sources[i, k]))[0]
            assert source.label == m.labels[i, k]
            cell = m.images[i][m.cell_masks[k]].reshape(32, 32, 3)
            expected = source.image.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
            assert np.array_equal(cell, np.rint(expected).astype(np.uint8))
    assert len(set(m.sources.flatten().tolist())) == m.sources.size  # no image used twice
    assert m.cell_masks.sum(axis=0).min() == 1 and m.cell_masks.sum(axis=0).max() == 1
    assert m.target_masks.sum(axis=(1, 2)).tolist() == [2 * 32 * 32] * 14
    assert CELLS[0] == "top_left" and m.cell_masks[1, 0, 63] and m.cell_masks[2, 63, 0]


def test_mosaic_deterministic_and_start():
    a = mosaic(5, seed=4)
    b = mosaic(3, seed=4, start=2)
    assert np.array_equal(a.images[2:], b.images)
    assert np.array_equal(a.labels[2:], b.labels) and np.array_equal(a.sources[2:], b.sources)
    assert np.array_equal(mosaic(5, seed=4).images, a.images)
    assert not np.array_equal(mosaic(5, seed=5).images, a.images)


def test_mosaic_errors():
    with pytest.raises(ValueError, match="single-object split"):
        mosaic(2, split="multi")
    with pytest.raises(ValueError, match="size must be even"):
        mosaic(2, size=33)
    with pytest.raises(ValueError, match="size must be an int >= 32"):
        mosaic(2, size=30)


# ----------------------------------------------------------------------------- randomisation


def _input_x_gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xx).gather(1, t[:, None]).sum(), xx)
    return xx.detach() * grad


def _redraw(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return w.mean() + w.std(correction=0) * torch.randn(w.shape, generator=g)


def _ranks(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v)).astype(np.float64)  # continuous data: no ties


def test_randomisation_linear_model_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(121, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)
    )
    model[2] = nn.Identity()  # f(x) = W2 W1 x: input x gradient = x * (W2 W1)[t]
    x = torch.randn(2, 1, 11, 11)
    t = torch.tensor([0, 2])
    x_before = x.clone()
    before = model_state(model)
    rng_before = torch.get_rng_state()
    res = randomisation_test(model, x, t, _input_x_gradient, seed=7)
    assert_same_state(before, model_state(model))
    assert torch.equal(x, x_before) and torch.equal(torch.get_rng_state(), rng_before)
    assert res.layers == ("3", "1")  # output layer first

    w1, w2 = model[1].weight.detach(), model[3].weight.detach()
    g = torch.Generator().manual_seed(7)
    w2r = _redraw(w2, g)  # step 1: top layer
    w1r = _redraw(w1, g)  # step 2: both
    original = (x[:, 0] * (w2 @ w1)[t].view(2, 11, 11)).abs()
    steps = [
        (x[:, 0] * (w2r @ w1)[t].view(2, 11, 11)).abs(),
        (x[:, 0] * (w2r @ w1r)[t].view(2, 11, 11)).abs(),
    ]
    for k, step in enumerate(steps):
        for n in range(2):
            rho = np.corrcoef(
                _ranks(original[n].flatten().numpy()), _ranks(step[n].flatten().numpy())
            )
            assert res.spearman[n, k].item() == pytest.approx(rho[0, 1], abs=1e-5)
        expected_ssim = ssim(normalise_minmax(original), normalise_minmax(step))
        assert torch.allclose(res.ssim[:, k], expected_ssim, atol=1e-5)
    assert res.spearman_mean.shape == (2,) and res.ssim_mean.shape == (2,)


def test_randomisation_layers_order_and_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(121, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(1, 1, 11, 11)
    res = randomisation_test(model, x, "predicted", _input_x_gradient, layers=["1", "3"])
    assert res.layers == ("3", "1")
    with pytest.raises(ValueError, match="unknown layer 'x'"):
        randomisation_test(model, x, [0], _input_x_gradient, layers=["x"])
    with pytest.raises(ValueError, match="no parameters of its own"):
        randomisation_test(model, x, [0], _input_x_gradient, layers=["2"])
    with pytest.raises(ValueError, match="out of range"):
        randomisation_test(model, x, [5], _input_x_gradient)


def test_randomise_keeps_scale_and_zero_bias():
    layer = nn.Linear(50, 40)
    with torch.no_grad():
        layer.bias.zero_()
    w = layer.weight.detach().clone()
    sensitivity_module.randomise_layer(layer, torch.Generator().manual_seed(0))
    assert not torch.equal(layer.weight, w)
    assert layer.weight.std(correction=0).item() == pytest.approx(w.std(correction=0).item(), 0.1)
    assert layer.bias.abs().sum() == 0
