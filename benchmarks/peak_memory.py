"""Peak resident memory of one call above the process's size just before it (Linux).

Two ways to find the high-water mark, both relative to the resident size (VmRSS) read right
before the call:

* ``"vmhwm"``: the kernel's own mark. Writing ``5`` to ``/proc/self/clear_refs`` resets
  VmHWM to the current VmRSS (Linux >= 4.0); VmHWM read after the call is then the peak
  during it, however short. :func:`hwm_reset_works` checks this on the running kernel.
* ``"sampled"``: a thread reads VmRSS every ``interval`` seconds during the call. A lower
  bound (it can miss a peak shorter than the interval); the fallback when the kernel's mark
  cannot be reset.

Before the baseline is read, the C allocator is told to serve every block of 64 KiB or more
by its own mapping (``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc raising that
threshold as it sees large blocks freed) and ``malloc_trim(0)`` hands its free pages back to
the kernel. Without this, memory freed by a warm-up call stays resident, the measured call
reuses it without raising VmRSS, and the peak reads as zero (the crash of the previous
benchmark: the gradient's peak at batch 1 was 0.0 MB); with glibc's moving threshold the peak
also wanders by +-15% from call to call. Set after the timed calls, it does not touch the
timings.

:func:`tensor_peak` is an independent check: the peak of live tensor bytes in torch's CPU
allocator during one call, from the profiler's allocation events. The resident figure is
somewhat larger (page rounding, buffers of oneDNN and autograd outside torch's allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile

MB = 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc_name = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_libc_name) if _libc_name else None
_HAS_TRIM = _LIBC is not None and hasattr(_LIBC, "malloc_trim")
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 64 * 1024


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def hwm_bytes() -> int:
    """VmHWM (the kernel's peak resident size mark) of this process."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM line")


def reset_hwm() -> None:
    """Set VmHWM back to the current VmRSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def trim(fixed_threshold: bool = False) -> bool:
    """Return the C allocator's free memory to the kernel; False when glibc is not in use.

    ``fixed_threshold``: from now on serve blocks of :data:`MMAP_THRESHOLD` bytes or more by
    their own mapping, returned to the kernel when freed.
    """
    if not _HAS_TRIM:
        return False
    if fixed_threshold:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    _LIBC.malloc_trim(0)
    return True


def hwm_reset_works(probe_mb: int = 64) -> tuple[bool, str]:
    """Check on this kernel that VmHWM can be reset and then follows a new, smaller peak.

    Touches ``probe_mb`` MB (anonymous mmap, returned on close), resets the mark, touches half
    as much, and expects VmHWM to have risen by about half, not stayed at the first peak.
    """

    def touch(n_mb: int) -> None:
        with mmap.mmap(-1, n_mb * MB) as block:
            for offset in range(0, n_mb * MB, _PAGE):
                block[offset] = 1

    try:
        touch(probe_mb)
        reset_hwm()
        base = rss_bytes()
        if hwm_bytes() > base + 2 * MB:
            return False, "VmHWM did not drop to VmRSS after writing 5 to /proc/self/clear_refs"
        touch(probe_mb // 2)
        rise = (hwm_bytes() - base) / MB
    except OSError as err:
        return False, f"cannot read or reset VmHWM: {err}"
    if not probe_mb / 2 - 2 <= rise <= probe_mb / 2 + 4:
        return False, f"VmHWM rose by {rise:.1f} MB for a {probe_mb // 2} MB block"
    return True, "ok"


class _Sampler(threading.Thread):
    """Reads VmRSS every ``interval`` seconds until stopped; keeps the maximum."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss_bytes()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_bytes())


def measure_peak(
    call: Callable[[], Any], mode: str = "vmhwm", interval: float = 0.0005
) -> dict[str, float | str | bool]:
    """Run ``call()`` once and return its memory figures in MB.

    Returns
    -------
    dict
        ``floor_mb``: VmRSS just before the call (after trimming); ``peak_mb``: high-water
        mark during the call minus ``floor_mb``; ``retained_mb``: VmRSS after the call (its
        result released, trimmed) minus ``floor_mb``; ``memory_method``; ``trimmed``
        (False: not glibc, free memory may have stayed resident).
    """
    trimmed = trim(fixed_threshold=True)
    if mode == "vmhwm":
        floor = rss_bytes()
        reset_hwm()
        result = call()
        peak = hwm_bytes()
    elif mode == "sampled":
        floor = rss_bytes()
        sampler = _Sampler(interval)
        sampler.start()
        try:
            result = call()
        finally:
            peak = sampler.stop()
    else:
        raise ValueError(f"unknown memory mode {mode!r}; use 'vmhwm' or 'sampled'")
    del result
    trim()
    return {
        "floor_mb": floor / MB,
        "peak_mb": (peak - floor) / MB,
        "retained_mb": (rss_bytes() - floor) / MB,
        "memory_method": mode if mode == "vmhwm" else f"sampled every {interval * 1e3:g} ms",
        "trimmed": trimmed,
    }


def tensor_peak(call: Callable[[], Any]) -> float | None:
    """Peak of live tensor bytes (MB) allocated by torch's CPU allocator during ``call()``.

    Tensors alive before the call do not count. ``None`` if the profiler gives no events.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
        del result
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # the profiler's result layout is not public API
        return None
    if not events:
        return None
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / MB
