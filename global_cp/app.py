"""Global control plane assembly: what `zonemesh-cp run --mode global` adds to the common parts.

Every replica serves the API, KDS and the license in force; one replica at a time, the leader, runs
what must happen once: license counting and quota grants, mesh CA creation, publishing the zone-token
and dataplane-token trusts, and closing what dead replicas left open (docs/ha.md).
"""

from __future__ import annotations

from zonemesh.shared.components import Component
from zonemesh.shared.config import Config
from zonemesh.shared.runtime import Assembly


def assemble(config: Config) -> Assembly:
    from zonemesh.global_cp import dataplane_tokens, mesh_ca
    from zonemesh.global_cp.api import global_routes
    from zonemesh.global_cp.kds_server import GlobalKds, trust_publisher, zone_finalizer
    from zonemesh.global_cp.license import LicenseAuthority

    # Constructed first: an invalid, altered or expired license refuses the start before anything runs.
    authority = LicenseAuthority(config)
    kds = GlobalKds(config)
    return Assembly(
        components=[
            Component("license", authority.serve),
            Component("kds-server", kds.run),
            Component("license-authority", authority.run, leader=True),
            Component("mesh-ca", mesh_ca.component, leader=True),
            Component("zone-token-trust", trust_publisher, leader=True),
            Component("dataplane-token-trust", dataplane_tokens.trust_publisher, leader=True),
            Component("zone-insight-finalizer", zone_finalizer, leader=True),
        ],
        routes=[*global_routes(kds), *authority.routes(), *dataplane_tokens.routes()],
    )
