"""Train the shape models on freshly generated images (every step sees new samples).

``train("shapes_vgg", "weights/shapes_vgg.pt")`` writes, each atomically and after every
epoch (so an interrupted run leaves a usable checkpoint):

* ``<out>``: the ``state_dict`` (``torch.save``; float32, or float16 with ``half=True``),
* ``<out stem>.json``: metadata (classes, mean, std, input size, sha256 of the weights file,
  the training settings and the per-epoch log),
* ``<out stem>.csv``: the per-epoch log (loss, accuracies, learning rate, time).

Each batch mixes single-object ``train`` images (one-hot targets) with 2-3 object
``train_multi`` images (target ``1/k`` on each present class), see ``multi_fraction``.
Validation uses held-out images: the ``single`` split and 2-object ``multi`` images, whose
random streams differ from the ``train`` split's.

A recipe may warm-start modules from a shipped model (``init``, checksum-verified): e.g. the
convolutional ``features`` of ``shapes_vgg`` start from those of ``shapes_vgg_gap``. The first
``head_epochs`` epochs then train only the other modules (the warm-started ones frozen, in
eval mode), after which everything trains, the warm-started modules at ``init_lr_scale``
times the learning rate.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from .atomic import atomic_open, atomic_path, write_json
from .data import CLASSES, MEAN, STD, generate, to_tensor
from .models.pretrained import pretrained

__all__ = [
    "DEFAULTS",
    "MODELS",
    "RECIPES",
    "evaluate_accuracy",
    "resolve_recipe",
    "sha256_file",
    "train",
]

from .recipes import DEFAULTS, MODELS, RECIPES, resolve_recipe  # noqa: F401 - public here too

VALIDATION_SEED_OFFSET = 1000
"""Validation images use ``seed + VALIDATION_SEED_OFFSET`` (and held-out splits)."""

_LOG_FIELDS = (
    "epoch",
    "steps",
    "images",
    "train_loss",
    "train_acc",
    "val_single_acc",
    "val_multi_top2",
    "lr",
    "seconds",
)


def _warm_start(model: nn.Module, init: str | dict[str, Any]) -> dict[str, Any]:
    """Copy the ``init["modules"]`` parameters and buffers of a shipped model into ``model``.

    ``init`` is a shipped model's name (its ``features`` are copied) or a dict with
    ``"model"``, ``"modules"`` and optionally ``"sha256"`` (the weights file's expected
    checksum). ``"modules"`` is a list of top-level module names present in both models, or a
    dict ``{target module: source module}`` (e.g. ``{"conv_proj": "features"}``: the hybrid
    ViT's stem starts from a VGG's ``features``); then the target's entries with a
    counterpart of the same shape in the source are copied and the rest (a stem's
    ``conv_last``) keep their initialisation. The shipped file is verified against its JSON
    by :func:`sglrp.models.pretrained`, and against ``"sha256"`` when given.

    Returns
    -------
    dict
        ``model``, ``sha256`` and ``modules`` of the source, for the metadata, and ``keys``:
        the state-dict entries copied.
    """
    spec = {"model": init, "modules": ["features"]} if isinstance(init, str) else dict(init)
    source = pretrained(spec["model"])
    digest = source.metadata["sha256"]
    expected = spec.get("sha256")
    if expected is not None and digest != expected:
        raise ValueError(
            f"init model {spec['model']!r} has weights sha256 {digest[:12]}..., the recipe "
            f"expects {expected[:12]}...; install the matching weights or pass --init none"
        )
    given = spec["modules"]
    renamed = dict(given) if isinstance(given, dict) else {m: m for m in given}
    target = model.state_dict()
    state = source.model.state_dict()
    copies: dict[str, str] = {}
    problems: list[str] = []
    for key in target:
        head, _, rest = key.partition(".")
        if head not in renamed:
            continue
        origin = f"{renamed[head]}.{rest}"
        if origin in state and state[origin].shape == target[key].shape:
            copies[key] = origin
        elif not isinstance(given, dict) or origin in state:
            problems.append(key)
    if not copies or problems:
        raise ValueError(
            f"init model {spec['model']!r} does not fit modules {given} of the trained model "
            f"({'no such modules' if not copies else 'differs at ' + ', '.join(problems[:3])})"
        )
    model.load_state_dict({k: state[o] for k, o in copies.items()}, strict=False)
    return {"model": spec["model"], "sha256": digest, "modules": given, "keys": list(copies)}


def _owners(keys: list[str]) -> list[str]:
    """Names of the modules that own the state-dict entries ``keys``."""
    return sorted({key.rpartition(".")[0] for key in keys})


def _freeze(model: nn.Module, modules: list[str], frozen: bool) -> None:
    """(Un)freeze ``modules``: no gradients and eval mode (batch norm keeps its statistics)."""
    for name in modules:
        module = model.get_submodule(name)
        module.requires_grad_(not frozen)
        if frozen:
            module.eval()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    single: list | None = None,
    multi: list | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Accuracy figures of ``model`` (put in eval mode) on generated samples.

    Parameters
    ----------
    model
        Classifier taking normalised ``(N, 3, H, W)`` batches (see :func:`sglrp.data.to_tensor`).
    single
        Single-object samples: top-1 accuracy (``single_top1``).
    multi
        Multi-object samples: the fraction of images whose ``k`` present classes are exactly
        the ``k`` most probable ones (``multi_topk``), ``k`` = objects in the image.
    batch_size
        Images per forward pass.

    Returns
    -------
    dict
        ``single_top1`` and/or ``multi_topk`` (fractions in [0, 1]).
    """
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        if single:
            hits = 0
            for i in range(0, len(single), batch_size):
                chunk = single[i : i + batch_size]
                pred = model(to_tensor(np.stack([s.image for s in chunk]))).argmax(1)
                hits += int((pred == torch.tensor([s.label for s in chunk])).sum())
            out["single_top1"] = hits / len(single)
        if multi:
            hits = 0
            for i in range(0, len(multi), batch_size):
                chunk = multi[i : i + batch_size]
                logits = model(to_tensor(np.stack([s.image for s in chunk])))
                hits += _topk_hits(logits, _soft_targets(chunk, logits.shape[1]))
            out["multi_topk"] = hits / len(multi)
    finally:
        model.train(was_training)
    return out


