"""Does SGLRP's contrast hold on a transformer? Swap test on two-object images -> JSON + table.

For the shipped ``shapes_vit`` and the three CNNs on ``--n`` held-out two-object images
(``sglrp.data.generate("multi", n, seed, num_objects=2)``; object a = the first drawn, b = the
second):

* swap test (:func:`sglrp.evaluate.swap_test`): share of the map's positive relevance on the
  target's own object minus on the other object, averaged over the two targets; 0 = the map
  does not tell the two objects apart, 1 = each map lies on its own object only;
* sign contrast (signed methods only): the fraction of (image, target) pairs whose summed
  relevance is positive on the target's own object and negative on the other one.

Methods: SGLRP, CLRP and LRP (ViT: ``epsilon-cp`` and ``epsilon-attnlrp``; ResNet: the
paper's ``dtd``; Z^B bounds from the normalisation), the gradient, and the maps of each family:
attention rollout, gradient rollout and Grad-CAM on tokens for the ViT, Grad-CAM for the
ResNet.

Usage: ``python benchmarks/vit_contrast.py [--n 48] [--seed 5] [--out FILE.json]``
(about 1 minute on 2 threads); the Markdown table goes next to the JSON (``.md``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import sglrp
from sglrp.atomic import write_json, write_text
from sglrp.data import generate
from sglrp.metrics import swap_test
from sglrp.models import available_pretrained, pretrained

SIGNED = ("sglrp", "clrp", "lrp")
PLAN: dict[str, list[tuple[str, str, dict]]] = {
    "shapes_vit": [
        *((f"{m} (epsilon-cp)", m, {"rules": "epsilon-cp"}) for m in SIGNED),
        *((f"{m} (epsilon-attnlrp)", m, {"rules": "epsilon-attnlrp"}) for m in SIGNED),
        # the hybrid stem's convolutions under z+ instead of epsilon (attention still CP)
        *((f"{m} (epsilon-plus)", m, {"rules": "epsilon-plus"}) for m in SIGNED),
        ("gradient", "gradient", {}),
        ("attention_rollout", "attention_rollout", {}),
        ("gradient_rollout", "gradient_rollout", {}),
        ("vit_gradcam", "vit_gradcam", {}),
    ],
    **{
        cnn: [
            *((f"{m} (dtd)", m, {"rules": "dtd"}) for m in SIGNED),
            ("gradient", "gradient", {}),
            ("gradcam", "gradcam", {}),
        ]
        for cnn in ("shapes_resnet", "shapes_vgg", "shapes_vgg_gap")
    },
}
"""Per model: (row label, method, options)."""


def _interval(agg) -> dict:
    return {"mean": agg.mean, "low": agg.low, "high": agg.high, "n": agg.n}


def sign_contrast(maps_a, maps_b, masks_a, masks_b) -> float:
    """Fraction of (image, target) pairs with relevance summed over the own object > 0 and
    over the other object < 0 (maps (N, C, H, W), masks (N, H, W))."""
    ra, rb = maps_a.sum(1), maps_b.sum(1)

    def on(r, m):
        return (r * m).flatten(1).sum(1)

    ok_a = (on(ra, masks_a) > 0) & (on(ra, masks_b) < 0)
    ok_b = (on(rb, masks_b) > 0) & (on(rb, masks_a) < 0)
    return float(torch.cat([ok_a, ok_b]).double().mean())


def measure(name: str, n: int, seed: int) -> dict:
    """Swap test and sign contrast of every planned method for one shipped model."""
    pm = pretrained(name)
    bounds = sglrp.bounds_from_normalization(pm.mean, pm.std)
    samples = generate("multi", n, seed, num_objects=2)
    x = pm.preprocess(np.stack([s.image for s in samples]))
    ta = torch.tensor([s.objects[0].label for s in samples])
    tb = torch.tensor([s.objects[1].label for s in samples])
    ma = torch.from_numpy(np.stack([s.objects[0].mask for s in samples]))
    mb = torch.from_numpy(np.stack([s.objects[1].mask for s in samples]))
    with torch.no_grad():
        top2 = pm.model(x).topk(2, dim=1).indices
    both = ((top2 == ta[:, None]).any(1) & (top2 == tb[:, None]).any(1)).double().mean()
    out: dict = {"both_in_top2": float(both), "methods": {}}
    for label, method, options in PLAN[name]:
        start = time.perf_counter()
        opts = dict(options)
        if "rules" in opts:
            opts["bounds"] = bounds
        cache: dict = {}

        def explain_fn(xx, t, _m=method, _o=opts, _c=cache):
            r = sglrp.explain(pm.model, xx, t, method=_m, **_o)
            _c[len(_c)] = r
            return r

        swap = swap_test(explain_fn, x, ta, tb, ma, mb)
        row = {
            "swap": _interval(swap.aggregate),
            "own_share": swap.own.nanmean().item(),
            "other_share": swap.other.nanmean().item(),
            "seconds": time.perf_counter() - start,
        }
        if method in SIGNED:
            row["sign_contrast"] = sign_contrast(cache[0], cache[1], ma, mb)
        out["methods"][label] = row
    return out


def render(results: dict, n: int, seed: int, seconds: float, missing: list[str]) -> str:
    """The Markdown table."""
    lines = [
        "# Contrast on a transformer: swap test on two-object images",
        "",
        f"{n} held-out two-object images (`generate('multi', {n}, seed={seed}, num_objects=2)`)."
        " Swap = positive-relevance share on the target's own object minus on the other "
        "object, mean of the two targets (0: no discrimination, 1: each map on its own "
        "object); sign contrast = fraction of (image, target) pairs with summed relevance > 0 "
        "on the own object and < 0 on the other (signed methods). Reproduce with "
        "`python benchmarks/vit_contrast.py`.",
        "",
        "| model | both objects in top-2 | method | swap [95% CI] | own | other | sign contrast |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for label, m in r["methods"].items():
            s = m["swap"]
            sign = f"{m['sign_contrast']:.2f}" if "sign_contrast" in m else "-"
            lines.append(
                f"| {name} | {100 * r['both_in_top2']:.0f}% | {label} | {s['mean']:+.3f} "
                f"[{s['low']:+.3f}, {s['high']:+.3f}] | {m['own_share']:.3f} | "
                f"{m['other_share']:.3f} | {sign} |"
            )
    if missing:
        lines += ["", f"Left out (weights not shipped): {', '.join(missing)}."]
    lines += ["", f"_Measured in {seconds:.0f} s with torch {torch.__version__}._", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="two-object images")
    parser.add_argument("--seed", type=int, default=5, help="held-out data seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("vit_contrast.json")), help="JSON output"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    missing = [name for name in PLAN if name not in available_pretrained()]
    if missing:
        print(f"not shipped, left out: {', '.join(missing)} (train with `sglrp train`)")
    results = {name: measure(name, args.n, args.seed) for name in PLAN if name not in missing}
    seconds = time.perf_counter() - start
    table = render(results, args.n, args.seed, seconds, missing)
    print(table)
    settings = {
        "n": args.n,
        "seed": args.seed,
        "torch": torch.__version__,
        "seconds": seconds,
        "left_out": missing,
    }
    write_json(args.out, {"settings": settings, "models": results})
    write_text(Path(args.out).with_suffix(".md"), table)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
