"""The run directory: one run, never mixed, never lost.

``OUT/run.json`` holds the run's kind (``evaluate`` or ``reproduce``), its settings (model
spec and weights SHA-256, data, methods, metrics, seed, sizes) and their short hash, the
*identity*; it is written before any result. Each finished batch is a JSON line in
``OUT/parts/rank<r>.jsonl`` carrying that hash (``"run"``); at the end the lines are merged
into ``OUT/results.jsonl``. While a process works on ``OUT`` it holds an exclusive
``fcntl.flock`` on ``OUT/.lock`` (its pid written inside), so a second run on the same folder
is refused instead of interleaving with the first.

Starting a run (:func:`prepare`) either resumes (same kind, same identity, every result line
of that identity), starts afresh in a folder without results, or refuses with
:class:`RunDirError`: other settings, another kind of run, result lines of another identity,
or results whose ``run.json`` is missing, empty or unreadable. With ``restart`` the previous
run's files are moved to ``OUT/previous-<timestamp>/``; nothing is ever deleted. Temporary
files a killed process left (:func:`sglrp.atomic.temp_pattern` of the run's own files) are
removed at the start.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..atomic import atomic_open, file_mode, named_os_error, temp_pattern, write_json
from .plots import PLOTS

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OUTPUTS",
    "RunDirError",
    "append_record",
    "clean_temp",
    "identity_hash",
    "move_aside",
    "open_part",
    "prepare",
    "read_records",
    "rewrite_valid",
    "run_lock",
    "write_results",
]

#: Files of a run in its folder (moved aside together by ``--restart``), besides ``parts/``.
OUTPUTS: tuple[str, ...] = (
    "run.json",
    "results.jsonl",
    "metrics.json",
    "metrics.csv",
    *(name for name, _, _ in PLOTS.values()),
    "comparison_grid.png",
    "collapse.json",
    "collapse.png",
    "summary.md",
    "index.html",
)
LOCK = ".lock"
_HINT = "pass --restart to move the old run to {out}/previous-<time>/, or pass another --out"
_HELD: dict[Path, int] = {}


class RunDirError(ValueError):
    """A run folder that cannot be used as asked (another run, a lock, a broken identity)."""


def identity_hash(identity: Mapping[str, Any]) -> str:
    """Short SHA-256 (16 hex digits) of the identity's canonical JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``out`` (re-entrant within one process).

    Raises
    ------
    RunDirError
        Another process holds it; the message names the folder and the holder's pid.
    """
    key = Path(out).resolve()
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunDirError(
                f"{out} is in use by another sglrp run (pid {holder}); wait for it to finish "
                "or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _part_files(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("*.jsonl"))


def clean_temp(out: Path) -> list[Path]:
    """Remove the temporary files a killed run left beside its own files; returns them."""
    found = [p for name in OUTPUTS for p in out.glob(temp_pattern(name))]
    found += list((out / "parts").glob(temp_pattern("rank*.jsonl")))
    for path in found:
        if path.is_file():
            path.unlink()
    return found


def _existing(out: Path) -> list[str]:
    """The run files present in ``out`` (non-empty part files only), ``run.json`` excluded."""
    names = [n for n in OUTPUTS[1:] if (out / n).exists()]
    names += [str(p.relative_to(out)) for p in _part_files(out) if p.stat().st_size]
    return names


def _read_run(out: Path) -> tuple[str, dict[str, Any]]:
    """``("ok", doc)`` or a description of what ``run.json`` is instead."""
    path = out / "run.json"
    if not path.is_file():
        return "missing", {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"unreadable ({type(err).__name__})", {}
    if doc == {}:
        return "empty ({})", {}
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        return "without settings", {}
    if "identity" not in doc or "kind" not in doc:
        return "from an older sglrp (no identity hash)", {}
    return "ok", doc


def move_aside(out: Path) -> Path:
    """Move the run's files (and ``parts/``) to a new ``out/previous-<timestamp>/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, k = out / f"previous-{stamp}", 1
    while dest.exists():
        k += 1
        dest = out / f"previous-{stamp}-{k}"
    dest.mkdir()
    for name in (*OUTPUTS, "parts"):
        if (out / name).exists():
            os.replace(out / name, dest / name)
    return dest


