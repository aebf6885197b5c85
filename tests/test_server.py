"""``sglrp serve`` without a browser: uploads, examples, pictures, the backend and the command.

The browser test is tests/test_server_browser.py; the handlers (which need Gradio) are tested
at the end of this file when Gradio is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sglrp
from sglrp import cli, images
from sglrp.data import CLASSES, MEAN, STD, generate
from sglrp.images import load_image, preprocess
from sglrp.server import backend, inputs, pictures
from sglrp.viz import overlay, positive_map, signed_map


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models: one thread is faster than contending for the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> backend.Bundle:
    return backend.load_bundle("shapes_vgg", out=tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def two_shapes(tmp_path_factory) -> Path:
    """A generated two-object image as a PNG file (the shipped model knows its classes)."""
    path = tmp_path_factory.mktemp("img") / "two_shapes.png"
    Image.fromarray(generate("multi", 1, seed=0, size=64, start=1)[0].image).save(path)
    return path


# ------------------------------------------------------------------ uploads


def test_upload_of_a_text_file_names_the_users_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image at all")
    with pytest.raises(inputs.UploadError, match="notes.png.*not a recognised image format"):
        inputs.read_upload(path)


def test_truncated_image_is_refused(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 90).save(good)
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(inputs.UploadError, match="corrupt or truncated"):
        inputs.read_upload(bad)


def test_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 599)  # 600 pixels: one too many
    with pytest.raises(inputs.UploadError, match="megapixels"):
        inputs.read_upload(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 600)
    assert inputs.read_upload(path).image.size == (30, 20)


def test_no_file_is_an_error():
    with pytest.raises(inputs.UploadError, match="no file"):
        inputs.read_upload(None)


def test_grayscale_and_rgba_are_converted_with_a_note(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").save(gray)
    up = inputs.read_upload(gray)
    a = np.asarray(up.image)
    assert up.image.mode == "RGB"
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert a[0, 5, 0] == 5
    assert any("grayscale" in n for n in up.notes)

    rgba = tmp_path / "rgba.png"
    px = np.zeros((4, 4, 4), np.uint8)
    px[..., 0] = 200
    px[:, :2, 3] = 0  # left half transparent
    px[:, 2:, 3] = 255
    Image.fromarray(px, mode="RGBA").save(rgba)
    up = inputs.read_upload(rgba)
    a = np.asarray(up.image)
    assert tuple(a[0, 0]) == (255, 255, 255)  # composited onto white
    assert tuple(a[0, 3]) == (200, 0, 0)
    assert any("transparent" in n for n in up.notes)


def test_rgb_upload_has_no_notes(two_shapes):
    up = inputs.read_upload(two_shapes)
    assert up.notes == [] and up.name == "two_shapes.png"


# ------------------------------------------------------------------ examples, boxes, folder


def test_examples_are_the_generated_images_with_their_boxes(tmp_path):
    choices = inputs.example_choices(64)
    assert len(choices) == 2 * inputs.EXAMPLE_COUNT
    assert choices[0].key == "single:0" and choices[-1].key == f"multi:{inputs.EXAMPLE_COUNT - 1}"
    sample = generate("multi", 3, seed=0, size=64)[2]
    ex = inputs.example("multi:2", 64, tmp_path)
    assert np.array_equal(np.asarray(load_image(ex.path)), sample.image)  # lossless PNG
    assert [o["box"] for o in ex.objects] == [tuple(o.box) for o in sample.objects]
    assert " + ".join(o.name for o in sample.objects) in choices[inputs.EXAMPLE_COUNT + 2].label
    with pytest.raises(inputs.UploadError):
        inputs.example("multi:99", 64, tmp_path)


def test_boxes_follow_resize_and_centre_crop():
    # 100 x 80 image, shorter side -> 40: 50 x 40, crop 32: left = round(9) = 9, top = 4
    obj = [{"name": "a", "label": 0, "box": (10, 20, 60, 70)}]
    (out,) = inputs.boxes_in_input(obj, (100, 80), 40, 32)
    assert out["box"] == (0, 6, 21, 31)  # x0 = 5 - 9 clipped to 0, y0 = 10 - 4, ...
    # smaller than the crop: padded by (32 - 20) // 2 = 6 on each side
    (out,) = inputs.boxes_in_input([{**obj[0], "box": (0, 0, 20, 20)}], (20, 20), None, 32)
    assert out["box"] == (6, 6, 26, 26)
    # same size: unchanged; a box cropped away entirely is dropped
    assert inputs.boxes_in_input(obj, (100, 80), 80, None)[0]["box"] == (10, 20, 60, 70)
    gone = [{**obj[0], "box": (0, 0, 3, 3)}]
    assert inputs.boxes_in_input(gone, (100, 80), 40, 32) == []


def test_boxes_match_the_pixels_preprocess_moves():
    """A white square drawn at a box lands where the mapped box says (nearest-exact sizes)."""
    a = np.zeros((80, 120, 3), np.uint8)
    a[20:60, 50:90] = 255
    obj = [{"name": "sq", "label": 0, "box": (50, 20, 90, 60)}]
    _, shown = preprocess(Image.fromarray(a), 40, 32)  # halves: 60 x 40, crop 32
    rows, cols = np.nonzero(np.asarray(shown)[..., 0] > 127)
    (mapped,) = inputs.boxes_in_input(obj, (120, 80), 40, 32)
    assert mapped["box"] == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_draw_boxes_outlines_only_the_border():
    rgb = np.zeros((10, 10, 3), np.uint8)
    out = inputs.draw_boxes(rgb, [{"name": "x", "box": (2, 3, 8, 9)}])
    assert tuple(out[3, 2]) == (0, 200, 0) and tuple(out[8, 7]) == (0, 200, 0)
    assert tuple(out[5, 5]) == (0, 0, 0) and tuple(out[1, 1]) == (0, 0, 0)
    assert inputs.draw_boxes(rgb, []) is rgb


def test_folder_lists_image_files_only(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in inputs.folder_images(tmp_path)] == ["a.jpg", "b.png"]
    with pytest.raises(FileNotFoundError):
        inputs.folder_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        inputs.folder_images(tmp_path / "b.png")


# ------------------------------------------------------------------ pictures


def test_display_maps_own_scale_equals_the_viz_display_maps():
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(3, 5, 6)), rng.normal(size=(1, 5, 6)) * 40]
    for m, d in zip(maps, pictures.display_maps(maps), strict=True):
        np.testing.assert_allclose(d, signed_map(m), rtol=1e-12)
    for m, d in zip(maps, pictures.display_maps(maps, positive=True), strict=True):
        np.testing.assert_allclose(d, positive_map(m), rtol=1e-12)


def test_display_maps_shared_scale_by_hand():
    a = np.array([[[1.0, -2.0]]])  # (1, 1, 2)
    b = np.array([[[4.0, 0.0]]])
    sa, sb = pictures.display_maps([a, b], shared=True)
    np.testing.assert_array_equal(sa, [[0.25, -0.5]])
    np.testing.assert_array_equal(sb, [[1.0, 0.0]])
    pa, pb = pictures.display_maps([a, b], positive=True, shared=True)
    np.testing.assert_array_equal(pa, [[0.25, 0.0]])  # max sum_c |R_c| over both = 4
    zero = pictures.display_maps([np.zeros((3, 2, 2))])[0]
    assert not zero.any()
    with pytest.raises(ValueError, match="NaN"):
        pictures.display_maps([np.full((1, 2, 2), np.nan)])


def test_map_panel_layout_and_cells_by_hand():
    from sglrp.server.pictures import (
        BAR_BAND_PX,
        LABEL_PX,
        PAD_PX,
        TITLE_PX,
        TOP_PX,
        cell_factor,
    )

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cols = [("A", rng.normal(size=(3, 64, 64))), ("B", -np.ones((1, 64, 64)))]
    out = pictures.map_panel(image, cols, opacity=0.5)
    f = cell_factor(64, 64)
    assert f == 3 and out.dtype == np.uint8
    assert out.shape == (
        TOP_PX + TITLE_PX + 64 * f + PAD_PX,
        3 * (64 * f + PAD_PX) + PAD_PX + BAR_BAND_PX,
        3,
    )
    # the first map's cell is viz.overlay of its signed display map, enlarged f times
    y, x = TOP_PX + TITLE_PX, PAD_PX + (64 * f + PAD_PX)
    want = overlay(image, signed_map(cols[0][1]), alpha=0.5, signed=True, vmax=1.0)
    np.testing.assert_array_equal(out[y : y + 64 * f : f, x : x + 64 * f : f], want)
    np.testing.assert_array_equal(out[y : y + 64 * f : f, PAD_PX : PAD_PX + 64 * f : f], image)
    two = pictures.map_panel(image, cols * 2, rows=2, row_titles=["x", "y"], shared=True)
    assert two.shape[:2] == (TOP_PX + 2 * (TITLE_PX + 64 * f + PAD_PX), out.shape[1] + LABEL_PX)
    with pytest.raises(ValueError, match="opacity"):
        pictures.map_panel(image, cols, opacity=1.5)
    with pytest.raises(ValueError, match="rows"):
        pictures.map_panel(image, cols, rows=3)


# ------------------------------------------------------------------ backend


def test_bundle_is_what_sglrp_explain_loads(bundle):
    assert bundle.names == list(CLASSES)
    assert bundle.num_classes == len(CLASSES) and bundle.side == 64
    assert bundle.settings.mean == pytest.approx(MEAN) and bundle.settings.crop == 64
    assert bundle.hidden and set(bundle.conv_layers) <= set(bundle.hidden)
    names = [n for _, n in backend.method_choices(bundle)]
    assert "random" not in names and {"sglrp", "clrp", "lrp", "gradcam"} <= set(names)
    labels = dict((n, label) for label, n in backend.method_choices(bundle))
    assert labels["guided_gradcam"] == "Guided Grad-CAM"
    assert backend.default_methods(bundle) == ["sglrp", "clrp", "lrp"]


def test_predict_is_the_softmax_of_the_models_logits(bundle, two_shapes):
    pred = backend.predict(bundle, two_shapes)
    x, _ = preprocess(load_image(two_shapes), 64, 64, MEAN, STD)
    with torch.no_grad():
        p = torch.softmax(bundle.model(x).double(), dim=1)[0].numpy()
    np.testing.assert_allclose(pred.probs, p, rtol=1e-6)
    assert pred.order == list(np.argsort(-p, kind="stable"))
    top = pred.top(bundle.names)
    assert [t["rank"] for t in top] == [1, 2, 3, 4, 5] and top[0]["index"] == pred.order[0]
    assert pred.shown.shape == (64, 64, 3)


def test_export_equals_sglrp_explain_files_and_the_library(bundle, two_shapes, tmp_path, capsys):
    target = backend.predict(bundle, two_shapes).order[1]  # the second most probable class
    methods = ["sglrp", "guided_gradcam"]
    ex = backend.explain_maps(
        bundle, two_shapes, tmp_path / "page", chosen=methods, target=target, rules="dtd"
    )
    code = cli.main(
        [
            "explain",
            str(two_shapes),
            "--model",
            "shapes_vgg",
            "--method",
            ",".join(methods),
            "--target",
            str(target),
            "--out",
            str(tmp_path / "cli"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    cli_dir = tmp_path / "cli" / "two_shapes"
    for m in methods:
        assert (ex.out_dir / f"{m}.npy").read_bytes() == (cli_dir / f"{m}.npy").read_bytes()
    page_json = json.loads((ex.out_dir / "explanation.json").read_text())
    cli_json = json.loads((cli_dir / "explanation.json").read_text())
    assert page_json == cli_json
    assert page_json["target"]["index"] == target
    assert [p.name for p in ex.files] == [
        "grid.png",
        "explanation.json",
        "sglrp.npy",
        "guided_gradcam.npy",
    ]
    x, _ = preprocess(load_image(two_shapes), 64, 64, MEAN, STD)
    bounds = bundle.settings.bounds
    ref = sglrp.explain(bundle.model, x, target, "sglrp", rules="dtd", bounds=bounds)
    np.testing.assert_allclose(ex.maps["sglrp"], ref[0].numpy(), atol=1e-6, rtol=0)


def test_explain_maps_checks_its_request(bundle, two_shapes, tmp_path):
    with pytest.raises(ValueError, match="at least one method"):
        backend.explain_maps(bundle, two_shapes, tmp_path, chosen=[], target=0)
    with pytest.raises(ValueError, match="random"):
        backend.explain_maps(bundle, two_shapes, tmp_path, chosen=["random"], target=0)
    with pytest.raises(ValueError, match="preset"):
        backend.explain_maps(bundle, two_shapes, tmp_path, chosen=["lrp"], target=0, rules="x")
    with pytest.raises(ValueError, match="not a class"):
        backend.explain_maps(bundle, two_shapes, tmp_path, chosen=["lrp"], target=12)
    with pytest.raises(ValueError, match="no layer"):
        backend.explain_maps(bundle, two_shapes, tmp_path, chosen=["gradcam"], target=0, layer="x")


def test_contrast_maps_are_sglrp_and_lrp_for_both_classes(bundle, two_shapes):
    x, _ = backend.model_input(bundle, two_shapes)
    order = backend.predict(bundle, two_shapes).order
    t, c = order[0], order[1]
    view = backend.contrast_maps(bundle, x, t, c)
    assert set(view.maps) == set(backend.CONTRAST_METHODS)
    for method, maps in view.maps.items():
        assert maps.shape == (2, 3, 64, 64)
        for k, cls in enumerate((t, c)):
            ref = sglrp.explain(
                bundle.model, x, cls, method, rules="dtd", bounds=bundle.settings.bounds
            )
            np.testing.assert_allclose(maps[k], ref[0].numpy(), atol=1e-5, rtol=1e-4)
    # SGLRP relevance sums to zero (eq. 10 output relevance sums to 0, z+ conserves it)
    total = np.abs(view.maps["sglrp"]).sum(axis=(1, 2, 3))
    assert np.all(np.abs(view.maps["sglrp"].sum(axis=(1, 2, 3))) <= 1e-3 * total)
    known = {"sglrp": view.maps["sglrp"][0]}
    reuse = backend.contrast_maps(bundle, x, t, c, known=known)
    np.testing.assert_array_equal(reuse.maps["sglrp"][0], known["sglrp"])
    np.testing.assert_allclose(reuse.maps["sglrp"][1], view.maps["sglrp"][1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="differ"):
        backend.contrast_maps(bundle, x, t, t)


def test_critical_path_graph_lists_the_layers_top_neurons(bundle, two_shapes):
    x, _ = backend.model_input(bundle, two_shapes)
    layer = bundle.conv_layers[-1]
    cp, rows = backend.critical_path_graph(bundle, x, 3, layer=layer, graph_k=2)
    assert cp.path[0] == "output" and cp.path[-1] == "input"
    rel = cp.full.relevance[layer][0]
    mags = [abs(r["relevance"]) for r in rows]
    assert mags == sorted(mags, reverse=True) and mags[0] == pytest.approx(float(rel.abs().max()))
    assert sum(abs(r["share"]) for r in rows) <= 1 + 1e-9
    with pytest.raises(ValueError, match="hidden"):
        backend.critical_path_graph(bundle, x, 3, layer="nope")


# ------------------------------------------------------------------ the command


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'pip install "sglrp[app]"' in err and err.startswith("sglrp serve: error:")


def test_the_core_package_does_not_import_gradio():
    code = (
        "import sys, sglrp, sglrp.cli, sglrp.server.backend, sglrp.server.inputs, "
        "sglrp.server.pictures; sglrp.cli.build_parser(); print('gradio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ handlers (need gradio)


@pytest.fixture(scope="module")
def context(bundle, tmp_path_factory):
    pytest.importorskip("gradio", reason='the handlers need gradio: pip install "sglrp[app]"')
    from sglrp.server.handlers import Context

    return Context(bundle, tmp_path_factory.mktemp("serve"))


def test_handlers_keep_tabs_apart_and_report_bad_uploads(context, two_shapes, tmp_path):
    a = context.upload(str(two_shapes), None, True)
    state_a = a[0]
    assert state_a["image"]["name"] == "two_shapes.png" and "predicted" in a[5]
    b = context.example("single:3", None, True)
    state_b = b[0]
    assert state_b["dir"] != state_a["dir"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    c = context.upload(str(bad), state_a, True)
    assert c[0] == state_a and c[-1] is None  # the tab keeps its image; the box is emptied
    assert "Cannot use this file" in c[5] and "broken.png" in c[5]
    state, picture, files, status = context.explain(
        state_a,
        state_a["order"][1],
        ["sglrp", "lrp"],
        "dtd",
        None,
        False,
        1.0,
        True,
        False,
        progress=lambda *a, **k: None,
    )
    assert "Explained" in status and picture.dtype == np.uint8
    assert [Path(f).name for f in files][2:] == ["sglrp.npy", "lrp.npy"]
    assert all(Path(f).is_relative_to(state_a["dir"]) for f in files)
    state, contrast, status, used = context.contrast(state, None, "dtd", False, 1.0, True)
    assert used == state["contrast"]["contrast"] == state_a["order"][0]  # target was 2nd
    assert contrast.dtype == np.uint8 and "contrast view" in status


def test_contrast_class_moves_off_the_target_and_redraw_needs_no_model(context, two_shapes):
    state = context.upload(str(two_shapes), None, False)[0]
    first, second = state["order"][:2]
    assert context.other_class(second, state, second)["value"] == first
    assert context.other_class(first, state, second) == {"__type__": "update"}  # unchanged
    picture, maps, contrast = context.redraw(state, True, 0.3, True, True)
    assert picture.shape == (256, 256, 3) and maps is None and contrast is None


def test_page_is_offline_and_threads_leave_a_core(context):
    import os

    from sglrp.server.app import SMALL_INPUT, default_threads
    from sglrp.server.layout import build

    assert build(context).analytics_enabled is False  # no analytics, no version check
    assert default_threads(SMALL_INPUT) == 1
    cores = os.cpu_count() or 2
    assert default_threads(224) == max(1, min(torch.get_num_threads(), cores - 1))
