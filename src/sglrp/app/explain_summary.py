"""The combined outputs of one ``sglrp explain`` call: ``summary.json`` and ``summary.csv``.

One row per image, in the order given: where its outputs are, the predicted class and the
target with their probabilities, any caution, or the error that stopped it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_open, write_json

__all__ = ["COLUMNS", "summary_row", "write_summary"]

#: Columns of ``summary.csv``.
COLUMNS: tuple[str, ...] = (
    "image",
    "folder",
    "status",
    "predicted",
    "predicted_index",
    "predicted_probability",
    "target",
    "target_index",
    "target_probability",
    "caution",
    "error",
)


def summary_row(
    image: Path,
    folder: Path,
    summary: Mapping[str, Any] | None = None,
    error: BaseException | str | None = None,
) -> dict[str, Any]:
    """The row of one image: from its ``explanation.json`` content, or its error."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(image=str(image), folder=str(folder), status="error" if summary is None else "ok")
    if summary is None:
        row["folder"] = None
        row["error"] = str(error) if error is not None else "failed"
        return row
    top, target = summary["top5"][0], summary["target"]
    row.update(
        predicted=top["name"],
        predicted_index=top["index"],
        predicted_probability=top["probability"],
        target=target["name"],
        target_index=target["index"],
        target_probability=target["probability"],
        caution=(summary.get("caution") or {}).get("message"),
    )
    return row


def write_summary(out: Path, rows: Sequence[Mapping[str, Any]], options: Mapping[str, Any]) -> None:
    """Write ``out/summary.json`` (rows, counts, options) and ``out/summary.csv`` (rows)."""
    failed = sum(r["status"] != "ok" for r in rows)
    write_json(
        out / "summary.json",
        {
            "images": len(rows),
            "explained": len(rows) - failed,
            "failed": failed,
            "options": dict(options),
            "rows": [dict(r) for r in rows],
            "sglrp_version": __version__,
        },
    )
    with atomic_open(out / "summary.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
