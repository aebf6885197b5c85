"""The evaluation runner behind ``sglrp evaluate`` and ``sglrp reproduce``.

For each batch of images the runner computes every method's relevance map for every
*unit* and every metric on those maps:

* ground-truth units: one per class present in an image (each object class of a
  multi-object image, the label of a single-object image). Every metric is measured on them.
* second-target units: one per image, the model's second most probable class; only
  maximal patch masking is measured on them (``patch_masking_second``), as in CLRP/SGLRP.

Every metric sees the paper's display map: positive relevance summed over colour channels
(:func:`sglrp.heatmap` without normalisation). Localisation ground truth: the extended
pointing game uses the target's bounding boxes (SGLRP paper, eqs. 11-12); the classic
pointing game, relevance mass and relevance rank use the object masks (boxes when a data set
has no masks). The classic game's 15 px tolerance is for 224 px images and is scaled to the
image size (about 4.3 px at 64 px). A map without positive relevance (LRP's z+ maps for a
target with a negative logit, for instance) locates nothing: it scores 0 in the extended
pointing game and relevance mass instead of being left out, so every method is averaged over
the same units; ``metrics.json`` counts such maps per method (``empty_maps``).

Streaming and resuming: each process appends one JSON line per finished batch to
``OUT/parts/rank<r>.jsonl`` (flushed and synced), so an interrupted run started again with
the same settings skips every batch already on disk. At the end rank 0 merges everything into
``OUT/results.jsonl`` and writes ``metrics.json`` (aggregates with 95 % intervals, direction,
best method), ``metrics.csv`` and the curve plots. Under ``torchrun`` the batches are shared
round-robin between the ranks (:mod:`sglrp.evaluate.distributed`); the result equals the
single-process one because every batch is formed exactly as in a single process.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .._guard import preserved
from ..io import atomic_open, write_json
from . import distributed
from ._core import aggregate, boxes_to_masks, second_most_probable
from .confidence import average_drop
from .deletion import deletion, insertion
from .localisation import relevance_mass_accuracy, relevance_rank_accuracy
from .masking import DEFAULT_SIZES, patch_masking
from .pointing import DEFAULT_ENERGIES, extended_pointing_game, pointing_game

__all__ = [
    "DEFAULT_METHODS",
    "KNOWN_METHODS",
    "MEASURES",
    "DataSource",
    "EvalConfig",
    "Measure",
    "ModelBundle",
    "compute_batch",
    "explain_relevance",
    "load_model",
    "open_data",
    "read_records",
    "resolve_methods",
    "resolve_metrics",
    "run",
    "summarize",
    "write_outputs",
]

#: The comparison of the SGLRP paper, in the order tables and plots show them.
DEFAULT_METHODS: tuple[str, ...] = (
    "sglrp",
    "clrp",
    "lrp",
    "guided_gradcam",
    "relevance_cam",
    "random",
)

#: Every method name the runner knows; a known method missing from this installation is skipped.
KNOWN_METHODS: tuple[str, ...] = (
    "lrp",
    "clrp",
    "sglrp",
    "gradient",
    "input_x_gradient",
    "guided_backprop",
    "deconvnet",
    "gradcam",
    "guided_gradcam",
    "relevance_cam",
    "random",
)

_LRP = ("lrp", "clrp", "sglrp")

#: Display names for tables, plots and the report.
METHOD_LABELS: dict[str, str] = {
    "lrp": "LRP",
    "clrp": "CLRP",
    "sglrp": "SGLRP",
    "gradient": "Gradient",
    "input_x_gradient": "Input x Gradient",
    "guided_backprop": "Guided Backprop",
    "deconvnet": "Deconvnet",
    "gradcam": "Grad-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "relevance_cam": "Relevance-CAM",
    "random": "Random",
}

#: Metric names accepted by ``--metrics`` (the keys of ``sglrp.evaluate.METRICS``).
METRIC_NAMES: tuple[str, ...] = (
    "extended_pointing_game",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "patch_masking",
    "average_drop",
    "increase_in_confidence",
    "deletion",
    "insertion",
)

#: Confidence metrics keep the top half of the map's pixels, as Relevance-CAM's evaluation.
CONFIDENCE_KEEP_TOP = 0.5
#: Largest forward batch inside the model-based metrics.
FORWARD_BATCH = 256


@dataclass(frozen=True)
class Measure:
    """One reported quantity: a metric on one kind of target.

    Attributes
    ----------
    key
        Name in results and ``metrics.json``.
    metric
        The ``sglrp.evaluate`` metric.
    target
        ``"ground_truth"`` or ``"second"`` (second most probable class).
    direction
        ``"higher"`` or ``"lower"`` is better.
    title
        Human-readable name.
    score
        What the per-unit score is.
    level_name
        Name of the curve's x axis (None: no curve).
    """

    key: str
    metric: str
    target: str
    direction: str
    title: str
    score: str
    level_name: str | None = None


MEASURES: dict[str, Measure] = {
    m.key: m
    for m in (
        Measure(
            "extended_pointing_game",
            "extended_pointing_game",
            "ground_truth",
            "higher",
            "Extended pointing game (pointing accuracy)",
            "mean pointing accuracy over the energy levels",
            "energy level E",
        ),
        Measure(
            "pointing_game",
            "pointing_game",
            "ground_truth",
            "higher",
            "Pointing game (hit rate)",
            "1 if the map's maximum lies within the scaled 15 px tolerance of the object",
        ),
        Measure(
            "relevance_mass_accuracy",
            "relevance_mass_accuracy",
            "ground_truth",
            "higher",
            "Relevance mass accuracy",
            "share of positive relevance inside the object mask",
        ),
        Measure(
            "relevance_rank_accuracy",
            "relevance_rank_accuracy",
            "ground_truth",
            "higher",
            "Relevance rank accuracy",
            "share of the top-K pixels inside the object mask (K = mask size)",
        ),
        Measure(
            "patch_masking",
            "patch_masking",
            "ground_truth",
            "lower",
            "Maximal patch masking, ground-truth target (change in probability)",
            "mean change of the target probability over the patch sizes",
            "patch size p",
        ),
        Measure(
            "patch_masking_second",
            "patch_masking",
            "second",
            "lower",
            "Maximal patch masking, second most probable target (change in probability)",
            "mean change of the target probability over the patch sizes",
            "patch size p",
        ),
        Measure(
            "average_drop",
            "average_drop",
            "ground_truth",
            "lower",
            "Average drop (%)",
            "100 max(0, y - o) / y, o on the image weighted by the map's top 50 %",
        ),
        Measure(
            "increase_in_confidence",
            "increase_in_confidence",
            "ground_truth",
            "higher",
            "Increase in confidence (% of units)",
            "100 if the weighted image raises the target probability, else 0",
        ),
        Measure(
            "deletion",
            "deletion",
            "ground_truth",
            "lower",
            "Deletion AUC",
            "area under the probability curve while deleting pixels by relevance",
            "fraction deleted",
        ),
        Measure(
            "insertion",
            "insertion",
            "ground_truth",
            "higher",
            "Insertion AUC",
            "area under the probability curve while inserting pixels by relevance",
            "fraction inserted",
        ),
    )
}


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run.

    Attributes
    ----------
    model
        Shipped model name (``sglrp.models.pretrained``) or a weights file written by
        ``sglrp train`` (``.pt`` with its ``.json`` metadata beside it).
    data
        ``"builtin"`` (generated ``multi`` and ``single`` images) or a VOC folder.
    methods, metrics
        Names (see :data:`KNOWN_METHODS`, :data:`METRIC_NAMES`).
    n
        Images per built-in split, or the first ``n`` images of a folder (None: 48 per
        split / all).
    batch_size
        Images per batch (the unit of streaming, resuming and sharding).
    seed
        Seed of the generated images and of the random baseline.
    energies, sizes, steps
        Extended pointing game levels, patch sizes, deletion/insertion steps.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    model: str = "shapes_vgg"
    data: str = "builtin"
    methods: tuple[str, ...] = DEFAULT_METHODS
    metrics: tuple[str, ...] = METRIC_NAMES
    n: int | None = None
    batch_size: int = 16
    seed: int = 0
    energies: tuple[float, ...] = DEFAULT_ENERGIES
    sizes: tuple[int, ...] = DEFAULT_SIZES
    steps: int = 16
    device: str = field(default="auto", compare=False)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a resumed run must match them)."""
        d = asdict(self)
        d.pop("device")
        d["data"] = _data_identity(self.data)
        return json.loads(json.dumps(d))


