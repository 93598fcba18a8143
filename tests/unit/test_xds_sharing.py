"""What proxies share within a round: TypeSnapshots, pre-encoded responses, policy matches; and
the reconciler's per-mesh Dataplane indexes. All pure or in-memory (no servers)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.base import Event, EventKind
from zonemesh.zone_cp.view import ZoneView
from zonemesh.zone_cp.xds.cache import (
    DeltaWatchRequest,
    DeltaWatchResponse,
    Snapshot,
    SnapshotBuilder,
    SnapshotCache,
    WatchRequest,
    WatchResponse,
)
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.policies import match_all
from zonemesh.zone_cp.xds.policies.matching import matched
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.resources import (
    CLUSTER,
    LISTENER,
    ROUTE,
    ResourceSet,
    encode_any,
    encode_response,
    with_nonce,
)


def _set(cluster: cluster_pb2.Cluster, route: route_pb2.RouteConfiguration) -> ResourceSet:
    resources = ResourceSet()
    resources.add(CLUSTER, cluster.name, cluster)
    resources.add(ROUTE, route.name, route)
    return resources


def test_with_nonce_completes_a_response_encoded_without_one() -> None:
    items = [encode_any(CLUSTER, cluster_pb2.Cluster(name=n)) for n in ("a", "b")]
    body = encode_response("v1", items, CLUSTER, None)
    assert with_nonce(body, "7") == encode_response("v1", items, CLUSTER, "7")
    parsed = discovery_pb2.DiscoveryResponse.FromString(with_nonce(body, "7"))
    assert (parsed.version_info, parsed.nonce, parsed.type_url) == ("v1", "7", CLUSTER)
    assert [cluster_pb2.Cluster.FromString(r.value).name for r in parsed.resources] == ["a", "b"]


def test_proxies_with_the_same_messages_share_a_type_snapshot() -> None:
    cluster, route = cluster_pb2.Cluster(name="c"), route_pb2.RouteConfiguration(name="r")
    other_route = route_pb2.RouteConfiguration(name="r", validate_clusters={"value": False})
    builder = SnapshotBuilder()
    one, two = builder.build(_set(cluster, route)), builder.build(_set(cluster, route))
    three = builder.build(_set(cluster, other_route))
    assert one.types[CLUSTER] is two.types[CLUSTER] is three.types[CLUSTER]
    assert one.types[ROUTE] is two.types[ROUTE]
    assert three.types[ROUTE] is not one.types[ROUTE]
    assert three.version(ROUTE) != one.version(ROUTE)
    # The same versions and bytes as serializing each proxy on its own.
    alone = Snapshot.from_resources(_set(cluster, other_route))
    for type_url, typed in three.types.items():
        assert typed.version == alone.version(type_url)
        assert dict(typed.resources) == dict(alone.types[type_url].resources)


def test_a_proxy_keeps_its_type_snapshot_while_the_types_resources_are_exactly_what_they_were() -> None:
    """SnapshotBuilder.build(previous=...): a type whose resources encode to what the proxy's
    current snapshot holds (same names, same order, same bytes; new message objects, as every
    round builds) keeps that TypeSnapshot object, and set_snapshot then sends nothing of it. A
    resource changed, added or removed, or the same ones in another order, gets a new one, with
    the very versions and bytes of a snapshot built without ``previous``."""

    def listeners(*specs: tuple[str, int]) -> ResourceSet:
        resources = ResourceSet()
        for name, port in specs:
            listener = listener_pb2.Listener(name=name)
            listener.address.socket_address.port_value = port
            resources.add(LISTENER, name, listener)
        resources.add(ROUTE, "r", route_pb2.RouteConfiguration(name="r"))
        return resources

    cache = SnapshotCache()
    sent: list[list[str]] = []
    first = SnapshotBuilder().build(listeners(("a", 1), ("b", 2)))
    cache.set_snapshot("default/p", first)
    known = {name: first.types[LISTENER].versions[name] for name in ("a", "b")}

    def respond(resp: DeltaWatchResponse) -> None:
        sent.append([name for name, _, _ in resp.resources] + [f"-{name}" for name in resp.removed])
        known.update((name, version) for name, version, _ in resp.resources)
        for name in resp.removed:
            known.pop(name)

    def watch() -> None:
        cache.create_delta_watch(DeltaWatchRequest("default/p", LISTENER, True, frozenset(), dict(known)), respond)

    watch()
    current = first
    for specs, expect_kept, expect_sent in [
        ([("a", 1), ("b", 2)], True, []),  # new messages, the same bytes
        ([("a", 1), ("b", 3)], False, [["b"]]),  # one changed
        ([("a", 1), ("b", 3), ("c", 4)], False, [["c"]]),  # one added
        ([("a", 1), ("c", 4)], False, [["-b"]]),  # one removed
        ([("c", 4), ("a", 1)], False, []),  # the same ones in another order
        ([("c", 4), ("a", 1)], True, []),
    ]:
        sent.clear()
        resources = listeners(*specs)
        snapshot = SnapshotBuilder().build(resources, None, current)
        alone = SnapshotBuilder().build(listeners(*specs))
        assert (snapshot.types[LISTENER] is current.types[LISTENER]) is expect_kept, specs
        assert snapshot.types[ROUTE] is current.types[ROUTE]
        for type_url, typed in snapshot.types.items():
            assert list(typed.resources.items()) == list(alone.types[type_url].resources.items())
            assert typed.versions == alone.types[type_url].versions
            assert typed.version == alone.types[type_url].version
        cache.set_snapshot("default/p", snapshot)
        assert sent == expect_sent, specs
        if sent:
            watch()
        current = snapshot
    # A kept TypeSnapshot still answers a proxy that has nothing (a reconnect) with every
    # resource, each with its own head.
    sent.clear()
    known.clear()
    watch()
    assert sent == [["c", "a"]]
    typed = current.types[LISTENER]
    assert [typed.head(n) for n in ("c", "a")] == [alone.types[LISTENER].head(n) for n in ("c", "a")]


def test_a_full_type_response_is_the_shared_body_and_a_subset_is_assembled() -> None:
    cache = SnapshotCache()
    routes = ResourceSet()
    for name in ("r1", "r2"):
        routes.add(ROUTE, name, route_pb2.RouteConfiguration(name=name))
    cache.set_snapshot("default/p", SnapshotBuilder().build(routes))
    got: list[WatchResponse] = []
    cache.create_watch(WatchRequest("default/p", ROUTE, "", frozenset({"r1", "r2"})), got.append)
    cache.create_watch(WatchRequest("default/p", ROUTE, "", frozenset({"r2"})), got.append)
    full, subset = got
    assert full.body and full.names == {"r1", "r2"}
    parsed = discovery_pb2.DiscoveryResponse.FromString(with_nonce(full.body, "1"))
    assert [route_pb2.RouteConfiguration.FromString(r.value).name for r in parsed.resources] == ["r1", "r2"]
    assert parsed.version_info == full.version
    assert not subset.body and subset.names == {"r2"} and len(subset.resources) == 1


def _dp(name: str, service: str, *, gateway: bool = False, version: int = 1) -> Resource:
    tags = {"kuma.io/service": service}
    networking: dict[str, object] = {"address": "10.0.0.1"}
    if gateway:
        networking["gateway"] = {"type": "BUILTIN", "tags": tags}
    else:
        networking["inbound"] = [{"port": 8080, "tags": tags}]
    return Resource(type="Dataplane", name=name, mesh="default", spec={"networking": networking}, version=version)


def test_policy_matches_are_shared_by_proxies_with_the_same_tags_and_stay_correct() -> None:
    mesh = Resource(type="Mesh", name="default")
    policy = Resource(
        type="MeshTimeout",
        name="t",
        mesh="default",
        spec={"targetRef": {"kind": "MeshService", "name": "a"}, "to": [{"targetRef": {"kind": "Mesh"}}]},
    )
    dps = [_dp("a-1", "a"), _dp("a-2", "a"), _dp("b-1", "b")]
    ctx = MeshContext.build(mesh, dps, [policy])
    fresh = MeshContext.build(mesh, dps, [policy])
    for dp in dps:
        assert match_all(ctx, dp)["MeshTimeout"] == matched(fresh, dp, "MeshTimeout")
    assert match_all(ctx, dps[0])["MeshTimeout"] == [policy]
    assert match_all(ctx, dps[2])["MeshTimeout"] == []
    # Each caller gets its own dict: changing it does not change another proxy's answer.
    match_all(ctx, dps[0]).clear()
    assert match_all(ctx, dps[1])["MeshTimeout"] == [policy]


def test_the_builtin_gateway_index_follows_dataplane_changes() -> None:
    view = ZoneView()  # fed by hand: the changes a store watch would bring
    reconciler = Reconciler(view, SnapshotCache(), None)
    view.follow(reconciler._changed)  # as start() does
    view._apply(Event(EventKind.CREATED, Resource(type="Mesh", name="default", version=1)))
    view._apply(Event(EventKind.CREATED, _dp("gw", "edge", gateway=True)))
    view._apply(Event(EventKind.CREATED, _dp("a-1", "a")))
    assert reconciler._gateways["default"] == {"gw"}
    assert {dp.name for dp in reconciler._dataplanes("default")} == {"gw", "a-1"}
    assert set(reconciler._local_endpoints("default")) == {"a"}
    # No longer a gateway: out of the index; a new instance shows in the endpoints at once.
    view._apply(Event(EventKind.UPDATED, _dp("gw", "edge", version=2)))
    assert reconciler._gateways["default"] == set()
    assert set(reconciler._local_endpoints("default")) == {"a", "edge"}
    view._apply(Event(EventKind.DELETED, _dp("gw", "edge", version=2)))
    assert {dp.name for dp in reconciler._dataplanes("default")} == {"a-1"}
    assert set(reconciler._local_endpoints("default")) == {"a"}


# --- shapes: replicas share their config but for their inbound listeners -------------------------

REPLICAS_YAML = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: MeshTimeout
name: v2-slow
mesh: default
spec:
  targetRef: {kind: MeshSubset, tags: {version: v2}}
  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 42s}}}]
---
type: MeshTrafficPermission
name: web-from-api
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from: [{targetRef: {kind: MeshService, name: api}, default: {action: Allow}}]
"""


