"""Atomic file output: a reader never sees a half-written file.

A file ``DIR/NAME`` is written to a hidden temporary file ``DIR/.NAME.<random><suffix>``
(:func:`temp_pattern` matches them, so a run can remove the ones a killed process left) and
renamed into place in one step. The result gets the mode an ordinary ``open`` would give it
(``0o666 & ~umask``), not ``tempfile``'s private ``0o600``. A full disk is reported as
``OSError(ENOSPC)`` naming the file that was being written.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_path",
    "file_mode",
    "named_os_error",
    "temp_pattern",
    "write_json",
    "write_text",
    "write_with",
]


def temp_pattern(name: str) -> str:
    """Glob pattern of the temporary files :func:`atomic_path` creates for a file ``name``."""
    return f".{name}.*"


def file_mode() -> int:
    """Mode of a new file under the current umask: ``0o666 & ~umask``."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def named_os_error(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` with ``path`` as its file name when it has none (a failed ``write`` names none)."""
    if err.filename is not None:
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno or 0), str(path))


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so writers that pick the
    format from the extension (Pillow, matplotlib, numpy) do the right thing. On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent,
        prefix=temp_pattern(path.name)[:-1],
        suffix=suffix or path.suffix or ".tmp",
    )
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise named_os_error(err, path) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` that writes to a temporary file and renames it into place on success."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)
