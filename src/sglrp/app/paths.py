"""The neuron-path analysis behind ``sglrp paths``: neurons and critical paths of a decision.

Writes into ``DIR``:

* ``graph.png``, ``graph.graphml``, ``graph.json``: the critical-path graph (top
  ``--graph-k`` neurons of every conv/linear layer, relevance flowing between them, the
  heaviest path outlined);
* ``heatmaps.png``: the input, the full heatmap, the heatmap restricted to the top-K neurons
  of ``--layer``, to the graph's neurons and to the heaviest path, and one heatmap per
  selected neuron of ``--layer``; ``maps/*.png``: each of them on its own;
* ``neurons.png``: the selected neurons of ``--layer``, each with its heatmap and DeconvNet
  reconstruction (VGG-style models); ``path.png``: the same along the heaviest path;
* ``errors.png``: MSE and SMAPE of the restricted heatmap and of the ablated output against
  the full ones, over k at ``--layer``;
* ``summary.json``: target, selections, errors, chosen k, path, files (written last).

IMAGE is an image file (resized to the model's input size) or ``builtin:N``, the N-th
generated multi-object shapes image.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._guard import preserved
from ..atomic import write_json
from ..data import generate
from ..images import load_image, to_tensor
from ..loading import load_model
from ..neurons import (
    METRICS,
    choose_k,
    critical_paths,
    deconvnet,
    default_ks,
    neuron_flows,
    neuron_layers,
    restricted_relevance,
    select_top_k,
    selection_curve,
    write_graph,
)
from ..presets import PRESETS, bounds_from_normalization
from ..viz import (
    comparison_grid,
    draw_graph,
    error_curves,
    neuron_grid,
    path_figure,
    save_map_png,
)
from .classes import default_classes, format_probability, resolve_target

__all__ = ["PathsRequest", "analyse", "load_input"]


@dataclass(frozen=True)
class PathsRequest:
    """The options of one analysis (those of ``sglrp paths``, already checked)."""

    image: str
    model: str
    weights: str | None
    num_classes: int | None
    layer: str | None
    k: str
    graph_k: int
    by: str
    graph_by: str
    method: str
    target: str
    rules: str
    metric: str
    tolerance: float
    deconv: str
    size: int | None
    out: str
    batch_size: int
    random_weights: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _parse_k(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--k {text!r}: expected a positive integer or 'auto'") from None
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    return k


def load_input(spec: str, size: int, mean: Any, std: Any) -> tuple[torch.Tensor, Any, dict]:
    """The model input (1, 3, S, S), the RGB image shown, and a description for the summary."""
    info: dict[str, Any] = {"source": spec}
    if spec.startswith("builtin:"):
        index_text = spec.split(":", 1)[1]
        if not index_text.isdigit():
            raise ValueError(f"{spec!r}: expected builtin:N with N a non-negative integer")
        sample = generate("multi", 1, seed=0, size=max(32, size), start=int(index_text))[0]
        image = Image.fromarray(sample.image, mode="RGB")
        info["objects"] = [
            {"label": o.label, "name": o.name, "box": list(o.box)} for o in sample.objects
        ]
    else:
        image = load_image(spec)
    info["original_size"] = list(image.size)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return to_tensor(image, mean, std), image, info


def _conv_layers(model: nn.Module, names: list[str]) -> list[str]:
    modules = dict(model.named_modules())
    return [n for n in names if isinstance(modules[n], nn.Conv1d | nn.Conv2d | nn.Conv3d)]


def _check_layer(layer: str, hidden: list[str]) -> None:
    if layer in hidden:
        return
    close = difflib.get_close_matches(layer, hidden, n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(
        f"--layer {layer!r} is not a hidden conv/linear layer.{hint} Choose from: "
        f"{', '.join(hidden)}"
    )


# --------------------------------------------------------------------------- run


def analyse(args: PathsRequest) -> int:
    """Run the analysis and write every file into ``args.out``; returns the exit status."""
    k_arg = _parse_k(args.k)
    if args.graph_k < 1:
        raise ValueError(f"--graph-k must be at least 1, got {args.graph_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.rules not in PRESETS:
        raise ValueError(f"unknown rules preset {args.rules!r}; available: {', '.join(PRESETS)}")
    if args.size is not None and args.size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {args.size}")

    bundle = load_model(args.model, args.weights, args.num_classes, args.random_weights)
    if bundle.compiled:
        raise ValueError(
            f"{args.model} is compiled TorchScript; neuron analysis needs the model's layers: "
            "pass --model NAME --weights FILE or module:factory"
        )
    model = bundle.model.to(args.device)  # the loader's own copy
    mean, std = tuple(bundle.mean), tuple(bundle.std)
    size = args.size or bundle.size
    x, shown, image_info = load_input(args.image, size, mean, std)
    x = x.to(args.device)
    bounds = bounds_from_normalization(mean, std)

    layers = neuron_layers(model, x)
    hidden = [info.name for info in layers if not info.is_output]
    if not hidden:
        raise ValueError("the model has no hidden conv or linear layers to analyse")
    convs = _conv_layers(model, hidden)
    layer = args.layer or (convs[-1] if convs else hidden[-1])
    _check_layer(layer, hidden)
    width = next(info.size for info in layers if info.name == layer)

    with preserved(model), torch.no_grad():
        logits = model(x)
    classes = bundle.classes
    num_classes = int(logits.shape[1])
    if classes is not None and len(classes) != num_classes:
        classes = None
    classes, note = default_classes(classes, num_classes)
    if note:
        bundle.notes.append(note)
    target = resolve_target(args.target, classes, num_classes)
    t = int(logits.argmax(1)) if target == "predicted" else None
    if target == "second":
        t = int(logits.topk(2, dim=1).indices[0, 1])
    if t is None:
        t = int(target)
    names = classes or [str(i) for i in range(num_classes)]
    probs = torch.softmax(logits[0].double(), dim=0)
    common = {"method": args.method, "rules": args.rules, "bounds": bounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    notes: list[str] = []
    notes.extend(bundle.notes)

    # -- errors over k at LAYER, and the choice of k
    ks = sorted(set(default_ks(width)) | ({min(k_arg, width)} if k_arg else set()))
    curve = selection_curve(
        model, x, [layer], ks, t, by=args.by, batch_size=args.batch_size, **common
    )
    chosen = None
    if k_arg is None:
        chosen = choose_k(curve, args.tolerance, args.metric)
        if chosen is None:
            k = width
            notes.append(
                f"no k reaches {args.metric} <= {args.tolerance}; using all {width} neurons"
            )
        else:
            k = chosen
    else:
        k = min(k_arg, width)
        if k_arg > width:
            notes.append(f"--k {k_arg} exceeds the {width} neurons of {layer}; using {width}")
    error_curves(
        curve,
        path=out / "errors.png",
        k=k,
        metric=args.metric if k_arg is None else None,
        tolerance=args.tolerance if k_arg is None else None,
        title=f"errors of the top-k neurons of {layer} for '{names[t]}' (dashed: k = {k})",
    )
    files["errors"] = "errors.png"

    # -- the critical-path graph over all hidden layers
    cp = critical_paths(
        model,
        x,
        t,
        layers=hidden,
        k=args.graph_k,
        by=args.graph_by,
        class_names=names,
        batch_size=args.batch_size,
        **common,
    )
    draw_graph(cp.graph, out / "graph.png")
    write_graph(cp.graph, out / "graph.graphml", cp.path)
    write_graph(cp.graph, out / "graph.json", cp.path)
    files.update(graph="graph.png", graphml="graph.graphml", graph_json="graph.json")
    full = cp.full

    # -- the selected neurons of LAYER: heatmaps through each and restricted heatmap
    selection = select_top_k(full, k, layers=[layer], by=args.by)
    chosen_idx = torch.nonzero(selection[layer][0]).reshape(-1).tolist()
    rel = full.relevance[layer][0]
    chosen_idx.sort(key=lambda i: -float(rel[i] if args.by == "positive" else abs(rel[i])))
    shown_idx = chosen_idx[:8]
    maps, _ = neuron_flows(
        model,
        x,
        full.targets,
        [layer],
        [(layer, i) for i in shown_idx],
        None,
        batch_size=args.batch_size,
        **common,
    )
    restricted = _restricted(model, x, t, selection, common)
    heat = {
        "full": full.input_relevance,
        f"top {k} at {layer}": restricted,
        f"graph (top {args.graph_k}/layer)": cp.restricted.input_relevance,
        "heaviest path": cp.path_map[None],
    }
    for i in shown_idx:
        heat[f"{layer}:{i}"] = maps[(layer, i)][None]
    t_name = names[t]
    comparison_grid(
        x,
        heat,
        mean=mean,
        std=std,
        row_titles=[
            f"{args.method.upper()} for '{t_name}' (p = {format_probability(float(probs[t]))})"
        ],
        path=out / "heatmaps.png",
    )
    files["heatmaps"] = "heatmaps.png"
    image01 = torch.as_tensor(_np_image(shown)).permute(2, 0, 1).float() / 255.0
    map_files = {}
    for label, relevance in heat.items():
        fname = "maps/" + _slug(label) + ".png"
        save_map_png(relevance[0], out / fname, signed=True, image=image01)
        map_files[label] = fname
    files["maps"] = map_files

    # -- DeconvNet reconstructions
    recon_layer: list[torch.Tensor | None] = [None] * len(shown_idx)
    try:
        rec = deconvnet(model, x, layer, shown_idx, mode=args.deconv)[0]
        recon_layer = list(rec)
    except ValueError as err:
        notes.append(f"no DeconvNet reconstruction for {layer}: {err}")
    shares = full.relevance[layer][0].abs().sum()
    titles = [
        f"{layer}:{i} ({100 * float(rel[i]) / float(shares):+.0f}%)"
        if shares > 0
        else f"{layer}:{i}"
        for i in shown_idx
    ]
    neuron_grid(
        image01,
        titles,
        [maps[(layer, i)] for i in shown_idx],
        recon_layer,
        path=out / "neurons.png",
        title=f"top {len(shown_idx)} neurons of {layer} for '{t_name}' "
        "(relevance as a share of the layer's total |relevance|)",
    )
    files["neurons"] = "neurons.png"
    path_recon: dict[str, torch.Tensor | None] = {}
    for node_layer, index in cp.path_neurons:
        try:
            path_recon[f"{node_layer}:{index}"] = deconvnet(
                model, x, node_layer, index, mode=args.deconv
            )[0]
        except ValueError:
            path_recon[f"{node_layer}:{index}"] = None
    path_figure(cp, image01, path_recon, path=out / "path.png")
    files["path"] = "path.png"

    # -- summary, written last
    row = curve.ks.index(k) if k in curve.ks else None
    summary = {
        "image": image_info,
        "model": args.model,
        "input_size": size,
        "method": args.method,
        "rules": args.rules,
        "target": {"index": t, "name": t_name, "probability": float(probs[t])},
        "top5": [
            {"index": int(i), "name": names[int(i)], "probability": float(probs[int(i)])}
            for i in probs.topk(min(5, num_classes)).indices
        ],
        "layer": layer,
        "k": k,
        "ranked_by": args.by,
        "k_auto": None
        if k_arg is not None
        else {"metric": args.metric, "tolerance": args.tolerance, "chosen": chosen},
        "selected": [
            {
                "index": int(i),
                "relevance": float(rel[i]),
                "share": float(rel[i]) / float(shares) if shares > 0 else None,
            }
            for i in chosen_idx
        ],
        "errors_at_k": None if row is None else {m: getattr(curve, m)[row] for m in METRICS},
        "curves": curve.to_dict(),
        "graph": {
            "k_per_layer": args.graph_k,
            "ranked_by": args.graph_by,
            "layers": cp.layers,
            "heaviest_path": cp.path,
            "path_shares": [
                cp.graph.edges[a, b]["share"] for a, b in zip(cp.path, cp.path[1:], strict=False)
            ],
        },
        "files": files,
        "notes": notes,
    }
    write_json(out / "summary.json", summary)
    count = len(files) - 1 + len(map_files) + 1  # "maps" is a group; + summary.json
    print(f"sglrp paths: wrote {count} files to {out} (summary: {out / 'summary.json'})")
    return 0


def _restricted(model, x, t, selection, common) -> torch.Tensor:
    return restricted_relevance(
        model, x, selection, t, common["method"], common["rules"], common["bounds"]
    )


def _np_image(image: Any) -> np.ndarray:
    return np.array(image.convert("RGB"))


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "._-" else "_" for c in text]
    return "".join(keep).strip("_") or "map"
