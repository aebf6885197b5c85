"""The ``sglrp`` command as a whole: ``--version``, ``python -m sglrp``, global flags after the
command, one line per failure, ``--layer`` suggestions among the conv layers."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sglrp
from sglrp import cli
from sglrp.feature_layer import feature_layers
from sglrp.models import get_model

SIDE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("global")
    torch.manual_seed(0)
    ckpt = root / "vgg5.pt"
    torch.save(get_model("shapes_vgg", num_classes=5).state_dict(), ckpt)
    image = root / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(image)
    return {"ckpt": ckpt, "image": image}


def explain_args(files, out, *extra):
    return [
        "explain",
        str(files["image"]),
        "--model",
        "shapes_vgg",
        "--weights",
        str(files["ckpt"]),
        "--size",
        str(SIDE),
        "--crop",
        str(SIDE),
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"sglrp {sglrp.__version__}"


def test_the_installed_version_is_the_packages():
    """pyproject.toml reads its version from sglrp.__version__: pip and --version agree."""
    assert importlib.metadata.version("sglrp") == sglrp.__version__


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "sglrp", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sglrp {sglrp.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "sglrp", "explain", "x.png", "--model", "nosuchmodel", "--out", "o"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("sglrp explain: error: unknown model 'nosuchmodel'")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_the_command(files, tmp_path, where):
    argv = explain_args(files, tmp_path / "o", "--method", "nosuch")
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        cli.main(argv)  # --debug: the exception itself, not one line


def test_without_debug_an_error_is_one_line(files, tmp_path, capsys):
    code = cli.main(explain_args(files, tmp_path / "o", "--method", "nosuch"))
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1


def test_method_names_are_case_insensitive(files, tmp_path, capsys):
    code = cli.main(explain_args(files, tmp_path / "o", "--method", "SGLRP,Gradient"))
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "img" / "sglrp.npy").is_file()


def test_failed_image_prints_one_line_and_no_summary(files, tmp_path, capsys):
    out = tmp_path / "o"
    argv = explain_args(files, out, "--method", "gradient")
    argv[1] = str(tmp_path / "missing.png")
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.err.splitlines()) == 1 and "missing.png" in captured.err
    assert captured.out == ""  # no "explained 0 of 1" after the error


def test_unknown_layer_suggests_conv_layers(files, tmp_path, capsys):
    code = cli.main(explain_args(files, tmp_path / "o", "--method", "gradcam", "--layer", "nosuch"))
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert "conv/feature layers" in err and "features." in err
    assert "classifier" not in err  # the classifier's layers are no CAM layers
    code = cli.main(
        explain_args(files, tmp_path / "o", "--method", "gradcam", "--layer", "featurs.14")
    )
    err = capsys.readouterr().err
    assert code == 1 and "Did you mean features.14" in err


def test_feature_layers_are_convs_their_followers_and_containers():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    assert feature_layers(model) == ["0", "0.0", "0.1", "0.2"]


def test_a_torchvision_module_without_spec_does_not_break_loading(files, monkeypatch):
    """zennit's tests put a hand-made torchvision into sys.modules (no __spec__);
    importlib.util.find_spec then raises ValueError, which must not stop the loader."""
    import types

    from sglrp.loading import load_model

    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", types.ModuleType("torchvision.models"))
    bundle = load_model("shapes_vgg", str(files["ckpt"]))
    assert bundle.kind == "zoo"
