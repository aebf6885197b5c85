"""Reference data from real torchvision for the zoo mirrors -> tests/data/torchvision_reference.json

For every model in :data:`MODELS` it records torchvision's parameter count, ordered
``state_dict`` keys with shapes, module names with class names and settings (``extra_repr``:
eps, inplace, stride, dropout p, ...), and eval-mode logits on
:func:`reference_input` after :func:`deterministic_fill_`. ``tests/test_zoo_reference.py``
builds sglrp's mirrors, applies the same fill (imported from this file) and compares.

The fill and the input need no RNG and are bit-identical across machines and PyTorch
versions: values come from an integer hash computed exactly in int64, then scaled in float64
and rounded once to float32.

torchvision cannot be imported in the project venv; run this in a separate one::

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch torchvision
    PYTHONPATH=src /tmp/tvenv/bin/python benchmarks/torchvision_reference.py

(``PYTHONPATH`` is not needed: nothing of sglrp is imported.) Elsewhere the script says so in
one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:  # optional: only present in a separate venv
    import torchvision
    from torchvision import models as tv_models
except ImportError:
    torchvision = None
    tv_models = None

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "torchvision_reference.json"

VIT_TINY = {
    "image_size": 64,
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 128,
    "mlp_dim": 256,
}
"""Settings of ``sglrp.models.vit_tiny`` (torchvision has no such builder: its
``VisionTransformer`` class is built with these)."""

# name: input side
MODELS: dict[str, int] = {
    "vgg11": 224,
    "vgg16": 224,
    "vgg16_bn": 224,
    "resnet18": 224,
    "resnet50": 224,
    "densenet121": 224,
    "efficientnet_b0": 224,
    "mobilenet_v2": 224,
    "mobilenet_v3_small": 224,
    "regnet_y_400mf": 224,
    "convnext_tiny": 224,
    "shufflenet_v2_x1_0": 224,
    "vit_b_16": 224,
    "vit_tiny": 64,
}

_P = 2_147_483_647  # 2^31 - 1, prime
_A, _B = 48_271, 16_807
_L = 65_521  # table length, prime: larger than any fan_in or channel count of the zoo
_SHIFT = 7_919
N_HEAD_LOGITS = 16
LOGIT_STRIDE = 61


def _hash_table() -> torch.Tensor:
    """``T_m = 2 h_m / P - 1`` in [-1, 1) (float64), ``m < L``, with the exact int64 hash
    ``h_m = ((m^2 mod P) A + m B) mod P``, ``P = 2^31 - 1``, ``L = 65521``."""
    m = torch.arange(_L, dtype=torch.int64)
    h = (torch.remainder(m * m, _P) * _A + m * _B) % _P
    return h.to(torch.float64) * (2.0 / _P) - 1.0


_TABLE = _hash_table()


def _unit_sequence(n: int, salt: int, a: float = 0.0, b: float = 1.0) -> torch.Tensor:
    """``a + b T[(k + 7919 salt) mod L]`` for ``k < n``, rounded once to float32.

    Rows of a weight matrix are distinct shifts of the pseudo-random table (``L`` is a prime
    larger than every row length and row count), so the fill has no low-rank structure.
    """
    start = (salt * _SHIFT) % _L
    period = (a + b * _TABLE).to(torch.float32)
    return period.repeat(-(-(start + n) // _L))[start : start + n]


def _fill_values(name: str, shape: torch.Size, salt: int) -> torch.Tensor:
    """float32 values for the state_dict entry ``name`` of ``shape``; see
    :func:`deterministic_fill_`."""
    numel = math.prod(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        a, b = 0.75, 0.25
    elif leaf in ("running_mean", "bias") or leaf.endswith("_bias"):
        a, b = 0.0, 0.1
    elif leaf in ("class_token", "pos_embedding", "layer_scale"):
        a, b = 0.0, 0.5
    elif len(shape) <= 1:  # norm weights
        a, b = 1.0, 0.25
    else:  # conv / linear / attention weights: He-uniform amplitude sqrt(6 / fan_in)
        a, b = 0.0, math.sqrt(6.0 / (numel // shape[0]))
    return _unit_sequence(numel, salt, a, b).reshape(shape)


@torch.no_grad()
def deterministic_fill_(model: nn.Module) -> nn.Module:
    """Overwrite every ``state_dict`` entry of ``model`` with a fixed formula, in place.

    Element ``k`` of entry ``j`` (in ``state_dict`` order, ``n`` elements) is ``a + b u`` with
    ``u = T[(k + 7919 j) mod 65521]`` (:func:`_hash_table`) and ``(a, b)`` chosen by the last
    name component: ``running_var`` (0.75, 0.25), so in [0.5, 1]; ``running_mean``, ``bias``,
    ``*_bias`` (0, 0.1); ``class_token``, ``pos_embedding``, ``layer_scale`` (0, 0.5); other
    0-/1-D entries, i.e. norm weights, (1, 0.25); other weights (0, sqrt(6 / fan_in)) with
    ``fan_in = n / shape[0]``. Integer entries (``num_batches_tracked``) are set to 0.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    for j, (name, tensor) in enumerate(model.state_dict(keep_vars=True).items()):
        if tensor.is_floating_point():
            tensor.copy_(_fill_values(name, tensor.shape, j))
        else:
            tensor.zero_()
    return model


