"""Figures of the neuron analysis (:mod:`sglrp.neurons`): per-neuron heatmaps next to their
DeconvNet reconstructions, the heaviest path, the selection errors over k, and the layered
critical-path graph. The analysis returns data; these functions draw it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import networkx as nx
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch import Tensor

from ..neurons.deconv import deconvnet_display
from .maps import overlay, save_figure, signed_map, to_image

__all__ = ["draw_graph", "error_curves", "neuron_grid", "path_figure"]


def neuron_grid(
    image: Any,
    titles: Sequence[str],
    heatmaps: Sequence[Tensor],
    reconstructions: Sequence[Tensor | None] | None = None,
    *,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    cell: float = 1.45,
    dpi: float = 150,
    overlay_alpha: float = 0.65,
):
    """Grid with one column per neuron: its input heatmap and its DeconvNet reconstruction.

    Parameters
    ----------
    image
        The input image for display, (H, W, 3) / (3, H, W) in [0, 1] or uint8.
    titles
        One caption per neuron column.
    heatmaps
        Per neuron (C, H, W) input relevance (restricted to that neuron); each is shown as
        its signed map (red +, blue -, own scale) over the grey image.
    reconstructions
        Per neuron (3, H, W) DeconvNet reconstruction or None (a second row when any is given;
        grey = 0).
    path
        If given, the PNG is written there atomically.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if len(titles) != len(heatmaps):
        raise ValueError(f"got {len(titles)} titles for {len(heatmaps)} heatmaps")
    recon = list(reconstructions) if reconstructions is not None else []
    if recon and len(recon) != len(heatmaps):
        raise ValueError(f"got {len(recon)} reconstructions for {len(heatmaps)} heatmaps")
    has_recon = any(r is not None for r in recon)
    rows = 2 if has_recon else 1
    cols = len(heatmaps) + 1
    header = 0.5 if title else 0.15
    fig = Figure(figsize=(cols * cell + 0.3, rows * (cell + 0.32) + header), dpi=dpi)
    FigureCanvasAgg(fig)
    W, H = fig.get_size_inches()
    rgb = to_image(image)

    def axes(row: int, col: int):
        left = 0.15 + col * cell
        top = header + row * (cell + 0.32) + 0.3
        return fig.add_axes(
            ((left + 0.03) / W, 1 - (top + cell - 0.06) / H, (cell - 0.06) / W, (cell - 0.06) / H)
        )

    def caption(row: int, col: int, text: str, size: float = 6.5) -> None:
        fig.text(
            (0.15 + (col + 0.5) * cell) / W,
            1 - (header + row * (cell + 0.32) + 0.16) / H,
            text,
            ha="center",
            va="center",
            fontsize=size,
        )

    ax = axes(0, 0)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    caption(0, 0, "input")
    if has_recon:
        ax = axes(1, 0)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        caption(1, 0, "input")
    for j, (name, heat) in enumerate(zip(titles, heatmaps, strict=True), start=1):
        ax = axes(0, j)
        m = signed_map(heat)
        ax.imshow(overlay(rgb, m, alpha=overlay_alpha, signed=True), interpolation="nearest")
        ax.set_axis_off()
        caption(0, j, f"{name}\nheatmap")
        if has_recon:
            ax = axes(1, j)
            r = recon[j - 1]
            if r is None:
                ax.set_facecolor("0.9")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(
                    0.5,
                    0.5,
                    "no\nreconstruction",
                    ha="center",
                    va="center",
                    fontsize=6,
                    transform=ax.transAxes,
                )
            else:
                ax.imshow(deconvnet_display(r), interpolation="nearest")
                ax.set_axis_off()
            caption(1, j, f"{name}\nDeconvNet")
    if title:
        fig.text(0.5, 1 - 0.22 / H, title, ha="center", va="center", fontsize=9)
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


