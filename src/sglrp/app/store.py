"""The run directory: ``run.json`` (the settings), per-rank ``parts/*.jsonl`` streamed batch by
batch, the merged ``results.jsonl``, and what resuming reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ..atomic import atomic_open

__all__ = [
    "append_record",
    "check_run",
    "clear_state",
    "read_records",
    "rewrite_valid",
    "write_results",
]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a torn last line (interrupted write) is dropped."""
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "batch" in rec:
                out.append(rec)
    return out


def read_records(out: Path) -> dict[int, dict[str, Any]]:
    """Every finished batch in ``out`` (``results.jsonl`` and ``parts/*.jsonl``), by index."""
    files = [out / "results.jsonl", *sorted((out / "parts").glob("*.jsonl"))]
    records: dict[int, dict[str, Any]] = {}
    for path in files:
        if path.is_file():
            for rec in _read_jsonl(path):
                records.setdefault(int(rec["batch"]), rec)
    return records


def check_run(out: Path, identity: dict[str, Any], restart: bool) -> bool:
    """True when ``out`` holds results of other settings (an error unless ``restart``)."""
    path = out / "run.json"
    if not path.is_file():
        return False
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (json.JSONDecodeError, AttributeError):
        return True
    if previous is not None and previous != identity:
        if restart:
            return True
        diff = [k for k in identity if previous.get(k) != identity[k]]
        raise ValueError(
            f"{out} holds results of a run with different settings ({', '.join(diff)}); "
            "pass a new --out folder or delete the old one to start afresh"
        )
    return False


def clear_state(out: Path) -> None:
    """Remove a previous run's state (``run.json``, ``results.jsonl``, ``parts/``)."""
    for path in (out / "run.json", out / "results.jsonl", *(out / "parts").glob("*.jsonl")):
        if path.is_file():
            path.unlink()


def rewrite_valid(path: Path) -> None:
    """Drop a torn last line from a part file before appending to it again."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        with atomic_open(path, "wb") as handle:
            handle.write(keep)


def append_record(handle: IO[str], record: Mapping[str, Any]) -> None:
    """Append one batch's record as a JSON line, flushed and synced to disk."""
    handle.write(json.dumps(record, allow_nan=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def write_results(out: Path, records: Mapping[int, Mapping[str, Any]]) -> None:
    """Merge every record into ``results.jsonl`` (by batch) and remove the part files."""
    with atomic_open(out / "results.jsonl", "w", encoding="utf-8") as handle:
        for b in sorted(records):
            handle.write(json.dumps(records[b], allow_nan=False) + "\n")
    for part in sorted((out / "parts").glob("*.jsonl")):
        part.unlink()
