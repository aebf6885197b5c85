"""``sglrp paths IMAGE --model M --layer L --k K --out DIR``: neurons and critical paths.

The files written and the analysis are described in :mod:`sglrp.app.paths`; this module
reads and checks the options.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..app.paths import PathsRequest, analyse
from ..methods import available
from .options import add_compute_options, add_model_options, check_compute, check_out

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``paths`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "paths",
        help="neuron selection, critical-path graph and DeconvNet reconstructions for an image",
        description=(
            "Find the neurons that carry a decision's relevance: relevance per neuron, top-K "
            "selections and their errors (MSE, SMAPE) over K, a critical-path graph with the "
            "relevance flowing between layers, per-neuron heatmaps and DeconvNet "
            "reconstructions. IMAGE is an image file or builtin:N (generated image N)."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image file, or builtin:N")
    add_model_options(p)
    p.add_argument(
        "--layer",
        metavar="LAYER",
        help="conv/linear layer whose neurons are selected and reconstructed "
        "(default: the last conv layer)",
    )
    p.add_argument(
        "--k",
        default="4",
        metavar="K",
        help="neurons kept at LAYER, or 'auto': the smallest k whose error is within "
        "--tolerance (default 4)",
    )
    p.add_argument(
        "--graph-k", type=int, default=3, metavar="G", help="neurons per layer in the graph (3)"
    )
    p.add_argument(
        "--by",
        choices=("positive", "absolute"),
        default="absolute",
        help="rank neurons by |relevance| (default; reproduces signed SGLRP/CLRP maps) or by "
        "signed relevance (positive: only neurons speaking for the target)",
    )
    p.add_argument(
        "--graph-by",
        choices=("positive", "absolute"),
        default="positive",
        help="ranking of the graph's neurons (default positive: paths of relevance for the target)",
    )
    p.add_argument(
        "--method",
        default="sglrp",
        choices=available(family="lrp"),
        help="output relevance (an LRP-family method of the registry; default sglrp)",
    )
    p.add_argument(
        "--target",
        default="predicted",
        metavar="T",
        help="predicted (default), second, a class index or a class name",
    )
    p.add_argument("--rules", default="dtd", metavar="PRESET", help="LRP rule preset (dtd)")
    p.add_argument(
        "--metric",
        default="heatmap_smape",
        choices=("heatmap_mse", "heatmap_smape", "output_mse", "output_smape"),
        help="error that --k auto keeps within --tolerance (heatmap_smape)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=50.0,
        metavar="E",
        help="largest error accepted by --k auto (SMAPE in percent, 0-200; default 50)",
    )
    p.add_argument(
        "--deconv",
        choices=("map", "max"),
        default="map",
        help="DeconvNet: project the whole feature map (default) or its largest activation",
    )
    p.add_argument("--size", type=int, metavar="S", help="input side in pixels (model default)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_compute_options(p, batch_help="image copies per pass")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Check the output folder, run the analysis; returns the exit status."""
    device = check_compute(args)
    check_out(args.out)
    values = {f.name: getattr(args, f.name) for f in fields(PathsRequest) if f.name != "device"}
    return analyse(PathsRequest(**values, device=device))