def _replica(name: str, address: str, version: str, *, inbound_address: str | None = None) -> Resource:
    inbound: dict[str, object] = {
        "port": 8080,
        "servicePort": 9090,
        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http", "version": version, "pod": name},
    }
    if inbound_address:
        inbound["address"] = inbound_address
    spec = {
        "networking": {
            "address": address,
            "inbound": [inbound],
            "outbound": [{"port": 30001, "tags": {"kuma.io/service": "api"}}],
        }
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec=spec, version=1)


def _api() -> Resource:
    """The service the replicas call."""
    spec = {
        "networking": {
            "address": "10.0.1.1",
            "inbound": [{"port": 80, "tags": {"kuma.io/service": "api", "kuma.io/protocol": "http"}}],
        }
    }
    return Resource(type="Dataplane", name="api-1", mesh="default", spec=spec)


async def test_replicas_share_their_shape_and_get_what_each_alone_would() -> None:
    from zonemesh.zone_cp.xds.dump import dump
    from zonemesh.zone_cp.xds.generators import generate
    from zonemesh.zone_cp.xds.resources import LISTENER, SECRET
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources, mesh_context

    replicas = [
        _replica("web-1", "10.0.0.1", "v1"),
        _replica("web-2", "10.0.0.2", "v1"),  # differs only in its address and its `pod` tag
        _replica("web-3", "10.0.0.3", "v2"),  # a tag a MeshSubset policy selects on
        _replica("web-4", "10.0.0.4", "v1", inbound_address="10.9.9.4"),
    ]
    api = _api()
    resources = [*load_resources(REPLICAS_YAML), *replicas, api]
    ca = TestCA()
    shared = await mesh_context(resources, ca=ca)
    together = {dp.name: generate(shared, dp) for dp in replicas}
    for dp in replicas:
        alone = await mesh_context(resources, ca=ca)  # a round of its own: nothing shared
        assert dump(together[dp.name]) == dump(generate(alone, dp)), dp.name

    one, two, three, four = (together[dp.name] for dp in replicas)
    # Everything but the inbound listener is the very same messages for web-1 and web-2 ...
    for type_url, by_name in one.by_type.items():
        for name, message in by_name.items():
            if type_url == LISTENER and name.startswith("inbound:"):
                continue
            assert two.by_type[type_url][name] is message, (type_url, name)
    assert one.names(LISTENER) == ["inbound:10.0.0.1:8080", "outbound:127.0.0.1:30001"]
    assert two.names(LISTENER) == ["inbound:10.0.0.2:8080", "outbound:127.0.0.1:30001"]
    assert four.names(LISTENER) == ["inbound:10.9.9.4:8080", "outbound:127.0.0.1:30001"]
    assert one.get(SECRET, "identity_cert:secret:web") is four.get(SECRET, "identity_cert:secret:web")
    # ... but web-3's version tag is one a policy matches: its routes have the policy's timeout.
    timeouts = [r.get(ROUTE, "outbound:api").virtual_hosts[0].routes[0].route.timeout.seconds for r in (one, three)]
    assert timeouts[0] != 42 and timeouts[1] == 42
    # A caller may change its set without changing another proxy's.
    one.by_type[LISTENER].clear()
    assert generate(shared, replicas[1]).names(LISTENER) == two.names(LISTENER)


def test_a_copy_shares_the_dicts_of_its_original_until_it_adds_to_them() -> None:
    cluster, route = cluster_pb2.Cluster(name="c"), route_pb2.RouteConfiguration(name="r")
    original = _set(cluster, route)
    copy = original.copy()
    assert copy.by_type[CLUSTER] is original.by_type[CLUSTER]
    copy.add(CLUSTER, "d", cluster_pb2.Cluster(name="d"))
    assert original.names(CLUSTER) == ["c"] and copy.names(CLUSTER) == ["c", "d"]
    assert copy.by_type[ROUTE] is original.by_type[ROUTE]  # untouched: still shared
    # The builder recognizes a shared dict: one TypeSnapshot, the same as for equal content.
    builder = SnapshotBuilder()
    one, two = builder.build(original), builder.build(copy)
    assert one.types[ROUTE] is two.types[ROUTE]
    assert one.types[CLUSTER] is not two.types[CLUSTER]
    assert builder.build(_set(cluster, route)).types[CLUSTER] is one.types[CLUSTER]


def test_a_new_snapshot_answers_the_waiting_watches_in_push_order() -> None:
    cache = SnapshotCache()
    got: list[str] = []
    for type_url in (ROUTE, CLUSTER):  # watches opened routes first
        cache.create_watch(WatchRequest("default/p", type_url, ""), lambda resp: got.append(resp.type_url))
    resources = _set(cluster_pb2.Cluster(name="c"), route_pb2.RouteConfiguration(name="r"))
    cache.set_snapshot("default/p", SnapshotBuilder().build(resources))
    assert got == [CLUSTER, ROUTE]  # clusters first, so that Envoy can warm them
    # Answered watches are gone: the same snapshot again sends nothing.
    cache.set_snapshot("default/p", SnapshotBuilder().build(resources))
    assert got == [CLUSTER, ROUTE]


async def test_callers_of_a_service_share_its_route_and_listener_but_not_their_identity() -> None:
    from zonemesh.zone_cp.xds.generators import generate
    from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER
    from zonemesh.zone_cp.xds.testing import load_resources, mesh_context

    web, admin = _replica("web-1", "10.0.0.1", "v1"), _replica("admin-1", "10.0.0.9", "v1")
    admin.spec["networking"]["inbound"][0]["tags"]["kuma.io/service"] = "admin"
    api = _api()
    ctx = await mesh_context([*load_resources(REPLICAS_YAML), web, admin, api])
    one, two = generate(ctx, web), generate(ctx, admin)
    assert one.get(ROUTE, "outbound:api") is not None
    assert one.get(ROUTE, "outbound:api") is two.get(ROUTE, "outbound:api")
    assert one.get(LISTENER, "outbound:127.0.0.1:30001") is two.get(LISTENER, "outbound:127.0.0.1:30001")
    tls = [c.transport_socket.typed_config.value for c in (one.get(CLUSTER, "api"), two.get(CLUSTER, "api"))]
    assert b"identity_cert:secret:web" in tls[0] and b"identity_cert:secret:admin" in tls[1]


# --- shapes whatever the ports: inbounds placed from the shape's templates ---------------------

