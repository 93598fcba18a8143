"""Open xDS streams answer for their credential, over real gRPC + TLS on 127.0.0.1: a token's exp
closes its stream, a revocation or a removed signing key closes the streams it affects (and only
those), and before authentication a stream may neither stay silent for long nor pile up. Every
test runs with State of the World and with delta ADS streams.
(tests/e2e/test_stream_credentials.py runs the same with real Envoys.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.proto import dataplane_pb2
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tls import ensure_self_signed
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS
from zonemesh.zone_cp import admission
from zonemesh.zone_cp.admission import DataplaneAuthenticator, ReadOnce, RegistrationServicer
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotCache, TypeSnapshot
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.resources import CLUSTER, PUSH_ORDER, encode_any
from zonemesh.zone_cp.xds.server import Callbacks, TlsFiles, XdsServer

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
# per protocol: the ADS method and its request type
PROTOCOLS: dict[str, tuple[str, Any]] = {
    "sotw": ("StreamAggregatedResources", discovery_pb2.DiscoveryRequest),
    "delta": ("DeltaAggregatedResources", discovery_pb2.DeltaDiscoveryRequest),
}
REGISTER = "/zonemesh.dataplane.v1.DataplaneRegistration/Register"
AUTH_TIMEOUT = 1.0
LIMIT = 2


@dataclass
class Zone:
    store: MemoryStore
    server: XdsServer
    channel: grpc.aio.Channel
    protocol: str

    @property
    def request_type(self) -> Any:
        return PROTOCOLS[self.protocol][1]

    def first_request(self, node_id: str) -> Any:
        request = self.request_type(type_url=CLUSTER)
        request.node.id = node_id
        return request

    async def token(self, name: str, valid_for: float = 3600, mesh: str = "default") -> str:
        return await dptokens.issue(self.store, dptokens.DataplaneClaims(mesh=mesh, name=name), valid_for)

    def call(self, token: str | None = None) -> grpc.aio.StreamStreamCall:
        return self.channel.stream_stream(
            ADS + PROTOCOLS[self.protocol][0],
            request_serializer=self.request_type.SerializeToString,
            response_deserializer=bytes,
        )(metadata=(("authorization", f"Bearer {token}"),) if token else ())

    async def open(self, token: str, node_id: str) -> grpc.aio.StreamStreamCall:
        """An admitted ADS stream (its open hook ran)."""
        opened = len(self.server.servicer._streams)
        call = self.call(token)
        await call.write(self.first_request(node_id))
        for _ in range(100):
            if len(self.server.servicer._streams) > opened:
                return call
            if call.done():
                raise AssertionError(f"stream refused: {await call.code()} {await call.details()}")
            await asyncio.sleep(0.02)
        raise AssertionError("the stream was not admitted within 2 s")


async def ended(call: grpc.aio.StreamStreamCall, within: float) -> tuple[grpc.StatusCode, str, float]:
    """How and when (seconds from now) the stream ends; fails if it is still open after ``within``."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        code = await call.code()
    return code, await call.details() or "", time.monotonic() - started


async def still_open(call: grpc.aio.StreamStreamCall, during: float = 0.5) -> bool:
    await asyncio.sleep(during)
    return not call.done()


@pytest.fixture(params=tuple(PROTOCOLS))
async def zone(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store)
    await manager.ensure_default_mesh()
    await store.create(Resource(type="Mesh", name="other"))
    cert, key = ensure_self_signed(tmp_path, "xds", ["127.0.0.1"])
    dataplanes = DataplaneAuthenticator(store)
    zone_auth = admission.ZoneProxyAuthenticator(store, "zone-1")
    registration = RegistrationServicer(manager, dataplanes, None, "cp-test")
    config = Config(
        xds_address="127.0.0.1", xds_port=0, auth_timeout=f"{AUTH_TIMEOUT}s", xds_max_unauthenticated_streams=LIMIT
    )
    authenticator = admission.Authenticator(dataplanes, zone_auth)
    server = XdsServer(config, SnapshotCache(), authenticator, TlsFiles(cert, key), [registration.add_to], Callbacks())
    watch = admission.CredentialWatch(store, server.servicer)
    async with server, watch.running():
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
            yield Zone(store, server, channel, request.param)


