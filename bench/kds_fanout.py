"""KDS fan-out benchmark: one real global control plane process (SQLite), simulated zones.

A simulated zone is the real zone KDS client (zone_cp/kds_client.KdsClient: TLS stream, token,
Hello/Welcome, Session, Outbox, store.batch per message) over an in-memory store, M of them in
this process's event loop. Zones that must be killed are real `zonemesh-cp --mode zone` processes.

Measures:
1. fan-out: a MeshRetry PUT on global's API → applied and ACKed by all M zones (p50/p99 over
   --rounds changes). "ACKed" = the zone applied the Changes to its store; its ACK is queued in
   the same step.
2. zone → global: 10,000 Dataplanes written in one zone's store (one batch) → all ACKed by
   global, timed from the end of the zone's write. Global ACKs a Changes message after its SQLite
   transaction commits, so this is "durably stored".
3. offline detection: a zone process killed with SIGKILL (TCP closed by the kernel), and one
   frozen with SIGSTOP (socket open, silent: only the heartbeat timeout finds it) → global's
   /zones+insights says offline.
4. a new zone receives and ACKs 10,000 policies held by global (seeded into global's store while
   it is stopped, then global restarted).

    python bench/kds_fanout.py            # M=50, 10,000 dataplanes / policies
    python bench/kds_fanout.py --quick    # smoke: M=5, 1,000, writes results/kds_fanout.quick.json

Every wait is bounded (--timeout). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import percentile
from zonemesh.proto import kds_pb2
from zonemesh.shared.config import Config
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import open_store
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.kds_client import KdsClient

from zonemesh.testing import ControlPlaneProcess, free_port

RESULTS = Path(__file__).resolve().parent / "results" / "kds_fanout.json"
TARGETS = {
    "fanout_all_acked_p99_ms": 100.0,
    "dataplanes_to_global_s": 2.0,
    "new_zone_policies_s": 1.0,
    "killed_zone_offline_s": 5.0,
}


def retry_policy(name: str, retries: int = 2) -> dict[str, Any]:
    return {
        "type": "MeshRetry",
        "name": name,
        "mesh": "default",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": retries}}}],
        },
    }


def dataplane(i: int) -> Resource:
    return Resource(
        type="Dataplane",
        name=f"dp-{i}",
        mesh="default",
        spec={
            "networking": {
                "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": f"svc-{i % 100}", "version": "v1"}}],
            }
        },
    )


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def until(predicate: Callable[[], Any], within: float, what: str, interval: float = 0.002) -> float:
    """Poll until ``predicate`` is truthy; returns the perf_counter time it became so."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return time.perf_counter()
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {within}s waiting for {what}")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.kds_port = free_port()
        gargs = [
            "--mode",
            "global",
            "--store",
            "sqlite",
            "--kds-address",
            "127.0.0.1",
            "--kds-port",
            str(self.kds_port),
        ]
        self.glob = ControlPlaneProcess(workdir / "global", args=gargs)
        self.ca = workdir / "global" / "kds-tls.crt"
        self.http: aiohttp.ClientSession | None = None
        self.processes: list[ControlPlaneProcess] = [self.glob]

    # -- helpers ---------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.request(method, self.glob.api + path, json=body) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def token(self, zone: str) -> Path:
        status, token = await self.call("POST", "/tokens/zone", {"zone": zone, "validFor": "24h"})
        assert status == 200, token
        path = self.workdir / f"{zone}.token"
        path.write_text(token)
        return path

    async def sim_zone(self, zone: str) -> tuple[KdsClient, MemoryStore]:
        store = MemoryStore()
        config = Config(
            mode="zone",
            zone=zone,
            global_address=f"grpcs://127.0.0.1:{self.kds_port}",
            zone_token_file=str(await self.token(zone)),
            global_ca_file=str(self.ca),
            data_dir=str(self.workdir / zone),
        )
        return KdsClient(config, store, f"{zone}-sim", debounce=0.0), store

    async def online(self) -> dict[str, bool]:
        status, body = await self.call("GET", "/zones+insights")
        assert status == 200, body
        return {item["name"]: bool(item["online"]) for item in body["items"]}

    def zone_process(self, zone: str) -> ControlPlaneProcess:
        token_file = self.workdir / f"{zone}.token"
        args = [
            "--mode", "zone", "--zone", zone, "--store", "memory",
            "--xds-address", "127.0.0.1", "--xds-port", str(free_port()),
            "--global-address", f"grpcs://127.0.0.1:{self.kds_port}",
            "--zone-token-file", str(token_file), "--global-ca-file", str(self.ca),
        ]  # fmt: skip
        process = ControlPlaneProcess(self.workdir / zone, args=args)
        self.processes.append(process)
        return process

    # -- 1. fan-out --------------------------------------------------------------------------------

    async def fanout(self) -> dict[str, Any]:
        m, rounds, timeout = self.args.zones, self.args.rounds, self.args.timeout
        applied: list[dict[str, float]] = [{} for _ in range(m)]
        clients: list[KdsClient] = []
        for i in range(m):
            client, _ = await self.sim_zone(f"sim-{i}")
            seen = applied[i]
            original = client._apply_download

            async def apply(changes: kds_pb2.Changes, original: Any = original, seen: dict[str, float] = seen) -> None:
                await original(changes)
                now = time.perf_counter()
                for wire in changes.upserts:
                    seen.setdefault(wire.name, now)

            client._apply_download = apply  # type: ignore[method-assign]
            clients.append(client)
        started = time.perf_counter()
        for client in clients:
            await client.start()
        connected = await until(
            lambda: all(c.state.connected for c in clients) and all("mesh-retry-all-default" in s for s in applied),
            timeout,
            f"{m} zones connected and holding global's defaults",
        )
        put_ms, all_acked_ms, per_zone_ms = [], [], []
        for r in range(rounds):
            name = f"bench-retry-{r}"
            t0 = time.perf_counter()
            status, body = await self.call("PUT", f"/meshes/default/meshretries/{name}", retry_policy(name))
            assert status == 201, body
            put_ms.append(ms(time.perf_counter() - t0))
            done = await until(lambda n=name: all(n in s for s in applied), timeout, f"{name} at all {m} zones")
            all_acked_ms.append(ms(done - t0))
            per_zone_ms += [ms(s[name] - t0) for s in applied]
            await asyncio.sleep(0.02)
        for client in clients:
            await client.stop()
        return {
            "zones": m,
            "rounds": rounds,
            "connect_all_s": round(connected - started, 3),
            "put_ms": {"p50": statistics.median(put_ms), "p99": percentile(put_ms, 99)},
            "all_acked_ms": {
                "p50": statistics.median(all_acked_ms),
                "p99": percentile(all_acked_ms, 99),
                "max": max(all_acked_ms),
            },
            "per_zone_acked_ms": {"p50": statistics.median(per_zone_ms), "p99": percentile(per_zone_ms, 99)},
        }

    # -- 2. zone → global ------------------------------------------------------------------------

    async def dataplanes(self) -> dict[str, Any]:
        n, timeout = self.args.resources, self.args.timeout
        client, store = await self.sim_zone("bulk-zone")
        await client.start()
        await until(lambda: client.state.connected, timeout, "bulk-zone connected")
        resources = [dataplane(i) for i in range(n)]
        t0 = time.perf_counter()
        await store.batch(upserts=resources)
        written = time.perf_counter()

        def all_acked() -> bool:
            session = client._session
            return (
                session is not None
                and session.outbox is not None
                and len(client.snapshot.items) >= n
                and session.outbox.synced.is_set()
            )

        acked = await until(all_acked, timeout, f"{n} dataplanes ACKed by global", interval=0.005)
        status, body = await self.call("GET", "/meshes/default/dataplanes?size=1")
        assert status == 200 and body["total"] >= n, body
        stats = client.state.stats.by_type["Dataplane"]
        await client.stop()
        return {
            "dataplanes": n,
            "zone_store_write_s": round(written - t0, 3),
            # from the moment the zone's store holds them (the zone's own write is not KDS)
            "all_acked_by_global_s": round(acked - written, 3),
            "including_zone_write_s": round(acked - t0, 3),
            "changes_messages": stats.sent,
            "stored_at_global": body["total"],
        }

    # -- 3. offline detection ----------------------------------------------------------------------

    async def offline(self) -> dict[str, Any]:
        timeout = self.args.timeout
        result: dict[str, Any] = {}
        for zone, sig in (("killed-zone", signal.SIGKILL), ("frozen-zone", signal.SIGSTOP)):
            await self.token(zone)
            process = self.zone_process(zone)
            await asyncio.to_thread(process.start)
            await until(lambda z=zone: self._is(z, True), timeout, f"{zone} online", interval=0.05)
            assert process.process is not None
            t0 = time.perf_counter()
            os.kill(process.process.pid, sig)
            done = await until(lambda z=zone: self._is(z, False), timeout, f"{zone} offline", interval=0.02)
            result[f"{sig.name}_offline_s"] = round(done - t0, 3)
            if sig is signal.SIGSTOP:
                os.kill(process.process.pid, signal.SIGCONT)
            process.kill()
        return result

    async def _is(self, zone: str, online: bool) -> bool:
        return (await self.online()).get(zone) is online

    # -- 4. a new zone receives N policies ---------------------------------------------------------

    async def new_zone(self) -> dict[str, Any]:
        n, timeout = self.args.resources, self.args.timeout
        assert self.glob.stop() == 0, self.glob.logs()[-2000:]
        config = Config(mode="global", store="sqlite", data_dir=str(self.workdir / "global"))
        store = await open_store(config.store_url())
        try:
            policies = [Resource.from_record(retry_policy(f"seeded-{i}", 1 + i % 5) | {"labels": {}}) for i in range(n)]
            await store.batch(upserts=policies)
        finally:
            await store.close()
        await asyncio.to_thread(self.glob.start)
        client, zone_store = await self.sim_zone("new-zone")
        t0 = time.perf_counter()
        await client.start()
        welcomed = await until(lambda: client.state.connected, timeout, "new-zone connected")

        async def holds_all() -> bool:
            return (await zone_store.list("MeshRetry", size=1)).total >= n

        done = await until(holds_all, timeout, f"{n} policies in new-zone", interval=0.005)
        stats = client.state.stats.by_type["MeshRetry"]
        await client.stop()
        return {
            "policies": n,
            "connected_s": round(welcomed - t0, 3),
            "all_applied_and_acked_s": round(done - t0, 3),
            "transfer_after_welcome_s": round(done - welcomed, 3),
            "changes_messages": stats.received,
        }

    async def run(self) -> dict[str, Any]:
        await asyncio.to_thread(self.glob.start)
        async with aiohttp.ClientSession() as self.http:
            results = {"fanout": await self.fanout()}
            print(json.dumps(results["fanout"]), flush=True)
            results["zone_to_global"] = await self.dataplanes()
            print(json.dumps(results["zone_to_global"]), flush=True)
            results["offline"] = await self.offline()
            print(json.dumps(results["offline"]), flush=True)
            results["new_zone"] = await self.new_zone()
            print(json.dumps(results["new_zone"]), flush=True)
        return results

    def close(self) -> None:
        for process in self.processes:
            process.kill()


