"""ImageNet-1k class names shipped with the package, used for 1000-output models without
names, and probabilities printed with enough digits."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sglrp import cli
from sglrp.app.classes import IMAGENET_NOTE, default_classes, format_probability
from sglrp.data import imagenet_classes

FACTORY = """\
import torch
from torch import nn


def build(num_classes=1000):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )
    with torch.no_grad():
        model[-1].bias.zero_()
        model[-1].bias[285] = 12.0  # "Egyptian cat" wins by far
    return model
"""


def test_imagenet_names_count_and_known_indices():
    names = imagenet_classes()
    assert len(names) == 1000
    known = {0: "tench", 1: "goldfish", 285: "Egyptian cat", 409: "analog clock"}
    known[999] = "toilet tissue"
    for index, name in known.items():
        assert names[index] == name
    assert all(n and n == n.strip() for n in names)


def test_default_classes_only_for_1000_outputs_without_names():
    assert default_classes(None, 1000) == (imagenet_classes(), IMAGENET_NOTE)
    assert default_classes(None, 999) == (None, None)
    own = tuple(f"c{i}" for i in range(1000))
    assert default_classes(own, 1000) == (own, None)


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.96123, "0.9612"),
        (1.0, "1.0000"),
        (0.0123, "0.0123"),
        (0.001, "0.0010"),
        (3.1e-05, "3.1e-05"),
        (4.4e-4, "0.00044"),
        (1.23e-12, "1.2e-12"),
        (0.0, "0"),
    ],
)
def test_probabilities_keep_their_digits(p, text):
    assert format_probability(p) == text
    assert float(format_probability(p)) == pytest.approx(p, rel=0.05)


def test_explain_names_a_1000_class_model_with_imagenet(tmp_path, capsys):
    torch.set_num_threads(1)
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    image = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "o"
    argv = ["explain", str(image), "--model", f"{factory}:build", "--method", "gradient"]
    argv += ["--size", "32", "--crop", "32", "--target", "second", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "img" / "explanation.json").read_text())
    assert summary["top5"][0]["name"] == "Egyptian cat"
    assert IMAGENET_NOTE in summary["model"]["notes"]
    target = summary["target"]  # second class: a probability of about e^-12
    assert target["probability"] < 1e-3
    shown = re.search(r"img.png: (.+) \((.+)\) ->", stdout)
    assert shown.group(1) == target["name"] and shown.group(1) in imagenet_classes()
    assert shown.group(2) == format_probability(target["probability"])
    assert "e-" in shown.group(2) and "(0.00)" not in stdout
