"""``sglrp explain IMAGE... --model M --out DIR``: relevance maps for image files.

For every image, ``DIR/<image stem>/`` receives

* ``grid.png``: the input and one column per method (:func:`sglrp.viz.comparison_grid`),
* ``<method>.png``: each map on its own, ``<method>.npy``: the raw relevance (C, H, W),
* ``input.png``: the resized and cropped image the model saw,
* ``explanation.json``: top-5 classes, the target, the methods and every option (written
  last, so its presence means the image's outputs are complete).

Errors that concern the whole call (unknown method, model or class name, a missing or
unfitting weights file) stop it before any image is read. Errors that concern one image
(missing, unreadable or corrupt file) are reported on one stderr line each; the other
images are still processed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from sglrp.imageio import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess, read_labels
from sglrp.io import atomic_path, write_json
from sglrp.models.zoo import head_name

DEFAULT_METHODS: tuple[str, ...] = ("sglrp", "clrp", "lrp", "guided_gradcam", "relevance_cam")
#: Shipped pretrained models (weights in ``sglrp/weights``).
SHIPPED: tuple[str, ...] = ("shapes_vgg", "shapes_vgg_gap", "shapes_resnet")
#: Where the shipped weights (``<name>.pt``) and metadata (``<name>.json``) live.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".ptl")
_TOP = 5


# --------------------------------------------------------------------------- parser


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``explain`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "explain",
        help="explain a classifier's decision on image files",
        description=(
            "Compute relevance maps (SGLRP, CLRP, LRP, Grad-CAM variants, ...) for image files "
            "and write a comparison grid, per-method PNG and .npy files and a JSON summary per "
            "image into OUT/<image stem>/."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help=(
            "a zoo name with --weights (e.g. resnet18), a shipped model (shapes_vgg, "
            "shapes_vgg_gap, shapes_resnet), a TorchScript file (model.pt), or module:factory"
        ),
    )
    p.add_argument(
        "--weights", metavar="FILE", help="state_dict file (torch.save(model.state_dict()))"
    )
    p.add_argument(
        "--method",
        default=",".join(DEFAULT_METHODS),
        metavar="M1,M2",
        help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--target",
        default="predicted",
        metavar="T",
        help="class to explain: predicted (default), second, a class index or a class name",
    )
    p.add_argument("--rules", default="dtd", metavar="PRESET", help="LRP rule preset (dtd)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--labels", metavar="FILE", help="class names: one per line, or a JSON list / object"
    )
    p.add_argument("--num-classes", type=int, metavar="N", help="number of model outputs")
    p.add_argument(
        "--size",
        type=int,
        metavar="S",
        help="resize the shorter side to S (default 256; shapes models 64)",
    )
    p.add_argument(
        "--crop", type=int, metavar="C", help="centre crop C x C (default 224; shapes models 64)"
    )
    p.add_argument(
        "--mean", metavar="R,G,B", help="normalisation mean (default ImageNet or the model's own)"
    )
    p.add_argument(
        "--std", metavar="R,G,B", help="normalisation std (default ImageNet or the model's own)"
    )
    p.add_argument("--layer", metavar="NAME", help="layer for gradcam/guided_gradcam/relevance_cam")
    p.add_argument(
        "--display",
        choices=("signed", "positive"),
        default="signed",
        help="signed maps (red +, blue -; default) or positive relevance only (the paper)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A model ready to explain, with what is known about its inputs and classes."""

    model: nn.Module
    kind: str  # "zoo", "shipped", "torchscript", "factory"
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: int | None = None
    crop: int | None = None
    compiled: bool = False  # TorchScript that could not be rebuilt as an eager zoo model
    notes: list[str] = field(default_factory=list)


