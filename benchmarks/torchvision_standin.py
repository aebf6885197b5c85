"""A stand-in ``torchvision`` for zennit, which imports torchvision at import time.

torchvision cannot be imported in the project's environment. zennit only needs
``torchvision.models.resnet.BasicBlock`` and ``Bottleneck`` (for its ResNet canonizer); the
stand-in maps them to sglrp's own blocks, which have torchvision's layout. Used by the speed
benchmark and by the test suite (``tests/conftest.py``).
"""

from __future__ import annotations

import sys
import types

from sglrp.models.resnet import BasicBlock, Bottleneck


def install_torchvision_standin() -> None:
    """Put a stand-in ``torchvision`` with only what zennit touches into ``sys.modules``.

    Call it before ``import zennit``. A no-op when the stand-in is already installed.
    """
    current = sys.modules.get("torchvision")
    if current is not None and getattr(current, "_sglrp_standin", False):
        return
    tv = types.ModuleType("torchvision")
    tv._sglrp_standin = True
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = BasicBlock
    resnet.Bottleneck = Bottleneck
    models.resnet = resnet
    tv.models = models
    sys.modules.update(
        {"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet}
    )
