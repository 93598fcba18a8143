"""Builtin gateway config generation cost, pure (no servers): how it grows with listeners and routes.

Workload: one mesh with builtin mTLS and the default gateway policies, ``--services`` backend
services with ``--instances`` instances each, one builtin gateway whose MeshGateway has
``--hosts`` HTTP listeners (one hostname each) on port 8080 plus a TCP listener, and
``--routes`` MeshGatewayRoutes spread over those hostnames, each with ``--rules`` rules
(a prefix match, a header match, a 90/10 split over two services). Measured as the median
(and p90) of ``--rounds`` rounds, each from a fresh MeshContext (as the reconciler does):

- ``generate``: generate() of the gateway proxy (listeners, route table, clusters, endpoints, secrets);
- ``serialize``: serializing every generated resource (what a push costs on top).

It runs on whatever else the machine does (the project's machine: 2 cores shared with other
work), so the figures carry that contention. Prints and writes ``bench/results/gateway_generation.json``.

    python bench/gateway_generation.py
    python bench/gateway_generation.py --hosts 200 --routes 400 --rules 5 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
from pathlib import Path
from typing import Any

from benchlib import timed_rounds
from zonemesh.shared.resources.defaults import default_policies
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.resources import ResourceSet, encode_any
from zonemesh.zone_cp.xds.testing import TestCA

RESULTS = Path(__file__).parent / "results" / "gateway_generation.json"


def workload(services: int, instances: int, hosts: int, routes: int, rules: int) -> dict[str, Any]:
    mesh = Resource(
        type="Mesh",
        name="default",
        spec={"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}},
    )
    dataplanes = [
        Resource(
            type="Dataplane",
            name=f"svc-{s}-{i}",
            mesh="default",
            spec={
                "networking": {
                    "address": f"10.0.{s % 250}.{i + 1}",
                    "inbound": [{"port": 8080, "tags": {"kuma.io/service": f"svc-{s}", "kuma.io/protocol": "http"}}],
                }
            },
        )
        for s in range(services)
        for i in range(instances)
    ]
    gateway_dp = Resource(
        type="Dataplane",
        name="gateway-1",
        mesh="default",
        spec={"networking": {"address": "10.9.9.9", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gw"}}}},
    )
    listeners: list[dict[str, Any]] = [
        {"port": 8080, "protocol": "HTTP", "hostname": f"host-{h}.example.com", "tags": {"host": f"h{h}"}}
        for h in range(hosts)
    ]
    listeners.append({"port": 9090, "protocol": "TCP", "tags": {"port": "tcp"}})
    gateway = Resource(
        type="MeshGateway",
        name="gw",
        mesh="default",
        spec={"selectors": [{"match": {"kuma.io/service": "gw"}}], "conf": {"listeners": listeners}},
    )
    route_docs = [
        Resource(
            type="MeshGatewayRoute",
            name=f"route-{r}",
            mesh="default",
            spec={
                "selectors": [{"match": {"host": f"h{r % hosts}"}}],
                "conf": {
                    "http": {
                        "rules": [
                            {
                                "matches": [
                                    {
                                        "path": {"match": "PREFIX", "value": f"/r{r}/p{k}"},
                                        "headers": [{"match": "EXACT", "name": "x-k", "value": str(k)}],
                                    }
                                ],
                                "backends": [
                                    {"weight": 90, "destination": {"kuma.io/service": f"svc-{(r + k) % services}"}},
                                    {"weight": 10, "destination": {"kuma.io/service": f"svc-{(r + k + 1) % services}"}},
                                ],
                            }
                            for k in range(rules)
                        ]
                    }
                },
            },
        )
        for r in range(routes)
    ]
    route_docs.append(
        Resource(
            type="MeshGatewayRoute",
            name="tcp",
            mesh="default",
            spec={
                "selectors": [{"match": {"port": "tcp"}}],
                "conf": {"tcp": {"rules": [{"backends": [{"destination": {"kuma.io/service": "svc-0"}}]}]}},
            },
        )
    )
    return {
        "mesh": mesh,
        "dataplanes": [*dataplanes, gateway_dp],
        "gateway_dp": gateway_dp,
        "context": [gateway, *route_docs, *default_policies("default")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--rules", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    w = workload(args.services, args.instances, args.hosts, args.routes, args.rules)
    cert = WorkloadCert(*asyncio.run(TestCA().workload_cert("default", "gw")))

    def context() -> MeshContext:
        return MeshContext.build(w["mesh"], w["dataplanes"], w["context"], (), {"gw": cert})

    last: list[ResourceSet] = []

    def run_generate() -> None:
        last[:] = [generate(context(), w["gateway_dp"])]

    def run_serialize() -> None:
        for type_url, _, message in last[0].items():
            encode_any(type_url, message)

    results: dict[str, Any] = {"generate": timed_rounds(run_generate, args.rounds)}
    results["serialize"] = timed_rounds(run_serialize, args.rounds)
    out = last[0]
    counts = {t.rsplit(".", 1)[-1]: len(out.by_type[t]) for t in out.by_type}
    size = sum(len(encode_any(t, m)) for t, _, m in out.items())
    report = {
        "benchmark": "gateway_generation",
        "params": vars(args),
        "rules_total": args.routes * args.rules,
        "resources": counts,
        "serialized_bytes": size,
        "results": results,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "note": "pure generation in one process; measured on a shared 2-core machine under load from other work",
    }
    print(json.dumps(report, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
