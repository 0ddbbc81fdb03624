"""Memory of a long-lived worker process: give freed heap back between tasks.

A pool process runs inspections and jobs one after another. What a task frees goes back to
glibc's malloc arenas, not to the kernel, so the next task starts from the last one's high
water mark: an inspection that converted a model and loaded a 190 MB dataset left its pages
resident under the job that followed. ``release_memory`` collects garbage and asks glibc to
return the free pages (``malloc_trim(3)``); elsewhere (musl, macOS) it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache
from pathlib import Path


@cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> bool:
    """Collect garbage and return free heap pages to the kernel; True when glibc trimmed."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))


def rss_mib() -> float:
    """This process's resident set (VmRSS) in MiB; 0.0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