PORTS_YAML = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: MeshTrafficPermission
name: web-from-api
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from: [{targetRef: {kind: MeshService, name: api}, default: {action: Allow}}]
---
type: MeshTimeout
name: web-inbound
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 7s}, connectionTimeout: 3s}}]
---
type: MeshCircuitBreaker
name: web-inbound-limits
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from: [{targetRef: {kind: Mesh}, default: {connectionLimits: {maxConnections: 11}}}]
"""


def _web(
    name: str,
    address: str,
    ports: list[int],
    *,
    service_ports: list[int | None] | None = None,
    service_address: str | None = None,
) -> Resource:
    """A web replica at ``address`` with an HTTP inbound and a TCP one (metrics) per pair of
    ``ports``; ``service_ports`` None: the app's ports are the inbounds' (servicePort omitted)."""
    inbound: list[dict[str, object]] = []
    for i, port in enumerate(ports):
        service = "web" if i % 2 == 0 else "web-metrics"
        item: dict[str, object] = {
            "port": port,
            "tags": {"kuma.io/service": service, "kuma.io/protocol": "http" if i % 2 == 0 else "tcp", "pod": name},
        }
        if service_ports is not None and service_ports[i] is not None:
            item["servicePort"] = service_ports[i]
        if service_address is not None:
            item["serviceAddress"] = service_address
        inbound.append(item)
    spec = {
        "networking": {
            "address": address,
            "inbound": inbound,
            "outbound": [{"port": 30001, "tags": {"kuma.io/service": "api"}}],
        }
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec=spec, version=1)


def _encoded(resources: ResourceSet) -> dict[str, dict[str, bytes]]:
    return {t: {name: encode_any(t, m) for name, m in by_name.items()} for t, by_name in resources.by_type.items()}


async def _together_and_alone(extra_yaml: str, proxies: list[Resource]) -> tuple[MeshContext, dict[str, ResourceSet]]:
    """Generate ``proxies`` in one round; check each gets, byte for byte, what it gets generated
    alone (a round of its own: nothing shared). Returns the round's context and configs."""
    from zonemesh.zone_cp.xds.generators import generate
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources, mesh_context

    resources = [*load_resources(PORTS_YAML + extra_yaml), *proxies, _api()]
    ca = TestCA()
    shared = await mesh_context(resources, ca=ca)
    together = {dp.name: generate(shared, dp) for dp in proxies}
    for dp in proxies:
        alone = await mesh_context(resources, ca=ca)
        assert _encoded(together[dp.name]) == _encoded(generate(alone, dp)), dp.name
    return shared, together


def _shapes(ctx: MeshContext) -> int:
    """How many shapes the round generated."""
    return sum(1 for key in ctx.memo if isinstance(key, tuple) and key[0] == "shape")


def _own(resources: ResourceSet) -> set[tuple[str, str]]:
    """What a proxy has of its own: its inbounds' listeners and local clusters."""
    from zonemesh.zone_cp.xds.resources import LISTENER

    inbound = {(t, n) for t, n, _ in resources.items() if resources.origin_of(t, n) == "inbound"}
    assert {t for t, _ in inbound} == {CLUSTER, LISTENER}
    return inbound


@pytest.mark.parametrize(
    "replicas",
    [
        pytest.param(
            [_web(f"web-{i}", "127.0.0.1", [20000 + 2 * i, 20001 + 2 * i]) for i in range(4)],
            id="one-address-own-ports-implicit-service-ports",
        ),
        pytest.param(
            [
                _web(f"web-{i}", "127.0.0.1", [20000 + 2 * i, 20001 + 2 * i], service_ports=[40000 + i, None])
                for i in range(4)
            ],
            id="one-address-own-ports-and-service-ports",
        ),
        pytest.param(
            [_web(f"web-{i}", f"10.0.0.{i + 1}", [8080 + i, 9090 + i], service_ports=[80, 90]) for i in range(4)],
            id="own-addresses-and-ports-one-service-port",
        ),
        pytest.param(
            [
                _web(f"web-{i}", f"10.0.0.{i + 1}", [8080 + i, 9090], service_address=f"10.0.0.{i + 1}")
                for i in range(4)
            ],
            id="own-addresses-own-service-addresses",
        ),
    ],
)
async def test_replicas_differing_in_ports_share_their_shape_and_get_what_each_alone_would(
    replicas: list[Resource],
) -> None:
    ctx, together = await _together_and_alone("", replicas)
    assert _shapes(ctx) == 1  # generated once for all four
    first, *others = (together[dp.name] for dp in replicas)
    for other in others:
        assert other.by_type[ROUTE] is first.by_type[ROUTE]  # a copy of the shape's set
        # Each its own inbound listeners and local clusters, at its own ports ...
        assert _own(other) != _own(first)
        # ... and everything else the very same messages (the shape generated once).
        for type_url, name, message in first.items():
            if (type_url, name) not in _own(first):
                assert other.get(type_url, name) is message, (type_url, name)
    # The policies selecting the web inbound are on every replica's local cluster for it.
    from zonemesh.zone_cp.xds.resources import CLUSTER

    for dp in replicas:
        web = dp.spec["networking"]["inbound"][0]
        host = web.get("serviceAddress", "localhost")
        local = together[dp.name].get(CLUSTER, f"{host}:{web.get('servicePort') or web['port']}")
        assert isinstance(local, cluster_pb2.Cluster), dp.name
        assert local.connect_timeout.seconds == 3
        assert local.circuit_breakers.thresholds[0].max_connections.value == 11


SECTION_YAML = """
---
type: MeshTimeout
name: web-port-20002
mesh: default
spec:
  targetRef: {kind: Dataplane, sectionName: "20002"}
  from: [{targetRef: {kind: Mesh}, default: {http: {requestHeadersTimeout: 42s}}}]
---
type: MeshTimeout
name: web-named-admin
mesh: default
spec:
  targetRef: {kind: Dataplane, labels: {team: web}, sectionName: admin}
  from: [{targetRef: {kind: Mesh}, default: {http: {requestHeadersTimeout: 43s}}}]
"""


def _headers_timeouts(resources: ResourceSet) -> dict[str, int]:
    """Per inbound listener, its request headers timeout (0: none)."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    from zonemesh.zone_cp.xds.resources import LISTENER

    found = {}
    for name in resources.names(LISTENER):
        listener = resources.get(LISTENER, name)
        if name.startswith("inbound:") and isinstance(listener, listener_pb2.Listener):
            hcm = hcm_pb2.HttpConnectionManager()
            assert listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
            found[name] = hcm.request_headers_timeout.seconds
    return found


async def test_a_policy_selecting_an_inbound_by_port_or_name_keeps_replicas_apart() -> None:
    """sectionName names an unnamed inbound by its port: the replica listening on that port gets
    the policy, the others do not, though they share everything else; a named inbound is named
    by its name only."""
    replicas = [_web(f"web-{i}", "127.0.0.1", [20000 + 2 * i]) for i in range(3)]  # 20000, 20002, 20004
    spec = _web("web-8", "127.0.0.1", [20002]).spec
    spec["networking"]["inbound"][0]["name"] = "admin"
    named = Resource(type="Dataplane", name="web-8", mesh="default", spec=spec, labels={"team": "web"}, version=1)
    unlabelled = Resource(type="Dataplane", name="web-9", mesh="default", spec=spec, version=1)
    ctx, together = await _together_and_alone(SECTION_YAML, [*replicas, named, unlabelled])
    assert {name: _headers_timeouts(together[name]) for name in together} == {
        "web-0": {"inbound:127.0.0.1:20000": 0},
        "web-1": {"inbound:127.0.0.1:20002": 42},
        "web-2": {"inbound:127.0.0.1:20004": 0},
        "web-8": {"inbound:127.0.0.1:20002": 43},  # named "admin": its port is not its section name
        "web-9": {"inbound:127.0.0.1:20002": 0},  # named "admin", without the label
    }
    # web-0 and web-2 still share their shape; web-1's port and web-8's labels set theirs apart.
    assert together["web-0"].by_type[ROUTE] is together["web-2"].by_type[ROUTE]
    assert _shapes(ctx) == 4


async def test_a_template_naming_its_app_where_placing_does_not_look_is_built_for_each_app() -> None:
    """Should a policy put the local cluster's name somewhere placing does not rewrite, the
    inbound is built for the app instead: a correct config, never one naming the placeholder."""
    from dataclasses import replace

    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    from zonemesh.zone_cp.xds.generators import inbound
    from zonemesh.zone_cp.xds.testing import load_resources, mesh_context

    web = _web("web-0", "127.0.0.1", [20000])
    ctx = await mesh_context([*load_resources(PORTS_YAML), web, _api()])
    [(_, template)] = inbound.templates(ctx, web, {}, ResourceSet())
    assert template.hcm is not None
    odd = hcm_pb2.HttpConnectionManager()
    odd.CopyFrom(template.hcm)
    odd.server_name = inbound._ANY_APP  # as a policy reading the cluster's name might
    for tricky in (replace(template, hcm=odd, key=("odd",)), replace(template, direct=True, key=("direct",))):
        cluster, filters, from_template = inbound._at(ctx, tricky, "127.0.0.1", 40000)
        assert not from_template  # never kept for a later round's placing (MeshContext.placed)
        direct_cluster, direct_listener = inbound._direct(ctx, "web", "http", "127.0.0.1", 40000, template.policies)
        assert cluster.SerializeToString() == direct_cluster.SerializeToString()
        assert [f.SerializeToString() for f in filters] == [
            f.SerializeToString() for f in direct_listener.filter_chains[0].filters
        ]
        assert not inbound._names_any_app(filters)


async def _round(replicas: int, same_service_port: bool) -> tuple[SnapshotBuilder, list[Snapshot]]:
    """One round over ``replicas`` proxies of each of three services, all on 127.0.0.1 with
    their own inbound ports, each calling the next service."""
    from zonemesh.zone_cp.xds.generators import generate
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources, mesh_context

    names = ("web", "api", "db")
    proxies = []
    for i in range(replicas):
        for s, service in enumerate(names):
            port = 20000 + 10 * i + s
            inbound = {"port": port, "servicePort": 8080 if same_service_port else port + 20000}
            inbound["tags"] = {"kuma.io/service": service, "kuma.io/protocol": "http"}
            outbound = [{"port": 30001, "tags": {"kuma.io/service": names[(s + 1) % 3]}}]
            spec = {"networking": {"address": "127.0.0.1", "inbound": [inbound], "outbound": outbound}}
            proxies.append(Resource(type="Dataplane", name=f"{service}-{i}", mesh="default", spec=spec, version=1))
    ctx = await mesh_context([*load_resources(PORTS_YAML.split("---")[0]), *proxies], ca=TestCA())
    builder = SnapshotBuilder()
    return builder, [builder.build(generate(ctx, dp)) for dp in proxies]


@pytest.mark.parametrize("same_service_port", [True, False], ids=["one-service-port", "own-service-ports"])
async def test_a_round_serializes_each_distinct_resource_once_and_per_proxy_only_its_own(
    same_service_port: bool,
) -> None:
    """Serialization per round is O(shapes), plus per proxy what is its own: its inbound listener
    (its address and port), and its local cluster when its app's port is its own."""
    encodes = {}
    for replicas in (2, 6):
        builder, snapshots = await _round(replicas, same_service_port)
        distinct = {data for snap in snapshots for typed in snap.types.values() for data in typed.resources.values()}
        assert builder.encodes == len(distinct)  # nothing equal serialized twice (the local clusters of 3 services)
        encodes[replicas] = builder.encodes
    own = 1 if same_service_port else 2
    assert encodes[6] - encodes[2] == 3 * 4 * own  # 12 more proxies


