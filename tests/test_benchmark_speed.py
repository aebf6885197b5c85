"""The speed benchmark runs, reports failures in its table instead of crashing, measures a
known allocation as such, and never divides by an invalid reference. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import evaluate_throughput
import speed
import speed_calls
import torch

import sglrp

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"


def run_speed(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def table_line(stdout: str, method: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(f"| {method} |")]
    assert len(lines) == 1, (method, stdout)
    return lines[0]


def test_quick_run_prints_ratios_and_reports_failed_methods(tmp_path):
    out = tmp_path / "speed.json"
    extra = "selftest-fail,selftest-exit,selftest-noop,selftest-alloc-64"
    proc = run_speed("--quick", "--threads", "1", "--extra-methods", extra, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}

    assert rows["gradient"]["status"] == "ok"
    assert rows["gradient"]["time_ratio"] == 1.0
    assert rows["gradient"]["peak_mb"] > 0
    assert rows["sglrp-dtd"]["status"] == "ok"
    assert rows["sglrp-dtd"]["time_ratio"] > 0 and rows["sglrp-dtd"]["memory_ratio"] > 0
    cells = [c.strip() for c in table_line(proc.stdout, "sglrp-dtd").split("|")]
    assert cells[6].endswith("x") and cells[8].endswith("x"), cells
    for peer in ("zennit-epsilon-plus-flat", "captum-lrp"):
        assert rows[peer]["status"] in ("ok", "not available"), rows[peer]
        table_line(proc.stdout, peer)

    assert rows["selftest-fail"]["status"] == "failed"
    assert "deliberate failure" in rows["selftest-fail"]["reason"]
    assert "| failed: RuntimeError: deliberate failure" in table_line(proc.stdout, "selftest-fail")
    assert rows["selftest-exit"]["status"] == "failed"
    assert "exited with code 3" in table_line(proc.stdout, "selftest-exit")

    noop = rows["selftest-noop"]
    assert noop["status"] == "ok" and noop["memory_ratio"] is None
    assert "invalid: no rise above floor" in table_line(proc.stdout, "selftest-noop")

    alloc = rows["selftest-alloc-64"]
    assert 63.5 <= alloc["peak_mb"] <= 68, alloc
    assert abs(alloc["tensor_peak_mb"] - 64) < 0.1, alloc

    explainer = rows["sglrp-explainer-reuse"]
    if not hasattr(sglrp, "Explainer"):
        assert explainer["status"] == "not available"
        assert "not available: sglrp.Explainer" in table_line(proc.stdout, "sglrp-explainer-reuse")


def test_a_hanging_method_is_a_timeout_row(tmp_path):
    proc = run_speed(
        *("--models", "shapes_vgg", "--batches", "1", "--targets", "1", "--size", "32"),
        *("--repeats", "1", "--threads", "1", "--methods", "selftest-hang", "--timeout", "4"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "| failed: timeout after 4 s |" in table_line(proc.stdout, "selftest-hang")


def test_evaluate_mode_breaks_the_run_down_without_double_counting(tmp_path):
    out = tmp_path / "evaluate.json"
    proc = run_speed("evaluate", "--quick", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "images/s" in proc.stdout
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["missing"] == []
    assert result["n_images"] == 2
    parts = dict((name, seconds) for name, seconds, _ in evaluate_throughput.breakdown(result))
    assert parts["explain sglrp"] > 0 and parts["explain lrp"] > 0
    assert parts["model-based metrics"] > 0
    # Nested or repeated timers would make the remainders negative.
    assert parts["rest of batches"] >= 0 and parts["rest of run"] >= 0


def _row(method: str, median: float = 1.0, peak: float = 10.0, status: str = "ok") -> dict:
    row = {"method": method, "model": "m", "batch": 1, "k": 1, "status": status}
    row.update(load_before=0.5, load_after=0.6)
    if status != "ok":
        return {**row, "reason": "boom"}
    return {
        **row,
        **{"median_s": median, "min_s": median, "peak_mb": peak, "tensor_peak_mb": None},
        **{"floor_mb": 100.0, "own_mb": 1.0, "memory_method": "vmhwm", "threads": 1},
    }


def test_no_ratio_against_an_invalid_or_failed_gradient():
    rows = [_row("gradient", peak=0.0), _row("sglrp-dtd", median=2.0, peak=20.0)]
    speed.add_ratios(rows)
    assert rows[1]["time_ratio"] == 2.0 and rows[1]["memory_ratio"] is None
    text = speed.table(rows)
    assert "invalid: no rise above floor (0.0)" in text

    rows = [_row("gradient", status="failed"), _row("sglrp-dtd")]
    speed.add_ratios(rows)
    assert rows[1]["time_ratio"] is None and rows[1]["memory_ratio"] is None
    assert "| failed: boom |" in speed.table(rows)


def test_floor_and_own_k_ratios():
    rows = [
        _row("gradient", median=1.0),
        _row("floor-zplus", median=1.5),
        _row("sglrp-dtd", median=1.8),
        {**_row("gradient", median=2.0), "k": 2},
        {**_row("floor-zplus", median=2.5), "k": 2},
        {**_row("sglrp-dtd", median=2.7), "k": 2},
    ]
    speed.add_ratios(rows)
    assert abs(rows[2]["floor_ratio"] - 1.2) < 1e-12 and rows[2]["k_ratio"] is None
    assert abs(rows[5]["floor_ratio"] - 1.08) < 1e-12 and abs(rows[5]["k_ratio"] - 1.5) < 1e-12
    assert "| 1.20x |  |" in table_line(speed.table(rows[:3]), "sglrp-dtd")

    rows = [_row("floor-zplus", status="failed"), _row("sglrp-dtd")]
    speed.add_ratios(rows)
    assert rows[1]["floor_ratio"] is None


def test_the_floor_builds_dense_w_plus_in_chunks_exactly(monkeypatch):
    monkeypatch.setattr(speed_calls, "FLOOR_CHUNK_ELEMENTS", 3 * 7)
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 10)  # 3 rows per chunk: 4 chunks, the last of 1 row
    x = torch.randn(2, 7)
    expected = torch.nn.functional.linear(x, layer.weight.clamp(min=0))
    torch.testing.assert_close(speed_calls._zplus_forward(layer, x), expected)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    image = torch.randn(1, 3, 5, 5)
    expected = torch.nn.functional.conv2d(image, conv.weight.clamp(min=0), None, padding=1)
    torch.testing.assert_close(speed_calls._zplus_forward(conv, image), expected)


def test_interleaved_ratios_are_taken_round_by_round():
    """A machine twice as slow in round 2 moves both times, not their ratio."""
    spec = {"model": "m", "batch": 8, "threads": 2}
    calls = {
        "gradient|1": {"status": "ok", "times_s": [1.0, 2.0, 1.0]},
        "sglrp-dtd|1": {"status": "ok", "times_s": [1.5, 3.0, 1.5]},
        "gradient|2": {"status": "ok", "times_s": [2.0, 4.0, 2.0]},
        "sglrp-dtd|2": {"status": "ok", "times_s": [2.1, 4.2, 2.4]},
        "zennit-epsilon-plus-flat|1": {"status": "failed", "reason": "boom"},
    }
    rows = speed.interleaved_rows(spec, {"status": "ok", "calls": calls})
    by = {(r["method"], r["k"]): r for r in rows}
    assert by[("sglrp-dtd", 1)]["time_ratio"] == {"median": 1.5, "low": 1.5, "high": 1.5}
    assert abs(by[("sglrp-dtd", 2)]["k_ratio"]["median"] - 1.4) < 1e-12
    assert by[("gradient", 1)]["time_ratio"] is None
    text = speed.interleaved_table(rows)
    assert "| 1.50x (1.50-1.50) |" in text
    assert "failed: boom" in table_line(text, "zennit-epsilon-plus-flat")
    failed = speed.interleaved_rows(spec, {"status": "failed", "reason": "killed"})
    assert failed[0]["status"] == "failed" and "killed" in speed.interleaved_table(failed)