def load_model(
    spec: str, weights: str | None = None, num_classes: int | None = None
) -> LoadedModel:
    """Build the model named by ``--model`` (see the option's help) in eval mode.

    Raises
    ------
    ValueError, FileNotFoundError
        Unknown model, unreadable file, weights that do not fit.
    """
    from sglrp.models import ZOO, get_model

    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be positive, got {num_classes}")
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"weights file not found: {weights}")
    path = Path(spec)
    if spec in SHIPPED and weights is None:
        return _load_shipped(spec, num_classes)
    if spec in ZOO:
        if weights is None:
            raise ValueError(
                f"--model {spec} needs --weights FILE (a state_dict); random weights explain "
                "nothing"
            )
        n = num_classes or _head_size(weights) or _default_classes(ZOO[spec])
        loaded = LoadedModel(get_model(spec, n, weights), "zoo")
        if spec in SHIPPED:
            _shapes_preprocessing(loaded)
        return loaded
    if path.is_file():
        if weights is not None:
            raise ValueError(
                f"--weights does not apply to the TorchScript file {spec}: its weights are inside"
            )
        return _load_torchscript(path, num_classes)
    if ":" in spec and path.suffix.lower() not in _TORCHSCRIPT_SUFFIXES:
        return _load_factory(spec, weights, num_classes)
    if path.suffix.lower() in _TORCHSCRIPT_SUFFIXES or "/" in spec or "\\" in spec:
        raise FileNotFoundError(f"model file not found: {spec}")
    close = difflib.get_close_matches(spec, [*ZOO, *SHIPPED], n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {spec!r}.{hint} Use a zoo name ({', '.join(sorted(ZOO))}) with "
        "--weights, a TorchScript file, or module:factory"
    )


def _default_classes(factory: Any) -> int:
    try:
        default = inspect.signature(factory).parameters["num_classes"].default
    except (KeyError, TypeError, ValueError):
        return 1000
    return default if isinstance(default, int) and default > 0 else 1000


def _head_size(weights: str) -> int | None:
    """Class count of the checkpoint's classifier head: its last 2-D ``*.weight`` tensor.

    A wrong guess is harmless: :func:`sglrp.models.get_model` then explains the mismatch.
    """
    from sglrp.models.zoo import load_state_dict_file

    heads = [v for k, v in load_state_dict_file(weights).items() if k.endswith("weight")]
    heads = [v for v in heads if v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else None


def _check_fit(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: Any) -> None:
    """Load ``state`` strictly into ``model`` or raise a one-line ``ValueError``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    if problems:
        raise ValueError(f"weights file {path} does not fit {what}: {', '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _shapes_preprocessing(loaded: LoadedModel) -> None:
    from sglrp.data import MEAN, STD

    loaded.mean, loaded.std, loaded.size, loaded.crop = tuple(MEAN), tuple(STD), 64, 64


def _load_shipped(name: str, num_classes: int | None) -> LoadedModel:
    """A shipped model with its own class names and preprocessing."""
    from sglrp import models

    fn = getattr(models, "pretrained", None)
    listed = getattr(models, "available_pretrained", None)
    if callable(fn) and callable(listed) and name not in listed():
        raise FileNotFoundError(
            f"the shipped weights of {name} are not installed; train them with `sglrp train` "
            f"or pass --weights FILE"
        )
    if callable(fn):
        obj = fn(name)
        model = obj if isinstance(obj, nn.Module) else getattr(obj, "model", None)
        if not isinstance(model, nn.Module):
            raise TypeError(f"sglrp.models.pretrained({name!r}) returned no model")
        meta = dict(getattr(obj, "meta", None) or getattr(obj, "metadata", None) or {})
        for key in ("classes", "mean", "std", "input_size"):
            if getattr(obj, key, None) is not None:
                meta[key] = getattr(obj, key)
    else:  # the loader is not available: read the files directly
        model, meta = _read_shipped_files(name)
    loaded = LoadedModel(model.eval(), "shipped")
    _shapes_preprocessing(loaded)
    if meta.get("classes"):
        loaded.classes = [str(c) for c in meta["classes"]]
    if meta.get("mean") is not None and meta.get("std") is not None:
        loaded.mean = tuple(float(v) for v in meta["mean"])
        loaded.std = tuple(float(v) for v in meta["std"])
    side = meta.get("input_size")
    if side is not None:
        side = int(side[-1]) if isinstance(side, (list, tuple)) else int(side)
        loaded.size = loaded.crop = side
    if num_classes is not None and loaded.classes and num_classes != len(loaded.classes):
        raise ValueError(
            f"--num-classes {num_classes} does not apply to the shipped model {name} "
            f"({len(loaded.classes)} classes)"
        )
    return loaded


def _read_shipped_files(name: str) -> tuple[nn.Module, dict[str, Any]]:
    from sglrp.models import ZOO
    from sglrp.models.zoo import load_state_dict_file

    pt, js = WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.json"
    if not pt.is_file() or not js.is_file():
        raise FileNotFoundError(
            f"the shipped weights of {name} are not installed ({pt} missing); use --weights FILE"
        )
    meta = json.loads(js.read_text(encoding="utf-8"))
    arch = meta.get("architecture", name)
    model = ZOO[arch](num_classes=len(meta["classes"]), **meta.get("model_kwargs", {}))
    _check_fit(model, load_state_dict_file(pt), repr(arch), pt)
    return model.float().eval(), meta


def _load_factory(spec: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    """``module:factory`` (module may be a dotted name or a ``.py`` file)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"--model {spec!r}: expected module:factory, e.g. mypkg.models:build")
    module = _import(module_name)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model {spec}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"--model {spec}: {attr!r} is not callable")
    try:
        model = factory() if num_classes is None else factory(num_classes=num_classes)
    except Exception as err:
        raise ValueError(f"--model {spec}: calling {attr}() failed: {_line(err)}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model {spec}: {attr}() returned a {type(model).__name__}, not a model")
    if weights is not None:
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(f"--weights does not apply to the TorchScript model from {spec}")
        from sglrp.models.zoo import load_state_dict_file

        _check_fit(model, load_state_dict_file(weights), spec, weights)
    if isinstance(model, torch.jit.ScriptModule):
        return _from_script(model, "factory")
    return LoadedModel(model.eval(), "factory")