def test_delta_responses_reuse_each_resources_encoded_head_across_proxies() -> None:
    """A delta response is a join of pre-encoded pieces: per resource its head (name, version,
    lengths), encoded once per round for every proxy holding it, and its shared body."""
    from zonemesh.zone_cp.xds.resources import encode_delta_response

    shared = route_pb2.RouteConfiguration(name="shared", validate_clusters={"value": True})
    cache, builder = SnapshotCache(), SnapshotBuilder()
    for proxy in ("a", "b"):
        routes = ResourceSet()
        routes.add(ROUTE, "shared", shared)
        routes.add(ROUTE, f"own-{proxy}", route_pb2.RouteConfiguration(name=f"own-{proxy}"))  # a TypeSnapshot each
        cache.set_snapshot(f"default/{proxy}", builder.build(routes))
    got: list[DeltaWatchResponse] = []
    for proxy in ("a", "b"):
        names = frozenset({"shared", f"own-{proxy}"})
        cache.create_delta_watch(DeltaWatchRequest(f"default/{proxy}", ROUTE, False, names, {}), got.append)
    one, two = ({name: head for (name, _, _), head in zip(r.resources, r.heads, strict=True)} for r in got)
    assert one["shared"] is two["shared"]
    for resp in got:
        body = encode_delta_response(resp.system_version, resp.resources, resp.removed, ROUTE, "1", resp.heads)
        assert body == encode_delta_response(resp.system_version, resp.resources, resp.removed, ROUTE, "1")
        parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(body)
        assert sorted(r.name for r in parsed.resources) == sorted(name for name, _, _ in resp.resources)
        for item, (name, version, data) in zip(parsed.resources, resp.resources, strict=True):
            assert (item.name, item.version, item.resource.SerializeToString()) == (name, version, data)


# A MeshProxyPatch of web-0's local cluster and inbound listener (``_two_apps_at_one_place``).
PATCH_WEB_0_YAML = """
type: MeshProxyPatch
name: only-web-0
mesh: default
spec:
  targetRef: {kind: Dataplane, name: web-0}
  default:
    appendModifications:
      - cluster: {operation: Patch, match: {name: "localhost:40000"}, value: "connectTimeout: 9s"}
      - listener:
          operation: Patch
          match: {name: "inbound:127.0.0.1:20000"}
          value: "perConnectionBufferLimitBytes: 1024"
"""


def _two_apps_at_one_place() -> list[Resource]:
    """Two web replicas whose apps listen at the same place (localhost:40000)."""
    return [
        _web("web-0", "127.0.0.1", [20000], service_ports=[40000]),
        _web("web-1", "127.0.0.2", [20000], service_ports=[40000]),
    ]


async def test_a_patch_of_one_proxys_local_cluster_does_not_leak_to_those_sharing_it() -> None:
    """Proxies whose apps are at the same address and port share their local cluster, across
    replicas and across services alike; a MeshProxyPatch of one proxy changes its own only."""
    from zonemesh.zone_cp.xds.generators import generate
    from zonemesh.zone_cp.xds.testing import load_resources, mesh_context

    patch, proxies = PATCH_WEB_0_YAML, _two_apps_at_one_place()
    other = _web("admin-0", "127.0.0.3", [20000], service_ports=[40000])
    other.spec["networking"]["inbound"][0]["tags"]["kuma.io/service"] = "admin"
    ctx = await mesh_context([*load_resources(PORTS_YAML.split("---")[0] + "---" + patch), *proxies, other, _api()])
    web0, web1, admin = (generate(ctx, dp) for dp in [*proxies, other])
    local = [r.get(CLUSTER, "localhost:40000") for r in (web0, web1, admin)]
    assert local[1] is local[2]  # one message for web-1 and admin: their apps are at the same place
    assert [c.connect_timeout.seconds for c in local] == [9, 0, 0]  # type: ignore[union-attr]
    listeners = [r.get(LISTENER, f"inbound:127.0.0.{i}:20000") for i, r in ((1, web0), (2, web1), (3, admin))]
    assert [x.per_connection_buffer_limit_bytes.value for x in listeners] == [1024, 0, 0]  # type: ignore[union-attr]


async def test_a_patched_local_cluster_and_listener_stay_that_proxys_own_round_after_round() -> None:
    """With listeners, their local clusters and TypeSnapshots kept across rounds, a MeshProxyPatch
    of one proxy's local cluster and listener still changes its own only, once, every round: each
    proxy gets byte for byte what a round with nothing kept gives."""
    from zonemesh.zone_cp.xds.context import PlacedListener, WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate, inbound
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    patch, proxies = PATCH_WEB_0_YAML, _two_apps_at_one_place()
    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "api")}
    shapes: dict[str, tuple[Resource, object, str]] = {}
    placed: dict[str, dict[int, PlacedListener]] = {}
    snapshots: dict[str, Snapshot] = {}
    for timeout in (5, 6, 7):
        resources = load_resources(PORTS_YAML + "---" + patch + "---" + TO_API_YAML % timeout)
        mesh = next(r for r in resources if r.type == "Mesh")
        policies = [r for r in resources if r.type != "Mesh"]
        dataplanes = [*proxies, _api()]
        kept = MeshContext.build(mesh, dataplanes, policies, certs=certs, shapes=shapes, placed=placed)
        builder = SnapshotBuilder(kept.encoded)
        sets = {dp.name: generate(kept, dp) for dp in proxies}
        together = {name: builder.build(rs, None, snapshots.get(name)) for name, rs in sets.items()}
        snapshots.update(together)
        inbound.keep_placed(kept, builder.encoded)
        if timeout > 5:
            assert len(kept.encoded) == 3  # both listeners and the one local cluster, as placed before
        local = [rs.get(CLUSTER, "localhost:40000") for rs in sets.values()]
        assert [c.connect_timeout.seconds for c in local] == [9, 3]  # type: ignore[union-attr]  # 3: web-inbound
        fresh = MeshContext.build(mesh, dataplanes, policies, certs=certs)
        for dp in proxies:
            alone = SnapshotBuilder().build(generate(fresh, dp))
            for type_url, typed in together[dp.name].types.items():
                assert list(typed.resources.items()) == list(alone.types[type_url].resources.items())