def prepare(
    out: Path,
    identity: Mapping[str, Any],
    kind: str,
    *,
    restart: bool = False,
    say: Callable[[str], None] = lambda s: None,
) -> str:
    """Make ``out`` ready for the run of ``identity`` (the caller holds :func:`run_lock`).

    Returns the identity hash. ``run.json`` is written when the run starts afresh; a resumed
    run's is left as it is.

    Raises
    ------
    RunDirError
        ``out`` holds another run (or results without a readable identity) and not
        ``restart``.
    """
    out.mkdir(parents=True, exist_ok=True)
    clean_temp(out)
    rid = identity_hash(identity)
    status, doc = _read_run(out)
    existing = _existing(out)
    hint = _HINT.format(out=out)
    problem = None
    if status == "ok":
        if doc["kind"] != kind:
            problem = f"{out} holds an `sglrp {doc['kind']}` run, not `sglrp {kind}`; {hint}"
        elif doc["settings"] != identity or doc["identity"] != rid:
            old = doc["settings"]
            diff = [k for k in sorted({*identity, *old}) if old.get(k) != identity.get(k)]
            problem = (
                f"{out} holds results of a run with different settings "
                f"({', '.join(diff) or 'identity'}); {hint}"
            )
    elif existing:
        problem = (
            f"{out} holds run files ({', '.join(existing[:3])}) but its run.json is {status}; "
            f"they were kept: {hint}"
        )
    if restart:
        if existing or (out / "run.json").exists():
            say(f"moved the previous run's files to {move_aside(out)}")
    elif problem is not None:
        raise RunDirError(problem)
    elif status == "ok":
        return rid  # resume
    elif (out / "run.json").exists():  # an unusable run.json and no results: keep it aside
        say(f"run.json was {status}; moved it to {move_aside(out)}")
    write_json(out / "run.json", {"kind": kind, "identity": rid, "settings": dict(identity)})
    return rid


def _read_jsonl(path: Path, rid: str, out: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a torn last line (interrupted write) is dropped.

    Raises
    ------
    RunDirError
        A line belongs to another run (its ``"run"`` hash is not ``rid``).
    """
    out = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(rec, dict) and "batch" in rec):
                continue
            if rec.get("run") != rid:
                raise RunDirError(
                    f"{path} line {number} belongs to another run (identity "
                    f"{rec.get('run') or 'none'}, this run {rid}); nothing was mixed: "
                    + _HINT.format(out=out)
                )
            out.append(rec)
    return out


def read_records(out: Path, rid: str) -> dict[int, dict[str, Any]]:
    """Every finished batch of run ``rid`` in ``out`` (``results.jsonl``, ``parts/*.jsonl``)."""
    records: dict[int, dict[str, Any]] = {}
    for path in [out / "results.jsonl", *_part_files(out)]:
        if path.is_file():
            for rec in _read_jsonl(path, rid, out):
                records.setdefault(int(rec["batch"]), rec)
    return records


def rewrite_valid(path: Path) -> None:
    """Drop a torn last line from a part file before appending to it again."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        with atomic_open(path, "wb") as handle:
            handle.write(keep)


@contextmanager
def open_part(path: Path) -> Iterator[int]:
    """File descriptor of a part file opened for appending (created with the umask's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rewrite_valid(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    try:
        yield fd
    finally:
        os.close(fd)


def append_record(fd: int, path: Path, record: Mapping[str, Any]) -> None:
    """Append one batch's record as a JSON line, synced to disk; all of it or nothing.

    A failed write (a full disk) truncates the file back to where it was and raises the
    ``OSError`` naming ``path``.
    """
    data = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as err:
        with suppress(OSError):
            os.ftruncate(fd, size)
        raise named_os_error(err, path) from err


def write_results(out: Path, records: Mapping[int, Mapping[str, Any]]) -> None:
    """Merge every record into ``results.jsonl`` (by batch) and remove the part files."""
    with atomic_open(out / "results.jsonl", "w", encoding="utf-8") as handle:
        for b in sorted(records):
            handle.write(json.dumps(records[b], allow_nan=False) + "\n")
    for part in _part_files(out):
        part.unlink()
