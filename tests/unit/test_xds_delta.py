"""Delta (incremental) ADS over real gRPC on 127.0.0.1, driven the way Envoy drives it: a
recording client that subscribes, ACKs and NACKs by nonce, and reconnects naming what it has.
Each test checks what is sent to whom: only the resources that changed, the names removed,
nothing that the proxy already has."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import REGISTRY as METRICS
from zonemesh.shared.config import Config
from zonemesh.shared.store import Store
from zonemesh.zone_cp.xds import names as names_module
from zonemesh.zone_cp.xds import server as server_module
from zonemesh.zone_cp.xds.cache import DeltaWatchRequest, Snapshot, SnapshotCache, TypeSnapshot, resource_version
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, encode_any
from zonemesh.zone_cp.xds.server import Admission, Callbacks, StreamInfo, XdsServer

NODE = "default/web-1"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def cluster(name: str, timeout: int) -> bytes:
    msg = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    msg.connect_timeout.seconds = timeout
    return encode_any(CLUSTER, msg)


def endpoints(name: str, port: int) -> bytes:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
    return encode_any(ENDPOINT, cla)


def snapshot(
    clusters: Mapping[str, int], eds: Mapping[str, int] | None = None, changed_at: float | None = None
) -> Snapshot:
    """Clusters by name -> connect timeout; endpoints by name -> port (default: one per cluster)."""
    eds = {name: 8080 for name in clusters} if eds is None else eds
    return Snapshot(
        {
            CLUSTER: TypeSnapshot.of({name: cluster(name, t) for name, t in clusters.items()}),
            ENDPOINT: TypeSnapshot.of({name: endpoints(name, port) for name, port in eds.items()}),
        },
        changed_at,
    )


async def admit(metadata: Any, node: base_pb2.Node) -> Admission:
    async def still_valid(store: Store) -> None:
        return None

    return Admission(ProxyIdentity("default", "web-1"), "test token", time.time() + 3600, still_valid)


def sent(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    """name -> version of the resources a response carries."""
    return {r.name: r.version for r in response.resources}


class DeltaEnvoy:
    """One delta ADS stream, recording every response; requests as Envoy makes them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(
            DELTA,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )()
        self.received: list[discovery_pb2.DeltaDiscoveryResponse] = []
        self.responses: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())  # one reader: cancelling a read cancels the RPC
        self.first = True

    async def _read(self) -> None:
        while (response := await self.call.read()) is not grpc.aio.EOF:
            assert isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
            self.received.append(response)
            self.responses.put_nowait(response)

    def close(self) -> None:
        self.reader.cancel()
        self.call.cancel()

    async def send(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        nonce: str = "",
        error: str = "",
        initial: Mapping[str, str] | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=dict(initial or {}),
        )
        if self.first:
            request.node.id = "default.web-1"
            self.first = False
        if error:
            request.error_detail.message = error
        await self.call.write(request)

    async def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        await self.send(response.type_url, nonce=response.nonce)

    async def receive(self) -> discovery_pb2.DeltaDiscoveryResponse:
        async with asyncio.timeout(2.0):
            return await self.responses.get()

    async def nothing(self, within: float = 0.3) -> bool:
        await asyncio.sleep(within)
        return self.responses.empty()


@dataclass
class Ads:
    cache: SnapshotCache
    server: XdsServer
    channel: grpc.aio.Channel
    acks: list[tuple[str, str]] = field(default_factory=list)  # (type_url, version)
    nacks: list[tuple[str, str, str]] = field(default_factory=list)  # (type_url, version, error)
    streams: list[DeltaEnvoy] = field(default_factory=list)

    def envoy(self) -> DeltaEnvoy:
        stream = DeltaEnvoy(self.channel)
        self.streams.append(stream)
        return stream


@pytest.fixture
async def ads() -> AsyncIterator[Ads]:
    cache = SnapshotCache()
    callbacks = Callbacks()
    server = XdsServer(Config(xds_address="127.0.0.1", xds_port=0), cache, admit, None, (), callbacks)
    async with server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ads = Ads(cache, server, channel)

        async def on_ack(info: StreamInfo, type_url: str, version: str) -> None:
            ads.acks.append((type_url, version))

        async def on_nack(info: StreamInfo, type_url: str, version: str, error: str) -> None:
            ads.nacks.append((type_url, version, error))

        callbacks.ack.append(on_ack)
        callbacks.nack.append(on_nack)
        yield ads
        for stream in ads.streams:
            stream.close()


