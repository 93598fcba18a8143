"""Config generation alone: ``generate(ctx, proxy)`` + serialization for N proxies, in-process.

The pure part of what the zone CP does per proxy in a round (no servers, no store), on
bench/xds_zone.py's services and policies: N/10 services, one inbound and three outbounds per
proxy, builtin-style mTLS (certificates from the test CA), the mesh's default policies plus a
MeshTrafficPermission per service. Where the proxies listen (``--workload``): ``ports`` (the
default) every proxy on 127.0.0.1 with its own inbound port and its own service port (its app's),
as simulated Envoys on one host register; ``addresses`` every proxy at its own loopback address,
all on port 8080 in front of the app's 8080 (as pods). One round builds one MeshContext and
generates every proxy from it, as the reconciler does; the first round warms up, the next
``--rounds`` are timed (wall and process CPU time). It also reports what a round serializes:
how many messages (``encodes``) and how many distinct encoded resources.

``--change mesh-wide``: each round is a mesh-wide change as the control plane makes it (the
bench/xds_zone.py change: the mesh's default MeshTimeout with a new requestTimeout), and what
the reconciler keeps between rounds is kept (the proxies' shapes, their placed inbound
listeners, the inbound templates, each proxy's snapshot and what it was made from, the pieces
and policy matches of ``MeshContext.kept``), each proxy's snapshot made as the reconciler makes it
(``reconciler.next_snapshot``: a replica made from what it was made from takes its shape's); the
garbage collector tuned as the
control plane tunes it (and paused during each round, ``gc_paused``). Without it (``none``, the
default) every round starts afresh from the same policies. ``--watches`` also hands each
snapshot to a SnapshotCache in which every proxy has a delta watch open per type, answered and
opened again as a stream does on its ACK (what the round costs the cache, without gRPC), and
reports how many responses and resources it sent.

    python bench/xds_generation.py --proxies 2000
    python bench/xds_generation.py --proxies 2000 --workload addresses
    python bench/xds_generation.py --proxies 2000 --change mesh-wide
    python bench/xds_generation.py --proxies 2000 --change mesh-wide --watches
    python bench/xds_generation.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zonemesh.shared.aio import gc_paused
from zonemesh.shared.resources.defaults import default_policies
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.runtime import GC_THRESHOLDS
from zonemesh.zone_cp.xds.cache import DeltaWatchRequest, DeltaWatchResponse, Snapshot, SnapshotBuilder, SnapshotCache
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert
from zonemesh.zone_cp.xds.generators import MadeFrom, generate, inbound
from zonemesh.zone_cp.xds.kept import Kept
from zonemesh.zone_cp.xds.reconciler import next_snapshot
from zonemesh.zone_cp.xds.testing import TestCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xds_zone  # the workload of the end-to-end benchmark

RESULTS = Path(__file__).resolve().parent / "results" / "xds_generation.json"


def resource(doc: dict[str, Any]) -> Resource:
    doc = dict(doc)
    rtype, name, mesh = doc.pop("type"), doc.pop("name"), doc.pop("mesh", "")
    spec = doc.get("spec", doc)
    return Resource(type=rtype, name=name, mesh=mesh, spec=spec, version=1)


WORKLOADS = ("ports", "addresses")


def dataplane_doc(index: int, services: int, workload: str) -> dict[str, Any]:
    """xds_zone's Dataplane of proxy ``index``, listening where ``workload`` says."""
    doc = xds_zone.proxy_spec(index, services, 3)[1]
    net = doc["networking"]
    [inbound] = net["inbound"]
    if workload == "ports":
        net["address"] = "127.0.0.1"
        inbound["port"], inbound["servicePort"] = 20000 + index, 40000 + index
    else:
        net["address"] = f"127.1.{index // 250}.{index % 250 + 1}"
        inbound["port"], inbound["servicePort"] = 8080, 8080
    return doc