async def test_an_unchanged_proxys_shape_is_kept_across_rounds_and_recomputed_when_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reconciler keeps each proxy's shape between rounds (MeshContext.shapes): the next
    round does not serialize it again unless the Dataplane or what policies select on changed,
    and the config is what a round without it gives."""
    import dataclasses

    from zonemesh.zone_cp.xds import generators
    from zonemesh.zone_cp.xds.context import WorkloadCert, shape
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    computed: list[str] = []

    def counting(dp: Resource, *args: object) -> str:
        computed.append(dp.name)
        return shape(dp, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(generators, "shape", counting)
    mesh = next(r for r in load_resources(PORTS_YAML) if r.type == "Mesh")
    web = _web("web-1", "127.0.0.1", [8080, 9090])
    kept: dict[str, tuple[Resource, object, str]] = {}
    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}

    def round_of(dp: Resource, policies: list[Resource] = []) -> dict[str, dict[str, bytes]]:  # noqa: B006
        kept_ctx = MeshContext.build(mesh, [dp, _api()], policies, certs=certs, shapes=kept)
        fresh = MeshContext.build(mesh, [dp, _api()], policies, certs=certs)
        together = _encoded(generators.generate(kept_ctx, dp))
        assert together == _encoded(generators.generate(fresh, dp))
        return together

    round_of(web)
    assert computed == ["web-1", "web-1"]  # the round keeping shapes, and the fresh one
    computed.clear()
    round_of(web)
    assert computed == ["web-1"]  # only the fresh one
    computed.clear()
    moved = dataclasses.replace(web, spec={**web.spec, "networking": {**web.spec["networking"], "outbound": []}})
    round_of(moved)  # the Dataplane changed: a new object
    assert computed == ["web-1", "web-1"]
    computed.clear()
    subset = load_resources("""
type: MeshTimeout
mesh: default
name: by-pod
spec:
  targetRef: {kind: MeshSubset, tags: {pod: web-1}}
  from: [{targetRef: {kind: Mesh}, default: {idleTimeout: 7s}}]
""")
    round_of(moved, subset)  # policies select on another tag: shapes read it
    assert computed == ["web-1", "web-1"]


TO_API_YAML = """
type: MeshTimeout
name: to-api
mesh: default
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: MeshService, name: api}, default: {http: {requestTimeout: %ds}}}]
"""


async def test_a_listener_placed_in_an_earlier_round_is_reused_only_while_what_it_is_placed_from_is_alike() -> None:
    """The reconciler keeps each proxy's placed inbound listeners between rounds (MeshContext.placed,
    with the bytes its snapshot holds): a round whose templates have the same content at the same
    ports takes those bytes instead of building and serializing the listener again. Every round,
    every proxy gets byte for byte what a round without kept listeners gives, and a listener is
    never taken from an earlier round once its template (an inbound policy, the mesh's mTLS) or
    its ports changed."""
    import dataclasses

    from zonemesh.zone_cp.xds.context import PlacedListener, WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate, inbound
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}
    shapes: dict[str, tuple[Resource, object, str]] = {}
    placed: dict[str, dict[int, PlacedListener]] = {}
    before: dict[str, dict[str, bytes]] = {}
    snapshots: dict[str, Snapshot] = {}

    def round_of(yaml: str, proxies: list[Resource]) -> tuple[int, dict[str, dict[str, bytes]]]:
        """One round keeping shapes and placed listeners, checked against a fresh one; returns how
        many listeners it took from earlier rounds (each with its local cluster: the proxies'
        apps are at ports of their own) and each proxy's listeners."""
        resources = load_resources(yaml)
        mesh = next(r for r in resources if r.type == "Mesh")
        policies = [r for r in resources if r.type != "Mesh"]
        dataplanes = [*proxies, _api()]
        kept = MeshContext.build(mesh, dataplanes, policies, certs=certs, shapes=shapes, placed=placed)
        builder = SnapshotBuilder(kept.encoded)
        # As the reconciler, with each proxy's snapshot of the round before (TypeSnapshots kept).
        together = {dp.name: builder.build(generate(kept, dp), None, snapshots.get(dp.name)) for dp in proxies}
        snapshots.update(together)
        inbound.keep_placed(kept, builder.encoded)
        fresh = MeshContext.build(mesh, dataplanes, policies, certs=certs)
        fresh_builder = SnapshotBuilder()
        for dp in proxies:
            alone = fresh_builder.build(generate(fresh, dp))
            for type_url, typed in together[dp.name].types.items():
                assert dict(typed.resources) == dict(alone.types[type_url].resources), (dp.name, type_url)
                assert typed.version == alone.types[type_url].version
        listeners = {dp.name: dict(together[dp.name].types[LISTENER].resources) for dp in proxies}
        # Taken from earlier rounds: listeners, and the local clusters placed with them.
        taken = [message for message, _, _ in kept.encoded.values()]
        reused = sum(isinstance(m, listener_pb2.Listener) for m in taken)
        assert sum(isinstance(m, cluster_pb2.Cluster) for m in taken) == reused == len(taken) - reused
        return reused, listeners

    web1 = _web("web-1", "127.0.0.1", [20000, 20001], service_ports=[40000, 40001])
    web2 = _web("web-2", "127.0.0.1", [20002, 20003], service_ports=[40002, 40003])
    assert round_of(PORTS_YAML + "---" + TO_API_YAML % 5, [web1, web2])[0] == 0  # nothing placed before
    assert placed.keys() == {"web-1", "web-2"} and all(len(by_index) == 2 for by_index in placed.values())

    # An outbound's policy changed: every inbound listener (2 proxies x 2 inbounds) is taken as it was.
    reused, before = round_of(PORTS_YAML + "---" + TO_API_YAML % 6, [web1, web2])
    assert reused == 4

    # web's inbound policy changed: its HTTP inbounds are placed anew, web-metrics' stay.
    slower = PORTS_YAML.replace("requestTimeout: 7s", "requestTimeout: 8s")
    reused, after = round_of(slower + "---" + TO_API_YAML % 6, [web1, web2])
    assert reused == 2
    for name in ("web-1", "web-2"):
        changed = {n for n in after[name] if after[name][n] != before[name][n]}
        assert changed == {f"inbound:127.0.0.1:{2 * int(name[-1]) + 19998}"}

    # web-2's metrics inbound moved to another port: that listener is placed anew.
    ports = {**web2.spec["networking"]}
    ports["inbound"] = [ports["inbound"][0], {**ports["inbound"][1], "port": 20013}]
    moved = dataclasses.replace(web2, spec={"networking": ports}, version=2)
    reused, after = round_of(slower + "---" + TO_API_YAML % 6, [web1, moved])
    assert reused == 3 and "inbound:127.0.0.1:20013" in after["web-2"]

    # The mesh's mTLS mode changed: every template's listener differs, none is taken.
    permissive = slower.replace("type: builtin}", "type: builtin, mode: PERMISSIVE}")
    assert permissive != slower
    assert round_of(permissive + "---" + TO_API_YAML % 6, [web1, moved])[0] == 0


async def test_a_kept_listeners_local_cluster_is_taken_with_it_and_shared_by_the_apps_at_one_place() -> None:
    """The local cluster placed with a kept listener is its earlier round's bytes too (parsed back,
    not built nor serialized again), one message for the proxies whose apps are at the same place
    (as when built), and every proxy gets byte for byte what a round without kept listeners gives."""
    from zonemesh.zone_cp.xds.context import PlacedListener, WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate, inbound
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}
    shapes: dict[str, tuple[Resource, object, str]] = {}
    placed: dict[str, dict[int, PlacedListener]] = {}
    snapshots: dict[str, Snapshot] = {}
    # As pods: each at its own address, both apps of each on the inbounds' ports.
    proxies = [_web("web-1", "10.0.0.1", [8080, 9090]), _web("web-2", "10.0.0.2", [8080, 9090])]
    for timeout in (5, 6, 7):
        resources = load_resources(PORTS_YAML + "---" + TO_API_YAML % timeout)
        mesh = next(r for r in resources if r.type == "Mesh")
        policies = [r for r in resources if r.type != "Mesh"]
        kept = MeshContext.build(mesh, [*proxies, _api()], policies, certs=certs, shapes=shapes, placed=placed)
        builder = SnapshotBuilder(kept.encoded)
        sets = {dp.name: generate(kept, dp) for dp in proxies}
        together = {name: builder.build(rs, None, snapshots.get(name)) for name, rs in sets.items()}
        snapshots.update(together)
        inbound.keep_placed(kept, builder.encoded)
        fresh = MeshContext.build(mesh, [*proxies, _api()], policies, certs=certs)
        for dp in proxies:
            alone = SnapshotBuilder().build(generate(fresh, dp))
            for type_url, typed in together[dp.name].types.items():
                assert list(typed.resources.items()) == list(alone.types[type_url].resources.items())
        taken = [m for m, _, _ in kept.encoded.values() if isinstance(m, cluster_pb2.Cluster)]
        if timeout == 5:
            assert taken == []  # nothing placed before
            continue
        # web's and web-metrics' local clusters, each one message both proxies hold.
        assert sorted(c.name for c in taken) == ["localhost:8080", "localhost:9090"]
        for cluster in taken:
            assert all(rs.by_type[CLUSTER][cluster.name] is cluster for rs in sets.values())
        # Their bytes are those kept (what the snapshots held), not serialized again.
        for by_index in placed.values():
            for listener in by_index.values():
                assert any(
                    listener.cluster_data is typed.resources[name]
                    for typed in (s.types[CLUSTER] for s in together.values())
                    for name in ("localhost:8080", "localhost:9090")
                )


