"""One batch of an evaluation: every method's maps for every unit, scored by every metric.

Units: one per class present in an image (ground truth) and, for patch masking, one per
image for its second most probable class. The metrics are a list of :class:`MapMetric`
(scored on each method's ground-truth maps) and :class:`JointMetric` (scored on all methods'
maps at once); a batch runs those the configuration selects, in list order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._guard import preserved
from ..api import explain, heatmap
from ..data import to_tensor
from ..loading import ModelBundle
from ..methods import get
from ..metrics import (
    CLOSED_FORM,
    average_drop,
    boxes_to_masks,
    deletion,
    extended_pointing_game,
    insertion,
    patch_masking,
    pointing_game,
    random_expectation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    second_most_probable,
)
from ..presets import bounds_from_normalization, default_preset
from .config import CONFIDENCE_KEEP_TOP, FORWARD_BATCH, EvalConfig
from .sources import DataSource

__all__ = [
    "JOINT_METRICS",
    "MAP_METRICS",
    "JointMetric",
    "MapMetric",
    "Scored",
    "batch_seed",
    "compute_batch",
    "display_maps",
    "expected_scores",
    "explain_relevance",
]


def class_masks(sample: Any, label: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(object mask, box mask) of all objects of class ``label`` in ``sample``."""
    objs = [o for o in sample.objects if o.label == label]
    boxes = torch.tensor([list(o.box) for o in objs], dtype=torch.long)
    box = boxes_to_masks(boxes[None], h, w)[0].numpy()
    if all(o.mask is not None for o in objs):
        mask = np.any(np.stack([np.asarray(o.mask, dtype=bool) for o in objs]), axis=0)
    else:
        mask = box
    return mask, box


def clean(values: Tensor) -> list:
    """Tensor to nested lists of floats with NaN as None (valid JSON)."""
    arr = values.detach().to(torch.float64).cpu().numpy()
    out = np.where(np.isnan(arr), None, arr).tolist()
    return out


def explain_relevance(
    bundle: ModelBundle, x: Tensor, targets: Tensor, method: str, seed: int = 0
) -> Tensor:
    """Relevance of one method as the runner computes it, (U, C, H, W) or (U, 1, H, W).

    LRP methods use the Z^B bounds of the model's normalisation and the rules of
    :func:`sglrp.presets.default_preset` (the paper's ``dtd`` on CNNs, ``epsilon-cp`` on
    ViTs, ``epsilon-plus`` on hybrid ViTs); ``random`` uses ``seed``;
    every other method its defaults. Maps smaller than the input are upsampled bilinearly.
    """
    record = get(method)
    options: dict[str, Any] = {}
    if record.takes_rules:
        low, high = bounds_from_normalization(bundle.mean, bundle.std)
        options["bounds"] = (low.to(x.device), high.to(x.device))
        options["rules"] = default_preset(bundle.model)
    if "seed" in record.options:
        options["seed"] = seed
    r = explain(bundle.model, x, targets, method=method, **options)
    r = r.detach()
    if r.shape[-2:] != x.shape[-2:]:
        r = torch.nn.functional.interpolate(r, size=x.shape[-2:], mode="bilinear")
    return r


