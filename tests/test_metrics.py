"""Metrics of sglrp.metrics on hand-made maps and toy models with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sglrp.metrics import (
    CLOSED_FORM,
    LOCALISATION_METRICS,
    METRICS,
    RANDOM_EXPECTATIONS,
    aggregate,
    area_share,
    average_drop,
    boxes_to_masks,
    deletion,
    disc_dilate,
    explanation_weights,
    extended_pointing_game,
    gaussian_blur,
    increase_in_confidence,
    insertion,
    masked_patches,
    patch_masking,
    pointing_game,
    random_expectation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    relevance_ranks,
    second_most_probable,
    to_2d,
)

# ----------------------------------------------------------------------------- toy models


class RegionModel(nn.Module):
    """Two classes: z0 = scale * mean of x over a region (all channels) - shift, z1 = 0."""

    def __init__(self, region: torch.Tensor, scale: float = 2.0, shift: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale, self.shift = scale, shift
        self.calls = 0
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen += x.shape[0]
        z0 = self.scale * (x.mean(dim=1) * self.region).sum(dim=(1, 2)) / self.region.sum()
        z0 = z0 - self.shift
        return torch.stack([z0, torch.zeros_like(z0)], dim=1)


class ThreeClass(nn.Module):
    """Logits (3 * mean x, 2 * mean x, 1) for ranking tests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([3 * m, 2 * m, torch.ones_like(m)], dim=1)


def square(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


# ----------------------------------------------------------------------------- helpers


def test_to_2d_sums_channels_and_keeps_2d():
    maps = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert torch.equal(to_2d(maps), maps[:, 0] + maps[:, 1])
    assert torch.equal(to_2d(maps[:, 0]), maps[:, 0])
    with pytest.raises(ValueError):
        to_2d(torch.zeros(3, 4))


def test_boxes_to_masks_exclusive_end_clipping_and_union():
    m = boxes_to_masks(torch.tensor([[1, 2, 4, 3], [-5, -5, 2, 1]]), 5, 6)
    assert m.shape == (2, 5, 6) and m.dtype == torch.bool
    assert m[0].sum() == 3 and m[0, 2, 1:4].all()
    assert m[1].sum() == 2 and m[1, 0, :2].all()
    union = boxes_to_masks(torch.tensor([[[0, 0, 1, 1], [5, 4, 6, 5], [0, 0, 0, 0]]]), 5, 6)
    assert union.sum() == 2 and union[0, 0, 0] and union[0, 4, 5]


def test_aggregate_exact_values_nan_and_ci_shrinks():
    a = aggregate(torch.tensor([1.0, 2.0, 3.0]))
    half = 1.959963984540054 / math.sqrt(3)
    assert a.mean == pytest.approx(2.0) and a.n == 3 and a.n_excluded == 0
    assert a.low == pytest.approx(2 - half) and a.high == pytest.approx(2 + half)
    b = aggregate(torch.tensor([1.0, math.nan, 3.0, math.nan]))
    assert b.mean == pytest.approx(2.0) and b.n == 2 and b.n_excluded == 2
    small = aggregate(torch.tensor([0.0, 1.0] * 5))
    large = aggregate(torch.tensor([0.0, 1.0] * 500))
    for agg in (small, large):
        assert agg.low < agg.mean < agg.high
    assert large.half_width < small.half_width / 5
    one = aggregate([4.0])
    assert one.mean == 4.0 and math.isnan(one.low) and math.isnan(one.high)
    assert aggregate([math.nan]).n == 0 and math.isnan(aggregate([math.nan]).mean)


def test_second_most_probable():
    x = torch.ones(2, 1, 2, 2)
    x[1] = -1.0  # logits (-3, -2, 1): order 2, 1, 0
    assert second_most_probable(ThreeClass(), x).tolist() == [1, 1]
    x[0] = 0.2  # logits (0.6, 0.4, 1): order 2, 0, 1
    assert second_most_probable(ThreeClass(), x).tolist() == [0, 1]


# ----------------------------------------------------------------------------- extended pointing


def test_extended_pointing_inside_outside_half():
    gen = torch.Generator().manual_seed(1)
    box = boxes_to_masks(torch.tensor([[2, 2, 6, 6]]), 8, 8)[0]
    noise = torch.rand(8, 8, generator=gen) + 0.1
    inside = torch.where(box, noise, -noise)  # positive only inside, negative outside
    outside = torch.where(box, -noise, noise)
    res = extended_pointing_game(torch.stack([inside, outside]), torch.stack([box, box]))
    assert res.curves.shape == (2, 20)
    assert torch.equal(res.curves[0], torch.ones(20, dtype=torch.float64))
    assert torch.equal(res.curves[1], torch.zeros(20, dtype=torch.float64))
    assert res.direction == "higher"
    assert torch.allclose(res.mean_curve, torch.full((20,), 0.5, dtype=torch.float64))

    # half/half: 10 inside at value 2, 10 outside at value 1, rest 0
    m = torch.zeros(8, 8)
    m.view(-1)[box.view(-1).nonzero()[:10, 0]] = 2.0
    m.view(-1)[(~box).view(-1).nonzero()[:10, 0]] = 1.0
    half = extended_pointing_game(m[None], box[None], energies=[0.5, 0.75, 1.0])
    expected = torch.tensor([[1.0, 10 / 15, 0.5]], dtype=torch.float64)
    assert torch.allclose(half.curves, expected)


def test_extended_pointing_rounding_and_ties():
    # 100 positive pixels, the 55 largest inside: E = 0.55 keeps exactly 55 (0.55 * 100 in
    # floats is 55.00000000000001, a naive ceil would keep 56); a tiny E keeps one pixel.
    m = torch.zeros(1, 10, 12)
    m.view(-1)[:100] = torch.arange(100, 0, -1).float()
    mask = torch.zeros(1, 10, 12, dtype=torch.bool)
    mask.view(-1)[:55] = True
    res = extended_pointing_game(m, mask, energies=[1e-9, 0.55, 0.6])
    assert res.curves[0].tolist() == [1.0, 1.0, 55 / 60]
    # four tied pixels, two inside: keeping one counts half a hit whatever the positions
    tied = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])
    for ins in ([True, True, False, False], [False, False, True, True]):
        r = extended_pointing_game(tied, torch.tensor([[ins]]), energies=[0.25, 0.75, 1.0])
        assert r.curves[0].tolist() == [0.5, 0.5, 0.5]


