"""Dataplane ``networking.transparentProxying.reachableServices`` / ``reachableBackends``: a proxy
gets outbounds to the services it may reach only, and a change to any other service does not
regenerate it. Pure generation, then the reconciler over a real memory store."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.xds.context import MeshContext, outbound_services, reachable_services
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from zonemesh.zone_cp.xds.testing import RecordingCache, load_resources, stream_infos

MESH = Resource(type="Mesh", name="default", spec={})


def dataplane(
    name: str, service: str, outbounds: tuple[str, ...] = (), tp: dict[str, Any] | None = None, port: int = 8080
) -> Resource:
    net: dict[str, Any] = {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "servicePort": port + 1, "tags": {"kuma.io/service": service}}],
        "outbound": [{"port": 20000 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(outbounds)],
    }
    if tp is not None:
        net["transparentProxying"] = tp
    return Resource(type="Dataplane", name=name, mesh="default", spec={"networking": net}, version=1)


SERVICES = ("backend", "db", "cache")
PEERS = [dataplane(f"{s}-1", s, port=9000 + i) for i, s in enumerate(SERVICES)]


def generated(*proxies: Resource) -> dict[str, dict[str, list[str]]]:
    """Per proxy, the names of what it gets: listeners, clusters, routes, endpoints."""
    ctx = MeshContext.build(MESH, [*PEERS, *proxies])
    result = {}
    for proxy in proxies:
        resources = generate(ctx, proxy)
        result[proxy.name] = {t: resources.names(t) for t in (LISTENER, CLUSTER, ROUTE, ENDPOINT)}
    return result


def test_only_reachable_services_get_outbounds() -> None:
    web = dataplane("web-1", "web", SERVICES, {"reachableServices": ["db"]})
    got = generated(web)["web-1"]
    assert got[LISTENER] == ["inbound:127.0.0.1:8080", "outbound:127.0.0.1:20001"]
    assert got[CLUSTER] == ["db", "localhost:8081"]
    assert got[ENDPOINT] == ["db"]


def test_without_reachable_services_every_declared_outbound_is_generated() -> None:
    for tp in (None, {}, {"reachableServices": []}, {"redirectPortOutbound": 15001}):
        web = dataplane("web-1", "web", SERVICES, tp)
        assert reachable_services(web) is None
        assert generated(web)["web-1"][CLUSTER] == ["backend", "cache", "db", "localhost:8081"]


def test_reachable_backends_name_services_and_add_to_reachable_services() -> None:
    both = {"reachableServices": ["db"], "reachableBackends": {"refs": [{"kind": "MeshService", "name": "cache"}]}}
    web = dataplane("web-1", "web", SERVICES, both)
    assert generated(web)["web-1"][CLUSTER] == ["cache", "db", "localhost:8081"]
    # Present without refs: nothing is reachable (Kuma's reachableBackends: {}).
    nothing = dataplane("web-2", "web", SERVICES, {"reachableBackends": {}})
    assert generated(nothing)["web-2"][CLUSTER] == ["localhost:8081"]


def test_a_reachable_service_the_proxy_declares_no_outbound_for_adds_nothing() -> None:
    web = dataplane("web-1", "web", ("backend",), {"reachableServices": ["backend", "db"]})
    assert generated(web)["web-1"][CLUSTER] == ["backend", "localhost:8081"]


def test_replicas_differing_in_reachable_services_do_not_share_a_shape() -> None:
    """Generation shares a shape's config between replicas (generators/__init__.py): what a proxy
    may reach is part of its shape, whichever replica is generated first."""
    one = dataplane("web-1", "web", SERVICES, {"reachableServices": ["backend"]})
    two = dataplane("web-2", "web", SERVICES, {"reachableServices": ["cache"]})
    got = generated(one, two)
    assert got["web-1"][CLUSTER] == ["backend", "localhost:8081"]
    assert got["web-2"][CLUSTER] == ["cache", "localhost:8081"]


def test_the_consumer_index_counts_reachable_outbounds_only() -> None:
    web = dataplane("web-1", "web", SERVICES, {"reachableServices": ["db", "cache"]})
    assert outbound_services(web) == {"db", "cache"}


@pytest.mark.parametrize(
    ("ref", "field", "reason"),
    [
        ({"kind": "MeshExternalService", "name": "x"}, "refs[0].kind", "of kind MeshExternalService is not supported"),
        ({"kind": "MeshService", "labels": {"app": "x"}}, "refs[0].labels", "by labels is not supported yet"),
        ({"kind": "MeshService", "name": "x", "port": 80}, "refs[0].port", "port is not supported yet"),
        ({"kind": "MeshService"}, "refs[0].name", "must be defined"),
        ({"kind": "Service", "name": "x"}, "refs[0].kind", "must be one of"),
    ],
)
def test_reachable_backends_zonemesh_cannot_resolve_are_refused(ref: dict[str, Any], field: str, reason: str) -> None:
    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            "transparentProxying": {"reachableBackends": {"refs": [ref]}},
        },
    }
    with pytest.raises(ValidationError) as refused:
        from_universal(doc)
    fields = {e.field: e.reason for e in refused.value.errors}
    path = f"networking.transparentProxying.reachableBackends.{field}"
    assert path in fields and reason in fields[path], fields
    ok = copy.deepcopy(doc)
    ok["networking"]["transparentProxying"]["reachableBackends"]["refs"] = [
        {"kind": "MeshService", "name": "x", "namespace": "ignored"}
    ]
    assert from_universal(ok)[0].name == "web-1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redirectPortInbound", 15006),
        ("redirectPortInboundV6", 15010),
        ("redirectPortOutbound", 15001),
        ("directAccessServices", ["*"]),
        ("ipFamilyMode", "DualStack"),
    ],
)
def test_transparent_proxying_redirection_is_refused(field: str, value: Any) -> None:
    """Kuma's transparent proxying fields tell iptables where to send the workload's traffic: without
    transparent proxying in zonemesh, accepting them would leave that traffic at ports nothing listens on."""
    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            "transparentProxying": {field: value, "reachableServices": ["backend"]},
        },
    }
    with pytest.raises(ValidationError) as refused:
        from_universal(doc)
    assert [(e.field, e.reason) for e in refused.value.errors] == [
        (
            f"networking.transparentProxying.{field}",
            "transparent proxying is not supported yet by zonemesh: declare outbounds in networking.outbound "
            "(reachableServices and reachableBackends are applied)",
        )
    ]


# -- the reconciler: a change to an unreachable service does not regenerate the proxy ----------------


@pytest.fixture
async def zone() -> AsyncIterator[tuple[ResourceManager, RecordingCache, Reconciler]]:
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in load_resources("type: Mesh\nname: default\nskipCreatingInitialPolicies: ['*']\n"):
        await manager.apply(res)
    for dp in PEERS:
        await manager.apply(dp)
    # Both declare outbounds to every service; web-1 may reach backend only.
    await manager.apply(dataplane("web-1", "web", SERVICES, {"reachableServices": ["backend"]}))
    await manager.apply(dataplane("all-1", "all", SERVICES))
    cache = RecordingCache()
    async with Reconciler(store, cache, None, debounce=0.01, max_delay=0.05) as reconciler:
        for info in stream_infos("web-1", "all-1", *[p.name for p in PEERS]):
            await reconciler.on_stream_open(info)
        await cache.settle(reconciler)
        yield manager, cache, reconciler


async def test_a_new_instance_of_an_unreachable_service_does_not_regenerate_the_proxy(
    zone: tuple[ResourceManager, RecordingCache, Reconciler],
) -> None:
    manager, cache, reconciler = zone
    await manager.apply(dataplane("db-2", "db", port=9100))
    assert sorted(await cache.settle(reconciler)) == ["default/all-1"]  # db-2 is not connected
    await manager.apply(dataplane("backend-2", "backend", port=9200))
    assert sorted(await cache.settle(reconciler)) == ["default/all-1", "default/web-1"]


async def test_changing_what_a_proxy_may_reach_moves_it_in_the_index(
    zone: tuple[ResourceManager, RecordingCache, Reconciler],
) -> None:
    manager, cache, reconciler = zone
    await manager.apply(dataplane("web-1", "web", SERVICES, {"reachableServices": ["db"]}))
    assert await cache.settle(reconciler) == ["default/web-1"]
    await manager.apply(dataplane("backend-2", "backend", port=9200))
    assert await cache.settle(reconciler) == ["default/all-1"]
    await manager.apply(dataplane("db-2", "db", port=9100))
    assert sorted(await cache.settle(reconciler)) == ["default/all-1", "default/web-1"]