class Watching:
    """Every proxy's delta watches on a SnapshotCache, one per type (wildcard), each answered and
    opened again with what it then has, as a delta stream does when the proxy ACKs."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.responses = 0
        self.resources = 0

    def open(self, node: str, type_url: str, known: dict[str, str]) -> None:
        def respond(resp: DeltaWatchResponse) -> None:
            self.responses += 1
            self.resources += len(resp.resources)
            known.update((name, version) for name, version, _ in resp.resources)
            for name in resp.removed:
                known.pop(name, None)
            self.open(node, type_url, known)

        self.cache.create_delta_watch(DeltaWatchRequest(node, type_url, True, frozenset(), known), respond)


def run(
    proxies: int, rounds: int, workload: str = "ports", change: str = "none", watches: bool = False
) -> dict[str, Any]:
    services = max(2, proxies // 10)
    mesh = resource(xds_zone.mesh_doc())
    dataplanes = [resource(dataplane_doc(i, services, workload)) for i in range(proxies)]
    policies = [resource(xds_zone.permission_doc(s, services)) for s in range(services)]
    policies += default_policies(xds_zone.MESH)
    kept = change == "mesh-wide"
    shapes: dict[str, Any] = {}
    placed: dict[str, Any] = {}
    templates: dict[Any, Any] = {}
    kept_messages = Kept()
    if kept:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    ca = TestCA()
    names = [xds_zone.service_name(s) for s in range(services)]
    certs = {n: WorkloadCert(*asyncio.run(ca.workload_cert(xds_zone.MESH, n))) for n in names}

    cache = SnapshotCache()
    watching = Watching(cache)
    previous: dict[str, Snapshot] = {}  # kept as the reconciler has them (in its SnapshotCache)
    made: dict[str, MadeFrom] = {}  # what each proxy was made from (the reconciler's, per mesh)
    sent: list[dict[str, int]] = []
    samples: list[float] = []
    rounds_s: list[float] = []
    rounds_cpu_s: list[float] = []  # the process's CPU: less sensitive than wall time to other load
    digest = hashlib.blake2b(digest_size=8)
    for r in range(rounds + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        # As the control plane: no automatic collection during a round, one young collection after it.
        with gc_paused() if kept else contextlib.nullcontext():
            if kept:  # the mesh-wide change: the default MeshTimeout with a new requestTimeout
                timeout = Resource(
                    type="MeshTimeout",
                    name=xds_zone.TIMEOUT_POLICY,
                    mesh=xds_zone.MESH,
                    spec=xds_zone.mesh_timeout_doc(xds_zone.DEFAULT_REQUEST_TIMEOUT + r + 1)["spec"],
                    version=r + 2,
                )
                policies = [p for p in policies if p.name != xds_zone.TIMEOUT_POLICY] + [timeout]
            ctx = MeshContext.build(
                mesh,
                dataplanes,
                policies,
                [],
                certs,
                shapes=shapes if kept else None,
                placed=placed if kept else None,
                templates=templates if kept else None,
                kept=kept_messages if kept else None,
            )
            builder = SnapshotBuilder(ctx.encoded)  # as the reconciler: one per round
            times = []
            distinct: set[bytes] = set()
            watching.responses = watching.resources = 0
            for dp in dataplanes:
                t = time.perf_counter()
                if kept:  # as the reconciler: a replica made from what it was made from takes its shape's
                    snapshot = next_snapshot(ctx, builder, dp, previous.get(dp.name), made)
                else:
                    snapshot = builder.build(generate(ctx, dp))
                times.append(time.perf_counter() - t)
                if kept:
                    previous[dp.name] = snapshot
                if watches:
                    fresh = cache.snapshot(dp.name) is None
                    cache.set_snapshot(dp.name, snapshot)
                    if fresh:
                        for type_url in snapshot.types:
                            watching.open(dp.name, type_url, {})
                if r == 0:
                    for typed in snapshot.types.values():
                        digest.update(typed.version.encode())
                        distinct.update(typed.resources.values())
            inbound.keep_placed(ctx, builder.encoded)
            inbound.forget_templates(ctx)
            ctx.kept.after_round(builder.encoded)
        if r > 0:  # round 0 warms up (imports, caches)
            samples += times
            rounds_s.append(time.perf_counter() - started)
            rounds_cpu_s.append(time.process_time() - started_cpu)
            sent.append({"responses": watching.responses, "resources": watching.resources})
        else:
            serialized = {"encodes": builder.encodes, "distinct_resources": len(distinct)}
    samples_ms = [s * 1000 for s in samples]
    return {
        "per_proxy_ms": {
            "count": len(samples_ms),
            "p50": round(xds_zone.percentile(samples_ms, 50), 4),
            "p99": round(xds_zone.percentile(samples_ms, 99), 4),
            "max": round(max(samples_ms), 4),
        },
        "round_s": {"min": round(min(rounds_s), 3), "max": round(max(rounds_s), 3)},
        "round_cpu_s": {
            "min": round(min(rounds_cpu_s), 3),
            "p50": round(xds_zone.percentile(rounds_cpu_s, 50), 3),
            "mean": round(sum(rounds_cpu_s) / len(rounds_cpu_s), 3),
            "max": round(max(rounds_cpu_s), 3),
        },
        "serialized_per_round": serialized,
        "config_digest": digest.hexdigest(),  # the same workload gives the same versions
        **({"delta_sent_per_round": sent[-1]} if watches else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--workload", choices=WORKLOADS, default="ports", help="where proxies listen (see above)")
    parser.add_argument(
        "--change", choices=("none", "mesh-wide"), default="none", help="what each round is (see above)"
    )
    parser.add_argument(
        "--watches", action="store_true", help="also set each snapshot in a SnapshotCache with delta watches"
    )
    parser.add_argument("--quick", action="store_true", help="200 proxies, 1 round")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.proxies, args.rounds = 200, 1
        args.out = args.out or RESULTS.with_suffix(".quick.json")
    if not 1 <= args.proxies <= xds_zone.MAX_PROXIES or args.rounds < 1:
        parser.error(f"--proxies must be in 1..{xds_zone.MAX_PROXIES} and --rounds at least 1")
    args.out = args.out or RESULTS
    report = {
        "benchmark": "xds_generation",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]},
        "params": {
            "proxies": args.proxies,
            "services": max(2, args.proxies // 10),
            "rounds": args.rounds,
            "workload": args.workload,
            "change": args.change,
            "watches": args.watches,
        },
        **run(args.proxies, args.rounds, args.workload, args.change, args.watches),
    }
    per = report["per_proxy_ms"]
    print(
        f"generation + serialization, {args.proxies} proxies ({args.workload}): "
        f"p50 {per['p50']} ms, p99 {per['p99']} ms, "
        f"max {per['max']} ms; a round of all proxies {report['round_s']['min']}-{report['round_s']['max']} s "
        f"(CPU {report['round_cpu_s']['min']}-{report['round_cpu_s']['max']} s); "
        f"per round {report['serialized_per_round']['encodes']} messages serialized, "
        f"{report['serialized_per_round']['distinct_resources']} distinct resources"
        + (
            f"; delta watches answered per round: {report['delta_sent_per_round']['responses']} responses, "
            f"{report['delta_sent_per_round']['resources']} resources"
            if args.watches
            else ""
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
