"""The xDS histograms (``xds_generation``, ``xds_delivery``) after a real ADS exchange.

Real parts on 127.0.0.1: a memory store with the default mesh and its default policies, the
reconciler, the TLS ADS server admitting a dataplane token, the diagnostics HTTP app; the
proxy is a gRPC client speaking ADS as Envoy does (request, response, ACK with the nonce).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp.test_utils import TestServer
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import REGISTRY
from zonemesh.shared.config import Config
from zonemesh.shared.diagnostics import build_diagnostics_app
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tls import ensure_self_signed
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.zone_cp.admission import DataplaneAuthenticator
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT
from zonemesh.zone_cp.xds.server import Callbacks, TlsFiles, XdsServer

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
WEB = {
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
        "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
    }
}
BACKEND = {"networking": {"address": "127.0.0.2", "inbound": [{"port": 9000, "tags": {"kuma.io/service": "backend"}}]}}


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


async def wait_for_count(name: str, at_least: float) -> None:
    for _ in range(250):  # the server handles the ACK on its own schedule: wait up to 5 s
        if sample(name) >= at_least:
            return
        await asyncio.sleep(0.02)


def ack(response: discovery_pb2.DiscoveryResponse, names: list[str] | None = None) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=response.type_url,
        version_info=response.version_info,
        response_nonce=response.nonce,
        resource_names=names or [],
    )


def connect_timeout(response: discovery_pb2.DiscoveryResponse) -> int:
    for item in response.resources:
        cluster = cluster_pb2.Cluster.FromString(item.value)
        if cluster.name == "backend":
            return int(cluster.connect_timeout.seconds)
    raise AssertionError("no backend cluster in the response")


async def test_generation_and_delivery_histograms_fill_after_an_ads_exchange(tmp_path: Path) -> None:
    store = MemoryStore()
    manager = ResourceManager(store)
    await manager.ensure_default_mesh()
    await manager.create(Resource(type="Dataplane", mesh="default", name="web-1", spec=WEB))
    await manager.create(Resource(type="Dataplane", mesh="default", name="backend-1", spec=BACKEND))
    token = await dptokens.issue(store, dptokens.DataplaneClaims(mesh="default", name="web-1"), 3600)
    cert, key = ensure_self_signed(tmp_path, "xds", ["127.0.0.1"])
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, None, debounce=0.01, max_delay=0.05)
    callbacks = Callbacks()
    callbacks.stream_open.append(reconciler.on_stream_open)
    callbacks.stream_close.append(reconciler.on_stream_close)
    config = Config(xds_address="127.0.0.1", xds_port=0)
    server = XdsServer(config, cache, DataplaneAuthenticator(store), TlsFiles(cert, key), (), callbacks)
    generations = sample("xds_generation_count")
    deliveries = sample("xds_delivery_count")

    async with reconciler, server:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
            call: Any = channel.stream_stream(
                ADS,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )(metadata=(("authorization", f"Bearer {token}"),))
            first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
            first.node.id = "default.web-1"
            await call.write(first)
            clusters = await asyncio.wait_for(call.read(), timeout=10)
            assert connect_timeout(clusters) == 5  # the default MeshTimeout
            await call.write(ack(clusters))
            await call.write(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["backend"]))
            endpoints = await asyncio.wait_for(call.read(), timeout=10)
            assert endpoints.type_url == ENDPOINT
            await call.write(ack(endpoints, ["backend"]))
            assert sample("xds_generation_count") > generations
            # The first config was caused by the stream opening: its ACKs are a delivery too.
            await wait_for_count("xds_delivery_count", deliveries + 1)
            deliveries = sample("xds_delivery_count")
            delivered_seconds = sample("xds_delivery_sum")

            # A mesh-wide policy change: new clusters, then (as Envoy does for warming clusters)
            # EDS again; delivered once both are ACKed, and only once.
            timeout = await manager.get("MeshTimeout", "mesh-timeout-all-default", "default")
            timeout.spec["to"][0]["default"]["connectionTimeout"] = "7s"
            await manager.update(timeout)
            clusters = await asyncio.wait_for(call.read(), timeout=10)
            assert connect_timeout(clusters) == 7
            await call.write(ack(clusters))
            resubscribe = ack(endpoints, ["backend"])  # the previous EDS nonce: not a delivery
            await call.write(resubscribe)
            endpoints = await asyncio.wait_for(call.read(), timeout=10)
            assert endpoints.type_url == ENDPOINT
            assert sample("xds_delivery_count") == deliveries  # EDS not ACKed yet
            await call.write(ack(endpoints, ["backend"]))
            await wait_for_count("xds_delivery_count", deliveries + 1)
            await asyncio.sleep(0.2)  # nothing else comes in late
            call.cancel()
    assert sample("xds_delivery_count") == deliveries + 1
    assert 0 < sample("xds_delivery_sum") - delivered_seconds < 10

    # Both are on the diagnostics app's /metrics, as histograms with buckets.
    async with (
        TestServer(build_diagnostics_app(lambda: True), host="127.0.0.1") as diag,
        aiohttp.ClientSession() as session,
        session.get(diag.make_url("/metrics")) as resp,
    ):
        text = await resp.text()
    for name in ("xds_generation", "xds_delivery"):
        assert f"# TYPE {name} histogram" in text
        assert f'{name}_bucket{{le="+Inf"}}' in text


@pytest.mark.parametrize("name", ["xds_generation", "xds_delivery"])
def test_histograms_have_buckets_around_the_targets(name: str) -> None:
    from zonemesh.zone_cp.xds import metrics

    buckets = metrics.GENERATION_BUCKETS if name == "xds_generation" else metrics.DELIVERY_BUCKETS
    target = 0.001 if name == "xds_generation" else 1.3
    assert sum(1 for b in buckets if target / 4 <= b <= target) >= 4  # p50/p99 resolvable near the target
