"""The one model loader: a model spec to a :class:`ModelBundle` ready to explain or evaluate.

A spec (``--model`` on every command) is one of

* a shipped model name (``shapes_vgg``, ``shapes_resnet``): its checksummed weights, class
  names and preprocessing from ``sglrp/weights`` (:func:`sglrp.models.pretrained`);
* a zoo name with a ``state_dict`` file (``resnet18`` + ``weights``); where torchvision
  imports, any of its classification models by name (``torchvision.models.get_model``), the
  zoo's mirrors of its layouts serving the same names where it does not;
* a weights file written by ``sglrp train`` (``NAME.pt`` with ``NAME.json`` beside it);
* a TorchScript file (rebuilt as the eager zoo model it equals, when there is one);
* ``module:factory`` (the module a dotted name or a ``.py`` file), optionally with weights.

``random_weights=SEED`` builds a zoo (or shipped, or factory) model with seeded random weights
on purpose, as the model-randomisation sanity check needs; the seed is recorded in the
provenance. A factory whose weights change with the random seed, asked for without weights
and without a seed, is accepted with a warning (:class:`RandomWeightsWarning`).

Every ``state_dict`` goes through the one fit check, :func:`sglrp.models.zoo.load_checked`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._guard import preserved
from .data import CLASSES, MEAN, STD
from .images import IMAGENET_MEAN, IMAGENET_STD
from .models.pretrained import ARCHITECTURES, available_pretrained, pretrained
from .models.zoo import ZOO, get_model, head_name, load_checked, load_state_dict_file

__all__ = ["SHIPPED", "ModelBundle", "RandomWeightsWarning", "load_model", "output_size"]

#: Shipped pretrained models (weights in ``sglrp/weights``).
SHIPPED: tuple[str, ...] = tuple(ARCHITECTURES)
#: Folder of the shipped models' ``NAME.pt`` and ``NAME.json``; None: the package's own.
WEIGHTS_ROOT: Path | None = None
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".ptl")
#: ImageNet-style preprocessing: resize the shorter side to 256, centre crop 224.
IMAGENET_RESIZE, IMAGENET_SIZE = 256, 224
#: The shapes models' input side (generated images are 64 x 64).
SHAPES_SIZE = 64


class RandomWeightsWarning(UserWarning):
    """A model's weights are random and were not asked for on purpose."""


