"""The package's shape: the library knows nothing of the application, metrics stand alone,
commands do not import each other, no import cycles, no file over 600 lines, and a method
registered once reaches explain, the CLI, the evaluation and the report."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image

import sglrp
from sglrp import cli, methods, metrics
from sglrp.app import report, runner
from sglrp.data import CLASSES, MEAN, STD
from sglrp.loading import ModelBundle
from sglrp.models import get_model, shapes_vgg

SRC = Path(sglrp.__file__).resolve().parent
MAX_LINES = 600

#: Top-level parts of the application; everything else in the package is library.
APPLICATION = ("app", "commands", "cli", "server", "__main__")
#: What the metrics may not import (besides the application).
NOT_FOR_METRICS = ("api", "models", "data", "viz")


# ----------------------------------------------------------------------------- the checker


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(path: Path, module: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """Modules of the package that ``path`` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{alias.name}"
                yield sub if sub in modules else target


def import_graph(root: Path, package: str) -> nx.DiGraph:
    """Directed graph module -> module of the package it imports."""
    files = {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        for target in _imports(path, module, path.name == "__init__.py", set(files)):
            while target and target not in files and "." in target:
                target = target.rpartition(".")[0]  # an attribute of a module
            if target in files and target != module:
                graph.add_edge(module, target)
    return graph


def _part(module: str, package: str) -> str:
    rest = module[len(package) + 1 :] if module != package else ""
    return rest.split(".")[0]


def violations(root: Path, package: str = "sglrp") -> list[str]:
    """Every breach of the layering rules in the package at ``root``."""
    graph = import_graph(root, package)
    found = []
    for a, b in graph.edges:
        pa, pb = _part(a, package), _part(b, package)
        if pa not in APPLICATION and pb in APPLICATION:
            found.append(f"library module {a} imports the application module {b}")
        if pa == "metrics" and pb in (*NOT_FOR_METRICS, *APPLICATION):
            found.append(f"metrics module {a} imports {b}")
        if (
            pa == pb == "commands"
            and a.count(".") == b.count(".") == 2
            and "options" not in (a.rpartition(".")[2], b.rpartition(".")[2])
        ):
            found.append(f"command {a} imports the command {b}")
    for cycle in nx.simple_cycles(graph):
        found.append("import cycle: " + " -> ".join([*cycle, cycle[0]]))
    return found


# ----------------------------------------------------------------------------- the package


def test_the_package_keeps_its_layers():
    assert violations(SRC) == []


def test_the_checker_finds_every_kind_of_breach(tmp_path):
    root = tmp_path / "pkg"
    files = {
        "__init__.py": "",
        "api.py": "from .app import runner\n",  # library -> application
        "metrics/__init__.py": "from .core import x\n",
        "metrics/core.py": "from ..models import zoo\nx = 1\n",  # metrics -> models
        "models/__init__.py": "",
        "models/zoo.py": "import pkg.viz\n",
        "viz.py": "def f():\n    from pkg.models import zoo\n",  # cycle models.zoo <-> viz
        "app/__init__.py": "",
        "app/runner.py": "from ..metrics import x\n",  # allowed
        "commands/__init__.py": "",
        "commands/options.py": "",
        "commands/evaluate.py": "from .options import *\nfrom ..app import runner\n",  # allowed
        "commands/reproduce.py": "from . import evaluate\n",  # command -> command
        "typed.py": "import typing\nif typing.TYPE_CHECKING:\n    from .app import runner\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = violations(root, "pkg")
    assert "library module pkg.api imports the application module pkg.app.runner" in found
    assert "metrics module pkg.metrics.core imports pkg.models.zoo" in found
    assert "command pkg.commands.reproduce imports the command pkg.commands.evaluate" in found
    assert any(f.startswith("import cycle:") and "pkg.viz" in f for f in found)
    assert len(found) == 4, found  # the allowed imports and the TYPE_CHECKING one are not


def _line_counts(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines())
        for p in root.rglob("*.py")
    }


def test_no_source_file_is_over_600_lines(tmp_path):
    too_long = {k: v for k, v in _line_counts(SRC).items() if v > MAX_LINES}
    assert too_long == {}
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))  # the check can fail
    assert _line_counts(tmp_path) == {"long.py": MAX_LINES + 1}


def test_the_old_metrics_name_still_imports(monkeypatch):
    monkeypatch.delitem(sys.modules, "sglrp.evaluate", raising=False)
    with pytest.warns(DeprecationWarning, match="sglrp.metrics"):
        old = importlib.import_module("sglrp.evaluate")
    assert old.average_drop is metrics.average_drop
    assert set(old.__all__) == set(metrics.__all__)


# ----------------------------------------------------------------------------- a new method


def _toy(model: torch.nn.Module, x: torch.Tensor, target: sglrp.Target) -> torch.Tensor:
    """|gradient| + 1e-3: a positive map, so every metric scores it."""
    leaf = x.detach().requires_grad_(True)
    logits = model(leaf)
    columns, _ = target.columns(logits)
    (grad,) = torch.autograd.grad(logits.gather(1, columns[:, :1]).sum(), leaf)
    return grad.abs() + 1e-3


@pytest.fixture
def toy_method():
    methods.register("toy_saliency", _toy, label="Toy Saliency", family="gradient")
    yield "toy_saliency"
    methods.unregister("toy_saliency")
    assert "toy_saliency" not in methods.available()


def test_a_registered_method_reaches_explain_cli_evaluation_and_report(
    toy_method, tmp_path, capsys, monkeypatch
):
    torch.manual_seed(0)
    model = shapes_vgg(num_classes=len(CLASSES)).eval()
    x = torch.rand(2, 3, 32, 32)
    r = sglrp.explain(model, x, "predicted", method=toy_method)
    assert r.shape == x.shape and bool((r > 0).all())

    # sglrp explain --method (in process), and the option's help lists the method
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    assert toy_method in capsys.readouterr().out
    ckpt = tmp_path / "vgg.pt"
    torch.save(get_model("shapes_vgg", num_classes=len(CLASSES)).state_dict(), ckpt)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(image)
    argv = ["explain", str(image), "--model", "shapes_vgg", "--weights", str(ckpt)]
    argv += ["--method", f"sglrp,{toy_method}", "--size", "32", "--crop", "32"]
    assert cli.main([*argv, "--out", str(tmp_path / "explain"), "--no-progress"]) == 0
    assert (tmp_path / "explain" / "img" / f"{toy_method}.npy").is_file()

    # sglrp evaluate --methods, then the report's tables
    bundle = ModelBundle(model, CLASSES, MEAN, STD, "random-shapes_vgg", 64)
    monkeypatch.setattr(runner, "load_model", lambda spec: bundle)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", "x", "--methods", f"sglrp,{toy_method}", "--n", "1"]
    argv += ["--metrics", "pointing_game,relevance_mass_accuracy", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    data = json.loads((out / "metrics.json").read_text())
    assert data["methods"] == ["sglrp", toy_method]
    assert data["method_labels"][toy_method] == "Toy Saliency"
    assert data["metrics"]["pointing_game"]["methods"][toy_method]["n"] > 0
    assert "Toy Saliency" in report.render_markdown(data)
    assert "Toy Saliency" in report.render_html(data, {}, [])
