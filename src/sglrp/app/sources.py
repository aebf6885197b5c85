"""Images an evaluation runs on: generated shapes or a VOC folder, loaded on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import generate, load_voc
from ..images import read_labels
from ..loading import ModelBundle, load_model, output_size

__all__ = ["BUILTIN_N", "DataSource", "batches", "load_run_model", "open_data"]


@dataclass
class DataSource:
    """Images to evaluate, loaded on demand.

    Attributes
    ----------
    name
        ``"builtin"`` or the folder.
    ids
        Image identifiers (``multi/000003``, ``voc/000012``, ...), in evaluation order.
    load
        ``load(i) -> sglrp.data.Sample`` for position ``i`` of ``ids``.
    """

    name: str
    ids: list[str]
    load: Callable[[int], Any]

    def __len__(self) -> int:
        return len(self.ids)


BUILTIN_N = 48


def load_run_model(
    spec: str,
    weights: str | None = None,
    labels: str | None = None,
    random_weights: int | None = None,
) -> ModelBundle:
    """The model an evaluation runs (any :func:`sglrp.loading.load_model` spec) with its
    class names: the model's own, or those of the ``labels`` file (one per output)."""
    bundle = load_model(spec, weights, random_weights=random_weights)
    if labels is not None:
        names = tuple(read_labels(labels))
        n = output_size(bundle.model, bundle.size)
        if len(names) != n:
            raise ValueError(f"--labels {labels} has {len(names)} names but the model outputs {n}")
        bundle.classes = names
    if not bundle.classes:
        raise ValueError(
            f"--model {spec}: evaluation needs the model's class names (the names in the VOC "
            "annotations); pass --labels FILE, or use a shipped model or a weights file "
            "written by `sglrp train` (its JSON lists the classes)"
        )
    return bundle


def open_data(spec: str, n: int | None, seed: int, bundle: ModelBundle) -> DataSource:
    """``"builtin"``: ``n`` multi-object then ``n`` single-object images; else a VOC folder."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"--n must be a positive integer, got {n!r}")
    if spec == "builtin":
        count = BUILTIN_N if n is None else n
        ids = [f"{s}/{i:06d}" for s in ("multi", "single") for i in range(count)]

        def load(i: int) -> Any:
            split, index = ("multi", i) if i < count else ("single", i - count)
            return generate(split, 1, seed, bundle.size, start=index)[0]

        return DataSource("builtin", ids, load)
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder {folder} does not exist; pass --data builtin or a VOC folder "
            "(Annotations/, JPEGImages/)"
        )
    samples = load_voc(folder, classes=bundle.classes, box_masks=False)
    if not samples:
        raise ValueError(f"{folder} holds no images (no Annotations/*.xml)")
    stems = [p.stem for p in sorted((folder / "Annotations").glob("*.xml"))]
    if n is not None:
        samples, stems = samples[:n], stems[:n]
    shapes = {s.image.shape for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"images in {folder} differ in size ({', '.join(map(str, sorted(shapes)))}); "
            "resize them to the model's input size first"
        )
    return DataSource(str(folder), [f"voc/{s}" for s in stems], lambda i: samples[i])


def batches(total: int, batch_size: int) -> list[range]:
    """Consecutive index ranges of ``batch_size`` (the last may be shorter)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    return [range(lo, min(lo + batch_size, total)) for lo in range(0, total, batch_size)]
