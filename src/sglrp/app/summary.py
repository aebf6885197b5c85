"""Aggregates of an evaluation: per measure and method, with 95 % intervals, the best method,
subsets of single- and multi-object images, the model's accuracy, and ``metrics.csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._guard import preserved
from ..atomic import atomic_open
from ..loading import ModelBundle
from ..methods import available, get
from ..metrics import CLOSED_FORM, RANDOM_EXPECTATIONS, aggregate
from ..presets import default_preset
from .config import CONFIDENCE_KEEP_TOP, EvalConfig, measures_for, method_label

__all__ = [
    "EXPECTED_ROW",
    "method_layers",
    "metrics_document",
    "model_accuracy",
    "summarize",
    "write_csv",
]

#: Method column of the expected-random rows in ``metrics.csv``.
EXPECTED_ROW = "random_expected"


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
    when its interval excludes 0), and ``subsets``: the aggregates over the units of images
    with 1, 2, 3+ and 2+ classes (where class discrimination matters) and, for the
    second-class measures, over units whose second class is present in / absent from the
    image; ``random_expectation``: what a uniformly random map is expected to score (mean
    over the same units of the per-unit closed form, with its subsets, or ``mean`` None and
    an explanation where only the Random row estimates it).
    """
    ordered = [records[b] for b in sorted(records)]
    result: dict[str, Any] = {}
    for meas in measures_for(metrics):
        kind = "second" if meas.target == "second" else "gt"
        per_method: dict[str, list] = {m: [] for m in methods}
        curves: dict[str, list] = {m: [] for m in methods}
        targets: list[int] = []
        membership: list[dict[str, bool]] = []
        expected: list[float | None] | None = []
        levels = None
        for rec in ordered:
            scores = rec.get("scores", {}).get(meas.key, {})
            for m in methods:
                per_method[m].extend(scores.get(m, []))
                curves[m].extend(rec.get("curves", {}).get(meas.key, {}).get(m, []))
            if scores:
                targets.extend(rec["units"][kind]["target"])
                membership.extend(_subsets_of_units(rec["units"], kind))
                chance = rec.get("expected", {}).get(meas.key)
                if expected is not None and chance is not None:
                    expected.extend(chance)
                else:  # a batch without it (a run from before it existed): none at all
                    expected = None
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
            if membership and len(membership) == len(per_method[m]):
                stats["subsets"] = {
                    name: _agg_dict(
                        [v for v, u in zip(per_method[m], membership, strict=True) if u[name]]
                    )
                    for name in membership[0]
                }
            entry["methods"][m] = stats
        entry["random_expectation"] = _expectation(meas.metric, expected, membership)
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


def _expectation(
    metric: str, values: Sequence[float | None] | None, membership: Sequence[Mapping[str, bool]]
) -> dict[str, Any]:
    """A uniformly random map's expected score on one measure: the explanation
    (:data:`sglrp.metrics.RANDOM_EXPECTATIONS`), and for a closed form the mean over units of
    the per-unit expectations, with the subsets; ``mean`` None where only the Random row
    estimates it."""
    out: dict[str, Any] = {
        "explanation": RANDOM_EXPECTATIONS.get(metric, "not stated"),
        "closed_form": metric in CLOSED_FORM,
    }
    if not values or len(values) != len(membership):
        return {**out, "mean": None}
    out.update(_agg_dict(values))
    out["subsets"] = {
        name: _agg_dict([v for v, u in zip(values, membership, strict=True) if u[name]])
        for name in membership[0]
    }
    return out


def _subsets_of_units(units: Mapping[str, Any], kind: str) -> list[dict[str, bool]]:
    """Per unit of ``kind`` in one batch record, which subsets it belongs to: by the number of
    classes in its image and, for second-class units, whether that class is in the image."""
    present: dict[Any, set[int]] = {}
    for img, cls in zip(units["gt"]["image"], units["gt"]["target"], strict=True):
        present.setdefault(img, set()).add(cls)
    out = []
    for img, cls in zip(units[kind]["image"], units[kind]["target"], strict=True):
        k = len(present.get(img, ()))
        member = {
            "single_object": k == 1,
            "two_classes": k == 2,
            "three_classes": k >= 3,
            "multi_object": k >= 2,
        }
        if kind == "second":
            member["second_present"] = cls in present.get(img, ())
            member["second_absent"] = cls not in present.get(img, ())
        out.append(member)
    return out


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
    """One row per measure, method and level (``level`` empty for the summary score), and
    per measure with a closed-form chance level a row ``random_expected``: a uniformly random
    map's expected score (its interval is over the units' expectations)."""
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
            chance = entry.get("random_expectation", {})
            if chance.get("mean") is not None:
                base = [key, entry["target"], entry["direction"], EXPECTED_ROW]
                row = [_fmt(chance["mean"]), _fmt(chance["low"]), _fmt(chance["high"])]
                writer.writerow([*base, "", *row, chance["n"], chance["n_excluded"], 0])
    return path


def method_layers(bundle: ModelBundle, methods: Sequence[str]) -> dict[str, str]:
    """The layer each method that works at one layer uses on the bundle's model (its
    registered ``layer_rule`` on a zero input of the model's size; the layers depend on the
    architecture, not on the image)."""
    rules = {m: get(m).layer_rule for m in methods if m in available()}
    rules = {m: r for m, r in rules.items() if r is not None}
    if not rules:
        return {}
    param = next(iter(bundle.model.parameters()), None)
    x = torch.zeros(
        1,
        len(bundle.mean),
        bundle.size,
        bundle.size,
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else "cpu",
    )
    with preserved(bundle.model):
        return {m: rule(bundle.model, x) for m, rule in rules.items()}


def run_identity(cfg: EvalConfig, bundle: ModelBundle) -> dict[str, Any]:
    """What makes two runs the same run: the settings, the weights' checksum and the rules
    chosen for the model (:func:`sglrp.presets.default_preset`)."""
    return {**cfg.identity(), "weights": bundle.weights, "rules": default_preset(bundle.model)}


def metrics_document(
    records: Mapping[int, Mapping[str, Any]],
    cfg: EvalConfig,
    bundle: ModelBundle,
    methods: Sequence[str],
    metrics: Sequence[str],
    seconds: float,
    reused: int = 0,
) -> dict[str, Any]:
    """The content of ``metrics.json``: settings, protocol, :func:`summarize`, accuracy, timing.

    ``seconds`` is this invocation's time; ``reused`` the number of batches it found on disk.
    """
    summary = summarize(records, methods, metrics, bundle.classes)
    n_units = {
        kind: sum(len(r["units"][kind]["target"]) for r in records.values())
        for kind in ("gt", "second")
    }
    data = {
        "settings": run_identity(cfg, bundle),
        "model": bundle.name,
        "provenance": bundle.provenance,
        "classes": list(bundle.classes),
        "methods": list(methods),
        "method_labels": {m: method_label(m) for m in methods},
        "method_layers": method_layers(bundle, methods),
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
            "random_expected": "a uniformly random map's expected score per measure "
            "(metrics.<measure>.random_expectation): computed per unit from the ground truth "
            "where it has a closed form, otherwise estimated by the Random row",
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
    return data
