"""Class names on the command line: the ``--target`` option read against a model's classes."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..data import IMAGENET_NUM_CLASSES, imagenet_classes

__all__ = [
    "IMAGENET_NOTE",
    "class_name",
    "default_classes",
    "format_probability",
    "resolve_target",
]


def class_name(classes: Sequence[str] | None, index: int) -> str:
    """Name of class ``index``, or ``"class <index>"`` without names."""
    return classes[index] if classes else f"class {index}"


IMAGENET_NOTE = "class names: ImageNet-1k (the model has 1000 outputs and no names of its own)"


def default_classes(
    classes: Sequence[str] | None, num_classes: int
) -> tuple[Sequence[str] | None, str | None]:
    """The model's own class names; else ImageNet-1k's for 1000 outputs (with a note).

    Returns ``(names or None, note or None)``.
    """
    if classes or num_classes != IMAGENET_NUM_CLASSES:
        return classes, None
    return imagenet_classes(), IMAGENET_NOTE


def format_probability(p: float) -> str:
    """A probability with enough digits to tell it from 0: ``0.9612``, ``0.0123``, ``3.1e-05``.

    Four decimals from 0.001 up, two significant digits in scientific notation below, ``0``
    only for an exact zero.
    """
    if p == 0:
        return "0"
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.2g}"


def resolve_target(spec: str, classes: Sequence[str] | None, num_classes: int) -> str | int:
    """``"predicted"``/``"second"`` as they are; an index or class name -> class index."""
    spec = spec.strip()
    if spec in ("predicted", "second"):
        if spec == "second" and num_classes < 2:
            raise ValueError("--target second needs a model with at least 2 classes")
        return spec
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < num_classes:
            raise ValueError(
                f"--target {index} is out of range: the model has classes 0 ... {num_classes - 1}"
            )
        return index
    if not classes:
        raise ValueError(
            f"--target {spec!r} is a class name but the model has no class names; pass "
            f"--labels FILE or a class index 0 ... {num_classes - 1}"
        )
    for norm in (lambda s: s, lambda s: s.casefold().replace("_", " ").replace("-", " ")):
        hits = [i for i, c in enumerate(classes) if norm(c) == norm(spec)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(
                f"--target {spec!r} names several classes ({', '.join(map(str, hits))}); "
                "pass the class index"
            )
    close = difflib.get_close_matches(spec, list(classes), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = ", ".join(list(classes)[:8]) + (", ..." if len(classes) > 8 else "")
    raise ValueError(f"unknown class name {spec!r}.{hint} Valid names ({len(classes)}): {shown}")