def test_extended_pointing_undefined_is_nan_and_excluded():
    box = square(4, 4, 0, 2, 0, 2)
    maps = torch.stack([torch.where(box, 1.0, 0.0), -torch.ones(4, 4), torch.ones(4, 4)])
    masks = torch.stack([box, box, torch.zeros(4, 4, dtype=torch.bool)])
    res = extended_pointing_game(maps, masks)
    assert torch.isnan(res.curves[1:]).all() and not torch.isnan(res.curves[0]).any()
    assert res.aggregate.n == 1 and res.aggregate.n_excluded == 2
    assert res.scores[0] == 1.0


# ----------------------------------------------------------------------------- pointing game


def test_pointing_game_empty_mask_skipped_not_hit():
    maps = torch.zeros(2, 10, 10)
    maps[:, 3, 3] = 1.0
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 3, 3] = True
    res = pointing_game(maps, masks)
    assert res.scores[0] == 1.0 and math.isnan(res.scores[1])
    assert res.n_skipped == 1 and res.aggregate.n == 1 and res.aggregate.mean == 1.0


@pytest.mark.parametrize(
    ("dr", "dc", "hit"), [(15, 0, 1.0), (16, 0, 0.0), (9, 12, 1.0), (12, 12, 0.0), (0, -15, 1.0)]
)
def test_pointing_game_tolerance_15_not_16(dr, dc, hit):
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 20, 30] = True
    maps = torch.zeros(1, 64, 64)
    maps[0, 20 + dr, 30 + dc] = 1.0
    assert pointing_game(maps, mask, tolerance=15).scores.tolist() == [hit]


