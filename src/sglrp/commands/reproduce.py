"""``sglrp reproduce``: the paper's comparison end to end, as one HTML report.

Runs LRP, CLRP, SGLRP, Guided Grad-CAM, Relevance-CAM and Random through every metric
(:mod:`sglrp.evaluate.runner`), draws comparison grids on multi-object images for each
class present, and writes ``OUT/index.html`` (self-contained) and ``OUT/metrics.json``.
A run interrupted part-way resumes when started again with the same settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .evaluate import add_common, apply_threads

#: Settings of the full run (about 10 minutes on 2 CPU cores) and of ``--quick``.
FULL = {"n": 100, "steps": 10, "grid_images": 4}
QUICK = {"n": 6, "steps": 8, "grid_images": 2}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` sub-command."""
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's comparison and write an HTML report",
        description=(
            "Evaluate LRP, CLRP, SGLRP, Guided Grad-CAM, Relevance-CAM and Random with every "
            "metric and write OUT/index.html (self-contained) and OUT/metrics.json. "
            f"Default: {FULL['n']} multi- and {FULL['n']} single-object images; --quick: "
            f"{QUICK['n']} of each."
        ),
    )
    add_common(p)
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--quick", action="store_true", help="small run (under 2 minutes) for CI")
    p.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        default=None,
        help="images per built-in split (overrides the default / --quick size)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Evaluate, draw the grids, write the report; print its path."""
    from ..evaluate import runner
    from ..evaluate.distributed import detect
    from ..report import write_grid, write_report

    start = time.perf_counter()
    apply_threads(args.threads)
    preset = QUICK if args.quick else FULL
    n = preset["n"] if args.n is None else args.n
    out = Path(args.out)
    cfg = runner.EvalConfig(
        model=args.model,
        data=args.data,
        methods=runner.DEFAULT_METHODS,
        metrics=runner.METRIC_NAMES,
        n=n,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=preset["steps"],
        device=args.device,
    )
    root = detect(args.device).is_root

    def say(text: str) -> None:
        if root:
            print(text, file=sys.stderr, flush=True)

    say(f"[1/3] evaluating {len(cfg.methods)} methods with {len(cfg.metrics)} metrics -> {out}")
    data = runner.run(cfg, out, progress=not args.no_progress, log=say, restart_on_change=True)
    if data is None:  # another rank of a torchrun job: rank 0 writes the report
        return 0
    say("[2/3] drawing comparison grids")
    bundle = runner.load_model(cfg.model)
    source = runner.open_data(cfg.data, cfg.n, cfg.seed, bundle)
    multi = []
    for i in range(len(source)):
        if len(multi) >= preset["grid_images"]:
            break
        if len(set(source.load(i).labels)) >= 2:
            multi.append(i)
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
    say("[3/3] writing the report")
    report = write_report(out, data, grids, seconds=time.perf_counter() - start)
    for entry in data["metrics"].values():
        if entry.get("best"):
            best = entry["methods"][entry["best"]]["mean"]
            say(f"  {entry['title']}: best {runner.METHOD_LABELS.get(entry['best'])} ({best:.4g})")
    say(f"done in {time.perf_counter() - start:.0f} s")
    print(f"report: {report.resolve()}")
    return 0
