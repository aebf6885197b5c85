"""Trained reference models shipped with the package (``sglrp/weights``).

Each model ``NAME`` is two files: ``NAME.pt`` (a ``state_dict``, float32 or float16) and
``NAME.json`` (architecture, class names, normalisation, input size, the SHA-256 of the
``.pt`` file and the training log), both written by :func:`sglrp.train.train`. The checksum
is verified on every load.

>>> from sglrp.models import pretrained
>>> pm = pretrained("shapes_vgg")
>>> logits = pm.model(pm.preprocess(images))  # images: uint8 (N, 64, 64, 3) or PIL images
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .checksum import verify_sha256
from .small import shapes_resnet, shapes_vgg, shapes_vgg_gap
from .vit import shapes_vit
from .zoo import state_dict_from_bytes

__all__ = ["PretrainedModel", "available_pretrained", "pretrained"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "shapes_vgg": shapes_vgg,
    "shapes_vgg_gap": shapes_vgg_gap,
    "shapes_resnet": shapes_resnet,
    "shapes_vit": shapes_vit,
}


@dataclass
class PretrainedModel:
    """A trained model with everything needed to feed it.

    Attributes
    ----------
    name
        Name passed to :func:`pretrained`.
    model
        The network in eval mode (float32, CPU).
    classes
        Class names, indexed like the logits.
    mean, std
        Per-channel normalisation (in [0, 1] units) applied by :meth:`preprocess`.
    input_size
        ``(3, H, W)`` the model was trained on.
    metadata
        The full ``NAME.json`` content (training settings and log).
    """

    name: str
    model: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    def preprocess(self, images: Any) -> torch.Tensor:
        """Map images to a normalised float32 batch ``(N, 3, H, W)``.

        Parameters
        ----------
        images
            A PIL image, a ``uint8`` array ``(H, W, 3)`` or ``(N, H, W, 3)``, or a list of
            those. Images of another size are resized (bilinear) to ``input_size``.
        """
        items = images if isinstance(images, (list, tuple)) else [images]
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items = list(images)
        if not items:
            raise ValueError("images is empty; pass at least one image")
        _, h, w = self.input_size
        arrays = []
        for item in items:
            if isinstance(item, Image.Image):
                pil = item.convert("RGB")
            else:
                arr = np.asarray(item)
                if arr.ndim != 3 or arr.shape[-1] != 3:
                    raise ValueError(
                        f"each image must be (H, W, 3) RGB, got shape {arr.shape}; "
                        "pass (N, H, W, 3) arrays or PIL images"
                    )
                if arr.dtype != np.uint8:
                    raise ValueError(
                        f"images must have dtype uint8 (0-255), got {arr.dtype}; "
                        "convert with np.clip(x, 0, 255).astype(np.uint8)"
                    )
                if arr.shape[:2] == (h, w):
                    arrays.append(arr)
                    continue
                pil = Image.fromarray(arr, "RGB")
            if pil.size != (w, h):
                pil = pil.resize((w, h), Image.BILINEAR)
            arrays.append(np.asarray(pil, dtype=np.uint8))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((batch - mean) / std).contiguous()


def _folder(root: str | os.PathLike | None) -> Any:
    """The folder holding the models: ``root``, or the package's ``weights`` resource."""
    return resources.files("sglrp").joinpath("weights") if root is None else Path(root)


def _read(root: str | os.PathLike | None, filename: str) -> bytes | None:
    """Bytes of ``filename`` in ``root`` (default: the package's weights), or ``None``."""
    entry = _folder(root).joinpath(filename)
    return entry.read_bytes() if entry.is_file() else None


def available_pretrained(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the models that have both ``NAME.json`` and ``NAME.pt`` (sorted)."""
    folder = _folder(root)
    if not folder.is_dir():
        return []
    names = [entry.name for entry in folder.iterdir()]
    stems = {n[:-5] for n in names if n.endswith(".json")}
    return sorted(s for s in stems if f"{s}.pt" in names)


def pretrained(name: str, *, root: str | os.PathLike | None = None) -> PretrainedModel:
    """Load a shipped (or ``root``-folder) model after verifying its checksum.

    Parameters
    ----------
    name
        One of :func:`available_pretrained` (``"shapes_vgg"``, ``"shapes_vgg_gap"``,
        ``"shapes_resnet"``, ``"shapes_vit"``).
    root
        Folder holding ``NAME.json`` and ``NAME.pt`` (e.g. the output of ``sglrp train``);
        ``None`` uses the weights shipped in the package.

    Returns
    -------
    PretrainedModel
    """
    available = available_pretrained(root)
    if name not in available:
        where = "the package" if root is None else str(root)
        raise ValueError(
            f"unknown pretrained model {name!r} in {where}; available: "
            f"{', '.join(available) or 'none'}"
        )
    folder = _folder(root)
    meta_file = folder.joinpath(f"{name}.json")
    try:
        meta = json.loads(_read(root, f"{name}.json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{meta_file} is not valid JSON ({err}); reinstall sglrp or retrain with `sglrp train`"
        ) from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file} holds a {type(meta).__name__}, not a JSON object")
    weights_name = meta.get("weights", f"{name}.pt")
    if (
        not isinstance(weights_name, str)
        or weights_name in ("", ".", "..")
        or Path(weights_name).name != weights_name
        or "\\" in weights_name
    ):
        raise ValueError(
            f"{meta_file}: 'weights' is {weights_name!r}; it must be a file name in the same "
            "folder (no directories)"
        )
    data = _read(root, weights_name)
    weights_file = folder.joinpath(weights_name)
    if data is None:
        raise FileNotFoundError(f"weights file {weights_file} of {name!r} is missing")
    verify_sha256(data, meta.get("sha256"), weights_file, meta_file)
    arch = meta.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{name}.json names unknown architecture {arch!r}; "
            f"known: {', '.join(ARCHITECTURES)} - upgrade sglrp"
        )
    classes = tuple(meta["classes"])
    model = ARCHITECTURES[arch](num_classes=len(classes), **meta.get("model_kwargs", {}))
    state = state_dict_from_bytes(data, weights_file)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return PretrainedModel(
        name=name,
        model=model,
        classes=classes,
        mean=tuple(float(m) for m in meta["mean"]),
        std=tuple(float(s) for s in meta["std"]),
        input_size=tuple(int(v) for v in meta["input_size"]),
        metadata=meta,
    )
