"""Zone ingress/egress on the zone control plane over real gRPC + TLS on 127.0.0.1: zone-token
admission (registration and ADS), ZoneIngress/ZoneEgress registration, and the config the
zone proxy reconciler pushes (read back from the snapshot cache)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
import pytest
import structlog
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, struct_pb2
from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc
from zonemesh.shared.config import Config
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tls import ensure_self_signed
from zonemesh.shared.tokens.zone import ZoneTokenIssuer
from zonemesh.zone_cp import admission
from zonemesh.zone_cp.admission import DataplaneAuthenticator
from zonemesh.zone_cp.insights import StreamFinalizer, ZoneProxyInsights
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.crosszone import is_online
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER
from zonemesh.zone_cp.xds.server import Callbacks, TlsFiles, XdsServer
from zonemesh.zone_cp.xds.testing import TestCA
from zonemesh.zone_cp.xds.zoneproxies import ZoneProxyReconciler

ZONE = "zone-1"
INGRESS = {"type": "ZoneIngress", "networking": {"address": "127.0.0.1", "port": 10001}}
MESH = Resource(
    type="Mesh",
    name="default",
    spec={"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}},
)


@dataclass
class Zone:
    store: MemoryStore
    channel: grpc.aio.Channel
    cache: SnapshotCache
    proxies: ZoneProxyReconciler

    async def token(self, scope: list[str], zone: str = ZONE) -> str:
        return await ZoneTokenIssuer(self.store).issue(zone, scope, 3600)

    async def register(
        self, token: str, doc: Any = INGRESS, proxy_type: str = "ingress"
    ) -> dataplane_pb2.RegisterResponse:
        stub = dataplane_pb2_grpc.DataplaneRegistrationStub(self.channel)
        request = dataplane_pb2.RegisterRequest(
            name="ingress-1", proxy_type=proxy_type, dataplane_json=json.dumps(doc) if not isinstance(doc, str) else doc
        )
        response: dataplane_pb2.RegisterResponse = await stub.Register(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
        return response

    async def idle(self) -> None:
        """Every store change so far has been seen by the zone proxies' reconciler (bounded: 10 s)."""
        async with asyncio.timeout(10):
            await self.proxies.idle()

    def ads(self, token: str, proxy_type: str = "ingress") -> Any:
        call = self.channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(metadata=(("authorization", f"Bearer {token}"),))
        return call

    @staticmethod
    def request(proxy_type: str = "ingress", type_url: str = LISTENER) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url)
        request.node.id = ".ingress-1"
        request.node.metadata.CopyFrom(struct_pb2.Struct())
        request.node.metadata.update({"proxyType": proxy_type})
        return request


@pytest.fixture
async def zone(tmp_path: Path) -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store, mode=Mode.ZONE, zone=ZONE)
    await store.create(MESH.copy())
    cert, key = ensure_self_signed(tmp_path, "xds", ["127.0.0.1"])
    cache = SnapshotCache()
    dataplanes = DataplaneAuthenticator(store)
    zone_auth = admission.ZoneProxyAuthenticator(store, ZONE)
    zone_insights = ZoneProxyInsights(store, "cp-test", ZONE)
    registration = admission.Registration(manager, dataplanes, zone_auth, None, "cp-test", zone_insights=zone_insights)
    proxies = ZoneProxyReconciler(store, cache, TestCA(), ZONE, quiet=0.01)
    callbacks = Callbacks()
    callbacks.stream_open.append(proxies.on_stream_open)
    callbacks.stream_close.append(proxies.on_stream_close)
    registration.zone_insights.install(callbacks)
    config = Config(xds_address="127.0.0.1", xds_port=0)
    authenticator = admission.Authenticator(dataplanes, zone_auth)
    server = XdsServer(config, cache, authenticator, TlsFiles(cert, key), [registration.add_to], callbacks)
    async with proxies.running(), server:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
            yield Zone(store, channel, cache, proxies)


