"""The ADS servicer over real gRPC on 127.0.0.1, driven the way Envoy drives it: ACKs, NACKs,
stale nonces, and the endpoints a warming cluster waits for."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.config import Config
from zonemesh.shared.store import Store
from zonemesh.shared.tls import ensure_self_signed
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotCache, TypeSnapshot
from zonemesh.zone_cp.xds.proxy import ProxyIdentity, ProxyType
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, encode_any
from zonemesh.zone_cp.xds.server import XDS_TLS_FRAME_SIZE, Admission, Callbacks, StreamInfo, TlsFiles, XdsServer

NODE = "default/web-1"


def snapshot(cluster_timeout: int, endpoint_port: int) -> Snapshot:
    cluster = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.seconds = cluster_timeout
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")
    cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = endpoint_port
    return Snapshot(
        {
            CLUSTER: TypeSnapshot(f"c{cluster_timeout}", {"backend": encode_any(CLUSTER, cluster)}),
            ENDPOINT: TypeSnapshot(f"e{endpoint_port}", {"backend": encode_any(ENDPOINT, cla)}),
        }
    )


async def admit(metadata: Any, node: base_pb2.Node) -> Admission:
    async def still_valid(store: Store) -> None:
        return None

    return Admission(ProxyIdentity("default", "web-1"), "test token", time.time() + 3600, still_valid)


class Envoyish:
    """One ADS stream: send requests, read responses with a bounded wait."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        # One reader for the stream's life: cancelling a pending read would cancel the RPC.
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (response := await self.call.read()) is not grpc.aio.EOF:
            assert isinstance(response, discovery_pb2.DiscoveryResponse)
            self.responses.put_nowait(response)

    def close(self) -> None:
        self.reader.cancel()
        self.call.cancel()

    async def send(self, type_url: str, version: str = "", nonce: str = "", error: str = "") -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce, resource_names=["backend"]
        )
        request.node.id = "default.web-1"
        if type_url == CLUSTER:
            del request.resource_names[:]  # wildcard
        if error:
            request.error_detail.message = error
        await self.call.write(request)

    async def receive(self) -> discovery_pb2.DiscoveryResponse:
        async with asyncio.timeout(2.0):
            return await self.responses.get()

    async def nothing(self, within: float = 0.3) -> bool:
        await asyncio.sleep(within)
        return self.responses.empty()


@pytest.fixture
async def ads() -> AsyncIterator[tuple[SnapshotCache, Envoyish, list[tuple[str, str]]]]:
    cache = SnapshotCache()
    nacks: list[tuple[str, str]] = []

    async def on_nack(info: StreamInfo, type_url: str, version: str, error: str) -> None:
        nacks.append((version, error))

    callbacks = Callbacks(nack=[on_nack])
    server = XdsServer(Config(xds_address="127.0.0.1", xds_port=0), cache, admit, None, (), callbacks)
    async with server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        envoy = Envoyish(channel)
        yield cache, envoy, nacks
        envoy.close()


async def test_an_updated_cluster_gets_its_unchanged_endpoints_again(
    ads: tuple[SnapshotCache, Envoyish, list[tuple[str, str]]],
) -> None:
    cache, envoy, _ = ads
    cache.set_snapshot(NODE, snapshot(1, 8080))
    await envoy.send(CLUSTER)
    cds = await envoy.receive()
    await envoy.send(ENDPOINT)
    eds = await envoy.receive()
    assert (cds.type_url, eds.type_url, eds.version_info) == (CLUSTER, ENDPOINT, "e8080")
    await envoy.send(CLUSTER, cds.version_info, cds.nonce)
    await envoy.send(ENDPOINT, eds.version_info, eds.nonce)
    assert await envoy.nothing()

    # The cluster changes, its endpoints do not: Envoy warms the new cluster on an EDS request
    # naming the version it already has, and must get an answer.
    cache.set_snapshot(NODE, snapshot(2, 8080))
    cds = await envoy.receive()
    assert (cds.type_url, cds.version_info) == (CLUSTER, "c2")
    await envoy.send(ENDPOINT, eds.version_info, eds.nonce)
    again = await envoy.receive()
    assert (again.type_url, again.version_info) == (ENDPOINT, "e8080")
    await envoy.send(CLUSTER, cds.version_info, cds.nonce)
    await envoy.send(ENDPOINT, again.version_info, again.nonce)
    assert await envoy.nothing()  # and only once


