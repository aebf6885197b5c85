"""Throughput of the evaluation runner and where its time goes, measured from outside.

:func:`measure_evaluate` runs ``sglrp.app.runner.run`` (what ``sglrp evaluate`` runs)
once into a temporary folder, with the module-level functions of the runner and of its batch
loop (:mod:`sglrp.app.batch`) wrapped by timers for
the duration of the run only: ``explain_relevance`` (per method), the model-based metrics
(their perturbations and forward passes), the localisation metrics, image loading, model
loading and output writing. The runner's code is not changed; a function it no longer has
is listed under ``missing`` instead of timed.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import torch

from sglrp.app import batch, config, runner

#: The modules whose functions are timed, searched in this order.
MODULES = (runner, batch)

#: Part of the breakdown -> runner functions timed under it.
PARTS: dict[str, tuple[str, ...]] = {
    "model-based metrics": (
        "second_most_probable",
        "average_drop",
        "deletion",
        "insertion",
        "patch_masking",
    ),
    "localisation metrics": (
        "extended_pointing_game",
        "pointing_game",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
    ),
    "set-up": ("load_model", "open_data"),
    "writing outputs": ("write_outputs",),
    "batches": ("compute_batch",),
}


class Timers:
    """Accumulated seconds and call counts per key."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.calls[key] = self.calls.get(key, 0) + 1

    def wrap(self, key: str | Callable[..., str], fn: Callable) -> Callable:
        """``fn`` timed under ``key`` (or under ``key(*args, **kwargs)``)."""

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(
                    key(*args, **kwargs) if callable(key) else key, time.perf_counter() - start
                )

        return timed


def _method_key(bundle, x, targets, method, *rest, **kwargs) -> str:
    return f"explain {method}"


@contextmanager
def _timed_runner(timers: Timers, missing: list[str]):
    """Wrap the runner's functions with timers; restore them on exit."""
    originals: list[tuple[Any, str, Callable]] = []
    names = {name: name for part in PARTS.values() for name in part}
    names["explain_relevance"] = _method_key
    for name, key in names.items():
        module = next((m for m in MODULES if callable(getattr(m, name, None))), None)
        if module is None:
            missing.append(name)
            continue
        fn = getattr(module, name)
        originals.append((module, name, fn))
        if name == "open_data":
            setattr(module, name, _timed_open_data(timers, fn))
        else:
            setattr(module, name, timers.wrap(key, fn))
    try:
        yield
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


def _timed_open_data(timers: Timers, open_data: Callable) -> Callable:
    """``open_data`` timed, and the ``load`` of the source it returns timed per image."""

    def timed(*args, **kwargs):
        source = timers.wrap("open_data", open_data)(*args, **kwargs)
        source.load = timers.wrap("load image", source.load)
        return source

    return timed


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    fields = {"model", "data", "n", "batch_size", "seed", "steps"}
    settings = {k: v for k, v in spec.items() if k in fields and v is not None}
    for key in ("methods", "metrics"):
        if spec.get(key):
            settings[key] = tuple(spec[key])
    cfg = config.EvalConfig(device="cpu", **settings)
    timers, missing = Timers(), []
    with tempfile.TemporaryDirectory() as out, _timed_runner(timers, missing):
        start = time.perf_counter()
        data = runner.run(cfg, out, progress=False, log=lambda message: None)
        total = time.perf_counter() - start
    return {
        "status": "ok",
        "settings": cfg.identity(),
        "total_s": total,
        "n_images": data["n_images"],
        "n_units": data["n_units"],
        "methods": data["methods"],
        "seconds": timers.seconds,
        "calls": timers.calls,
        "missing": missing,
        "threads": torch.get_num_threads(),
    }


def measure_evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the evaluation of ``spec`` once; never raises (a failure is returned)."""
    try:
        return _run(spec)
    except Exception as err:  # noqa: BLE001 - reported, not raised
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        return {"status": "failed", "reason": f"{type(err).__name__}: {err} ({where})"}


def child(spec: dict[str, Any], conn: Connection) -> None:
    """Entry point of a forked process: send the result through ``conn``."""
    conn.send(measure_evaluate(spec))
    conn.close()


def breakdown(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """``(part, seconds, calls)`` rows: explanations per method, metrics, loading, the rest.

    "rest of batches" is the batches' time not in explanations, metrics or image loading
    (the prediction forward pass, heatmaps, bookkeeping); "rest of run" is the run's time
    outside batches, set-up and writing.
    """
    sec, calls = result["seconds"], result["calls"]
    rows: list[tuple[str, float, int]] = []
    explain = sorted(k for k in sec if k.startswith("explain "))
    rows += [(k, sec[k], calls[k]) for k in explain]
    rows.append(("explanations, all methods", sum(sec[k] for k in explain), 0))
    inner = sum(sec[k] for k in explain)
    for part in ("model-based metrics", "localisation metrics"):
        names = [n for n in PARTS[part] if n in sec]
        rows += [(f"  {n}", sec[n], calls[n]) for n in names]
        rows.append((part, sum(sec[n] for n in names), 0))
        inner += sum(sec[n] for n in names)
    rows.append(("image loading", sec.get("load image", 0.0), calls.get("load image", 0)))
    inner += sec.get("load image", 0.0)
    batches = sec.get("compute_batch", 0.0)
    rows.append(("rest of batches", batches - inner, 0))
    outer = sum(sec.get(n, 0.0) for n in ("load_model", "open_data", "write_outputs"))
    for name in ("load_model", "open_data", "write_outputs"):
        rows.append((name, sec.get(name, 0.0), calls.get(name, 0)))
    rows.append(("rest of run", result["total_s"] - batches - outer, 0))
    return rows
