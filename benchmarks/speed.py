"""Speed and peak memory of sglrp against a plain gradient, zennit and Captum, in one run.

Every measurement (method x model x batch x K) runs in a fresh process, forked from a
server process that has only imported torch, sglrp and the benchmark's modules and run
nothing (``--isolation exec``: a new interpreter each time, whose start-up counts against
``--timeout``), so no allocator state, cache or thread pool of one method reaches another.
In it (``speed_worker.py``): model (random init, seed 0) and input are built, one warm-up
call runs, then ``--repeats`` timed calls (median and min reported), then one call
whose peak memory is measured as the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs) above the resident size just before it, after returning the C
allocator's free pages (``peak_memory.py``). The floor is that resident size (model, input,
libraries, whatever the method keeps); "own" is the part of it the method added to the bare
process.

A failure (exception, process death, timeout, no memory rise) is printed as such in its row;
ratios are printed only where both sides are valid. Ratios are to the plain gradient of the
same model, batch and K in the same run: one forward pass and K input gradients; to the z+
floor (``floor-zplus``: the gradient plus one forward of every layer with w+, the least any
z+ implementation computes); and to the same method with K = 1.

Usage::

    python benchmarks/speed.py [--models vgg16] [--batches 1,8] [--targets 1] [--repeats 5]
    python benchmarks/speed.py --quick            # tiny settings, < 60 s
    python benchmarks/speed.py --interleave --targets 1,2   # methods and K in rotating rounds
    python benchmarks/speed.py evaluate [--model shapes_vgg --n 16]   # runner throughput
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import evaluate_throughput
import speed_calls
import speed_worker
import torch

from sglrp.models import ZOO

HERE = Path(__file__).resolve().parent
DEFAULT_METHODS = (
    "gradient",
    "floor-zplus",
    "sglrp-dtd",
    "lrp-epsilon-plus-flat",
    "sglrp-epsilon-plus",
    "zennit-epsilon-plus-flat",
    "captum-lrp",
)
QUICK = {
    "models": ["shapes_vgg"],
    "batches": [1],
    "targets": [2],
    "size": 32,
    "repeats": 2,
    "methods": ["gradient", "floor-zplus", "sglrp-dtd", "zennit-epsilon-plus-flat", "captum-lrp"],
    "explainer_reuse": 2,
    "threads": 1,
}
QUICK_EVALUATE = {"n": 1, "batch_size": 2, "steps": 2, "methods": ["sglrp", "lrp"]}


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [kind(s.strip()) for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give a comma-separated list")
        return items

    return parse


def _loads(loads: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in loads)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_isolated(
    target: Callable[[dict, Any], None], script: Path, spec: dict, isolation: str, timeout: float
) -> dict[str, Any]:
    """Run ``target(spec, conn)`` in a fresh process; a dead or late process is a failed result.

    ``isolation="fork"``: forked from the forkserver; ``"exec"``: ``python script '<spec>'``.
    """
    load_before, start = _load(), time.perf_counter()
    if isolation == "exec":
        result = _run_exec(script, spec, timeout)
    else:
        result = _run_forked(target, spec, timeout)
    result.update(load_before=load_before, load_after=_load(), wall_s=time.perf_counter() - start)
    return result


def _run_forked(target: Callable, spec: dict, timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("forkserver")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(spec, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            process.join()
            return {"status": "failed", "reason": f"timeout after {timeout:g} s"}
        return receiver.recv()
    except EOFError:
        process.join()
        return {"status": "failed", "reason": _death(process.exitcode)}
    finally:
        receiver.close()
        process.join(timeout=10)


def _run_exec(script: Path, spec: dict, timeout: float) -> dict[str, Any]:
    try:
        out = subprocess.run(
            [sys.executable, str(script), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timeout after {timeout:g} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        tail = out.stderr.strip().splitlines()[-1:] or [""]
        return {"status": "failed", "reason": f"{_death(out.returncode)} {tail[0]}".strip()}
    return json.loads(lines[-1])


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        return f"process killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    return f"process exited with code {code} without a result"


# ----------------------------------------------------------------------------- explain mode


def measured_methods(args: argparse.Namespace) -> list[str]:
    """The methods a run measures: the gradient first, then the requested ones, then the
    Explainer-reuse row if asked for."""
    methods = ["gradient", *(m for m in args.methods + args.extra_methods if m != "gradient")]
    if args.explainer_reuse and "sglrp-explainer-reuse" not in methods:
        methods.append("sglrp-explainer-reuse")
    return methods


def measurements(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The specs to run, grouped by model, batch and K, the gradient first in each group."""
    methods = measured_methods(args)
    return [
        {
            "method": method,
            "model": model,
            "batch": batch,
            "k": k,
            "size": args.size,
            "repeats": args.repeats,
            "threads": args.threads,
            "memory": args.memory,
            "explainer_reuse": args.explainer_reuse,
        }
        for model in args.models
        for batch in args.batches
        for k in args.targets
        for method in methods
    ]