async def test_a_nack_is_recorded_and_the_refused_version_not_resent(
    ads: tuple[SnapshotCache, Envoyish, list[tuple[str, str]]],
) -> None:
    cache, envoy, nacks = ads
    cache.set_snapshot(NODE, snapshot(1, 8080))
    await envoy.send(CLUSTER)
    good = await envoy.receive()
    await envoy.send(CLUSTER, good.version_info, good.nonce)
    cache.set_snapshot(NODE, snapshot(3, 8080))
    bad = await envoy.receive()
    await envoy.send(CLUSTER, good.version_info, bad.nonce, error="Proto constraint validation failed")
    assert await envoy.nothing()  # the refused version is not pushed again
    assert nacks == [("c3", "Proto constraint validation failed")]
    cache.set_snapshot(NODE, snapshot(4, 8080))
    fixed = await envoy.receive()
    assert fixed.version_info == "c4"


async def test_a_stale_nonce_is_ignored(ads: tuple[SnapshotCache, Envoyish, list[tuple[str, str]]]) -> None:
    cache, envoy, nacks = ads
    cache.set_snapshot(NODE, snapshot(1, 8080))
    await envoy.send(CLUSTER)
    first = await envoy.receive()
    cache.set_snapshot(NODE, snapshot(2, 8080))  # the watch is answered only after the ACK
    await envoy.send(CLUSTER, first.version_info, first.nonce)
    second = await envoy.receive()
    # A late NACK naming the first response's nonce: superseded, so neither counted nor answered.
    await envoy.send(CLUSTER, "", first.nonce, error="late")
    assert await envoy.nothing()
    assert nacks == []
    await envoy.send(CLUSTER, second.version_info, second.nonce)
    assert await envoy.nothing()


async def test_hooks_registered_for_some_proxy_types_see_only_their_streams() -> None:
    """The zone registers its dataplane side (reconciler, insights, NACK attribution) for dataplanes
    only, beside hooks for every stream, in one order (zone_cp/app.py)."""
    seen: list[tuple[str, str]] = []

    def hook(who: str) -> Any:
        async def record(info: StreamInfo, *args: Any) -> None:
            seen.append((who, info.identity.name))

        return record

    callbacks = Callbacks()
    dataplanes = callbacks.only(ProxyType.DATAPLANE)
    dataplanes.stream_open.append(hook("dataplanes"))

    async def failing(info: StreamInfo) -> None:
        raise RuntimeError("a hook's own failure")

    dataplanes.stream_open.append(failing)  # logged (xds_hook_failed); the hooks after it still run
    callbacks.stream_open.append(hook("all"))
    dataplanes.attribute = lambda node, type_url, version: ["MeshTimeout/t"]
    assert callbacks.attribute is not None and callbacks.attribute("n", "t", "v") == ["MeshTimeout/t"]
    for identity in (ProxyIdentity("default", "web-1"), ProxyIdentity("", "ingress-1", ProxyType.INGRESS)):
        await callbacks.run(callbacks.stream_open, StreamInfo(1, identity, base_pb2.Node(), "peer"))
    assert seen == [("dataplanes", "web-1"), ("all", "web-1"), ("all", "ingress-1")]


def envoy_node(name: str) -> base_pb2.Node:
    """A node as Envoy sends it in its first request: its version and every extension it was built
    with (a real Envoy lists ~500, ~60 KB)."""
    node = base_pb2.Node(id=name, cluster="web", user_agent_name="envoy")
    node.user_agent_build_version.version.major_number = 1
    node.user_agent_build_version.version.minor_number = 34
    for i in range(500):
        node.extensions.add(name=f"envoy.filters.http.ext_{i}", category="envoy.filters.http")
    node.client_features.append("envoy.lb.does_not_support_overprovisioning")
    return node