def _import(module_name: str) -> Any:
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_file():
            raise FileNotFoundError(f"model module file not found: {file}")
        spec = importlib.util.spec_from_file_location(f"_sglrp_user_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ValueError(f"importing {file} failed: {_line(err)}") from err
        return module
    added = str(Path.cwd())
    sys.path.insert(0, added)  # like `python -m`: modules in the working directory import
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"cannot import module {module_name!r}: {_line(err)}") from err
    except Exception as err:
        raise ValueError(f"importing {module_name!r} failed: {_line(err)}") from err
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(added)


def _load_torchscript(path: Path, num_classes: int | None) -> LoadedModel:
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise ValueError(
            f"{path} is not a TorchScript file ({_line(err)}); for a state_dict pass "
            f"--model <zoo name> --weights {path}"
        ) from err
    return _from_script(model, "torchscript")


def _from_script(script: nn.Module, kind: str) -> LoadedModel:
    """Use the eager zoo twin of a TorchScript model if one computes the same outputs.

    LRP rules, CAM hooks and guided ReLUs need the model's layers, which compiled TorchScript
    hides; a script of a zoo architecture is therefore rebuilt as that eager model.
    """
    script = script.eval()
    twin = _eager_twin(script)
    if twin is not None:
        name, model = twin
        loaded = LoadedModel(model, kind)
        loaded.notes.append(f"TorchScript model rebuilt as the eager zoo model {name!r}")
        if name in SHIPPED:
            _shapes_preprocessing(loaded)
        return loaded
    loaded = LoadedModel(script, kind, compiled=True)
    loaded.notes.append("compiled TorchScript model: only gradient methods can run")
    return loaded