@pytest.mark.parametrize("radius", [0, 1.5, 2.5, 7, 140])
def test_disc_dilate_matches_brute_force(radius):
    masks = torch.rand(2, 13, 11, generator=torch.Generator().manual_seed(2)) > 0.93
    masks[1] = False
    masks[1, 12, 0] = True
    rr, cc = torch.meshgrid(torch.arange(13), torch.arange(11), indexing="ij")
    pts = torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1).float()
    for i in range(2):
        on = pts[masks[i].reshape(-1)]
        d2 = ((pts[:, None, :] - on[None]) ** 2).sum(-1).min(dim=1).values
        assert torch.equal(disc_dilate(masks, radius)[i].reshape(-1), d2 <= radius**2)


def test_pointing_game_ties_and_per_class():
    mask = square(40, 40, 0, 2, 0, 2)
    tie = torch.zeros(40, 40)
    tie[0, 0] = tie[39, 39] = 1.0  # one maximum on the object, one far away
    far = torch.zeros(40, 40)
    far[39, 39] = 1.0
    maps = torch.stack([tie, far, tie])
    masks = torch.stack([mask, mask, mask])
    res = pointing_game(maps, masks, classes=torch.tensor([0, 0, 2]), num_classes=4)
    assert res.scores.tolist() == [0.5, 0.0, 0.5]
    first = pointing_game(maps, masks, ties="first")
    assert first.scores.tolist() == [1.0, 0.0, 1.0]
    # a constant map scores the share of pixels within tolerance (brute-force distances)
    rr, cc = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    near = (
        (rr[..., None] - torch.tensor([0, 0, 1, 1])) ** 2
        + (cc[..., None] - torch.tensor([0, 1, 0, 1])) ** 2
    ).min(-1).values <= 15**2
    const = pointing_game(torch.ones(1, 40, 40), mask[None])
    assert const.scores.item() == pytest.approx(near.float().mean().item())
    per = res.per_class
    assert per is not None and per[0] == 0.25 and per[2] == 0.5
    assert math.isnan(per[1]) and math.isnan(per[3])
    assert res.class_mean == pytest.approx(0.375)
    assert res.aggregate.mean == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- patch masking


