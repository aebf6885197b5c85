"""The one timing helper of the small benchmark scripts (not of ``speed.py``, which isolates
each measurement in its own process)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(call: Callable[[], object], repeats: int = 3) -> float:
    """Least wall time of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)