def path_figure(
    paths: Any,
    image: Any,
    reconstructions: dict[str, Tensor | None] | None = None,
    *,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    dpi: float = 150,
):
    """The heaviest path of a :class:`~sglrp.neurons.CriticalPaths`, neuron by neuron.

    One column per neuron on the path (input side first) with the input heatmap flowing
    through it, and its DeconvNet reconstruction when given (node name -> (3, H, W)).
    """
    nodes = [n for n in reversed(paths.path) if n not in ("input", "output")]
    titles = list(nodes)
    heatmaps = [paths.neuron_maps[n] for n in nodes]
    recon = [None if reconstructions is None else reconstructions.get(n) for n in nodes]
    if title is None:
        title = "heaviest path, input side first: heatmap through each neuron and its DeconvNet"
    return neuron_grid(
        image,
        titles,
        heatmaps,
        recon if reconstructions is not None else None,
        path=path,
        title=title,
        dpi=dpi,
    )


def error_curves(
    curve: Any,
    *,
    path: str | os.PathLike | None = None,
    k: int | None = None,
    metric: str | None = None,
    tolerance: float | None = None,
    title: str | None = None,
    dpi: float = 150,
):
    """MSE and SMAPE over k of a :class:`~sglrp.neurons.SelectionCurve`, in a 2 x 2 grid.

    Rows: restricted heatmap vs full heatmap, ablated output vs full output; columns: MSE,
    SMAPE. ``k`` draws a vertical line at the k used; ``metric`` and ``tolerance`` draw the
    tolerance of an automatic choice in that metric's panel.
    """
    fig = Figure(figsize=(8.0, 5.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    panels = (
        ("heatmap_mse", "restricted heatmap vs full", "MSE (maps / max|full|)"),
        ("heatmap_smape", "restricted heatmap vs full", "SMAPE (%)"),
        ("output_mse", "ablated output vs full", "MSE (logits)"),
        ("output_smape", "ablated output vs full", "SMAPE (%)"),
    )
    ks = list(curve.ks)
    for ax, (name, what, ylabel) in zip(axes.flat, panels, strict=True):
        values = getattr(curve, name)
        ax.plot(
            ks,
            values,
            marker="o",
            ms=3,
            lw=1.5,
            color="tab:blue" if "heat" in name else "tab:orange",
        )
        per_image = curve.per_image.get(name)
        if per_image is not None and per_image.shape[1] > 1:
            ax.fill_between(ks, per_image.min(axis=1), per_image.max(axis=1), alpha=0.2, lw=0)
        if k is not None:
            ax.axvline(k, color="0.3", ls="--", lw=1)
        if tolerance is not None and name == metric:
            ax.axhline(tolerance, color="tab:red", ls=":", lw=1.2, label=f"tolerance {tolerance:g}")
            ax.legend(fontsize=7, frameon=False)
        if "smape" in name:
            ax.set_ylim(-5, 205)
        else:
            ax.set_ylim(bottom=0)
        if len(ks) > 1 and ks[-1] / ks[0] > 20:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(what, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(f"k (top neurons kept at {', '.join(curve.layers)})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3, lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    if title is None:
        title = "errors of top-k neuron selections" + (f" (dashed: k = {k})" if k else "")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


# --------------------------------------------------------------------------- drawing


def draw_graph(
    graph: nx.DiGraph,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    dpi: float = 150,
    max_width: float = 6.0,
):
    """Layered drawing: one column per layer (input left, output right).

    Nodes are coloured by their relevance (red positive, blue negative, scaled per layer),
    edge width is proportional to :math:`|\\text{flow}|` (red positive, blue negative flow),
    and the heaviest path (edges with ``on_path``) is outlined in black.

    Returns the ``matplotlib.figure.Figure``; with ``path`` it is also written as a PNG.
    """
    columns: dict[int, list[str]] = {}
    for n, data in graph.nodes(data=True):
        columns.setdefault(int(data["depth"]), []).append(n)
    depths = sorted(columns)
    tallest = max(len(v) for v in columns.values())
    fig_w = max(6.0, 0.95 * len(depths) + 1.5)
    fig_h = max(3.0, 0.5 * tallest + 1.6)
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.08, 0.96, 0.82))
    pos: dict[str, tuple[float, float]] = {}
    for d in depths:
        nodes = sorted(columns[d], key=lambda n: -graph.nodes[n]["relevance"])
        m = len(nodes)
        for j, n in enumerate(nodes):
            pos[n] = (float(d), (m - 1) / 2.0 - j)
    # width proportional to |flow|, scaled per pair of layers (restricted relevance shrinks
    # from layer to layer); at least a hairline, so zero-flow edges stay visible
    gap_max: dict[int, float] = {}
    for a, _, data in graph.edges(data=True):
        d = int(graph.nodes[a]["depth"])
        gap_max[d] = max(gap_max.get(d, 0.0), abs(float(data.get("flow", 0.0))))
    ordered = sorted(graph.edges(data=True), key=lambda e: bool(e[2].get("on_path")))
    for a, b, data in ordered:
        flow = float(data.get("flow", 0.0))
        fmax = gap_max[int(graph.nodes[a]["depth"])] or 1.0
        width = max_width * abs(flow) / fmax
        (x0, y0), (x1, y1) = pos[a], pos[b]
        color = (0.80, 0.10, 0.10) if flow >= 0 else (0.15, 0.30, 0.85)
        if data.get("on_path"):
            ax.plot(
                [x0, x1],
                [y0, y1],
                color="black",
                lw=width + 2.4,
                zorder=2,
                alpha=0.9,
                solid_capstyle="round",
            )
        ax.plot(
            [x0, x1],
            [y0, y1],
            color=color,
            lw=max(width, 0.25),
            zorder=3,
            alpha=0.9 if data.get("on_path") else 0.55,
            solid_capstyle="round",
        )
    cmap = colormaps["bwr"]
    layer_max: dict[int, float] = {}
    for _, data in graph.nodes(data=True):
        d = int(data["depth"])
        layer_max[d] = max(layer_max.get(d, 0.0), abs(float(data["relevance"])))
    for n, data in graph.nodes(data=True):
        d = int(data["depth"])
        scale = layer_max[d] if layer_max[d] > 0 else 1.0
        value = 0.5 + 0.5 * float(data["relevance"]) / scale
        special = n in ("input", "output")
        ax.scatter(
            [pos[n][0]],
            [pos[n][1]],
            s=520 if special else 300,
            c=[(1.0, 0.85, 0.35) if special else cmap(value)],
            edgecolors="black",
            linewidths=2.0 if data.get("on_path") else 0.8,
            zorder=4,
            marker="s" if special else "o",
        )
        label = "in" if n == "input" else ("out" if n == "output" else str(data["label"]))
        ax.text(pos[n][0], pos[n][1], label, ha="center", va="center", fontsize=6.5, zorder=5)
    lows = min(p[1] for p in pos.values())
    highs = max(p[1] for p in pos.values())
    names = {int(data["depth"]): str(data["layer"]) for _, data in graph.nodes(data=True)}
    names[max(depths)] = f"output\n{graph.graph.get('target_name', '')}"
    for d in depths:
        ax.text(d, lows - 0.6, names[d], ha="center", va="top", fontsize=7)
    ax.set_xlim(min(depths) - 0.6, max(depths) + 0.6)
    ax.set_ylim(lows - 1.3, highs + 0.6)
    ax.axis("off")
    if title is None:
        prob = graph.graph.get("probability")
        title = (
            f"{graph.graph.get('method', '').upper()} critical paths for "
            f"'{graph.graph.get('target_name', '')}'"
            + (f" (p = {prob:.2f})" if isinstance(prob, float) else "")
        )
    fig.suptitle(title, fontsize=10)
    fig.text(
        0.5,
        0.015,
        "node colour: neuron relevance (red +, blue -, scaled per layer); edge width: |relevance"
        " flow| (red +, blue -, scaled per pair of layers); black outline: heaviest path",
        ha="center",
        fontsize=6.5,
        color="0.3",
    )
    if path is not None:
        save_figure(fig, path, dpi)
    return fig