def test_masked_patches_pixel_counts_interior_and_border():
    x = torch.randn(3, 2, 20, 20)
    centres = torch.tensor([[10, 10], [0, 0], [0, 5]])
    sizes = (1, 3, 5, 7, 9)
    out = masked_patches(x, centres, sizes, baseline=[0.5, -0.5])
    assert out.shape == (3, 5, 2, 20, 20)
    changed = (out != x[:, None]).sum(dim=(3, 4))  # (N, P, C)
    interior = torch.tensor([p * p for p in sizes])
    assert torch.equal(changed[0], interior[:, None].expand(5, 2))
    corner = torch.tensor([((p + 1) // 2) ** 2 for p in sizes])
    assert torch.equal(changed[1], corner[:, None].expand(5, 2))
    edge = torch.tensor([((p + 1) // 2) * p for p in sizes])
    assert torch.equal(changed[2], edge[:, None].expand(5, 2))
    assert (out[0, 4, 0, 6:15, 6:15] == 0.5).all() and (out[0, 4, 1, 6:15, 6:15] == -0.5).all()


def test_patch_masking_known_drop_single_forward():
    region = torch.zeros(12, 12)
    region[5, 5] = 1.0
    model = RegionModel(region, scale=4.0, shift=0.0)  # z0 = 4 * x[5, 5]
    x = torch.ones(2, 3, 12, 12)
    on = torch.zeros(12, 12)
    on[5, 5] = 1.0
    off = torch.zeros(12, 12)
    off[0, 0] = 1.0
    res = patch_masking(model, x, {"on": torch.stack([on, off]), "off": torch.stack([off, on])}, 0)
    assert model.calls == 1 and model.seen == 2 + 2 * 2 * 5
    drop = 0.5 - torch.sigmoid(torch.tensor(4.0, dtype=torch.float64))
    assert torch.allclose(res["on"].curves[0], drop.expand(5))
    assert torch.equal(res["on"].curves[1], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(res["off"].curves[0], torch.zeros(5, dtype=torch.float64))
    assert res["on"].direction == "lower" and res["on"].levels.tolist() == [1, 3, 5, 7, 9]
    chunked = patch_masking(model, x, torch.stack([on, off]), 0, batch_size=3)
    assert torch.allclose(chunked.curves, res["on"].curves)


def test_patch_masking_random_centres_seeded():
    region = square(12, 12, 0, 12, 0, 12)
    model = RegionModel(region, scale=4.0, shift=0.0)
    x = torch.rand(4, 1, 12, 12)
    a = patch_masking(model, x, None, "predicted", random_centres=True, seed=3)
    b = patch_masking(model, x, None, "predicted", random_centres=True, seed=3)
    assert torch.equal(a.curves, b.curves) and a.curves.shape == (4, 5)
    assert (a.curves <= 0).all() and (a.curves[:, -1] < a.curves[:, 0]).all()


# ----------------------------------------------------------------------------- relevance mass/rank


def test_relevance_mass_and_rank_exact():
    maps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]]).expand(2, 2, 2)
    masks = torch.tensor([[[True, False], [False, False]], [[False, True], [True, False]]])
    mass = relevance_mass_accuracy(maps, masks)
    assert mass.scores.tolist() == [0.75, 0.25]
    rank = relevance_rank_accuracy(maps, masks)
    assert rank.scores.tolist() == [1.0, 0.5]
    # all-zero map: mass undefined, rank at chance K / (H W); empty mask: both undefined
    zero = relevance_rank_accuracy(torch.zeros(1, 4, 4), square(4, 4, 0, 1, 0, 4)[None])
    assert zero.scores.tolist() == [0.25]
    row = square(4, 4, 0, 1, 0, 4)[None]
    assert math.isnan(relevance_mass_accuracy(torch.zeros(1, 4, 4), row).scores[0])
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert math.isnan(relevance_mass_accuracy(maps[:1], empty).scores[0])
    assert math.isnan(relevance_rank_accuracy(maps[:1], empty).scores[0])


# ----------------------------------------------------------------------------- AD / IC


def test_explanation_weights_minmax_and_top_half():
    ramp = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    w = explanation_weights(ramp)
    assert torch.allclose(w, torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]]], dtype=torch.float64))
    top = explanation_weights(ramp, keep_top=0.5)
    assert torch.allclose(top, torch.tensor([[[0.0, 0.0], [2 / 3, 1.0]]], dtype=torch.float64))
    assert explanation_weights(torch.full((1, 2, 2), 7.0)).abs().sum() == 0


def test_average_drop_and_increase_in_confidence_known_outputs():
    region = torch.ones(4, 4)
    model = RegionModel(region, scale=4.0, shift=0.0)  # z0 = 4 * mean(x)
    x = torch.ones(2, 1, 4, 4)
    half = torch.zeros(4, 4)
    half[:2] = 1.0  # min-max weights: half ones, half zeros -> mean 0.5
    maps = torch.stack([half, half])
    target = torch.tensor([0, 1])
    ad = average_drop(model, x, maps, target)
    s4 = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64))
    s2 = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(ad.y, torch.stack([s4, 1 - s4]))
    assert torch.allclose(ad.o, torch.stack([s2, 1 - s2]))
    drop0 = 100 * (s4 - s2) / s4
    assert torch.allclose(ad.scores, torch.stack([drop0, torch.zeros((), dtype=torch.float64)]))
    assert ad.aggregate.mean == pytest.approx(float(drop0) / 2)  # over ALL images
    assert ad.direction == "lower"
    ic = increase_in_confidence(model, x, maps, target)
    assert ic.scores.tolist() == [0.0, 100.0] and ic.aggregate.mean == pytest.approx(50.0)
    assert ic.direction == "higher"
    # blending towards the baseline: with baseline = x the masked image is x itself
    same = average_drop(model, x, maps, target, baseline=1.0)
    assert torch.allclose(same.o, same.y) and same.increase_in_confidence.mean == 0.0