def display_maps(bundle: ModelBundle, x: Tensor, targets: Tensor, method: str, seed: int) -> Tensor:
    """(U, H, W) display maps (positive relevance summed over channels) of one method."""
    return heatmap(explain_relevance(bundle, x, targets, method, seed), normalize=False)


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of the random baseline for one batch (independent of sharding)."""
    return (int(seed) * 1_000_003 + int(batch_index)) % (2**63)


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Scored:
    """Per-unit scores of one measure and method (curves and their levels for curve measures).

    ``zero`` marks units whose map has no positive relevance where the measure counts such a
    map as a miss: their scores (and curves) are set to 0.
    """

    scores: Tensor
    curves: Tensor | None = None
    levels: Tensor | None = None
    zero: Tensor | None = None

    @classmethod
    def of(cls, result: Any, curve: bool = False, zero: Tensor | None = None) -> Scored:
        """From a metric result (``scores``; ``curves`` and ``levels`` when ``curve``)."""
        if curve:
            return cls(result.scores, result.curves, result.levels, zero)
        return cls(result.scores, zero=zero)


@dataclass
class Units:
    """The ground-truth units of a batch, as the metrics read them."""

    model: nn.Module
    x: Tensor
    target: Tensor
    obj: Tensor
    box: Tensor
    tolerance: float
    cfg: EvalConfig
    chosen: frozenset[str]


@dataclass(frozen=True)
class MapMetric:
    """A metric scored on one method's ground-truth maps ``(U, H, W)``.

    ``score(units, maps, empty)`` returns measure key -> :class:`Scored`; it runs when any
    of ``metrics`` (names of ``--metrics``) was chosen.
    """

    metrics: frozenset[str]
    score: Callable[[Units, Tensor, Tensor], dict[str, Scored]]


@dataclass(frozen=True)
class JointMetric:
    """A metric scored on every method's maps at once, on the units of one kind.

    ``score(model, x, maps, targets, cfg)`` returns method -> :class:`Scored` for ``key``.
    """

    metric: str
    key: str
    kind: str  # "gt" or "second"
    score: Callable[[nn.Module, Tensor, Mapping[str, Tensor], Tensor, EvalConfig], dict]


def _extended_pointing(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    res = extended_pointing_game(r, u.box, u.cfg.energies)
    return {"extended_pointing_game": Scored.of(res, True, empty & u.box.flatten(1).any(dim=1))}


def _pointing(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    return {"pointing_game": Scored.of(pointing_game(r, u.obj, tolerance=u.tolerance))}


def _mass(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    res = relevance_mass_accuracy(r, u.obj)
    return {"relevance_mass_accuracy": Scored.of(res, zero=empty & u.obj.flatten(1).any(dim=1))}


def _rank(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    return {"relevance_rank_accuracy": Scored.of(relevance_rank_accuracy(r, u.obj))}


def _confidence(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    res = average_drop(
        u.model, u.x, r, u.target, keep_top=CONFIDENCE_KEEP_TOP, batch_size=FORWARD_BATCH
    )
    out = {}
    if "average_drop" in u.chosen:
        out["average_drop"] = Scored.of(res)
    if "increase_in_confidence" in u.chosen:
        out["increase_in_confidence"] = Scored(100.0 * (res.o > res.y).to(torch.float64))
    return out


def _deletion(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    res = deletion(u.model, u.x, r, u.target, steps=u.cfg.steps, batch_size=FORWARD_BATCH)
    return {"deletion": Scored.of(res, True)}


def _insertion(u: Units, r: Tensor, empty: Tensor) -> dict[str, Scored]:
    res = insertion(u.model, u.x, r, u.target, steps=u.cfg.steps, batch_size=FORWARD_BATCH)
    return {"insertion": Scored.of(res, True)}


def expected_scores(u: Units) -> dict[str, list]:
    """Per ground-truth unit, a uniformly random map's expected score on each chosen measure
    that has one in closed form (:func:`sglrp.metrics.random_expectation`): the boxes' area
    share for the extended pointing game, the share within the tolerance of the object for
    the pointing game, the object's area share for relevance mass and rank accuracy."""
    masks = {"extended_pointing_game": u.box}  # the SGLRP protocol points at boxes
    return {
        metric: clean(random_expectation(metric, masks.get(metric, u.obj), u.tolerance))
        for metric in sorted(CLOSED_FORM & u.chosen)
    }


def _patch_masking(
    model: nn.Module, x: Tensor, maps: Mapping[str, Tensor], t: Tensor, cfg: EvalConfig
) -> dict[str, Scored]:
    pm = patch_masking(model, x, dict(maps), t, sizes=cfg.sizes, batch_size=FORWARD_BATCH)
    return {m: Scored.of(pm[m], True) for m in maps}


