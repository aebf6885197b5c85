"""``sglrp inspect --model M``: what the engine will do to every operation of a model.

Prints :func:`sglrp.inspect`'s table (execution order, module, operation, treatment) and the
operations ``explain`` would refuse; exits 1 when there are any, so a script can check a model
before trusting its maps.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from ..atomic import write_json
from ..inspection import inspect
from ..loading import load_model
from ..models.zoo import ZOO, get_model
from ..presets import PRESETS
from .options import add_model_options

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inspect`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "inspect",
        help="list every layer and operation of a model with the treatment LRP gives it",
        description=(
            "Run one forward pass of the model on a blank image and list, in execution order, "
            "every layer and operation with its treatment (rule, merged batch norm, identity, "
            "gate, normalisation with constant std, attention, gradient, unsupported). A zoo "
            "name needs no --weights here: only the structure is read."
        ),
    )
    add_model_options(p)
    p.add_argument("--rules", default="dtd", help=f"preset ({', '.join(PRESETS)}); default dtd")
    p.add_argument("--attention", choices=("cp", "attnlrp"), help="attention treatment")
    p.add_argument("--size", type=int, metavar="PX", help="input side (default: the model's)")
    p.add_argument("--json", metavar="FILE", help="also write the rows and problems as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.rules not in PRESETS:
        raise ValueError(f"unknown preset {args.rules!r}; choose one of {', '.join(PRESETS)}")
    if args.model in ZOO and args.weights is None:
        model, size = get_model(args.model, args.num_classes or 1000), 224
    else:
        bundle = load_model(args.model, args.weights, args.num_classes)
        model, size = bundle.model, bundle.size
    x = torch.zeros(1, 3, args.size or size, args.size or size)
    report = inspect(model, x, rules=args.rules, attention=args.attention)
    print(report)
    if args.json:
        document = {
            "model": args.model,
            "rules": args.rules,
            "rows": [asdict(row) for row in report.rows],
            "problems": report.problems,
            "unmatched": report.unmatched,
            "no_rule": report.no_rule,
        }
        write_json(args.json, document)
    if not report.ok:
        print(
            f"{len(report.problems)} operation(s) without a treatment: explain would refuse "
            "this model (assign Gradient() or a gate rule to the modules named above)"
        )
        return 1
    return 0