# ----------------------------------------------------------------------------- deletion / insertion


def _region_setup():
    region = square(16, 16, 4, 8, 4, 8)
    model = RegionModel(region, scale=2.0, shift=3.0)
    x = torch.where(region, 3.0, 0.0).expand(2, 3, 16, 16).clone()
    perfect = region.float().expand(2, 16, 16)
    rand = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(5))
    return model, x, perfect, rand


def test_deletion_perfect_beats_random():
    model, x, perfect, rand = _region_setup()
    good = deletion(model, x, perfect, 0, steps=16)
    bad = deletion(model, x, rand, 0, steps=16)
    assert good.direction == "lower" and good.curves.shape == (2, 17)
    assert torch.allclose(good.levels, torch.linspace(0, 1, 17, dtype=torch.float64))
    assert (good.scores < bad.scores - 0.2).all()
    p_full = torch.sigmoid(torch.tensor(3.0, dtype=torch.float64))
    p_gone = torch.sigmoid(torch.tensor(-3.0, dtype=torch.float64))
    assert torch.allclose(good.curves[:, 0], p_full.expand(2))
    assert torch.allclose(good.curves[:, 1:], p_gone.expand(2, 16))  # region gone at step 1
    auc = (p_full + p_gone) / 2 / 16 + p_gone * 15 / 16
    assert torch.allclose(good.scores, auc.expand(2))
    chunked = deletion(model, x, rand, 0, steps=16, batch_size=5)
    assert torch.allclose(chunked.scores, bad.scores)


def test_insertion_perfect_beats_random():
    model, x, perfect, rand = _region_setup()
    good = insertion(model, x, perfect, 0, steps=16)
    bad = insertion(model, x, rand, 0, steps=16)
    assert good.direction == "higher"
    assert (good.scores > bad.scores + 0.2).all()
    assert good.curves[0, 0] < 0.5 and torch.allclose(good.curves[:, 1:], good.curves[:, -1:])


def test_deletion_auc_of_constant_model_is_constant():
    class Const(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], 2)

    res = deletion(Const(), torch.rand(3, 1, 5, 7), torch.rand(3, 5, 7), 0, steps=6)
    p = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(res.scores, p.expand(3))
    # floor(s * 35 / 6) pixels at step s
    assert res.levels.tolist() == [(s * 35 // 6) / 35 for s in range(7)]


def test_relevance_ranks_and_blur():
    maps = torch.tensor([[[0.5, 2.0], [1.0, 0.5]]])
    assert relevance_ranks(maps, seed=None).tolist() == [[2, 0, 1, 3]]
    assert sorted(relevance_ranks(maps, seed=1)[0, [0, 3]].tolist()) == [2, 3]
    const = torch.full((1, 2, 9, 9), 0.7)
    assert torch.allclose(gaussian_blur(const), const)
    dot = torch.zeros(1, 1, 21, 21)
    dot[0, 0, 10, 10] = 1.0
    blurred = gaussian_blur(dot, sigma=2.0, kernel_size=7)
    d = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-(d**2) / 8)
    g = g / g.sum()
    assert torch.allclose(blurred[0, 0, 7:14, 7:14], g[:, None] * g[None, :])
    assert blurred.sum() == pytest.approx(1.0)


def test_metrics_registry_directions_match_results():
    assert set(METRICS) >= {
        "extended_pointing_game",
        "pointing_game",
        "patch_masking",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
        "average_drop",
        "increase_in_confidence",
        "deletion",
        "insertion",
    }
    model, x, perfect, _ = _region_setup()
    masks = perfect > 0
    for name, (fn, direction) in METRICS.items():
        args = (perfect, masks) if name in LOCALISATION_METRICS else (model, x, perfect, 0)
        res = fn(*args)
        assert res.direction == direction and res.name == name
        assert res.scores.shape == (2,)
        assert fn.__doc__ and f"{direction.capitalize()} is better" in fn.__doc__.replace(
            "Lower AUC is better", "Lower is better"
        ).replace("Higher AUC is better", "Higher is better")


def test_model_state_restored_and_second_target():
    from conftest import assert_same_state, model_state

    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 6 * 6, 4))
    model.train()
    x = torch.randn(3, 3, 6, 6)
    maps = torch.rand(3, 6, 6)
    before = model_state(model)
    a = patch_masking(model, x, maps, "second")
    b = patch_masking(model, x, maps, second_most_probable(model, x))
    assert torch.equal(a.curves, b.curves)  # eval mode inside: dropout off, deterministic
    deletion(model, x, maps, "predicted", steps=4)
    average_drop(model, x, maps, "second", keep_top=0.5)
    assert_same_state(before, model_state(model))


