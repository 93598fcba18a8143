"""What a policy change about one service sends, and to whom: the real reconciler over a real store
feeding the real cache and xDS server on 127.0.0.1, one ADS stream per proxy (delta and State of
the World), each ACKing every response as Envoy does.

A change that concerns one service (requests to it, or its own inbound) must send nothing to the
proxies it does not concern, however the reconciler rounds it (a mesh-wide targetRef regenerates
every proxy; unchanged config must not go out); over delta the proxies it concerns receive only
the resources that changed. The end of what a change sends is known without waiting on a clock:
a second change that reaches every proxy (the sentinel) follows it on each stream, and a stream
delivers its responses in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from zonemesh.zone_cp.xds.server import Admission, Callbacks, XdsServer
from zonemesh.zone_cp.xds.testing import load_resources

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService"
TYPES = (CLUSTER, LISTENER, ROUTE, ENDPOINT)  # no mTLS here: no secrets
MESSAGES: dict[str, Any] = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
}

# name -> (service, services it calls): web calls backend and db, backend calls db, admin calls db.
PROXIES = {
    "web-1": ("web", ("backend", "db")),
    "web-2": ("web", ("backend", "db")),
    "backend-1": ("backend", ("db",)),
    "db-1": ("db", ()),
    "admin-1": ("admin", ("db",)),
}
SENTINEL = "sentinel"  # the mesh-wide MeshTimeout the sentinel changes
SENTINEL_SECONDS = 3000


def dataplane(index: int, name: str) -> Resource:
    service, calls = PROXIES[name]
    port = 10000 + index  # every proxy on 127.0.0.1 with an inbound port of its own
    networking = {
        "address": "127.0.0.1",
        "inbound": [
            {"port": port, "servicePort": port + 1000, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}
        ],
        "outbound": [{"port": 20000 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(calls)],
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec={"networking": networking})


def timeout_policy(name: str, spec: dict[str, Any]) -> Resource:
    return Resource(type="MeshTimeout", name=name, mesh="default", spec=spec)


def requests_to(service: str, seconds: int) -> Resource:
    """A policy on every proxy's requests to ``service`` (a mesh-wide targetRef: its callers' routes)."""
    to = [
        {"targetRef": {"kind": "MeshService", "name": service}, "default": {"http": {"requestTimeout": f"{seconds}s"}}}
    ]
    return timeout_policy(f"to-{service}", {"targetRef": {"kind": "Mesh"}, "to": to})


def inbound_of(service: str, seconds: int) -> Resource:
    """A policy on the inbound of ``service``'s own proxies."""
    source = [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": f"{seconds}s"}}}]
    return timeout_policy(f"on-{service}", {"targetRef": {"kind": "MeshService", "name": service}, "from": source})


def sentinel(seconds: int) -> Resource:
    """Every proxy's inbound requests: a change that reaches every proxy."""
    source = [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"streamIdleTimeout": f"{seconds}s"}}}]
    return timeout_policy(SENTINEL, {"targetRef": {"kind": "Mesh"}, "from": source})


def resource_name(type_url: str, value: bytes) -> str:
    message = MESSAGES[type_url].FromString(value)
    return str(message.cluster_name if type_url == ENDPOINT else message.name)


@dataclass
class Received:
    """One response as a proxy saw it: per resource, whether its bytes differ from what it held."""

    type_url: str
    changed: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    idle_timeouts: set[int] = field(default_factory=set)  # of the listeners it carries


