"""The install's torch choice: Makefile variables TORCH / TORCH_INDEX, documented in the README.

``make -n`` prints the commands without running them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def install_commands(*variables: str) -> list[str]:
    done = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), ".venv/.installed", *variables],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if "pip install" in line and "torch" in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_default_torch_install_is_unchanged():
    (line,) = [c for c in install_commands() if "zennit" not in c]
    expected = [".venv/bin/python", "-m", "pip", "install", "--quiet", '"torch==2.13.0"']
    assert line.split() == expected


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_torch_index_and_requirement_are_chosen_by_variables():
    url = "https://download.pytorch.org/whl/cpu"
    (line,) = [c for c in install_commands(f"TORCH_INDEX={url}") if "zennit" not in c]
    assert line.endswith(f'"torch==2.13.0" --index-url {url}')
    (line,) = [c for c in install_commands("TORCH=torch==2.12.0") if "zennit" not in c]
    assert '"torch==2.12.0"' in line and "--index-url" not in line


def test_readme_documents_the_choice():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert "Linux x86_64" in text and "CUDA build" in text
