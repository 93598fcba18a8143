"""`GET /global-insight`: the whole deployment at a glance, in Kuma's GlobalInsight shape.

Pure: built from the resources global holds (zones, what zones uploaded, policies) and the
zone registry's online verdict, so it is tested without servers. A dataplane is online when the
last subscription of its DataplaneInsight (uploaded by its zone) has no ``disconnectTime`` and
its zone is online (a zone that is gone cannot vouch for its proxies). A service is online when
all its dataplanes are, offline when none is, else partially degraded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zonemesh.shared.resources.model import ZONE_LABEL, Resource
from zonemesh.shared.resources.types.dataplane import dataplane_tags

SERVICE_TAG = "kuma.io/service"
DP_KINDS = ("standard", "gatewayBuiltin", "gatewayDelegated")


def _full_status() -> dict[str, int]:
    return {"total": 0, "online": 0, "offline": 0, "partiallyDegraded": 0}


def dataplane_kind(dp: Resource) -> str:
    gateway = (dp.spec.get("networking") or {}).get("gateway")
    if not isinstance(gateway, Mapping):
        return "standard"
    return "gatewayBuiltin" if str(gateway.get("type", "")).upper() == "BUILTIN" else "gatewayDelegated"


def subscription_online(insight: Resource | None) -> bool:
    subs = (insight.spec.get("subscriptions") if insight is not None else None) or []
    return bool(subs) and isinstance(subs[-1], Mapping) and not subs[-1].get("disconnectTime")


def global_insight(
    *,
    created_at: str,
    zones: Iterable[Resource],
    zone_online: Callable[[str], bool],
    dataplanes: Iterable[Resource],
    dataplane_insights: Iterable[Resource],
    ingresses: Iterable[Resource],
    egresses: Iterable[Resource],
    totals: Mapping[str, int],
    policy_types: Iterable[str],
) -> dict[str, Any]:
    zone_names = [z.name for z in zones]
    online_zones = {name for name in zone_names if zone_online(name)}
    insights = {(i.mesh, i.name): i for i in dataplane_insights}

    dp_stats = {kind: _full_status() for kind in DP_KINDS}
    # (kind, mesh, service) -> [online flags of its dataplanes]
    services: dict[tuple[str, str, str], list[bool]] = {}
    for dp in dataplanes:
        kind = dataplane_kind(dp)
        zone = dp.labels.get(ZONE_LABEL)
        online = subscription_online(insights.get((dp.mesh, dp.name))) and (zone is None or zone in online_zones)
        stats = dp_stats[kind]
        stats["total"] += 1
        stats["online" if online else "offline"] += 1
        for tags in dataplane_tags(dp):
            if SERVICE_TAG in tags:
                services.setdefault((kind, dp.mesh, tags[SERVICE_TAG]), []).append(online)

    svc_stats = {"internal": _full_status(), "gatewayBuiltin": _full_status(), "gatewayDelegated": _full_status()}
    for (kind, _, _), flags in services.items():
        stats = svc_stats["internal" if kind == "standard" else kind]
        stats["total"] += 1
        state = "online" if all(flags) else "offline" if not any(flags) else "partiallyDegraded"
        stats[state] += 1

    def by_zone(items: Iterable[Resource]) -> dict[str, int]:
        listed = list(items)
        online = sum(1 for r in listed if (r.labels.get(ZONE_LABEL) or r.spec.get("zone")) in online_zones)
        return {"online": online, "total": len(listed)}

    external = totals.get("ExternalService", 0)
    return {
        "type": "GlobalInsight",
        "createdAt": created_at,
        "services": {
            "total": sum(s["total"] for s in svc_stats.values()) + external,
            "internal": svc_stats["internal"],
            "external": {"total": external},
            "gatewayBuiltin": svc_stats["gatewayBuiltin"],
            "gatewayDelegated": svc_stats["gatewayDelegated"],
        },
        "zones": {
            "controlPlanes": {"online": len(online_zones), "total": len(zone_names)},
            "zoneIngresses": by_zone(ingresses),
            "zoneEgresses": by_zone(egresses),
        },
        "dataplanes": dp_stats,
        "policies": {"total": sum(totals.get(t, 0) for t in policy_types)},
        "meshes": {"total": totals.get("Mesh", 0)},
        "resources": {name: {"total": total} for name, total in sorted(totals.items())},
    }