def _data_identity(data: str) -> str:
    return "builtin" if data == "builtin" else str(Path(data).resolve())


def _split_names(spec: str | Sequence[str], what: str) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s and s.strip()]
    if not names:
        raise ValueError(f"no {what} given; pass a comma-separated list")
    return list(dict.fromkeys(names))


def resolve_methods(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """Split requested methods into ``(usable, skipped)``.

    Unknown names raise ``ValueError``; known methods this installation lacks are skipped
    (a warning is issued) so a partial installation still evaluates the rest.
    """
    from ..api import available_methods

    names = _split_names(spec, "methods")
    unknown = [m for m in names if m not in KNOWN_METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(KNOWN_METHODS)}")
    try:
        available = set(available_methods())
    except Exception:  # noqa: BLE001 - the optional methods package may be broken or absent
        available = set(_LRP)
    usable = [m for m in names if m in available]
    skipped = [m for m in names if m not in available]
    for m in skipped:
        warnings.warn(f"method {m!r} is not available in this installation; skipped", stacklevel=2)
    if not usable:
        raise ValueError(
            f"none of the methods {', '.join(names)} is available; "
            f"available: {', '.join(sorted(available))}"
        )
    return usable, skipped


def resolve_metrics(spec: str | Sequence[str]) -> list[str]:
    """Validate metric names (``"all"`` selects every metric)."""
    names = _split_names(spec, "metrics")
    if names == ["all"]:
        return list(METRIC_NAMES)
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRIC_NAMES)}")
    return names