def summary(results: dict[str, Any]) -> dict[str, Any]:
    measured = {
        "fanout_all_acked_p99_ms": results["fanout"]["all_acked_ms"]["p99"],
        "dataplanes_to_global_s": results["zone_to_global"]["all_acked_by_global_s"],
        "new_zone_policies_s": results["new_zone"]["all_applied_and_acked_s"],
        "killed_zone_offline_s": results["offline"]["SIGKILL_offline_s"],
    }
    return {
        key: {"measured": measured[key], "target": TARGETS[key], "met": measured[key] <= TARGETS[key]}
        for key in TARGETS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zones", type=int, default=50, help="simulated zones M (default 50)")
    parser.add_argument("--rounds", type=int, default=100, help="changes on global for the fan-out (default 100)")
    parser.add_argument("--resources", type=int, default=10_000, help="dataplanes / policies (default 10,000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on every wait, seconds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 zones, 10 rounds, 1,000 resources")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.zones, args.rounds, args.resources = 5, 10, 1000
    out = args.out or (RESULTS.with_suffix(".quick.json") if args.quick else RESULTS)
    with tempfile.TemporaryDirectory(prefix="kds-fanout-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            results = asyncio.run(bench.run())
        finally:
            bench.close()
    report = {
        "benchmark": "kds_fanout",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(),
            "note": "global is one process; the M simulated zones share this bench process; the machine is shared",
        },
        "params": {"zones": args.zones, "rounds": args.rounds, "resources": args.resources, "quick": args.quick},
        "results": results,
        "targets": summary(results),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {out}")
    sys.exit(0)


if __name__ == "__main__":
    main()