# ----------------------------------------------------------------------------- chance level


def test_random_expectation_on_hand_made_masks():
    """A box of a quarter of an 8x8 image: every closed form but the pointing game's is 0.25;
    one pixel in the centre of a 9x9 image: 1/81, and 5/81 with tolerance 1 (the pixel and
    its 4 neighbours at distance 1; the diagonals are at sqrt(2) > 1)."""
    quarter = torch.zeros(1, 8, 8, dtype=torch.bool)
    quarter[0, :4, :4] = True
    assert area_share(quarter).tolist() == [0.25]
    for metric in ("extended_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"):
        assert random_expectation(metric, quarter).tolist() == [0.25]
    dot = torch.zeros(2, 9, 9, dtype=torch.bool)
    dot[0, 4, 4] = True  # image 1: empty mask, skipped by the metrics: NaN
    exact = random_expectation("pointing_game", dot, tolerance=0)
    assert exact[0].item() == 1 / 81 and math.isnan(exact[1].item())
    assert random_expectation("pointing_game", dot, tolerance=1)[0].item() == 5 / 81
    assert random_expectation("pointing_game", dot, tolerance=1.5)[0].item() == 9 / 81
    # the quarter's 4x4 block, a row below and a column to the right: 16 + 4 + 4 pixels
    assert random_expectation("pointing_game", quarter, tolerance=1).item() == 24 / 64


def test_random_expectation_matches_random_maps_and_names_every_metric():
    """Mean score of 3000 uniform random maps vs the closed form (standard errors about
    0.004-0.009 here; a wrong formula, e.g. the undilated mask for the pointing game,
    0.1875 instead of 0.406, is far outside)."""
    assert set(RANDOM_EXPECTATIONS) == set(METRICS) and set(METRICS) >= CLOSED_FORM
    gen = torch.Generator().manual_seed(0)
    n = 3000
    mask = torch.zeros(n, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 1:5] = True  # 12 of 64 pixels: 0.1875
    maps = torch.rand(n, 8, 8, generator=gen)
    measured = {
        "extended_pointing_game": extended_pointing_game(maps, mask),
        "pointing_game": pointing_game(maps, mask, tolerance=1),
        "relevance_mass_accuracy": relevance_mass_accuracy(maps, mask),
        "relevance_rank_accuracy": relevance_rank_accuracy(maps, mask),
    }
    for metric, res in measured.items():
        expected = random_expectation(metric, mask, tolerance=1)
        assert torch.allclose(expected, expected[:1].expand(n))
        agg = res.aggregate
        assert abs(agg.mean - expected[0].item()) <= 4 * agg.half_width / 1.96, metric
    # the 3x4 box dilated by 1: 5 rows x 4 columns plus one column each side of its 3 rows
    assert random_expectation("pointing_game", mask[:1], 1).item() == 26 / 64
    with pytest.raises(ValueError, match="no closed-form .* estimate it with the random"):
        random_expectation("deletion", mask)
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):
        random_expectation("pointing_game", mask[0])
