"""``sglrp explain`` on the original image: framing (center, pad, none) and its inverse,
overlays at the image's own resolution, --cmap, summary.json/csv, --recursive."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sglrp import cli
from sglrp.framing import frame_image, to_original
from sglrp.models import get_model

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------ framing and its inverse


def test_center_framing_geometry_and_inverse_without_resizing():
    image = photo(50, 30)  # shorter side already 30: no resampling, exact placement
    framed, f = frame_image(image, "center", size=30, crop=30)
    assert framed.size == (30, 30)
    assert f.resized == (50, 30) and f.offset == (10, 0) and f.input == (30, 30)
    assert np.array_equal(np.asarray(framed), np.asarray(image)[:, 10:40])
    m = np.arange(900, dtype=float).reshape(30, 30)
    values, seen = to_original(m, f)
    assert values.shape == seen.shape == (30, 50)
    assert seen[:, 10:40].all() and not seen[:, :10].any() and not seen[:, 40:].any()
    assert np.array_equal(values[:, 10:40], m) and not values[:, :10].any()


def test_center_framing_maps_back_through_the_resize():
    image = photo(100, 60)  # resized to 50 x 30 (factor 1/2), crop columns 10..39
    _, f = frame_image(image, "center", size=30, crop=30)
    assert f.resized == (50, 30) and f.offset == (10, 0)
    ramp = np.tile(np.arange(30, dtype=float), (30, 1))  # value = input column u
    values, seen = to_original(ramp, f)
    assert values.shape == (60, 100)
    # input column u covers original columns 2 (u + 10) and 2 (u + 10) + 1
    assert seen[:, 21:79].all() and not seen[:, :19].any() and not seen[:, 81:].any()
    x = np.arange(22, 78)
    expected = (x + 0.5) / 2 - 0.5 - 10  # bilinear, pixel centres (align_corners=False)
    np.testing.assert_allclose(values[30, 22:78], expected, atol=1e-9)


def test_pad_framing_sees_the_whole_image():
    image = photo(100, 60)
    framed, f = frame_image(image, "pad", size=0, crop=30, fill=(1, 2, 3))
    assert framed.size == (30, 30)
    assert f.resized == (30, 18) and f.offset == (0, -6)
    a = np.asarray(framed)
    assert (a[:6] == (1, 2, 3)).all() and (a[24:] == (1, 2, 3)).all()  # padding rows
    m = np.zeros((30, 30))
    m[:6] = 5.0  # relevance on the padding is not shown on the image
    m[6:24] = 1.0
    values, seen = to_original(m, f)
    assert values.shape == (60, 100) and seen.all()
    np.testing.assert_allclose(values, 1.0)


def test_none_framing_keeps_the_aspect_ratio():
    image = photo(50, 30)
    framed, f = frame_image(image, "none", size=30, crop=0)
    assert framed.size == (50, 30) and f.input == (50, 30) and f.offset == (0, 0)
    m = np.random.default_rng(1).normal(size=(30, 50))
    values, seen = to_original(m, f)
    assert seen.all() and np.array_equal(values, m)
    with pytest.raises(ValueError, match="the map is"):
        to_original(m.T, f)


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlay")
    torch.manual_seed(0)
    ckpt = root / "vgg5.pt"
    torch.save(get_model("shapes_vgg", num_classes=5).state_dict(), ckpt)
    wide = root / "wide.png"
    photo(50, 40).save(wide)
    nested = root / "folder" / "sub" / "deep.png"
    nested.parent.mkdir(parents=True)
    photo(36, 36, 1).save(nested)
    top = root / "folder" / "top.png"
    photo(36, 36, 2).save(top)
    return {"ckpt": ckpt, "wide": wide, "folder": root / "folder"}


def explain(files, out, *items, extra=()):
    argv = ["explain", *map(str, items), "--model", "shapes_vgg", "--weights", str(files["ckpt"])]
    argv += ["--method", "sglrp,gradcam", "--size", "32", "--no-progress", "--out", str(out)]
    return cli.main([*argv, *extra])


@pytest.mark.parametrize("mode", ["center", "pad", "none"])
def test_overlays_are_at_the_original_resolution(files, tmp_path, capsys, mode):
    out = tmp_path / "o"
    crop = mode if mode == "none" else f"{mode}:32"
    assert explain(files, out, files["wide"], extra=["--crop", crop]) == 0, capsys.readouterr()
    d = out / "wide"
    summary = json.loads((d / "explanation.json").read_text())
    assert summary["framing"]["mode"] == mode and summary["options"]["crop_mode"] == mode
    for method in ("sglrp", "gradcam"):
        with Image.open(d / f"{method}_overlay.png") as im:
            assert im.size == (50, 40)
        entry = next(m for m in summary["methods"] if m["name"] == method)
        assert entry["overlay"] == f"{method}_overlay.png"
    side = {"center": (32, 32), "pad": (32, 32), "none": (40, 32)}[mode]
    with Image.open(d / "input.png") as im:
        assert im.size == side


def test_center_overlay_darkens_the_unseen_sides(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert explain(files, out, files["wide"], extra=["--crop", "center:32"]) == 0
    rgb = np.asarray(Image.open(out / "wide" / "sglrp_overlay.png")).astype(float)
    gray = np.asarray(Image.open(files["wide"]).convert("RGB")).astype(float)
    lum = gray @ np.array([0.299, 0.587, 0.114])
    # the image is 50 x 40 -> resized 40 x 32, crop columns 4..35 -> original columns 5..44
    np.testing.assert_allclose(rgb[:, :4, 0], np.round(0.5 * lum[:, :4]), atol=1)
    assert np.abs(rgb[:, 8:42] - np.round(0.5 * lum[:, 8:42, None])).max() > 5


def test_cmap_changes_the_colours_and_is_recorded(files, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert explain(files, a, files["wide"]) == 0
    assert explain(files, b, files["wide"], extra=["--cmap", "viridis"]) == 0
    assert json.loads((b / "wide" / "explanation.json").read_text())["options"]["cmap"] == "viridis"
    for name in ("sglrp.png", "sglrp_overlay.png"):
        assert not np.array_equal(
            np.asarray(Image.open(a / "wide" / name)), np.asarray(Image.open(b / "wide" / name))
        )


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--crop", "sideways"], "expected center, pad, none"),
        (["--crop", "none:32"], "expected center, pad, none"),
        (["--crop", "pad:x"], "the side must be a number of pixels"),
        (["--crop", "0"], "--crop none keeps the whole image"),
        (["--cmap", "viridiss"], "Did you mean viridis"),
    ],
)
def test_bad_crop_or_cmap_is_one_line_before_any_work(files, tmp_path, capsys, extra, fragment):
    out = tmp_path / "o"
    assert explain(files, out, files["wide"], extra=extra) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and fragment in err
    assert not out.exists()


def test_summary_json_and_csv_cover_every_image(files, tmp_path, capsys):
    out = tmp_path / "o"
    missing = tmp_path / "missing.png"
    assert explain(files, out, files["wide"], missing, files["folder"] / "top.png") == 1
    data = json.loads((out / "summary.json").read_text())
    assert (data["images"], data["explained"], data["failed"]) == (3, 2, 1)
    rows = data["rows"]
    assert [r["image"] for r in rows] == [
        str(files["wide"]),
        str(missing),
        str(files["folder"] / "top.png"),
    ]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "missing.png" in rows[1]["error"]
    first = json.loads((out / "wide" / "explanation.json").read_text())
    assert rows[0]["target"] == first["target"]["name"]
    assert rows[0]["target_probability"] == first["target"]["probability"]
    with open(out / "summary.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and table[1]["status"] == "error"
    assert float(table[0]["predicted_probability"]) == pytest.approx(
        rows[0]["predicted_probability"]
    )


def test_recursive_reads_sub_folders(files, tmp_path, capsys):
    flat, deep = tmp_path / "flat", tmp_path / "deep"
    assert explain(files, flat, files["folder"]) == 0
    assert json.loads((flat / "summary.json").read_text())["images"] == 1
    assert explain(files, deep, files["folder"], extra=["--recursive"]) == 0
    data = json.loads((deep / "summary.json").read_text())
    assert sorted(r["image"] for r in data["rows"]) == sorted(
        str(p) for p in (files["folder"] / "sub" / "deep.png", files["folder"] / "top.png")
    )
    assert (deep / "deep" / "explanation.json").is_file()