async def test_register_with_a_zone_token_then_unregister(zone: Zone) -> None:
    token = await zone.token(["ingress"])
    # availableServices sent by an agent are ignored: the zone control plane owns them
    doc = {**INGRESS, "availableServices": [{"tags": {"kuma.io/service": "x"}, "instances": 9, "mesh": "default"}]}
    response = await zone.register(token, doc)
    assert response.created
    stored = await zone.store.get("ZoneIngress", "ingress-1")
    assert stored.spec["zone"] == ZONE and stored.spec["availableServices"] == []
    assert stored.labels["zonemesh.io/zone"] == ZONE  # stamped: KDS uploads it as this zone's
    stub = dataplane_pb2_grpc.DataplaneRegistrationStub(zone.channel)
    result = await stub.Unregister(
        dataplane_pb2.UnregisterRequest(name="ingress-1", proxy_type="ingress"),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    assert result.deleted and await zone.store.find("ZoneIngress", "ingress-1") is None


@pytest.mark.parametrize(
    ("scope", "token_zone", "proxy_type", "reason"),
    [
        (["egress"], ZONE, "ingress", "does not include 'ingress'"),
        (["ingress"], ZONE, "egress", "does not include 'egress'"),
        (["ingress"], "zone-2", "ingress", "issued for zone 'zone-2', not for zone 'zone-1'"),
    ],
)
async def test_wrong_zone_tokens_are_refused_at_both_doors(
    zone: Zone, scope: list[str], token_zone: str, proxy_type: str, reason: str
) -> None:
    token = await zone.token(scope, token_zone)
    doc = INGRESS if proxy_type == "ingress" else {"type": "ZoneEgress", "networking": {"port": 10002}}
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token, doc, proxy_type)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in (err.value.details() or "")
    assert any(e["event"] == "zone_proxy_auth_refused" and reason in e["reason"] for e in logs)
    assert token not in json.dumps(logs, default=str)
    assert not (await zone.store.list("ZoneIngress")).items and not (await zone.store.list("ZoneEgress")).items

    call = zone.ads(token)
    await call.write(zone.request(proxy_type))
    with pytest.raises(grpc.aio.AioRpcError) as ads_err:
        await asyncio.wait_for(call.read(), timeout=5)
    assert ads_err.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in (ads_err.value.details() or "")


