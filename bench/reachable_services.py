"""What ``reachableServices`` saves per proxy: config size and generation time, with and without.

In-process (no servers, no store), as bench/xds_generation.py: ``--services`` services (200),
``--replicas`` proxies each (1: every proxy is a shape of its own, so every generation is real
work, none is a copy of a replica's). Every proxy declares an outbound to every other service;
"with" adds ``networking.transparentProxying.reachableServices`` naming ``--reachable`` of them
(3), the next services in order. Builtin-style mTLS (test CA certificates), the mesh's default
policies plus a MeshTrafficPermission per service, as in bench/xds_zone.py.

Per round and variant: one MeshContext, one SnapshotBuilder (as the reconciler), then per proxy
``generate`` + snapshot build timed; the config size of a proxy is the bytes of its serialized
resources (the encoded ``Any`` of every listener, cluster, endpoint set, route and secret it
gets). The variants alternate within the same run (round 1: without then with, round 2: with then
without, ...) after one warm-up round of each, so both see the same machine load. Also counted:
how many proxies a new instance of one service regenerates (the reconciler's consumer index).

    python bench/reachable_services.py                  # JSON in bench/results/reachable_services.json
    python bench/reachable_services.py --quick          # 50 services, 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zonemesh.shared.resources.defaults import default_policies
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.cache import SnapshotBuilder
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert, outbound_services
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.reconciler import affected_by_dataplane
from zonemesh.zone_cp.xds.testing import TestCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xds_zone  # the workload of the end-to-end benchmark (mesh, permissions, names)
from benchlib import percentile

RESULTS = Path(__file__).resolve().parent / "results" / "reachable_services.json"
VARIANTS = ("without", "with")


def resource(doc: dict[str, Any]) -> Resource:
    doc = dict(doc)
    rtype, name, mesh = doc.pop("type"), doc.pop("name"), doc.pop("mesh", "")
    return Resource(type=rtype, name=name, mesh=mesh, spec=doc.get("spec", doc), version=1)


def proxy(index: int, services: int, reachable: int | None) -> Resource:
    """Proxy ``index`` of service ``index % services``: an outbound to every other service, and
    with ``reachable`` the next ``reachable`` services as its reachableServices."""
    service = index % services
    others = [(service + 1 + k) % services for k in range(services - 1)]
    net: dict[str, Any] = {
        "address": f"127.1.{index // 250}.{index % 250 + 1}",
        "inbound": [
            {
                "port": 8080,
                "servicePort": 8080,
                "tags": {"kuma.io/service": xds_zone.service_name(service), "kuma.io/protocol": "http"},
            }
        ],
        "outbound": [
            {"port": 30000 + k, "tags": {"kuma.io/service": xds_zone.service_name(t)}} for k, t in enumerate(others)
        ],
    }
    if reachable is not None:
        net["transparentProxying"] = {"reachableServices": [xds_zone.service_name(t) for t in others[:reachable]]}
    return Resource(type="Dataplane", name=f"dp-{index:05d}", mesh=xds_zone.MESH, spec={"networking": net}, version=1)


def generate_round(
    mesh: Resource, dataplanes: list[Resource], policies: list[Resource], certs: dict[str, WorkloadCert]
) -> tuple[list[float], list[int]]:
    """One round: (generation + snapshot seconds, serialized bytes) per proxy."""
    ctx = MeshContext.build(mesh, dataplanes, policies, [], certs)
    builder = SnapshotBuilder()
    times, sizes = [], []
    for dp in dataplanes:
        started = time.perf_counter()
        snapshot = builder.build(generate(ctx, dp))
        times.append(time.perf_counter() - started)
        sizes.append(sum(len(b) for typed in snapshot.types.values() for b in typed.resources.values()))
    return times, sizes


def regenerated_by_new_instance(dataplanes: list[Resource], services: int) -> int:
    """Proxies the reconciler regenerates when one more instance of the first service appears
    (itself aside): the consumers of that service in its index (``context.outbound_services``)."""
    consumers: dict[str, set[str]] = {}
    for dp in dataplanes:
        for name in outbound_services(dp):
            consumers.setdefault(name, set()).add(dp.name)
    newcomer = proxy(len(dataplanes) // services * services, services, None)  # of service 0
    return len(affected_by_dataplane(None, newcomer, consumers) - {newcomer.name})


def summary(times: list[float], sizes: list[int]) -> dict[str, Any]:
    ms = [t * 1000 for t in times]
    return {
        "generation_ms": {
            "count": len(ms),
            "mean": round(statistics.fmean(ms), 4),
            "p50": round(percentile(ms, 50), 4),
            "p99": round(percentile(ms, 99), 4),
        },
        "config_bytes": {"mean": round(statistics.fmean(sizes)), "min": min(sizes), "max": max(sizes)},
    }


def run(services: int, replicas: int, reachable: int, rounds: int) -> dict[str, Any]:
    mesh = resource(xds_zone.mesh_doc())
    count = services * replicas
    fleets = {
        "without": [proxy(i, services, None) for i in range(count)],
        "with": [proxy(i, services, reachable) for i in range(count)],
    }
    policies = [resource(xds_zone.permission_doc(s, services)) for s in range(services)]
    policies += default_policies(xds_zone.MESH)
    ca = TestCA()
    names = [xds_zone.service_name(s) for s in range(services)]
    certs = {n: WorkloadCert(*asyncio.run(ca.workload_cert(xds_zone.MESH, n))) for n in names}

    samples: dict[str, tuple[list[float], list[int]]] = {v: ([], []) for v in VARIANTS}
    round_s: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds + 1):
        order = VARIANTS if r % 2 else tuple(reversed(VARIANTS))
        for variant in order:
            started = time.perf_counter()
            times, sizes = generate_round(mesh, fleets[variant], policies, certs)
            elapsed = time.perf_counter() - started
            if r > 0:  # round 0 warms up both (imports, caches)
                samples[variant][0].extend(times)
                samples[variant][1].extend(sizes)
                round_s[variant].append(elapsed)
    report: dict[str, Any] = {}
    for variant in VARIANTS:
        report[variant] = {
            **summary(*samples[variant]),
            "round_s": {"min": round(min(round_s[variant]), 3), "max": round(max(round_s[variant]), 3)},
            "outbounds_per_proxy": services - 1 if variant == "without" else reachable,
            "regenerated_by_a_new_instance": regenerated_by_new_instance(fleets[variant], services),
        }
    without, with_ = report["without"], report["with"]
    report["ratios_without_over_with"] = {
        "config_bytes_mean": round(without["config_bytes"]["mean"] / with_["config_bytes"]["mean"], 1),
        "generation_ms_mean": round(without["generation_ms"]["mean"] / with_["generation_ms"]["mean"], 1),
        "generation_ms_p50": round(without["generation_ms"]["p50"] / with_["generation_ms"]["p50"], 1),
        "regenerated_by_a_new_instance": round(
            without["regenerated_by_a_new_instance"] / max(with_["regenerated_by_a_new_instance"], 1), 1
        ),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=1, help="proxies per service")
    parser.add_argument("--reachable", type=int, default=3, help="services each proxy may reach in the 'with' variant")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per variant (after one warm-up round)")
    parser.add_argument("--quick", action="store_true", help="50 services, 1 round")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.services, args.rounds = 50, 1
        args.out = args.out or RESULTS.with_suffix(".quick.json")
    if args.services < 2 or not 1 <= args.reachable < args.services or args.replicas < 1 or args.rounds < 1:
        parser.error("need --services >= 2, 1 <= --reachable < --services, --replicas >= 1, --rounds >= 1")
    if args.services * args.replicas > xds_zone.MAX_PROXIES:
        parser.error(f"at most {xds_zone.MAX_PROXIES} proxies")
    args.out = args.out or RESULTS
    report = {
        "benchmark": "reachable_services",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]},
        "params": {
            "services": args.services,
            "replicas": args.replicas,
            "proxies": args.services * args.replicas,
            "reachable": args.reachable,
            "rounds": args.rounds,
        },
        **run(args.services, args.replicas, args.reachable, args.rounds),
    }
    print(f"{report['params']['proxies']} proxies, {args.services} services, mTLS; per proxy:")
    print(
        f"{'':8} {'outbounds':>9} {'config bytes':>13} {'gen p50 ms':>11} {'gen mean ms':>12}"
        f" {'regen. by 1 new instance':>25}"
    )
    for variant in VARIANTS:
        v = report[variant]
        print(
            f"{variant:8} {v['outbounds_per_proxy']:>9} {v['config_bytes']['mean']:>13} {v['generation_ms']['p50']:>11}"
            f" {v['generation_ms']['mean']:>12} {v['regenerated_by_a_new_instance']:>25}"
        )
    ratios = report["ratios_without_over_with"]
    print(
        f"without / with: config size x{ratios['config_bytes_mean']}, generation time x{ratios['generation_ms_mean']} "
        f"(mean; p50 x{ratios['generation_ms_p50']}), proxies regenerated x{ratios['regenerated_by_a_new_instance']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