#: Metrics on each method's ground-truth maps, in the order they run.
MAP_METRICS: list[MapMetric] = [
    MapMetric(frozenset({"extended_pointing_game"}), _extended_pointing),
    MapMetric(frozenset({"pointing_game"}), _pointing),
    MapMetric(frozenset({"relevance_mass_accuracy"}), _mass),
    MapMetric(frozenset({"relevance_rank_accuracy"}), _rank),
    MapMetric(frozenset({"average_drop", "increase_in_confidence"}), _confidence),
    MapMetric(frozenset({"deletion"}), _deletion),
    MapMetric(frozenset({"insertion"}), _insertion),
]

#: Metrics on all methods' maps at once, in the order they run.
JOINT_METRICS: list[JointMetric] = [
    JointMetric("patch_masking", "patch_masking", "gt", _patch_masking),
    JointMetric("patch_masking", "patch_masking_second", "second", _patch_masking),
]


# ----------------------------------------------------------------------------- batch


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
        -> per-unit curve) for the measures that have levels, ``levels``, ``expected``
        (measure -> per ground-truth unit: a uniformly random map's expected score, for the
        measures with a closed form) and ``empty`` (method -> per ground-truth unit: the map
        has no positive relevance).
    """
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
            mask, box = class_masks(s, label, h, w)
            gt_img.append(i)
            gt_cls.append(int(label))
            obj_masks.append(mask)
            box_masks.append(box)
    chosen = frozenset(metrics)
    want_second = any(j.kind == "second" and j.metric in chosen for j in JOINT_METRICS)
    sec_img = list(range(n)) if want_second else []
    sec_cls = second_most_probable(model, x).tolist() if want_second else []

    def unit_info(img: list[int], cls: list[int]) -> dict[str, list]:
        it = torch.tensor(img, dtype=torch.long, device=x.device)
        ct = torch.tensor(cls, dtype=torch.long, device=x.device)
        p = probs[it, ct] if img else torch.zeros(0, dtype=torch.float64)
        return {
            "image": [source.ids[indices[i]] for i in img],
            "target": cls,
            "prob": clean(p),
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
    seed = batch_seed(cfg.seed, batch_index)
    maps = {m: display_maps(bundle, xs, all_cls, m, seed) for m in methods}
    if u:
        units = Units(
            model,
            xs[:u],
            all_cls[:u],
            torch.from_numpy(np.stack(obj_masks)).to(x.device),
            torch.from_numpy(np.stack(box_masks)).to(x.device),
            15.0 * min(h, w) / 224.0,
            cfg,
            chosen,
        )
        record["expected"] = expected_scores(units)
        record["empty"] = {}
        for m, v in maps.items():
            r = v[:u]
            empty = ~(r.flatten(1) > 0).any(dim=1)
            record["empty"][m] = empty.tolist()
            for metric in MAP_METRICS:
                if metric.metrics & chosen:
                    for key, scored in metric.score(units, r, empty).items():
                        _put(record, key, m, scored)
    spans = {"gt": slice(0, u), "second": slice(u, None)}
    for joint in JOINT_METRICS:
        part = spans[joint.kind]
        if joint.metric not in chosen or xs[part].shape[0] == 0:
            continue
        part_maps = {m: v[part] for m, v in maps.items()}
        for m, scored in joint.score(model, xs[part], part_maps, all_cls[part], cfg).items():
            _put(record, joint.key, m, scored)
    return record


def _put(record: dict[str, Any], key: str, method: str, scored: Scored) -> None:
    """Store one measure's per-unit scores (and curve) of one method in ``record``."""
    scores = scored.scores.clone()
    if scored.zero is not None:  # no positive relevance: the map locates nothing, a miss
        scores[scored.zero] = 0.0
    record["scores"].setdefault(key, {})[method] = clean(scores)
    if scored.curves is not None:
        curves = scored.curves.clone()
        if scored.zero is not None:
            curves[scored.zero] = 0.0
        record["curves"].setdefault(key, {})[method] = clean(curves)
        record["levels"][key] = clean(scored.levels)
