"""Small helpers the bench scripts share (each script runs as `python bench/<name>.py`, so this
folder is on sys.path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def timed_rounds(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    """Call ``fn`` ``rounds`` times; median and p90 wall time in ms."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return {
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p90_ms": round(percentile(samples, 90) * 1000, 3),
        "rounds": rounds,
    }
