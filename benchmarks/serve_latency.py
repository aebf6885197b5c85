"""Response times of ``sglrp serve``'s page handlers (what a click costs, without the browser).

For each model: a new image is classified (upload), explained with the page's default
methods (SGLRP, CLRP, LRP; ``sglrp explain``'s files written), the contrast view computed
(SGLRP and LRP for target and contrast class) and the pictures redrawn (opacity slider).
Wall-clock seconds depend on the machine's load (reported); the process's CPU seconds
(all threads) much less: on an idle 2-core machine the wall time is about CPU / 2.
``explain + contrast`` is the time from the *Explain* click to the complete page. Models:
the shipped ``shapes_vgg`` on a 64x64 generated image, and VGG16 (random weights written to
a temporary state_dict file, as ``--model vgg16 --weights FILE``) on a 224x224 crop.
Gradio's own overhead (PNG encoding, websocket) is not included; it is a few tens of ms.

Usage: ``python benchmarks/serve_latency.py [--repeats 3] [--models shapes_vgg,vgg16]
[--json out.json]`` (needs the app extra: ``make app``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from sglrp.data import generate
from sglrp.models import get_model
from sglrp.server.app import create


def _time(fn, *args, **kwargs) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds (all threads) of one call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def measure(model: str, root: Path, repeats: int, threads: int | None) -> dict[str, float]:
    """Median seconds of each step for one model."""
    weights = None
    if model != "shapes_vgg":
        weights = root / f"{model}.pt"
        torch.manual_seed(0)
        torch.save(get_model(model, num_classes=1000).state_dict(), weights)
    demo, ctx = create(
        model, str(weights) if weights else None, root=root / f"serve-{model}", threads=threads
    )
    side = 64 if model == "shapes_vgg" else 256
    image = root / f"{model}-input.png"
    Image.fromarray(generate("multi", 1, seed=0, size=side, start=1)[0].image).save(image)

    def no_progress(*args, **kwargs) -> None:
        return None

    names = ("upload", "explain", "contrast", "redraw")
    steps: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(repeats):
        t, c, out = _time(ctx.upload, str(image), None, True)
        state = out[0]
        steps["upload"].append(t)
        cpu["upload"].append(c)
        target = state["order"][0]
        t, c, out = _time(
            ctx.explain,
            state,
            target,
            ["sglrp", "clrp", "lrp"],
            "dtd",
            None,
            False,
            1.0,
            True,
            False,
            progress=no_progress,
        )
        state = out[0]
        steps["explain"].append(t)
        cpu["explain"].append(c)
        t, c, out = _time(ctx.contrast, state, None, "dtd", False, 1.0, True)
        state = out[0]
        steps["contrast"].append(t)
        cpu["contrast"].append(c)
        t, c, _ = _time(ctx.redraw, state, False, 0.5, True, False)
        steps["redraw"].append(t)
        cpu["redraw"].append(c)
    result: dict = {k: statistics.median(v) for k, v in steps.items()}
    result["click_to_page"] = result["explain"] + result["contrast"]
    result["cpu"] = {k: statistics.median(v) for k, v in cpu.items()}
    result["input"] = int(ctx.bundle.settings.crop)
    result["threads"] = torch.get_num_threads()
    result["load_average"] = os.getloadavg()[0]
    demo.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="shapes_vgg,vgg16")
    parser.add_argument("--threads", type=int, help="torch threads (default: the server's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            torch.set_num_threads(default_threads)  # the server's choice applies per model
            results[model] = measure(model, Path(tmp), args.repeats, args.threads)
            r = results[model]
            steps = ", ".join(
                f"{k} {r[k]:.2f} s (cpu {r['cpu'][k]:.2f} s)"
                for k in ("upload", "explain", "contrast", "redraw")
            )
            print(
                f"{model} {r['input']}x{r['input']}, {r['threads']} threads, load "
                f"{r['load_average']:.1f}: {steps}; click to complete page "
                f"{r['click_to_page']:.2f} s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
