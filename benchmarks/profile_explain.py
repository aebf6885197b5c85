"""Where an explanation's time goes, and whether its relevance underflows.

Profiles one ``sglrp.explain`` call (after a warm-up) with ``torch.profiler`` and prints the
operations by self time next to the plain gradient's time; ``--underflow`` prints, for every
layer the backward pass reaches, the share of relevance-per-activation values below float32's
normal range (denormals, which make CPU arithmetic up to 100x slower). The evidence behind
RESULTS.md's speed findings::

    python benchmarks/profile_explain.py --model vgg16 --rules dtd --batch 8
    python benchmarks/profile_explain.py --model efficientnet_b0 --rules epsilon-plus \\
        --batch 2 --underflow --no-calibrate     # random BN statistics: relevance underflows
    python benchmarks/profile_explain.py --model efficientnet_b0 --rules epsilon-plus \\
        --batch 2 --underflow                    # statistics from the input: it does not
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import speed_calls
import speed_worker
import torch
from torch.profiler import profile

import sglrp
from sglrp.models import ZOO
from sglrp.propagation import layers


def _seconds(call: Callable[[], object]) -> float:
    call()
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _watch_underflow() -> None:
    """Print the denormal share of every rule layer's incoming relevance per activation."""
    original = layers.LinearOp.input_grad
    tiny = torch.finfo(torch.float32).tiny

    def input_grad(self, grad, weight_mod, input_shape):
        values = grad[grad != 0].abs()
        if values.numel():
            share = float((values < tiny).float().mean())
            print(f"{tuple(grad.shape)}: max {float(values.max()):.2e}, denormal share {share:.3f}")
        return original(self, grad, weight_mod, input_shape)

    layers.LinearOp.input_grad = input_grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16", choices=sorted(ZOO))
    parser.add_argument("--rules", default="dtd")
    parser.add_argument("--method", default="sglrp")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--underflow", action="store_true")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ZOO[args.model]()
    size = speed_worker.input_size(args.model, None)
    x = torch.randn(args.batch, 3, size, size).clamp(*speed_calls.BOUNDS)
    if args.calibrate:
        speed_worker.calibrate_batch_norm(model, x)
    model.eval()
    target = torch.zeros(args.batch, dtype=torch.long)
    bounds = speed_calls.BOUNDS if args.rules == "dtd" else None

    def gradient() -> None:
        leaf = x.clone().requires_grad_(True)
        torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)

    def explain() -> None:
        sglrp.explain(model, x, target, method=args.method, rules=args.rules, bounds=bounds)

    if args.underflow:
        _watch_underflow()
        explain()
        return
    grad_s, explain_s = _seconds(gradient), _seconds(explain)
    print(f"gradient {grad_s:.3f} s, explain {explain_s:.3f} s ({explain_s / grad_s:.2f}x)")
    with profile(record_shapes=True) as prof:
        explain()
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_shapes_column_width=80
    )
    print(table)


if __name__ == "__main__":
    main()