def live_requests_or_nodes_with_extensions() -> list[object]:
    """The xDS requests, and the nodes listing extensions, that anything in this process still holds."""
    gc.collect()
    kinds = (discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest, base_pb2.Node)
    return [o for o in gc.get_objects() if isinstance(o, kinds) and (not isinstance(o, base_pb2.Node) or o.extensions)]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_an_open_stream_keeps_no_request_alive(delta: bool) -> None:
    """An Envoy's first request carries its node (every extension it was built with): once the
    stream is authenticated and answered, neither that request nor any later one stays in memory,
    and what the hooks see of the node is the part they read (id, version), in a message of its own."""
    cache = SnapshotCache()
    cache.set_snapshot(NODE, snapshot(1, 8080))
    opened: list[StreamInfo] = []

    async def on_open(info: StreamInfo) -> None:
        opened.append(info)

    server = XdsServer(
        Config(xds_address="127.0.0.1", xds_port=0), cache, admit, None, (), Callbacks(stream_open=[on_open])
    )
    method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
    first: Any = (discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest)(
        type_url=CLUSTER, node=envoy_node("default.web-1")
    )
    hello = first.SerializeToString()  # the client sends bytes: every message object left is the server's
    del first
    async with server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream(
            f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )()
        await call.write(hello)
        async with asyncio.timeout(5):
            raw = await call.read()
        response: Any = (discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse).FromString(
            raw
        )
        ack: Any = (
            discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=response.nonce)
            if delta
            else discovery_pb2.DiscoveryRequest(
                type_url=CLUSTER, version_info=response.version_info, response_nonce=response.nonce
            )
        )
        await call.write(ack.SerializeToString())
        del ack, response
        await asyncio.sleep(0.3)  # the server reads the ACK and waits for the next request
        assert server.servicer.open_streams == 1
        assert live_requests_or_nodes_with_extensions() == []
        [info] = opened
        assert (info.node.id, info.node.user_agent_build_version.version.minor_number) == ("default.web-1", 34)
        assert not info.node.extensions and not info.node.client_features
        call.cancel()


class TlsRecords:
    """A TCP relay on 127.0.0.1 in front of a TLS server that notes the length of every TLS record
    the server sends (what gRPC's TSI frame protector cut its writes into)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.lengths: list[int] = []
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TlsRecords:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        for task in (self._pump(client_r, server_w, None), self._pump(server_r, client_w, bytearray())):
            self._tasks.add(asyncio.create_task(task))

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, records: bytearray | None) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
            if records is None:
                continue
            records += data
            # A TLS record: content type (1), version (2), length (2), then that many bytes.
            while len(records) >= 5 and len(records) >= 5 + (length := int.from_bytes(records[3:5], "big")):
                self.lengths.append(length)
                del records[: 5 + length]


async def test_the_server_cuts_its_tls_writes_into_small_records(tmp_path: Path) -> None:
    """Every TLS record the xDS server writes is at most XDS_TLS_FRAME_SIZE bytes (gRPC's default,
    16 KB, costs a 16 KB buffer per connection), a response bigger than that included."""
    cert, key = ensure_self_signed(tmp_path, "xds", ["127.0.0.1"])
    clusters = {}
    for i in range(200):
        cluster = cluster_pb2.Cluster(name=f"backend-{i:03d}", type=cluster_pb2.Cluster.EDS)
        cluster.eds_cluster_config.service_name = f"backend-{i:03d}." + "x" * 150
        clusters[cluster.name] = encode_any(CLUSTER, cluster)
    cache = SnapshotCache()
    cache.set_snapshot(NODE, Snapshot({CLUSTER: TypeSnapshot("c1", clusters)}))
    server = XdsServer(Config(xds_address="127.0.0.1", xds_port=0), cache, admit, TlsFiles(cert, key))
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with (
        server,
        TlsRecords(server.port) as relay,
        grpc.aio.secure_channel(f"127.0.0.1:{relay.port}", creds) as channel,
    ):
        await asyncio.wait_for(channel.channel_ready(), 5)
        envoy = Envoyish(channel)
        await envoy.send(CLUSTER)
        response = await envoy.receive()
        envoy.close()
    assert len(response.resources) == 200 and response.ByteSize() > 32_000  # two default records' worth
    assert relay.lengths and max(relay.lengths) <= XDS_TLS_FRAME_SIZE, max(relay.lengths)
