"""``sglrp explain`` end to end (sglrp.cli.main + capsys) and the sglrp.images helpers."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sglrp import cli
from sglrp import images as imgs
from sglrp.models import get_model
from sglrp.viz import grid_size_px

LABELS = ["cat", "dog", "bird", "fish", "frog"]
SIDE = 32  # --size/--crop: small inputs keep every call fast


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions: one thread is faster than contending for the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A random-init shapes_vgg checkpoint (5 classes), a labels file and test images."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    ckpt = root / "vgg5.pt"
    torch.save(get_model("shapes_vgg", num_classes=len(LABELS)).state_dict(), ckpt)
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(0)
    out = {"ckpt": ckpt, "labels": labels}

    rgb = root / "rgb.png"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(rgb)
    gray = root / "gray.png"
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8), mode="L").save(gray)
    rgba = root / "rgba.png"
    a = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    a[:, : SIDE // 2, 3] = 0  # left half fully transparent
    a[:, SIDE // 2 :, 3] = 255
    Image.fromarray(a, mode="RGBA").save(rgba)
    g16 = root / "gray16.png"
    v16 = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 64).astype(np.uint16)  # up to 65472
    Image.fromarray(v16).save(g16)
    assert Image.open(g16).mode in ("I;16", "I")
    out.update(rgb=rgb, gray=gray, rgba=rgba, gray16=g16)
    out["v16"] = v16
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["explain", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def base(files, out: Path, *images: Path, methods: str = "sglrp") -> list[str]:
    return [
        *map(str, images),
        "--model",
        "shapes_vgg",
        "--weights",
        str(files["ckpt"]),
        "--method",
        methods,
        "--size",
        str(SIDE),
        "--crop",
        str(SIDE),
        "--out",
        str(out),
    ]


def summary(out: Path, stem: str) -> dict:
    return json.loads((out / stem / "explanation.json").read_text())


# ------------------------------------------------------------------ end to end


def test_end_to_end_writes_grid_maps_npy_and_json(files, tmp_path, capsys):
    out = tmp_path / "out"
    methods = ["sglrp", "lrp", "guided_gradcam", "relevance_cam"]
    images = [files[k] for k in ("rgb", "gray", "rgba", "gray16")]
    code, stdout, stderr = run(
        capsys,
        *base(files, out, *images, methods=",".join(methods)),
        "--labels",
        files["labels"],
    )
    assert code == 0, stderr
    assert stderr == ""
    assert "explained 4 of 4" in stdout
    for image in images:
        d = out / image.stem
        with Image.open(d / "grid.png") as grid:
            assert grid.size == grid_size_px(1, len(methods), row_titles=True)
        for m in methods:
            arr = np.load(d / f"{m}.npy")
            channels = 1 if m == "relevance_cam" else 3
            assert arr.shape == (channels, SIDE, SIDE)
            assert arr.dtype == np.float32 and np.isfinite(arr).all()
            with Image.open(d / f"{m}.png") as png:
                assert png.mode == "RGB"
        s = summary(out, image.stem)
        assert s["input_shape"] == [1, 3, SIDE, SIDE]
        top5 = s["top5"]
        assert len(top5) == 5
        assert [e["rank"] for e in top5] == [1, 2, 3, 4, 5]
        probs = [e["probability"] for e in top5]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # 5 classes: top-5 is everything
        assert {e["name"] for e in top5} == set(LABELS)
        assert s["target"]["index"] == top5[0]["index"]
        assert s["target"]["name"] == LABELS[top5[0]["index"]]
        assert [m["name"] for m in s["methods"]] == methods
        assert s["options"]["rules"] == "dtd"
        assert s["options"]["mean"] == pytest.approx([0.5013, 0.5013, 0.5017])  # shapes model
        assert len(s["options"]["bounds"]["low"]) == 3


def test_npy_is_the_relevance_of_the_preprocessed_input(files, tmp_path, capsys):
    import sglrp
    from sglrp.data import MEAN, STD

    out = tmp_path / "out"
    code, _, err = run(capsys, *base(files, out, files["gray"]), "--target", "2")
    assert code == 0, err
    model = get_model("shapes_vgg", len(LABELS), files["ckpt"])
    img = torch.tensor(np.asarray(Image.open(files["gray"]).convert("RGB")))
    x = img.permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    bounds = sglrp.bounds_from_normalization(MEAN, STD)
    expected = sglrp.explain(model, x, 2, method="sglrp", bounds=bounds)[0].numpy()
    np.testing.assert_allclose(np.load(out / "gray" / "sglrp.npy"), expected, rtol=1e-4, atol=1e-7)
    assert summary(out, "gray")["target"]["index"] == 2


def test_default_methods_on_a_resnet18(tmp_path, capsys, files):
    torch.manual_seed(0)
    ckpt = tmp_path / "r18.pt"
    torch.save(get_model("resnet18", num_classes=7).state_dict(), ckpt)
    out = tmp_path / "out"
    code, _, err = run(
        capsys, files["rgb"], "--model", "resnet18", "--weights", ckpt,
        "--size", SIDE, "--crop", SIDE, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    s = summary(out, "rgb")
    assert s["model"]["num_classes"] == 7  # read from the checkpoint's head
    assert [m["name"] for m in s["methods"]] == [
        "sglrp", "clrp", "lrp", "guided_gradcam", "relevance_cam"
    ]  # fmt: skip
    assert s["options"]["mean"] == pytest.approx(imgs.IMAGENET_MEAN)
    with Image.open(out / "rgb" / "grid.png") as grid:
        assert grid.size == grid_size_px(1, 5, row_titles=True)


def test_image_conversions_reach_the_model_input(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, *base(files, out, files["rgba"], files["gray16"]))
    assert code == 0, err
    seen16 = np.asarray(Image.open(out / "gray16" / "input.png"))
    expected16 = np.round(files["v16"] / 65535.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(seen16, np.repeat(expected16[..., None], 3, axis=-1))
    seen = np.asarray(Image.open(out / "rgba" / "input.png"))
    assert (seen[:, : SIDE // 2] == 255).all()  # transparent: composited onto white
    rgba = np.asarray(Image.open(files["rgba"]))
    np.testing.assert_array_equal(seen[:, SIDE // 2 :], rgba[:, SIDE // 2 :, :3])


@pytest.mark.parametrize(
    ("target", "index", "rank"), [("second", None, 2), ("3", 3, None), ("Dog", 1, None)]
)
def test_targets(files, tmp_path, capsys, target, index, rank):
    out = tmp_path / "out"
    argv = [*base(files, out, files["rgb"]), "--labels", files["labels"], "--target", target]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    t = summary(out, "rgb")["target"]
    if index is not None:
        assert t["index"] == index and t["name"] == LABELS[index]
    if rank is not None:
        assert t["rank"] == rank


def test_repeated_stems_get_their_own_folders(files, tmp_path, capsys):
    other = tmp_path / "b" / "rgb.png"
    other.parent.mkdir()
    Image.open(files["gray"]).save(other)
    out = tmp_path / "out"
    code, _, err = run(capsys, *base(files, out, files["rgb"], other))
    assert code == 0, err
    assert summary(out, "rgb")["image"] == str(files["rgb"])
    assert summary(out, "rgb-2")["image"] == str(other)


# ------------------------------------------------------------------ bad input


def _bad_file(kind: str, tmp_path: Path, files) -> Path:
    if kind == "missing":
        return tmp_path / "nope.png"
    path = tmp_path / f"{kind}.png"
    if kind == "garbage":
        path.write_bytes(b"this is not an image at all")
    elif kind == "truncated":
        data = files["rgb"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "directory"])
def test_bad_image_is_reported_and_the_others_still_processed(files, tmp_path, capsys, kind):
    bad = _bad_file(kind, tmp_path, files)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *base(files, out, files["rgb"], bad, files["gray"]))
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sglrp explain: error:") and str(bad) in lines[0]
    assert (out / "rgb" / "explanation.json").is_file()
    assert (out / "gray" / "explanation.json").is_file()
    assert not (out / bad.stem).exists()
    assert "explained 2 of 3" in stdout


def _global_case(case: str, files, tmp_path: Path) -> tuple[list[str], str]:
    """argv (without images/--out) and a fragment the error line must contain."""
    args = ["--size", str(SIDE), "--crop", str(SIDE)]
    vgg = ["--model", "shapes_vgg", "--weights", str(files["ckpt"])]
    if case == "unknown_method":
        return [*vgg, *args, "--method", "sglrp,sglrpp"], "unknown method 'sglrpp'"
    if case == "missing_weights":
        return ["--model", "resnet18", "--weights", str(tmp_path / "none.pt"), *args], "not found"
    if case == "wrong_architecture":
        return ["--model", "shapes_resnet", "--weights", str(files["ckpt"]), *args], "does not fit"
    if case == "wrong_num_classes":
        return [*vgg, "--num-classes", "9", *args], "does not fit"
    if case == "corrupt_weights":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"garbage")
        return ["--model", "shapes_vgg", "--weights", str(bad), *args], "could not read"
    if case == "unknown_class":
        return [*vgg, *args, "--labels", str(files["labels"]), "--target", "zebra"], "cat"
    if case == "class_without_labels":
        return [*vgg, *args, "--target", "cat"], "--labels"
    if case == "target_out_of_range":
        return [*vgg, *args, "--target", "5"], "out of range"
    if case == "unknown_model":
        return ["--model", "resnet19", *args], "resnet18"
    if case == "unknown_layer":
        return [*vgg, *args, "--method", "relevance_cam", "--layer", "features.99"], "features"
    if case == "labels_count":
        labels = tmp_path / "three.json"
        labels.write_text('["a", "b", "c"]')
        return [*vgg, *args, "--labels", str(labels), "--num-classes", "5"], "3 names"
    raise AssertionError(case)


GLOBAL_CASES = [
    "unknown_method",
    "missing_weights",
    "wrong_architecture",
    "wrong_num_classes",
    "corrupt_weights",
    "unknown_class",
    "class_without_labels",
    "target_out_of_range",
    "unknown_model",
    "unknown_layer",
    "labels_count",
]


@pytest.mark.parametrize("case", GLOBAL_CASES)
def test_global_errors_stop_before_any_work(files, tmp_path, capsys, case):
    argv, fragment = _global_case(case, files, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, files["rgb"], *argv, "--out", out)
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sglrp explain: error:")
    assert fragment in lines[0]
    assert not out.exists()  # nothing was written
    assert stdout == ""


def test_unknown_class_name_lists_valid_names(files, tmp_path, capsys):
    argv, _ = _global_case("unknown_class", files, tmp_path)
    _, _, err = run(capsys, files["rgb"], *argv[:-1], "doge", "--out", tmp_path / "o")
    assert "'dog'" in err  # the close match
    assert all(name in err for name in LABELS)  # and the valid names


# ------------------------------------------------------------------ other model sources


class _Tiny(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def test_torchscript_of_a_zoo_model_is_rebuilt_and_explained(files, tmp_path, capsys):
    model = get_model("shapes_vgg", len(LABELS), files["ckpt"])
    script = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(script))
    out_s, out_z = tmp_path / "s", tmp_path / "z"
    argv = [files["gray"], "--method", "sglrp", "--size", SIDE, "--crop", SIDE]
    code, _, err = run(capsys, *argv, "--model", script, "--out", out_s)
    assert code == 0, err
    assert "rebuilt" in summary(out_s, "gray")["model"]["notes"][0]
    assert run(capsys, *base(files, out_z, files["gray"]))[0] == 0
    np.testing.assert_allclose(
        np.load(out_s / "gray" / "sglrp.npy"), np.load(out_z / "gray" / "sglrp.npy"), atol=1e-6
    )


def test_compiled_torchscript_runs_gradient_methods_only(files, tmp_path, capsys):
    script = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_Tiny()), str(script))
    argv = [files["rgb"], "--model", script, "--size", SIDE, "--crop", SIDE]
    code, _, err = run(capsys, *argv, "--method", "sglrp", "--out", tmp_path / "a")
    assert code != 0 and len(err.splitlines()) == 1 and "gradient" in err
    code, _, err = run(capsys, *argv, "--method", "gradient", "--out", tmp_path / "b")
    assert code == 0, err
    assert np.load(tmp_path / "b" / "rgb" / "gradient.npy").shape == (3, SIDE, SIDE)


def test_state_dict_passed_as_torchscript_gets_a_hint(files, tmp_path, capsys):
    code, _, err = run(capsys, files["rgb"], "--model", files["ckpt"], "--out", tmp_path / "o")
    assert code != 0 and len(err.splitlines()) == 1
    assert "not a TorchScript file" in err and "--weights" in err


FACTORY_SOURCE = """
from torch import nn

