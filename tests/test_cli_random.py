"""Random weights: ``--random-weights SEED`` on purpose (seeded, recorded), and a warning for a
``module:factory`` whose weights are random without being asked for."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sglrp import cli
from sglrp.loading import RandomWeightsWarning, load_model

FACTORY = """\
import torch
from torch import nn


def build(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )


def seeded(num_classes=3):
    torch.manual_seed(7)  # the same weights every call: a deliberate, reproducible model
    return build(num_classes)
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("random")
    image = root / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    factory = root / "factory.py"
    factory.write_text(FACTORY)
    return {"image": image, "factory": factory}


def explain(files, out, *model):
    argv = ["explain", str(files["image"]), *model, "--method", "gradient", "--size", "32"]
    return cli.main([*argv, "--crop", "32", "--no-progress", "--out", str(out)])


def result(out):
    d = out / "img"
    return json.loads((d / "explanation.json").read_text()), np.load(d / "gradient.npy")


def test_random_weights_are_seeded_and_recorded(files, tmp_path, capsys):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        code = explain(files, tmp_path / name, "--model", "shapes_vgg", "--random-weights", seed)
        assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().err == ""  # on purpose: no warning
    ja, a = result(tmp_path / "a")
    _, b = result(tmp_path / "b")
    _, c = result(tmp_path / "c")
    assert ja["model"]["random_weights"] == 3
    assert any("random weights on purpose (seed 3)" in n for n in ja["model"]["notes"])
    assert np.array_equal(a, b)  # same seed, same weights, same map
    assert not np.array_equal(a, c)


def test_random_weights_do_not_touch_the_global_rng(files):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load_model("shapes_vgg", random_weights=1)
    assert torch.equal(torch.rand(3), expected)


def test_zoo_name_without_weights_points_to_random_weights(files, tmp_path, capsys):
    assert explain(files, tmp_path / "o", "--model", "resnet18") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--random-weights SEED" in err


def test_random_weights_and_weights_exclude_each_other(files, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    argv = ["--model", "shapes_vgg", "--weights", str(weights), "--random-weights", "1"]
    assert explain(files, tmp_path / "o", *argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "exclude each other" in err
    assert not (tmp_path / "o").exists()


def test_factory_with_unseeded_random_weights_warns_in_one_line(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert explain(files, out, "--model", f"{files['factory']}:build") == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("sglrp explain: warning: --model") and "random weights" in err[0]
    notes = result(out)[0]["model"]["notes"]
    assert any("--random-weights SEED" in n for n in notes)


def test_factory_with_its_own_seed_or_random_weights_does_not_warn(files, tmp_path, capsys):
    assert explain(files, tmp_path / "a", "--model", f"{files['factory']}:seeded") == 0
    spec = f"{files['factory']}:build"
    assert explain(files, tmp_path / "b", "--model", spec, "--random-weights", "5") == 0
    assert capsys.readouterr().err == ""
    assert result(tmp_path / "b")[0]["model"]["random_weights"] == 5


def test_library_warning_category(files):
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        load_model(f"{files['factory']}:build")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(f"{files['factory']}:seeded")


def test_evaluate_with_random_weights_records_the_seed(tmp_path, capsys):
    from sglrp.data import export_voc, generate

    voc = export_voc(generate("multi", 1, seed=2), tmp_path / "voc")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", "shapes_vgg", "--random-weights", "2", "--data", str(voc)]
    argv += ["--methods", "gradient", "--metrics", "pointing_game", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    data = json.loads((out / "metrics.json").read_text())
    assert data["provenance"]["random_weights"] == 2
    assert data["settings"]["random_weights"] == 2
