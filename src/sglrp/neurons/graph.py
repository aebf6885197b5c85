"""Critical-path graphs: selected neurons per layer and the relevance flowing between them.

For adjacent conv/linear layers :math:`l` (lower) and :math:`l+1` (upper), the flow from
upper neuron :math:`d` to lower neuron :math:`c` is the relevance that :math:`c` receives from
:math:`d` alone, summed over positions. For the z+ rule between them

.. math:: F_{d \\to c} = \\sum_{p} \\sum_{q} \\frac{a_{c,p} w^+_{(c,p),(d,q)}}
          {\\sum_{c',p'} a_{c',p'} w^+_{(c',p'),(d,q)}} R_{d,q},

i.e. the relevance at layer :math:`l` of a backward pass in which only neuron :math:`d` of
layer :math:`l+1` passes relevance (any rule, any layers in between: ReLU, pooling). By
linearity, the flows into a neuron add up to its relevance,
:math:`\\sum_d F_{d \\to c} = R_c`, when the sum runs over every neuron :math:`d` that passes
relevance to layer :math:`l`.

With ``restricted=True`` (default) all flows are those of the restricted propagation: above
layer :math:`l+1` only the selected neurons pass relevance, so the graph describes the
selected sub-network and the flows into a selected neuron add up to its relevance under
restriction. All one-neuron passes of one image run batched.

The graph has a node ``"output"`` (attribute ``relevance``: the target's output relevance,
``total_relevance``: the sum over all classes, 0 for SGLRP; its edges carry the relevance of
the top layer's neurons), one node ``"<layer>:<index>"`` per selected neuron (``relevance``
under restriction, ``full_relevance``, ``share`` of the layer's positive relevance) and a node
``"input"``; edges point from the output
towards the input and carry ``flow`` and ``share`` (the flow divided by the summed
:math:`|flow|` between the same two layers). The heaviest path maximises the summed share from
``"output"`` to ``"input"``, so every layer counts equally.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_path, write_json
from ..presets import Bounds
from ..propagation import RulesSpec
from ..propagation.output import OutputRelevance
from ..targets import TargetSpec
from .relevance import (
    Masks,
    NeuronRelevance,
    _order_run,
    as_masks,
    neuron_relevance,
    propagate_masked,
    restricted_relevance,
)
from .selection import select

__all__ = [
    "CriticalPaths",
    "critical_paths",
    "graph_to_json",
    "heaviest_path",
    "neuron_flows",
    "node_id",
    "parse_node",
    "path_relevance",
    "write_graph",
]


def node_id(layer: str, index: int) -> str:
    """Graph node name of neuron ``index`` of ``layer``: ``"<layer>:<index>"``."""
    return f"{layer}:{int(index)}"


def parse_node(node: str) -> tuple[str, int]:
    """Inverse of :func:`node_id`."""
    layer, _, index = node.rpartition(":")
    if not layer:
        raise ValueError(f"{node!r} is not a neuron node (expected '<layer>:<index>')")
    return layer, int(index)


@dataclass
class CriticalPaths:
    """Result of :func:`critical_paths` for one image.

    Attributes
    ----------
    graph
        ``networkx.DiGraph`` (see the module description for nodes, edges and attributes).
    path
        Node names of the heaviest path, from ``"output"`` to ``"input"``.
    layers
        Layers in the graph, input side first.
    selection
        Layer -> bool (C,) selected neurons.
    full
        Unrestricted :class:`NeuronRelevance` (batch of one).
    restricted
        :class:`NeuronRelevance` with only the selected neurons passing relevance.
    neuron_maps
        Node name -> (C, H, W) input relevance flowing through that neuron alone (and, with
        ``restricted``, through the selected neurons above it).
    path_map
        (C, H, W) input relevance flowing along the heaviest path only.
    flows
        Node name -> relevance that neuron sends to every neuron of the layer below, a (C',)
        tensor (for the lowest layer: the input relevance sum, a 1-element tensor).
    """

    graph: nx.DiGraph
    path: list[str]
    layers: list[str]
    selection: dict[str, Tensor]
    full: NeuronRelevance
    restricted: NeuronRelevance
    neuron_maps: dict[str, Tensor] = field(default_factory=dict)
    path_map: Tensor | None = None
    flows: dict[str, Tensor] = field(default_factory=dict)

    @property
    def path_neurons(self) -> list[tuple[str, int]]:
        """The heaviest path's neurons as (layer, index), input side first."""
        return [parse_node(n) for n in reversed(self.path) if n not in ("input", "output")]


def _one_hot_jobs(
    layers: Sequence[str],
    selection: Mapping[str, Tensor],
    widths: Mapping[str, int],
    jobs: Sequence[tuple[int, int]],
    restricted: bool,
) -> dict[str, Tensor]:
    """(J, C) masks for jobs (layer position, neuron): that neuron alone at its layer."""
    masks = {}
    for pos, name in enumerate(layers):
        rows = torch.ones(len(jobs), widths[name])
        touched = False
        for j, (job_pos, index) in enumerate(jobs):
            if job_pos == pos:
                rows[j] = 0.0
                rows[j, index] = 1.0
                touched = True
            elif restricted and pos > job_pos:
                rows[j] = selection[name].float()
                touched = True
        if touched:
            masks[name] = rows
    return masks


def neuron_flows(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    layers: Sequence[str],
    neurons: Sequence[tuple[str, int]],
    selection: Masks | None = None,
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    *,
    batch_size: int = 16,
    epsilon: float | None = None,
) -> tuple[dict[tuple[str, int], Tensor], dict[tuple[str, int], Tensor]]:
    """One-neuron backward passes for one image: input maps and flows to the layer below.

    Parameters
    ----------
    model, x, targets
        Classifier, a (1, C, H, W) image and its (1,) target.
    layers
        Conv/linear layers, input side first (the order of adjacency).
    neurons
        (layer, index) pairs to pass relevance through alone.
    selection
        If given, layers above a neuron's layer keep only these neurons (restricted flows).

    Returns
    -------
    maps, flows
        (layer, index) -> (C, H, W) input relevance, and -> relevance at the next layer
        down summed over positions ((C',) tensor; the input relevance sum for the lowest
        layer).
    """
    if x.shape[0] != 1:
        raise ValueError(f"neuron flows are computed for one image; got a batch of {x.shape[0]}")
    layers = list(layers)
    position = {name: i for i, name in enumerate(layers)}
    for layer, _ in neurons:
        if layer not in position:
            raise ValueError(f"layer {layer!r} is not among the graph layers {layers}")
    sel = {k: torch.as_tensor(v).reshape(-1).bool() for k, v in (selection or {}).items()}
    jobs = [(position[layer], int(index)) for layer, index in neurons]
    info = {layer.name: layer for layer in _order_run(model, x)[0]}
    widths: dict[str, int] = {}
    for name in layers:
        if name not in info or info[name].is_output:
            raise ValueError(f"layer {name!r} is not a hidden conv/linear layer")
        widths[name] = info[name].size
        sel.setdefault(name, torch.ones(widths[name], dtype=torch.bool))
    maps: dict[tuple[str, int], Tensor] = {}
    flows: dict[tuple[str, int], Tensor] = {}
    step = max(1, int(batch_size))
    for start in range(0, len(jobs), step):
        chunk = jobs[start : start + step]
        masks = _one_hot_jobs(layers, sel, widths, chunk, selection is not None)
        xs = x.expand(len(chunk), *x.shape[1:]).contiguous()
        below = sorted({layers[p - 1] for p, _ in chunk if p > 0})
        result = propagate_masked(
            model,
            xs,
            targets.expand(len(chunk)),
            masks,
            method,
            rules,
            bounds,
            record=below,
            epsilon=epsilon,
        )
        for j, (pos, index) in enumerate(chunk):
            key = (layers[pos], index)
            maps[key] = result.input_relevance[j]
            if pos > 0:
                r = result.layer_relevance[layers[pos - 1]][j]
                flows[key] = r.flatten(1).sum(dim=1) if r.ndim > 1 else r
            else:
                flows[key] = result.input_relevance[j].sum().reshape(1)
    return maps, flows


def heaviest_path(graph: nx.DiGraph, weight: str = "share") -> list[str]:
    """Path from ``"output"`` to ``"input"`` with the largest summed edge ``weight``.

    The default weight ``share`` is an edge's flow divided by the summed :math:`|flow|` of
    all edges between the same two layers, so that every layer counts equally (restricted
    relevance shrinks from layer to layer); ``weight="flow"`` uses the raw flows. Dynamic
    programming over the layered DAG; negative weights are allowed.
    """
    if "output" not in graph or "input" not in graph:
        raise ValueError("the graph needs 'output' and 'input' nodes")
    best: dict[str, tuple[float, str | None]] = {"output": (0.0, None)}
    for node in nx.topological_sort(graph):
        if node not in best:
            continue
        for succ in graph.successors(node):
            value = best[node][0] + float(graph.edges[node, succ].get(weight, 0.0))
            if succ not in best or value > best[succ][0]:
                best[succ] = (value, node)
    if "input" not in best:
        raise ValueError("no path from 'output' to 'input' in the graph")
    path = ["input"]
    while best[path[-1]][1] is not None:
        path.append(best[path[-1]][1])
    return path[::-1]


def path_relevance(
    model: nn.Module,
    x: Tensor,
    path: Sequence[tuple[str, int]] | Sequence[str],
    target: TargetSpec = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    epsilon: float | None = None,
) -> Tensor:
    """Input relevance (N, C, H, W) flowing only through the neurons of ``path``.

    ``path`` lists (layer, index) pairs or node names (``"output"`` and ``"input"`` are
    skipped, so :attr:`CriticalPaths.path` works as it is); at each of its layers only that
    one neuron passes relevance (other layers are unrestricted).
    """
    neurons = [
        parse_node(p) if isinstance(p, str) else (str(p[0]), int(p[1]))
        for p in path
        if not (isinstance(p, str) and p in ("input", "output"))
    ]
    info = {layer.name: layer for layer in _order_run(model, x)[0]}
    selection = {}
    for layer, index in neurons:
        if layer not in info or info[layer].is_output:
            raise ValueError(f"layer {layer!r} is not a hidden conv/linear layer")
        if layer in selection:
            raise ValueError(f"the path visits layer {layer!r} twice; give one neuron per layer")
        width = info[layer].size
        if not 0 <= index < width:
            raise ValueError(f"neuron {index} is out of range for layer {layer!r} ({width})")
        selection[layer] = torch.zeros(width, dtype=torch.bool)
        selection[layer][index] = True
    return restricted_relevance(model, x, selection, target, method, rules, bounds, epsilon)


def critical_paths(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = "predicted",
    method: str | OutputRelevance = "sglrp",
    rules: RulesSpec = "dtd",
    bounds: Bounds | None = None,
    *,
    layers: Sequence[str] | None = None,
    k: int | Mapping[str, int] | None = 3,
    fraction: float | None = None,
    selection: Masks | None = None,
    by: str = "positive",
    restricted: bool = True,
    class_names: Sequence[str] | None = None,
    batch_size: int = 16,
    epsilon: float | None = None,
) -> CriticalPaths:
    """Select neurons per layer, measure the relevance flowing between them, find the path.

    Parameters
    ----------
    model, x
        Classifier and one (1, C, H, W) image; the model is left exactly as it was.
    target, method, rules, bounds, epsilon
        As for :func:`sglrp.explain`.
    layers
        Hidden conv/linear layers in the graph (default: all, in execution order).
    k, fraction, selection, by
        Which neurons form the graph: top-``k`` per layer, the smallest set holding
        ``fraction`` of each layer's relevance, or an explicit ``selection`` (layer -> bool
        (C,)); see :mod:`sglrp.neurons.selection`. ``fraction`` or ``selection`` override ``k``.
        ``by="positive"`` (default) keeps the neurons with the largest signed relevance: as
        z+ preserves the sign of what it redistributes, the restricted graph then carries only
        relevance *for* the target (with SGLRP / CLRP, ``"absolute"`` also keeps neurons
        that carry the evidence for the other classes, with negative flows).
    restricted
        Compute flows in the restricted network (only selected neurons above pass relevance).
    class_names
        Names for the output node's label.
    batch_size
        Copies of the image per backward pass.

    Returns
    -------
    CriticalPaths
        Graph, heaviest path, per-neuron and path heatmaps.
    """
    if x.ndim == 4 and x.shape[0] != 1:
        raise ValueError(
            f"critical paths are computed for one image; got a batch of {x.shape[0]}, pass "
            "x[i : i + 1]"
        )
    full = neuron_relevance(model, x, target, method, rules, bounds, epsilon=epsilon)
    targets = full.targets
    if layers is None:
        layers = list(full.layers)
    layers = [name for name in full.layers if name in set(layers)] + [
        name for name in layers if name not in full.layers
    ]
    for name in layers:
        if name not in full.relevance:
            raise ValueError(
                f"layer {name!r} is not a hidden conv/linear layer; choose from: "
                f"{', '.join(full.layers)}"
            )
    if selection is not None:
        sel = {name: as_masks({name: selection[name]}, 1)[name][0].bool() for name in selection}
        missing = [name for name in layers if name not in sel]
        if missing:
            raise ValueError(f"selection has no entry for layer {missing[0]!r}")
    elif fraction is not None:
        sel = {n: v[0] for n, v in select(full, fraction=fraction, layers=layers, by=by).items()}
    else:
        sel = {n: v[0] for n, v in select(full, k=k, layers=layers, by=by).items()}
    sel = {name: sel[name] for name in layers}
    restricted_result = neuron_relevance(
        model, x, targets, method, rules, bounds, selection=sel, epsilon=epsilon
    )

    neurons = [
        (name, int(i)) for name in layers for i in torch.nonzero(sel[name]).reshape(-1).tolist()
    ]
    maps, flows = neuron_flows(
        model,
        x,
        targets,
        layers,
        neurons,
        sel if restricted else None,
        method,
        rules,
        bounds,
        batch_size=batch_size,
        epsilon=epsilon,
    )

    graph = _build_graph(full, restricted_result, layers, sel, flows, class_names, method)
    graph.graph["restricted"] = bool(restricted)
    path = heaviest_path(graph)
    path_neurons = [parse_node(n) for n in path[1:-1]]
    path_map = path_relevance(model, x, path_neurons, targets, method, rules, bounds, epsilon)[0]
    for a, b in zip(path, path[1:], strict=False):
        graph.edges[a, b]["on_path"] = True
    for node in path:
        graph.nodes[node]["on_path"] = True
    return CriticalPaths(
        graph=graph,
        path=path,
        layers=list(layers),
        selection=sel,
        full=full,
        restricted=restricted_result,
        neuron_maps={node_id(*key): m for key, m in maps.items()},
        path_map=path_map,
        flows={node_id(*key): f for key, f in flows.items()},
    )


def _build_graph(
    full: NeuronRelevance,
    restricted: NeuronRelevance,
    layers: Sequence[str],
    sel: Mapping[str, Tensor],
    flows: Mapping[tuple[str, int], Tensor],
    class_names: Sequence[str] | None,
    method: object,
) -> nx.DiGraph:
    t = int(full.targets[0])
    name = class_names[t] if class_names is not None and t < len(class_names) else str(t)
    probs = torch.softmax(full.logits[0].double(), dim=0)
    graph = nx.DiGraph(
        target=t,
        target_name=name,
        probability=float(probs[t]),
        method=method if isinstance(method, str) else getattr(method, "__name__", "custom"),
        layers=",".join(layers),
    )
    out_rel = float(full.output_relevance[0, t])  # the target's own output relevance
    out_total = float(full.output_relevance[0].sum())  # all classes (0 for SGLRP)
    graph.add_node(
        "output",
        layer="output",
        index=t,
        depth=len(layers) + 1,
        relevance=out_rel,
        full_relevance=out_rel,
        total_relevance=out_total,
        share=1.0,
        label=name,
        on_path=False,
    )
    graph.add_node(
        "input",
        layer="input",
        index=-1,
        depth=0,
        relevance=float(restricted.input_relevance[0].sum()),
        full_relevance=float(full.input_relevance[0].sum()),
        share=1.0,
        label="input",
        on_path=False,
    )
    for depth, layer in enumerate(layers, start=1):
        r_full = full.relevance[layer][0]
        positive = float(r_full.clamp(min=0).sum())
        r_res = restricted.relevance[layer][0]
        for i in torch.nonzero(sel[layer]).reshape(-1).tolist():
            graph.add_node(
                node_id(layer, i),
                layer=layer,
                index=int(i),
                depth=depth,
                relevance=float(r_res[i]),
                full_relevance=float(r_full[i]),
                share=float(r_full[i]) / positive if positive > 0 else 0.0,
                label=str(i),
                on_path=False,
            )
    top = layers[-1]
    for i in torch.nonzero(sel[top]).reshape(-1).tolist():
        graph.add_edge("output", node_id(top, i), flow=float(restricted.relevance[top][0, i]))
    for pos in range(len(layers) - 1, 0, -1):
        upper, lower = layers[pos], layers[pos - 1]
        for d in torch.nonzero(sel[upper]).reshape(-1).tolist():
            vec = flows[(upper, d)]
            for c in torch.nonzero(sel[lower]).reshape(-1).tolist():
                graph.add_edge(node_id(upper, d), node_id(lower, c), flow=float(vec[c]))
    for c in torch.nonzero(sel[layers[0]]).reshape(-1).tolist():
        graph.add_edge(node_id(layers[0], c), "input", flow=float(flows[(layers[0], c)][0]))
    totals: dict[int, float] = {}
    for a, _, data in graph.edges(data=True):
        depth = int(graph.nodes[a]["depth"])
        totals[depth] = totals.get(depth, 0.0) + abs(data["flow"])
    for a, _, data in graph.edges(data=True):
        total = totals[int(graph.nodes[a]["depth"])]
        data["share"] = data["flow"] / total if total > 0 else 0.0
        data["on_path"] = False
    return graph


# --------------------------------------------------------------------------- export


def graph_to_json(graph: nx.DiGraph, path: Sequence[str] | None = None) -> dict:
    """JSON-ready dict: graph attributes, nodes, edges (``source``, ``target``, ``flow``), path."""
    return {
        "graph": dict(graph.graph),
        "nodes": [{"id": n, **data} for n, data in graph.nodes(data=True)],
        "edges": [{"source": a, "target": b, **data} for a, b, data in graph.edges(data=True)],
        "path": list(path) if path is not None else None,
    }


def write_graph(
    graph: nx.DiGraph, path: str | os.PathLike, heaviest: Sequence[str] | None = None
) -> Path:
    """Write ``graph`` as GraphML (``.graphml``) or JSON (``.json``), atomically."""
    path = Path(path)
    if path.suffix == ".json":
        return write_json(path, graph_to_json(graph, heaviest))
    if path.suffix != ".graphml":
        raise ValueError(f"unknown graph format {path.suffix!r}; use a .graphml or .json path")
    clean = nx.DiGraph()
    clean.graph.update({k: _scalar(v) for k, v in graph.graph.items()})
    for n, data in graph.nodes(data=True):
        clean.add_node(n, **{k: _scalar(v) for k, v in data.items()})
    for a, b, data in graph.edges(data=True):
        clean.add_edge(a, b, **{k: _scalar(v) for k, v in data.items()})
    with atomic_path(path) as tmp:
        nx.write_graphml(clean, tmp)
    return path


def _scalar(value: object) -> object:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return json.dumps(value) if value is not None else ""
