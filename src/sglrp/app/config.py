"""Settings of an evaluation run: the measures reported, the configuration, name checks.

Method names and labels come from the method registry (:mod:`sglrp.methods`); the metrics
from :mod:`sglrp.metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..methods import available, get
from ..metrics import DEFAULT_ENERGIES, DEFAULT_SIZES

__all__ = [
    "DEFAULT_METHODS",
    "MEASURES",
    "METRIC_NAMES",
    "PAPER_METHODS",
    "REPRODUCE_METHODS",
    "TRANSFORMER_METHODS",
    "EvalConfig",
    "Measure",
    "measures_for",
    "method_label",
    "resolve_methods",
    "resolve_metrics",
]

#: The methods the SGLRP paper compares (``sglrp explain``'s default).
PAPER_METHODS: tuple[str, ...] = ("sglrp", "clrp", "lrp", "guided_gradcam", "relevance_cam")
#: ``sglrp evaluate``'s default: the paper's methods and the random baseline.
DEFAULT_METHODS: tuple[str, ...] = (*PAPER_METHODS, "random")
#: Baselines of the transformer literature, evaluated in addition on a model with attention:
#: attention rollout (Abnar & Zuidema 2020), gradient-weighted rollout (Chefer et al. 2021)
#: and Grad-CAM on the last block's patch tokens.
TRANSFORMER_METHODS: tuple[str, ...] = ("attention_rollout", "gradient_rollout", "vit_gradcam")
#: ``sglrp reproduce``'s methods: also Relevance-CAM at the network's middle stage
#: (``relevance_cam_mid``), beside ``relevance_cam`` at the last convolution's activation.
REPRODUCE_METHODS: tuple[str, ...] = (*PAPER_METHODS, "relevance_cam_mid", "random")

#: Metric names accepted by ``--metrics`` (the keys of ``sglrp.metrics.METRICS``).
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
        The :mod:`sglrp.metrics` metric.
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
        Any :func:`sglrp.loading.load_model` spec: a shipped model, a zoo name with
        ``weights``, a ``sglrp train`` weights file, TorchScript or ``module:factory``.
    weights
        ``state_dict`` file of a zoo name or a factory (its SHA-256 is part of the run's
        identity, not its path).
    labels
        Class-names file for a model that has none.
    random_weights
        Seed of random weights asked for on purpose (``--random-weights``).
    data
        ``"builtin"`` (generated ``multi`` and ``single`` images) or a VOC folder.
    methods, metrics
        Names (registered methods, :func:`sglrp.methods.available`; :data:`METRIC_NAMES`).
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
    weights: str | None = None
    labels: str | None = None
    random_weights: int | None = None
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
        d.pop("weights")  # the runner adds the weights' SHA-256
        for key in ("labels", "random_weights"):  # unset: as in runs before these existed
            if d[key] is None:
                d.pop(key)
        if self.labels is not None:
            d["labels"] = str(Path(self.labels).resolve())
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


def resolve_methods(spec: str | Sequence[str]) -> list[str]:
    """Registered method names of a comma-separated list (or sequence), as registered.

    Unknown names raise ``ValueError`` naming the registered methods
    (:func:`sglrp.methods.get`).
    """
    return list(dict.fromkeys(get(name).name for name in _split_names(spec, "methods")))


def method_label(name: str) -> str:
    """A method's label for tables and plots: the registry's, or the name if unregistered."""
    return get(name).label if name in available() else name


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
