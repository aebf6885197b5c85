"""Training recipes of the shipped shape models: every setting of ``sglrp train`` per model.

``RECIPES[name]`` holds what differs from :data:`DEFAULTS`; :func:`resolve_recipe` merges them
with the settings a caller gives, so ``sglrp train --model NAME`` with no options rebuilds the
shipped ``NAME.pt``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .models.small import shapes_resnet, shapes_vgg, shapes_vgg_gap
from .models.vit import SHAPES_VIT, shapes_vit

__all__ = ["DEFAULTS", "MODELS", "RECIPES", "resolve_recipe"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "shapes_vgg": shapes_vgg,
    "shapes_vgg_gap": shapes_vgg_gap,
    "shapes_resnet": shapes_resnet,
    "shapes_vit": shapes_vit,
}
"""Model builders that :func:`train` accepts, by name."""

DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "steps_per_epoch": 200,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 5e-4,
    "warmup": 0.15,
    "multi_fraction": 0.6,
    "model_kwargs": {},
    "init": None,
    "head_epochs": 0,
    "init_lr_scale": 1.0,
}
"""Training settings of a model without a :data:`RECIPES` entry (and of keys it leaves out)."""

RECIPES: dict[str, dict[str, Any]] = {
    "shapes_vgg": {
        "epochs": 4,
        "steps_per_epoch": 100,
        "model_kwargs": {"batch_norm": True, "pool": 4},
        "init": {
            "model": "shapes_vgg_gap",
            "sha256": "e985fb60961aa9613ae3fca621fae29d9cb4c5279c55c1bd71fe57aa81808112",
            "modules": ["features"],
        },
        "head_epochs": 2,
        "init_lr_scale": 0.1,
    },
    "shapes_vgg_gap": {
        "epochs": 12,
        "steps_per_epoch": 200,
        "model_kwargs": {"batch_norm": True, "pool": 1},
    },
    "shapes_resnet": {"epochs": 12, "steps_per_epoch": 175, "model_kwargs": {}},
    "shapes_vit": {
        "epochs": 8,
        "steps_per_epoch": 100,
        "model_kwargs": dict(SHAPES_VIT),
        "init": {
            "model": "shapes_vgg",
            "sha256": "ca012b96926eafb0edda19437ea99123ea9cef4264ae4f37aa4f645188c6b341",
            "modules": {"conv_proj": "features"},
        },
        "head_epochs": 6,
        "init_lr_scale": 0.1,
    },
}
"""Every training setting of the shipped weights per model (over :data:`DEFAULTS`), used as
:func:`train`'s defaults: ``sglrp train --model NAME --out NAME.pt`` rebuilds the shipped
``NAME.pt`` (bit-identical with torch 2.13 on 2 threads). ``shapes_vgg`` warm-starts its
convolutional ``features`` from the shipped ``shapes_vgg_gap`` (the file with that SHA-256;
its flattened head starts at random), trains the head alone for ``head_epochs`` epochs and
then all layers, the features at ``init_lr_scale`` times the rate. The options are written
into the metadata, from which :func:`sglrp.models.pretrained` builds the model, so the
shipped weights do not depend on a builder's defaults."""


def resolve_recipe(model_name: str, **given: Any) -> dict[str, Any]:
    """All training settings: ``given`` ones (``None``: not given) over the model's
    :data:`RECIPES` entry over :data:`DEFAULTS`; ``model_kwargs`` are merged key by key.

    ``init="none"`` (or ``False``) turns the recipe's warm start off, and with it the
    recipe's ``head_epochs`` and ``init_lr_scale`` (unless given).
    """
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown training settings {unknown}; known: {', '.join(DEFAULTS)}")
    settings = {**DEFAULTS, **RECIPES.get(model_name, {})}
    for key, value in given.items():
        if value is None:
            continue
        if key == "model_kwargs":
            settings[key] = {**settings[key], **value}
        elif key == "init" and value in ("none", False):
            settings[key] = None
            for dependent in ("head_epochs", "init_lr_scale"):
                if given.get(dependent) is None:
                    settings[dependent] = DEFAULTS[dependent]
        else:
            settings[key] = value
    settings["model_kwargs"] = dict(settings["model_kwargs"])
    return settings