async def test_a_dataplane_token_is_no_zone_token(zone: Zone) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register("not.a.token")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "ZoneIngress", "networking": {"address": "127.0.0.1"}}, "networking.port"),
        ({"type": "ZoneIngress", "networking": {"port": 1, "advertisedPort": 2}}, "networking.advertisedAddress"),
        ({"type": "Dataplane", "networking": {"port": 1}}, "ZoneIngress"),
    ],
)
async def test_an_invalid_zone_ingress_is_refused_field_by_field(zone: Zone, doc: Any, reason: str) -> None:
    token = await zone.token(["ingress"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token, doc)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the ZoneIngress is not valid" in (err.value.details() or "") and reason in (err.value.details() or "")
    assert await zone.store.find("ZoneIngress", "ingress-1") is None


async def test_connected_ingress_gets_sni_chains_for_local_services(zone: Zone) -> None:
    token = await zone.token(["ingress"])
    await zone.register(token)
    await zone.store.create(
        Resource(
            type="Dataplane",
            name="b-1",
            mesh="default",
            spec={
                "networking": {"address": "127.0.0.1", "inbound": [{"port": 9000, "tags": {"kuma.io/service": "b"}}]}
            },
        )
    )
    call = zone.ads(token)
    await call.write(zone.request("ingress", CLUSTER))
    response = await asyncio.wait_for(call.read(), timeout=5)
    names = sorted(r.value for r in response.resources)  # packed clusters: names appear in their bytes
    assert any(b"b{mesh=default}" in n for n in names)
    snapshot = zone.cache.snapshot("ingress:/ingress-1")
    assert snapshot is not None and "b{mesh=default}" in snapshot.types[CLUSTER].resources
    call.cancel()
    # the stream closed: the snapshot goes
    for _ in range(100):
        if zone.cache.snapshot("ingress:/ingress-1") is None:
            break
        await asyncio.sleep(0.02)
    assert zone.cache.snapshot("ingress:/ingress-1") is None


def serving(name: str, service: str) -> Resource:
    net = {"address": "127.0.0.1", "inbound": [{"port": 9000, "tags": {"kuma.io/service": service}}]}
    return Resource(type="Dataplane", name=name, mesh="default", spec={"networking": net})


async def test_dataplane_changes_make_a_zone_proxy_round_only_while_one_is_connected(zone: Zone) -> None:
    """The reconciler follows the zone's view: a Dataplane is read only by the zone proxies' config
    (not by the cross-zone views), so with none connected its changes make no round (each one
    made a round that listed the zone's resources again)."""
    await zone.idle()
    quiet = zone.proxies.rounds
    for i in range(5):
        await zone.store.create(serving(f"a-{i}", "a"))
    await zone.idle()
    assert zone.proxies.rounds == quiet

    token = await zone.token(["ingress"])
    await zone.register(token)
    call = zone.ads(token)
    await call.write(zone.request("ingress", CLUSTER))
    await asyncio.wait_for(call.read(), timeout=5)
    await zone.idle()
    connected = zone.proxies.rounds
    await zone.store.create(serving("c-1", "c"))
    await zone.idle()
    assert zone.proxies.rounds > connected
    snapshot = zone.cache.snapshot("ingress:/ingress-1")
    assert snapshot is not None and "c{mesh=default}" in snapshot.types[CLUSTER].resources
    call.cancel()


async def test_cross_zone_view_follows_remote_ingresses(zone: Zone) -> None:
    changed: list[str] = []
    services: list[tuple[str, set[str]]] = []
    zone.proxies.views.follow(changed.append, lambda mesh, names: services.append((mesh, names)))
    remote = Resource(
        type="ZoneIngress",
        name="zone-2.ingress",
        labels={"zonemesh.io/origin": "zone", "zonemesh.io/zone": "zone-2"},
        spec={
            "zone": "zone-2",
            "networking": {"address": "10.2.0.1", "port": 10001},
            "availableServices": [{"tags": {"kuma.io/service": "b"}, "instances": 2, "mesh": "default"}],
        },
    )
    await zone.store.create(remote)
    await zone.idle()
    cross = zone.proxies.cross_zone("default")
    assert cross is not None and not cross.remote  # no insight: it never held a stream, not used
    await zone.store.create(insight("ZoneIngressInsight", "zone-2.ingress", online=True))
    await zone.idle()
    cross = zone.proxies.cross_zone("default")
    assert cross is not None and [(e.address, e.weight, e.zone) for e in cross.remote["b"]] == [
        ("10.2.0.1", 2, "zone-2")
    ]
    assert services == [("default", {"b"})] and changed == []  # only b's consumers need regenerating
    # the remote ingress's stream closed (killed, never unregistered): it is no endpoint any more
    await zone.store.update(insight("ZoneIngressInsight", "zone-2.ingress", online=False, version=1))
    await zone.idle()
    cross = zone.proxies.cross_zone("default")
    assert cross is not None and not cross.remote.get("b")
    assert services[-1] == ("default", {"b"})
    # an egress appearing changes every outbound of the mesh (with routing.zoneEgress), once online
    await zone.store.create(
        Resource(type="ZoneEgress", name="egress-1", spec={"zone": ZONE, "networking": {"port": 1}})
    )
    await zone.idle()
    assert changed == [] and not zone.proxies.cross_zone("default").egress  # type: ignore[union-attr]
    await zone.store.create(insight("ZoneEgressInsight", "egress-1", online=True))
    await zone.idle()
    assert changed == ["default"]


async def test_a_bad_remote_ingress_is_skipped_and_later_changes_still_apply(zone: Zone) -> None:
    """Another zone's ingress that fails validation (here a port that is not one), or whose insight
    is malformed, is left out alone: the rest of the cross-zone view is built, then and later."""
    labels = {"zonemesh.io/origin": "zone"}

    def remote(zone_name: str, service: str, port: Any = 10001) -> Resource:
        return Resource(
            type="ZoneIngress",
            name=f"{zone_name}.ingress",
            labels={**labels, "zonemesh.io/zone": zone_name},
            spec={
                "zone": zone_name,
                "networking": {"address": "10.2.0.1", "port": 10001, "advertisedAddress": "10.9.0.1",
                               "advertisedPort": port},
                "availableServices": [{"tags": {"kuma.io/service": service}, "instances": 1, "mesh": "default"}],
            },
        )  # fmt: skip

    ignored = prometheus_client.REGISTRY.get_sample_value(
        "xds_resource_ignored_total", {"resource_type": "ZoneIngress"}
    )
    await zone.store.batch(
        upserts=[
            remote("zone-bad", "b", port="not-a-port"),
            insight("ZoneIngressInsight", "zone-bad.ingress", online=True),
            remote("zone-2", "b"),
            insight("ZoneIngressInsight", "zone-2.ingress", online=True),
            remote("zone-4", "d"),
            Resource(type="ZoneIngressInsight", name="zone-4.ingress", spec={"subscriptions": ["not an object"]}),
        ]
    )
    cross = await _cross_zone_with(zone, "b")
    assert [(e.address, e.port, e.zone) for e in cross.remote["b"]] == [("10.9.0.1", 10001, "zone-2")]
    assert "d" not in cross.remote
    # a legitimate change after the bad ones still reaches the view
    await zone.store.batch(
        upserts=[remote("zone-3", "c"), insight("ZoneIngressInsight", "zone-3.ingress", online=True)]
    )
    cross = await _cross_zone_with(zone, "c")
    assert [(e.address, e.zone) for e in cross.remote["c"]] == [("10.9.0.1", "zone-3")]
    after = prometheus_client.REGISTRY.get_sample_value("xds_resource_ignored_total", {"resource_type": "ZoneIngress"})
    assert (after or 0) == (ignored or 0) + 1  # once per version, not once per round


async def _cross_zone_with(zone: Zone, service: str) -> Any:
    await zone.idle()
    cross = zone.proxies.cross_zone("default")
    assert cross is not None and cross.remote.get(service), f"service {service} is not in the cross-zone view: {cross}"
    return cross


def insight(rtype: str, name: str, *, online: bool, version: int = 0) -> Resource:
    subscription = {"id": "s-1", "controlPlaneInstanceId": "cp", "connectTime": "2026-01-01T00:00:00Z"}
    if not online:
        subscription["disconnectTime"] = "2026-01-01T00:01:00Z"
    return Resource(type=rtype, name=name, spec={"subscriptions": [subscription]}, version=version)


async def test_zone_proxy_streams_are_tracked_in_its_insight(zone: Zone) -> None:
    token = await zone.token(["ingress"])
    await zone.register(token)
    call = zone.ads(token)
    await call.write(zone.request("ingress", CLUSTER))
    await asyncio.wait_for(call.read(), timeout=5)

    async def stored() -> Resource | None:
        return await zone.store.find("ZoneIngressInsight", "ingress-1")

    first = await stored()
    assert first is not None and is_online(first)
    assert first.spec["subscriptions"][-1]["controlPlaneInstanceId"] == "cp-test"
    call.cancel()  # what a SIGKILLed Envoy's stream looks like to the server
    for _ in range(100):
        if not is_online(await stored()):
            break
        await asyncio.sleep(0.02)
    closed = await stored()
    assert closed is not None and not is_online(closed) and closed.spec["subscriptions"][-1]["disconnectTime"]
    # reconnect: a new open subscription after the closed one
    call = zone.ads(token)
    await call.write(zone.request("ingress", CLUSTER))
    await asyncio.wait_for(call.read(), timeout=5)
    again = await stored()
    assert again is not None and is_online(again) and len(again.spec["subscriptions"]) == 2
    call.cancel()
    # unregistering removes the insight with the ZoneIngress
    stub = dataplane_pb2_grpc.DataplaneRegistrationStub(zone.channel)
    await stub.Unregister(
        dataplane_pb2.UnregisterRequest(name="ingress-1", proxy_type="ingress"),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    assert await stored() is None


async def test_open_subscriptions_of_replicas_no_longer_alive_are_closed_by_the_leader() -> None:
    """A zone replica killed (or this one's previous run) leaves its streams open in the insights:
    the leader closes them; a live replica's stay open, another zone's are not this zone's to close."""
    store = MemoryStore()
    await store.create(insight("ZoneIngressInsight", "ingress-1", online=True))  # of "cp", gone
    live = insight("ZoneIngressInsight", "ingress-2", online=True)
    live.spec["subscriptions"][0]["controlPlaneInstanceId"] = "cp-2"
    await store.create(live)
    remote = insight("ZoneIngressInsight", "zone-2.ingress", online=True)
    remote.labels = {"zonemesh.io/origin": "global", "zonemesh.io/zone": "zone-2"}
    await store.create(remote)
    sidecar = insight("DataplaneInsight", "web-1", online=True)
    sidecar.mesh = "default"
    await store.create(sidecar)

    async def members() -> set[str]:
        return {"cp-2"}

    assert await StreamFinalizer(store, members, ZONE).sweep() == 2
    assert not is_online(await store.get("ZoneIngressInsight", "ingress-1"))
    assert not is_online(await store.get("DataplaneInsight", "web-1", "default"))
    assert is_online(await store.get("ZoneIngressInsight", "ingress-2"))
    assert is_online(await store.get("ZoneIngressInsight", "zone-2.ingress"))
    assert await StreamFinalizer(store, members, ZONE).sweep() == 0


# --- issue 15: zone proxy names follow the API's rule ----------------------------------------------


@pytest.mark.parametrize("name", ["Evil/Name \u00fc", "a_b", ""])
async def test_zone_proxy_register_and_unregister_check_names(zone: Zone, name: str) -> None:
    token = await zone.token(["ingress"])
    stub = dataplane_pb2_grpc.DataplaneRegistrationStub(zone.channel)
    auth = (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        request = dataplane_pb2.RegisterRequest(name=name, proxy_type="ingress", dataplane_json=json.dumps(INGRESS))
        await stub.Register(request, metadata=auth, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("Invalid resource name: name: ")
    assert (await zone.store.list("ZoneIngress")).items == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Unregister(dataplane_pb2.UnregisterRequest(name=name, proxy_type="ingress"), metadata=auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_zone_proxy_node_id_follows_the_name_rule(zone: Zone) -> None:
    call = zone.ads(await zone.token(["ingress"]))
    request = zone.request()
    request.node.id = ".Evil/Name"
    await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node id '.Evil/Name'" in (err.value.details() or "")


async def test_the_egress_follows_a_load_balancing_strategy_change(zone: Zone) -> None:
    """A MeshLoadBalancingStrategy selecting every sidecar orders the other zones behind the zone
    egress: created, it regenerates the connected egress; its failover order reaches the egress's
    endpoints (zone-3 first, then zone-2)."""
    for remote in ("zone-2", "zone-3"):
        name = f"{remote}.ingress"
        await zone.store.create(
            Resource(
                type="ZoneIngress",
                name=name,
                labels={"zonemesh.io/origin": "zone", "zonemesh.io/zone": remote},
                spec={
                    "zone": remote,
                    "networking": {"address": f"10.{remote[-1]}.0.1", "port": 10001},
                    "availableServices": [{"tags": {"kuma.io/service": "b"}, "instances": 1, "mesh": "default"}],
                },
            )
        )
        await zone.store.create(insight("ZoneIngressInsight", name, online=True))
    token = await zone.token(["egress"])
    await zone.register(token, {"type": "ZoneEgress", "networking": {"address": "127.0.0.1", "port": 10002}}, "egress")
    call = zone.ads(token, "egress")
    await call.write(zone.request("egress", CLUSTER))
    await asyncio.wait_for(call.read(), timeout=5)

    def priorities() -> list[tuple[int, str]]:
        snapshot = zone.cache.snapshot("egress:/ingress-1")
        assert snapshot is not None
        packed = any_pb2.Any.FromString(snapshot.types[ENDPOINT].resources["b{mesh=default}"])
        cla = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(cla)
        return [(g.priority, g.locality.zone) for g in cla.endpoints]

    await zone.idle()
    assert priorities() == [(0, "zone-2"), (0, "zone-3")]  # no policy: every other zone alike
    policy = {
        "type": "MeshLoadBalancingStrategy",
        "mesh": "default",
        "name": "zone-3-first",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "localityAwareness": {
                            "crossZone": {
                                "failover": [{"to": {"type": "Only", "zones": ["zone-3"]}}, {"to": {"type": "Any"}}]
                            }
                        }
                    },
                }
            ],
        },
    }
    await zone.store.create(from_universal(policy)[0])
    await zone.idle()
    assert priorities() == [(0, "zone-3"), (1, "zone-2")]
    call.cancel()


# --- issue 19: nothing proportional to the proxies while nothing changes -----------------------


async def test_the_finalizer_reads_every_insight_only_when_the_live_replicas_change() -> None:
    """A sweep reads every insight of the zone: it runs at start, when the set of live replicas
    changes, and after a sweep that lost a race, not every interval while the replicas stay up."""
    store = MemoryStore()
    left_open = insight("DataplaneInsight", "web-1", online=True)
    left_open.mesh = "default"
    await store.create(left_open)
    alive = {"cp"}  # the instance that holds web-1's stream
    calls = 0

    async def members() -> set[str]:
        nonlocal calls
        calls += 1
        return set(alive)

    async def rounds(n: int) -> None:
        start = calls
        for _ in range(2000):  # bounded: each round calls members() once
            if calls >= start + n:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the finalizer's loop did not run")

    finalizer = StreamFinalizer(store, members, ZONE, interval=0.001)
    async with finalizer.running():
        await rounds(5)
        assert finalizer.sweeps == 1  # at start only
        alive.add("cp-2")  # a replica joins: the set changed, nothing to close
        await rounds(5)
        assert finalizer.sweeps == 2
        assert is_online(await store.get("DataplaneInsight", "web-1", "default"))
        alive.discard("cp")  # the replica that held web-1's stream is gone
        await rounds(5)
        assert finalizer.sweeps == 3
    assert not is_online(await store.get("DataplaneInsight", "web-1", "default"))