def build(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )
"""


def test_module_factory_with_and_without_weights(files, tmp_path, capsys, monkeypatch):
    (tmp_path / "my_tiny_net.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [files["rgb"], "--size", SIDE, "--crop", SIDE, "--method", "sglrp,gradcam"]
    code, _, err = run(capsys, *argv, "--model", "my_tiny_net:build", "--out", tmp_path / "a")
    assert code == 0, err
    assert summary(tmp_path / "a", "rgb")["model"]["num_classes"] == 3

    torch.manual_seed(1)
    sys.modules.pop("my_tiny_net", None)
    from my_tiny_net import build  # noqa: PLC0415 - the module the test just wrote

    ckpt = tmp_path / "tiny.pt"
    torch.save(build(num_classes=4).state_dict(), ckpt)
    py = f"{tmp_path / 'my_tiny_net.py'}:build"
    code, _, err = run(
        capsys, *argv, "--model", py, "--weights", ckpt, "--num-classes", 4, "--out", tmp_path / "b"
    )
    assert code == 0, err
    assert summary(tmp_path / "b", "rgb")["model"]["num_classes"] == 4
    code, _, err = run(capsys, *argv, "--model", py, "--weights", ckpt, "--out", tmp_path / "c")
    assert code != 0 and len(err.splitlines()) == 1 and "does not fit" in err


def test_shipped_model_uses_its_own_preprocessing_and_classes(files, tmp_path, capsys):
    weights = Path(imgs.__file__).parent / "weights" / "shapes_vgg.pt"
    if not weights.is_file():
        pytest.skip("the shipped shapes_vgg weights are not installed yet")
    from sglrp.data import CLASSES

    out = tmp_path / "out"
    code, _, err = run(capsys, files["rgb"], "--model", "shapes_vgg", "--method", "sglrp",
                       "--target", CLASSES[3], "--out", out)  # fmt: skip
    assert code == 0, err
    s = summary(out, "rgb")
    assert s["input_shape"] == [1, 3, 64, 64]
    assert s["target"]["name"] == CLASSES[3]
    assert {e["name"] for e in s["top5"]} <= set(CLASSES)


def test_shipped_model_files_from_another_folder(files, tmp_path, capsys, monkeypatch):
    """The shipped-model folder (sglrp.loading.WEIGHTS_ROOT) is read with its own metadata."""
    from sglrp import loading

    torch.manual_seed(0)
    model = get_model("shapes_vgg", num_classes=3)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(half, tmp_path / "shapes_vgg.pt")
    digest = hashlib.sha256((tmp_path / "shapes_vgg.pt").read_bytes()).hexdigest()
    meta = {"architecture": "shapes_vgg", "classes": ["a", "b", "c"], "mean": [0.4] * 3,
            "std": [0.2] * 3, "input_size": [3, 48, 48], "model_kwargs": {},
            "sha256": digest}  # fmt: skip
    (tmp_path / "shapes_vgg.json").write_text(json.dumps(meta))
    monkeypatch.setattr(loading, "WEIGHTS_ROOT", tmp_path)
    out = tmp_path / "out"
    code, _, err = run(capsys, files["rgb"], "--model", "shapes_vgg", "--method", "sglrp",
                       "--target", "b", "--out", out)  # fmt: skip
    assert code == 0, err
    s = summary(out, "rgb")
    assert s["input_shape"] == [1, 3, 48, 48]
    assert s["options"]["mean"] == pytest.approx([0.4] * 3)
    assert s["target"]["index"] == 1 and s["model"]["kind"] == "shipped"
    assert s["model"]["sha256"] == digest
    (tmp_path / "shapes_vgg.pt").unlink()
    code, _, err = run(capsys, files["rgb"], "--model", "shapes_vgg", "--out", out)
    assert code != 0 and len(err.splitlines()) == 1 and "not installed" in err


# ------------------------------------------------------------------ images


def test_resize_and_crop_follow_torchvision():
    img = Image.new("RGB", (100, 50))
    assert imgs.resize_shorter(img, 32).size == (64, 32)
    assert imgs.resize_shorter(Image.new("RGB", (50, 75)), 20).size == (20, 30)
    a = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
    crop = imgs.center_crop(Image.fromarray(a), 4)
    np.testing.assert_array_equal(np.asarray(crop), a[2:6, 2:6])  # round((7-4)/2)=2, (9-4)/2
    padded = imgs.center_crop(Image.fromarray(a), 11)
    assert padded.size == (11, 11) and np.asarray(padded)[0].max() == 0


def test_to_tensor_normalises():
    img = Image.fromarray(np.full((2, 2, 3), 255, np.uint8))
    x = imgs.to_tensor(img, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [2.0, 1.0, 0.5])


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[0, 0] = (255, 0, 0)
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "exif.png"
    img.save(path, exif=exif)
    loaded = imgs.load_image(path)
    assert loaded.size == (10, 20)
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(loaded), expected)


def test_palette_and_16bit_modes(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    p.save(tmp_path / "p.png")
    assert imgs.load_image(tmp_path / "p.png").getpixel((0, 0)) == (10, 20, 30)
    p.save(tmp_path / "pt.png", transparency=1)  # palette entry 1 is transparent
    assert imgs.load_image(tmp_path / "pt.png").getpixel((0, 0)) == (255, 255, 255)
    v = np.array([[0, 257, 32768, 65280, 65535]], np.uint16)  # 65535 -> 255: v / 257
    Image.fromarray(v).save(tmp_path / "g16.png")
    got = np.asarray(imgs.load_image(tmp_path / "g16.png"))[0, :, 0]
    np.testing.assert_array_equal(got, [0, 1, 128, 254, 255])


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("cat\ndog\n\n", "a.txt"),
        ('["cat", "dog"]', "b.json"),
        ('{"1": ["n02", "dog"], "0": ["n01", "cat"]}', "c.json"),
    ],
)
def test_read_labels(tmp_path, text, name):
    path = tmp_path / name
    path.write_text(text)
    assert imgs.read_labels(path) == ["cat", "dog"]


def test_read_labels_rejects_empty(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no class names"):
        imgs.read_labels(path)
