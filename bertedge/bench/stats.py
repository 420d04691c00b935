"""Latency statistics over one list of timings (pure Python, no numpy needed).

Percentiles use linear interpolation between closest ranks (numpy's default "linear"
method): for sorted x of length n, percentile q sits at rank (n - 1) * q / 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, linearly interpolated between closest ranks."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(timings_ms: Sequence[float], items_per_call: int = 1) -> dict:
    """p50/p90/p99, mean, sample stdev, min, max of per-call latencies (ms), and throughput.

    Throughput is items (sequences) per second over the summed call time:
    ``items_per_call * n / (sum(timings) / 1000)`` — the rate one caller sustains back to back.
    """
    n = len(timings_ms)
    if n == 0:
        raise ValueError("no timings to summarize")
    mean = sum(timings_ms) / n
    stdev = math.sqrt(sum((t - mean) ** 2 for t in timings_ms) / (n - 1)) if n > 1 else 0.0
    total_s = sum(timings_ms) / 1000.0
    return {
        "n": n,
        "p50_ms": percentile(timings_ms, 50),
        "p90_ms": percentile(timings_ms, 90),
        "p99_ms": percentile(timings_ms, 99),
        "mean_ms": mean,
        "stdev_ms": stdev,
        "min_ms": min(timings_ms),
        "max_ms": max(timings_ms),
        "throughput": items_per_call * n / total_s if total_s > 0 else float("inf"),
    }


def relative_difference(a: float, b: float) -> float:
    """|a - b| relative to the smaller of the two (0.1 = the larger is 10% above the smaller)."""
    low = min(a, b)
    if low <= 0:
        raise ValueError("relative difference needs positive values")
    return abs(a - b) / low


def speedup(baseline_ms: float, candidate_ms: float) -> float:
    """How many times faster the candidate is than the baseline (p50 over p50)."""
    return baseline_ms / candidate_ms
