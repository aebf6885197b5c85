"""The ImageNet-1k (ILSVRC-2012) class names, index = the usual logit position.

``imagenet_classes.txt`` holds one name per line: the first WordNet lemma of each synset in
the standard class order (the list published with PyTorch Hub, ``imagenet_classes.txt``,
also Keras' ``imagenet_class_index.json``). Two names repeat as they do there: ``crane``
(134 the bird, 517 the machine) and ``maillot`` (638, 639).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["IMAGENET_NUM_CLASSES", "imagenet_classes"]

IMAGENET_NUM_CLASSES = 1000
_FILE = Path(__file__).with_name("imagenet_classes.txt")


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names (``imagenet_classes()[285] == "Egyptian cat"``)."""
    names = tuple(_FILE.read_text(encoding="utf-8").splitlines())
    if len(names) != IMAGENET_NUM_CLASSES:
        raise RuntimeError(f"{_FILE} holds {len(names)} names, not {IMAGENET_NUM_CLASSES}")
    return names
