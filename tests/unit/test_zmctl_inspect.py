"""kumactl's inspect commands in zmctl: the cells scripts read (kumactl's ``Ago``, statuses, counts),
the services a mesh's proxies make up, and which proxies a policy or MeshGateway selects.
(Against real control planes: tests/integration/test_zmctl_kumactl.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds import affected

from zonemesh.ctl import inspect
from zonemesh.ctl.main import build_parser

NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)


def stamp(delta: timedelta) -> str:
    return (NOW - delta).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("delta", "cell"),
    [
        (timedelta(seconds=42), "42s"),
        (timedelta(minutes=5, seconds=59), "5m"),
        (timedelta(hours=3), "3h"),
        (timedelta(days=12), "12d"),
        (timedelta(days=800), "2y"),
        (timedelta(seconds=-30), "never"),
    ],
)
def test_ago_cells_are_kumactls(delta: timedelta, cell: str) -> None:
    assert inspect.ago(stamp(delta), NOW) == cell


def test_ago_without_a_time_is_never() -> None:
    assert inspect.ago(None, NOW) == "never"
    assert inspect.ago("not a time", NOW) == "never"


def subscription(connected: timedelta, *, disconnected: bool = False, sent: Any = "7", **version: Any) -> dict:
    sub: dict[str, Any] = {
        "connectTime": stamp(connected),
        "status": {"lastUpdateTime": stamp(timedelta(seconds=3)), "total": {"responsesSent": sent}},
        "version": version,
    }
    if disconnected:
        sub["disconnectTime"] = stamp(timedelta(seconds=1))
    return sub


def test_proxy_row_has_kumactls_columns_and_cells() -> None:
    insight = {
        "subscriptions": [
            subscription(timedelta(hours=2), disconnected=True, sent="5"),
            subscription(timedelta(minutes=4), sent=3, zonemeshDp={"version": "0.9.0"}, envoy={"version": "1.31.0"}),
        ]
    }
    row = inspect.proxy_row("ingress-1", insight, NOW)
    assert dict(zip(inspect.PROXY_HEADERS, row, strict=True)) == {
        "NAME": "ingress-1",
        "STATUS": "Online",
        "LAST CONNECTED AGO": "4m",
        "LAST UPDATED AGO": "3s",
        "TOTAL UPDATES": "8",  # over every subscription, as kumactl sums them
        "TOTAL ERRORS": "0",
        "KUMA-DP VERSION": "0.9.0",
        "ENVOY VERSION": "1.31.0",
    }
    assert inspect.proxy_row("egress-1", None, NOW)[1:4] == ["Offline", "never", "never"]


def test_zone_row_is_offline_when_disabled_and_shows_the_store() -> None:
    item = {
        "name": "zone-1",
        "state": "Online",
        "zone": {"enabled": False},
        "zoneInsight": {
            "subscriptions": [
                {
                    **subscription(timedelta(seconds=9), zonemeshCp={"version": "1.2"}),
                    "config": '{"store": {"type": "etcd"}}',
                }
            ]
        },
    }
    row = inspect.zone_row(item, NOW)
    assert dict(zip(inspect.ZONE_HEADERS, row, strict=True))["STATUS"] == "Offline"
    assert row[-2:] == ["1.2", "etcd"]
    item["zone"] = {"enabled": True}
    assert inspect.zone_row(item, NOW)[1] == "Online"


def overview(name: str, service: str, *, online: bool, ready: bool = True) -> dict[str, Any]:
    inbound = {"port": 1, "tags": {"kuma.io/service": service}, "health": {"ready": ready}}
    insight = {"subscriptions": [subscription(timedelta(seconds=5), disconnected=not online)]}
    return {"name": name, "dataplane": {"networking": {"inbound": [inbound]}}, "dataplaneInsight": insight}


def test_services_count_online_proxies_as_kuma_does() -> None:
    overviews = [
        overview("web-1", "web", online=True),
        overview("web-2", "web", online=False),
        overview("api-1", "api", online=True),
        overview("db-1", "db", online=True, ready=False),  # not ready: counted offline
        {
            "name": "gw-1",
            "dataplane": {"networking": {"gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}},
            "dataplaneInsight": {"subscriptions": [subscription(timedelta(seconds=5))]},
        },
    ]
    external = [{"name": "httpbin", "tags": {"kuma.io/service": "httpbin"}}]
    services = {s["name"]: s for s in inspect.service_overviews(overviews, external, "default")}
    assert list(services) == ["api", "db", "edge", "httpbin", "web"]
    assert services["web"]["status"] == "partially_degraded"
    assert services["web"]["dataplanes"] == {"online": 1, "offline": 1, "total": 2}
    assert services["api"]["status"] == "online"
    assert services["db"]["status"] == "offline"
    assert services["edge"]["serviceType"] == "gateway_builtin"
    assert services["httpbin"]["serviceType"] == "external"
    assert inspect.service_status_cell(services["httpbin"]["status"]) == "Offline"


def dataplane(name: str, service: str, **extra: str) -> Resource:
    spec = {
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": service, **extra}}]}
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec=spec)


def gateway_dp(name: str, service: str) -> Resource:
    spec = {
        "networking": {"address": "127.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": service}}}
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec=spec)


def policy(kind: str, ref: dict[str, Any], name: str = "p") -> Resource:
    return Resource(type=kind, name=name, mesh="default", spec={"targetRef": ref})


GATEWAY = Resource(
    type="MeshGateway",
    name="edge",
    mesh="default",
    spec={"selectors": [{"match": {"kuma.io/service": "edge"}}], "conf": {"listeners": [{"port": 8080}]}},
)
DATAPLANES = [
    dataplane("web-2", "web"),
    dataplane("web-1", "web", version="v2"),
    dataplane("api-1", "api"),
    gateway_dp("gw-1", "edge"),
]


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ({"kind": "Mesh"}, ["api-1", "gw-1", "web-1", "web-2"]),
        ({"kind": "MeshService", "name": "web"}, ["web-1", "web-2"]),
        ({"kind": "MeshSubset", "tags": {"version": "v2"}}, ["web-1"]),
        ({"kind": "Dataplane", "name": "api-1"}, ["api-1"]),
        ({"kind": "MeshGateway", "name": "edge"}, ["gw-1"]),
        ({"kind": "MeshGateway", "name": "other"}, []),
    ],
)
def test_a_policy_selects_what_generation_applies_it_to(ref: dict[str, Any], names: list[str]) -> None:
    found = affected.selected_dataplanes(policy("MeshTimeout", ref), DATAPLANES, [GATEWAY], [])
    assert [dp.name for dp in found] == names


def test_a_policy_on_a_route_selects_the_routes_proxies() -> None:
    route = policy("MeshHTTPRoute", {"kind": "MeshService", "name": "api"}, name="r1")
    timeout = policy("MeshTimeout", {"kind": "MeshHTTPRoute", "name": "r1"})
    assert [dp.name for dp in affected.selected_dataplanes(timeout, DATAPLANES, [GATEWAY], [route])] == ["api-1"]
    gone = policy("MeshTimeout", {"kind": "MeshHTTPRoute", "name": "missing"})
    assert affected.selected_dataplanes(gone, DATAPLANES, [GATEWAY], [route]) == []


def test_a_gateway_configures_the_builtin_proxies_it_selects() -> None:
    narrower = Resource(
        type="MeshGateway",
        name="narrow",
        mesh="default",
        spec={"selectors": [{"match": {"kuma.io/service": "edge", "zone": "z"}}], "conf": {"listeners": []}},
    )
    assert [dp.name for dp in affected.gateway_dataplanes(GATEWAY, DATAPLANES, [GATEWAY, narrower])] == ["gw-1"]


def test_every_policy_type_has_an_inspect_command() -> None:
    parser = build_parser()
    for rtype in REGISTRY.policies():
        args = parser.parse_args(["inspect", rtype.name.lower(), "p1", "-m", "default"])
        assert args.name == "p1" and args.mesh == "default"
    args = parser.parse_args(["inspect", "zone-ingresses", "-o", "json"])
    assert args.output == "json"
    args = parser.parse_args(["inspect", "dataplane", "web-1", "--type", "config", "--include-eds"])
    assert args.type == "config"


def test_dataplane_row_has_kumactls_columns() -> None:
    item = {
        "mesh": "default",
        "name": "web-1",
        "dataplane": {
            "networking": {
                "inbound": [
                    {"port": 8080, "tags": {"kuma.io/service": "web"}},
                    {"port": 8081, "tags": {"kuma.io/service": "web"}, "health": {"ready": False}},
                ]
            }
        },
        "dataplaneInsight": {
            "subscriptions": [
                subscription(timedelta(minutes=2), zonemeshDp={"version": "0.1.0"}, envoy={"version": "1.31.2"})
            ],
            "mTLS": {
                "lastCertificateRegeneration": stamp(timedelta(hours=1)),
                "certificateExpirationTime": "2026-01-11T12:00:00Z",
                "certificateRegenerations": 3,
                "issuedBackend": "ca-1",
                "supportedBackends": ["ca-1"],
            },
        },
    }
    row = dict(zip(inspect.DATAPLANE_HEADERS, inspect.dataplane_row(item, NOW), strict=True))
    assert row == {
        "MESH": "default",
        "NAME": "web-1",
        "TAGS": "kuma.io/service=web",
        "STATUS": "Partially degraded",
        "LAST CONNECTED AGO": "2m",
        "LAST UPDATED AGO": "3s",
        "TOTAL UPDATES": "7",
        "TOTAL ERRORS": "0",
        "CERT REGENERATED AGO": "1h",
        "CERT EXPIRATION": "2026-01-11 12:00:00",
        "CERT REGENERATIONS": "3",
        "CERT BACKEND": "ca-1",
        "SUPPORTED CERT BACKENDS": "ca-1",
        "KUMA-DP VERSION": "0.1.0",
        "ENVOY VERSION": "1.31.2",
        "DEPENDENCIES VERSIONS": "-",
        "NOTES": "inbound[port=8081] is not ready",
    }


def test_inspect_dataplanes_filters_as_kumactl() -> None:
    web = {"name": "web-1", "networking": {"inbound": [{"tags": {"kuma.io/service": "web", "version": "v2"}}]}}
    gw = {"name": "gw-1", "networking": {"gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}}
    assert inspect.dataplane_selected(web, {"version": "v2"}, gateway=False)
    assert not inspect.dataplane_selected(web, {"version": "v1"}, gateway=False)
    assert not inspect.dataplane_selected(web, {}, gateway=True)
    assert inspect.dataplane_selected(gw, {"kuma.io/service": "edge"}, gateway=True)
