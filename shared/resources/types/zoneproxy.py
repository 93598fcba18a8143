"""ZoneIngress and ZoneEgress: the per-zone proxies for cross-zone and external traffic.

Both are global-scoped (one proxy serves every mesh) and are registered by the zone they
run in, then uploaded to global. Ingresses are also pushed on to the other zones, which
need their advertised addresses to reach this zone's services.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Bool, Errors, Int, List, MeshName, Obj, Str
from zonemesh.shared.resources.types.common import PORT, Address, InsightSpec, Tags, tag_zone, zone_field

if TYPE_CHECKING:
    from zonemesh.shared.resources.model import Resource

_ADMIN = Obj({"port": PORT})


def _advertised_pair(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Other zones dial advertisedAddress:advertisedPort; half of it is unusable."""
    has_address = value.get("advertisedAddress") is not None
    has_port = value.get("advertisedPort") is not None
    if has_port and not has_address:
        errors.add(f"{path}.advertisedAddress", "has to be defined with advertisedPort")
    if has_address and not has_port:
        errors.add(f"{path}.advertisedPort", "has to be defined with advertisedAddress")


def _admin_port_differs(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    admin = value.get("admin")
    if isinstance(admin, Mapping) and admin.get("port") is not None and admin.get("port") == value.get("port"):
        errors.add(f"{path}.admin.port", "must differ from port")


ZONE_INGRESS_SPEC = Obj(
    {
        "zone": Str(),  # filled in by the zone control plane when it uploads the resource
        "networking": Obj(
            {
                "address": Address(),
                "advertisedAddress": Address(),
                "port": PORT,
                "advertisedPort": PORT,
                "admin": _ADMIN,
            },
            required=("port",),
            checks=(_advertised_pair, _admin_port_differs),
        ),
        "availableServices": List(
            Obj(
                {
                    "tags": Tags(require_service=True),
                    "instances": Int(min=0),
                    "mesh": MeshName,
                    "externalService": Bool(),
                },
                required=("tags",),
            )
        ),
    },
    required=("networking",),
)

ZONE_EGRESS_SPEC = Obj(
    {
        "zone": Str(),
        "networking": Obj(
            {"address": Address(), "port": PORT, "admin": _ADMIN},
            required=("port",),
            checks=(_admin_port_differs,),
        ),
    },
    required=("networking",),
)


def _ingress_zones(res: Resource) -> list[tuple[str, str]]:
    """Its zone, and the zone tag of every service it offers: other zones route by both."""
    refs = zone_field(res.spec)
    services = res.spec.get("availableServices")
    for i, entry in enumerate(services if isinstance(services, list) else []):
        if isinstance(entry, Mapping):
            refs += tag_zone(entry.get("tags"), f"availableServices[{i}].tags")
    return refs


ZONE_INGRESS = register(
    ResourceType(
        name="ZoneIngress",
        plural="zoneingresses",
        path_aliases=("zone-ingresses",),  # Kuma's alternative path
        aliases=("zone-ingress",),
        short_name="zi",
        insight="ZoneIngressInsight",
        scope=Scope.GLOBAL,
        sync=Sync.ZONE_TO_GLOBAL | Sync.ACROSS_ZONES,
        spec=ZONE_INGRESS_SPEC,
        zone_refs=_ingress_zones,
    )
)

ZONE_EGRESS = register(
    ResourceType(
        name="ZoneEgress",
        plural="zoneegresses",
        aliases=("zone-egresses", "zone-egress"),
        short_name="ze",
        insight="ZoneEgressInsight",
        scope=Scope.GLOBAL,
        sync=Sync.ZONE_TO_GLOBAL,
        spec=ZONE_EGRESS_SPEC,
        zone_refs=lambda res: zone_field(res.spec),
    )
)

# Insights: the xDS subscriptions of each zone proxy (Kuma's shape: ``subscriptions[]`` with
# id, controlPlaneInstanceId, connectTime, disconnectTime), written by the zone control plane
# on stream open/close (zone_cp/insights.py ``ZoneProxyInsights``). A proxy is online while its last subscription
# has no disconnectTime. Kuma syncs ZoneIngressInsight zone→global only; here it also goes on to
# the other zones, which send cross-zone traffic only to ingresses that are online (an ingress
# killed without unregistering would otherwise stay an endpoint for ever).
_INSIGHT = InsightSpec()

ZONE_INGRESS_INSIGHT = register(
    ResourceType(
        name="ZoneIngressInsight",
        plural="zoneingressinsights",
        rest_path="zone-ingress-insights",
        scope=Scope.GLOBAL,
        sync=Sync.ZONE_TO_GLOBAL | Sync.ACROSS_ZONES,
        system=True,
        spec=_INSIGHT,
    )
)

ZONE_EGRESS_INSIGHT = register(
    ResourceType(
        name="ZoneEgressInsight",
        plural="zoneegressinsights",  # Kuma's path, without dashes unlike the other insights
        path_aliases=("zone-egress-insights",),  # the path zonemesh served first
        scope=Scope.GLOBAL,
        sync=Sync.ZONE_TO_GLOBAL,
        system=True,
        spec=_INSIGHT,
    )
)
