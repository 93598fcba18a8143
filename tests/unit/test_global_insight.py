"""GET /global-insight, built by a pure function from what global holds (Kuma's shape)."""

from __future__ import annotations

from typing import Any

from zonemesh.global_cp.insight import global_insight
from zonemesh.shared.resources.model import Resource


def dp(name: str, zone: str, service: str, gateway: str | None = None) -> Resource:
    networking: dict[str, Any] = {"address": "10.0.0.1"}
    if gateway:
        networking["gateway"] = {"type": gateway, "tags": {"kuma.io/service": service}}
    else:
        networking["inbound"] = [{"port": 8080, "tags": {"kuma.io/service": service}}]
    labels = {"zonemesh.io/zone": zone, "zonemesh.io/origin": "zone"}
    return Resource(
        type="Dataplane", name=f"{zone}.{name}", mesh="default", spec={"networking": networking}, labels=labels
    )


def insight(name: str, connected: bool) -> Resource:
    sub: dict[str, Any] = {"connectTime": "2026-01-01T00:00:00Z"}
    if not connected:
        sub["disconnectTime"] = "2026-01-01T01:00:00Z"
    return Resource(type="DataplaneInsight", name=name, mesh="default", spec={"subscriptions": [sub]})


def test_global_insight() -> None:
    dataplanes = [
        dp("web-1", "zone-1", "web"),
        dp("web-2", "zone-1", "web"),
        dp("api-1", "zone-1", "api"),
        dp("db-1", "zone-2", "db"),  # zone-2 is offline: its proxies cannot be vouched for
        dp("gw-1", "zone-1", "edge", gateway="BUILTIN"),
        dp("gw-2", "zone-1", "kong", gateway="DELEGATED"),
    ]
    insights = [
        insight("zone-1.web-1", True),
        insight("zone-1.web-2", False),
        insight("zone-1.api-1", True),
        insight("zone-2.db-1", True),
        insight("zone-1.gw-1", True),
    ]
    zones = [Resource(type="Zone", name=z) for z in ("zone-1", "zone-2")]
    ingress = Resource(type="ZoneIngress", name="zone-1.zi", labels={"zonemesh.io/zone": "zone-1"})
    body = global_insight(
        created_at="2026-01-01T02:00:00Z",
        zones=zones,
        zone_online=lambda name: name == "zone-1",
        dataplanes=dataplanes,
        dataplane_insights=insights,
        ingresses=[ingress, Resource(type="ZoneIngress", name="zone-2.zi", labels={"zonemesh.io/zone": "zone-2"})],
        egresses=[],
        totals={"Mesh": 1, "MeshRetry": 2, "MeshTimeout": 3, "ExternalService": 1, "Dataplane": 6},
        policy_types=["MeshRetry", "MeshTimeout"],
    )
    assert body["zones"] == {
        "controlPlanes": {"online": 1, "total": 2},
        "zoneIngresses": {"online": 1, "total": 2},
        "zoneEgresses": {"online": 0, "total": 0},
    }
    assert body["dataplanes"] == {
        "standard": {"total": 4, "online": 2, "offline": 2, "partiallyDegraded": 0},
        "gatewayBuiltin": {"total": 1, "online": 1, "offline": 0, "partiallyDegraded": 0},
        "gatewayDelegated": {"total": 1, "online": 0, "offline": 1, "partiallyDegraded": 0},
    }
    assert body["services"] == {
        "total": 6,
        "internal": {"total": 3, "online": 1, "offline": 1, "partiallyDegraded": 1},  # api; db; web
        "external": {"total": 1},
        "gatewayBuiltin": {"total": 1, "online": 1, "offline": 0, "partiallyDegraded": 0},
        "gatewayDelegated": {"total": 1, "online": 0, "offline": 1, "partiallyDegraded": 0},
    }
    assert body["policies"] == {"total": 5} and body["meshes"] == {"total": 1}
    assert body["resources"]["Dataplane"] == {"total": 6}
    assert body["createdAt"] == "2026-01-01T02:00:00Z" and body["type"] == "GlobalInsight"