async def test_only_changed_resources_are_sent_and_removed_ones_named(ads: Ads) -> None:
    first = snapshot({"a": 1, "b": 1})
    ads.cache.set_snapshot(NODE, first)
    envoy = ads.envoy()
    await envoy.send(CLUSTER)  # wildcard, as Envoy subscribes to clusters
    initial = await envoy.receive()
    # Every resource versioned by the hash of its bytes; the type's version for logs and hooks.
    assert sent(initial) == {"a": resource_version(cluster("a", 1)), "b": resource_version(cluster("b", 1))}
    assert initial.system_version_info == first.version(CLUSTER) and not initial.removed_resources
    await envoy.ack(initial)
    assert await envoy.nothing()

    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 2}))
    changed = await envoy.receive()
    assert sent(changed) == {"b": resource_version(cluster("b", 2))} and not changed.removed_resources
    await envoy.ack(changed)

    ads.cache.set_snapshot(NODE, snapshot({"b": 2}))
    removal = await envoy.receive()
    assert (sent(removal), list(removal.removed_resources)) == ({}, ["a"])
    await envoy.ack(removal)
    ads.cache.set_snapshot(NODE, snapshot({"b": 2}))  # the same again: nothing to send
    assert await envoy.nothing()
    assert [v for t, v in ads.acks if t == CLUSTER] == [
        first.version(CLUSTER),
        changed.system_version_info,
        removal.system_version_info,
    ]


async def test_named_subscriptions_follow_subscribe_and_unsubscribe(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({}, {"x": 1, "y": 1, "z": 1}))
    envoy = ads.envoy()
    await envoy.send(ENDPOINT, subscribe=["x", "y"])
    first = await envoy.receive()
    assert set(sent(first)) == {"x", "y"}
    await envoy.ack(first)
    await envoy.send(ENDPOINT, subscribe=["z"])
    assert set(sent(await envoy.receive())) == {"z"}  # only the new name
    await envoy.send(ENDPOINT, unsubscribe=["y"])
    assert await envoy.nothing()  # an unsubscribe is not answered with a removal
    ads.cache.set_snapshot(NODE, snapshot({}, {"x": 1, "y": 2, "z": 1}))
    assert await envoy.nothing()  # y changed, but it no longer wants it
    ads.cache.set_snapshot(NODE, snapshot({}, {"x": 2, "y": 2, "z": 1}))
    assert set(sent(await envoy.receive())) == {"x"}
    await envoy.send(ENDPOINT, subscribe=["y", "missing"])
    again = await envoy.receive()
    assert set(sent(again)) == {"y"} and not again.removed_resources  # a name that does not exist: nothing


async def test_a_reconnecting_proxy_gets_only_what_changed_meanwhile(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1, "c": 1}))
    envoy = ads.envoy()
    await envoy.send(CLUSTER)
    cds = await envoy.receive()
    await envoy.ack(cds)
    await envoy.send(ENDPOINT, subscribe=["a", "b", "c"])
    eds = await envoy.receive()
    await envoy.ack(eds)
    has = {CLUSTER: sent(cds), ENDPOINT: sent(eds)}
    envoy.close()

    # Meanwhile cluster b changed and c went away; no endpoints changed.
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 2}))
    again = ads.envoy()
    # Envoy's first requests on the new stream name what it has; in any order.
    await again.send(ENDPOINT, subscribe=["a", "b", "c"], initial=has[ENDPOINT])
    gone = await again.receive()  # c's endpoints are no longer there
    assert (gone.type_url, sent(gone), list(gone.removed_resources)) == (ENDPOINT, {}, ["c"])
    await again.send(CLUSTER, initial=has[CLUSTER])
    cds2 = await again.receive()
    assert (cds2.type_url, sent(cds2), list(cds2.removed_resources)) == (
        CLUSTER,
        {"b": resource_version(cluster("b", 2))},
        ["c"],
    )
    # The updated cluster warms on its endpoints: sent again, though they did not change.
    await again.ack(gone)
    eds2 = await again.receive()
    assert (eds2.type_url, sent(eds2), list(eds2.removed_resources)) == (ENDPOINT, {"b": has[ENDPOINT]["b"]}, [])
    await again.ack(cds2)
    await again.ack(eds2)
    assert await again.nothing()
    again.close()

    # The other order: clusters first, then the endpoints the updated cluster warms on.
    third = ads.envoy()
    await third.send(CLUSTER, initial={"a": has[CLUSTER]["a"], "b": sent(cds2)["b"]})
    assert await third.nothing()  # it has every cluster: not even an empty response
    ads.cache.set_snapshot(NODE, snapshot({"a": 3, "b": 2}))
    cds3 = await third.receive()
    assert set(sent(cds3)) == {"a"}
    await third.send(ENDPOINT, subscribe=["a", "b"], initial={"a": has[ENDPOINT]["a"], "b": has[ENDPOINT]["b"]})
    eds3 = await third.receive()
    assert set(sent(eds3)) == {"a"}
    await third.ack(cds3)
    await third.ack(eds3)
    assert await third.nothing()
    sent_resources = sum(len(r.resources) for s in (again, third) for r in s.received)
    assert sent_resources == 4  # b (cluster, endpoints), a (cluster, endpoints): nothing unchanged


