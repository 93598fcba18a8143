"""License benchmark with real processes: one global (SQLite) and two zones on 127.0.0.1.

Measures
- propagation: ``PUT /license`` on global until both zones' ``GET /license`` show the new limit
  (polled every 5 ms), over --changes replacements;
- strict join latency: sequential registrations in one zone (gRPC Register over TLS, as
  ``zonemesh-dp`` does); each needs one more slot, so each is a quota round trip zone → global → zone;
- a burst: --burst proxies join at once across both zones under a strict limit of --limit; the time
  until every one is answered, and how many were admitted (must be exactly the limit).

    python bench/license_sync.py
    python bench/license_sync.py --changes 50 --joins 50 --burst 100 --limit 40
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc
from zonemesh.shared.license.format import issue
from zonemesh.shared.license.keys import generate_keypair, load_private_key

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p95_ms": round(pct(ms, 95), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.mean(ms), 2),
    }


async def register(port: int, ca: bytes, token: str, name: str) -> tuple[bool, float]:
    started = time.perf_counter()
    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]},
    }
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca)) as channel:
        stub = dataplane_pb2_grpc.DataplaneRegistrationStub(channel)
        request = dataplane_pb2.RegisterRequest(
            mesh="default", name=name, proxy_type="dataplane", dataplane_json=json.dumps(doc)
        )
        try:
            await stub.Register(request, metadata=(("authorization", f"Bearer {token}"),), timeout=60)
            ok = True
        except grpc.aio.AioRpcError:
            ok = False
    return ok, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--limit", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zonemesh-license-bench-"))
    private_pem, public_pem = generate_keypair()
    key = load_private_key(private_pem, "bench")
    (work / "issuer.pub").write_bytes(public_pem)

    def license_doc(dataplanes: int) -> Any:
        text = issue(key, customer="bench", dataplanes=dataplanes, expires="2099-01-01", license_key="b")
        return json.loads(text)  # the document as `zmctl license install` sends it

    strict = issue(
        key, customer="bench", dataplanes=100_000, expires="2099-01-01", license_key="s", enforcement="strict"
    )
    (work / "license.json").write_text(strict)
    kds_port = free_port()
    glob = ControlPlaneProcess(
        work / "global",
        args=[
            "--mode", "global", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port),
            "--license-path", str(work / "license.json"), "--license-trusted-keys", str(work / "issuer.pub"),
            "--log-level", "warning",
        ],
    )  # fmt: skip
    processes = [glob.start()]
    zones: list[tuple[ControlPlaneProcess, int]] = []
    try:
        for name in ("zone-1", "zone-2"):
            _, token = http("POST", glob.api + "/tokens/zone", {"zone": name, "validFor": "1h"})
            data = work / name
            data.mkdir()
            (data / "zone.token").write_text(str(token))
            xds_port = free_port()
            cp = ControlPlaneProcess(
                data,
                args=[
                    "--mode", "zone", "--zone", name, "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
                    "--global-address", f"grpcs://127.0.0.1:{kds_port}", "--zone-token-file", str(data / "zone.token"),
                    "--global-ca-file", str(work / "global" / "kds-tls.crt"), "--log-level", "warning",
                    "--license-quota-wait", "2s",
                ],
            )  # fmt: skip
            processes.append(cp.start())
            zones.append((cp, xds_port))
        for cp, _ in zones:
            wait_until(lambda c=cp: c.get("/license")[1].get("allowedDataplaneProxies") == 100_000, 30, what="sync")
            wait_until(lambda c=cp: c.get("/meshes/default")[0] == 200, 30, what="mesh")

        # 1. propagation of a replaced license
        propagation = []
        for i in range(args.changes):
            value = 200 + i
            started = time.perf_counter()
            status, body = http("PUT", glob.api + "/license", license_doc(value))
            assert status == 200, body
            for cp, _ in zones:
                deadline = time.monotonic() + 30
                while cp.get("/license")[1].get("allowedDataplaneProxies") != value:
                    if time.monotonic() > deadline:
                        raise TimeoutError("license did not reach the zone in 30s")
                    time.sleep(0.005)
            propagation.append(time.perf_counter() - started)

        # 2. sequential strict joins, each a quota round trip
        status, body = http("PUT", glob.api + "/license", json.loads(strict))
        assert status == 200, body
        for cp, _ in zones:
            wait_until(lambda c=cp: c.get("/license")[1].get("enforcement") == "strict", 30, what="strict")
        tokens = []
        for cp, _ in zones:
            _, token = http("POST", cp.api + "/tokens/dataplane", {"mesh": "default", "validFor": "1h"})
            tokens.append(str(token).strip())
        cas = [(cp.data_dir / "xds.crt").read_bytes() for cp, _ in zones]
        joins = []
        for i in range(args.joins):
            ok, seconds = asyncio.run(register(zones[0][1], cas[0], tokens[0], f"seq-{i}"))
            assert ok
            joins.append(seconds)

        # 3. a burst over a limit
        limit_doc = json.loads(
            issue(
                key,
                customer="bench",
                dataplanes=args.joins + args.limit,
                expires="2099-01-01",
                license_key="l",
                enforcement="strict",
            )
        )
        status, body = http("PUT", glob.api + "/license", limit_doc)
        assert status == 200, body
        for cp, _ in zones:
            wait_until(lambda c=cp: c.get("/license")[1].get("allowedDataplaneProxies") == args.joins + args.limit, 30)

        async def burst() -> list[tuple[bool, float]]:
            return await asyncio.gather(
                *(register(zones[i % 2][1], cas[i % 2], tokens[i % 2], f"burst-{i}") for i in range(args.burst))
            )

        started = time.perf_counter()
        results = asyncio.run(burst())
        burst_seconds = time.perf_counter() - started
        admitted = sum(1 for ok, _ in results if ok)
    finally:
        for cp in reversed(processes):
            cp.stop()

    result = {
        "benchmark": "license_sync",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "note": "shared, under contention"},
        "propagation_put_to_both_zones": summary(propagation),
        "strict_sequential_join_with_quota_round_trip": summary(joins),
        "burst": {
            "proxies": args.burst,
            "free_slots": args.limit,
            "admitted": admitted,
            "refused": args.burst - admitted,
            "seconds_until_all_answered": round(burst_seconds, 3),
            "note": "refused proxies wait license_quota_wait (2s here) before the refusal",
        },
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "license_sync.json").write_text(json.dumps(result, indent=2) + "\n")
    if admitted != args.limit:
        print(f"FAIL: admitted {admitted}, expected exactly {args.limit}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
