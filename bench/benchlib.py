"""Small helpers the bench scripts share (each script runs as `python bench/<name>.py`, so this
folder is on sys.path)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
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


class ProcessStats:
    """CPU time and resident memory of a process (any of its threads), read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def wait_idle(self, window: float, max_cpu: float, timeout: float) -> tuple[float, float, bool]:
        """Poll the CPU time every 0.1 s until it grew by at most ``max_cpu`` seconds over the last
        ``window`` seconds (the process is idle again), bounded by ``timeout`` seconds.
        (monotonic time and CPU time at the START of that idle window, whether it became idle)."""
        samples: list[tuple[float, float]] = [(time.monotonic(), self.cpu_s())]
        deadline = samples[0][0] + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now, cpu = time.monotonic(), self.cpu_s()
            samples.append((now, cpu))
            start = next(((t, c) for t, c in reversed(samples) if now - t >= window), None)
            if start is not None and cpu - start[1] <= max_cpu:
                return start[0], start[1], True
        return samples[-1][0], samples[-1][1], False
