"""Training smoke runs: files written atomically, metadata consistent, CLI wiring."""

from __future__ import annotations

import csv
import hashlib
import inspect
import json

import pytest
import torch

from sglrp import cli
from sglrp import train as train_module
from sglrp.data import CLASSES
from sglrp.models import available_pretrained, pretrained
from sglrp.train import resolve_recipe, train

SHIPPED = available_pretrained()
TINY = {"widths": (4, 4, 8, 8), "blocks": (1, 1, 1, 1)}


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_smoke(tmp_path):
    out = tmp_path / "tiny.pt"
    meta = train(
        "shapes_resnet",
        out,
        epochs=2,
        steps_per_epoch=2,
        batch_size=8,
        val_single=12,
        val_multi=4,
        threads=1,
        progress=False,
        log=None,
        model_kwargs=TINY,
    )
    assert out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.csv", "tiny.json", "tiny.pt"]
    on_disk = json.loads((tmp_path / "tiny.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert on_disk["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert on_disk["classes"] == list(CLASSES)
    assert on_disk["input_size"] == [3, 64, 64]
    assert len(on_disk["log"]) == 2 and on_disk["training"]["images_seen"] == 32
    with open(tmp_path / "tiny.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_single_acc", "val_multi_top2"} <= set(rows[0])
    loaded = pretrained("tiny", root=tmp_path)
    assert not loaded.model.training
    assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, len(CLASSES))


def test_train_is_deterministic_and_half(tmp_path):
    kwargs = dict(
        epochs=1,
        steps_per_epoch=1,
        batch_size=6,
        val_single=0,
        val_multi=0,
        threads=1,
        progress=False,
        log=None,
        model_kwargs=TINY,
    )
    a = train("shapes_resnet", tmp_path / "a.pt", seed=3, **kwargs)
    b = train("shapes_resnet", tmp_path / "b.pt", seed=3, **kwargs)
    assert a["sha256"] == b["sha256"]
    h = train("shapes_resnet", tmp_path / "h.pt", seed=3, half=True, **kwargs)
    assert h["dtype"] == "float16"
    state = torch.load(tmp_path / "h.pt", weights_only=True)
    assert state["conv1.weight"].dtype == torch.float16
    assert pretrained("h", root=tmp_path).model.conv1.weight.dtype == torch.float32


def test_train_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="shapes_vgg"):
        train("alexnet", tmp_path / "x.pt")
    with pytest.raises(ValueError, match=".pt"):
        train("shapes_vgg", tmp_path / "x.bin")
    with pytest.raises(ValueError, match="multi_fraction"):
        train("shapes_vgg", tmp_path / "x.pt", multi_fraction=1.0)


def test_cli_train(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    args = ["train", "--model", "shapes_vgg", "--out", str(out), "--epochs", "1"]
    args += ["--steps-per-epoch", "1", "--batch-size", "4", "--threads", "1"]
    args += ["--val-single", "4", "--val-multi", "2", "--quiet"]
    assert cli.main(args) == 0
    assert out.is_file() and (tmp_path / "cli.json").is_file()
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["train", "--model", "shapes_vgg", "--out", str(tmp_path / "x.txt")]) == 1
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["shapes_vgg", "shapes_resnet"] + (["shapes_vit"] if "shapes_vit" in SHIPPED else [])
)
def test_cli_defaults_are_the_shipped_recipe(name, tmp_path, monkeypatch):
    """`sglrp train --model NAME --out F` trains with the shipped weights' settings."""
    seen: dict = {}

    def fake_train(model_name, out, **kwargs):
        seen.update(kwargs, model_name=model_name)
        raise RuntimeError("stop before training")

    monkeypatch.setattr(train_module, "train", fake_train)
    args = cli.build_parser().parse_args(["train", "--model", name, "--out", "x.pt"])
    with pytest.raises(RuntimeError, match="stop"):
        args.func(args)
    epochs, steps, kwargs = resolve_recipe(name, seen["epochs"], seen["steps_per_epoch"])
    shipped = pretrained(name).metadata
    recorded = shipped["training"]
    assert (epochs, steps) == (recorded["epochs"], recorded["steps_per_epoch"])
    assert kwargs == shipped["model_kwargs"]
    defaults = inspect.signature(train).parameters
    for key in ("batch_size", "lr", "weight_decay", "warmup", "seed", "multi_fraction", "threads"):
        assert seen.get(key, defaults[key].default) == recorded[key], key
