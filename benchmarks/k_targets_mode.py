"""K targets per image: one vectorised backward pass or K passes? (the evidence behind
``Propagator.vectorise_targets_up_to``).

Times ``sglrp.explain(..., method='sglrp', rules='dtd')`` on a zoo model for K = 1, 2, 5 with
the K output relevance vectors in one vectorised backward (``is_grads_batched``) and in K
sequential passes, min of 4 calls after a warm-up, in one process::

    python benchmarks/k_targets_mode.py --model vgg16 --batches 1,2,8
"""

from __future__ import annotations

import argparse
import warnings

import torch
from timing import best_time

import sglrp
from sglrp.models import ZOO
from sglrp.propagation.engine import Propagator

BOUNDS = (-2.1179, 2.64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16", choices=sorted(ZOO))
    parser.add_argument("--batches", default="1,2,8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ZOO[args.model]().eval()
    for n in (int(v) for v in args.batches.split(",")):
        x = torch.randn(n, 3, 224, 224).clamp(*BOUNDS)
        row = {}
        for k in (1, 2, 5):
            targets = torch.randint(0, 1000, (n, k))
            for vectorised in (True, False) if k > 1 else (True,):
                Propagator.vectorise_targets_up_to = n if vectorised else 0
                row[f"K={k}" + ("" if k == 1 else (" vectorised" if vectorised else " passes"))] = (
                    best_time(
                        lambda t=targets, x=x: sglrp.explain(
                            model, x, t, method="sglrp", rules="dtd", bounds=BOUNDS
                        ),
                        repeats=4,
                    )
                )
        print(f"batch {n}: " + ", ".join(f"{key} {value:.3f} s" for key, value in row.items()))


if __name__ == "__main__":
    main()
