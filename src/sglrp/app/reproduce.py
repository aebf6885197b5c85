"""The paper's comparison end to end (``sglrp reproduce``): evaluate, draw grids, write the report.

Runs the paper's methods and the random baseline through every metric
(:func:`sglrp.app.runner.run`), draws comparison grids on multi-object images for each class
present and the class-collapse curves (:mod:`sglrp.app.diagnostics`), and writes
``OUT/index.html`` (self-contained) and ``OUT/metrics.json``. A run interrupted part-way
resumes when started again with the same settings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from ..presets import is_transformer
from . import runner
from .config import TRANSFORMER_METHODS, EvalConfig
from .diagnostics import collapse_curves, write_collapse
from .distributed import detect
from .findings import label
from .grids import write_grid
from .report import write_report
from .sources import DataSource, open_data
from .store import run_lock

__all__ = ["FULL", "QUICK", "reproduce"]

#: Settings of the full run (about 10 minutes on 2 CPU cores) and of ``--quick``.
FULL = {"n": 100, "steps": 10, "grid_images": 4}
QUICK = {"n": 6, "steps": 8, "grid_images": 2}
#: Images of the class-collapse curves; models with more classes than this are skipped (one
#: backward pass per class).
COLLAPSE_IMAGES = 4
MAX_COLLAPSE_CLASSES = 50


def _multi_object(source: DataSource, limit: int) -> list[int]:
    """The first ``limit`` images of ``source`` that hold two or more classes."""
    found = []
    for i in range(len(source)):
        if len(found) >= limit:
            break
        if len(set(source.load(i).labels)) >= 2:
            found.append(i)
    return found


def reproduce(
    cfg: EvalConfig,
    out: str | Path,
    grid_images: int,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    restart: bool = False,
) -> Path | None:
    """Evaluate ``cfg`` into ``out``, draw up to ``grid_images`` grids, write the report.

    The folder's lock is held until the report is written. A folder holding another run (an
    ``sglrp evaluate`` folder, other settings) is refused; ``restart`` moves that run's files
    to ``out/previous-<time>/`` (:mod:`sglrp.app.store`).

    Returns the path of ``index.html`` on rank 0 of a torchrun job (or a single process),
    None on the other ranks.
    """
    start = time.perf_counter()
    out = Path(out)
    root = detect(cfg.device).is_root

    def say(text: str) -> None:
        if root:
            (log or (lambda s: print(s, file=sys.stderr, flush=True)))(text)

    with run_lock(out) if root else nullcontext():
        return _reproduce(cfg, out, grid_images, start, say, progress, restart)


def _reproduce(
    cfg: EvalConfig,
    out: Path,
    grid_images: int,
    start: float,
    say: Callable[[str], None],
    progress: bool,
    restart: bool,
) -> Path | None:
    bundle = runner.load_model(cfg)
    extra = [m for m in TRANSFORMER_METHODS if m not in cfg.methods]
    if extra and is_transformer(bundle.model):
        cfg = replace(cfg, methods=(*cfg.methods, *extra))
        say(f"transformer: the ViT baselines {', '.join(extra)} are evaluated too")
    say(f"[1/3] evaluating {len(cfg.methods)} methods with {len(cfg.metrics)} metrics -> {out}")
    data = runner.run(cfg, out, progress=progress, log=say, restart=restart, kind="reproduce")
    if data is None:  # another rank of a torchrun job: rank 0 writes the report
        return None
    say("[2/3] drawing comparison grids")
    source = open_data(cfg.data, cfg.n, cfg.seed, bundle)
    multi = _multi_object(source, grid_images)
    grids = []
    if multi:
        path = write_grid(bundle, source, multi, data["methods"], out / "comparison_grid.png")
        caption = (
            f"{len(multi)} multi-object images; columns: input and "
            f"{len(data['methods'])} methods; rows: each class present in the image."
        )
        grids.append((path, caption))
    else:
        say("no multi-object images in the data; the report has no comparison grid")
    collapse_images = _multi_object(source, COLLAPSE_IMAGES)
    if collapse_images and bundle.classes and len(bundle.classes) <= MAX_COLLAPSE_CLASSES:
        say(f"class-collapse curves on {len(collapse_images)} images")
        result = collapse_curves(bundle, source, collapse_images)
        grids.append(write_collapse(out, result, cfg.model))
    say("[3/3] writing the report")
    report = write_report(out, data, grids, seconds=time.perf_counter() - start)
    for entry in data["metrics"].values():
        if entry.get("best"):
            best = entry["methods"][entry["best"]]["mean"]
            say(f"  {entry['title']}: best {label(entry['best'])} ({best:.4g})")
    say(f"done in {time.perf_counter() - start:.0f} s")
    return report
