"""``sglrp reproduce --quick`` and the HTML report."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from sglrp import cli
from sglrp.app import compare, config, findings, grids, plots, report, runner, sources
from sglrp.data import CLASSES, MEAN, STD
from sglrp.loading import ModelBundle
from sglrp.metrics import CLOSED_FORM
from sglrp.models import shapes_vgg

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "sglrp" / "weights"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: much faster on the shared, oversubscribed test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_spec(monkeypatch) -> str:
    """The shipped model when its weights exist, else a random-init stand-in."""
    if list(WEIGHTS.glob("shapes_vgg*.pt")):
        return "shapes_vgg"
    torch.manual_seed(0)
    model = shapes_vgg(num_classes=len(CLASSES)).eval()
    bundle = ModelBundle(model, CLASSES, MEAN, STD, "random-shapes_vgg", 64)
    monkeypatch.setattr(runner, "load_model", lambda spec: bundle)
    return "shapes_vgg"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("a", "link", "script"):
            self.links.append(a.get("href") or a.get("src") or "")
        if tag == "table":
            self.tables += 1
        if "id" in a:
            self.ids.append(a["id"])

    def handle_data(self, data):
        self.text.append(data)


def test_reproduce_quick_writes_a_self_contained_report(model_spec, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(
        ["reproduce", "--model", model_spec, "--quick", "--n", "2", "--out", str(out)]
        + ["--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    index = out / "index.html"
    assert f"report: {index.resolve()}" in captured.out
    assert "[1/3]" in captured.err and "[3/3]" in captured.err

    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    assert len(page.imgs) >= 4  # grid + pointing curve + two patch-masking curves
    for src in page.imgs:
        if src.startswith("data:"):
            header, payload = src.split(",", 1)
            assert header == "data:image/png;base64"
            assert base64.b64decode(payload).startswith(b"\x89PNG")
        else:
            assert (out / src).is_file(), src
    for href in page.links:
        assert not href.startswith(("http:", "https:", "//")), href
        if href and not href.startswith("#"):
            assert (out / href).is_file(), href

    data = json.loads((out / "metrics.json").read_text())
    assert (out / "summary.md").read_text(encoding="utf-8") == report.render_markdown(data)
    assert data["methods"] == list(config.REPRODUCE_METHODS)
    # Relevance-CAM at two depths, each named with its layer in the tables
    layers = data["method_layers"]
    assert layers["relevance_cam"] == "features.26" and layers["relevance_cam_mid"] == "features.19"
    assert set(layers) == {"guided_gradcam", "relevance_cam", "relevance_cam_mid"}
    keys = set(data["metrics"])
    assert {"extended_pointing_game", "patch_masking", "patch_masking_second"} <= keys
    assert keys == set(config.MEASURES)
    for key in keys:
        assert key in page.ids  # one table per measure
    text = " ".join(page.text)
    assert "SGLRP" in text and "Summary" in text
    assert "Relevance-CAM @ features.26" in text
    assert "Relevance-CAM (middle layer) @ features.19" in text
    # the Random baseline's expected value: a row where it has a closed form, a note for all
    for entry in data["metrics"].values():
        chance = entry["random_expectation"]
        closed = entry["metric"] in CLOSED_FORM
        assert chance["closed_form"] == closed and (chance["mean"] is not None) == closed
        assert chance["explanation"] in text
    assert text.count(findings.EXPECTED_LABEL) >= len(CLOSED_FORM) + len(data["metrics"])
    for key in ("extended_pointing_game", "patch_masking", "patch_masking_second"):
        assert (out / plots.PLOTS[key][0]).is_file()
    assert (out / "comparison_grid.png").is_file()


def test_grid_rows_cover_every_present_class():
    torch.manual_seed(0)
    bundle = ModelBundle(shapes_vgg(num_classes=len(CLASSES)).eval(), CLASSES, MEAN, STD, "r", 64)
    source = sources.open_data("builtin", 3, 0, bundle)
    x, rows, targets, titles = grids.comparison_rows(bundle, source, [0, 1])
    expected = [
        (i, c) for i in (0, 1) for c in dict.fromkeys(source.load(i).labels)
    ]  # image x class present
    assert list(zip(rows, targets, strict=True)) == expected
    assert x.shape[0] == len(expected) >= 4
    for (_, c), title in zip(expected, titles, strict=True):
        assert f"target {CLASSES[c]} (p=" in title and "top-1:" in title


def _fake_data() -> dict:
    def stats(mean, curve=None):
        d = {"mean": mean, "low": mean - 0.01, "high": mean + 0.01, "n": 50, "n_excluded": 0}
        if curve is not None:
            d["curve"] = [
                {"mean": v, "low": v - 0.01, "high": v + 0.01, "n": 50, "n_excluded": 0}
                for v in curve
            ]
        return d

    levels = [0.2, 0.4, 0.6, 0.8, 1.0]
    epg = {
        "metric": "extended_pointing_game",
        "target": "ground_truth",
        "direction": "higher",
        "title": "Extended pointing game (pointing accuracy)",
        "score": "mean accuracy",
        "level_name": "energy level E",
        "levels": levels,
        "methods": {
            "sglrp": stats(0.5, [0.4, 0.45, 0.5, 0.55, 0.6]),
            "guided_gradcam": stats(0.55, [0.7, 0.65, 0.55, 0.45, 0.4]),
            "random": stats(0.2, [0.2] * 5),
        },
    }
    drop = {
        "metric": "average_drop",
        "target": "ground_truth",
        "direction": "lower",
        "title": "Average drop (%)",
        "score": "drop",
        "level_name": None,
        "levels": None,
        "methods": {"sglrp": stats(30.0), "guided_gradcam": stats(40.0), "random": stats(50.0)},
    }
    epg["random_expectation"] = {
        "explanation": "share of the image inside the target's boxes",
        "closed_form": True,
        **stats(0.21),
    }
    drop["random_expectation"] = {
        "explanation": "no closed form; estimated by the Random row",
        "closed_form": False,
        "mean": None,
    }
    for e in (epg, drop):
        sign = -1 if e["direction"] == "higher" else 1
        e["ranking"] = sorted(e["methods"], key=lambda m: sign * e["methods"][m]["mean"])
        e["best"], e["runner_up"] = e["ranking"][:2]
        e["clear"] = True
        e["best_vs_runner_up"] = stats(1.0)
    return {
        "methods": ["sglrp", "guided_gradcam", "random"],
        "metrics": {"extended_pointing_game": epg, "average_drop": drop},
        "n_units": {"gt": 50, "second": 20},
        "n_images": 20,
        "settings": {"data": "builtin"},
        "model": "m",
    }


def test_summary_is_written_from_the_numbers():
    data = _fake_data()
    text = " ".join(findings.summary_paragraphs(data))
    assert "SGLRP does not win: Extended pointing game" in text
    assert "best Guided Grad-CAM 0.550" in text
    assert "SGLRP wins: Average drop (%)" in text  # lower is better: 30 beats 40
    assert "above Guided Grad-CAM's at E = 0.8-1" in text
    assert "Methods worse than a uniformly random map's expected score" not in text
    low = copy.deepcopy(data)
    low["metrics"]["extended_pointing_game"]["random_expectation"]["mean"] = 0.52
    text = " ".join(findings.summary_paragraphs(low))
    assert (
        "Methods worse than a uniformly random map's expected score: Extended pointing game "
        "(pointing accuracy) (chance 0.520: SGLRP 0.500)." in text
    )

    flipped = copy.deepcopy(data)
    for m, v in (("sglrp", 45.0), ("guided_gradcam", 35.0)):
        flipped["metrics"]["average_drop"]["methods"][m]["mean"] = v
    flipped["metrics"]["average_drop"]["ranking"] = ["guided_gradcam", "sglrp", "random"]
    flipped["metrics"]["average_drop"]["best"] = "guided_gradcam"
    text = " ".join(findings.summary_paragraphs(flipped))
    assert "SGLRP does not win any measure." in text

    page = report.render_html(data, {}, [])
    parser = _Page()
    parser.feed(page)
    assert parser.tables == 3  # winners + one per measure
    assert "Average drop (%)" in page and "&#9733;" in page
    # the expected row: in the pointing game's table (the same at every level), not the drop's
    assert page.count("<tr class='expected'>") == 1
    row = page[page.index("<tr class='expected'>") :].split("</tr>")[0]
    assert row.count("<td>0.210</td>") == 1 + 5  # the mean and five levels (no subsets here)
    assert "Random, expected: no closed form; estimated by the Random row." in page


def test_markdown_summary_marks_the_best_and_shows_curves():
    data = _fake_data()
    text = report.render_markdown(data)
    lines = text.splitlines()
    assert "| measure | better | SGLRP | Guided Grad-CAM | Random | Random, expected |" in lines
    # higher is better for pointing, lower for the drop: the bold cell follows the direction
    assert (
        "| Extended pointing game (pointing accuracy) | higher | 0.500 | **0.550** | 0.200 "
        "| 0.210 |" in lines
    )
    assert "| Average drop (%) | lower | **30.0** | 40.0 | 50.0 | n/a |" in lines
    assert "- Average drop (%): no closed form; estimated by the Random row." in lines
    assert "| method | E=0.2 | E=0.4 | E=0.6 | E=0.8 | E=1 |" in lines
    assert "| SGLRP | 0.4000 | 0.4500 | 0.5000 | 0.5500 | 0.6000 |" in lines
    assert "- SGLRP wins: Average drop (%)." in lines


def test_reproduce_on_several_models_writes_a_comparison(tmp_path, capsys):
    out = tmp_path / "report"
    models = ["shapes_vgg", "shapes_resnet"]
    code = cli.main(
        ["reproduce", "--model", ",".join(models), "--quick", "--n", "2", "--out", str(out)]
        + ["--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = {m: json.loads((out / m / "metrics.json").read_text()) for m in models}
    for m in models:
        results[m]["collapse"] = json.loads((out / m / "collapse.json").read_text())
    for m in models:
        assert (out / m / "index.html").is_file()
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    page.close()
    assert page.tables == len(config.MEASURES) + 1  # and the class-collapse table
    assert set(compare.collapse_depths(results)) == set(models)
    assert {f"{m}/index.html" for m in models} <= set(page.links)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary == compare.render_comparison_markdown(
        results, "2 images per split for each model."
    )
    note = (
        "Layers of the CAM methods per model: shapes_vgg: Guided Grad-CAM @ features.26, "
        "Relevance-CAM @ features.26, Relevance-CAM (middle layer) @ features.19; "
        "shapes_resnet: Guided Grad-CAM @ layer4, Relevance-CAM @ layer4, Relevance-CAM "
        "(middle layer) @ layer2."
    )
    assert note in summary and note in " ".join(" ".join(page.text).split())
    entry = results["shapes_resnet"]["metrics"]["extended_pointing_game"]
    best = entry["best"]
    cell = findings.number(entry["methods"][best]["mean"], findings.digits(entry))
    assert f"**{cell}**" in summary


def test_budget_is_shared_between_models():
    assert compare.images_per_model(100, 1) == 100
    assert compare.images_per_model(100, 3) == 33
    assert compare.images_per_model(100, 8) == compare.MIN_IMAGES
    assert compare.images_per_model(2, 3) == 2


def test_reproduce_report_shows_the_class_collapse(tmp_path):
    out = tmp_path / "report"
    assert (
        cli.main(
            ["reproduce", "--model", "shapes_resnet", "--quick", "--n", "2", "--out", str(out)]
            + ["--no-progress"]
        )
        == 0
    )
    result = json.loads((out / "collapse.json").read_text())
    assert set(result["curves"]) == {"dtd", "epsilon-plus"}
    assert result["layers"][-1] == "input" and result["layers"][0] == "fc"
    for values in result["curves"].values():
        assert len(values) == len(result["layers"])
        assert all(v is None or -1.0 <= v <= 1.0 + 1e-9 for v in values)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Class collapse on" in page and (out / "collapse.png").is_file()
