"""Training smoke runs: files written atomically, metadata consistent, CLI wiring."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

from sglrp import cli
from sglrp import train as train_module
from sglrp.data import CLASSES
from sglrp.models import available_pretrained, pretrained
from sglrp.train import DEFAULTS, resolve_recipe, train

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
    assert cli.main(args) == 1  # the recipe's 2 head-only epochs do not fit in 1 epoch
    assert "--head-epochs" in capsys.readouterr().err
    assert cli.main([*args, "--head-epochs", "0"]) == 0
    assert out.is_file() and (tmp_path / "cli.json").is_file()
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["train", "--model", "shapes_vgg", "--out", str(tmp_path / "x.txt")]) == 1
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    ["shapes_vgg", "shapes_vgg_gap", "shapes_resnet"]
    + (["shapes_vit"] if "shapes_vit" in SHIPPED else []),
)
def test_cli_defaults_are_the_shipped_recipe(name, monkeypatch):
    """`sglrp train --model NAME --out F` trains with the shipped weights' settings."""
    seen: dict = {}

    def fake_train(model_name, out, **kwargs):
        seen.update(kwargs, model_name=model_name)
        raise RuntimeError("stop before training")

    monkeypatch.setattr(train_module, "train", fake_train)
    args = cli.build_parser().parse_args(["train", "--model", name, "--out", "x.pt"])
    with pytest.raises(RuntimeError, match="stop"):
        args.func(args)
    settings = resolve_recipe(name, **{k: v for k, v in seen.items() if k in DEFAULTS})
    shipped = pretrained(name).metadata
    recorded = shipped["training"]
    assert settings["model_kwargs"] == shipped["model_kwargs"]
    for key in ("epochs", "steps_per_epoch", "batch_size", "lr", "weight_decay", "warmup"):
        assert settings[key] == recorded[key], key
    assert settings["multi_fraction"] == recorded["multi_fraction"]
    # recorded before warm starts existed: none
    assert settings["init"] == recorded.get("init")
    assert settings["head_epochs"] == recorded.get("head_epochs", 0)
    assert settings["init_lr_scale"] == recorded.get("init_lr_scale", 1.0)
    assert (seen["seed"], seen["threads"]) == (recorded["seed"], recorded["threads"])


def test_resolve_recipe():
    vgg = resolve_recipe("shapes_vgg")
    assert vgg["init"]["model"] == "shapes_vgg_gap" and vgg["head_epochs"] > 0
    assert vgg["model_kwargs"] == {"batch_norm": True, "pool": 4}
    given = resolve_recipe("shapes_vgg", lr=1e-3, model_kwargs={"hidden": 8}, epochs=None)
    assert given["lr"] == 1e-3 and given["epochs"] == vgg["epochs"]
    assert given["model_kwargs"] == {"batch_norm": True, "pool": 4, "hidden": 8}
    off = resolve_recipe("shapes_vgg", init="none")
    assert (off["init"], off["head_epochs"], off["init_lr_scale"]) == (None, 0, 1.0)
    assert resolve_recipe("shapes_vgg", init="none", head_epochs=3)["head_epochs"] == 3
    assert resolve_recipe("unknown_model") == {**DEFAULTS, "model_kwargs": {}}
    with pytest.raises(TypeError, match="unknown training settings"):
        resolve_recipe("shapes_vgg", learning_rate=1.0)


TINY_RUN = dict(batch_size=4, val_single=0, val_multi=0, threads=1, progress=False, log=None)


def test_warm_start_freezes_then_trains_the_features(tmp_path, monkeypatch):
    """Epoch 1 (head only): the features are exactly shapes_vgg_gap's, batch-norm statistics
    included, while the head moves; epoch 2 trains the features too."""
    gap = pretrained("shapes_vgg_gap").model.features.state_dict()
    snapshots: list[dict] = []
    save = train_module._save

    def spy(model, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return save(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "_save", spy)
    meta = train(
        "shapes_vgg", tmp_path / "w.pt", epochs=2, steps_per_epoch=1, head_epochs=1, **TINY_RUN
    )
    assert meta["training"]["init"] == {
        "model": "shapes_vgg_gap",
        "sha256": pretrained("shapes_vgg_gap").metadata["sha256"],
        "modules": ["features"],
    }
    assert meta["training"]["head_epochs"] == 1
    first, second = snapshots
    for key, value in gap.items():
        assert torch.equal(first[f"features.{key}"], value), key
    torch.manual_seed(0)  # train()'s seed: the head's random initialisation, before training
    start = train_module.MODELS["shapes_vgg"](num_classes=len(CLASSES), batch_norm=True, pool=4)
    assert not torch.equal(first["classifier.0.weight"], start.classifier[0].weight.detach())
    changed = [k for k in gap if not torch.equal(second[f"features.{k}"], gap[k])]
    assert "0.weight" in changed and "1.running_mean" in changed


def test_warm_start_checks(tmp_path):
    bad = {"model": "shapes_vgg_gap", "modules": ["features"], "sha256": "0" * 64}
    with pytest.raises(ValueError, match="recipe expects 000000000000"):
        train("shapes_vgg", tmp_path / "a.pt", epochs=2, head_epochs=1, init=bad, **TINY_RUN)
    with pytest.raises(ValueError, match="does not fit modules"):
        train("shapes_resnet", tmp_path / "b.pt", init="shapes_vgg_gap", **TINY_RUN)
    with pytest.raises(ValueError, match="head_epochs"):
        train("shapes_vgg", tmp_path / "c.pt", epochs=2, head_epochs=2, **TINY_RUN)
    with pytest.raises(ValueError, match="needs init"):
        train("shapes_resnet", tmp_path / "d.pt", head_epochs=1, **TINY_RUN)
    assert not list(tmp_path.iterdir())
