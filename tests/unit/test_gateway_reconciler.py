"""Builtin gateways through the reconciler: MeshGateway / MeshGatewayRoute / policy / backend
changes regenerate the gateway proxies (real memory store, real snapshot cache)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.xds.reconciler import Reconciler, affected_by_policy, builtin_gateways
from zonemesh.zone_cp.xds.resources import LISTENER, ROUTE
from zonemesh.zone_cp.xds.testing import RecordingCache, stream_infos

SETUP = """
type: Mesh
name: default
skipCreatingInitialPolicies: ["*"]
---
type: Dataplane
mesh: default
name: gw-1
networking:
  address: 127.0.0.1
  gateway: {type: BUILTIN, tags: {kuma.io/service: edge}}
---
type: Dataplane
mesh: default
name: b-1
networking:
  address: 127.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: b, kuma.io/protocol: http}}]
---
type: Dataplane
mesh: default
name: kong-1
networking:
  address: 127.0.0.1
  gateway: {type: DELEGATED, tags: {kuma.io/service: kong}}
  outbound: [{port: 33033, tags: {kuma.io/service: b}}]
"""
GATEWAY = """
type: MeshGateway
mesh: default
name: edge
selectors: [{match: {kuma.io/service: edge}}]
conf:
  listeners: [{port: 8080, protocol: HTTP, tags: {port: http}}]
"""


def route(prefix: str) -> str:
    return f"""
type: MeshGatewayRoute
mesh: default
name: edge-route
selectors: [{{match: {{port: http}}}}]
conf:
  http:
    rules:
      - matches: [{{path: {{match: PREFIX, value: {prefix}}}}}]
        backends: [{{destination: {{kuma.io/service: b}}}}]
"""


def docs(text: str) -> list[Resource]:
    return [from_universal(d)[0] for d in load_documents(text)]


@dataclass
class Zone:
    manager: ResourceManager
    cache: RecordingCache
    reconciler: Reconciler

    async def settle(self) -> list[str]:
        """The proxies pushed to since the last call, once the reconciler has pushed every change."""
        return sorted(set(await self.cache.settle(self.reconciler)))

    def routes(self, node: str) -> route_pb2.RouteConfiguration:
        snapshot = self.cache.snapshot(node)
        assert snapshot is not None
        config = route_pb2.RouteConfiguration()
        any_pb2.Any.FromString(snapshot.types[ROUTE].resources["edge:HTTP:8080"]).Unpack(config)
        return config


@pytest.fixture
async def zone() -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in docs(SETUP):
        await manager.apply(res)
    cache = RecordingCache()
    async with Reconciler(store, cache, None, debounce=0.05, max_delay=0.2) as reconciler:
        for info in stream_infos("gw-1", "b-1", "kong-1"):
            await reconciler.on_stream_open(info)
        yield Zone(manager, cache, reconciler)


async def test_gateway_config_follows_gateway_routes_and_backends(zone: Zone) -> None:
    assert await zone.settle() == ["default/b-1", "default/gw-1", "default/kong-1"]
    gateway = zone.cache.snapshot("default/gw-1")
    assert gateway is not None and not gateway.types[LISTENER].resources  # no MeshGateway yet
    delegated = zone.cache.snapshot("default/kong-1")
    assert delegated is not None and list(delegated.types[LISTENER].resources) == ["outbound:127.0.0.1:33033"]

    for res in docs(GATEWAY):
        await zone.manager.apply(res)
    assert await zone.settle() == ["default/gw-1"]  # only the builtin gateway
    gateway = zone.cache.snapshot("default/gw-1")
    assert gateway is not None and list(gateway.types[LISTENER].resources) == ["edge:HTTP:8080"]

    for res in docs(route("/api")):
        await zone.manager.apply(res)
    assert await zone.settle() == ["default/gw-1"]
    assert zone.routes("default/gw-1").virtual_hosts[0].routes[0].match.path_separated_prefix == "/api"

    for res in docs(route("/v2")):  # a route change: a new snapshot, same listener
        await zone.manager.apply(res)
    assert await zone.settle() == ["default/gw-1"]
    assert zone.routes("default/gw-1").virtual_hosts[0].routes[0].match.path_separated_prefix == "/v2"

    # A backend instance appearing regenerates the gateway (its endpoints changed) and the delegated consumer.
    await zone.manager.apply(docs(SETUP.split("---")[2].replace("b-1", "b-2").replace("port: 8080", "port: 8081"))[0])
    assert await zone.settle() == ["default/gw-1", "default/kong-1"]

    policy = docs(
        """
type: MeshTimeout
mesh: default
name: gw-timeout
spec:
  targetRef: {kind: MeshGateway, name: edge}
  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 3s}}}]
"""
    )[0]
    await zone.manager.apply(policy)
    assert await zone.settle() == ["default/gw-1"]
    assert zone.routes("default/gw-1").virtual_hosts[0].routes[0].route.timeout.seconds == 3


def test_pure_rules_for_gateways() -> None:
    dps = docs(SETUP)[1:]
    assert builtin_gateways(dps) == {"gw-1"}
    policy = Resource(
        type="MeshRetry", name="p", mesh="default", spec={"targetRef": {"kind": "MeshGateway", "name": "x"}}
    )
    assert affected_by_policy(None, policy, dps) == {"gw-1"}


def test_cross_mesh_rules() -> None:
    from zonemesh.zone_cp.xds.generators import crossmesh

    client = Resource(
        type="Dataplane",
        name="c",
        mesh="mesh-b",
        spec={"networking": {"outbound": [{"port": 1, "tags": {"kuma.io/service": "g", "kuma.io/mesh": "mesh-a"}}]}},
    )
    local = Resource(
        type="Dataplane",
        name="l",
        mesh="mesh-b",
        spec={"networking": {"outbound": [{"port": 1, "tags": {"kuma.io/service": "g", "kuma.io/mesh": "mesh-b"}}]}},
    )
    assert crossmesh.cross_mesh_clients([client, local, *docs(SETUP)[1:]]) == {("mesh-b", "c")}
    assert crossmesh.changes_trust(Resource(type="Secret", name="mesh-b.ca-builtin-cert-ca-1", mesh="mesh-b"))
    assert not crossmesh.changes_trust(Resource(type="Secret", name="my-listener-cert", mesh="mesh-b"))
    assert crossmesh.changes_trust(Resource(type="Mesh", name="mesh-b"))
