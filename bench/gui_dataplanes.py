"""GUI benchmark: the data plane proxies view with N (default 10,000) registered Dataplanes, in the
system's headless Chromium against one real global control plane (SQLite).

The Dataplanes are what zones upload to global (``zone-K.dp-NNNNN``, zone labels, each with a
DataplaneInsight: one open ADS stream, ACKed config, a workload certificate), written into global's
store while it is stopped (store writes, not real proxies), then global is started on that store
as after a restart. Measures, over --loads cold page loads (a new browser context each):

- time to first rows: from navigation to the first row of the dataplanes table on screen
  (/gui/#/meshes/default/dataplanes, 50 per page), and the same with a name filter and a tag filter;
- bytes transferred per load (the page, its modules and stylesheet, and the API answers: the sum of
  the browser's Resource Timing ``transferSize``);
- control plane CPU per load (utime + stime of the global process, from /proc) and, with the tab
  left open on the view for --idle seconds, the CP CPU that keeps it live (polls answered 304);
- the API answers behind it, timed alone: a page of dataplanes+insights, the filters, /global-insight
  (the overview's totals, which read every Dataplane and insight).

    python bench/gui_dataplanes.py                 # N=10,000; writes results/gui_dataplanes.json
    python bench/gui_dataplanes.py --quick         # N=1,000, fewer loads; results/gui_dataplanes.quick.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchlib import percentile
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.sqlite import SqliteStore

from zonemesh.testing import CHROMIUM_ARGS, ControlPlaneProcess, find_chromium, free_port, http, wait_until

RESULTS = Path(__file__).resolve().parent / "results" / "gui_dataplanes.json"
ZONES = 3
BATCH = 1000
ROWS = "table tbody tr td a"  # a row of proxies (the empty-table row has no link)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uploaded(i: int) -> tuple[Resource, Resource]:
    """Dataplane i as global holds it after its zone uploaded it, and its insight."""
    zone, name = f"zone-{i % ZONES + 1}", f"dp-{i:05d}"
    labels = {"zonemesh.io/origin": "zone", "zonemesh.io/zone": zone, "zonemesh.io/display-name": name}
    service = f"svc-{i % 200:03d}"
    dataplane = Resource(
        type="Dataplane",
        mesh="default",
        name=f"{zone}.{name}",
        labels=labels,
        spec={
            "networking": {
                "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                "inbound": [
                    {
                        "port": 8080,
                        "servicePort": 80,
                        "tags": {"kuma.io/service": service, "kuma.io/protocol": "http", "version": f"v{i % 3}"},
                    }
                ],
                "outbound": [{"port": 10001, "tags": {"kuma.io/service": f"svc-{(i + 1) % 200:03d}"}}],
            }
        },
    )
    now = datetime.now(UTC)
    stats = {"responsesSent": "3", "responsesAcknowledged": "3", "responsesRejected": "0", "lastResponse": "ACK"}
    insight = Resource(
        type="DataplaneInsight",
        mesh="default",
        name=f"{zone}.{name}",
        labels=labels,
        spec={
            "subscriptions": [
                {
                    "id": f"sub-{i}",
                    "controlPlaneInstanceId": f"{zone}-cp",
                    "connectTime": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                    "status": {
                        "lastUpdateTime": now.isoformat().replace("+00:00", "Z"),
                        "total": stats,
                        **{t: stats for t in ("clusters", "endpoints", "listeners", "routes", "secrets")},
                    },
                    "version": {"envoy": {"version": "1.40.0"}, "zonemeshDp": {"version": "0.1.0"}},
                }
            ],
            "mTLS": {
                "certificateExpirationTime": (now + timedelta(hours=20)).isoformat().replace("+00:00", "Z"),
                "certificateRegenerations": 3,
                "issuedBackend": "ca-1",
            },
        },
    )
    return dataplane, insight


async def register(db: Path, n: int) -> float:
    started = time.perf_counter()
    store = await SqliteStore.open(db)
    try:
        for start in range(0, n, BATCH):
            batch = [res for i in range(start, min(n, start + BATCH)) for res in uploaded(i)]
            await store.batch(upserts=batch)
    finally:
        await store.close()
    return time.perf_counter() - started


def api_timings(cp: ControlPlaneProcess, rounds: int) -> dict[str, Any]:
    queries = {
        "page_of_50": "/meshes/default/dataplanes+insights?size=50",
        "deep_page_of_50": "/meshes/default/dataplanes+insights?size=50&offset=9000",
        "name_filter": "/meshes/default/dataplanes+insights?size=50&name=dp-0042",
        "tag_filter": "/meshes/default/dataplanes+insights?size=50&tag=kuma.io/service:svc-042",
        "zone_filter": "/meshes/default/dataplanes+insights?size=50&filter[labels.zonemesh.io/zone]=zone-2",
        "global_insight": "/global-insight",
    }
    found: dict[str, Any] = {}
    for key, path in queries.items():
        samples, size = [], 0
        for _ in range(rounds if key != "global_insight" else max(3, rounds // 4)):
            started = time.perf_counter()
            status, body = http("GET", cp.api + path, timeout=60)
            samples.append(time.perf_counter() - started)
            assert status == 200, body
            size = len(json.dumps(body))
        found[key] = {
            "p50_ms": round(statistics.median(samples) * 1000, 1),
            "p90_ms": round(percentile(samples, 90) * 1000, 1),
            "body_bytes": size,
            "total": body.get("total") if key != "global_insight" else body["dataplanes"]["standard"]["total"],
        }
    return found


def page_loads(cp: ControlPlaneProcess, chromium: str, args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    pid = cp.process.pid if cp.process else 0
    views = {
        "dataplanes": "/meshes/default/dataplanes",
        "dataplanes_name_filter": "/meshes/default/dataplanes?name=dp-004",
        "dataplanes_tag_filter": "/meshes/default/dataplanes?tag=kuma.io/service:svc-042",
    }
    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            for key, route in views.items():
                times, transferred, cpu = [], [], []
                for _ in range(args.loads):
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = context.new_page()
                    cpu_before = cpu_seconds(pid)
                    started = time.perf_counter()
                    page.goto(f"{cp.api}/gui/#{route}")
                    page.wait_for_selector(ROWS, timeout=args.timeout * 1000)
                    times.append(time.perf_counter() - started)
                    cpu.append(cpu_seconds(pid) - cpu_before)
                    transferred.append(
                        page.evaluate(
                            "performance.getEntries().filter((e) => 'transferSize' in e)"
                            ".reduce((sum, e) => sum + e.transferSize, 0)"
                        )
                    )
                    rows = page.locator("table tbody tr").count()
                    context.close()
                results[key] = {
                    "first_rows_p50_ms": round(statistics.median(times) * 1000, 1),
                    "first_rows_max_ms": round(max(times) * 1000, 1),
                    "bytes_transferred_p50": int(statistics.median(transferred)),
                    "cp_cpu_ms_per_load_p50": round(statistics.median(cpu) * 1000, 1),
                    "rows_on_screen": rows,
                    "loads": args.loads,
                }
            # One tab left open: what keeping it live costs the control plane.
            for key, route in (("dataplanes_idle", "/meshes/default/dataplanes"), ("overview_idle", "/")):
                context = browser.new_context()
                page = context.new_page()
                answers: list[int] = []
                page.on("response", lambda response, answers=answers: answers.append(response.status))
                page.goto(f"{cp.api}/gui/#{route}")
                page.wait_for_selector(
                    ROWS if key == "dataplanes_idle" else ".stats .stat", timeout=args.timeout * 1000
                )
                page.wait_for_timeout(2000)
                answers.clear()
                cpu_before, started = cpu_seconds(pid), time.perf_counter()
                page.wait_for_timeout(args.idle * 1000)
                elapsed = time.perf_counter() - started
                results[key] = {
                    "seconds": round(elapsed, 1),
                    "cp_cpu_percent": round((cpu_seconds(pid) - cpu_before) / elapsed * 100, 1),
                    "polls": len(answers),
                    "answered_304": answers.count(304),
                }
                context.close()
        finally:
            browser.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataplanes", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5, help="cold page loads per view (default 5)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds a tab stays open for the idle cost")
    parser.add_argument("--api-rounds", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on every wait, seconds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 dataplanes, 2 loads, 5 s idle")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.dataplanes, args.loads, args.idle, args.api_rounds = 1000, 2, 5.0, 5
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium: apt-get install chromium (or set ZONEMESH_CHROMIUM)", file=sys.stderr)
        return 2
    out = args.out or (RESULTS.with_suffix(".quick.json") if args.quick else RESULTS)
    with tempfile.TemporaryDirectory(prefix="gui-bench-") as tmp:
        data_dir = Path(tmp) / "global"
        cp_args = [
            "--mode",
            "global",
            "--store",
            "sqlite",
            "--kds-address",
            "127.0.0.1",
            "--kds-port",
            str(free_port()),
        ]
        cp = ControlPlaneProcess(data_dir, args=cp_args)
        cp.start(timeout=args.timeout)  # creates the store, the default mesh and its policies
        cp.stop()
        register_s = asyncio.run(register(data_dir / "zonemesh.db", args.dataplanes))
        cp = ControlPlaneProcess(data_dir, args=cp_args)
        try:
            cp.start(timeout=args.timeout)
            wait_until(
                lambda: http("GET", cp.api + "/meshes/default/dataplanes?size=1")[1]["total"] == args.dataplanes,
                timeout=args.timeout,
                what=f"{args.dataplanes} dataplanes at global",
            )
            results = {
                "register_s": round(register_s, 2),
                "api": api_timings(cp, args.api_rounds),
                "browser": page_loads(cp, chromium, args),
            }
        finally:
            cp.stop()
    report = {
        "benchmark": "gui_dataplanes",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "chromium": chromium,
            "load_avg_at_end": os.getloadavg(),
            "note": "global, Chromium and this script share the machine, which other work shares too",
        },
        "params": {
            "dataplanes": args.dataplanes,
            "loads": args.loads,
            "idle_s": args.idle,
            "api_rounds": args.api_rounds,
            "quick": args.quick,
        },
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