def time_ok(row: dict) -> bool:
    return row["status"] == "ok" and row.get("median_s", 0) > 0


#: A rise of the high-water mark below this is the process's own noise (a page or a few of
#: interpreter allocations: 4 KB was seen for a call that allocates nothing, at load 9).
MIN_RISE_MB = 64 / 1024


def memory_ok(row: dict) -> bool:
    return row["status"] == "ok" and row.get("peak_mb", 0) >= MIN_RISE_MB


def add_ratios(rows: list[dict]) -> None:
    """Set ``time_ratio`` / ``memory_ratio`` (to the gradient), ``floor_ratio`` (time to the
    z+ floor) and ``k_ratio`` (time to the same method with K = 1), each None unless both
    sides are valid."""
    refs = {(r["model"], r["batch"], r["k"]): r for r in rows if r["method"] == "gradient"}
    floors = {(r["model"], r["batch"], r["k"]): r for r in rows if r["method"] == "floor-zplus"}
    single = {(r["method"], r["model"], r["batch"]): r for r in rows if r["k"] == 1}
    for row in rows:
        key = (row["model"], row["batch"], row["k"])
        ref = refs.get(key)
        both = ref is not None and time_ok(row) and time_ok(ref)
        row["time_ratio"] = row["median_s"] / ref["median_s"] if both else None
        both = ref is not None and memory_ok(row) and memory_ok(ref)
        row["memory_ratio"] = row["peak_mb"] / ref["peak_mb"] if both else None
        floor = floors.get(key)
        both = floor is not None and time_ok(row) and time_ok(floor)
        row["floor_ratio"] = row["median_s"] / floor["median_s"] if both else None
        one = single.get((row["method"], row["model"], row["batch"]))
        both = row["k"] > 1 and one is not None and time_ok(row) and time_ok(one)
        row["k_ratio"] = row["median_s"] / one["median_s"] if both else None


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def table(rows: Sequence[dict]) -> str:
    """Markdown table of the rows (failed and unavailable rows say why)."""
    lines = [
        "| method | model | batch | K | time s: median (min) | time / gradient | peak MB (tensors) "
        "| memory / gradient | time / z+ floor | time / own K=1 | floor MB (own) "
        "| load 1-min before→after | threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        head = f"| {r['method']} | {r['model']} | {r['batch']} | {r['k']} |"
        load = f"{r['load_before']:.2f}→{r['load_after']:.2f}"
        if r["status"] != "ok":
            reason = _cell(r.get("reason", ""))
            if len(reason) > 120:
                reason = reason[:117] + "..."
            lines.append(f"{head} {r['status']}: {reason} | | | | | | | {load} | |")
            continue
        if memory_ok(r):
            peak = f"{r['peak_mb']:.1f}"
            if not r["memory_method"].startswith("vmhwm"):
                peak += " sampled"
            if r.get("tensor_peak_mb") is not None:
                peak += f" ({r['tensor_peak_mb']:.1f})"
        else:
            peak = f"invalid: no rise above floor ({r['peak_mb']:.1f})"
        lines.append(
            f"{head} {r['median_s']:.4f} ({r['min_s']:.4f}) | {_ratio(r['time_ratio'])} | "
            f"{peak} | {_ratio(r['memory_ratio'])} | {_ratio(r.get('floor_ratio'))} | "
            f"{_ratio(r.get('k_ratio'))} | {r['floor_mb']:.0f} ({r['own_mb']:+.0f}) | "
            f"{load} | {r['threads']} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers depend on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _report(args: argparse.Namespace, rows: list[dict], start_load, start: float, done: bool):
    """The header and table of the rows so far (ratios set), and the JSON payload."""
    add_ratios(rows)
    methods = {r["method"] for r in rows}
    described = {m: speed_calls.METHODS[m][0] for m in methods if m in speed_calls.METHODS}
    header = (
        f"Random-init models, float32, CPU, {args.threads} torch thread(s); each row one fresh "
        f"process ({args.isolation}); time per call: median (min) of {args.repeats} calls "
        "after one warm-up; peak = high-water mark of one call above the resident size just "
        "before it (floor; own = what the method added to the bare process), in brackets the "
        "peak of live tensor bytes in torch's allocator during another call; ratios to the "
        "gradient of the same model, batch and K (one forward, K input gradients), to the z+ "
        "floor (the gradient plus one forward of every layer with w+) and to the same "
        "method's K = 1. "
        f"Load average (1/5/15 min) at the start {_loads(start_load)}, at the end "
        f"{_loads(os.getloadavg())} on {os.cpu_count()} CPUs; run took "
        f"{time.perf_counter() - start:.0f} s."
    )
    loads = [r[k] for r in rows for k in ("load_before", "load_after")]
    cpus = os.cpu_count() or 1
    if max([start_load[0], *loads]) > cpus:
        header += (
            f" **Warning: the 1-min load average exceeded the {cpus} CPUs during this run** "
            f"(up to {max([start_load[0], *loads]):.1f}): times include waiting for a CPU, and "
            "ratios of rows measured at different loads are biased. Memory is not affected."
        )
    text = f"{header}\n\n{table(rows)}"
    payload = {
        "kind": "speed",
        "complete": done,
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "mode")},
        "methods": described,
        "rows": rows,
        "table": text,
    }
    return text, payload