def secret(mesh: str, name: str, data: bytes) -> Resource:
    return Resource(type="Secret", mesh=mesh, name=name, spec={"data": base64.b64encode(data).decode()})


def jti(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


async def test_a_stream_is_closed_when_its_token_expires(zone: Zone) -> None:
    # 3 s of validity, so that opening the stream on a loaded machine still happens before exp;
    # the bound on the close is generous for the same reason (the lower bound is what matters).
    token = await zone.token("web-1", valid_for=3)
    exp = time.time() + 3  # at most: iat is the whole second of issuance
    with structlog.testing.capture_logs() as logs:
        call = await zone.open(token, "default.web-1")
        code, details, _ = await ended(call, within=3 + LEEWAY_SECONDS + 10)
    closed_at = time.time()
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith("dataplane token expired"), details
    assert closed_at >= exp - 1 + LEEWAY_SECONDS  # not before exp + leeway
    expired = [e for e in logs if e["event"] == "xds_token_expired"]
    assert [e["proxy"] for e in expired] == ["default/web-1"]
    assert token not in json.dumps(logs, default=str)


async def test_revocation_closes_that_stream_only(zone: Zone) -> None:
    revoked, kept = await zone.token("web-1"), await zone.token("web-2")
    calls = {name: await zone.open(t, f"default.{name}") for name, t in (("web-1", revoked), ("web-2", kept))}
    with structlog.testing.capture_logs() as logs:
        await zone.store.create(secret("default", "dataplane-token-revocations-default", jti(revoked).encode()))
        code, details, took = await ended(calls["web-1"], within=1.0)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == f"dataplane token refused: token {jti(revoked)} has been revoked"
    assert took < 1.0
    assert await still_open(calls["web-2"])
    assert [(e["proxy"], e["reason"]) for e in logs if e["event"] == "xds_stream_revoked"] == [
        ("default/web-1", details)
    ]
    # A new stream with the revoked token is refused at once.
    call = zone.call(revoked)
    await call.write(zone.first_request("default.web-1"))
    assert (await ended(call, within=2))[0] is grpc.StatusCode.UNAUTHENTICATED
    calls["web-2"].cancel()


async def test_a_response_queued_as_the_stream_ends_is_not_sent_and_the_stream_ends(zone: Zone) -> None:
    # A config push and the token's expiry in one step of the event loop: the stream's first
    # response is queued, then the stream is found invalid before its writer runs. Nothing may be
    # sent after that moment, and the call must end with the reason. Before, the writer started
    # that write and the stream's end cancelled the wait for it: gRPC then refused the status that
    # ends the call (TOO_MANY_OPERATIONS) and the call stayed open, as a real Envoy revoked 56 ms
    # after its stream opened once did in CI.
    token = await zone.token("web-1")
    call = await zone.open(token, "default.web-1")  # it asks for clusters: a watch waits (no snapshot yet)
    (stream,) = zone.server.servicer._streams.values()
    cache = zone.server.servicer.watcher
    assert isinstance(cache, SnapshotCache)
    node = stream.info.identity.key
    for _ in range(200):  # until its first request is handled: its watch is open
        if node in cache._watches or node in cache._delta_watches:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the stream's first request opened no watch within 2 s")
    types = {t: TypeSnapshot.of({}) for t in PUSH_ORDER}
    types[CLUSTER] = TypeSnapshot.of({"web": encode_any(CLUSTER, cluster_pb2.Cluster(name="web"))})
    cache.set_snapshot(node, Snapshot(types))
    assert stream.outbox.qsize() == 1  # the response is queued
    zone.server.servicer._expired(stream)
    received = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        async with asyncio.timeout(5):
            while (message := await call.read()) is not grpc.aio.EOF:
                received.append(message)
    assert received == []
    code, details, _ = await ended(call, within=5.0)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith("dataplane token expired"), details


async def test_removing_a_signing_key_closes_the_streams_it_signed(zone: Zone) -> None:
    old = await zone.token("web-1")  # creates key 1
    keys = dptokens.signing_keys(zone.store, "default")
    await keys.add(generate_private_key_pem())
    new = await zone.token("web-2")  # signed with key 2, the newest
    other_mesh = await zone.token("web-3", mesh="other")
    calls = {
        "web-1": await zone.open(old, "default.web-1"),
        "web-2": await zone.open(new, "default.web-2"),
        "web-3": await zone.open(other_mesh, "other.web-3"),
    }
    await zone.store.delete("Secret", keys.secret_name(1), "default")
    code, details, _ = await ended(calls["web-1"], within=1.0)
    assert (code, details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "dataplane token refused: signing key 1 not found (rotated out or never existed)",
    )
    assert await still_open(calls["web-2"]) and not calls["web-3"].done()
    for call in calls.values():
        call.cancel()


async def test_a_check_that_cannot_run_keeps_the_stream(zone: Zone, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store failure during the check is not a verdict on the token: closing every stream on a
    store hiccup would only make every proxy reconnect into the same failure."""
    call = await zone.open(await zone.token("web-1"), "default.web-1")

    async def store_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("store unreachable")

    view = ReadOnce(zone.store)
    monkeypatch.setattr(view, "get", store_down)  # the fault cannot be produced for real in memory
    with structlog.testing.capture_logs() as logs:
        closed = await zone.server.servicer.revalidate(lambda admission: True, view)
    assert closed == 0 and await still_open(call)
    assert any(e["event"] == "xds_revalidation_failed" for e in logs)
    call.cancel()


async def test_still_admitted_rechecks_the_store_now(zone: Zone) -> None:
    """What the reconciler asks before a renewed workload certificate goes out."""
    revoked, kept = await zone.token("web-1"), await zone.token("web-2")
    calls = [await zone.open(revoked, "default.web-1"), await zone.open(kept, "default.web-2")]
    # Written behind the watch's back: only the check made now can see it.
    watch_free = MemoryStore()
    for res in (await zone.store.list("Secret", "default")).items:
        await watch_free.create(res)
    await watch_free.create(secret("default", "dataplane-token-revocations-default", jti(revoked).encode()))
    proxies = [ProxyIdentity("default", "web-1"), ProxyIdentity("default", "web-2")]
    assert await zone.server.servicer.still_admitted(proxies, ReadOnce(watch_free)) == {proxies[1]}
    assert (await ended(calls[0], within=1.0))[0] is grpc.StatusCode.UNAUTHENTICATED
    calls[1].cancel()


async def test_a_silent_stream_is_dropped_at_the_deadline(zone: Zone) -> None:
    call = zone.call()
    with structlog.testing.capture_logs() as logs:
        code, details, took = await ended(call, within=AUTH_TIMEOUT + 2)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    what = zone.request_type.__name__  # DiscoveryRequest, DeltaDiscoveryRequest
    assert details == f"no {what} within {AUTH_TIMEOUT:g}s of opening the stream (auth_timeout)"
    assert took >= AUTH_TIMEOUT - 0.2
    assert any(e["event"] == "xds_auth_timeout" for e in logs)


async def test_silent_streams_beyond_the_limit_are_refused_at_once_and_proxies_still_join(zone: Zone) -> None:
    silent = [zone.call() for _ in range(LIMIT)]
    await asyncio.sleep(0.3)  # past the grace: they hold every slot
    assert zone.server.gate.waiting == LIMIT
    excess = zone.call()
    code, details, took = await ended(excess, within=AUTH_TIMEOUT / 2)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many xDS streams waiting to authenticate (xds_max_unauthenticated_streams=2)" in details
    assert took < AUTH_TIMEOUT / 2
    # A proxy that speaks at once needs no slot: it joins while they wait.
    joined = await zone.open(await zone.token("web-1"), "default.web-1")
    assert all(not call.done() for call in silent)
    for call in silent:
        assert (await ended(call, within=AUTH_TIMEOUT + 1))[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert zone.server.gate.waiting == 0
    assert await still_open(joined)
    joined.cancel()


async def test_a_silent_registration_call_is_dropped_at_the_deadline(zone: Zone) -> None:
    call = zone.channel.stream_unary(
        REGISTER,
        request_serializer=dataplane_pb2.RegisterRequest.SerializeToString,
        response_deserializer=dataplane_pb2.RegisterResponse.FromString,
    )()  # unary on the server, but the client never sends its request
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(AUTH_TIMEOUT + 2):
            await call
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == f"no request within {AUTH_TIMEOUT:g}s of opening the stream (auth_timeout)"
    assert time.monotonic() - started >= AUTH_TIMEOUT - 0.2
