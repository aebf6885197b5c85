"""Neuron selection, critical-path graphs and DeconvNet reconstruction (after Bhati et al. 2024).

* :func:`neuron_relevance`: relevance of every conv channel / linear unit of every layer for a
  target, from one LRP / CLRP / SGLRP backward pass.
* :func:`select_top_k`, :func:`select_fraction`: keep the most relevant neurons per layer;
  :func:`restricted_relevance`: the input heatmap flowing only through them;
  :func:`ablated_logits`: the output with only them active.
* :func:`mse`, :func:`smape`, :func:`selection_curve`, :func:`choose_k`: how many neurons are
  needed to reproduce the heatmap or the output within a tolerance.
* :func:`critical_paths`: a ``networkx`` graph of the selected neurons with the relevance
  flowing between adjacent layers, its heaviest path, per-neuron and path heatmaps;
  :func:`write_graph` (GraphML / JSON); the figures are drawn by :mod:`sglrp.viz`
  (:func:`~sglrp.viz.draw_graph`, :func:`~sglrp.viz.neuron_grid`, ...).
* :func:`deconvnet`: Zeiler & Fergus reconstruction of a neuron's feature map in pixel space.
"""

from .deconv import deconvnet, deconvnet_display, feature_chain
from .graph import (
    CriticalPaths,
    critical_paths,
    graph_to_json,
    heaviest_path,
    neuron_flows,
    node_id,
    parse_node,
    path_relevance,
    write_graph,
)
from .relevance import (
    LayerInfo,
    NeuronRelevance,
    ablated_logits,
    neuron_layers,
    neuron_relevance,
    propagate_masked,
    restricted_relevance,
)
from .selection import (
    METRICS,
    SelectionCurve,
    choose_k,
    default_ks,
    mse,
    select,
    select_fraction,
    select_top_k,
    selection_curve,
    smape,
)

__all__ = [
    "METRICS",
    "CriticalPaths",
    "LayerInfo",
    "NeuronRelevance",
    "SelectionCurve",
    "ablated_logits",
    "choose_k",
    "critical_paths",
    "deconvnet",
    "deconvnet_display",
    "default_ks",
    "feature_chain",
    "graph_to_json",
    "heaviest_path",
    "mse",
    "neuron_flows",
    "neuron_layers",
    "neuron_relevance",
    "node_id",
    "parse_node",
    "path_relevance",
    "propagate_masked",
    "restricted_relevance",
    "select",
    "select_fraction",
    "select_top_k",
    "selection_curve",
    "smape",
    "write_graph",
]