class Proxy:
    """One ADS stream subscribing to every type (wildcard), ACKing every response and holding
    the resources as Envoy does, recording what each response brought."""

    def __init__(self, channel: grpc.aio.Channel, name: str, delta: bool) -> None:
        self.name, self.delta = name, delta
        method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
        self.call = channel.stream_stream(
            f"{ADS}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )()
        self.held: dict[str, dict[str, bytes]] = {t: {} for t in TYPES}
        self.received: list[Received] = []
        self.arrived = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def start(self) -> None:
        for i, type_url in enumerate(TYPES):
            request: Any = (discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest)(
                type_url=type_url
            )
            if i == 0:
                request.node.id = f"default.{self.name}"
            await self.call.write(request.SerializeToString())

    async def _read(self) -> None:
        while (raw := await self.call.read()) is not grpc.aio.EOF:
            got, ack = self._delta(raw) if self.delta else self._sotw(raw)
            self.received.append(got)  # before holding it is visible to anyone waiting
            self.arrived.set()
            await self.call.write(ack.SerializeToString())

    def _take(self, got: Received, name: str, value: bytes) -> None:
        if got.type_url == LISTENER:
            got.idle_timeouts |= idle_timeouts(value)
        (got.unchanged if self.held[got.type_url].get(name) == value else got.changed).add(name)

    def _delta(self, raw: bytes) -> tuple[Received, Any]:
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        got = Received(response.type_url)
        held = self.held[got.type_url]
        for resource in response.resources:
            self._take(got, resource.name, resource.resource.value)
            held[resource.name] = resource.resource.value
        for name in response.removed_resources:
            got.removed.add(name)
            held.pop(name, None)
        return got, discovery_pb2.DeltaDiscoveryRequest(type_url=got.type_url, response_nonce=response.nonce)

    def _sotw(self, raw: bytes) -> tuple[Received, Any]:
        response = discovery_pb2.DiscoveryResponse.FromString(raw)
        got = Received(response.type_url)
        now = {resource_name(got.type_url, r.value): r.value for r in response.resources}
        for name, value in now.items():
            self._take(got, name, value)
        got.removed = set(self.held[got.type_url]) - set(now)
        self.held[got.type_url] = now
        ack = discovery_pb2.DiscoveryRequest(
            type_url=got.type_url, version_info=response.version_info, response_nonce=response.nonce
        )
        return got, ack

    async def until_configured(self) -> None:
        """Until its clusters and listeners came (a proxy without outbounds has no routes to wait for)."""
        async with asyncio.timeout(10):
            while not {CLUSTER, LISTENER} <= {r.type_url for r in self.received}:
                self.arrived.clear()
                await self.arrived.wait()

    def holds(self, seconds: int) -> bool:
        """Whether one of its listeners has this stream idle timeout (the sentinel's)."""
        return any(seconds in idle_timeouts(value) for value in self.held[LISTENER].values())

    async def until_holding(self, seconds: int) -> None:
        async with asyncio.timeout(10):
            while not self.holds(seconds):
                self.arrived.clear()
                await self.arrived.wait()

    def close(self) -> None:
        self.reader.cancel()
        self.call.cancel()


@dataclass
class Zone:
    manager: ResourceManager
    reconciler: Reconciler
    proxies: dict[str, Proxy]
    sentinels: int = 0

    async def change(self, resource: Resource | None) -> dict[str, list[Received]]:
        """Apply ``resource``; per proxy, every response the change caused (the sentinel's excluded)."""
        marks = {name: len(p.received) for name, p in self.proxies.items()}
        if resource is not None:
            await self.manager.apply(resource)
            await self.reconciler.idle()
        return await self.until_sentinel(marks)

    async def until_sentinel(self, marks: dict[str, int]) -> dict[str, list[Received]]:
        self.sentinels += 1
        seconds = SENTINEL_SECONDS + self.sentinels
        await self.manager.apply(sentinel(seconds))
        for proxy in self.proxies.values():
            await proxy.until_holding(seconds)
        caused = {}
        for name, proxy in self.proxies.items():
            responses = proxy.received[marks[name] :]
            first = min(i for i, r in enumerate(responses) if seconds in r.idle_timeouts)
            # The sentinel changes inbound listeners only: nothing else may ride along with it.
            assert {r.type_url for r in responses[first:]} == {LISTENER}, name
            caused[name] = responses[:first]
        return caused


def idle_timeouts(listener: bytes) -> set[int]:
    """The stream idle timeouts (seconds) of a listener's HTTP connection managers."""
    found = set()
    for chain in listener_pb2.Listener.FromString(listener).filter_chains:
        for filt in chain.filters:
            if filt.typed_config.type_url.endswith("HttpConnectionManager"):
                hcm = hcm_pb2.HttpConnectionManager.FromString(filt.typed_config.value)
                found.add(hcm.stream_idle_timeout.seconds)
    return found


MESH = """
type: Mesh
name: default
skipCreatingInitialPolicies: ["*"]
"""


@pytest.fixture(params=["delta", "sotw"])
async def zone(request: pytest.FixtureRequest) -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in load_resources(MESH):
        await manager.apply(res)
    for i, name in enumerate(PROXIES):
        await manager.apply(dataplane(i, name))
    await manager.apply(sentinel(SENTINEL_SECONDS))
    cache = SnapshotCache()

    async def admit(metadata: Any, node: Any) -> Admission:
        async def still_valid(_store: Any) -> None:
            return None

        return Admission(ProxyIdentity("default", node.id.split(".", 1)[1]), "test", time.time() + 3600, still_valid)

    callbacks = Callbacks()
    async with Reconciler(store, cache, None, debounce=0.02, max_delay=0.1) as reconciler:
        callbacks.stream_open.append(reconciler.on_stream_open)
        callbacks.stream_close.append(reconciler.on_stream_close)
        server = XdsServer(Config(xds_address="127.0.0.1", xds_port=0), cache, admit, None, (), callbacks)
        async with server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            proxies = {name: Proxy(channel, name, request.param == "delta") for name in PROXIES}
            for proxy in proxies.values():
                await proxy.start()
            zone = Zone(manager, reconciler, proxies)
            for proxy in proxies.values():
                await proxy.until_configured()
            await zone.change(None)  # the first config delivered whole, everything after it is a change
            try:
                yield zone
            finally:
                for proxy in proxies.values():
                    proxy.close()


def receivers(caused: dict[str, list[Received]]) -> set[str]:
    return {name for name, responses in caused.items() if responses}


def route_timeouts(proxy: Proxy, route: str) -> set[int]:
    config = route_pb2.RouteConfiguration.FromString(proxy.held[ROUTE][route])
    return {r.route.timeout.seconds for vhost in config.virtual_hosts for r in vhost.routes}


async def test_a_policy_on_requests_to_one_service_reaches_only_its_callers(zone: Zone) -> None:
    # Its targetRef is the whole mesh, so the reconciler regenerates every proxy: those whose
    # config did not change must receive nothing.
    for seconds in (42, 44):  # created, then changed
        caused = await zone.change(requests_to("backend", seconds))
        assert receivers(caused) == {"web-1", "web-2"}
        for name in ("web-1", "web-2"):
            responses = caused[name]
            assert {r.type_url for r in responses} == {ROUTE}
            assert set().union(*(r.changed for r in responses)) == {"outbound:backend"}
            assert not any(r.removed for r in responses)
            if zone.proxies[name].delta:  # only what changed; State of the World re-sends the type whole
                assert not any(r.unchanged for r in responses)
            assert route_timeouts(zone.proxies[name], "outbound:backend") == {seconds}
            assert seconds not in route_timeouts(zone.proxies[name], "outbound:db")


async def test_a_policy_on_one_services_inbound_reaches_only_its_own_proxies(zone: Zone) -> None:
    caused = await zone.change(inbound_of("backend", 43))
    assert receivers(caused) == {"backend-1"}
    responses = caused["backend-1"]
    inbound = f"inbound:127.0.0.1:{10000 + list(PROXIES).index('backend-1')}"
    assert {r.type_url for r in responses} == {LISTENER}
    assert set().union(*(r.changed for r in responses)) == {inbound}
    if zone.proxies["backend-1"].delta:
        assert not any(r.unchanged for r in responses)


async def test_removing_a_one_service_policy_reaches_only_its_callers(zone: Zone) -> None:
    await zone.change(requests_to("backend", 45))
    marks = {name: len(p.received) for name, p in zone.proxies.items()}
    await zone.manager.delete("MeshTimeout", "to-backend", "default")
    await zone.reconciler.idle()
    caused = await zone.until_sentinel(marks)
    assert receivers(caused) == {"web-1", "web-2"}
    for name in ("web-1", "web-2"):
        assert set().union(*(r.changed for r in caused[name])) == {"outbound:backend"}
        assert 45 not in route_timeouts(zone.proxies[name], "outbound:backend")
