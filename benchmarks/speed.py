"""Speed and peak memory of sglrp against a plain gradient, zennit and Captum, in one run.

Each (method, batch) is measured in a fresh subprocess: the model and input are built, one
warm-up call runs, then ``--repeats`` timed calls; the median time is reported. Peak memory
is the process's peak resident size during one call above its size just before it, in a
separate subprocess: after a warm-up call the kernel's peak mark is reset (clear_refs), so
the figure is what the call itself needs beyond the model and input.

Usage: ``python benchmarks/speed.py [--batches 1 8] [--repeats 5] [--size 224]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

METHODS = {
    "gradient": "forward + input gradient (reference)",
    "sglrp-dtd": "sglrp.explain(method='sglrp', rules='dtd')",
    "lrp-epsilon-plus-flat": "sglrp.explain(method='lrp', rules='epsilon-plus-flat')",
    "zennit-epsilon-plus-flat": "zennit 0.5.1 EpsilonPlusFlat, Gradient attributor",
    "captum-lrp": "captum 0.9 LRP (default rules)",
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _standin_torchvision() -> None:
    import sglrp.models.resnet as resnet

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    res = types.ModuleType("torchvision.models.resnet")
    res.BasicBlock, res.Bottleneck = resnet.BasicBlock, resnet.Bottleneck
    models.resnet, tv.models = res, models
    sys.modules.update(
        {"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": res}
    )


def _make_call(method: str, model, x, target):
    import torch

    import sglrp

    if method == "gradient":

        def call():
            xx = x.detach().requires_grad_(True)
            out = model(xx)
            (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xx)
            return g

    elif method == "sglrp-dtd":

        def call():
            return sglrp.explain(
                model, x, target, method="sglrp", rules="dtd", bounds=(-2.1179, 2.64)
            )

    elif method == "lrp-epsilon-plus-flat":

        def call():
            return sglrp.explain(model, x, target, method="lrp", rules="epsilon-plus-flat")

    elif method == "zennit-epsilon-plus-flat":
        _standin_torchvision()
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat

        def call():
            with torch.no_grad():
                logits = model(x)
            onehot = torch.zeros_like(logits).scatter_(1, target[:, None], 1.0) * logits
            with Gradient(model, EpsilonPlusFlat()) as attributor:
                _, relevance = attributor(x, attr_output=onehot)
            return relevance

    elif method == "captum-lrp":
        from captum.attr import LRP

        def call():
            return LRP(model).attribute(x, target=target)

    else:
        raise ValueError(method)
    return call


def _worker(method: str, batch: int, size: int, repeats: int, mode: str) -> dict:
    import torch

    from sglrp.models import vgg16

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    model = vgg16(num_classes=1000).eval()
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    call = _make_call(method, model, x, target)
    if mode == "memory":
        call()  # warm-up: libraries, thread pools and allocator caches
        _reset_peak()
        before = _rss_bytes()
        call()
        return {"peak_mb": max(0, _peak_bytes() - before) / 2**20}
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times": times}


def _run(method: str, batch: int, size: int, repeats: int, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, str(batch), str(size), str(repeats), mode],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("speed.json"))
    args = parser.parse_args()
    results = {}
    for batch in args.batches:
        for method in args.methods:
            timing = _run(method, batch, args.size, args.repeats, "time")
            memory = _run(method, batch, args.size, args.repeats, "memory")
            results[f"{method}@{batch}"] = {"method": method, "batch": batch, **timing, **memory}
            print(method, batch, timing.get("median_s", timing.get("error")), memory, flush=True)
    lines = [
        f"VGG16 (random init, {args.size}x{args.size}, float32, CPU, "
        f"{os.environ.get('BENCH_THREADS', '2')} threads); median of {args.repeats} runs; "
        "ratios to the plain gradient at the same batch size.",
        "",
        "| method | batch | time (s) | time / gradient | peak memory (MB) | memory / gradient |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for batch in args.batches:
        ref = results[f"gradient@{batch}"]
        for method in args.methods:
            r = results[f"{method}@{batch}"]
            if "error" in r:
                lines.append(f"| {method} | {batch} | error: {r['error'][:60]} | | | |")
                continue
            lines.append(
                f"| {method} | {batch} | {r['median_s']:.3f} | "
                f"{r['median_s'] / ref['median_s']:.2f}x | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] / ref['peak_mb']:.2f}x |"
            )
    table = "\n".join(lines)
    print(table)
    args.out.write_text(json.dumps({"results": results, "table": table}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        m, b, s, r, mode = sys.argv[2:7]
        print(json.dumps(_worker(m, int(b), int(s), int(r), mode)))
    else:
        main()