def _eager_twin(script: nn.Module) -> tuple[str, nn.Module] | None:
    from sglrp.models import ZOO

    state = {k: v for k, v in script.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, factory in ZOO.items():
        try:
            with torch.device("meta"):
                head = head_name(factory())
            n = shapes.get(f"{head}.weight", (None,))[0] if head else None
            with torch.device("meta"):
                cand = factory(num_classes=n) if n else factory()
            if {k: tuple(v.shape) for k, v in cand.state_dict().items()} != shapes:
                continue
            model = factory(num_classes=n) if n else factory()
            model.load_state_dict(state, strict=True)
            model.eval()
            x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                if torch.allclose(model(x), script(x), rtol=1e-3, atol=1e-4):
                    return name, model
        except Exception:  # noqa: BLE001 - not this architecture
            continue
    return None


# --------------------------------------------------------------------------- settings


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_methods(text: str) -> list[str]:
    """Split ``--method`` and check every name (unknown names raise ``ValueError``)."""
    from sglrp import available_methods

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError("--method is empty; give one or more of " + ", ".join(available_methods()))
    known = available_methods()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown method {name!r}{hint}; available: {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_floats(text: str, option: str) -> tuple[float, float, float]:
    """``"0.485,0.456,0.406"`` (or one value for all channels) -> three floats."""
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError as err:
        raise ValueError(f"{option} {text!r}: expected numbers like 0.5,0.5,0.5") from err
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} {text!r}: expected 1 or 3 finite numbers (R,G,B)")
    return values[0], values[1], values[2]


def resolve_target(spec: str, classes: Sequence[str] | None, num_classes: int) -> str | int:
    """``"predicted"``/``"second"`` as they are; an index or class name -> class index."""
    spec = spec.strip()
    if spec in ("predicted", "second"):
        if spec == "second" and num_classes < 2:
            raise ValueError("--target second needs a model with at least 2 classes")
        return spec
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < num_classes:
            raise ValueError(
                f"--target {index} is out of range: the model has classes 0 ... {num_classes - 1}"
            )
        return index
    if not classes:
        raise ValueError(
            f"--target {spec!r} is a class name but the model has no class names; pass "
            f"--labels FILE or a class index 0 ... {num_classes - 1}"
        )
    for norm in (lambda s: s, lambda s: s.casefold().replace("_", " ").replace("-", " ")):
        hits = [i for i, c in enumerate(classes) if norm(c) == norm(spec)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(
                f"--target {spec!r} names several classes ({', '.join(map(str, hits))}); "
                "pass the class index"
            )
    close = difflib.get_close_matches(spec, list(classes), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = ", ".join(list(classes)[:8]) + (", ..." if len(classes) > 8 else "")
    raise ValueError(f"unknown class name {spec!r}.{hint} Valid names ({len(classes)}): {shown}")


@dataclass
class Settings:
    """Everything fixed before the first image is read."""

    loaded: LoadedModel
    methods: list[str]
    classes: list[str] | None
    num_classes: int
    target: str | int
    rules: str
    size: int | None
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bounds: tuple[torch.Tensor, torch.Tensor]
    layer: str | None
    display: str
    out: Path
    model_spec: str
    weights: str | None


def prepare(args: argparse.Namespace) -> Settings:
    """Check every option and load the model; raises on the first problem."""
    from sglrp import bounds_from_normalization
    from sglrp.methods import get, methods
    from sglrp.presets import PRESETS

    method_names = parse_methods(args.method)
    if args.rules not in PRESETS:
        raise ValueError(f"unknown rules preset {args.rules!r}; available: {', '.join(PRESETS)}")
    for name in ("size", "crop"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive number of pixels, got {value}")
    mean = parse_floats(args.mean, "--mean") if args.mean else None
    std = parse_floats(args.std, "--std") if args.std else None
    if std is not None and min(std) <= 0:
        raise ValueError(f"--std must be positive, got {args.std}")
    labels = read_labels(args.labels) if args.labels else None
    num_classes = args.num_classes
    if num_classes is None and labels is not None and args.model not in SHIPPED:
        num_classes = len(labels)

    loaded = load_model(args.model, args.weights, num_classes)
    if loaded.compiled:
        safe = [m.name for m in methods() if not m.needs_layers]
        blocked = [m for m in method_names if get(m).needs_layers]
        if blocked:
            raise ValueError(
                f"method(s) {', '.join(blocked)} cannot run on the compiled TorchScript model "
                f"{args.model} (they need its layers); methods that can: "
                f"{', '.join(safe)}. Or pass the architecture: --model NAME "
                "--weights FILE, or module:factory"
            )

    mean = mean or loaded.mean or IMAGENET_MEAN
    std = std or loaded.std or IMAGENET_STD
    default_size, default_crop = loaded.size or 256, loaded.crop or 224
    crop = args.crop or default_crop
    size = args.size or (
        default_size if args.crop is None else round(crop * default_size / default_crop)
    )

    out_classes = _probe(loaded.model, crop)
    classes = labels or loaded.classes
    if classes is not None and len(classes) != out_classes:
        source = f"--labels {args.labels}" if labels else "the model's class list"
        raise ValueError(
            f"{source} has {len(classes)} names but the model outputs {out_classes} classes"
        )
    target = resolve_target(args.target, classes, out_classes)

    if args.layer is not None:
        if not any(get(m).takes_layer for m in method_names):
            layered = [m.name for m in methods() if m.takes_layer]
            raise ValueError(f"--layer applies to {', '.join(layered)}; none was requested")
        names = [n for n, _ in loaded.model.named_modules() if n]
        if args.layer not in names:
            close = difflib.get_close_matches(args.layer, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            shown = ", ".join(names[-6:])
            raise ValueError(f"unknown layer {args.layer!r}.{hint} Last layers: {shown}")
    low, high = bounds_from_normalization(mean, std)
    return Settings(
        loaded=loaded,
        methods=method_names,
        classes=classes,
        num_classes=out_classes,
        target=target,
        rules=args.rules,
        size=size,
        crop=crop,
        mean=tuple(mean),
        std=tuple(std),
        bounds=(low, high),
        layer=args.layer,
        display=args.display,
        out=Path(args.out),
        model_spec=args.model,
        weights=args.weights,
    )


def _probe(model: nn.Module, crop: int) -> int:
    """Run the model once on a blank input; return its number of classes."""
    from sglrp._guard import preserved

    try:
        with preserved(model), torch.no_grad():
            logits = model(torch.zeros(1, 3, crop, crop))
    except Exception as err:
        raise ValueError(f"the model fails on a 1x3x{crop}x{crop} input: {_line(err)}") from err
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (N, classes) logits, got {shape}")
    return int(logits.shape[1])


# --------------------------------------------------------------------------- per image


def expand_images(items: Sequence[str]) -> list[Path]:
    """Command-line images; a directory stands for the image files directly inside it."""
    suffixes = {s.lower() for s in Image.registered_extensions()}
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
            )
            out.extend(files or [path])  # an empty folder is reported as a bad image
        else:
            out.append(path)
    return out


def _unique_dirs(paths: Sequence[Path], out: Path) -> list[Path]:
    """``out/<stem>`` per image, with ``-2``, ``-3`` ... for repeated stems."""
    seen: dict[str, int] = {}
    dirs = []
    for p in paths:
        stem = p.stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def _class_name(classes: Sequence[str] | None, index: int) -> str:
    return classes[index] if classes else f"class {index}"


def _relevance(s: Settings, x: torch.Tensor, target: int, method: str) -> torch.Tensor:
    from sglrp import explain
    from sglrp.methods import get

    record = get(method)
    options: dict[str, Any] = {}
    if record.takes_rules:
        options.update(rules=s.rules, bounds=s.bounds)
    if record.takes_layer and s.layer is not None:
        options["layer"] = s.layer
    return explain(s.loaded.model, x, torch.tensor([target]), method=method, **options)


def explain_image(s: Settings, path: Path, out_dir: Path) -> dict[str, Any]:
    """Explain one image file and write its outputs; return the JSON summary."""
    from sglrp import __version__
    from sglrp._guard import preserved
    from sglrp.viz import comparison_grid, save_map_png

    image = load_image(path)
    x, shown = preprocess(image, s.size, s.crop, s.mean, s.std)
    with preserved(s.loaded.model), torch.no_grad():
        logits = s.loaded.model(x).float()[0]
    probs = torch.softmax(logits, dim=0)
    order = torch.argsort(probs, descending=True).tolist()
    if s.target == "predicted":
        target = order[0]
    elif s.target == "second":
        target = order[1]
    else:
        target = int(s.target)

    maps: dict[str, torch.Tensor] = {}
    for method in s.methods:
        r = _relevance(s, x, target, method).detach().float()
        if not torch.isfinite(r).all():
            raise ValueError(f"{method} gave NaN or Inf relevance")
        maps[method] = r

    def entry(i: int) -> dict[str, Any]:
        return {
            "rank": order.index(i) + 1,
            "index": i,
            "name": _class_name(s.classes, i),
            "probability": float(probs[i]),
            "logit": float(logits[i]),
        }

    t_name, t_prob = _class_name(s.classes, target), float(probs[target])
    p_name, p_prob = _class_name(s.classes, order[0]), float(probs[order[0]])
    signed = s.display == "signed"
    comparison_grid(
        x,
        maps,
        row_titles=[f"{path.name}: predicted {p_name} ({p_prob:.2f})"],
        column_titles=[f"target: {t_name} ({t_prob:.2f})", *s.methods],
        signed=signed,
        mean=s.mean,
        std=s.std,
        path=out_dir / "grid.png",
    )
    files = []
    for method, r in maps.items():
        arr = r[0].numpy().astype(np.float32)
        with atomic_path(out_dir / f"{method}.npy") as tmp:
            np.save(tmp, arr)
        save_map_png(arr, out_dir / f"{method}.png", signed=signed)
        files.append(
            {
                "name": method,
                "png": f"{method}.png",
                "npy": f"{method}.npy",
                "shape": list(arr.shape),
                "sum": float(arr.sum()),
                "positive_sum": float(arr.clip(min=0).sum()),
                "max_abs": float(np.abs(arr).max()),
            }
        )
    with atomic_path(out_dir / "input.png") as tmp:
        shown.save(tmp, format="PNG")
    low, high = s.bounds
    summary = {
        "image": str(path),
        "image_size": list(image.size),
        "input_shape": list(x.shape),
        "model": _model_summary(s),
        "target": {"requested": str(s.target), **entry(target)},
        "top5": [entry(i) for i in order[:_TOP]],
        "methods": files,
        "grid": "grid.png",
        "input": "input.png",
        "options": {
            "rules": s.rules,
            "bounds": {"low": low.tolist(), "high": high.tolist()},
            "size": s.size,
            "crop": s.crop,
            "mean": list(s.mean),
            "std": list(s.std),
            "layer": s.layer,
            "display": s.display,
        },
        "sglrp_version": __version__,
        "torch_version": torch.__version__,
    }
    write_json(out_dir / "explanation.json", summary)
    return summary


def _model_summary(s: Settings) -> dict[str, Any]:
    return {
        "spec": s.model_spec,
        "weights": s.weights,
        "kind": s.loaded.kind,
        "num_classes": s.num_classes,
        "notes": s.loaded.notes,
    }


# --------------------------------------------------------------------------- command


def _bar(items: Sequence[Path], quiet: bool) -> Iterator[Path]:
    return tqdm(
        items, desc="explain", unit="image", file=sys.stderr, disable=True if quiet else None
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``sglrp explain``; returns the exit status."""
    settings = prepare(args)
    images = expand_images(args.images)
    dirs = _unique_dirs(images, settings.out)
    failed = 0
    bar = _bar(images, args.no_progress)
    for path, out_dir in zip(bar, dirs, strict=True):
        try:
            summary = explain_image(settings, path, out_dir)
        except Exception as err:  # noqa: BLE001 - one line per bad image, then go on
            failed += 1
            message = _line(err)
            if str(path) not in message:
                message = f"{path}: {message}"
            tqdm.write(f"sglrp explain: error: {message}", file=sys.stderr)
            continue
        t = summary["target"]
        tqdm.write(f"{path}: {t['name']} ({t['probability']:.3f}) -> {out_dir}", file=sys.stdout)
    done = len(images) - failed
    print(f"explained {done} of {len(images)} images into {settings.out}")
    return 1 if failed else 0
