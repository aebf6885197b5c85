"""Neuron relevance, restricted propagation, selections, critical-path graphs, DeconvNet, CLI."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state
from torch import nn

import sglrp
from sglrp.neurons import (
    ablated_logits,
    choose_k,
    critical_paths,
    deconvnet,
    heaviest_path,
    mse,
    neuron_layers,
    neuron_relevance,
    path_relevance,
    restricted_relevance,
    select_fraction,
    select_top_k,
    selection_curve,
    smape,
    write_graph,
)
from sglrp.propagation import propagate


class Tiny(nn.Module):
    """conv - relu - pool - conv - relu - flatten - linear - relu - linear, 8x8 inputs."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 4, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(4))
        layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(5))
        layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(5 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3))
        if bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _tiny(bn: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = Tiny(bn).eval()
    return model, torch.randn(2, 3, 8, 8)


def _hidden(model: nn.Module, x: torch.Tensor) -> list[str]:
    return [info.name for info in neuron_layers(model, x) if not info.is_output]


# --------------------------------------------------------------------------- errors


def test_mse_and_smape_known_values():
    assert float(mse(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))) == pytest.approx(2.0)
    # terms: |1-2|/1.5 and 0  ->  100/2 * 2/3
    assert float(smape(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]))) == pytest.approx(
        100 / 3
    )
    assert float(smape(torch.tensor([1.0]), torch.tensor([-1.0]))) == pytest.approx(200.0)
    assert float(smape(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))) == 0.0
    # a 0/0 term counts as 0 and still counts in n
    assert float(smape(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 3.0]))) == pytest.approx(50.0)
    assert mse(torch.zeros(3, 4), torch.zeros(3, 4)).shape == (3,)


def test_smape_range_on_random_pairs():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randn(5, 30, generator=g) * torch.rand(1, generator=g) * 10
        f = torch.randn(5, 30, generator=g)
        f[:, :5] = 0.0
        a[:, :3] = 0.0  # some 0/0 terms
        s = smape(f, a)
        assert torch.isfinite(s).all()
        assert (s >= 0).all() and (s <= 200).all()
    with pytest.raises(ValueError, match="same shape"):
        smape(torch.zeros(2), torch.zeros(3))


# --------------------------------------------------------------------------- relevance