@dataclass
class ModelBundle:
    """A classifier with what is needed to feed it and to say where it came from.

    Attributes
    ----------
    model
        Returns (N, classes) logits; in eval mode.
    classes
        Class names, index = logit position (None: unknown).
    mean, std
        Per-channel input normalisation (images in [0, 1]).
    name
        The spec it was loaded from.
    size
        Input side in pixels (the centre crop).
    weights
        SHA-256 of the weights file ("" when there is none), so that resuming never mixes
        results of different weights under the same model name.
    kind
        ``"shipped"``, ``"zoo"``, ``"torchvision"``, ``"trained"``, ``"torchscript"``,
        ``"factory"`` or ``"custom"`` (built by the caller).
    resize
        Shorter side of an image file is resized to before the centre crop of ``size``.
    weights_file
        The weights (or TorchScript) file, if any.
    compiled
        TorchScript that could not be rebuilt as an eager zoo model (only gradient methods).
    notes
        Remarks for the output files (e.g. how a TorchScript model was rebuilt).
    random_weights
        Seed of random weights asked for on purpose (None: the weights are not random, or
        not on purpose).
    """

    model: nn.Module
    classes: tuple[str, ...] | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    name: str = ""
    size: int = IMAGENET_SIZE
    weights: str = ""
    kind: str = "custom"
    resize: int = IMAGENET_RESIZE
    weights_file: str | None = None
    compiled: bool = False
    notes: list[str] = field(default_factory=list)
    random_weights: int | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the model came from: spec, kind, weights file and its SHA-256, notes."""
        return {
            "spec": self.name,
            "kind": self.kind,
            "weights": self.weights_file,
            "sha256": self.weights or None,
            "random_weights": self.random_weights,
            "notes": list(self.notes),
        }


def load_model(
    spec: str,
    weights: str | None = None,
    num_classes: int | None = None,
    random_weights: int | None = None,
) -> ModelBundle:
    """Build the model named by ``spec`` (see the module docstring), in eval mode.

    Parameters
    ----------
    spec
        Shipped name, zoo name, ``sglrp train`` weights file, TorchScript file or
        ``module:factory``.
    weights
        ``state_dict`` file for a zoo name or a factory.
    num_classes
        Number of outputs (default: read from the weights, or the factory's default).
    random_weights
        Seed: build a zoo, shipped or factory model with random weights on purpose (not
        with ``weights``).

    Raises
    ------
    ValueError, FileNotFoundError
        Unknown model, unreadable file, weights that do not fit.
    """
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be positive, got {num_classes}")
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"weights file not found: {weights}")
    if random_weights is not None:
        return _load_random(spec, weights, num_classes, random_weights)
    path = Path(spec)
    if spec in SHIPPED and weights is None:
        return _load_shipped(spec, num_classes)
    torchvision_models = _torchvision_models()
    if torchvision_models is not None and spec in _classifiers(torchvision_models):
        return _load_torchvision(torchvision_models, spec, weights, num_classes)
    if spec in ZOO:
        if weights is None:
            raise ValueError(
                f"--model {spec} needs --weights FILE (a state_dict); random weights explain "
                "nothing (pass --random-weights SEED to use them on purpose)"
            )
        n = num_classes or _head_size(weights) or _default_classes(ZOO[spec])
        bundle = ModelBundle(get_model(spec, n, weights), None, name=spec, kind="zoo")
        _set_weights(bundle, Path(weights))
        if spec in SHIPPED:
            _shapes_preprocessing(bundle)
        return bundle
    if path.is_file():
        if weights is not None:
            raise ValueError(
                f"--weights does not apply to the model file {spec}: its weights are inside"
            )
        if _is_trained(path):
            return _load_trained(path, num_classes)
        return _load_torchscript(path)
    if ":" in spec and path.suffix.lower() not in TORCHSCRIPT_SUFFIXES:
        return _load_factory(spec, weights, num_classes)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES or "/" in spec or "\\" in spec:
        raise FileNotFoundError(
            f"model file {spec} does not exist; pass an existing file, a shipped model "
            f"({', '.join(SHIPPED)}), a zoo name with --weights, or module:factory"
        )
    close = difflib.get_close_matches(spec, [*ZOO, *SHIPPED], n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {spec!r}.{hint} Use a shipped model ({', '.join(SHIPPED)}), a zoo name "
        f"({', '.join(sorted(ZOO))}) with --weights, a TorchScript file, or module:factory"
    )


def _load_random(spec: str, weights: str | None, num_classes: int | None, seed: int) -> ModelBundle:
    """A zoo, shipped, torchvision or factory model with weights drawn under ``seed``."""
    if weights is not None:
        raise ValueError("--random-weights and --weights exclude each other; pass one")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--random-weights takes a non-negative integer seed, got {seed!r}")
    torchvision_models = _torchvision_models()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if torchvision_models is not None and spec in _classifiers(torchvision_models):
            model = torchvision_models.get_model(
                spec, weights=None, num_classes=num_classes or 1000
            )
            bundle = ModelBundle(model.eval(), None, name=spec, kind="torchvision")
        elif spec in ZOO:
            n = num_classes or (len(CLASSES) if spec in SHIPPED else _default_classes(ZOO[spec]))
            bundle = ModelBundle(get_model(spec, n), None, name=spec, kind="zoo")
            if spec in SHIPPED:
                _shapes_preprocessing(bundle)
        elif ":" in spec and not Path(spec).is_file():
            bundle = _load_factory(spec, None, num_classes, checked=False)
        else:
            raise ValueError(
                f"--random-weights applies to a zoo or shipped model name or module:factory, "
                f"not {spec!r}"
            )
    bundle.random_weights = seed
    bundle.notes.append(
        f"random weights on purpose (seed {seed}): the maps explain no learned decision"
    )
    return bundle


def output_size(model: nn.Module, side: int) -> int:
    """Run ``model`` once on a blank ``1 x 3 x side x side`` input; return its class count."""
    try:
        with preserved(model), torch.no_grad():
            logits = model(torch.zeros(1, 3, side, side))
    except Exception as err:
        raise ValueError(f"the model fails on a 1x3x{side}x{side} input: {_line(err)}") from err
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (N, classes) logits, got {shape}")
    return int(logits.shape[1])


# --------------------------------------------------------------------------- helpers


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _set_weights(bundle: ModelBundle, file: Path) -> None:
    bundle.weights_file = str(file)
    bundle.weights = hashlib.sha256(file.read_bytes()).hexdigest()


def _shapes_preprocessing(bundle: ModelBundle) -> None:
    """The shapes models' normalisation and 64 px input; their class names if they fit."""
    bundle.mean, bundle.std = tuple(MEAN), tuple(STD)
    bundle.size = bundle.resize = SHAPES_SIZE
    head = head_name(bundle.model)
    n = getattr(bundle.model.get_submodule(head), "out_features", None) if head else None
    if bundle.classes is None and n == len(CLASSES):
        bundle.classes = tuple(CLASSES)


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
    heads = [v for k, v in load_state_dict_file(weights).items() if k.endswith("weight")]
    heads = [v for v in heads if v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else None


# --------------------------------------------------------------------------- kinds


def _torchvision_models() -> Any | None:
    """``torchvision.models`` where torchvision imports, else None (not installed, or broken
    beside this torch build: then the zoo's mirrors serve the same names)."""
    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except ValueError:  # a module put into sys.modules by hand (no __spec__): try it as is
        pass
    try:
        return importlib.import_module("torchvision.models")
    except Exception:  # noqa: BLE001 - any import failure means: use the mirror
        return None


def _classifiers(models: Any) -> list[str]:
    """torchvision's image classification models (not detection, segmentation, video)."""
    try:
        return list(models.list_models(module=models))
    except Exception:  # noqa: BLE001 - an old torchvision without list_models
        return []


def _load_torchvision(
    models: Any, spec: str, weights: str | None, num_classes: int | None
) -> ModelBundle:
    """A torchvision classification model by name (``torchvision.models.get_model``), its
    weights through the one fit check; ImageNet preprocessing."""
    if weights is None:
        raise ValueError(
            f"--model {spec} needs --weights FILE (a state_dict); random weights explain nothing "
            "(pass --random-weights SEED to use them on purpose)"
        )
    n = num_classes or _head_size(weights) or 1000
    model = models.get_model(spec, weights=None, num_classes=n)
    load_checked(model, load_state_dict_file(weights), weights, name=f"torchvision {spec}")
    bundle = ModelBundle(model.eval(), None, name=spec, kind="torchvision")
    _set_weights(bundle, Path(weights))
    return bundle


def _load_shipped(name: str, num_classes: int | None) -> ModelBundle:
    """A shipped model (checksum verified) with its own class names and preprocessing."""
    if name not in available_pretrained(WEIGHTS_ROOT):
        raise FileNotFoundError(
            f"the shipped weights of {name} are not installed; train them with `sglrp train` "
            f"or pass --weights FILE"
        )
    pm = pretrained(name, root=WEIGHTS_ROOT)
    if num_classes is not None and num_classes != len(pm.classes):
        raise ValueError(
            f"--num-classes {num_classes} does not apply to the shipped model {name} "
            f"({len(pm.classes)} classes)"
        )
    side = int(pm.input_size[-1])
    return ModelBundle(
        pm.model.eval(),
        tuple(str(c) for c in pm.classes),
        tuple(pm.mean),
        tuple(pm.std),
        name,
        side,
        str(pm.metadata.get("sha256", "")),
        kind="shipped",
        resize=side,
    )


def _is_trained(path: Path) -> bool:
    """True for weights written by ``sglrp train``: ``NAME.json`` names an architecture."""
    meta = path.with_suffix(".json")
    if meta == path or not meta.is_file():
        return False
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "architecture" in data


def _load_trained(path: Path, num_classes: int | None) -> ModelBundle:
    """A ``sglrp train`` weights file with its metadata JSON (checksum verified if recorded)."""
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    arch = meta.get("architecture")
    if arch not in ZOO:
        raise ValueError(f"{meta_path}: unknown architecture {arch!r}; known: {', '.join(ZOO)}")
    classes = tuple(meta.get("classes") or ())
    if not classes:
        raise ValueError(f"{meta_path}: no 'classes' list; is this a `sglrp train` metadata file?")
    if num_classes is not None and num_classes != len(classes):
        raise ValueError(
            f"--num-classes {num_classes} does not apply to {path} ({len(classes)} classes)"
        )
    model = ZOO[arch](num_classes=len(classes), **(meta.get("model_kwargs") or {}))
    load_checked(model, load_state_dict_file(path), path, arch)
    size = int((meta.get("input_size") or [3, SHAPES_SIZE, SHAPES_SIZE])[-1])
    bundle = ModelBundle(
        model.float().eval(),
        classes,
        tuple(float(v) for v in meta.get("mean") or (0.5, 0.5, 0.5)),
        tuple(float(v) for v in meta.get("std") or (0.5, 0.5, 0.5)),
        str(path),
        size,
        kind="trained",
        resize=size,
    )
    _set_weights(bundle, path)
    return bundle


def _load_factory(
    spec: str, weights: str | None, num_classes: int | None, *, checked: bool = True
) -> ModelBundle:
    """``module:factory`` (module may be a dotted name or a ``.py`` file).

    Without ``weights`` (and with ``checked``) the factory is called a second time under
    another seed: weights that change with the seed are random, which is accepted with a
    :class:`RandomWeightsWarning` and a note.
    """
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

    def build() -> Any:
        try:
            return factory() if num_classes is None else factory(num_classes=num_classes)
        except Exception as err:
            raise ValueError(f"--model {spec}: calling {attr}() failed: {_line(err)}") from err

    model = build()
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model {spec}: {attr}() returned a {type(model).__name__}, not a model")
    random_note = None
    if weights is None and checked and _seed_dependent(model, build):
        random_note = (
            f"--model {spec} has random weights (they change with the random seed) and no "
            "--weights file: the maps explain no learned decision; pass --weights FILE, or "
            "--random-weights SEED to use random weights on purpose"
        )
        warnings.warn(random_note, RandomWeightsWarning, stacklevel=3)
    if weights is not None:
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(f"--weights does not apply to the TorchScript model from {spec}")
        load_checked(model, load_state_dict_file(weights), weights, spec)
    if isinstance(model, torch.jit.ScriptModule):
        return _from_script(model, spec, "factory")
    bundle = ModelBundle(model.eval(), None, name=spec, kind="factory")
    if weights is not None:
        _set_weights(bundle, Path(weights))
    if random_note:
        bundle.notes.append(random_note)
    return bundle


def _seed_dependent(model: nn.Module, build: Any) -> bool:
    """True if building the model again under another seed gives other weights."""
    first = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not first:
        return False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch.initial_seed() + 1)
        again = build()
    second = [t for t in again.state_dict().values() if t.is_floating_point()]
    if len(first) != len(second):
        return True
    return any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))


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


