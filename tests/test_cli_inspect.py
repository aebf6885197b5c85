"""``sglrp inspect``: the table of treatments, the refusal list and its exit status."""

from __future__ import annotations

import json

from torch import nn

from sglrp.cli import main


class Exp(nn.Module):
    """A model with an operation LRP has no treatment for (exp of an activation)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).exp().mean((2, 3)))


def factory(num_classes: int = 2) -> nn.Module:
    return Exp()


def test_inspect_lists_every_operation_of_a_zoo_model(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert main(["inspect", "--model", "efficientnet_b0", "--size", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features.0.0" in text and "gate" in text and "identity" in text
    document = json.loads(out.read_text())
    assert document["problems"] == []
    assert {"index", "module", "module_type", "op", "treatment"} <= set(document["rows"][0])
    assert len(document["rows"]) > 100


def test_inspect_names_what_explain_would_refuse(capsys, monkeypatch):
    monkeypatch.syspath_prepend(__file__.rsplit("/", 1)[0])
    status = main(
        ["inspect", "--model", "test_cli_inspect:factory", "--num-classes", "2", "--size", "8"]
    )
    text = capsys.readouterr().out
    assert status == 1
    assert "exp" in text and "conv" in text
    assert "explain would refuse" in text
