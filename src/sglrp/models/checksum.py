"""SHA-256 verification of weights files against the JSON written beside them.

``sglrp train`` (and the shipped models in ``sglrp/weights``) write ``NAME.pt`` together with
``NAME.json``, whose ``"sha256"`` entry is the hex SHA-256 of the ``.pt`` file's bytes. Every
loader reads the bytes once, verifies them with :func:`verify_sha256` and deserialises those
same bytes, so a file cannot change between the check and the load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

__all__ = ["read_verified", "sidecar_sha256", "verify_sha256"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def verify_sha256(data: bytes, expected: object, file: object, sidecar: object) -> None:
    """Raise ``ValueError`` unless ``sha256(data)`` is ``expected``.

    Parameters
    ----------
    data
        The weights file's bytes.
    expected
        The hex digest recorded in ``sidecar`` (case-insensitive).
    file, sidecar
        Names of the weights file and of the JSON holding ``expected``, for the message.
    """
    if expected is None:
        raise ValueError(
            f"{sidecar} records no 'sha256' of {file}, so the weights cannot be verified; "
            "re-train with `sglrp train` (or reinstall sglrp for the shipped models)"
        )
    if not isinstance(expected, str) or not _HEX64.fullmatch(expected.strip().lower()):
        raise ValueError(
            f"{sidecar}: 'sha256' is {expected!r}, not a 64-digit hex SHA-256 of {file}; "
            "re-train with `sglrp train` (or reinstall sglrp for the shipped models)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.strip().lower():
        raise ValueError(
            f"{file}: checksum does not match {sidecar} (sha256 {digest[:12]}..., expected "
            f"{expected.strip().lower()[:12]}...); the file is corrupted or was replaced - "
            "reinstall sglrp for the shipped models, or re-train with `sglrp train` (which "
            "writes both files)"
        )


def sidecar_sha256(path: str | os.PathLike) -> tuple[Path, object] | None:
    """``(NAME.json, recorded sha256)`` for weights ``NAME.pt``, or ``None`` without a record.

    ``None`` when there is no ``NAME.json`` or when it is a JSON value other than an object
    with a ``"sha256"`` entry (then it is not a checksum sidecar). A ``NAME.json`` that is not
    valid JSON raises ``ValueError``: it may be a damaged sidecar, which must not pass silently.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar == path or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{sidecar} (beside the weights {path.name}) is not valid JSON ({err}); it should "
            "hold the file's sha256 - re-train with `sglrp train`, or move the JSON away"
        ) from err
    if not isinstance(meta, dict) or "sha256" not in meta:
        return None
    return sidecar, meta["sha256"]


def read_verified(path: str | os.PathLike) -> bytes:
    """The bytes of weights file ``path``, verified when ``NAME.json`` records a sha256."""
    path = Path(path)
    data = path.read_bytes()
    record = sidecar_sha256(path)
    if record is not None:
        verify_sha256(data, record[1], path, record[0])
    return data
