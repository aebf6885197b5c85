"""Name -> factory registry and :func:`get_model`, which builds a model and loads a checkpoint.

Loading is strict and checked first: a checkpoint that does not fit raises ``ValueError`` naming
the missing / unexpected keys or differing shapes and, when another zoo entry (or another
``num_classes``) would fit, saying which.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from . import small as _small
from .checksum import read_verified
from .convnext import convnext_tiny
from .densenet import DenseNet, densenet121, remap_legacy_keys
from .efficientnet import efficientnet_b0
from .inception import inception_small
from .mobilenetv2 import mobilenet_v2
from .mobilenetv3 import mobilenet_v3_small
from .regnet import regnet_y_400mf
from .resnet import resnet18, resnet50
from .shufflenet import shufflenet_v2_x1_0
from .vgg import vgg11, vgg16, vgg16_bn
from .vit import VisionTransformer, remap_legacy_mlp_keys, shapes_vit, vit_b_16, vit_tiny

__all__ = ["ZOO", "get_model", "load_checked", "load_state_dict_file"]

ZOO: dict[str, Callable[..., nn.Module]] = {
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "densenet121": densenet121,
    "efficientnet_b0": efficientnet_b0,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "regnet_y_400mf": regnet_y_400mf,
    "convnext_tiny": convnext_tiny,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "vit_b_16": vit_b_16,
    "vit_tiny": vit_tiny,
    "inception_small": inception_small,
    "shapes_vit": shapes_vit,
}
# Small models for the synthetic "shapes" data set live in .small; skip them while unwritten.
for _name in ("shapes_vgg", "shapes_vgg_gap", "shapes_resnet"):
    _factory = getattr(_small, _name, None)
    if callable(_factory):
        ZOO[_name] = _factory

_SHOW = 5  # how many offending keys a fit error lists


def get_model(
    name: str, num_classes: int = 1000, weights: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Build a zoo model, optionally load a ``state_dict`` file, and return it in eval mode.

    Parameters
    ----------
    name : str
        A key of :data:`ZOO`, e.g. ``"resnet18"``.
    num_classes : int
        Number of output logits.
    weights : str or path-like, optional
        A file written by ``torch.save(model.state_dict(), path)``, or a dict holding the
        ``state_dict`` under ``"state_dict"`` or ``"model"``. torchvision checkpoints of the
        same architecture load as they are.

    Returns
    -------
    nn.Module
        The model, in eval mode, on the CPU.

    Raises
    ------
    ValueError
        Unknown ``name``, bad ``num_classes``, unreadable file, or weights that do not fit.
    FileNotFoundError
        ``weights`` does not exist.
    """
    if not isinstance(name, str) or name not in ZOO:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(sorted(ZOO))}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    state_dict = None if weights is None else load_state_dict_file(weights)
    model = ZOO[name](num_classes=num_classes)
    if state_dict is not None:
        load_checked(model, state_dict, Path(weights), name, num_classes)
    return model.eval()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` from ``path`` safely (``weights_only=True``, onto the CPU).

    When ``NAME.json`` beside ``NAME.pt`` records a ``"sha256"`` (as ``sglrp train`` writes),
    the bytes are verified against it before they are deserialised
    (:func:`sglrp.models.checksum.read_verified`).

    Parameters
    ----------
    path : str or path-like
        The checkpoint file; a dict with a ``"state_dict"`` or ``"model"`` entry is unwrapped
        and a ``"module."`` prefix on every key (from ``DataParallel``) is removed.

    Returns
    -------
    dict of str to Tensor
        The state_dict.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not a readable checkpoint, holds no state_dict, or does not match the
        checksum recorded beside it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"weights must be a file path (str or PathLike), got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.is_dir():
        raise ValueError(f"weights path {path} is a directory; pass the checkpoint file itself")
    return state_dict_from_bytes(read_verified(path), path)


def state_dict_from_bytes(data: bytes, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Deserialise and check the ``state_dict`` in ``data``, the bytes of file ``path``.

    As :func:`load_state_dict_file` after its checksum; ``path`` only names the file in errors.
    """
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"could not read weights file {path}: {first}. If it holds a whole pickled model, "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:  # corrupt archives raise RuntimeError, EOFError, OSError, ...
        raise ValueError(
            f"could not read weights file {path} (corrupt or not a torch.save file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise ValueError(
            f"weights file {path} holds {kind}, not a state_dict; save one with "
            "torch.save(model.state_dict(), path)"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"weights file {path} is not a state_dict: entries {_first(bad)} are not "
            "name -> tensor pairs"
        )
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _first(items: list, n: int = _SHOW) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def head_name(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` (the classifier head), if any."""
    head = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            head = module_name
    return head


def load_checked(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    name: str | None = None,
    num_classes: int | None = None,
) -> None:
    """Load ``state_dict`` into ``model`` strictly, or raise a one-line ``ValueError``.

    The one fit check of every loader: the message names the missing and unexpected keys and
    the differing shapes and, for a zoo model (``num_classes`` given), which zoo architecture
    and ``num_classes`` the file fits instead.

    Parameters
    ----------
    model
        The freshly built model.
    state_dict
        Tensors read from ``path``.
    path
        The weights file (named in the message).
    name
        What the model is (a zoo name, ``module:factory``); default: its class name.
    num_classes
        The model's number of classes, for a zoo model.
    """
    what = repr(name) if name is not None else type(model).__name__
    if num_classes is not None:
        what += f" with num_classes={num_classes}"
    if isinstance(model, DenseNet):
        state_dict = remap_legacy_keys(state_dict)
    elif isinstance(model, VisionTransformer):
        state_dict = remap_legacy_mlp_keys(state_dict)
    expected = model.state_dict()
    if not any(k.endswith(".num_batches_tracked") for k in state_dict):
        # saved before PyTorch 0.4 (e.g. torchvision's DenseNet download): BatchNorm step
        # counters are absent; fill them in as PyTorch itself does for such files.
        state_dict = dict(state_dict)
        for key, value in expected.items():
            if key.endswith(".num_batches_tracked"):
                state_dict[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k!r}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:_SHOW])})")
        hint = "" if num_classes is None else ". " + _suggest(state_dict, num_classes)
        raise ValueError(f"weights file {path} does not fit {what}: {', '.join(problems)}{hint}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above should catch everything
        raise ValueError(f"weights file {path} does not fit {what}: {exc}") from exc


def _suggest(state_dict: Mapping[str, torch.Tensor], num_classes: int) -> str:
    """Say which zoo architecture and ``num_classes`` the file fits, if any."""
    file_shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    fits = []
    for cand_name, factory in ZOO.items():
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                cand = factory(num_classes=num_classes)
        except Exception:  # an unfinished or unusual factory must not hide the real error
            continue
        cand_sd = cand.state_dict()
        if cand_sd.keys() != file_shapes.keys():
            continue
        differ = {k for k, v in cand_sd.items() if tuple(v.shape) != file_shapes[k]}
        head = head_name(cand)
        if head is None or not differ <= {f"{head}.weight", f"{head}.bias"}:
            continue
        n = file_shapes[f"{head}.weight"][0] if f"{head}.weight" in file_shapes else num_classes
        fits.append(f"get_model({cand_name!r}, num_classes={n})")
    if fits:
        return f"The file fits {' or '.join(fits)}."
    return (
        f"It matches no zoo architecture ({', '.join(sorted(ZOO))}); check which model the "
        "file was saved from."
    )