def test_the_reconciler_forgets_a_dataplanes_placed_listeners_when_it_changes_or_goes() -> None:
    from zonemesh.zone_cp.xds.context import PlacedListener

    view = ZoneView()  # fed by hand: the changes a store watch would bring
    reconciler = Reconciler(view, SnapshotCache(), None)
    view.follow(reconciler._changed)  # as start() does
    view._apply(Event(EventKind.CREATED, Resource(type="Mesh", name="default", version=1)))
    view._apply(Event(EventKind.CREATED, _dp("a-1", "a")))
    placed = reconciler._placed.setdefault("default", {})
    placed["a-1"] = {0: PlacedListener((), b"", "", 0, b"", "", 0)}
    placed["a-2"] = {0: PlacedListener((), b"", "", 0, b"", "", 0)}  # another proxy's stay
    view._apply(Event(EventKind.UPDATED, _dp("a-1", "a", version=2)))
    assert "a-1" not in placed and "a-2" in placed
    placed["a-1"] = {0: PlacedListener((), b"", "", 0, b"", "", 0)}
    view._apply(Event(EventKind.DELETED, _dp("a-1", "a", version=2)))
    assert "a-1" not in placed


async def test_an_inbound_template_is_kept_across_rounds_only_while_what_it_is_built_from_is_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reconciler keeps inbound templates between rounds (MeshContext.templates), by what they
    are built from: the mesh's name and mTLS, the service, its protocol and every part but `to` of
    the inbound policies matched. A change of an outbound's policy (even the `to` of a policy that
    also has a `from`) builds no template again; any change an inbound reads (its policy's `from`,
    a MeshTrafficPermission, the mesh's mTLS mode) builds it anew. Every round, every proxy gets
    byte for byte what a round with nothing kept gives."""
    from zonemesh.zone_cp.xds.context import WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate, inbound
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}
    templates: dict[object, object] = {}
    built: list[str] = []
    real_build = inbound._build_template

    def counting(ctx: MeshContext, service: str, *args: object) -> inbound.Template:
        if ctx.templates is templates:  # the kept round's, not the fresh one's
            built.append(service)
        return real_build(ctx, service, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(inbound, "_build_template", counting)

    def round_of(yaml: str) -> list[str]:
        """One round keeping templates, checked against a fresh one; the services whose templates
        it built."""
        built.clear()
        resources = load_resources(yaml)
        mesh = next(r for r in resources if r.type == "Mesh")
        policies = [r for r in resources if r.type != "Mesh"]
        proxies = [_web("web-1", "127.0.0.1", [20000, 20001]), _web("web-2", "127.0.0.1", [20002, 20003])]
        dataplanes = [*proxies, _api()]
        kept = MeshContext.build(mesh, dataplanes, policies, certs=certs, templates=templates)
        together = {dp.name: SnapshotBuilder().build(generate(kept, dp)) for dp in [*proxies, _api()]}
        inbound.forget_templates(kept)
        fresh = MeshContext.build(mesh, dataplanes, policies, certs=certs)
        for dp in [*proxies, _api()]:
            alone = SnapshotBuilder().build(generate(fresh, dp))
            for type_url, typed in together[dp.name].types.items():
                assert dict(typed.resources) == dict(alone.types[type_url].resources), (dp.name, type_url)
        return sorted(built)

    both_ways = PORTS_YAML.replace(
        "  from: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 7s}, connectionTimeout: 3s}}]",
        "  from: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 7s}, connectionTimeout: 3s}}]\n"
        "  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: %ds}}}]",
    ).replace(
        "targetRef: {kind: MeshService, name: web}\n  from: [{targetRef: {kind: Mesh}, default: {http",
        "targetRef: {kind: Mesh}\n  from: [{targetRef: {kind: Mesh}, default: {http",
    )
    assert "to: [{targetRef: {kind: Mesh}" in both_ways
    assert round_of(both_ways % 5) == ["api", "web", "web-metrics"]  # nothing kept before
    # the `to` of the policy that also has the inbound's `from`: no template built again
    assert round_of(both_ways % 6) == []
    # its `from`: the templates it selects are built again
    slower = (both_ways % 6).replace("requestTimeout: 7s", "requestTimeout: 8s")
    assert round_of(slower) == ["api", "web", "web-metrics"]
    # a MeshTrafficPermission of web: web's template only
    denied = slower.replace("action: Allow", "action: Deny")
    assert round_of(denied) == ["web"]
    # the mesh's mTLS mode: every template
    permissive = denied.replace("type: builtin}", "type: builtin, mode: PERMISSIVE}")
    assert permissive != denied
    assert round_of(permissive) == ["api", "web", "web-metrics"]


def test_replicas_share_one_copy_of_their_shape() -> None:
    """The reconciler keeps every proxy's shape between rounds: replicas hold the same string."""
    from zonemesh.zone_cp.xds.context import shape

    first, second = shape(_replica("web-1", "10.0.0.1", "v1")), shape(_replica("web-2", "10.0.0.2", "v1"))
    assert first == second and first is second


def _api_at(name: str, address: str, port: int, version: str = "v1") -> Resource:
    spec = {
        "networking": {
            "address": address,
            "inbound": [
                {"port": port, "tags": {"kuma.io/service": "api", "kuma.io/protocol": "http", "version": version}}
            ],
        }
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec=spec, version=1)


LOCALITY_YAML = """
type: MeshLoadBalancingStrategy
mesh: default
name: api-same-version
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: api}
      default:
        localityAwareness: {localZone: {affinityTags: [{key: version, weight: 90}]}}
"""

MESH_TLS_YAML = """
type: MeshTLS
mesh: default
name: tls13
spec:
  targetRef: {kind: Mesh}
  rules: [{default: {tlsVersion: {min: TLS13}}}]
"""


async def test_pieces_are_kept_across_rounds_only_while_what_they_are_built_from_is_alike() -> None:
    """The reconciler keeps pieces between rounds by what they are built from (MeshContext.kept,
    kept.py: as their encoding): a destination's endpoints, a caller identity's mTLS cluster, an
    outbound listener, a secret, an app's local cluster. A mesh-wide outbound policy change builds
    and serializes only the routes again; a Dataplane added, moved or gone rebuilds its service's
    endpoints; a MeshLoadBalancingStrategy the endpoints it lays out; a MeshTLS the clusters; a new
    certificate its secret; mTLS off and on everything it touches. Every round, every proxy gets
    byte for byte what a round with nothing kept gives."""
    import dataclasses

    from zonemesh.zone_cp.xds.context import PlacedListener, WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate, inbound
    from zonemesh.zone_cp.xds.kept import Kept
    from zonemesh.zone_cp.xds.resources import ENDPOINT, SECRET
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}
    shapes: dict[str, tuple[Resource, object, str]] = {}
    placed: dict[str, dict[int, PlacedListener]] = {}
    templates: dict[object, object] = {}
    kept = Kept()
    webs = [_web("web-1", "127.0.0.1", [20000, 20001], service_ports=[40000, 40001])]
    webs.append(_web("web-2", "127.0.0.1", [20002, 20003], service_ports=[40002, 40003]))

    def round_of(yaml: str, apis: list[Resource], round_certs: dict[str, WorkloadCert] = certs) -> set[tuple[str, str]]:
        """One round keeping everything the reconciler keeps, checked against a round with nothing
        kept; returns what it built anew (the web proxies' resources whose encoding was not known)."""
        resources = load_resources(yaml)
        mesh = next(r for r in resources if r.type == "Mesh")
        policies = [r for r in resources if r.type != "Mesh"]
        dataplanes = [*webs, *apis]
        ctx = MeshContext.build(
            mesh, dataplanes, policies, certs=round_certs, shapes=shapes, placed=placed, templates=templates, kept=kept
        )
        builder = SnapshotBuilder(ctx.encoded)
        configs = {dp.name: generate(ctx, dp) for dp in dataplanes}
        together = {name: builder.build(config) for name, config in configs.items()}
        inbound.keep_placed(ctx, builder.encoded)
        inbound.forget_templates(ctx)
        kept.after_round(builder.encoded)
        fresh = MeshContext.build(mesh, dataplanes, policies, certs=round_certs)
        for dp in dataplanes:
            alone = SnapshotBuilder().build(generate(fresh, dp))
            for type_url, typed in together[dp.name].types.items():
                assert dict(typed.resources) == dict(alone.types[type_url].resources), (dp.name, type_url)
                assert typed.version == alone.types[type_url].version
        anew = {(t, n) for dp in webs for t, n, m in configs[dp.name].items() if id(m) not in ctx.encoded}
        return anew - {(ROUTE, "outbound:api")}  # routes are built every round: never kept

    apis = [_api_at("api-1", "10.0.1.1", 80)]
    base = PORTS_YAML + "---" + TO_API_YAML
    first = round_of(base % 5, apis)
    assert {(ENDPOINT, "api"), (CLUSTER, "api"), (LISTENER, "outbound:127.0.0.1:30001")} <= first
    assert {(SECRET, "identity_cert:secret:web"), (CLUSTER, "localhost:40000")} <= first

    # A mesh-wide change of an outbound policy: nothing but the route is built again.
    assert round_of(base % 6, apis) == set()

    # A Dataplane of api added, moved, gone: api's endpoints, and nothing else.
    apis = [*apis, _api_at("api-2", "10.0.1.2", 80)]
    assert round_of(base % 6, apis) == {(ENDPOINT, "api")}
    apis[1] = dataclasses.replace(apis[1], spec=_api_at("api-2", "10.0.1.2", 81).spec, version=2)
    assert round_of(base % 6, apis) == {(ENDPOINT, "api")}
    apis = apis[:1]
    assert round_of(base % 6, apis) == {(ENDPOINT, "api")}
    # back to what an earlier round had: taken from that round again
    assert round_of(base % 6, apis) == set()

    # A policy laying the endpoints out (by the callers' version tag): the endpoints again.
    apis = [_api_at("api-1", "10.0.1.1", 80), _api_at("api-2", "10.0.1.2", 80, version="v2")]
    round_of(base % 6, apis)
    locality = base % 6 + "---" + LOCALITY_YAML
    assert (ENDPOINT, "api") in round_of(locality, apis)

    # MeshTLS: the clients' clusters to api (their TLS), and the inbound listeners.
    tls = round_of(locality + "---" + MESH_TLS_YAML, apis)
    assert (CLUSTER, "api") in tls and (ENDPOINT, "api") not in tls

    # A renewed certificate: that service's secret.
    renewed = {**certs, "web": WorkloadCert(*ca.issue("default", "web"))}
    assert round_of(locality + "---" + MESH_TLS_YAML, apis, renewed) == {(SECRET, "identity_cert:secret:web")}

    # mTLS off, then on again: what it touches is built again; back on, the pieces of the last
    # round with mTLS are alike again and taken from it (byte for byte what a fresh round gives).
    plain = (locality + "---" + MESH_TLS_YAML).replace(
        "mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}", "mtls: {}"
    )
    assert plain != locality + "---" + MESH_TLS_YAML
    off = round_of(plain, apis, renewed)
    assert (CLUSTER, "api") in off and (LISTENER, "outbound:127.0.0.1:30001") not in off
    on = round_of(locality + "---" + MESH_TLS_YAML, apis, renewed)
    assert (CLUSTER, "api") not in on and (LISTENER, "inbound:127.0.0.1:20000") in on


