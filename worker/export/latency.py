"""Latency measurement bounded in time: repeat until the median is stable, or the budget is spent.

A fixed repeat count costs ``repeats × run time`` whatever the model: 20 runs of a ResNet-18
at batch 32 take ~16 s on a quiet CPU, most of a small job's dense evaluation. Instead the
runs stop as soon as the median is known to ``rel_tolerance`` — the distribution-free 95%
confidence interval of the median from order statistics (Conover, *Practical Nonparametric
Statistics*, §3.2: ranks n/2 ± 0.98·√n) is at most ``rel_tolerance`` of the median on either
side — or when ``budget_s`` of wall time is spent, whichever comes first. The result says
which (``stable``) and how wide the interval was (``ci_rel``), so a report never shows a
noisy number as a precise one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any


def median_ci(sorted_ms: list[float]) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median of sorted samples."""
    n = len(sorted_ms)
    if n == 0:
        return float("nan"), float("nan")
    half = 0.98 * math.sqrt(n)
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return sorted_ms[lo], sorted_ms[hi]


def _median(sorted_ms: list[float]) -> float:
    n = len(sorted_ms)
    mid = n // 2
    return sorted_ms[mid] if n % 2 else 0.5 * (sorted_ms[mid - 1] + sorted_ms[mid])


def summarize(times_ms: list[float]) -> dict[str, Any]:
    """Median, min, p90, the median's 95% interval and its half-width relative to the median."""
    ordered = sorted(times_ms)
    median = _median(ordered)
    lo, hi = median_ci(ordered)
    return {
        "median_ms": median,
        "min_ms": ordered[0],
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "ci95_ms": [lo, hi],
        "ci_rel": (hi - lo) / (2 * median) if median > 0 else 0.0,
        "repeats": len(ordered),
    }


def bounded_latency(
    run: Callable[[], object],
    *,
    budget_s: float = 1.5,
    min_repeats: int = 5,
    max_repeats: int = 50,
    warmup: int = 1,
    rel_tolerance: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time ``run()`` (ms) after ``warmup`` calls until the median is stable or time is up.

    Stops after the first run at which either ``min_repeats`` runs are done and the median's
    95% interval is within ``±rel_tolerance`` of it (``stable``: True), or ``budget_s`` seconds
    (warmup included) have passed, or ``max_repeats`` runs are done. At least one timed run
    is always made. Returns :func:`summarize`'s fields plus ``stable`` and ``seconds``.
    """
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError("need 1 <= min_repeats <= max_repeats")
    start = clock()
    for _ in range(warmup):
        run()
        if clock() - start >= budget_s:
            break
    times: list[float] = []
    stable = False
    while True:
        t0 = clock()
        run()
        t1 = clock()
        times.append((t1 - t0) * 1000.0)
        if len(times) >= min_repeats:
            summary = summarize(times)
            if summary["ci_rel"] <= rel_tolerance:
                stable = True
                break
        if len(times) >= max_repeats or t1 - start >= budget_s:
            break
    return {**summarize(times), "stable": stable, "seconds": round(clock() - start, 4)}


__all__ = ["bounded_latency", "median_ci", "summarize"]
