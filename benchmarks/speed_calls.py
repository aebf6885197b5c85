"""The calls the speed benchmark measures: sglrp, a plain gradient, zennit, Captum, self-tests.

Each entry of :data:`METHODS` builds, from ``(model, x, targets, options)``, a function of no
arguments that computes one explanation of the batch ``x`` (N, C, H, W) for ``targets``
(N, K): K maps per image. Building may import a peer library; only the built call is timed.

A peer that is not installed raises :class:`NotAvailable` (the row reads "not available");
a peer that raises while building or calling (an unsupported layer, say) is a failed row
with its exception; neither stops the benchmark.

Self-tests, for checking the benchmark itself (``--methods``): ``selftest-alloc-<MB>``
allocates and fills a float32 tensor of <MB> MiB (its peak must read about <MB>);
``selftest-noop`` allocates nothing (its peak must be invalid: no rise above the floor);
``selftest-fail`` raises; ``selftest-exit`` ends its process abruptly; ``selftest-hang``
sleeps past any timeout.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision_standin import install_torchvision_standin

import sglrp
from sglrp.models import VGG, ResNet

#: Z^B bounds of ImageNet-normalised inputs, as the CLRP authors' code uses them.
BOUNDS = (-2.1179, 2.64)

Call = Callable[[], Any]
Builder = Callable[[nn.Module, Tensor, Tensor, dict], Call]


class NotAvailable(Exception):
    """The method cannot run in this installation (peer not installed, API not there yet)."""


def _gradient(model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
    """One forward pass, then one input gradient per target column (graph kept in between)."""
    k = targets.shape[1]

    def call() -> Tensor:
        xx = x.detach().requires_grad_(True)
        logits = model(xx)
        grads = [
            torch.autograd.grad(
                logits.gather(1, targets[:, j : j + 1]).sum(), xx, retain_graph=j < k - 1
            )[0]
            for j in range(k)
        ]
        return torch.stack(grads, dim=1)

    return call


#: Rows of a dense weight whose w+ is built at once by the floor (the engine's chunk size).
FLOOR_CHUNK_ELEMENTS = 1 << 20


def _zplus_forward(module: nn.Module, layer_input: Tensor) -> Tensor:
    """``module`` applied to ``layer_input`` with :math:`w^+` and no bias, built the cheapest
    way known here: a convolution's w+ at once, a dense layer's in row chunks written into one
    reused buffer (a 103 M weight is never copied whole)."""
    w = module.weight.detach()
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(layer_input, w.clamp(min=0), None)
    rows = max(1, FLOOR_CHUNK_ELEMENTS // w.shape[1])
    if len(w) <= rows:
        return F.linear(layer_input, w.clamp(min=0))
    buffer = w.new_empty(rows, w.shape[1])
    out = layer_input.new_empty(*layer_input.shape[:-1], w.shape[0])
    for i in range(0, len(w), rows):
        part = torch.clamp(w[i : i + rows], min=0, out=buffer[: len(w[i : i + rows])])
        out[..., i : i + rows] = F.linear(layer_input, part)
    return out


def _floor_zplus(model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
    """The z+ rule's floor: the gradient (forward and K input gradients) plus the one thing
    any z+ implementation must add, a forward of every Conv2d/Linear with :math:`w^+` (built
    per call) on the layer's input (captured once when the call is built). Nothing else: no
    division, no kept denominators, no modified backward; a lower bound of the time (the
    memory column of this row means nothing)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    seen: list[tuple[nn.Module, Tensor]] = []

    def capture(module: nn.Module, args: tuple, output: Tensor) -> None:
        seen.append((module, args[0].detach().clone()))

    handles = [m.register_forward_hook(capture) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    gradient = _gradient(model, x, targets, options)

    def call() -> Tensor:
        out = gradient()
        with torch.no_grad():
            for module, layer_input in seen:
                _zplus_forward(module, layer_input)
        return out

    return call


def _sglrp(method: str, rules: str, bounds: tuple[float, float] | None) -> Builder:
    def build(model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
        return lambda: sglrp.explain(model, x, targets, method=method, rules=rules, bounds=bounds)

    return build


def _explainer_reuse(model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
    """``sglrp.Explainer`` built once per timed run, then called ``explainer_reuse`` times."""
    explainer_cls = getattr(sglrp, "Explainer", None)
    if explainer_cls is None:
        raise NotAvailable("sglrp.Explainer does not exist yet")
    reuse = options["explainer_reuse"]

    def call() -> Tensor:
        explainer = explainer_cls(model, method="sglrp", rules="dtd", bounds=BOUNDS)
        for _ in range(reuse):
            out = explainer(x, targets)
        return out

    return call


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise NotAvailable(f"{package} is not installed")


def _zennit_epsilon_plus_flat(model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
    """zennit's EpsilonPlusFlat composite with the Gradient attributor, output relevance z_t.

    The canonizer fits the architecture (VGG or ResNet canonizer, else merging each
    BatchNorm into the layer before it); the composite is registered once per call and the K
    targets reuse it.
    """
    _require("zennit")
    install_torchvision_standin()
    # Optional peers are imported only when their row is measured (zennit after the stand-in).
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if isinstance(model, ResNet):
        canonizer = ResNetCanonizer()
    elif isinstance(model, VGG):
        canonizer = VGGCanonizer()
    else:
        canonizer = SequentialMergeBatchNorm()

    def call() -> Tensor:
        maps = []
        with Gradient(model, EpsilonPlusFlat(canonizers=[canonizer])) as attributor:
            for j in range(targets.shape[1]):
                column = targets[:, j : j + 1]

                def select(logits: Tensor, column: Tensor = column) -> Tensor:
                    return torch.zeros_like(logits).scatter(1, column, logits.gather(1, column))

                maps.append(attributor(x, attr_output=select)[1])
        return torch.stack(maps, dim=1)

    return call


def _captum_lrp(model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
    """Captum's LRP with its default rules, one ``attribute`` call per target column."""
    _require("captum")
    from captum.attr import LRP

    def call() -> Tensor:
        lrp = LRP(model)
        maps = [lrp.attribute(x, target=targets[:, j]) for j in range(targets.shape[1])]
        return torch.stack(maps, dim=1)

    return call


#: Method name -> (what it measures, builder).
METHODS: dict[str, tuple[str, Builder]] = {
    "gradient": ("forward + one input gradient per target (the reference)", _gradient),
    "floor-zplus": (
        "the z+ floor: the gradient plus one forward of every layer with w+",
        _floor_zplus,
    ),
    "sglrp-dtd": (
        "sglrp.explain(method='sglrp', rules='dtd', bounds=(-2.1179, 2.64))",
        _sglrp("sglrp", "dtd", BOUNDS),
    ),
    "sglrp-epsilon-plus": (
        "sglrp.explain(method='sglrp', rules='epsilon-plus')",
        _sglrp("sglrp", "epsilon-plus", None),
    ),
    "lrp-epsilon-plus-flat": (
        "sglrp.explain(method='lrp', rules='epsilon-plus-flat')",
        _sglrp("lrp", "epsilon-plus-flat", None),
    ),
    "sglrp-epsilon-cp": (
        "sglrp.explain(method='sglrp', rules='epsilon-cp'): CP-LRP attention (transformers)",
        _sglrp("sglrp", "epsilon-cp", None),
    ),
    "sglrp-epsilon-attnlrp": (
        "sglrp.explain(method='sglrp', rules='epsilon-attnlrp'): AttnLRP (transformers)",
        _sglrp("sglrp", "epsilon-attnlrp", None),
    ),
    "zennit-epsilon-plus-flat": (
        "zennit EpsilonPlusFlat + canonizer, Gradient attributor, output z_t",
        _zennit_epsilon_plus_flat,
    ),
    "captum-lrp": ("Captum LRP, default rules", _captum_lrp),
    "sglrp-explainer-reuse": (
        "sglrp.Explainer(model, 'sglrp', 'dtd') built once, called N times; time per call",
        _explainer_reuse,
    ),
}


def _selftest(name: str) -> Builder:
    if name == "selftest-fail":

        def build(model, x, targets, options):
            def call():
                raise RuntimeError("deliberate failure (selftest-fail)")

            return call

    elif name == "selftest-exit":

        def build(model, x, targets, options):
            def call():
                os._exit(3)

            return call

    elif name == "selftest-noop":

        def build(model, x, targets, options):
            return lambda: None

    elif name == "selftest-hang":

        def build(model, x, targets, options):
            return lambda: time.sleep(10**6)

    elif name.startswith("selftest-alloc-") and name.rsplit("-", 1)[1].isdigit():
        n = int(name.rsplit("-", 1)[1]) * 2**20 // 4

        def build(model, x, targets, options):
            return lambda: torch.ones(n, dtype=torch.float32)

    else:
        raise ValueError(f"unknown self-test {name!r}")
    return build


def known(name: str) -> bool:
    """Whether ``name`` is a method or a well-formed self-test."""
    if name in METHODS:
        return True
    try:
        _selftest(name)
    except ValueError:
        return False
    return True


def build_call(name: str, model: nn.Module, x: Tensor, targets: Tensor, options: dict) -> Call:
    """The timed call of method ``name`` (see :data:`METHODS` and the self-tests)."""
    builder = METHODS[name][1] if name in METHODS else _selftest(name)
    return builder(model, x, targets, options)