def reference_input(side: int) -> torch.Tensor:
    """A fixed (1, 3, side, side) float32 image: a diagonal ramp plus hash texture.

    ``x[c, h, w] = (h + w) / (side - 1) - 1 + 0.1 (c - 1) + 0.5 T[(k + 7919) mod 65521]`` with
    ``k`` the flat index (see :func:`deterministic_fill_`), computed in float64.
    """
    idx = torch.arange(side, dtype=torch.float64)
    ramp = (idx[:, None] + idx[None, :]) / (side - 1) - 1.0
    chan = 0.1 * (torch.arange(3, dtype=torch.float64) - 1.0)
    start, n = _SHIFT, 3 * side * side
    texture = _TABLE.repeat(-(-(start + n) // _L))[start : start + n].reshape(3, side, side)
    return (ramp[None] + chan[:, None, None] + 0.5 * texture).to(torch.float32)[None]


def logit_indices(num_classes: int) -> list[int]:
    """Logits kept in the reference: the first 16, then every 61st."""
    return sorted(
        set(range(min(N_HEAD_LOGITS, num_classes))) | set(range(0, num_classes, LOGIT_STRIDE))
    )


def module_table(model: nn.Module) -> list[list[str]]:
    """``[name, class name, settings]`` of every module: ``repr`` of leaf modules (eps,
    inplace, stride, dropout p, stochastic depth p, ...), ``extra_repr`` of the others."""
    return [
        [n, type(m).__name__, m.extra_repr() if next(m.children(), None) else repr(m)]
        for n, m in model.named_modules()
    ]


def describe(model: nn.Module, side: int) -> dict:
    """Parameter count, keys with shapes, module table and logits of ``model``."""
    deterministic_fill_(model).eval()
    with torch.no_grad():
        logits = model(reference_input(side))[0].double()
    idx = logit_indices(logits.numel())
    return {
        "input_side": side,
        "num_params": sum(p.numel() for p in model.parameters()),
        "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "modules": module_table(model),
        "num_classes": logits.numel(),
        "logit_index": idx,
        "logits": [float(f"{logits[i].item():.8g}") for i in idx],
        "logits_sum": float(f"{logits.sum().item():.8g}"),
        "logits_norm": float(f"{logits.norm().item():.8g}"),
    }


def _torchvision_model(name: str) -> nn.Module:
    if name == "vit_tiny":
        return tv_models.VisionTransformer(**VIT_TINY)
    return getattr(tv_models, name)()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if torchvision is None:
        print(
            "torchvision is not importable here: run this in a venv that has it (see the docstring)"
        )
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = {
        "torchvision_version": torchvision.__version__,
        "torch_version": torch.__version__,
        "fill": " ".join(deterministic_fill_.__doc__.split("Returns")[0].split()),
        "input": " ".join(reference_input.__doc__.split()),
        "models": {},
    }
    for name, side in MODELS.items():
        start = time.perf_counter()
        entry = data["models"][name] = describe(_torchvision_model(name), side)
        print(f"{name}: {entry['num_params']:,} params, {time.perf_counter() - start:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