def _soft_targets(batch: list, num_classes: int) -> torch.Tensor:
    """Target distributions: ``1/k`` on each of the ``k`` classes present in an image."""
    target = torch.zeros(len(batch), num_classes)
    for row, sample in enumerate(batch):
        labels = sample.labels
        target[row, labels] = 1.0 / len(labels)
    return target


def _topk_hits(logits: torch.Tensor, target: torch.Tensor) -> int:
    """Images whose ``k`` present classes (``target > 0``) are the ``k`` most probable ones."""
    present = target > 0
    k = present.sum(dim=1)
    hits = 0
    for row, mask, count in zip(logits, present, k.tolist(), strict=True):
        hits += int(bool(mask[row.topk(count).indices].all()))
    return hits


class _BatchStream(IterableDataset):
    """Training batches ``(x, soft target)`` for steps ``first ... first + steps - 1``.

    Step ``t`` holds ``train`` images ``t * n_single ...`` and ``train_multi`` images
    ``t * n_multi ...``, so the stream does not depend on the number of loader workers.
    """

    def __init__(
        self, seed: int, size: int, n_single: int, n_multi: int, first: int, steps: int
    ) -> None:
        super().__init__()
        self.seed, self.size = seed, size
        self.n_single, self.n_multi = n_single, n_multi
        self.first, self.steps = first, steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(self.first, self.first + self.steps):
            batch = generate(
                "train", self.n_single, self.seed, self.size, start=step * self.n_single
            )
            if self.n_multi:
                batch += generate(
                    "train_multi", self.n_multi, self.seed, self.size, start=step * self.n_multi
                )
            x = to_tensor(np.stack([s.image for s in batch]))
            yield x, _soft_targets(batch, len(CLASSES))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def fmt(value: float | None) -> str:
    """``value`` with 4 decimals, or ``n/a`` for a metric that was not measured."""
    return "n/a" if value is None else f"{value:.4f}"


def _state_bytes(model: nn.Module, half: bool) -> bytes:
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if half and value.is_floating_point():
            value = value.half()
        state[key] = value.clone()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _write_csv(path: Path, log: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_LOG_FIELDS)
        writer.writeheader()
        writer.writerows(log)