def measures_for(metrics: Iterable[str]) -> list[Measure]:
    """The reported measures of the chosen metrics, in :data:`MEASURES` order."""
    chosen = set(metrics)
    return [m for m in MEASURES.values() if m.metric in chosen]


# ----------------------------------------------------------------------------- model


@dataclass
class ModelBundle:
    """A classifier with what is needed to feed it.

    Attributes
    ----------
    model
        Returns (N, classes) logits; kept in eval mode.
    classes
        Class names, index = logit position.
    mean, std
        Per-channel input normalisation (images in [0, 1]).
    name
        Name or file it came from.
    size
        Input side length in pixels.
    weights
        Fingerprint of the weights (SHA-256 of the file), so that resuming never mixes
        results of different weights under the same model name.
    """

    model: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    size: int = 64
    weights: str = ""


def _load_file(path: Path) -> ModelBundle:
    from ..models.zoo import ZOO, load_state_dict_file

    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: a weights file needs its metadata JSON beside it "
            "(written by `sglrp train`)"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    arch = meta.get("architecture")
    if arch not in ZOO:
        raise ValueError(f"{meta_path}: unknown architecture {arch!r}; known: {', '.join(ZOO)}")
    classes = tuple(meta.get("classes") or ())
    if not classes:
        raise ValueError(f"{meta_path}: no 'classes' list; is this a `sglrp train` metadata file?")
    model = ZOO[arch](num_classes=len(classes), **(meta.get("model_kwargs") or {}))
    state = {k: v.float() for k, v in load_state_dict_file(path).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
        raise ValueError(
            f"{path} does not fit {arch} ({detail}); check the architecture in {meta_path.name}"
        ) from None
    size = int((meta.get("input_size") or [3, 64, 64])[-1])
    return ModelBundle(
        model.eval(),
        classes,
        tuple(meta.get("mean") or (0.5, 0.5, 0.5)),
        tuple(meta.get("std") or (0.5, 0.5, 0.5)),
        str(path),
        size,
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def load_model(spec: str) -> ModelBundle:
    """Load a shipped model by name or a ``sglrp train`` weights file.

    Raises ``ValueError``/``FileNotFoundError`` with the fix when neither fits.
    """
    path = Path(spec)
    if path.suffix in (".pt", ".pth") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(
                f"model file {path} does not exist; pass a shipped model name or a weights file"
            )
        return _load_file(path)
    from .. import models

    factory = getattr(models, "pretrained", None)
    if not callable(factory):
        raise ValueError(
            f"shipped models are not available in this installation, so {spec!r} cannot be "
            "loaded; pass a weights file written by `sglrp train` with --model FILE"
        )
    listing = getattr(models, "available_pretrained", None)
    if callable(listing):
        try:
            names = list(listing())
        except Exception:  # noqa: BLE001 - listing is advisory
            names = []
        if names and spec not in names:
            raise ValueError(
                f"unknown model {spec!r}; shipped models: {', '.join(names)} (or a .pt file)"
            )
    pm = factory(spec)
    model = getattr(pm, "model", pm)
    size = getattr(pm, "input_size", None) or getattr(pm, "size", None) or 64
    if isinstance(size, (tuple, list)):
        size = size[-1]
    from ..data import CLASSES, MEAN, STD

    return ModelBundle(
        model.eval(),
        tuple(getattr(pm, "classes", CLASSES)),
        tuple(float(v) for v in getattr(pm, "mean", MEAN)),
        tuple(float(v) for v in getattr(pm, "std", STD)),
        spec,
        int(size),
        str((getattr(pm, "metadata", None) or {}).get("sha256", "")),
    )


# ----------------------------------------------------------------------------- data


@dataclass
class DataSource:
    """Images to evaluate, loaded on demand.

    Attributes
    ----------
    name
        ``"builtin"`` or the folder.
    ids
        Image identifiers (``multi/000003``, ``voc/000012``, ...), in evaluation order.
    load
        ``load(i) -> sglrp.data.Sample`` for position ``i`` of ``ids``.
    """

    name: str
    ids: list[str]
    load: Callable[[int], Any]

    def __len__(self) -> int:
        return len(self.ids)


BUILTIN_N = 48


def open_data(spec: str, n: int | None, seed: int, bundle: ModelBundle) -> DataSource:
    """``"builtin"``: ``n`` multi-object then ``n`` single-object images; else a VOC folder."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"--n must be a positive integer, got {n!r}")
    if spec == "builtin":
        from ..data import generate

        count = BUILTIN_N if n is None else n
        ids = [f"{s}/{i:06d}" for s in ("multi", "single") for i in range(count)]

        def load(i: int) -> Any:
            split, index = ("multi", i) if i < count else ("single", i - count)
            return generate(split, 1, seed, bundle.size, start=index)[0]

        return DataSource("builtin", ids, load)
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder {folder} does not exist; pass --data builtin or a VOC folder "
            "(Annotations/, JPEGImages/)"
        )
    from ..data import load_voc

    samples = load_voc(folder, classes=bundle.classes, box_masks=False)
    if not samples:
        raise ValueError(f"{folder} holds no images (no Annotations/*.xml)")
    stems = [p.stem for p in sorted((folder / "Annotations").glob("*.xml"))]
    if n is not None:
        samples, stems = samples[:n], stems[:n]
    shapes = {s.image.shape for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"images in {folder} differ in size ({', '.join(map(str, sorted(shapes)))}); "
            "resize them to the model's input size first"
        )
    return DataSource(str(folder), [f"voc/{s}" for s in stems], lambda i: samples[i])


def batches(total: int, batch_size: int) -> list[range]:
    """Consecutive index ranges of ``batch_size`` (the last may be shorter)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    return [range(lo, min(lo + batch_size, total)) for lo in range(0, total, batch_size)]


# ----------------------------------------------------------------------------- one batch


def _class_masks(sample: Any, label: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(object mask, box mask) of all objects of class ``label`` in ``sample``."""
    objs = [o for o in sample.objects if o.label == label]
    boxes = torch.tensor([list(o.box) for o in objs], dtype=torch.long)
    box = boxes_to_masks(boxes[None], h, w)[0].numpy()
    if all(o.mask is not None for o in objs):
        mask = np.any(np.stack([np.asarray(o.mask, dtype=bool) for o in objs]), axis=0)
    else:
        mask = box
    return mask, box


def _clean(values: Tensor) -> list:
    """Tensor to nested lists of floats with NaN as None (valid JSON)."""
    arr = values.detach().to(torch.float64).cpu().numpy()
    out = np.where(np.isnan(arr), None, arr).tolist()
    return out


def explain_relevance(
    bundle: ModelBundle, x: Tensor, targets: Tensor, method: str, seed: int = 0
) -> Tensor:
    """Relevance of one method as the runner computes it, (U, C, H, W) or (U, 1, H, W).

    LRP methods use the Z^B bounds of the model's normalisation; ``random`` uses ``seed``;
    every other method its defaults. Maps smaller than the input are upsampled bilinearly.
    """
    from ..api import explain
    from ..methods import get
    from ..presets import bounds_from_normalization

    record = get(method)
    options: dict[str, Any] = {}
    if record.takes_rules:
        low, high = bounds_from_normalization(bundle.mean, bundle.std)
        options["bounds"] = (low.to(x.device), high.to(x.device))
    if "seed" in record.options:
        options["seed"] = seed
    r = explain(bundle.model, x, targets, method=method, **options)
    r = r.detach()
    if r.shape[-2:] != x.shape[-2:]:
        r = torch.nn.functional.interpolate(r, size=x.shape[-2:], mode="bilinear")
    return r


def _maps(bundle: ModelBundle, x: Tensor, targets: Tensor, method: str, seed: int) -> Tensor:
    """(U, H, W) display maps (positive relevance summed over channels) of one method."""
    from ..api import heatmap

    return heatmap(explain_relevance(bundle, x, targets, method, seed), normalize=False)


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of the random baseline for one batch (independent of sharding)."""
    return (int(seed) * 1_000_003 + int(batch_index)) % (2**63)


def compute_batch(
    bundle: ModelBundle,
    source: DataSource,
    indices: Sequence[int],
    cfg: EvalConfig,
    methods: Sequence[str],
    metrics: Sequence[str],
    batch_index: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Maps and metric scores of one batch, as a JSON-ready record.

    Returns
    -------
    dict
        ``batch``, ``images`` (ids), ``units`` (per kind: image, target, prob, predicted),
        ``scores`` (measure -> method -> per-unit score) and ``curves`` (measure -> method
        -> per-unit curve) for the measures that have levels, and ``levels``.
    """
    from ..data import to_tensor

    samples = [source.load(i) for i in indices]
    x = to_tensor([s.image for s in samples], bundle.mean, bundle.std).to(device)
    n, _, h, w = x.shape
    model = bundle.model
    with torch.no_grad(), preserved(model):
        probs = model(x).double().softmax(dim=1)
    predicted = probs.argmax(dim=1)

    gt_img, gt_cls, obj_masks, box_masks = [], [], [], []
    for i, s in enumerate(samples):
        for label in dict.fromkeys(s.labels):
            mask, box = _class_masks(s, label, h, w)
            gt_img.append(i)
            gt_cls.append(int(label))
            obj_masks.append(mask)
            box_masks.append(box)
    chosen = set(metrics)
    want_second = "patch_masking" in chosen
    sec_img = list(range(n)) if want_second else []
    sec_cls = second_most_probable(model, x).tolist() if want_second else []

    def unit_info(img: list[int], cls: list[int]) -> dict[str, list]:
        it = torch.tensor(img, dtype=torch.long, device=x.device)
        ct = torch.tensor(cls, dtype=torch.long, device=x.device)
        p = probs[it, ct] if img else torch.zeros(0, dtype=torch.float64)
        return {
            "image": [source.ids[indices[i]] for i in img],
            "target": cls,
            "prob": _clean(p),
            "predicted": predicted[it].tolist() if img else [],
        }

    record: dict[str, Any] = {
        "batch": int(batch_index),
        "images": [source.ids[i] for i in indices],
        "units": {"gt": unit_info(gt_img, gt_cls), "second": unit_info(sec_img, sec_cls)},
        "scores": {},
        "curves": {},
        "levels": {},
    }
    all_img = torch.tensor(gt_img + sec_img, dtype=torch.long, device=x.device)
    all_cls = torch.tensor(gt_cls + sec_cls, dtype=torch.long, device=x.device)
    u = len(gt_img)
    if all_img.numel() == 0:
        return record
    xs = x[all_img]
    maps = {m: _maps(bundle, xs, all_cls, m, batch_seed(cfg.seed, batch_index)) for m in methods}
    gt_maps = {m: v[:u] for m, v in maps.items()}
    x_gt, t_gt = xs[:u], all_cls[:u]
    obj = torch.from_numpy(np.stack(obj_masks)).to(x.device) if u else None
    box = torch.from_numpy(np.stack(box_masks)).to(x.device) if u else None
    tolerance = 15.0 * min(h, w) / 224.0

    def put(key: str, method: str, res: Any, curve: bool = False, zero: Tensor | None = None):
        scores = res.scores.clone()
        if zero is not None:  # no positive relevance: the map locates nothing, a miss
            scores[zero] = 0.0
        record["scores"].setdefault(key, {})[method] = _clean(scores)
        if curve:
            curves = res.curves.clone()
            if zero is not None:
                curves[zero] = 0.0
            record["curves"].setdefault(key, {})[method] = _clean(curves)
            record["levels"][key] = _clean(res.levels)

    if u:
        record["empty"] = {}
        for m, r in gt_maps.items():
            empty = ~(r.flatten(1) > 0).any(dim=1)
            record["empty"][m] = empty.tolist()
            if "extended_pointing_game" in chosen:
                res = extended_pointing_game(r, box, cfg.energies)
                put("extended_pointing_game", m, res, True, empty & box.flatten(1).any(dim=1))
            if "pointing_game" in chosen:
                put("pointing_game", m, pointing_game(r, obj, tolerance=tolerance))
            if "relevance_mass_accuracy" in chosen:
                res = relevance_mass_accuracy(r, obj)
                put("relevance_mass_accuracy", m, res, zero=empty & obj.flatten(1).any(dim=1))
            if "relevance_rank_accuracy" in chosen:
                put("relevance_rank_accuracy", m, relevance_rank_accuracy(r, obj))
            if chosen & {"average_drop", "increase_in_confidence"}:
                res = average_drop(
                    model, x_gt, r, t_gt, keep_top=CONFIDENCE_KEEP_TOP, batch_size=FORWARD_BATCH
                )
                if "average_drop" in chosen:
                    put("average_drop", m, res)
                if "increase_in_confidence" in chosen:
                    inc = 100.0 * (res.o > res.y).to(torch.float64)
                    record["scores"].setdefault("increase_in_confidence", {})[m] = _clean(inc)
            if "deletion" in chosen:
                res = deletion(model, x_gt, r, t_gt, steps=cfg.steps, batch_size=FORWARD_BATCH)
                put("deletion", m, res, True)
            if "insertion" in chosen:
                res = insertion(model, x_gt, r, t_gt, steps=cfg.steps, batch_size=FORWARD_BATCH)
                put("insertion", m, res, True)
        if "patch_masking" in chosen:
            pm = patch_masking(
                model, x_gt, gt_maps, t_gt, sizes=cfg.sizes, batch_size=FORWARD_BATCH
            )
            for m in methods:
                put("patch_masking", m, pm[m], True)
    if want_second:
        sec_maps = {m: v[u:] for m, v in maps.items()}
        pm = patch_masking(
            model, xs[u:], sec_maps, all_cls[u:], sizes=cfg.sizes, batch_size=FORWARD_BATCH
        )
        for m in methods:
            put("patch_masking_second", m, pm[m], True)
    return record


# ----------------------------------------------------------------------------- records


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a torn last line (interrupted write) is dropped."""
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "batch" in rec:
                out.append(rec)
    return out


def read_records(out: Path) -> dict[int, dict[str, Any]]:
    """Every finished batch in ``out`` (``results.jsonl`` and ``parts/*.jsonl``), by index."""
    files = [out / "results.jsonl", *sorted((out / "parts").glob("*.jsonl"))]
    records: dict[int, dict[str, Any]] = {}
    for path in files:
        if path.is_file():
            for rec in _read_jsonl(path):
                records.setdefault(int(rec["batch"]), rec)
    return records


def _check_run(out: Path, identity: dict[str, Any], restart: bool) -> bool:
    """True when ``out`` holds results of other settings (an error unless ``restart``)."""
    path = out / "run.json"
    if not path.is_file():
        return False
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (json.JSONDecodeError, AttributeError):
        return True
    if previous is not None and previous != identity:
        if restart:
            return True
        diff = [k for k in identity if previous.get(k) != identity[k]]
        raise ValueError(
            f"{out} holds results of a run with different settings ({', '.join(diff)}); "
            "pass a new --out folder or delete the old one to start afresh"
        )
    return False


def clear_state(out: Path) -> None:
    """Remove a previous run's state (``run.json``, ``results.jsonl``, ``parts/``)."""
    for path in (out / "run.json", out / "results.jsonl", *(out / "parts").glob("*.jsonl")):
        if path.is_file():
            path.unlink()


def _rewrite_valid(path: Path) -> None:
    """Drop a torn last line from a part file before appending to it again."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        with atomic_open(path, "wb") as handle:
            handle.write(keep)


# ----------------------------------------------------------------------------- summary


def _agg_dict(values: Sequence[float | None]) -> dict[str, Any]:
    a = aggregate([math.nan if v is None else v for v in values])

    def num(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {
        "mean": num(a.mean),
        "low": num(a.low),
        "high": num(a.high),
        "n": a.n,
        "n_excluded": a.n_excluded,
    }


def _best(direction: str, means: Mapping[str, float | None]) -> list[str]:
    """Method names ordered best first (NaN last)."""
    sign = -1.0 if direction == "higher" else 1.0
    return sorted(
        means, key=lambda m: (means[m] is None, sign * (means[m] if means[m] is not None else 0))
    )


def summarize(
    records: Mapping[int, Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[str],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Aggregates per measure and method from the per-batch records.

    For each measure: the mean with its 95 % interval over units (NaN units excluded and
    counted), per-level aggregates for curves, the best method by the measure's direction,
    the runner-up and the paired difference best - runner-up over the same units (``clear``
    when its interval excludes 0), and ``subsets``: the aggregates over units of
    single-object and of multi-object images (where class discrimination matters).
    """
    ordered = [records[b] for b in sorted(records)]
    result: dict[str, Any] = {}
    for meas in measures_for(metrics):
        kind = "second" if meas.target == "second" else "gt"
        per_method: dict[str, list] = {m: [] for m in methods}
        curves: dict[str, list] = {m: [] for m in methods}
        targets: list[int] = []
        multi: list[bool] = []
        levels = None
        for rec in ordered:
            scores = rec.get("scores", {}).get(meas.key, {})
            for m in methods:
                per_method[m].extend(scores.get(m, []))
                curves[m].extend(rec.get("curves", {}).get(meas.key, {}).get(m, []))
            if scores:
                targets.extend(rec["units"][kind]["target"])
                counts: dict[str, int] = {}
                for img in rec["units"]["gt"]["image"]:
                    counts[img] = counts.get(img, 0) + 1
                multi.extend(counts.get(img, 0) >= 2 for img in rec["units"][kind]["image"])
            levels = rec.get("levels", {}).get(meas.key, levels)
        entry: dict[str, Any] = {
            "metric": meas.metric,
            "target": meas.target,
            "direction": meas.direction,
            "title": meas.title,
            "score": meas.score,
            "level_name": meas.level_name,
            "levels": levels,
            "methods": {},
        }
        for m in methods:
            stats = _agg_dict(per_method[m])
            if levels is not None and curves[m]:
                cols = list(zip(*curves[m], strict=True))
                stats["curve"] = [_agg_dict(c) for c in cols]
            if meas.key == "pointing_game" and targets:
                stats["class_mean"] = _class_mean(per_method[m], targets, len(classes))
            if len(multi) == len(per_method[m]):
                stats["subsets"] = {
                    name: _agg_dict(
                        [v for v, f in zip(per_method[m], multi, strict=True) if f == flag]
                    )
                    for name, flag in (("single_object", False), ("multi_object", True))
                }
            entry["methods"][m] = stats
        order = _best(meas.direction, {m: entry["methods"][m]["mean"] for m in methods})
        entry["ranking"] = order
        entry["best"] = order[0] if entry["methods"][order[0]]["mean"] is not None else None
        entry["runner_up"] = order[1] if len(order) > 1 else None
        if entry["best"] and entry["runner_up"]:
            a, b = per_method[entry["best"]], per_method[entry["runner_up"]]
            diff = [
                math.nan if (p is None or q is None) else p - q for p, q in zip(a, b, strict=True)
            ]
            entry["best_vs_runner_up"] = _agg_dict(diff)
            d = entry["best_vs_runner_up"]
            entry["clear"] = bool(
                d["low"] is not None and (d["low"] > 0 or d["high"] < 0) and d["mean"] != 0
            )
        result[meas.key] = entry
    return result


def _class_mean(scores: Sequence[float | None], targets: Sequence[int], k: int) -> float | None:
    sums, counts = [0.0] * k, [0] * k
    for s, t in zip(scores, targets, strict=True):
        if s is not None:
            sums[t] += s
            counts[t] += 1
    per = [s / c for s, c in zip(sums, counts, strict=True) if c]
    return sum(per) / len(per) if per else None


def model_accuracy(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """How often the top-1 class is one of the image's classes, for one- and multi-class images.

    Returns ``{"single": {"images", "top1"}, "multi": {...}}`` (``top1`` None without images).
    """
    counts = {"single": [0, 0], "multi": [0, 0]}
    for rec in records.values():
        units = rec["units"]["gt"]
        present: dict[str, set[int]] = {}
        top: dict[str, int] = {}
        for img, t, p in zip(units["image"], units["target"], units["predicted"], strict=True):
            present.setdefault(img, set()).add(int(t))
            top[img] = int(p)
        for img, classes in present.items():
            c = counts["single" if len(classes) == 1 else "multi"]
            c[0] += 1
            c[1] += int(top[img] in classes)
    return {k: {"images": n, "top1": (hit / n if n else None)} for k, (n, hit) in counts.items()}


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def write_csv(path: Path, metrics: Mapping[str, Any]) -> Path:
    """One row per measure, method and level (``level`` empty for the summary score)."""
    fields = ["measure", "target", "direction", "method", "level", "mean", "ci_low", "ci_high"]
    fields += ["n", "n_excluded", "best"]
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for key, entry in metrics.items():
            for m, st in entry["methods"].items():
                base = [key, entry["target"], entry["direction"], m]
                best = int(m == entry["best"])
                row = [_fmt(st["mean"]), _fmt(st["low"]), _fmt(st["high"]), st["n"]]
                writer.writerow([*base, "", *row, st["n_excluded"], best])
                for lv, c in zip(entry["levels"] or [], st.get("curve", []), strict=False):
                    row = [_fmt(c["mean"]), _fmt(c["low"]), _fmt(c["high"]), c["n"]]
                    writer.writerow([*base, lv, *row, c["n_excluded"], ""])
    return path


PLOTS: dict[str, tuple[str, str, str]] = {
    "extended_pointing_game": (
        "pointing_game_curve.png",
        "energy level E (share of positive relevance kept)",
        "pointing accuracy",
    ),
    "patch_masking": ("patch_masking.png", "patch size p (pixels)", "change in probability"),
    "patch_masking_second": (
        "patch_masking_second.png",
        "patch size p (pixels)",
        "change in probability",
    ),
    "deletion": ("deletion_curve.png", "fraction of pixels deleted", "target probability"),
    "insertion": ("insertion_curve.png", "fraction of pixels inserted", "target probability"),
}

PLOT_TITLES: dict[str, str] = {
    "extended_pointing_game": "Extended pointing game (cf. Fig. 13)",
    "patch_masking": "Patch masking, ground truth (cf. Fig. 11)",
    "patch_masking_second": "Patch masking, 2nd target (cf. Fig. 11)",
    "deletion": "Deletion curve",
    "insertion": "Insertion curve",
}


def write_plots(out: Path, metrics: Mapping[str, Any]) -> dict[str, Path]:
    """Curve plots (one line per method, 95 % bands) for every measure with levels."""
    from ..viz import plot_curves

    written = {}
    for key, (name, xlabel, ylabel) in PLOTS.items():
        entry = metrics.get(key)
        if not entry or not entry.get("levels"):
            continue
        curves, bands = {}, {}
        for m, st in entry["methods"].items():
            if "curve" not in st:
                continue
            label = METHOD_LABELS.get(m, m)
            curves[label] = [np.nan if c["mean"] is None else c["mean"] for c in st["curve"]]
            low = [np.nan if c["low"] is None else c["low"] for c in st["curve"]]
            high = [np.nan if c["high"] is None else c["high"] for c in st["curve"]]
            bands[label] = (low, high)
        if not curves:
            continue
        written[key] = plot_curves(
            entry["levels"],
            curves,
            xlabel=xlabel,
            ylabel=ylabel,
            title=PLOT_TITLES[key],
            path=out / name,
            ci=bands,
            best="max" if entry["direction"] == "higher" else "min",
        )
    return written


def write_outputs(
    out: Path,
    records: Mapping[int, Mapping[str, Any]],
    cfg: EvalConfig,
    bundle: ModelBundle,
    methods: Sequence[str],
    skipped: Sequence[str],
    metrics: Sequence[str],
    seconds: float,
    reused: int = 0,
) -> dict[str, Any]:
    """Write ``results.jsonl`` (merged), ``metrics.json``, ``metrics.csv`` and the plots.

    ``seconds`` is this invocation's time; ``reused`` the number of batches it found on disk.
    """
    with atomic_open(out / "results.jsonl", "w", encoding="utf-8") as handle:
        for b in sorted(records):
            handle.write(json.dumps(records[b], allow_nan=False) + "\n")
    for part in sorted((out / "parts").glob("*.jsonl")):
        part.unlink()
    summary = summarize(records, methods, metrics, bundle.classes)
    n_units = {
        kind: sum(len(r["units"][kind]["target"]) for r in records.values())
        for kind in ("gt", "second")
    }
    data = {
        "settings": {**cfg.identity(), "weights": bundle.weights},
        "model": bundle.name,
        "classes": list(bundle.classes),
        "methods": list(methods),
        "method_labels": {m: METHOD_LABELS.get(m, m) for m in methods},
        "skipped_methods": list(skipped),
        "n_images": sum(len(r["images"]) for r in records.values()),
        "n_units": n_units,
        "protocol": {
            "maps": "positive relevance summed over colour channels (sglrp.heatmap)",
            "extended_pointing_game": "ground truth = bounding boxes of the target class",
            "maps_without_positive_relevance": "score 0 in the extended pointing game and "
            "relevance mass (they locate nothing); counted in empty_maps",
            "pointing_game_tolerance_px": None,
            "patch_baseline": "dataset mean (0 in normalised space)",
            "confidence_keep_top": CONFIDENCE_KEEP_TOP,
            "deletion_steps": cfg.steps,
        },
        "metrics": summary,
        "timing": {"seconds": round(seconds, 2), "batches": len(records), "reused": reused},
    }
    if records:
        h = bundle.size
        data["protocol"]["pointing_game_tolerance_px"] = round(15.0 * h / 224.0, 3)
    data["model_accuracy"] = model_accuracy(records)
    data["empty_maps"] = {
        m: sum(sum(r.get("empty", {}).get(m, [])) for r in records.values()) for m in methods
    }
    write_json(out / "metrics.json", data)
    write_csv(out / "metrics.csv", summary)
    write_plots(out, summary)
    return data


# ----------------------------------------------------------------------------- run


def run(
    cfg: EvalConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    restart_on_change: bool = False,
) -> dict[str, Any] | None:
    """Evaluate, resuming from ``out`` when it holds finished batches of the same settings.

    Under ``torchrun`` each rank computes its share of the batches and rank 0 merges.
    Results of different settings in ``out`` are an error, or are discarded with
    ``restart_on_change``.

    Returns
    -------
    dict or None
        The ``metrics.json`` content on rank 0, ``None`` on the other ranks.
    """
    start = time.perf_counter()
    if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {cfg.steps!r}")
    methods, skipped = resolve_methods(cfg.methods)
    metrics = resolve_metrics(cfg.metrics)
    out = Path(out)
    with distributed.setup(cfg.device) as info:
        say = (log or (lambda s: print(s, file=sys.stderr))) if info.is_root else (lambda s: None)
        bundle = load_model(cfg.model)
        bundle.model.to(info.device)
        source = open_data(cfg.data, cfg.n, cfg.seed, bundle)
        plan = batches(len(source), cfg.batch_size)
        identity = {**cfg.identity(), "weights": bundle.weights}
        changed = _check_run(out, identity, restart_on_change)
        distributed.barrier(info)
        if info.is_root:
            if changed:
                say(f"{out} holds results of other settings; starting afresh")
                clear_state(out)
            write_json(out / "run.json", {"settings": identity})
        distributed.barrier(info)
        known = read_records(out)
        reused = len(known)
        for b, rec in known.items():
            expected = [source.ids[i] for i in plan[b]] if b < len(plan) else None
            if rec.get("images") != expected:
                raise ValueError(
                    f"{out} holds results for other images (batch {b}); "
                    "pass a new --out folder or delete the old one"
                )
        distributed.barrier(info)
        mine = distributed.shard(list(range(len(plan))), info)
        todo = [b for b in mine if b not in known]
        if known:
            say(f"resuming: {len(known)} of {len(plan)} batches already done in {out}")
        part = out / "parts" / f"rank{info.rank}.jsonl"
        part.parent.mkdir(parents=True, exist_ok=True)
        _rewrite_valid(part)
        with (
            open(part, "a", encoding="utf-8") as handle,
            tqdm(
                total=len(todo),
                desc=f"evaluating {len(methods)} methods",
                unit="batch",
                disable=not (progress and info.is_root),
                file=sys.stderr,
            ) as bar,
        ):
            for b in todo:
                rec = compute_batch(bundle, source, plan[b], cfg, methods, metrics, b, info.device)
                handle.write(json.dumps(rec, allow_nan=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                known[b] = rec
                bar.update(1)
        gathered = distributed.gather_to_root([known[b] for b in mine], info)
        if not info.is_root:
            return None
        merged = dict(known)
        for recs in gathered or []:
            for rec in recs:
                merged[int(rec["batch"])] = rec
        missing = [b for b in range(len(plan)) if b not in merged]
        if missing:
            raise RuntimeError(f"batches {missing[:5]} are missing after the run; run it again")
        seconds = time.perf_counter() - start
        return write_outputs(out, merged, cfg, bundle, methods, skipped, metrics, seconds, reused)
