"""Tests for sglrp.viz: display maps, colour rendering, grids and curve plots."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sglrp import viz

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ maps


@pytest.mark.parametrize("shape", [(5, 6), (3, 5, 6), (1, 5, 6), (1, 3, 5, 6)])
def test_zero_maps_give_no_nan(shape):
    R = torch.zeros(shape)
    for m in (viz.positive_map(R), viz.signed_map(R)):
        assert m.shape == (5, 6)
        assert np.isfinite(m).all() and not m.any()
    for rgb in (viz.render_signed(np.zeros((4, 4))), viz.render_positive(np.zeros((4, 4)))):
        assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert np.isfinite(viz.overlay(torch.rand(3, 4, 4), np.zeros((4, 4)))).all()


def test_positive_map_clips_negatives_and_normalises_by_max_abs():
    R = torch.tensor([[[2.0, -4.0], [0.0, 1.0]]])  # (1, 2, 2): max|R| = 4 from a negative
    p = viz.positive_map(R)
    np.testing.assert_allclose(p, [[0.5, 0.0], [0.0, 0.25]])
    assert p.min() >= 0 and p.max() <= 1


def test_positive_map_sums_channels_and_stays_in_unit_range():
    R = np.zeros((3, 2, 2))
    R[:, 0, 0] = [1.0, 1.0, 1.0]  # channel sum 3
    R[:, 1, 1] = [2.0, -1.0, 0.0]  # positive part 2, total magnitude 3
    p = viz.positive_map(R)
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.0, 2.0 / 3.0]])
    # channels-last arrays are read the same way
    np.testing.assert_allclose(viz.positive_map(np.moveaxis(R, 0, -1)), p)


def test_signed_map_sums_channels_and_normalises():
    R = torch.zeros(3, 2, 2, requires_grad=True)
    with torch.no_grad():
        R[:, 0, 0] = torch.tensor([1.0, 1.0, 0.0])
        R[:, 1, 0] = torch.tensor([-4.0, 0.0, 0.0])
    s = viz.signed_map(R)
    np.testing.assert_allclose(s, [[0.5, 0.0], [-1.0, 0.0]])


def test_maps_reject_nan():
    with pytest.raises(ValueError, match="NaN"):
        viz.signed_map(torch.tensor([[float("nan"), 1.0]]))


# ------------------------------------------------------------------ rendering


def test_render_signed_zero_is_neutral_middle_and_symmetric():
    m = np.array([[0.0, 0.5, -0.5, 1.0, -1.0, 0.3, -0.3]])
    rgb = viz.render_signed(m).astype(int)
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # bwr: white at exactly zero
    for a, b in ((1, 2), (3, 4), (5, 6)):
        pos, neg = rgb[0, a], rgb[0, b]
        assert tuple(pos) == tuple(neg[::-1])  # mirror colours: red <-> blue swapped
        assert pos[0] > pos[2]  # positive is red
    assert tuple(rgb[0, 3]) == (255, 0, 0) and tuple(rgb[0, 4]) == (0, 0, 255)


@pytest.mark.parametrize("cmap", ["seismic", "coolwarm", "RdBu_r"])
def test_render_signed_zero_is_colour_map_middle(cmap):
    from matplotlib import colormaps

    rgb = viz.render_signed(np.array([[0.0, 0.2, -0.2]]), cmap=cmap)
    mid = np.round(np.asarray(colormaps[cmap].resampled(255)(127)[:3]) * 255)
    np.testing.assert_array_equal(rgb[0, 0], mid)
    assert not np.array_equal(rgb[0, 1], rgb[0, 2])


def test_render_vmax_none_uses_own_scale():
    m = np.array([[0.0, 0.1, -0.1]])
    np.testing.assert_array_equal(viz.render_signed(m, vmax=None), viz.render_signed(m * 10))
    p = np.array([[0.0, 0.25]])
    assert viz.render_positive(p, vmax=None)[0, 1].tolist() == [255, 255, 255]  # hot: white
    assert viz.render_positive(p)[0, 1].tolist() != [255, 255, 255]


def test_overlay_shapes_and_alpha():
    img = torch.zeros(3, 8, 8)
    img[0] = 1.0  # pure red
    out = viz.overlay(img, np.ones((4, 4)), alpha=0.0, gray=False)  # map upsampled
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()
    full = viz.overlay(img, -np.ones((8, 8)), alpha=1.0, signed=True)
    assert (full == np.array([0, 0, 255])).all()


# ------------------------------------------------------------------ images


def test_denormalize_inverts_normalisation():
    x = torch.rand(2, 3, 5, 5)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    back = viz.denormalize((x - m) / s, MEAN, STD)
    assert isinstance(back, torch.Tensor)
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    one = viz.denormalize(((x - m) / s)[0].numpy(), np.array(MEAN), torch.tensor(STD))
    assert isinstance(one, np.ndarray) and one.shape == (3, 5, 5)
    np.testing.assert_allclose(one, x[0].numpy(), atol=1e-6)
    assert viz.denormalize(torch.full((3, 2, 2), 50.0), MEAN, STD).max() == 1.0


def test_to_image_channel_order_and_grayscale():
    red = torch.zeros(3, 4, 5)
    red[0] = 1.0
    out = viz.to_image(red)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert (out == np.array([255, 0, 0])).all()  # pure red stays red
    hwc = np.zeros((4, 5, 3), dtype=np.uint8)
    hwc[..., 0] = 255
    np.testing.assert_array_equal(viz.to_image(hwc), out)
    np.testing.assert_array_equal(viz.to_image(red.unsqueeze(0)), out)
    gray = viz.to_image(torch.full((1, 4, 5), 0.5))
    assert gray.shape == (4, 5, 3) and (gray == 128).all()
    assert viz.to_image(np.zeros((4, 5))).shape == (4, 5, 3)
    assert viz.to_image(np.full((4, 5, 3), 2.0)).max() == 255  # clipped


# ------------------------------------------------------------------ files


def _maps(n: int, size: int = 16) -> OrderedDict:
    g = torch.Generator().manual_seed(1)
    return OrderedDict(
        [
            ("LRP", torch.randn(n, 3, size, size, generator=g)),
            ("SGLRP", torch.randn(n, 1, size, size, generator=g).numpy()),
            ("Grad-CAM", torch.zeros(n, size, size)),
        ]
    )


@pytest.mark.parametrize(
    ("dpi", "row_titles", "colorbar", "signed"),
    [(100, True, True, True), (72, False, False, False), (50, True, True, False)],
)
def test_grid_png_size_rule(tmp_path: Path, dpi, row_titles, colorbar, signed):
    n = 2
    maps = _maps(n)
    images = (torch.rand(n, 3, 16, 16) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    titles = ["zebra 0.71 / target: elephant 0.21", "cat 0.50"] if row_titles else None
    out = tmp_path / "grid.png"
    fig = viz.comparison_grid(
        images,
        maps,
        row_titles=titles,
        signed=signed,
        mean=MEAN,
        std=STD,
        path=out,
        dpi=dpi,
        colorbar=colorbar,
    )
    assert out.exists()
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    cell = 1.5
    w = (len(maps) + 1) * cell + (viz.CBAR_IN if colorbar else 0)
    h = viz.HEADER_IN + n * (cell + (viz.ROW_TITLE_IN if row_titles else 0))
    expected = (round(w * dpi), round(h * dpi))
    with Image.open(out) as im:
        assert im.size == expected
    assert viz.grid_size_px(n, len(maps), dpi=dpi, row_titles=row_titles, colorbar=colorbar) == (
        expected
    )
    assert len(fig.axes) == n * (len(maps) + 1) + (1 if colorbar else 0)


def test_grid_accepts_list_of_arrays_and_leaves_no_pyplot_figures(tmp_path: Path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    images = [np.random.rand(16, 16, 3), np.random.rand(16, 16, 3)]
    fig = viz.comparison_grid(images, _maps(2), column_titles=["img", "a", "b", "c"])
    assert fig.axes[0].get_xticks().size == 0
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="maps"):
        viz.comparison_grid(images, {"LRP": torch.zeros(3, 16, 16)})


def test_save_map_png(tmp_path: Path):
    p = viz.save_map_png(torch.randn(3, 64, 64), tmp_path / "m.png")
    with Image.open(p) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    q = viz.save_map_png(
        torch.randn(64, 64), tmp_path / "o.png", signed=False, image=torch.rand(3, 64, 64)
    )
    assert q.exists()


def test_plot_curves_writes_png(tmp_path: Path):
    x = np.linspace(0, 1, 11)
    curves = {"SGLRP": 1 - x, "LRP": torch.tensor(1 - x**0.5)}
    out = viz.plot_curves(
        x,
        curves,
        xlabel="fraction deleted",
        ylabel="probability",
        title="Deletion",
        path=tmp_path / "c.png",
        ci={"SGLRP": 0.05 * np.ones_like(x), "LRP": (1 - x - 0.1, 1 - x + 0.1)},
        best="min",
        dpi=50,
    )
    with Image.open(out) as im:
        assert im.size == (300, 200)