def test_neuron_relevance_matches_recorded_layers_in_one_pass():
    model, x = _tiny()
    nr = neuron_relevance(model, x, "predicted", "sglrp", keep_maps=True)
    assert nr.layers == ["features.0", "features.3", "classifier.0"]
    assert nr.output_layer == "classifier.2"
    targets = nr.targets
    for name in nr.layers:
        ref = propagate(model, x, targets, "sglrp", record=[name]).layer_relevance[name]
        summed = ref.flatten(2).sum(2) if ref.ndim > 2 else ref
        torch.testing.assert_close(nr.relevance[name], summed)
    # z+ without bias conserves relevance layer by layer (LRP: the total is z_t)
    nr = neuron_relevance(model, x, "predicted", "lrp")
    totals = [nr.relevance[n].sum(1) for n in nr.layers] + [nr.output_relevance.sum(1)]
    for t in totals:
        torch.testing.assert_close(t, totals[-1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["lrp", "clrp", "sglrp"])
@pytest.mark.parametrize("bn", [False, True])
def test_selecting_every_neuron_reproduces_the_full_heatmap(method, bn):
    model, x = _tiny(bn)
    before = model_state(model)
    full = sglrp.explain(model, x, "predicted", method=method)
    nr = neuron_relevance(model, x, "predicted", method)
    everything = select_top_k(nr, 1000)
    assert all(bool(v.all()) for v in everything.values())
    restricted = restricted_relevance(model, x, everything, "predicted", method)
    assert torch.equal(restricted, full)
    assert float(mse(restricted, full).max()) == 0.0
    assert float(smape(restricted.sum(1), full.sum(1)).max()) == 0.0
    # and a real restriction changes the map and zeroes the unselected neurons
    conv2 = _hidden(model, x)[1]  # features.3, or features.4 after a BatchNorm
    top1 = select_top_k(nr, 1, layers=[conv2])
    partial = neuron_relevance(model, x, "predicted", method, selection=top1)
    r, keep = partial.relevance[conv2], top1[conv2]
    assert (r[~keep] == 0).all()
    torch.testing.assert_close(r[keep], nr.relevance[conv2][keep])
    assert not torch.equal(partial.input_relevance, full)
    assert_same_state(before, model_state(model))


def test_restriction_is_linear_in_the_selection():
    model, x = _tiny()
    nr = neuron_relevance(model, x)
    parts = []
    for c in range(4):
        sel = torch.zeros(2, 4, dtype=torch.bool)
        sel[:, c] = True
        parts.append(restricted_relevance(model, x, {"features.0": sel}))
    torch.testing.assert_close(sum(parts), nr.input_relevance, atol=1e-7, rtol=1e-5)


def test_ablated_logits_zero_unselected_neurons():
    model, x = _tiny()
    before = model_state(model)
    with torch.no_grad():
        logits = model(x)
    everything = {"features.3": torch.ones(5, dtype=torch.bool)}
    assert torch.equal(ablated_logits(model, x, everything), logits)
    keep = torch.tensor([True, False, True, False, False])
    with torch.no_grad():
        h = model.features[:4](x) * keep.view(1, 5, 1, 1)
        expected = model.classifier(torch.flatten(model.features[4](h), 1))
    torch.testing.assert_close(ablated_logits(model, x, {"features.3": keep}), expected)
    assert_same_state(before, model_state(model))


def test_bad_selection_leaves_model_unchanged():
    model, x = _tiny()
    before = model_state(model)
    with pytest.raises(ValueError, match="neurons"):
        restricted_relevance(model, x, {"features.0": torch.ones(7, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not a conv or linear layer"):
        restricted_relevance(model, x, {"features.1": torch.ones(4, dtype=torch.bool)})
    assert_same_state(before, model_state(model))


# --------------------------------------------------------------------------- selection


def test_select_fraction_and_top_k():
    rel = {"a": torch.tensor([[5.0, -4.0, 3.0, 2.0]])}  # |R| total 14, positive total 10
    assert select_top_k(rel, 2)["a"].tolist() == [[True, True, False, False]]
    assert select_top_k(rel, 2, by="positive")["a"].tolist() == [[True, False, True, False]]
    pos = {"by": "positive"}
    assert select_fraction(rel, 0.5, **pos)["a"].tolist() == [[True, False, False, False]]
    assert select_fraction(rel, 0.7, **pos)["a"].tolist() == [[True, False, True, False]]
    assert select_fraction(rel, 1.0, **pos)["a"].tolist() == [[True, False, True, True]]
    assert select_fraction(rel, 0.3)["a"].tolist() == [[True, False, False, False]]
    assert select_fraction(rel, 0.5)["a"].tolist() == [[True, True, False, False]]  # 9/14
    assert select_fraction(rel, 1.0)["a"].tolist() == [[True, True, True, True]]
    with pytest.raises(ValueError, match="fraction"):
        select_fraction(rel, 0.0)


def test_selection_curve_and_choice_of_k():
    model, x = _tiny()
    before = model_state(model)
    curve = selection_curve(model, x, ["features.3"], batch_size=4)
    assert curve.ks == [1, 2, 3, 4, 5]
    for name in ("heatmap_mse", "heatmap_smape", "output_mse", "output_smape"):
        values = getattr(curve, name)
        assert len(values) == 5
        assert values[-1] == pytest.approx(0.0, abs=1e-3)  # all neurons: the full model
        assert max(values) > 0
    assert all(0 <= v <= 200 for v in curve.heatmap_smape + curve.output_smape)
    assert choose_k(curve, 1e9) == 1
    assert choose_k(curve, 1e-3) == 5
    assert choose_k(curve, -1.0) is None
    json.dumps(curve.to_dict())
    assert_same_state(before, model_state(model))


# --------------------------------------------------------------------------- graph


def _explicit_zplus_flows(model: Tiny, x: torch.Tensor, target: int) -> torch.Tensor:
    """F[d, c] between features.0 (lower) and features.3 (upper) from the z+ formula."""
    res = propagate(model, x, torch.tensor([target]), "sglrp", record=["features.3"])
    r_up = res.layer_relevance["features.3"][0]  # (5, 4, 4) at the upper conv's output
    with torch.no_grad():
        a = model.features[:3](x)  # (1, 4, 4, 4): pooled ReLU output, the upper conv's input
        w = model.features[3].weight.clamp(min=0)
        z = F.conv2d(a, w, padding=1)[0]  # z+ denominators (bias left out)
        flows = torch.zeros(5, 4)
        for c in range(4):
            zc = F.conv2d(a[:, c : c + 1], w[:, c : c + 1], padding=1)[0]
            flows[:, c] = torch.where(z > 0, zc / z.clamp(min=1e-30) * r_up, 0.0).sum((1, 2))
    return flows


def test_graph_flows_conserve_relevance_and_match_zplus():
    model, x = _tiny()
    x = x[:1]
    before = model_state(model)
    cp = critical_paths(model, x, k=1000, batch_size=8)  # every neuron
    g = cp.graph
    assert isinstance(g, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(g)
    for node, data in g.nodes(data=True):
        if node == "output":
            continue
        flows = [g.edges[p, node]["flow"] for p in g.predecessors(node)]
        tol = 1e-5 * sum(abs(f) for f in flows)  # float32 sums of signed (SGLRP) flows
        assert sum(flows) == pytest.approx(data["relevance"], rel=1e-4, abs=tol)
        if node != "input":  # nothing restricted: the full relevance
            assert data["relevance"] == pytest.approx(data["full_relevance"], rel=1e-5, abs=tol)
    # the flows equal the explicit z+ contributions summed over positions
    explicit = _explicit_zplus_flows(model, x, int(cp.full.targets[0]))
    for d in range(5):
        for c in range(4):
            flow = g.edges[f"features.3:{d}", f"features.0:{c}"]["flow"]
            assert flow == pytest.approx(float(explicit[d, c]), rel=1e-4, abs=1e-9)
    # z+ conserves what a neuron sends down: its flows to all lower neurons add up to it
    for d in range(5):
        sent = cp.flows[f"features.3:{d}"]
        tol = 1e-5 * float(sent.abs().sum())
        assert float(sent.sum()) == pytest.approx(
            g.nodes[f"features.3:{d}"]["relevance"], rel=1e-4, abs=tol
        )
    assert_same_state(before, model_state(model))


def test_restricted_graph_path_and_exports(tmp_path):
    model, x = _tiny()
    x = x[:1]
    before = model_state(model)
    cp = critical_paths(model, x, k=2, class_names=["a", "b", "c"], batch_size=3)
    g = cp.graph
    assert g.number_of_nodes() == 2 + 3 * 2
    # in-edges of a selected neuron add up to its relevance under the restriction
    for node in g.nodes:
        if node in ("input", "output"):
            continue
        flows = [g.edges[p, node]["flow"] for p in g.predecessors(node)]
        layer, index = node.rsplit(":", 1)
        restricted = float(cp.restricted.relevance[layer][0, int(index)])
        tol = 1e-5 * sum(abs(f) for f in flows)
        assert sum(flows) == pytest.approx(restricted, rel=1e-4, abs=tol)
    # heaviest path: output -> one neuron per layer -> input, best summed share
    path = cp.path
    assert path[0] == "output" and path[-1] == "input" and len(path) == 5
    best = max(
        nx.all_simple_paths(g, "output", "input"),
        key=lambda p: sum(g.edges[a, b]["share"] for a, b in zip(p, p[1:], strict=False)),
    )
    assert path == best == heaviest_path(g)
    # the path heatmap is the propagation through the path's neurons only
    torch.testing.assert_close(
        cp.path_map, path_relevance(model, x, path, cp.full.targets)[0], atol=0, rtol=0
    )
    write_graph(g, tmp_path / "g.graphml", path)
    write_graph(g, tmp_path / "g.json", path)
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert set(back.nodes) == set(g.nodes)
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["path"] == path and len(data["edges"]) == g.number_of_edges()
    assert_same_state(before, model_state(model))


# --------------------------------------------------------------------------- deconv


def _conv_t_loops(sig: np.ndarray, w: np.ndarray, pad: int, out_hw: int) -> np.ndarray:
    """Transposed convolution by scattering: every output value spreads over its window."""
    o, h, _ = sig.shape
    _, c_in, kh, kw = w.shape
    out = np.zeros((c_in, out_hw + 2 * pad, out_hw + 2 * pad))
    for oc in range(o):
        for p in range(h):
            for q in range(h):
                out[:, p : p + kh, q : q + kw] += sig[oc, p, q] * w[oc]
    return out[:, pad : pad + out_hw, pad : pad + out_hw]


def test_deconvnet_matches_hand_computation():
    torch.manual_seed(3)
    model = Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    before = model_state(model)
    channel = 2
    got = deconvnet(model, x, "features.3", channel)[0].numpy()

    w1 = model.features[0].weight.detach().double().numpy()
    w2 = model.features[3].weight.detach().double().numpy()
    with torch.no_grad():
        a1 = torch.relu(model.features[0](x))[0].double().numpy()  # (4, 8, 8)
        a2 = torch.relu(model.features[3](model.features[:3](x)))[0].double().numpy()
    # switches of the 2x2 max pooling
    pooled_pos = {}
    for c in range(4):
        for p in range(4):
            for q in range(4):
                win = a1[c, 2 * p : 2 * p + 2, 2 * q : 2 * q + 2]
                i, j = np.unravel_index(np.argmax(win), (2, 2))
                pooled_pos[c, p, q] = (2 * p + i, 2 * q + j)
    sig = np.zeros_like(a2)
    sig[channel] = a2[channel]  # the rectified map of one channel
    sig = np.maximum(sig, 0)
    up = _conv_t_loops(sig, w2, 1, 4)  # back through conv 2 (its filters, transposed)
    unpooled = np.zeros((4, 8, 8))
    for (c, p, q), (i, j) in pooled_pos.items():
        unpooled[c, i, j] += up[c, p, q]
    unpooled = np.maximum(unpooled, 0)  # ReLU of layer 1
    expected = _conv_t_loops(unpooled, w1, 1, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    # several channels at once, and the strongest activation only
    both = deconvnet(model, x, "features.3", [channel, 0])
    assert both.shape == (1, 2, 3, 8, 8)
    np.testing.assert_allclose(both[0, 0].numpy(), expected, rtol=1e-4, atol=1e-5)
    top = deconvnet(model, x, "features.3", channel, mode="max")
    assert top.shape == (1, 3, 8, 8)
    assert_same_state(before, model_state(model))


def test_deconvnet_errors():
    model, x = _tiny()
    with pytest.raises(ValueError, match="Sequential"):
        deconvnet(model, x, "classifier", 0)
    with pytest.raises(ValueError, match="out of range"):
        deconvnet(model, x, "features.3", 9)


# --------------------------------------------------------------------------- command line


def test_paths_command_end_to_end(tmp_path, capsys):
    from sglrp.cli import main
    from sglrp.models import shapes_vgg

    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(shapes_vgg(12).state_dict(), weights)
    out = tmp_path / "out"
    argv = [
        "paths",
        "builtin:1",
        "--model",
        "shapes_vgg",
        "--weights",
        str(weights),
        "--layer",
        "features.7",
        "--k",
        "auto",
        "--tolerance",
        "150",
        "--graph-k",
        "2",
        "--size",
        "32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    for name in (
        "graph.png",
        "graph.graphml",
        "graph.json",
        "heatmaps.png",
        "neurons.png",
        "path.png",
        "errors.png",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "features.7"
    assert summary["k_auto"]["chosen"] == summary["k"]
    assert summary["errors_at_k"]["heatmap_smape"] <= 150
    assert len(summary["selected"]) == summary["k"]
    assert summary["graph"]["heaviest_path"][0] == "output"
    assert len(summary["curves"]["ks"]) == len(summary["curves"]["heatmap_smape"])
    for f in summary["files"]["maps"].values():
        assert (out / f).is_file()
    assert not list(out.glob(".*"))  # no temporary files left behind

    assert main([*argv[:6], "--layer", "features.1", "--out", str(out)]) == 1
    assert "not a hidden conv/linear layer" in capsys.readouterr().err
