"""The evaluation runner: resume after interruption, 2-process sharding, errors, summaries."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglrp import cli
from sglrp.app import batch, config, runner, sources, summary
from sglrp.data import CLASSES, MEAN, STD
from sglrp.loading import ModelBundle
from sglrp.models import shapes_vgg

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

SMALL = [
    "--methods",
    "sglrp,clrp,random",
    "--metrics",
    "extended_pointing_game,pointing_game,relevance_mass_accuracy,patch_masking,deletion",
    "--steps",
    "2",
    "--no-progress",
]


def random_bundle() -> ModelBundle:
    """A randomly initialised shapes VGG standing in for the shipped weights."""
    torch.manual_seed(0)
    model = shapes_vgg(num_classes=len(CLASSES)).eval()
    return ModelBundle(model, CLASSES, MEAN, STD, "random-shapes_vgg", 64)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: much faster on the shared, oversubscribed test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def random_model(monkeypatch):
    bundle = random_bundle()
    monkeypatch.setattr(runner, "load_model", lambda spec: bundle)
    return bundle


@pytest.fixture
def model_file(tmp_path):
    """A weights file with metadata, as `sglrp train` writes it (for subprocesses)."""
    bundle = random_bundle()
    path = tmp_path / "rand.pt"
    torch.save(bundle.model.state_dict(), path)
    meta = {
        "architecture": "shapes_vgg",
        "classes": list(CLASSES),
        "mean": list(MEAN),
        "std": list(STD),
        "input_size": [3, 64, 64],
        "model_kwargs": {},
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["metrics"]


def test_resume_after_interruption_gives_the_same_metrics(random_model, tmp_path, monkeypatch):
    args = ["evaluate", "--model", "x", "--n", "3", "--batch-size", "2", *SMALL]  # 3 batches
    full = tmp_path / "full"
    assert cli.main([*args, "--out", str(full)]) == 0

    real = runner.compute_batch
    calls: list[int] = []

    def interrupting(*a, **k):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(a[6])
        return real(*a, **k)

    monkeypatch.setattr(runner, "compute_batch", interrupting)
    part = tmp_path / "part"
    assert cli.main([*args, "--out", str(part)]) == 130
    assert not (part / "metrics.json").exists()
    lines = (part / "parts" / "rank0.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["batch"] == 0
    # a write torn by the interruption must not break the resumed run
    with open(part / "parts" / "rank0.jsonl", "a") as handle:
        handle.write('{"batch": 1, "images": ["multi/0')

    calls.clear()

    def counting(*a, **k):
        calls.append(a[6])
        return real(*a, **k)

    monkeypatch.setattr(runner, "compute_batch", counting)
    assert cli.main([*args, "--out", str(part)]) == 0
    assert calls == [1, 2]  # only the batches that were not done
    assert metrics_of(part) == metrics_of(full)
    assert (part / "results.jsonl").read_text() == (full / "results.jsonl").read_text()
    for name in ("metrics.csv", "pointing_game_curve.png", "patch_masking.png"):
        assert (part / name).is_file()
    assert not list((part / "parts").glob("*.jsonl"))

    # a finished run started again recomputes nothing
    calls.clear()
    assert cli.main([*args, "--out", str(part)]) == 0
    assert calls == [] and metrics_of(part) == metrics_of(full)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_two_gloo_processes_equal_one_process(model_file, tmp_path):
    args = ["evaluate", "--model", str(model_file), "--batch-size", "1", *SMALL]
    single = tmp_path / "single"
    # one thread (the autouse fixture), as torchrun gives each worker: the same arithmetic
    assert cli.main([*args, "--num-images", "2", "--out", str(single)]) == 0

    dist_out = tmp_path / "dist"
    cmd = [
        str(TORCHRUN),
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "sglrp.cli",
        *args,
        "--num-images",
        "2",
        "--device",
        "cpu",
        "--out",
        str(dist_out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("metrics:") == 1  # only rank 0 reports
    # each rank evaluated its own share (4 batches, round-robin)
    records = [json.loads(line) for line in (dist_out / "results.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records] == [0, 1, 2, 3]
    assert metrics_of(dist_out) == metrics_of(single)
    assert (dist_out / "results.jsonl").read_text() == (single / "results.jsonl").read_text()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--data", "/nonexistent/voc"], "data folder /nonexistent/voc does not exist"),
        (["--methods", "sglrp,magic"], "unknown method 'magic'"),
        (["--metrics", "pointing_game,accuracy"], "unknown metric 'accuracy'"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
    ],
)
def test_bad_inputs_give_one_clear_line(random_model, tmp_path, capsys, extra, expected):
    code = cli.main(["evaluate", "--model", "x", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sglrp evaluate: error:") and expected in err


def test_missing_model_file_and_changed_settings(random_model, tmp_path, capsys, monkeypatch):
    monkeypatch.undo()  # the real loader
    code = cli.main(["evaluate", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "does not exist" in err and len(err.splitlines()) == 1

    monkeypatch.setattr(runner, "load_model", lambda spec: random_model)
    out = tmp_path / "o"
    base = ["evaluate", "--model", "x", "--n", "1", "--out", str(out), *SMALL]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main([*base, "--seed", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert "different settings (seed)" in err and len(err.splitlines()) == 1

    random_model.weights = "retrained"  # same model name, new weights: never mix results
    assert cli.main(base) == 1
    assert "different settings (weights)" in capsys.readouterr().err


def _record(batch: int, scores: dict[str, list[float]]) -> dict:
    n = len(next(iter(scores.values())))
    return {
        "batch": batch,
        "images": [f"multi/{batch:06d}"],
        "units": {
            "gt": {
                "image": ["i"] * n,
                "target": list(range(n)),  # one unit per class present
                "prob": [0.5] * n,
                "predicted": [0] * n,
            },
            "second": {"image": [], "target": [], "prob": [], "predicted": []},
        },
        "scores": {"average_drop": scores, "pointing_game": scores},
        "curves": {},
        "levels": {},
    }


def test_summary_respects_direction_and_excludes_nan():
    records = {
        0: _record(0, {"sglrp": [10.0, 12.0], "lrp": [30.0, 31.0]}),
        1: _record(1, {"sglrp": [11.0, None], "lrp": [29.0, 33.0]}),
    }
    s = summary.summarize(records, ["sglrp", "lrp"], ["average_drop", "pointing_game"], CLASSES)
    drop, pointing = s["average_drop"], s["pointing_game"]
    assert drop["direction"] == "lower" and drop["best"] == "sglrp"
    assert pointing["direction"] == "higher" and pointing["best"] == "lrp"
    assert drop["methods"]["sglrp"]["n"] == 3 and drop["methods"]["sglrp"]["n_excluded"] == 1
    assert math.isclose(drop["methods"]["sglrp"]["mean"], 11.0)
    assert drop["clear"]  # paired difference clearly below 0
    subsets = drop["methods"]["sglrp"]["subsets"]  # two classes in one image: multi-object
    assert subsets["multi_object"]["n"] == 3 and subsets["single_object"]["n"] == 0
    assert subsets["two_classes"]["n"] == 3 and subsets["three_classes"]["n"] == 0


def test_methods_are_read_from_the_registry():
    assert config.resolve_methods("SGLRP, relevance-cam,sglrp") == ["sglrp", "relevance_cam"]
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        config.resolve_methods("sglrp,magic")
    assert config.method_label("guided_gradcam") == "Guided Grad-CAM"
    assert config.method_label("not_registered") == "not_registered"


def test_voc_folder_is_evaluated(random_model, tmp_path):
    from sglrp.data import export_voc, generate

    folder = export_voc(generate("multi", 3, seed=5), tmp_path / "voc")
    out = tmp_path / "o"
    args = ["evaluate", "--model", "x", "--data", str(folder), "--out", str(out), *SMALL]
    assert cli.main(args) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_images"] == 3 and data["model_accuracy"]["multi"]["images"] == 3
    first = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert first["images"] == ["voc/000000", "voc/000001", "voc/000002"]
    assert data["n_units"]["gt"] == sum(len(set(s.labels)) for s in generate("multi", 3, seed=5))


def test_map_without_positive_relevance_scores_zero_not_excluded(random_model, monkeypatch):
    real = batch.display_maps

    def maps(bundle, x, targets, method, seed):
        r = real(bundle, x, targets, method, seed)
        return torch.zeros_like(r) if method == "clrp" else r

    monkeypatch.setattr(batch, "display_maps", maps)
    cfg = config.EvalConfig(methods=("sglrp", "clrp"), metrics=("extended_pointing_game",))
    source = sources.open_data("builtin", 2, 0, random_model)
    rec = runner.compute_batch(
        random_model, source, [0, 2], cfg, ["sglrp", "clrp"], ["extended_pointing_game"], 0
    )
    scores = rec["scores"]["extended_pointing_game"]
    assert scores["clrp"] == [0.0] * len(scores["sglrp"])
    assert all(rec["empty"]["clrp"]) and not any(rec["empty"]["sglrp"])
    assert all(v == 0.0 for curve in rec["curves"]["extended_pointing_game"]["clrp"] for v in curve)


def test_units_are_split_by_classes_in_the_image_and_second_class_presence():
    """Image 'a' holds classes 1 and 2, 'b' class 3 only, 'c' classes 4, 5 and 6; second-class
    units: a -> 2 (present), b -> 7 (absent), c -> 9 (absent)."""
    units = {
        "gt": {"image": ["a", "a", "b", "c", "c", "c"], "target": [1, 2, 3, 4, 5, 6]},
        "second": {"image": ["a", "b", "c"], "target": [2, 7, 9]},
    }
    gt = summary._subsets_of_units(units, "gt")
    assert [u["single_object"] for u in gt] == [False, False, True, False, False, False]
    assert [u["two_classes"] for u in gt] == [True, True, False, False, False, False]
    assert [u["three_classes"] for u in gt] == [False, False, False, True, True, True]
    assert "second_present" not in gt[0]
    second = summary._subsets_of_units(units, "second")
    assert [u["second_present"] for u in second] == [True, False, False]
    assert [u["second_absent"] for u in second] == [False, True, True]
    assert [u["multi_object"] for u in second] == [True, False, True]


def test_random_row_is_within_sampling_error_of_its_stated_expectation(random_model):
    """On 40 generated images the Random row of each localisation measure differs from the
    stated expectation (the per-unit closed form, :func:`sglrp.metrics.random_expectation`)
    by less than 4 standard errors of the paired difference (for relevance mass, rank and the
    extended pointing game those intervals are narrower than 0.01)."""
    from sglrp.metrics import aggregate

    metrics = [
        "extended_pointing_game",
        "pointing_game",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
    ]
    cfg = config.EvalConfig(methods=("random",), metrics=tuple(metrics))
    source = sources.open_data("builtin", 20, 0, random_model)
    plan = sources.batches(len(source), 10)
    records = {
        b: runner.compute_batch(random_model, source, idx, cfg, ["random"], metrics, b)
        for b, idx in enumerate(plan)
    }
    s = summary.summarize(records, ["random"], metrics, CLASSES)
    units = sum(len(r["units"]["gt"]["target"]) for r in records.values())
    for key in metrics:
        measured = [v for r in records.values() for v in r["scores"][key]["random"]]
        expected = [v for r in records.values() for v in r["expected"][key]]
        assert len(measured) == len(expected) == units > 40
        diff = aggregate([a - b for a, b in zip(measured, expected, strict=True)])
        chance = s[key]["random_expectation"]
        assert chance["closed_form"] and chance["n"] == units
        assert math.isclose(chance["mean"], sum(expected) / units)
        gap = s[key]["methods"]["random"]["mean"] - chance["mean"]
        assert math.isclose(gap, diff.mean, rel_tol=0, abs_tol=1e-12)
        assert abs(diff.mean) < 4 * diff.half_width / 1.96, key
        sub = chance["subsets"]
        assert sub["single_object"]["n"] + sub["multi_object"]["n"] == units
    # the pointing game's chance is the share of the object dilated by the tolerance
    shares = [v for r in records.values() for v in r["expected"]["relevance_rank_accuracy"]]
    pointing = [v for r in records.values() for v in r["expected"]["pointing_game"]]
    assert all(p > a for p, a in zip(pointing, shares, strict=True))
    # a mass or rank score off by 0.01 would be detected: the intervals are narrower
    for key in ("relevance_mass_accuracy", "relevance_rank_accuracy", "extended_pointing_game"):
        measured = [v for r in records.values() for v in r["scores"][key]["random"]]
        expected = [v for r in records.values() for v in r["expected"][key]]
        assert aggregate([a - b for a, b in zip(measured, expected, strict=True)]).half_width < 0.01
    no_form = summary._expectation("deletion", None, [])
    assert not no_form["closed_form"] and no_form["mean"] is None
    assert "estimated by the Random row" in no_form["explanation"]
