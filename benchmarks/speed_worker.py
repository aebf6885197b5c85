"""One measurement of the speed benchmark, run inside its own fresh process.

:func:`measure` builds the model (random init, seed 0) and the input, builds the method's
call, runs it once to warm up, times ``repeats`` calls, then measures one more call's peak
resident memory and one more call's peak of live tensor bytes (:mod:`peak_memory`). It never
raises: a failure is returned as ``{"status": "failed", "reason": ...}``.

:func:`child` is the entry point in a forked process (answers through a pipe); run as a
script (``python speed_worker.py '<spec JSON>'``) it prints the result as the last line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import peak_memory
import speed_calls
import torch

from sglrp.models import ZOO

#: Input side length of zoo models that are not ImageNet-sized.
SMALL_INPUT = {"shapes_vgg": 64, "shapes_resnet": 64, "inception_small": 64}


def input_size(model: str, size: int | None) -> int:
    """``size`` if given, else the model's natural input side (224 for ImageNet models)."""
    return size if size else SMALL_INPUT.get(model, 224)


def _targets(n: int, k: int, num_classes: int) -> torch.Tensor:
    """(n, k) distinct random classes per image."""
    if k > num_classes:
        raise ValueError(f"K={k} targets per image but the model has {num_classes} classes")
    return torch.stack([torch.randperm(num_classes)[:k] for _ in range(n)])


def calibrate_batch_norm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every batch norm's statistics from ``x`` and put the model in eval mode.

    A randomly initialised model keeps mean 0 and variance 1 as statistics, and through a deep
    stack of such layers (EfficientNet-B0) its activations vanish: relevance then underflows
    into float32's denormal range, where CPU arithmetic is up to 100x slower, and the benchmark
    would time that artefact. Statistics from the input, as a trained model's come from its
    data, keep activations at their usual scale. A no-op for models without batch norm.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of exactly this input
        model.train()
        with torch.no_grad():
            model(x)
    model.eval()


def _memory_mode(requested: str) -> tuple[str, str]:
    if requested != "auto":
        return requested, "requested"
    works, why = peak_memory.hwm_reset_works()
    return ("vmhwm", "VmHWM reset checked") if works else ("sampled", why)


def calls_per_run(method: str, spec: dict[str, Any]) -> int:
    """Explanations in one timed call: ``explainer_reuse`` for the Explainer-reuse row (its
    time is reported per explanation), else 1."""
    return spec["explainer_reuse"] if method == "sglrp-explainer-reuse" else 1


def _setup(spec: dict[str, Any]) -> tuple[torch.nn.Module, torch.Tensor, int, int]:
    """The model (random init, seed 0, batch-norm statistics of the input), the input, its
    side and the number of classes."""
    torch.manual_seed(0)
    model = ZOO[spec["model"]]()
    size = input_size(spec["model"], spec.get("size"))
    x = torch.randn(spec["batch"], 3, size, size).clamp(*speed_calls.BOUNDS)
    calibrate_batch_norm(model, x)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    return model, x, size, num_classes


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    mode, mode_note = _memory_mode(spec["memory"])
    model, x, size, num_classes = _setup(spec)
    targets = _targets(spec["batch"], spec["k"], num_classes)
    peak_memory.trim()
    base = peak_memory.rss_bytes() / peak_memory.MB
    try:
        call = speed_calls.build_call(spec["method"], model, x, targets, spec)
    except speed_calls.NotAvailable as err:
        return {"status": "not available", "reason": str(err)}
    call()  # warm-up: imports, thread pool, allocator, lazily built state
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    per_run = calls_per_run(spec["method"], spec)
    times = [t / per_run for t in times]
    memory = peak_memory.measure_peak(call, mode)
    tensors = peak_memory.tensor_peak(call)
    return {
        "status": "ok",
        "size": size,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "calls_per_run": per_run,
        "base_mb": base,
        "own_mb": memory["floor_mb"] - base,
        **memory,
        "tensor_peak_mb": tensors,
        "memory_note": mode_note,
        "threads": torch.get_num_threads(),
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure ``spec`` (method, model, batch, k, size, repeats, threads, memory, ...)."""
    try:
        return _run(spec)
    except Exception as err:  # noqa: BLE001 - every failure becomes a row of the table
        return {"status": "failed", "reason": _call_error(err)}


def _call_error(err: Exception) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {err} ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"


def _interleaved(spec: dict[str, Any]) -> dict[str, Any]:
    """Every (method, K) of ``spec["methods"]`` x ``spec["targets"]`` on one model and batch,
    timed in rounds: each round calls every one once, in an order rotated by one per round, so
    that a drift of the machine's speed reaches all of them alike and the ratios of one round
    cancel it. Returns per (method, K) its times or why it failed."""
    torch.set_num_threads(spec["threads"])
    model, x, size, num_classes = _setup(spec)
    calls, results = {}, {}
    for k in spec["targets"]:
        targets = _targets(spec["batch"], k, num_classes)
        for method in spec["methods"]:
            key = f"{method}|{k}"
            try:
                call = speed_calls.build_call(method, model, x, targets, spec)
                call()  # warm-up
            except speed_calls.NotAvailable as err:
                results[key] = {"status": "not available", "reason": str(err)}
                continue
            except Exception as err:  # noqa: BLE001 - a failed call is a row, not a crash
                results[key] = {"status": "failed", "reason": _call_error(err)}
                continue
            calls[key] = call
            results[key] = {"status": "ok", "times_s": []}
    order = list(calls)
    for r in range(spec["repeats"] if order else 0):
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:
            if results[key]["status"] != "ok":
                continue
            start = time.perf_counter()
            try:
                calls[key]()
            except Exception as err:  # noqa: BLE001
                results[key] = {"status": "failed", "reason": _call_error(err)}
                continue
            per_run = calls_per_run(key.rsplit("|", 1)[0], spec)
            results[key]["times_s"].append((time.perf_counter() - start) / per_run)
    return {"status": "ok", "size": size, "calls": results, "threads": torch.get_num_threads()}


def measure_interleaved(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`_interleaved`, never raising."""
    try:
        return _interleaved(spec)
    except Exception as err:  # noqa: BLE001
        return {"status": "failed", "reason": _call_error(err)}


def child_interleaved(spec: dict[str, Any], conn: Connection) -> None:
    """Entry point of a forked interleaved measurement."""
    conn.send(measure_interleaved(spec))
    conn.close()


def child(spec: dict[str, Any], conn: Connection) -> None:
    """Entry point of a forked measurement process: send the result through ``conn``."""
    conn.send(measure(spec))
    conn.close()


if __name__ == "__main__":
    given = json.loads(sys.argv[1])
    print(json.dumps(measure_interleaved(given) if "methods" in given else measure(given)))