def _load_torchscript(path: Path) -> ModelBundle:
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise ValueError(
            f"{path} is not a TorchScript file ({_line(err)}); for a state_dict pass "
            f"--model <zoo name> --weights {path}, or keep the NAME.json written by "
            "`sglrp train` beside it"
        ) from err
    bundle = _from_script(model, str(path), "torchscript")
    _set_weights(bundle, path)
    return bundle


def _from_script(script: nn.Module, spec: str, kind: str) -> ModelBundle:
    """Use the eager zoo twin of a TorchScript model if one computes the same outputs.

    LRP rules, CAM hooks and guided ReLUs need the model's layers, which compiled TorchScript
    hides; a script of a zoo architecture is therefore rebuilt as that eager model.
    """
    script = script.eval()
    twin = _eager_twin(script)
    if twin is not None:
        name, model = twin
        bundle = ModelBundle(model, None, name=spec, kind=kind)
        bundle.notes.append(f"TorchScript model rebuilt as the eager zoo model {name!r}")
        if name in SHIPPED:
            _shapes_preprocessing(bundle)
        return bundle
    bundle = ModelBundle(script, None, name=spec, kind=kind, compiled=True)
    bundle.notes.append("compiled TorchScript model: only gradient methods can run")
    return bundle


def _eager_twin(script: nn.Module) -> tuple[str, nn.Module] | None:
    state = dict(script.state_dict().items())
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