async def test_updated_clusters_get_their_unchanged_endpoints_again(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1}))
    envoy = ads.envoy()
    await envoy.send(CLUSTER)
    cds = await envoy.receive()
    await envoy.send(ENDPOINT, subscribe=["a", "b"])
    eds = await envoy.receive()
    await envoy.ack(cds)
    await envoy.ack(eds)
    assert await envoy.nothing()

    # Envoy keeps an updated cluster warming until its endpoints come again, and with delta does
    # not ask for them (its subscription did not change): they follow the clusters unasked.
    ads.cache.set_snapshot(NODE, snapshot({"a": 2, "b": 1}))
    cds2 = await envoy.receive()
    eds2 = await envoy.receive()
    assert (cds2.type_url, set(sent(cds2))) == (CLUSTER, {"a"})
    assert (eds2.type_url, sent(eds2)) == (ENDPOINT, {"a": sent(eds)["a"]})
    await envoy.ack(cds2)
    await envoy.ack(eds2)
    assert await envoy.nothing()  # and only once


async def test_a_nack_keeps_the_refused_versions_out_and_other_changes_flowing(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1, "c": 1}, {}))
    envoy = ads.envoy()
    await envoy.send(CLUSTER)
    good = await envoy.receive()
    await envoy.ack(good)

    ads.cache.set_snapshot(NODE, snapshot({"a": 0, "b": 2, "c": 1}, {}))  # a: what Envoy will refuse
    bad = await envoy.receive()
    assert set(sent(bad)) == {"a", "b"}
    with structlog.testing.capture_logs() as logs:
        await envoy.send(CLUSTER, nonce=bad.nonce, error="cluster a: ConnectTimeout: value must be greater than 0s")
        assert await envoy.nothing()  # the refused versions are not sent again
    assert ads.nacks == [(CLUSTER, bad.system_version_info, "cluster a: ConnectTimeout: value must be greater than 0s")]
    nack = next(e for e in logs if e["event"] == "xds_nack")
    assert (nack["version"], nack["resources"]) == (bad.system_version_info, ["a", "b"])

    # Another cluster changes: only it is sent (not the refused a again), and it is accepted.
    ads.cache.set_snapshot(NODE, snapshot({"a": 0, "b": 2, "c": 3}, {}))
    other = await envoy.receive()
    assert set(sent(other)) == {"c"}
    await envoy.ack(other)
    # The refused cluster is put back as it was: sent again (the proxy's copy may be either).
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 2, "c": 3}, {}))
    back = await envoy.receive()
    assert sent(back) == {"a": sent(good)["a"]}
    await envoy.ack(back)
    assert await envoy.nothing()
    assert [t for t, _ in ads.acks] == [CLUSTER] * 3


async def test_a_reply_to_an_unknown_nonce_is_neither_an_ack_nor_a_nack(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({"a": 1}))
    envoy = ads.envoy()
    await envoy.send(CLUSTER)
    first = await envoy.receive()
    await envoy.send(CLUSTER, nonce="no-such-nonce", error="late")
    await envoy.send(CLUSTER, nonce="no-such-nonce")
    assert await envoy.nothing()
    assert ads.acks == [] and ads.nacks == []
    await envoy.ack(first)
    await envoy.ack(first)  # answered already: the second is unknown too
    assert await envoy.nothing()
    assert len(ads.acks) == 1


def _delivered() -> float:
    return METRICS.get_sample_value("xds_delivery_count") or 0.0


