"""Cross-zone config generation cost, pure (no servers): how it grows with zones and services.

Workload: one mesh with builtin mTLS, ``--services`` services each with ``--instances`` local
instances, ``--zones`` remote zones whose ingresses advertise every service (plus one zone
egress), and one proxy calling ``--outbounds`` of the services. Measured, each as the median
(and p90) of ``--rounds`` rounds, each round from a fresh context (as the reconciler does):

- ``cross_build``: CrossZone.build for the mesh (remote endpoints from all ingresses);
- ``sidecar``: generate() of the calling proxy (outbounds with local + remote endpoints);
- ``ingress``: the zone ingress's config (SNI chains for every local service and tag set);
- ``egress``: the zone egress's config (SNI chains for every remote service).

It runs on whatever else the machine does (the project's machine: 2 cores shared with other
work), so the figures carry that contention. Prints and writes ``bench/results/crosszone_generation.json``.

    python bench/crosszone_generation.py
    python bench/crosszone_generation.py --services 500 --zones 10 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from benchlib import timed_rounds
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert
from zonemesh.zone_cp.xds.crosszone import EGRESS_SERVICE, CrossZone, ZoneContext
from zonemesh.zone_cp.xds.generators import egress, generate, ingress
from zonemesh.zone_cp.xds.testing import TestCA

RESULTS = Path(__file__).parent / "results" / "crosszone_generation.json"


def workload(services: int, instances: int, zones: int, outbounds: int) -> dict[str, Any]:
    mesh = Resource(
        type="Mesh",
        name="default",
        spec={"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}},
    )
    dataplanes = []
    for s in range(services):
        for i in range(instances):
            tags = {"kuma.io/service": f"svc-{s}", "kuma.io/protocol": "http", "version": f"v{i % 2}"}
            dataplanes.append(
                Resource(
                    type="Dataplane",
                    name=f"svc-{s}-{i}",
                    mesh="default",
                    spec={
                        "networking": {"address": f"10.0.{s % 250}.{i + 1}", "inbound": [{"port": 8080, "tags": tags}]}
                    },
                )
            )
    caller = Resource(
        type="Dataplane",
        name="caller",
        mesh="default",
        spec={
            "networking": {
                "address": "10.9.9.9",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": "caller", "kuma.io/protocol": "http"}}],
                "outbound": [{"port": 20000 + o, "tags": {"kuma.io/service": f"svc-{o}"}} for o in range(outbounds)],
            }
        },
    )
    dataplanes.append(caller)
    ingresses = [
        Resource(
            type="ZoneIngress",
            name=f"zone-{z}.ingress",
            labels={"zonemesh.io/zone": f"zone-{z}"},
            spec={
                "zone": f"zone-{z}",
                "networking": {"address": f"192.0.2.{z}", "port": 10001},
                "availableServices": [
                    {
                        "tags": {"kuma.io/service": f"svc-{s}", "kuma.io/protocol": "http"},
                        "instances": 1 + s % 3,
                        "mesh": "default",
                    }
                    for s in range(services)
                ],
            },
        )
        for z in range(2, zones + 2)
    ]
    local_ingress = Resource(
        type="ZoneIngress", name="ingress-1", spec={"zone": "zone-1", "networking": {"port": 10001}}
    )
    local_egress = Resource(type="ZoneEgress", name="egress-1", spec={"zone": "zone-1", "networking": {"port": 10002}})
    return {
        "mesh": mesh,
        "dataplanes": dataplanes,
        "caller": caller,
        "ingresses": [*ingresses, local_ingress],
        "egresses": [local_egress],
        "local_ingress": local_ingress,
        "local_egress": local_egress,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--zones", type=int, default=5)
    parser.add_argument("--outbounds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    w = workload(args.services, args.instances, args.zones, min(args.outbounds, args.services))
    ca = TestCA()
    certs = {"caller": WorkloadCert(*await ca.workload_cert("default", "caller"))}
    egress_cert = {"default": WorkloadCert(*await ca.workload_cert("default", EGRESS_SERVICE))}

    def cross() -> CrossZone:
        return CrossZone.build("zone-1", "default", w["ingresses"], w["egresses"])

    def mesh_ctx() -> MeshContext:
        return MeshContext.build(w["mesh"], w["dataplanes"], certs=certs, cross=cross())

    def zone_ctx() -> ZoneContext:
        return ZoneContext("zone-1", {"default": mesh_ctx()}, egress_cert)

    sidecar = generate(mesh_ctx(), w["caller"])
    ingress_set = ingress.generate(zone_ctx(), w["local_ingress"])
    egress_set = egress.generate(zone_ctx(), w["local_egress"])
    result = {
        "benchmark": "crosszone_generation",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "note": "pure generation in one process; machine shared with other work (2 cores), figures include that",
        "workload": vars(args),
        "sizes": {
            "sidecar_clusters": len(sidecar.by_type[next(iter(sidecar.by_type))]),
            "ingress_filter_chains": sum(
                len(lst.filter_chains)
                for lst in ingress_set.by_type["type.googleapis.com/envoy.config.listener.v3.Listener"].values()
            ),  # type: ignore[attr-defined]
            "egress_filter_chains": sum(
                len(lst.filter_chains)
                for lst in egress_set.by_type["type.googleapis.com/envoy.config.listener.v3.Listener"].values()
            ),  # type: ignore[attr-defined]
        },
        "cross_build": timed_rounds(cross, args.rounds),
        # each round builds its context, as a reconciler round does; the context build is included
        "sidecar": timed_rounds(lambda: generate(mesh_ctx(), w["caller"]), args.rounds),
        "ingress": timed_rounds(lambda: ingress.generate(zone_ctx(), w["local_ingress"]), args.rounds),
        "egress": timed_rounds(lambda: egress.generate(zone_ctx(), w["local_egress"]), args.rounds),
        "context_only": timed_rounds(zone_ctx, args.rounds),
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