@pytest.mark.parametrize("protocol", ["http", "tcp"])
def test_no_inbound_hook_reads_a_policy_of_only_a_target_ref_and_to(protocol: str) -> None:
    """``inbound_content`` leaves such policies out of what an inbound template is kept by: for
    every policy type with an inbound hook, a template built with one is the template built
    without it (mTLS on and off)."""
    from zonemesh.zone_cp.xds.generators import inbound
    from zonemesh.zone_cp.xds.policies import PLUGINS
    from zonemesh.zone_cp.xds.testing import load_resources

    to_api = [{"targetRef": {"kind": "MeshService", "name": "api"}, "default": {}}]
    for mesh_yaml in (PORTS_YAML.split("---")[0], "type: Mesh\nname: default\n"):
        mesh = next(r for r in load_resources(mesh_yaml) if r.type == "Mesh")
        ctx = MeshContext.build(mesh, [], [])
        for plugin in (p for p in PLUGINS if p.inbound is not None):
            policy = Resource(
                type=plugin.type, name="to-only", mesh="default", spec={"targetRef": {"kind": "Mesh"}, "to": to_api}
            )
            alone = inbound._build_template(ctx, "web", protocol, {}, ("without",))
            with_it = inbound._build_template(ctx, "web", protocol, {plugin.type: [policy]}, ("with",))
            assert with_it.fingerprint == alone.fingerprint, plugin.type


async def test_a_policy_on_requests_only_builds_no_inbound_template_again() -> None:
    """Creating, changing or deleting a policy of only a targetRef and ``to`` entries (requests to
    a service; its targetRef selects every proxy) builds no inbound template again: before, its
    creation changed what every selected inbound's template is kept by, and the next round
    regenerating each shape (the next mesh-wide change) built all of them again. Every round,
    every proxy gets byte for byte what a round with nothing kept gives."""
    from zonemesh.zone_cp.xds.context import WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate, inbound
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}
    templates: dict[object, object] = {}
    proxies = [_web("web-1", "127.0.0.1", [20000, 20001]), _api()]

    def round_of(yaml: str) -> int:
        """One round keeping templates, checked against a fresh one; how many templates it built."""
        resources = load_resources(yaml)
        mesh = next(r for r in resources if r.type == "Mesh")
        policies = [r for r in resources if r.type != "Mesh"]
        kept = MeshContext.build(mesh, proxies, policies, certs=certs, templates=templates)
        before = set(templates)
        together = {dp.name: SnapshotBuilder().build(generate(kept, dp)) for dp in proxies}
        inbound.forget_templates(kept)
        fresh = MeshContext.build(mesh, proxies, policies, certs=certs)
        for dp in proxies:
            alone = SnapshotBuilder().build(generate(fresh, dp))
            for type_url, typed in together[dp.name].types.items():
                assert dict(typed.resources) == dict(alone.types[type_url].resources), (dp.name, type_url)
        return len(set(templates) - before)

    assert round_of(PORTS_YAML) == 3  # web, web-metrics, api
    with_policy = PORTS_YAML + "---" + TO_API_YAML
    assert round_of(with_policy % 5) == 0  # created
    assert round_of(with_policy % 6) == 0  # changed
    assert round_of(PORTS_YAML) == 0  # deleted
    # a `from` does concern inbounds: the templates of what it selects are built again
    from_too = (with_policy % 6).replace(
        "  to: [", "  from: [{targetRef: {kind: Mesh}, default: {idleTimeout: 9s}}]\n  to: ["
    )
    assert round_of(from_too) == 3


SUBSET_YAML = """
type: MeshTimeout
mesh: default
name: canary-inbound
spec:
  targetRef: {kind: MeshSubset, tags: {pod: canary}}
  from: [{targetRef: {kind: Mesh}, default: {idleTimeout: 9s}}]
"""


async def test_policy_matches_are_kept_across_rounds_per_type_while_its_policies_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The matches of a policy type are kept across rounds (Kept.matches) while that type's
    policies are the very same objects: a mesh-wide change of one MeshTimeout matches MeshTimeouts
    again and no other type; a Dataplane whose tags changed is matched anew (its tags are part of
    what matches are kept by). Every round, every proxy gets byte for byte what a round with
    nothing kept gives."""
    import dataclasses

    from zonemesh.zone_cp.xds import policies as policy_plugins
    from zonemesh.zone_cp.xds.context import WorkloadCert
    from zonemesh.zone_cp.xds.generators import generate
    from zonemesh.zone_cp.xds.kept import Kept
    from zonemesh.zone_cp.xds.testing import TestCA, load_resources

    matched_types: list[str] = []
    real = policy_plugins.matched

    def counting(ctx: MeshContext, dp: Resource, policy_type: str) -> list[Resource]:
        if ctx.kept is kept:
            matched_types.append(policy_type)
        return real(ctx, dp, policy_type)

    monkeypatch.setattr(policy_plugins, "matched", counting)
    ca = TestCA()
    certs = {s: WorkloadCert(*await ca.workload_cert("default", s)) for s in ("web", "web-metrics", "api")}
    kept = Kept()
    held = {r.name: r for r in load_resources(PORTS_YAML + "---" + SUBSET_YAML) if r.type != "Mesh"}
    mesh = next(r for r in load_resources(PORTS_YAML) if r.type == "Mesh")

    def round_of(proxies: list[Resource], *changed: Resource) -> set[str]:
        """One round keeping matches, checked against a fresh one; the types it matched again."""
        matched_types.clear()
        held.update((r.name, r) for r in changed)  # the view: a changed policy is a new object
        ctx = MeshContext.build(mesh, proxies, held.values(), certs=certs, kept=kept)
        fresh = MeshContext.build(mesh, proxies, held.values(), certs=certs)
        for dp in proxies:
            assert _encoded(generate(ctx, dp)) == _encoded(generate(fresh, dp)), dp.name
        return set(matched_types)

    proxies = [_web("web-1", "127.0.0.1", [20000, 20001]), _api()]
    assert round_of(proxies) == set(policy_plugins.POLICY_TYPES)
    assert round_of(proxies) == set()
    timeout = held["web-inbound"]
    slower = dataclasses.replace(
        timeout, spec={**timeout.spec, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "8s"}}]}
    )
    assert round_of(proxies, slower) == {"MeshTimeout"}
    # the same content in a new object (a re-listed view): matched again, correct either way
    assert round_of(proxies, dataclasses.replace(held["web-from-api"])) == {"MeshTrafficPermission"}
    # web-1 becomes a canary: the unchanged MeshSubset policy now selects it
    tags = proxies[0].spec["networking"]["inbound"][0]["tags"]
    canary = _web("web-1", "127.0.0.1", [20000, 20001])
    canary.spec["networking"]["inbound"][0]["tags"] = {**tags, "pod": "canary"}
    assert round_of([canary, proxies[1]]) == set(policy_plugins.POLICY_TYPES)


async def assert_each_as_alone(reconciler: Reconciler, cache: SnapshotCache, proxies: list[Resource]) -> None:
    """Each connected proxy's snapshot is, byte for byte and version for version, what generating
    it alone from the reconciler's view gives."""
    from zonemesh.zone_cp.xds.proxy import node_key

    for dp in proxies:
        alone = await reconciler.render("default", dp.name)
        snapshot = cache.snapshot(node_key("default", dp.name))
        assert snapshot is not None
        for type_url, typed in SnapshotBuilder().build(alone).types.items():
            assert dict(typed.resources) == dict(snapshot.types[type_url].resources), (dp.name, type_url)
            assert typed.version == snapshot.types[type_url].version, (dp.name, type_url)