def explain_main(args: argparse.Namespace) -> int:
    """Measure every spec in turn; the JSON is rewritten after each row (an interrupted run
    keeps what it measured, marked ``"complete": false``)."""
    specs = measurements(args)
    rows: list[dict] = []
    start_load, start = os.getloadavg(), time.perf_counter()
    for spec in specs:
        result = run_isolated(
            speed_worker.child, HERE / "speed_worker.py", spec, args.isolation, args.timeout
        )
        row = {**spec, **result}
        rows.append(row)
        summary = (
            f"{row['median_s']:.4f} s, peak {row['peak_mb']:.1f} MB"
            if row["status"] == "ok"
            else f"{row['status']}: {row.get('reason', '')}"
        )
        print(
            f"[{len(rows)}/{len(specs)}] {spec['method']} {spec['model']} batch {spec['batch']} "
            f"K {spec['k']}: {summary}",
            file=sys.stderr,
            flush=True,
        )
        if args.json:
            _write_json(args.json, _report(args, rows, start_load, start, False)[1])
    text, payload = _report(args, rows, start_load, start, True)
    print(text)
    if args.json:
        _write_json(args.json, payload)
    return 0


def interleaved_rows(spec: dict, result: dict) -> list[dict]:
    """Rows of one interleaved measurement, with ratios taken round by round (the median of
    the per-round ratios, and their range) to the gradient and the z+ floor of the same K and
    to the same method's K = 1."""
    base = {k: spec[k] for k in ("model", "batch", "threads")}
    if result["status"] != "ok":
        return [{**base, "method": "*", "k": "*", **result}]
    calls = result["calls"]

    def ratio(key: str, ref: str) -> dict | None:
        a, b = calls.get(key, {}), calls.get(ref, {})
        if key == ref or a.get("status") != "ok" or b.get("status") != "ok":
            return None
        per_round = [x / y for x, y in zip(a["times_s"], b["times_s"], strict=False) if y > 0]
        if not per_round:
            return None
        return {
            "median": statistics.median(per_round),
            "low": min(per_round),
            "high": max(per_round),
        }

    rows = []
    for key, value in calls.items():
        method, k = key.rsplit("|", 1)
        row = {**base, "method": method, "k": int(k), **value}
        if value["status"] == "ok" and value["times_s"]:
            row["median_s"] = statistics.median(value["times_s"])
            row["min_s"] = min(value["times_s"])
            row["time_ratio"] = ratio(key, f"gradient|{k}")
            row["floor_ratio"] = ratio(key, f"floor-zplus|{k}")
            row["k_ratio"] = ratio(key, f"{method}|1") if int(k) > 1 else None
        rows.append(row)
    return rows


