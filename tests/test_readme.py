"""The README's Python code blocks run as pasted (a new user's first contact)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return BLOCK.findall(text)


def test_block_extraction_finds_only_python_blocks():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\nz = 3\n"]


def test_readme_has_python_blocks():
    assert python_blocks(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    code = python_blocks(README.read_text(encoding="utf-8"))[index]
    monkeypatch.chdir(tmp_path)  # anything a block writes lands in a temporary folder
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(code, f"README.md block {index}", "exec"), namespace)  # noqa: S102
    finally:
        torch.set_num_threads(before)