async def test_a_change_is_delivered_once_its_clusters_and_owed_endpoints_are_acked(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({"a": 1}, changed_at=time.monotonic()))
    envoy = ads.envoy()
    await envoy.send(CLUSTER)
    await envoy.ack(await envoy.receive())
    await envoy.send(ENDPOINT, subscribe=["a"])
    await envoy.ack(await envoy.receive())
    assert await envoy.nothing()
    before = _delivered()
    ads.cache.set_snapshot(NODE, snapshot({"a": 2}, changed_at=time.monotonic()))
    cds, eds = await envoy.receive(), await envoy.receive()
    await envoy.ack(cds)
    assert await envoy.nothing(0.1) and _delivered() == before  # the cluster warms: not delivered yet
    await envoy.ack(eds)
    assert await envoy.nothing(0.1) and _delivered() == before + 1


async def test_state_of_the_world_and_delta_streams_side_by_side(ads: Ads) -> None:
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1}))
    delta = ads.envoy()
    await delta.send(CLUSTER)
    await delta.ack(await delta.receive())
    sotw = ads.channel.stream_stream(
        SOTW,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )()
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    request.node.id = "default.web-1"
    await sotw.write(request)
    async with asyncio.timeout(2):
        whole = await sotw.read()
    assert len(whole.resources) == 2
    await sotw.write(
        discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=whole.version_info, response_nonce=whole.nonce)
    )
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 2}))
    async with asyncio.timeout(2):
        again = await sotw.read()
    assert len(again.resources) == 2  # State of the World: the whole type again
    assert set(sent(await delta.receive())) == {"b"}  # delta: what changed
    sotw.cancel()


async def test_a_stream_that_subscribes_to_too_many_names_is_ended(ads: Ads, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each request is bounded by gRPC's message size; their sum is not: a (compromised) proxy
    # adding names request after request would grow the server's memory without end.
    monkeypatch.setattr(server_module, "MAX_SUBSCRIBED", 5)
    ads.cache.set_snapshot(NODE, snapshot({}, {"x": 1}))
    envoy = ads.envoy()
    await envoy.send(ENDPOINT, subscribe=["x", "a1", "a2"])
    await envoy.ack(await envoy.receive())
    await envoy.send(ENDPOINT, subscribe=["a3", "a4"])  # 5: still within
    with structlog.testing.capture_logs() as logs:
        await envoy.send(ENDPOINT, subscribe=["a5"])
        async with asyncio.timeout(2.0):
            status = await envoy.call.code()
    assert status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 5 resources of endpoints subscribed" in await envoy.call.details()
    assert [e["count"] for e in logs if e["event"] == "xds_too_many_subscriptions"] == [6]


def test_a_new_snapshot_looks_only_at_the_types_whose_version_changed() -> None:
    """An open watch was answered "nothing to send" against the snapshot it waits on; a new
    snapshot re-examines it only for a type whose version moved (a mesh-wide route change looks
    at each proxy's routes, not at its clusters and endpoints too), and still answers those."""
    from zonemesh.zone_cp.xds.cache import DeltaWatchRequest, DeltaWatchResponse

    examined: list[str] = []

    class Counting(SnapshotCache):
        @staticmethod
        def _answer_delta(request: DeltaWatchRequest, respond: Any, snap: Snapshot) -> bool:
            examined.append(request.type_url)
            return SnapshotCache._answer_delta(request, respond, snap)

    cache = Counting()
    first = snapshot({"a": 1, "b": 1})
    cache.set_snapshot(NODE, first)
    got: list[DeltaWatchResponse] = []
    for type_url in (CLUSTER, ENDPOINT):
        known = dict(first.types[type_url].versions)
        cache.create_delta_watch(DeltaWatchRequest(NODE, type_url, True, frozenset(), known), got.append)
    assert got == [] and examined == [CLUSTER, ENDPOINT]  # both have everything: both wait
    examined.clear()
    cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1}))  # the same resources, another round
    assert examined == [] and got == []
    cache.set_snapshot(NODE, snapshot({"a": 1, "b": 2}, eds={"a": 8080, "b": 8080}))  # a cluster changed
    assert examined == [CLUSTER]
    assert [(r.type_url, [name for name, _, _ in r.resources]) for r in got] == [(CLUSTER, ["b"])]


