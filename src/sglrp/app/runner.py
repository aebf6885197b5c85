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
``OUT/parts/rank<r>.jsonl`` (synced; each line carries the run's identity hash), so an
interrupted run started again with the same settings skips every batch already on disk. The
folder holds one run only (:mod:`~sglrp.app.store`: ``run.json`` written first, a lock,
another run's results refused or moved aside with ``--restart``, never deleted). At the end
rank 0 merges everything into ``OUT/results.jsonl`` and writes ``metrics.json`` (aggregates
with 95 % intervals, direction, best method), ``metrics.csv`` and the curve plots. Under
``torchrun`` the batches are shared round-robin between the ranks
(:mod:`sglrp.app.distributed`); the result equals the single-process one because every
batch is formed exactly as in a single process.

The parts: :mod:`~sglrp.app.config` (settings, measures), :mod:`~sglrp.app.sources` (images),
:mod:`~sglrp.app.batch` (maps and metrics of one batch), :mod:`~sglrp.app.store` (the run
directory), :mod:`~sglrp.app.summary` (aggregates), :mod:`~sglrp.app.plots` (curves).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import write_json
from ..loading import ModelBundle
from . import distributed
from .batch import compute_batch
from .config import EvalConfig, resolve_methods, resolve_metrics
from .plots import write_plots
from .sources import batches, load_run_model, open_data
from .store import (
    RunDirError,
    append_record,
    open_part,
    prepare,
    read_records,
    run_lock,
    write_results,
)
from .summary import metrics_document, run_identity, write_csv

__all__ = ["load_model", "run", "write_outputs"]


def load_model(cfg: EvalConfig) -> ModelBundle:
    """The model of ``cfg`` with its class names (:func:`sglrp.app.sources.load_run_model`)."""
    return load_run_model(cfg.model, cfg.weights, cfg.labels, cfg.random_weights)


def run(
    cfg: EvalConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    restart: bool = False,
    kind: str = "evaluate",
) -> dict[str, Any] | None:
    """Evaluate, resuming from ``out`` when it holds finished batches of the same run.

    Under ``torchrun`` each rank computes its share of the batches and rank 0 merges. Rank 0
    holds the folder's lock for the whole run and checks the folder
    (:func:`sglrp.app.store.prepare`): another run's results there are an error, or are moved
    to ``out/previous-<time>/`` with ``restart``. ``kind`` names the command in ``run.json``.

    Returns
    -------
    dict or None
        The ``metrics.json`` content on rank 0, ``None`` on the other ranks.
    """
    start = time.perf_counter()
    if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {cfg.steps!r}")
    methods = resolve_methods(cfg.methods)
    metrics = resolve_metrics(cfg.metrics)
    out = Path(out)
    with distributed.setup(cfg.device) as info, ExitStack() as held:
        say = (log or (lambda s: print(s, file=sys.stderr))) if info.is_root else (lambda s: None)
        bundle = load_model(cfg)
        bundle.model.to(info.device)
        source = open_data(cfg.data, cfg.n, cfg.seed, bundle)
        plan = batches(len(source), cfg.batch_size)
        identity = run_identity(cfg, bundle)
        outcome: tuple[str, str] | None = None
        if info.is_root:
            try:
                held.enter_context(run_lock(out))
                outcome = ("run", prepare(out, identity, kind, restart=restart, say=say))
            except RunDirError as err:
                outcome = ("error", str(err))
        outcome = distributed.broadcast_from_root(outcome, info)
        if outcome[0] == "error":
            err = RunDirError(outcome[1])
            err.reported_by_root = not info.is_root  # type: ignore[attr-defined]
            raise err
        rid = outcome[1]
        known = read_records(out, rid)
        reused = len(known)
        for b, rec in known.items():
            expected = [source.ids[i] for i in plan[b]] if b < len(plan) else None
            if rec.get("images") != expected:
                raise RunDirError(
                    f"{out} holds results for other images (batch {b}); "
                    "pass --restart to move them aside, or another --out"
                )
        distributed.barrier(info)
        mine = distributed.shard(list(range(len(plan))), info)
        todo = [b for b in mine if b not in known]
        if known:
            say(f"resuming: {len(known)} of {len(plan)} batches already done in {out}")
        part = out / "parts" / f"rank{info.rank}.jsonl"
        with (
            open_part(part) as fd,
            tqdm(
                total=len(todo),
                desc=f"evaluating {len(methods)} methods",
                unit="batch",
                disable=not (progress and info.is_root),
                file=sys.stderr,
            ) as bar,
        ):
            for b in todo:
                computed = compute_batch(
                    bundle, source, plan[b], cfg, methods, metrics, b, info.device
                )
                rec = {"run": rid, **computed}
                append_record(fd, part, rec)
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
        return write_outputs(out, merged, cfg, bundle, methods, metrics, seconds, reused)


def write_outputs(
    out: Path,
    records: Mapping[int, Mapping[str, Any]],
    cfg: EvalConfig,
    bundle: ModelBundle,
    methods: Sequence[str],
    metrics: Sequence[str],
    seconds: float,
    reused: int = 0,
) -> dict[str, Any]:
    """Write ``results.jsonl`` (merged), ``metrics.json``, ``metrics.csv`` and the plots.

    ``seconds`` is this invocation's time; ``reused`` the number of batches it found on disk.
    Returns the ``metrics.json`` content.
    """
    write_results(out, records)
    data = metrics_document(records, cfg, bundle, methods, metrics, seconds, reused)
    write_json(out / "metrics.json", data)
    write_csv(out / "metrics.csv", data["metrics"])
    write_plots(out, data["metrics"])
    return data