def train(
    model_name: str,
    out_path: str | os.PathLike,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup: float | None = None,
    seed: int = 0,
    size: int = 64,
    threads: int | None = 2,
    workers: int = 1,
    val_single: int = 600,
    val_multi: int = 300,
    multi_fraction: float | None = None,
    half: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    model_kwargs: dict[str, Any] | None = None,
    init: str | dict[str, Any] | None = None,
    head_epochs: int | None = None,
    init_lr_scale: float | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on generated ``train`` images and write weights, metadata and log.

    Parameters
    ----------
    model_name
        A key of :data:`MODELS` (``"shapes_vgg"``, ``"shapes_vgg_gap"``, ``"shapes_resnet"``).
    out_path
        Weights file to write (``.pt``); the ``.json`` metadata and ``.csv`` log go beside it.
    epochs, steps_per_epoch, batch_size
        Training length; every step draws ``batch_size`` new images (no image repeats).
        Every setting left ``None`` is the shipped weights' (:data:`RECIPES`, else
        :data:`DEFAULTS`: 10 epochs of 200 steps of 128 images).
    lr, weight_decay
        AdamW peak learning rate (one-cycle schedule) and weight decay.
    warmup
        Fraction of the steps spent raising the learning rate from ``lr / 20`` to ``lr``.
    seed
        Seeds the model initialisation, dropout and the image stream.
    size
        Image side in pixels.
    threads
        ``torch.set_num_threads`` value during training (``None``: leave unchanged).
    workers
        Loader processes generating images while the model trains (0: generate in-process).
    val_single, val_multi
        Held-out single-object and 2-object images evaluated after each epoch (0: skip).
    multi_fraction
        Fraction of each batch drawn from the ``train_multi`` split (2 or 3 objects, soft
        target ``1/k`` on each present class); the rest are ``train`` single-object images.
        Without it, a softmax trained on single objects suppresses the second object.
    half
        Store the weights as float16 (loaded back as float32 by ``sglrp.models.pretrained``).
    progress
        Show a tqdm progress bar.
    log
        Called with one line per epoch (``None``: silent).
    model_kwargs
        Keyword arguments for the model builder, over the recipe's (:data:`RECIPES`).
    init
        Warm start: a shipped model's name (its ``features`` are copied), a dict
        ``{"model", "modules", "sha256"}`` (see :func:`_warm_start`), or ``"none"``.
    head_epochs
        With ``init``: epochs at the start in which the warm-started modules are frozen.
    init_lr_scale
        With ``init``: their peak learning rate is ``init_lr_scale * lr``.

    Returns
    -------
    dict
        The metadata written to the ``.json`` file.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    recipe = resolve_recipe(
        model_name,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        multi_fraction=multi_fraction,
        model_kwargs=model_kwargs,
        init=init,
        head_epochs=head_epochs,
        init_lr_scale=init_lr_scale,
    )
    epochs, steps_per_epoch = recipe["epochs"], recipe["steps_per_epoch"]
    batch_size, lr, weight_decay = recipe["batch_size"], recipe["lr"], recipe["weight_decay"]
    warmup, multi_fraction = recipe["warmup"], recipe["multi_fraction"]
    model_kwargs, init = recipe["model_kwargs"], recipe["init"]
    head_epochs, init_lr_scale = recipe["head_epochs"], recipe["init_lr_scale"]
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(head_epochs, int) or not 0 <= head_epochs < epochs:
        raise ValueError(
            f"head_epochs must be an int in [0, epochs) = [0, {epochs}), got {head_epochs!r}; "
            "pass head_epochs (--head-epochs) below the number of epochs"
        )
    if head_epochs and init is None:
        raise ValueError("head_epochs freezes the warm-started modules; it needs init")
    if not init_lr_scale > 0:
        raise ValueError(f"init_lr_scale must be positive, got {init_lr_scale!r}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    if not 0.0 <= multi_fraction < 1.0:
        raise ValueError(f"multi_fraction must be in [0, 1), got {multi_fraction!r}")
    n_multi = int(round(batch_size * multi_fraction))
    n_single = batch_size - n_multi
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    if not 0.0 < warmup < 1.0:
        raise ValueError(f"warmup must be in (0, 1), got {warmup!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    out_path = Path(out_path)
    if out_path.suffix != ".pt":
        raise ValueError(f"out_path must end in .pt, got {str(out_path)!r}; e.g. model.pt")
    meta_path, csv_path = out_path.with_suffix(".json"), out_path.with_suffix(".csv")

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        model = MODELS[model_name](num_classes=len(CLASSES), **(model_kwargs or {}))
        warm = _warm_start(model, init) if init is not None else None
        model = model.to(memory_format=torch.channels_last)
        if warm is None:
            groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": lr}]
        else:
            copied = set(warm["keys"])
            inside = {id(p) for name, p in model.named_parameters() if name in copied}
            groups = [
                {"params": [p for p in model.parameters() if id(p) in inside]},
                {"params": [p for p in model.parameters() if id(p) not in inside]},
            ]
            groups[0]["lr"], groups[1]["lr"] = lr * init_lr_scale, lr
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        total = epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in groups],
            total_steps=total,
            pct_start=warmup,
            div_factor=20.0,
        )
        vseed = seed + VALIDATION_SEED_OFFSET
        v_single = generate("single", val_single, vseed, size) if val_single else []
        v_multi = generate("multi", val_multi, vseed, size, num_objects=2) if val_multi else []
        settings = {
            "model": model_name,
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "seed": seed,
            "size": size,
            "multi_fraction": multi_fraction,
            "threads": threads,
            "workers": workers,
            "model_kwargs": model_kwargs or {},
            "init": None if warm is None else {k: v for k, v in warm.items() if k != "keys"},
            "head_epochs": head_epochs,
            "init_lr_scale": init_lr_scale,
            "data": f"per step {n_single} new 'train' and {n_multi} new 'train_multi' images "
            f"(seed {seed}); validation: 'single' and 2-object 'multi' images (seed {vseed})",
        }
        history: list[dict[str, Any]] = []
        start_time = time.perf_counter()
        step = 0
        meta: dict[str, Any] = {}
        for epoch in range(1, epochs + 1):
            model.train()
            if warm is not None:
                _freeze(model, _owners(warm["keys"]), frozen=epoch <= head_epochs)
            loss_sum, hits, seen = 0.0, 0, 0
            stream = _BatchStream(seed, size, n_single, n_multi, step, steps_per_epoch)
            loader = DataLoader(
                stream,
                batch_size=None,
                num_workers=workers,
                prefetch_factor=4 if workers else None,
            )
            bar = tqdm(
                loader,
                total=steps_per_epoch,
                desc=f"{model_name} epoch {epoch}/{epochs}",
                disable=not progress,
                leave=False,
            )
            for x, target in bar:
                x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x)
                loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                if not math.isfinite(loss.item()):
                    raise ValueError(
                        f"training diverged (loss {loss.item()}) at step {step}; lower --lr"
                    )
                loss_sum += loss.item() * len(x)
                hits += _topk_hits(logits.detach(), target)
                seen += len(x)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{hits / seen:.3f}")
            bar.close()
            scores = evaluate_accuracy(model, v_single, v_multi)
            entry = {
                "epoch": epoch,
                "steps": step,
                "images": step * batch_size,
                "train_loss": round(loss_sum / seen, 5),
                "train_acc": round(hits / seen, 5),
                "val_single_acc": _rounded(scores.get("single_top1")),
                "val_multi_top2": _rounded(scores.get("multi_topk")),
                "lr": float(f"{scheduler.get_last_lr()[-1]:.3g}"),
                "seconds": round(time.perf_counter() - start_time, 1),
            }
            history.append(entry)
            if log is not None:
                log(
                    f"{model_name} epoch {epoch}/{epochs}: loss {entry['train_loss']:.4f} "
                    f"train acc {entry['train_acc']:.4f} val single {fmt(entry['val_single_acc'])}"
                    f" val multi top-2 {fmt(entry['val_multi_top2'])} ({entry['seconds']:.0f} s)"
                )
            meta = _save(model, model_name, out_path, meta_path, csv_path, settings, history, half)
        return meta
    finally:
        torch.set_num_threads(old_threads)


def _save(
    model: nn.Module,
    model_name: str,
    out_path: Path,
    meta_path: Path,
    csv_path: Path,
    settings: dict[str, Any],
    history: list[dict[str, Any]],
    half: bool,
) -> dict[str, Any]:
    data = _state_bytes(model, half)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    last = history[-1]
    meta = {
        "name": out_path.stem,
        "architecture": model_name,
        "classes": list(CLASSES),
        "mean": list(MEAN),
        "std": list(STD),
        "input_size": [3, settings.get("size", 64), settings.get("size", 64)],
        "weights": out_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "dtype": "float16" if half else "float32",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "model_kwargs": settings["model_kwargs"],
        "training": {
            **settings,
            "images_seen": last["images"],
            "seconds": last["seconds"],
            "torch": torch.__version__,
            "final": {k: last[k] for k in ("train_loss", "train_acc", "val_single_acc")}
            | {"val_multi_top2": last["val_multi_top2"]},
        },
        "log": history,
    }
    _write_csv(csv_path, history)
    write_json(meta_path, meta)
    for path in (out_path, meta_path, csv_path):
        path.chmod(0o644)  # temporary files are created private; these are shared artefacts
    return meta