async def test_a_stream_keeps_no_per_type_copies_it_could_share(ads: Ads, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per stream and type the server keeps what it needs to diff, and shares the rest: the
    module's type URL (not each request's copy), the proxy's key (built once), one version per
    resource (``known``, no second dict of what was ACKed), and what it owes and forces as one
    immutable set, the same object in its state and in the watch it opened (the shared empty one
    when it owes nothing)."""
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1}))
    envoy = ads.envoy()
    await envoy.send(CLUSTER)
    cds = await envoy.receive()
    await envoy.send(ENDPOINT, subscribe=["a", "b"])
    eds = await envoy.receive()
    await envoy.ack(cds)
    await envoy.ack(eds)
    assert await envoy.nothing()

    (stream,) = ads.server.servicer._streams.values()
    assert isinstance(stream, server_module._DeltaStream)
    assert [t for t in stream.types if t is CLUSTER or t is ENDPOINT] == [CLUSTER, ENDPOINT]
    watches = {w.request.type_url: w.request for w in ads.cache._delta_watches[NODE].values()}
    for type_url, state in stream.types.items():
        assert state.known == sent(cds if type_url == CLUSTER else eds)
        assert not hasattr(state, "acked") and not hasattr(state, "__dict__")
        assert state.owed is state.forced is watches[type_url].force is server_module._NOTHING
        assert watches[type_url].type_url is type_url
    assert watches[CLUSTER].node is watches[ENDPOINT].node  # the proxy's key, built once per stream

    # Endpoints owed after a cluster update: the watch forces the very set the state owed.
    opened: list[DeltaWatchRequest] = []
    create = ads.cache.create_delta_watch

    def recording(request: DeltaWatchRequest, respond: Any) -> Any:
        opened.append(request)
        return create(request, respond)

    monkeypatch.setattr(ads.cache, "create_delta_watch", recording)
    endpoints_state = stream.types[ENDPOINT]
    stream._owe_endpoints(["a"])
    assert sent(await envoy.receive()) == {"a": sent(eds)["a"]}  # answered at once: forced
    assert [r.force for r in opened] == [{"a"}] and opened[0].force is endpoints_state.forced
    assert endpoints_state.owed is server_module._NOTHING  # sent: owed nothing again


async def test_a_stream_outbox_hands_its_writer_every_response_in_order() -> None:
    """The per-stream outbox (a list and a future, not an asyncio.Queue's deques and Event):
    what was queued before the writer asked comes first, a waiting writer wakes on the next put,
    and a writer cancelled while waiting leaves nothing behind."""
    outbox = server_module._Outbox()
    outbox.put_nowait(b"1")
    outbox.put_nowait(b"2")
    assert [await outbox.get(), await outbox.get()] == [b"1", b"2"]
    waiting = asyncio.create_task(outbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    outbox.put_nowait(b"3")
    outbox.put_nowait(b"4")
    assert await asyncio.wait_for(waiting, 2.0) == b"3"
    assert await outbox.get() == b"4" and outbox.qsize() == 0
    cancelled = asyncio.create_task(outbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    outbox.put_nowait(b"5")
    assert await asyncio.wait_for(outbox.get(), 2.0) == b"5"


async def test_streams_subscribing_to_the_same_names_share_one_set_of_them(ads: Ads) -> None:
    """Every proxy of a shape subscribes to the same endpoints by name, each request with strings
    of its own: the streams keep one frozenset of those names, of interned strings, not a copy each."""
    ads.cache.set_snapshot(NODE, snapshot({"a": 1, "b": 1}))
    for names in (["a", "b"], ["b", "a"]):
        envoy = ads.envoy()
        await envoy.send(CLUSTER)
        await envoy.receive()
        await envoy.send(ENDPOINT, subscribe=names)
        await envoy.receive()
    first, second = (stream.types[ENDPOINT] for stream in ads.server.servicer._streams.values())  # type: ignore[attr-defined]
    assert first.names == {"a", "b"} and first.names is second.names
    assert all(name is sys.intern(name) for name in first.names)


def test_shared_names_forget_the_sets_no_stream_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names_module, "MIN_SWEEP", 4)
    shared = names_module.SharedNames()
    held = shared.of(["a", "b"])
    for i in range(20):
        shared.of([f"gone-{i}"])  # subscribed, then closed or changed: nobody holds it
    assert len(shared) <= 4  # swept as it grew, not 21 sets
    assert shared.of(iter(["b", "a"])) is held  # what a stream holds is kept
    assert shared.of([]) is names_module.NOTHING