def _spread(r: dict | None) -> str:
    return "" if r is None else f"{r['median']:.2f}x ({r['low']:.2f}-{r['high']:.2f})"


def interleaved_table(rows: Sequence[dict]) -> str:
    lines = [
        "| method | model | batch | K | time s: median (min) | time / gradient | time / z+ floor "
        "| time / own K=1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        head = f"| {r['method']} | {r['model']} | {r['batch']} | {r['k']} |"
        if r["status"] != "ok" or "median_s" not in r:
            reason = _cell(r.get("reason", "no timed call"))[:120]
            lines.append(f"{head} {r['status']}: {reason} | | | |")
            continue
        lines.append(
            f"{head} {r['median_s']:.4f} ({r['min_s']:.4f}) | {_spread(r['time_ratio'])} | "
            f"{_spread(r['floor_ratio'])} | {_spread(r['k_ratio'])} |"
        )
    return "\n".join(lines)


def interleaved_main(args: argparse.Namespace) -> int:
    """One process per model and batch; every method and K timed in rotating rounds."""
    methods = measured_methods(args)
    rows: list[dict] = []
    start_load, start = os.getloadavg(), time.perf_counter()
    for model in args.models:
        for batch in args.batches:
            spec = {
                "methods": methods,
                "targets": args.targets,
                "model": model,
                "batch": batch,
                "size": args.size,
                "repeats": args.repeats,
                "threads": args.threads,
                "explainer_reuse": args.explainer_reuse,
            }
            result = run_isolated(
                speed_worker.child_interleaved,
                HERE / "speed_worker.py",
                spec,
                args.isolation,
                args.timeout,
            )
            rows += interleaved_rows(spec, result)
            print(f"[{model} batch {batch}] done", file=sys.stderr, flush=True)
    header = (
        f"Interleaved: one process per model and batch, {args.threads} torch thread(s), one "
        f"warm-up per call, then {args.repeats} rounds, each calling every method and K once "
        "in an order rotated by one per round; ratios are the median (range) of the per-round "
        "ratios, so a drift of the machine's speed cancels. Load average (1/5/15 min) at the "
        f"start {_loads(start_load)}, at the end {_loads(os.getloadavg())}; run took "
        f"{time.perf_counter() - start:.0f} s. Memory is not measured in this mode."
    )
    text = f"{header}\n\n{interleaved_table(rows)}"
    print(text)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "mode")}
        payload = {
            "kind": "speed-interleaved",
            "complete": True,
            "machine": machine(),
            "settings": settings,
            "rows": rows,
            "table": text,
        }
        _write_json(args.json, payload)
    return 0


# ----------------------------------------------------------------------------- evaluate mode


def evaluate_table(result: dict[str, Any]) -> str:
    """Throughput line and the breakdown table of one evaluation run."""
    load = f"load 1-min {result['load_before']:.2f}→{result['load_after']:.2f}"
    if result["status"] != "ok":
        return f"evaluate: {result['status']}: {_cell(result.get('reason', ''))} ({load})"
    total, n = result["total_s"], result["n_images"]
    batches = result["seconds"].get("compute_batch", total)
    units = result["n_units"]
    lines = [
        f"{n} images ({units['gt']} ground-truth + {units['second']} second-target units), "
        f"methods {', '.join(result['methods'])}: {total:.2f} s, **{n / total:.2f} images/s** "
        f"({n / batches:.2f} images/s in the batches alone, without set-up and writing); "
        f"{result['threads']} torch thread(s), {load}.",
    ]
    worst = max(result["load_before"], result["load_after"])
    if worst > (os.cpu_count() or 1):
        lines.append(
            f"**Warning: load average {worst:.1f} above the {os.cpu_count()} CPUs**: the times "
            "include waiting for a CPU."
        )
    if result["missing"]:
        lines.append(f"Not timed (the runner has no such function): {', '.join(result['missing'])}")
    lines += ["", "| part | seconds | share | calls |", "| --- | --- | --- | --- |"]
    for part, seconds, calls in evaluate_throughput.breakdown(result):
        lines.append(f"| {part} | {seconds:.3f} | {100 * seconds / total:.1f}% | {calls or ''} |")
    return "\n".join(lines)