async def test_the_reconciler_keeps_pieces_across_its_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real reconciler (a store written as the API writes, the zone view, connected
    proxies): a mesh-wide change of an outbound policy builds no ClusterLoadAssignment, outbound
    cluster or secret again and matches only the changed type; a Dataplane added builds its
    service's endpoints again. What each proxy gets is what a round with nothing kept gives."""
    from zonemesh.shared.resources.manager import ResourceManager
    from zonemesh.shared.store.memory import MemoryStore
    from zonemesh.zone_cp.xds.generators import outbound
    from zonemesh.zone_cp.xds.testing import RecordingCache, TestCA, load_resources, stream_infos

    built: list[str] = []
    real_assignment = outbound.load_assignment
    real_tls = outbound._mesh_tls

    def assignment(name: str, *args: object, **kwargs: object) -> object:
        built.append(f"endpoints:{name}")
        return real_assignment(name, *args, **kwargs)  # type: ignore[arg-type]

    def tls(ctx: MeshContext, service: str, *args: object) -> object:
        built.append(f"tls:{service}")
        return real_tls(ctx, service, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(outbound, "load_assignment", assignment)
    monkeypatch.setattr(outbound, "_mesh_tls", tls)
    store = MemoryStore()
    manager = ResourceManager(store)
    proxies = [_web("web-1", "127.0.0.1", [20000, 20001]), _web("web-2", "127.0.0.1", [20002, 20003]), _api()]
    for res in [*load_resources(PORTS_YAML + "---" + TO_API_YAML % 5), *proxies]:
        await manager.apply(res)
    cache = RecordingCache()
    ca = TestCA()
    reconciler = Reconciler(store, cache, ca)

    async def check() -> None:
        await assert_each_as_alone(reconciler, cache, proxies)
        built.clear()  # what rendering alone built

    async with reconciler:
        for info in stream_infos(*(dp.name for dp in proxies)):
            await reconciler.on_stream_open(info)
        await cache.settle(reconciler)
        assert "endpoints:api" in built and "tls:api" in built
        built.clear()
        await manager.apply(load_resources(TO_API_YAML % 6)[0])  # every proxy's route to api changes
        assert len(await cache.settle(reconciler)) == 2  # web-1 and web-2
        assert built == []
        await check()
        api2 = Resource(type="Dataplane", name="api-2", mesh="default", spec=_api_at("api-2", "10.0.1.2", 80).spec)
        await manager.apply(api2)
        await cache.settle(reconciler)
        assert built == ["endpoints:api"]
        await check()


PATCH_WEB_1_YAML = """
type: MeshProxyPatch
name: only-web-1
mesh: default
spec:
  targetRef: {kind: Dataplane, name: web-1}
  default:
    appendModifications:
      - listener:
          operation: Patch
          match: {name: "inbound:127.0.0.1:20002"}
          value: "perConnectionBufferLimitBytes: 1024"
"""


async def test_a_replica_whose_own_config_is_what_it_was_takes_the_rest_from_its_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real reconciler: once a replica's shape is generated in a round, another
    replica made from what it was made from (the same Dataplane, inbound templates and shape's
    clusters and listeners) keeps its clusters and listeners and takes its other types from its
    shape, generating nothing (``generators.MadeFrom``). Every round, every proxy gets byte for
    byte what generating it alone gives: through a change of routes only, a change of the shape's
    clusters, a Dataplane moved, a MeshProxyPatch of one replica (its own config is more than its
    inbounds: generated, and its replicas with it while it shares their shape) and its removal."""
    from zonemesh.shared.resources.manager import ResourceManager
    from zonemesh.shared.store.memory import MemoryStore
    from zonemesh.zone_cp.xds import reconciler as reconciler_module
    from zonemesh.zone_cp.xds.testing import RecordingCache, TestCA, load_resources, stream_infos

    generated: list[str] = []
    carried: list[int] = []
    real_generate = reconciler_module.generate
    real_carried = SnapshotBuilder.carried

    def counting_generate(ctx: MeshContext, dp: Resource) -> object:
        generated.append(dp.name)
        return real_generate(ctx, dp)

    def counting_carried(self: SnapshotBuilder, *args: object, **kwargs: object) -> object:
        carried.append(1)
        return real_carried(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reconciler_module, "generate", counting_generate)
    monkeypatch.setattr(SnapshotBuilder, "carried", counting_carried)
    store = MemoryStore()
    manager = ResourceManager(store)
    webs = [_web(f"web-{i}", "127.0.0.1", [20000 + 2 * i, 20001 + 2 * i]) for i in range(1, 4)]
    proxies = [*webs, _api()]
    for res in [*load_resources(PORTS_YAML + "---" + TO_API_YAML % 5), *proxies]:
        await manager.apply(res)
    cache = RecordingCache()
    reconciler = Reconciler(store, cache, TestCA())

    async def round_of(change: Resource | None = None, delete: tuple[str, str] | None = None) -> tuple[int, int]:
        """Apply a change, let the reconciler push it; (proxies generated, proxies carried)."""
        generated.clear()
        carried.clear()
        if change is not None:
            await manager.apply(change)
        if delete is not None:
            await manager.delete(delete[0], delete[1], "default")
        await cache.settle(reconciler)
        counts = len(generated), len(carried)
        await assert_each_as_alone(reconciler, cache, proxies)
        return counts

    def timeout_to_api(yaml: str) -> Resource:
        return load_resources(yaml)[0]

    async with reconciler:
        for info in stream_infos(*(dp.name for dp in proxies)):
            await reconciler.on_stream_open(info)
        assert (await round_of())[1] == 0  # nothing to carry from yet
        # Routes only: the first replica generates the shape, the two others take it.
        assert await round_of(timeout_to_api(TO_API_YAML % 6)) == (1, 2)
        # The shape's clusters change (an outbound connection timeout): every replica is generated.
        with_clusters = TO_API_YAML.replace("{http:", "{connectionTimeout: 4s, http:")
        assert await round_of(timeout_to_api(with_clusters % 7)) == (3, 0)
        assert await round_of(timeout_to_api(with_clusters % 8)) == (1, 2)
        # A replica moved: only it is regenerated (nobody calls web), then it is carried again.
        moved = _web("web-2", "127.0.0.1", [21000, 21001])
        proxies[1] = moved
        assert await round_of(moved) == (1, 0)
        assert await round_of(timeout_to_api(with_clusters % 9)) == (1, 2)
        # A MeshProxyPatch of web-1 (selected by name: a shape of its own, more than its inbounds).
        assert (await round_of(load_resources(PORTS_YAML.split("---")[0] + "---" + PATCH_WEB_1_YAML)[1]))[1] == 0
        assert await round_of(timeout_to_api(with_clusters % 10)) == (2, 1)  # web-1, and one of web-2 and web-3
        await round_of(delete=("MeshProxyPatch", "only-web-1"))
        assert await round_of(timeout_to_api(with_clusters % 11)) == (1, 2)
