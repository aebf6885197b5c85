"""What the page computes, as plain functions (no web framework): model, prediction, maps.

The model is loaded once per server (:func:`load_bundle`) exactly as ``sglrp explain``
loads it, with the same defaults for preprocessing, class names and Z^B bounds. An
explanation (:func:`explain_maps`) runs ``sglrp explain``'s own per-image step into a
folder of the session, so the grid PNG, the ``<method>.npy`` maps and ``explanation.json``
offered for download are byte for byte what ``sglrp explain IMAGE --method ... --target T
--rules R [--layer L] [--display positive]`` writes for the same image. The contrast view
(:func:`contrast_maps`) and the critical-path graph (:func:`critical_path_graph`) call the
library (:func:`sglrp.explain`, :func:`sglrp.neurons.critical_paths`) directly.

The model is shared by every browser tab; calls that run it hold :attr:`Bundle.lock`, so
tabs wait for each other instead of sharing the two CPU cores badly. Nothing here keeps
per-tab data: the page keeps it in its per-session state.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sglrp import explain
from sglrp._guard import preserved
from sglrp.app.config import PAPER_METHODS as DEFAULT_METHODS
from sglrp.app.explain import Settings, explain_image
from sglrp.commands import explain as explain_command
from sglrp.commands.explain import prepare
from sglrp.images import load_image, preprocess
from sglrp.methods import get, methods
from sglrp.neurons import critical_paths, neuron_layers
from sglrp.presets import PRESETS, is_transformer

__all__ = [
    "CONTRAST_METHODS",
    "Bundle",
    "Contrast",
    "Explanation",
    "Prediction",
    "contrast_maps",
    "critical_path_graph",
    "explain_maps",
    "load_bundle",
    "predict",
]

#: The contrast view: each method for the target and for the contrast class.
CONTRAST_METHODS: tuple[str, ...] = ("sglrp", "lrp")
_TOP = 5


@dataclass
class Bundle:
    """The server's model with everything ``sglrp explain`` derives from its options.

    Attributes
    ----------
    settings
        ``sglrp explain``'s settings for the model (preprocessing, classes, bounds); each
        request replaces methods, target, rules, layer and display.
    names
        A name for every class (``"class i"`` where the model has none).
    hidden
        Hidden conv / linear layers in execution order (for the neuron view).
    conv_layers
        The hidden conv layers (choices for the CAM methods' layer).
    lock
        Held while the model runs.
    """

    settings: Settings
    names: list[str]
    hidden: list[str]
    conv_layers: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> nn.Module:
        """The loaded model (never modified: every call runs inside its guard)."""
        return self.settings.bundle.model

    @property
    def num_classes(self) -> int:
        return self.settings.num_classes

    @property
    def side(self) -> int:
        """Side of the square image the examples are generated at (the resize size)."""
        return int(self.settings.size or self.settings.crop or 224)

    def describe(self) -> str:
        """One line on the model: spec, kind, classes, input size."""
        s = self.settings
        return (
            f"{s.model_spec} ({s.bundle.kind}, {s.num_classes} classes, input "
            f"{s.crop}x{s.crop}, resize {s.size})"
        )


def _explain_parser() -> argparse.ArgumentParser:
    """A parser holding only ``sglrp explain``, for its defaults."""
    parser = argparse.ArgumentParser(prog="sglrp")
    explain_command.register(parser.add_subparsers(dest="command"))
    return parser


def load_bundle(
    model: str = "shapes_vgg",
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    labels: str | None = None,
    out: str | Path = ".",
) -> Bundle:
    """Load a model as ``sglrp explain --model MODEL [--weights W]`` does.

    Raises
    ------
    ValueError, FileNotFoundError
        As ``sglrp explain`` does for the same options.
    """
    argv = ["explain", "page-image", "--model", model, "--out", str(out)]
    argv += ["--method", ",".join(DEFAULT_METHODS)]
    for option, value in (
        ("--weights", weights),
        ("--num-classes", num_classes),
        ("--labels", labels),
    ):
        if value is not None:
            argv += [option, str(value)]
    args = _explain_parser().parse_args(argv)  # every other option at `sglrp explain`'s default
    settings = prepare(args)
    names = list(settings.classes or [f"class {i}" for i in range(settings.num_classes)])
    hidden: list[str] = []
    conv: list[str] = []
    if not settings.bundle.compiled:
        crop = int(settings.crop or 224)
        layers = neuron_layers(settings.bundle.model, torch.zeros(1, 3, crop, crop))
        hidden = [info.name for info in layers if not info.is_output]
        conv = [info.name for info in layers if info.kind == "conv" and not info.is_output]
    return Bundle(settings=settings, names=names, hidden=hidden, conv_layers=conv)


def method_choices(bundle: Bundle) -> list[tuple[str, str]]:
    """``(label, name)`` of the registered methods that apply to the model.

    The evaluation's random baseline is left out; attention methods are offered for
    transformers only; a compiled TorchScript model gets the gradient-only methods.
    """
    model = bundle.model
    transformer = is_transformer(model)
    out = []
    for record in methods():
        if record.family == "baseline" or (record.family == "attention" and not transformer):
            continue
        if bundle.settings.bundle.compiled and record.needs_layers:
            continue
        out.append((record.label, record.name))
    return out


def default_methods(bundle: Bundle) -> list[str]:
    """Methods ticked when the page opens: SGLRP, CLRP, LRP where they apply."""
    offered = [name for _, name in method_choices(bundle)]
    chosen = [m for m in ("sglrp", "clrp", "lrp") if m in offered]
    return chosen or offered[:1]


# --------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """The model's view of one image: its input, probabilities and top classes."""

    x: torch.Tensor
    shown: np.ndarray  # uint8 (H, W, 3): the resized, cropped image the model saw
    probs: np.ndarray  # (classes,) float64 softmax
    order: list[int]  # classes by decreasing probability
    seconds: float

    def top(self, names: list[str], k: int = _TOP) -> list[dict[str, Any]]:
        """``{"rank", "index", "name", "probability"}`` for the ``k`` most probable classes."""
        return [
            {"rank": r + 1, "index": i, "name": names[i], "probability": float(self.probs[i])}
            for r, i in enumerate(self.order[:k])
        ]


def model_input(bundle: Bundle, path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """The normalised (1, 3, crop, crop) input and the RGB image shown, as ``sglrp explain``."""
    s = bundle.settings
    x, shown = preprocess(load_image(path), s.size, s.crop, s.mean, s.std)
    return x, np.asarray(shown.convert("RGB"))


def predict(bundle: Bundle, path: str | Path) -> Prediction:
    """Read, preprocess and classify an image file."""
    start = time.perf_counter()
    x, shown = model_input(bundle, path)
    with bundle.lock, preserved(bundle.model), torch.no_grad():
        logits = bundle.model(x).float()[0]
    probs = torch.softmax(logits.double(), dim=0)
    order = torch.argsort(probs, descending=True).tolist()
    return Prediction(x, shown, probs.numpy(), order, time.perf_counter() - start)


# --------------------------------------------------------------------------- maps


@dataclass
class Explanation:
    """``sglrp explain``'s outputs for one image, and the maps read back from them."""

    out_dir: Path
    summary: dict[str, Any]  # explanation.json
    maps: dict[str, np.ndarray]  # method -> (C, H, W) float32, from <method>.npy
    files: list[Path]
    seconds: float


def _check_request(bundle: Bundle, chosen: list[str], rules: str, layer: str | None) -> None:
    if not chosen:
        raise ValueError("choose at least one method")
    offered = {name for _, name in method_choices(bundle)}
    unknown = [m for m in chosen if m not in offered]
    if unknown:
        raise ValueError(f"method(s) {', '.join(unknown)} do not apply to this model")
    if rules not in PRESETS:
        raise ValueError(f"unknown rules preset {rules!r}; available: {', '.join(PRESETS)}")
    if layer is not None and layer not in dict(bundle.model.named_modules()):
        raise ValueError(f"the model has no layer {layer!r}")


def explain_maps(
    bundle: Bundle,
    path: str | Path,
    out_dir: str | Path,
    *,
    chosen: list[str],
    target: int,
    rules: str = "dtd",
    layer: str | None = None,
    positive: bool = False,
) -> Explanation:
    """Run ``sglrp explain``'s per-image step for the page's settings into ``out_dir``.

    Parameters
    ----------
    chosen
        Method names (registry names), in display order.
    target
        Class index explained.
    rules
        LRP rule preset for the methods that take rules.
    layer
        Layer of the CAM methods (``None``: each method's default).
    positive
        Write the PNGs with the paper's positive-only display (``--display positive``).
    """
    _check_request(bundle, chosen, rules, layer)
    if not 0 <= int(target) < bundle.num_classes:
        raise ValueError(f"target {target} is not a class (0 ... {bundle.num_classes - 1})")
    layered = [m for m in chosen if get(m).takes_layer]
    settings = dataclasses.replace(
        bundle.settings,
        methods=list(chosen),
        target=int(target),
        rules=rules,
        layer=layer if layered else None,
        display="positive" if positive else "signed",
        out=Path(out_dir),
    )
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with bundle.lock:
        summary = explain_image(settings, Path(path), out_dir)
    maps = {m: np.load(out_dir / f"{m}.npy") for m in chosen}
    files = [out_dir / "grid.png", out_dir / "explanation.json"]
    files += [out_dir / f"{m}.npy" for m in chosen]
    return Explanation(out_dir, summary, maps, files, time.perf_counter() - start)


@dataclass
class Contrast:
    """Relevance of each contrast method for the target and the contrast class."""

    target: int
    contrast: int
    maps: dict[str, np.ndarray]  # method -> (2, C, H, W): [target, contrast]
    seconds: float


def contrast_maps(
    bundle: Bundle,
    x: torch.Tensor,
    target: int,
    contrast: int,
    rules: str = "dtd",
    known: dict[str, np.ndarray] | None = None,
) -> Contrast:
    """SGLRP and LRP for ``target`` and for ``contrast``.

    ``known`` maps a method to its (C, H, W) relevance for ``target`` with the same rules
    (from :func:`explain_maps`); such a method is computed for ``contrast`` only. Otherwise
    both classes are explained in one call: ``sglrp.explain`` with an (N, K) target runs one
    forward and one backward pass for the K classes and returns (N, K, C, H, W).
    """
    if target == contrast:
        raise ValueError("the contrast class must differ from the target")
    for index in (target, contrast):
        if not 0 <= int(index) < bundle.num_classes:
            raise ValueError(f"class {index} is not a class (0 ... {bundle.num_classes - 1})")
    _check_request(bundle, list(CONTRAST_METHODS), rules, None)
    known = known or {}
    start = time.perf_counter()
    out = {}
    with bundle.lock:
        for method in CONTRAST_METHODS:
            options = {"method": method, "rules": rules, "bounds": bundle.settings.bounds}
            if method in known:
                r = explain(bundle.model, x, torch.tensor([int(contrast)]), **options)
                out[method] = np.stack([known[method], r[0].detach().float().numpy()])
            else:
                pair = torch.tensor([[int(target), int(contrast)]])
                out[method] = explain(bundle.model, x, pair, **options)[0].detach().float().numpy()
    return Contrast(int(target), int(contrast), out, time.perf_counter() - start)


# --------------------------------------------------------------------------- neurons


def critical_path_graph(
    bundle: Bundle,
    x: torch.Tensor,
    target: int,
    *,
    layer: str | None = None,
    graph_k: int = 3,
    rules: str = "dtd",
    method: str = "sglrp",
) -> tuple[Any, list[dict[str, Any]]]:
    """The critical-path graph of ``sglrp paths`` and the top neurons of ``layer``.

    The graph spans every hidden conv / linear layer with the ``graph_k`` neurons of largest
    positive relevance per layer (``sglrp paths --graph-k G``); the list ranks ``layer``'s
    neurons by |relevance| with their share of the layer's total |relevance|.

    Returns
    -------
    (CriticalPaths, list of dict)
    """
    if not bundle.hidden:
        raise ValueError("the model has no hidden conv or linear layers to analyse")
    if method not in ("sglrp", "clrp", "lrp"):
        raise ValueError(f"critical paths take sglrp, clrp or lrp, got {method!r}")
    if rules not in PRESETS:
        raise ValueError(f"unknown rules preset {rules!r}; available: {', '.join(PRESETS)}")
    if not 1 <= graph_k <= 16:
        raise ValueError(f"neurons per layer must be 1 ... 16, got {graph_k}")
    layer = layer or (bundle.conv_layers[-1] if bundle.conv_layers else bundle.hidden[-1])
    if layer not in bundle.hidden:
        raise ValueError(f"{layer!r} is not a hidden conv/linear layer")
    with bundle.lock:
        cp = critical_paths(
            bundle.model,
            x,
            int(target),
            method,
            rules,
            bundle.settings.bounds,
            layers=bundle.hidden,
            k=graph_k,
            by="positive",
            class_names=bundle.names,
        )
    rel = cp.full.relevance[layer][0]
    total = float(rel.abs().sum())
    ranked = sorted(range(rel.numel()), key=lambda i: -abs(float(rel[i])))[:8]
    rows = [
        {
            "neuron": f"{layer}:{i}",
            "relevance": float(rel[i]),
            "share": float(rel[i]) / total if total > 0 else 0.0,
            "on_path": f"{layer}:{i}" in cp.path,
        }
        for i in ranked
    ]
    return cp, rows
