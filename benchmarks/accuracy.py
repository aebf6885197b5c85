"""Accuracy of the shipped shape models on held-out generated images -> ACCURACY.md.

Held-out data: ``sglrp.data.generate`` with seed ``--seed`` (default 2024): the ``single``
split (top-1), 2-object ``multi`` images (both present classes are the top-2 predictions)
and 3-object ``multi`` images (all three present classes are the top-3). Training uses the
``train``/``train_multi`` splits and validation seed ``seed + 1000`` = 1000, so none of these
images was seen during training. Training time and weights size come from each model's
metadata JSON.

Usage: ``python benchmarks/accuracy.py [--n 1200] [--seed 2024] [--out benchmarks/ACCURACY.md]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sglrp.atomic import write_text
from sglrp.data import CLASSES, generate
from sglrp.models import available_pretrained, pretrained

NAMES = ("shapes_vgg", "shapes_vgg_gap", "shapes_resnet", "shapes_vit")


@torch.no_grad()
def _logits(pm, samples, batch: int = 200) -> torch.Tensor:
    out = [
        pm.model(pm.preprocess(np.stack([s.image for s in samples[i : i + batch]])))
        for i in range(0, len(samples), batch)
    ]
    return torch.cat(out)


def _topk_exact(logits: torch.Tensor, samples) -> float:
    hits = [
        set(row.topk(len(s.labels)).indices.tolist()) == set(s.labels)
        for row, s in zip(logits, samples, strict=True)
    ]
    return float(np.mean(hits))


def measure(name: str, single, multi2, multi3) -> dict:
    """All figures for one shipped model."""
    pm = pretrained(name)
    logits = _logits(pm, single)
    labels = torch.tensor([s.label for s in single])
    pred = logits.argmax(1)
    per_class = {
        CLASSES[c]: float((pred[labels == c] == c).float().mean()) for c in range(len(CLASSES))
    }
    training = pm.metadata.get("training", {})
    return {
        "name": name,
        "single_top1": float((pred == labels).float().mean()),
        "multi2_top2": _topk_exact(_logits(pm, multi2), multi2),
        "multi3_top3": _topk_exact(_logits(pm, multi3), multi3),
        "per_class": per_class,
        "train_seconds": float(training.get("seconds", float("nan"))),
        "images_seen": int(training.get("images_seen", 0)),
        "bytes": int(pm.metadata.get("bytes", 0)),
        "params": int(pm.metadata.get("num_parameters", 0)),
        "dtype": pm.metadata.get("dtype", "float32"),
    }


def render(rows: list[dict], n: int, seed: int, seconds: float) -> str:
    """ACCURACY.md content."""
    lines = [
        "# Accuracy of the shipped shape models",
        "",
        f"Held-out generated images (`sglrp.data.generate`, seed {seed}): {n} single-object "
        f"images, {n // 2} two-object and {n // 2} three-object images. Reproduce with "
        "`python benchmarks/accuracy.py`.",
        "",
        "| model | single top-1 | multi: both in top-2 (2 objects) | multi: all in top-3 "
        "(3 objects) | training time | images seen | weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {100 * r['single_top1']:.1f}% | {100 * r['multi2_top2']:.1f}% | "
            f"{100 * r['multi3_top3']:.1f}% | {r['train_seconds'] / 60:.1f} min (2 CPU threads) "
            f"| {r['images_seen']:,} | {r['bytes'] / 1e6:.2f} MB ({r['params']:,} params, "
            f"{r['dtype']}) |"
        )
    lines += [
        "",
        "Floors checked by `tests/test_pretrained.py` (on 200 single / 100 two-object images, "
        "seed 777): single top-1 >= 95%, both classes in top-2 >= 80% (CNNs) and >= 75% "
        "(shapes_vit).",
        "",
        "## Single-object top-1 per class",
        "",
        "| class | " + " | ".join(r["name"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for c in CLASSES:
        cells = " | ".join(f"{100 * r['per_class'][c]:.1f}%" for r in rows)
        lines.append(f"| {c} | {cells} |")
    lines += ["", f"_Measured in {seconds:.0f} s with torch {torch.__version__}._", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="single-object images")
    parser.add_argument("--seed", type=int, default=2024, help="held-out seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("ACCURACY.md")), help="Markdown output"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    single = generate("single", args.n, args.seed)
    multi2 = generate("multi", args.n // 2, args.seed, num_objects=2)
    multi3 = generate("multi", args.n // 2, args.seed, start=args.n, num_objects=3)
    names = [n for n in NAMES if n in available_pretrained()]
    if not names:
        raise SystemExit("no shipped models found; train them with `sglrp train` first")
    rows = [measure(name, single, multi2, multi3) for name in names]
    for r in rows:
        print(
            f"{r['name']}: single {r['single_top1']:.4f}, 2-object top-2 {r['multi2_top2']:.4f}, "
            f"3-object top-3 {r['multi3_top3']:.4f}"
        )
    write_text(args.out, render(rows, args.n, args.seed, time.perf_counter() - start))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
