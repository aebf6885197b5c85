"""Shared compute options (--device, --batch-size, --threads) on every command that computes,
and ``evaluate`` on a user's own model (zoo name + --weights) and VOC folder."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sglrp import cli
from sglrp.data import CLASSES, export_voc, generate
from sglrp.models import get_model

COMPUTING = ("explain", "paths", "evaluate", "reproduce")
SMALL = [
    "--methods",
    "sglrp,gradient",
    "--metrics",
    "pointing_game,relevance_mass_accuracy,deletion",
    "--steps",
    "2",
    "--no-progress",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random-init shapes_vgg state_dicts (12 and 5 classes), a VOC folder, three images."""
    root = tmp_path_factory.mktemp("compute")
    torch.manual_seed(0)
    out = {}
    for n in (12, 5):
        out[n] = root / f"vgg{n}.pt"
        torch.save(get_model("shapes_vgg", num_classes=n).state_dict(), out[n])
    out["voc"] = export_voc(generate("multi", 2, seed=3), root / "voc")
    rng = np.random.default_rng(1)
    out["images"] = []
    for i, shape in enumerate([(30, 40), (32, 32), (50, 36)]):
        path = root / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        out["images"].append(path)
    return out


def subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", COMPUTING)
def test_every_computing_command_has_the_compute_options(command):
    sub = subparsers()[command]
    options = {s for a in sub._actions for s in a.option_strings}
    assert {"--device", "--batch-size", "--threads"} <= options
    if command in ("evaluate", "reproduce"):
        assert {"--weights", "--labels", "--data"} <= options


@pytest.mark.parametrize("command", COMPUTING)
def test_bad_batch_size_is_one_line_before_any_work(command, files, tmp_path, capsys):
    out = tmp_path / "o"
    first = {"explain": [str(files["images"][0])], "paths": ["builtin:0"]}.get(command, [])
    argv = [command, *first, "--model", "shapes_vgg", "--batch-size", "0", "--out", str(out)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert "--batch-size must be a positive integer" in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_one_line(files, tmp_path, capsys):
    argv = ["explain", str(files["images"][0]), "--model", "shapes_vgg", "--device", "cuda"]
    code = cli.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and "CUDA is not available" in err


def explain_argv(files, out, batch_size):
    return [
        "explain",
        *map(str, files["images"]),
        "--model",
        "shapes_vgg",
        "--weights",
        str(files[5]),
        "--method",
        "sglrp,gradcam",
        "--size",
        "32",
        "--crop",
        "32",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--batch-size",
        str(batch_size),
        "--no-progress",
        "--out",
        str(out),
    ]


def test_explain_batches_give_the_maps_of_single_images(files, tmp_path, capsys):
    one, three = tmp_path / "one", tmp_path / "three"
    assert cli.main(explain_argv(files, one, 1)) == 0
    assert cli.main(explain_argv(files, three, 3)) == 0
    assert "explained 3 of 3" in capsys.readouterr().out
    for image in files["images"]:
        for method in ("sglrp", "gradcam"):
            a = np.load(one / image.stem / f"{method}.npy")
            b = np.load(three / image.stem / f"{method}.npy")
            # batched convolutions round differently: compare to the map's scale
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * np.abs(a).max())
        ja = json.loads((one / image.stem / "explanation.json").read_text())
        jb = json.loads((three / image.stem / "explanation.json").read_text())
        assert ja["target"]["index"] == jb["target"]["index"]


def test_evaluate_own_zoo_model_with_weights_on_a_voc_folder(files, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", "shapes_vgg", "--weights", str(files[12])]
    argv += ["--data", str(files["voc"]), "--batch-size", "2", "--device", "cpu"]
    code = cli.main([*argv, "--out", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"metrics: {out / 'metrics.json'}" in captured.out
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_images"] == 2
    assert set(data["metrics"]) == {"pointing_game", "relevance_mass_accuracy", "deletion"}
    assert (out / "metrics.csv").is_file()
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["weights"] == hashlib.sha256(files[12].read_bytes()).hexdigest()
    assert settings["data"] == str(files["voc"].resolve())
    first = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert first["images"] == ["voc/000000", "voc/000001"]


def test_evaluate_model_without_names_asks_for_labels(files, tmp_path, capsys):
    argv = ["evaluate", "--model", "shapes_vgg", "--weights", str(files[5])]
    argv += ["--data", str(files["voc"]), "--out", str(tmp_path / "o"), *SMALL]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--labels" in err
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    assert cli.main([*argv, "--labels", str(labels)]) == 1
    err = capsys.readouterr().err
    assert "has 3 names but the model outputs 5" in err


def test_evaluate_labels_name_a_models_classes(files, tmp_path, capsys):
    """--labels gives a factory's model (which has no class names) the annotations' names."""
    factory = tmp_path / "factory.py"
    factory.write_text(
        "from sglrp.models import get_model\n\n\n"
        "def build():\n"
        "    return get_model('shapes_vgg', num_classes=12)\n"
    )
    out = tmp_path / "o"
    argv = ["evaluate", "--model", f"{factory}:build", "--weights", str(files[12])]
    argv += ["--data", str(files["voc"]), "--n", "1", "--out", str(out), *SMALL]
    assert cli.main(argv) == 1
    assert "--labels" in capsys.readouterr().err
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    assert cli.main([*argv, "--labels", str(labels)]) == 0, capsys.readouterr().err
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_images"] == 1
