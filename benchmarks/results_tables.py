"""RESULTS.md's reproduction tables from a ``sglrp reproduce`` folder (one row per method,
one column per model; each cell: all units / multi-object units, and for the second-class
measure the units whose second class is present / absent; Random's expected value where it
has a closed form).

Usage: ``python benchmarks/results_tables.py REPORT_DIR [--measures a,b]`` (e.g. after
``make demo``: ``python benchmarks/results_tables.py report``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MEASURES = (
    "extended_pointing_game",
    "pointing_game",
    "relevance_mass_accuracy",
    "patch_masking_second",
)


def _cell(entry: dict, second: bool) -> str:
    subsets = entry.get("subsets", {})
    parts = [entry.get("mean"), subsets.get("multi_object", {}).get("mean")]
    if second:
        parts += [subsets.get(k, {}).get("mean") for k in ("second_present", "second_absent")]
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in parts)


def tables(folder: Path, measures: tuple[str, ...]) -> str:
    """Markdown tables of ``measures`` for every model folder under ``folder``."""
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/metrics.json"))}
    if not runs:
        raise SystemExit(f"no <model>/metrics.json under {folder}; run sglrp reproduce first")
    models = list(runs)
    out = []
    for key in measures:
        first = next((r["metrics"][key] for r in runs.values() if key in r["metrics"]), None)
        if first is None:
            continue
        second = key == "patch_masking_second"
        cells = "all / multi-object" + (" / second present / absent" if second else "")
        out += [f"{first['title']} ({first['direction']} is better; {cells}):", ""]
        out += ["| method | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        methods = list(dict.fromkeys(m for r in runs.values() for m in r["methods"]))
        for method in methods:
            label = next(r["method_labels"].get(method, method) for r in runs.values())
            row = [
                _cell(r["metrics"][key]["methods"][method], second)
                if method in r["metrics"].get(key, {}).get("methods", {})
                else "-"
                for r in runs.values()
            ]
            out.append(f"| {label} | " + " | ".join(row) + " |")
        expected = [r["metrics"][key].get("random_expectation", {}) for r in runs.values()]
        if any(e.get("closed_form") for e in expected):
            values = ["n/a" if e.get("mean") is None else f"{e['mean']:.3f}" for e in expected]
            out.append("| Random, expected | " + " | ".join(values) + " |")
        sizes = ", ".join(f"{m}: {runs[m]['n_images']} images" for m in models)
        out += ["", f"({sizes}.)", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--measures", default=",".join(MEASURES))
    args = parser.parse_args()
    print(tables(args.folder, tuple(m for m in args.measures.split(",") if m)))


if __name__ == "__main__":
    main()