def evaluate_main(args: argparse.Namespace) -> int:
    spec = {
        "model": args.model,
        "data": args.data,
        "n": args.n,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "methods": args.methods,
        "metrics": args.metrics,
        "threads": args.threads,
    }
    if args.quick:
        spec.update(QUICK_EVALUATE)
    result = run_isolated(
        evaluate_throughput.child, HERE / "evaluate_throughput.py", spec, "fork", args.timeout
    )
    text = evaluate_table(result)
    print(text)
    if args.json:
        _write_json(args.json, {"kind": "evaluate", "machine": machine(), **result, "table": text})
    return 0 if result["status"] == "ok" else 1


# ----------------------------------------------------------------------------- CLI


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def explain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", type=_csv(str), default=["vgg16"], help="zoo names (vgg16,...)")
    p.add_argument("--batches", type=_csv(int), default=[1, 8])
    p.add_argument("--targets", type=_csv(int), default=[1], help="K targets per image: 1,2,5")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument(
        "--methods",
        type=_csv(str),
        default=list(DEFAULT_METHODS),
        help=f"default {','.join(DEFAULT_METHODS)}; the gradient is always measured; self-tests: "
        "selftest-alloc-<MB>, selftest-noop, selftest-fail, selftest-exit, selftest-hang",
    )
    p.add_argument(
        "--extra-methods",
        type=_csv(str),
        default=[],
        help="methods measured in addition to --methods (e.g. self-tests with --quick)",
    )
    p.add_argument(
        "--explainer-reuse",
        type=int,
        default=0,
        metavar="N",
        help="add a row for sglrp.Explainer built once and called N times (0: none)",
    )
    p.add_argument("--size", type=int, default=None, help="input side (default: per model)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    p.add_argument("--memory", choices=("auto", "vmhwm", "sampled"), default="auto")
    p.add_argument("--isolation", choices=("fork", "exec"), default="fork")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--quick", action="store_true", help="tiny settings, 1 thread (< 60 s)")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="time all methods and K of a model and batch in one process, in rotating rounds "
        "(ratios per round: robust to a drifting machine; no memory)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all rows here")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speed.py evaluate", description="Images per second of the evaluation runner."
    )
    p.add_argument("--model", default="shapes_vgg")
    p.add_argument("--data", default="builtin")
    p.add_argument("--n", type=int, default=16, help="images per built-in split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--methods", type=_csv(str), default=None, help="default: the runner's")
    p.add_argument("--metrics", type=_csv(str), default=None, help="default: all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--quick", action="store_true", help="2 images, 2 methods, 2 steps")
    p.add_argument("--json", type=Path, default=None)
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse either mode's options; check names before anything runs."""
    if argv and argv[0] == "evaluate":
        args = evaluate_parser().parse_args(argv[1:])
        args.mode = "evaluate"
        return args
    parser = explain_parser()
    args = parser.parse_args(argv)
    args.mode = "explain"
    if args.quick:
        explicit = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a[:2] == "--"}
        for key, value in QUICK.items():
            if key not in explicit:
                setattr(args, key, value)
    unknown = [m for m in args.models if m not in ZOO]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; zoo: {', '.join(sorted(ZOO))}")
    unknown = [m for m in args.methods + args.extra_methods if not speed_calls.known(m)]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; known: {', '.join(speed_calls.METHODS)}")
    if "sglrp-explainer-reuse" in args.methods + args.extra_methods:
        args.explainer_reuse = max(args.explainer_reuse, 1)
    if min(args.batches) < 1 or min(args.targets) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("batches, targets, repeats and threads must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    # The forkserver ignores the parent's sys.path (a failed preload is silent and would make
    # every measurement import torch anew): give it this folder through the environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
    )
    mp.set_forkserver_preload(["speed_worker", "evaluate_throughput"])
    if args.mode == "evaluate":
        return evaluate_main(args)
    return interleaved_main(args) if args.interleave else explain_main(args)


if __name__ == "__main__":
    sys.exit(main())
