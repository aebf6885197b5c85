"""A caution when a shipped shapes model sees an image unlike its generated training data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sglrp import cli
from sglrp.data import generate
from sglrp.data.likeness import (
    COV,
    MU,
    REFERENCE_N,
    THRESHOLD,
    image_statistic,
    shapes_distance,
)
from sglrp.models import get_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference_stats() -> np.ndarray:
    return np.stack([image_statistic(s.image) for s in generate("train", REFERENCE_N, seed=0)])


def test_constants_are_the_generators_statistics(reference_stats):
    np.testing.assert_allclose(MU, reference_stats.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(COV, np.cov(reference_stats.T), atol=1e-7)
    distances = np.array([shapes_distance_of(s) for s in reference_stats])
    assert 0.0 < (distances > THRESHOLD).mean() <= 0.01  # about 1 in 130 generated images


def shapes_distance_of(stat: np.ndarray) -> float:
    d = stat - MU
    return float(np.sqrt(d @ np.linalg.solve(COV, d)))


def test_statistic_and_distance_by_hand():
    gray = np.full((8, 8, 3), 51, dtype=np.uint8)  # 51 / 255 = 0.2 everywhere
    np.testing.assert_allclose(image_statistic(gray), [0.2, 0.2, 0.2, 0, 0, 0], atol=1e-12)
    checker = np.zeros((8, 8, 3), dtype=np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255  # half black, half white
    np.testing.assert_allclose(image_statistic(checker), [0.5] * 3 + [0.5] * 3, atol=1e-12)
    for image in (gray, checker):
        expected = shapes_distance_of(image_statistic(image))
        assert shapes_distance(image) == pytest.approx(expected, rel=1e-9)
    assert shapes_distance(checker) > THRESHOLD  # contrast far beyond any generated image
    with pytest.raises(ValueError, match="RGB"):
        image_statistic(np.zeros((4, 4)))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("caution")
    shape = generate("single", 1, seed=3)[0].image
    assert shapes_distance(shape) < THRESHOLD
    Image.fromarray(shape).save(root / "shape.png")
    checker = np.zeros((64, 64, 3), dtype=np.uint8)
    checker[(np.arange(64)[:, None] // 4 + np.arange(64)[None] // 4) % 2 == 0] = 255
    Image.fromarray(checker).save(root / "checker.png")
    torch.manual_seed(0)
    torch.save(get_model("shapes_vgg", num_classes=12).state_dict(), root / "vgg.pt")
    return root


def explain(images, out, *model):
    argv = ["explain", str(images / "shape.png"), str(images / "checker.png"), *model]
    return cli.main([*argv, "--method", "gradient", "--no-progress", "--out", str(out)])


def test_shipped_model_cautions_on_an_unlike_image(images, tmp_path, capsys):
    out = tmp_path / "o"
    assert explain(images, out, "--model", "shapes_vgg") == 0
    stdout = capsys.readouterr().out
    shape = json.loads((out / "shape" / "explanation.json").read_text())
    checker = json.loads((out / "checker" / "explanation.json").read_text())
    assert shape["caution"] is None and not shape["likeness"]["unlike"]
    assert checker["caution"]["unlike"] and checker["likeness"]["distance"] > THRESHOLD
    assert "unlike the generated shapes" in checker["caution"]["message"]
    lines = {line.split(":")[0]: line for line in stdout.splitlines() if "->" in line}
    assert "(caution: unlike the training data)" in lines[str(images / "checker.png")]
    assert "(caution:" not in lines[str(images / "shape.png")]
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert rows[0]["caution"] is None and "unlike" in rows[1]["caution"]
    with Image.open(out / "checker" / "grid.png") as a, Image.open(out / "shape" / "grid.png") as b:
        assert a.size == b.size  # the caution is a second title line, the layout is kept


def test_other_models_get_no_likeness_check(images, tmp_path):
    out = tmp_path / "o"
    assert explain(images, out, "--model", "shapes_vgg", "--weights", str(images / "vgg.pt")) == 0
    checker = json.loads((out / "checker" / "explanation.json").read_text())
    assert checker["caution"] is None and checker["likeness"] is None
