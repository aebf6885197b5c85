"""Class-sensitivity diagnostics of the shipped shape models -> printed tables + JSON.

For ``shapes_vgg`` (VGG16's flattened head), ``shapes_vgg_gap`` (the same convolutions,
global average pooling before the three FC layers) and ``shapes_resnet``, with the paper's
rules (``"dtd"``: z+ everywhere, Z^B at the first layer with the per-channel bounds of the
models' normalisation):

* class-collapse curve (:func:`sglrp.metrics.class_collapse`) on ``--n`` two-object images,
  per conv/linear layer from the output to the input;
* swap test (:func:`sglrp.metrics.swap_test`) on the same images, object a = the first
  object drawn, b = the second, for SGLRP, CLRP and LRP;
* random-logit SSIM (target = object a's class) and Focus on ``--n`` 2x2 mosaics
  (:func:`sglrp.data.mosaic`), and the cascading randomisation test (Spearman of |R| after
  randomising every conv/linear layer) for the same methods.

Usage: ``python benchmarks/sensitivity.py [--n 8] [--seed 0] [--out benchmarks/sensitivity.json]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import sglrp
from sglrp.atomic import write_json
from sglrp.data import generate, mosaic
from sglrp.metrics import class_collapse, focus, random_logit, randomisation_test, swap_test
from sglrp.models import pretrained

MODELS = ("shapes_vgg", "shapes_vgg_gap", "shapes_resnet")
METHODS = ("sglrp", "clrp", "lrp")


def _interval(agg) -> dict:
    return {
        "mean": agg.mean,
        "low": agg.low,
        "high": agg.high,
        "n": agg.n,
        "n_excluded": agg.n_excluded,
    }


def measure(name: str, n: int, seed: int) -> dict:
    """All diagnostics for one shipped model."""
    pm = pretrained(name)
    model = pm.model
    bounds = sglrp.bounds_from_normalization(pm.mean, pm.std)
    samples = generate("multi", n, seed, num_objects=2)
    x = pm.preprocess(np.stack([s.image for s in samples]))
    ta = torch.tensor([s.objects[0].label for s in samples])
    tb = torch.tensor([s.objects[1].label for s in samples])
    ma = torch.from_numpy(np.stack([s.objects[0].mask for s in samples]))
    mb = torch.from_numpy(np.stack([s.objects[1].mask for s in samples]))
    mos = mosaic(n, seed)
    xm = pm.preprocess(mos.images)
    num_classes = len(pm.classes)

    curve = class_collapse(model, x, rules="dtd", bounds=bounds)
    out: dict = {
        "collapse": curve.as_dict(),
        "collapse_interval": {
            layer: _interval(agg) for layer, agg in zip(curve.layers, curve.aggregates, strict=True)
        },
        "methods": {},
    }
    for method in METHODS:

        def explain_fn(xx, t, _m=method):
            return sglrp.explain(model, xx, t, method=_m, rules="dtd", bounds=bounds)

        def explain_model(mm, xx, t, _m=method):
            return sglrp.explain(mm, xx, t, method=_m, rules="dtd", bounds=bounds)

        swap = swap_test(explain_fn, x, ta, tb, ma, mb)
        rl = random_logit(explain_fn, x, ta, num_classes, seed=seed)
        rl_abs = random_logit(explain_fn, x, ta, num_classes, seed=seed, absolute=True)
        foc = focus(
            explain_fn(xm, torch.from_numpy(mos.targets)),
            torch.from_numpy(mos.cell_masks),
            torch.from_numpy(mos.labels),
            torch.from_numpy(mos.targets),
        )
        rand = randomisation_test(model, x, ta, explain_model, seed=seed)
        out["methods"][method] = {
            "swap": _interval(swap.aggregate),
            "swap_per_image": swap.scores.tolist(),
            "own_share": swap.own.nanmean().item(),
            "other_share": swap.other.nanmean().item(),
            "random_logit_ssim": _interval(rl.aggregate),
            "random_logit_ssim_abs": _interval(rl_abs.aggregate),
            "focus": _interval(foc.aggregate),
            "randomisation_layers": list(rand.layers),
            "randomisation_spearman": rand.spearman_mean.tolist(),
            "randomisation_ssim": rand.ssim_mean.tolist(),
        }
    return out


def _fmt(v: dict) -> str:
    return f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="two-object images (and mosaics)")
    parser.add_argument("--seed", type=int, default=0, help="data and randomisation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("sensitivity.json")), help="JSON output"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {name: measure(name, args.n, args.seed) for name in MODELS}
    for name, r in results.items():
        print(f"\n## {name}: class collapse (mean pairwise cosine, one-hot classes, dtd)")
        print("| layer | cosine [95% CI] |\n|---|---|")
        for layer, value in r["collapse_interval"].items():
            print(f"| {layer} | {_fmt(value)} |")
    print(f"\n## swap test etc. ({args.n} two-object images / mosaics, seed {args.seed})")
    print(
        "| model | method | swap [95% CI] | own | other | random-logit SSIM (R, abs R) | "
        "focus (n) | randomisation Spearman (top layer, all layers) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for method, m in r["methods"].items():
            rho = m["randomisation_spearman"]
            print(
                f"| {name} | {method} | {_fmt(m['swap'])} | {m['own_share']:.3f} | "
                f"{m['other_share']:.3f} | {m['random_logit_ssim']['mean']:.3f}, "
                f"{m['random_logit_ssim_abs']['mean']:.3f} | {m['focus']['mean']:.3f} "
                f"({m['focus']['n']}) | {rho[0]:.3f}, {rho[-1]:.3f} |"
            )
    seconds = time.perf_counter() - start
    write_json(
        args.out,
        {
            "settings": {
                "n": args.n,
                "seed": args.seed,
                "rules": "dtd",
                "bounds": "bounds_from_normalization(mean, std)",
                "torch": torch.__version__,
                "seconds": seconds,
            },
            "models": results,
        },
    )
    print(f"\nwrote {args.out} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
