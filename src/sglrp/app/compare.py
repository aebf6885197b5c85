"""Several models through the same reproduction, and one page that compares them.

``sglrp reproduce`` with more than one model (by default every shipped model) runs
:func:`sglrp.app.reproduce.reproduce` for each into ``OUT/<model>/`` and writes
``OUT/index.html`` and ``OUT/summary.md``: per measure, every method's mean on every model
(the best method of each model in bold), the model-by-model ranking of the methods, and links
to the per-model reports. The time budget of one full run is shared: each model gets
``n // len(models)`` images per split (at least :data:`MIN_IMAGES`), and the page says so.
"""

from __future__ import annotations

import html
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..atomic import write_text
from .config import EvalConfig
from .findings import digits, label, method_name, number
from .reproduce import reproduce

__all__ = [
    "MIN_IMAGES",
    "collapse_depths",
    "images_per_model",
    "layers_note",
    "ranking",
    "render_comparison_html",
    "render_comparison_markdown",
    "reproduce_models",
]

#: Fewest images per built-in split a model gets when the budget is shared.
MIN_IMAGES = 20


def images_per_model(n: int, models: int) -> int:
    """Each of ``models`` models' share of ``n`` images per split, but at least
    ``min(n, MIN_IMAGES)``."""
    return n if models <= 1 else max(min(n, MIN_IMAGES), n // models)


def reproduce_models(
    cfg: EvalConfig,
    models: Sequence[str],
    out: str | Path,
    grid_images: int,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    restart: bool = False,
) -> Path | None:
    """Reproduce ``cfg`` on every model into ``out/<model>/`` and write the comparison page.

    Each ``out/<model>/`` is one run folder (:mod:`sglrp.app.store`); ``restart`` moves the
    run already in it aside.

    ``cfg.n`` is the budget of one model; it is shared (see :func:`images_per_model`).
    Returns ``out/index.html`` (None on the non-root ranks of a torchrun job).
    """
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    start = time.perf_counter()
    n = images_per_model(cfg.n, len(models))
    results: dict[str, dict[str, Any]] = {}
    for i, model in enumerate(models, 1):
        say(f"model {i}/{len(models)}: {model} ({n} images per split)")
        report = reproduce(
            replace(cfg, model=model, n=n),
            out / model,
            grid_images,
            progress=progress,
            log=say,
            restart=restart,
        )
        if report is None:
            return None
        results[model] = json.loads((out / model / "metrics.json").read_text())
        collapse = out / model / "collapse.json"
        if collapse.is_file():
            results[model]["collapse"] = json.loads(collapse.read_text())
    note = (
        f"{len(models)} models share one run's budget: {n} images per split each "
        f"(one model alone: {cfg.n})."
        if n != cfg.n
        else f"{n} images per split for each model."
    )
    seconds = time.perf_counter() - start
    write_text(out / "summary.md", render_comparison_markdown(results, note))
    return write_text(out / "index.html", render_comparison_html(results, note, seconds))


def _measures(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """Measures present for every model, in the first model's order."""
    first = next(iter(results.values()))["metrics"]
    return [(k, e) for k, e in first.items() if all(k in r["metrics"] for r in results.values())]


def _methods(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    first = list(next(iter(results.values()))["methods"])
    return [m for m in first if all(m in r["methods"] for r in results.values())]


def _cells(
    results: Mapping[str, Mapping[str, Any]], key: str, method: str, bold: Callable[[str], str]
) -> list[str]:
    cells = []
    for data in results.values():
        entry = data["metrics"][key]
        text = number(entry["methods"].get(method, {}).get("mean"), digits(entry))
        cells.append(bold(text) if method == entry.get("best") else text)
    return cells


def layers_note(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per model, the layers of the methods that work at one layer ("" if none)."""
    per_model = [
        f"{model}: " + ", ".join(method_name(data, m) for m in data.get("method_layers", {}))
        for model, data in results.items()
        if data.get("method_layers")
    ]
    return "Layers of the CAM methods per model: " + "; ".join(per_model) + "." if per_model else ""


def ranking(results: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, list[str]]:
    """Per model, the methods of measure ``key`` best first."""
    return {model: list(data["metrics"][key].get("ranking", [])) for model, data in results.items()}


def render_comparison_markdown(results: Mapping[str, Mapping[str, Any]], note: str) -> str:
    """``summary.md`` of a multi-model reproduction: a methods x models table per measure."""
    models, methods = list(results), _methods(results)
    lines = [f"# Comparison of {len(methods)} methods on {len(models)} models", "", note, ""]
    if layers_note(results):
        lines += [layers_note(results), ""]
    for key, entry in _measures(results):
        lines += [f"## {entry['title']} ({entry['direction']} is better)", ""]
        lines += ["| method | " + " | ".join(models) + " |", "|" + " --- |" * (len(models) + 1)]
        for m in methods:
            cells = _cells(results, key, m, lambda t: f"**{t}**")
            lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        order = ranking(results, key)
        lines += [
            "",
            "Ranking: "
            + "; ".join(
                f"{model}: {' > '.join(label(m) for m in order[model])}" for model in models
            ),
            "",
        ]
    lines += _collapse_lines(results)
    lines += ["Per-model reports: " + ", ".join(f"[{m}]({m}/index.html)" for m in models), ""]
    return "\n".join(lines)


def collapse_depths(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Per model and rule set, the first layer (from the logits) where the class-collapse
    cosine exceeds 0.99, or "never"; models without a collapse curve are left out."""
    table = {}
    for model, data in results.items():
        collapse = data.get("collapse")
        if not collapse:
            continue
        layers = collapse["layers"]
        table[model] = {
            rules: next(
                (
                    f"{layers[i]} (layer {i})"
                    for i, v in enumerate(vs)
                    if v is not None and v > 0.99
                ),
                "never",
            )
            for rules, vs in collapse["curves"].items()
        }
    return table


def _collapse_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    depths = collapse_depths(results)
    if not depths:
        return []
    rules = list(next(iter(depths.values())))
    lines = ["## Class collapse: first layer where the classes' relevance has cosine > 0.99", ""]
    lines += ["| model | " + " | ".join(rules) + " |", "|" + " --- |" * (len(rules) + 1)]
    lines += [
        f"| {m} | " + " | ".join(d.get(r, "") for r in rules) + " |" for m, d in depths.items()
    ]
    return [*lines, ""]


def render_comparison_html(
    results: Mapping[str, Mapping[str, Any]], note: str, seconds: float | None = None
) -> str:
    """``index.html`` of a multi-model reproduction (self-contained, links to each model)."""
    models, methods = list(results), _methods(results)
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sglrp: {len(methods)} methods on {len(models)} models</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>",
        f"<h1>{len(methods)} methods on {len(models)} models</h1>",
        f"<p>{esc(note)}"
        + (f" Run time {seconds:.0f} s." if seconds is not None else "")
        + " Bold: the best method of each model on the measure. "
        + esc(layers_note(results))
        + "</p>",
        "<p>Per-model reports: "
        + ", ".join(f"<a href='{esc(m)}/index.html'>{esc(m)}</a>" for m in models)
        + "</p>",
    ]
    for key, entry in _measures(results):
        parts.append(f"<h2>{esc(entry['title'])} ({esc(entry['direction'])} is better)</h2>")
        parts.append(
            "<table><tr><th>method</th>" + "".join(f"<th>{esc(m)}</th>" for m in models) + "</tr>"
        )
        for m in methods:
            cells = _cells(results, key, m, lambda t: f"<b>{t}</b>")
            parts.append(
                f"<tr><td>{esc(label(m))}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
            )
        parts.append("</table>")
    depths = collapse_depths(results)
    if depths:
        rules = list(next(iter(depths.values())))
        parts.append(
            "<h2>Class collapse</h2><p>First layer, counted from the logits, where the "
            "classes' relevance has mean pairwise cosine above 0.99 (see each "
            "model's report for the curves).</p>"
        )
        parts.append(
            "<table><tr><th>model</th>" + "".join(f"<th>{esc(r)}</th>" for r in rules) + "</tr>"
        )
        for model, d in depths.items():
            parts.append(
                f"<tr><td>{esc(model)}</td>"
                + "".join(f"<td>{esc(d.get(r, ''))}</td>" for r in rules)
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
