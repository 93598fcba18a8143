"""The ADS gRPC server (State of the World; secrets over the same stream).

The servicer knows only the ``ConfigWatcher`` protocol of the cache: per type URL it opens a
watch with the version the proxy has, and sends what the watch answers. Per nonce it tells
ACKs from NACKs and ignores stale nonces (a reply to a response that was already superseded).
A NACK keeps the proxy on its last good config: the refused version is not re-sent; the
next snapshot is.

Cluster warming: Envoy keeps an updated EDS cluster warming until it receives that cluster's
endpoints again, even when they did not change (xDS protocol, "Resource warming"; Kuma patched
go-control-plane the same way, kumahq/kuma#331). So after a CDS response the next EDS request
is answered in full whatever version it names, unless an EDS response followed the CDS one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.aio import run_to_completion
from zonemesh.shared.config import Config
from zonemesh.zone_cp.xds.cache import Cancel, ConfigWatcher, WatchRequest, WatchResponse
from zonemesh.zone_cp.xds.metrics import XDS_DELIVERY, XDS_NACKS
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, PUSH_ORDER, SHORT_NAMES, encode_response, with_nonce

log = structlog.get_logger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

Metadata = tuple[tuple[str, str | bytes], ...]
# Checks the stream's initial metadata (``authorization: Bearer <token>``) and the Envoy node;
# returns who the proxy is or raises (the message is the reason given to the proxy).
Authenticator = Callable[[Metadata, base_pb2.Node], Awaitable[ProxyIdentity]]


@dataclass(frozen=True)
class StreamInfo:
    stream_id: int
    identity: ProxyIdentity
    node: base_pb2.Node
    peer: str


StreamHook = Callable[[StreamInfo], Awaitable[None]]
AckHook = Callable[[StreamInfo, str, str], Awaitable[None]]  # type_url, version
NackHook = Callable[[StreamInfo, str, str, str], Awaitable[None]]  # type_url, refused version, error


@dataclass
class Callbacks:
    """Hooks into stream life; several parts may register (insights, the reconciler)."""

    stream_open: list[StreamHook] = field(default_factory=list)
    stream_close: list[StreamHook] = field(default_factory=list)
    ack: list[AckHook] = field(default_factory=list)
    nack: list[NackHook] = field(default_factory=list)

    async def run(self, hooks: Sequence[Callable[..., Awaitable[None]]], *args: Any) -> None:
        for hook in hooks:
            try:
                await hook(*args)
            except Exception:
                log.exception("xds_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)))


@dataclass
class _TypeState:
    nonce: str = ""
    sent_version: str = ""
    sent_names: frozenset[str] | None = None
    changed_at: float | None = None
    acked: bool = True
    cancel: Cancel | None = None


class _Stream:
    """One ADS stream: per type, the last response sent and the watch waiting for the next."""

    def __init__(self, info: StreamInfo, watcher: ConfigWatcher, callbacks: Callbacks) -> None:
        self.info = info
        self.watcher = watcher
        self.callbacks = callbacks
        self.types: dict[str, _TypeState] = {}
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._nonces = itertools.count(1)
        self._delivered_stamp: float | None = None
        self._endpoints_owed = False  # a CDS response went out with no EDS response after it

    async def handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        if type_url not in SHORT_NAMES:
            log.warning("xds_unknown_type", proxy=self.info.identity.key, type_url=type_url)
            return
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = _TypeState()
        if request.response_nonce and request.response_nonce != state.nonce:
            log.debug("xds_stale_nonce", proxy=self.info.identity.key, type_url=type_url)
            return
        version = request.version_info
        if request.response_nonce:  # the reply to our latest response on this type
            state.acked = True
            if request.HasField("error_detail"):
                version = state.sent_version  # do not re-send what it refused
                await self._nacked(type_url, state, request.error_detail.message)
            else:
                await self._acked(type_url, state, version)
        if state.cancel is not None:
            state.cancel()
        names = frozenset(request.resource_names)
        if type_url == ENDPOINT and self._endpoints_owed:
            version = ""  # answer even an unchanged version: updated clusters are warming on it
        watch = WatchRequest(self.info.identity.key, type_url, version, names, state.sent_names)
        state.cancel = self.watcher.create_watch(watch, lambda resp: self._send(state, resp))

    def _send(self, state: _TypeState, resp: WatchResponse) -> None:
        nonce = str(next(self._nonces))
        state.cancel = None
        state.nonce = nonce
        state.sent_version = resp.version
        state.sent_names = resp.names
        state.changed_at = resp.changed_at
        state.acked = False
        if resp.type_url == CLUSTER:
            self._endpoints_owed = True
        elif resp.type_url == ENDPOINT:
            self._endpoints_owed = False
        if resp.body:  # shared by every proxy with the same resources: only the nonce is its own
            self.outbox.put_nowait(with_nonce(resp.body, nonce))
        else:
            self.outbox.put_nowait(encode_response(resp.version, resp.resources, resp.type_url, nonce))

    async def _acked(self, type_url: str, state: _TypeState, version: str) -> None:
        # A change is delivered when every response it caused is ACKed: all types sent with its
        # stamp, and the EDS response owed after a CDS one (Envoy re-subscribes to EDS then, and
        # that request also "ACKs" the previous, older EDS response: not a delivery).
        stamp = state.changed_at
        newer = stamp is not None and (self._delivered_stamp is None or stamp > self._delivered_stamp)
        owed = self._endpoints_owed and ENDPOINT in self.types
        if newer and not owed and all(s.acked or s.changed_at != stamp for s in self.types.values()):
            assert stamp is not None
            self._delivered_stamp = stamp
            XDS_DELIVERY.observe(time.monotonic() - stamp)
        await self.callbacks.run(self.callbacks.ack, self.info, type_url, version)

    async def _nacked(self, type_url: str, state: _TypeState, error: str) -> None:
        XDS_NACKS.labels(type_url=type_url).inc()
        log.warning(
            "xds_nack", proxy=self.info.identity.key, type_url=type_url, version=state.sent_version, error=error
        )
        await self.callbacks.run(self.callbacks.nack, self.info, type_url, state.sent_version, error)

    def close(self) -> None:
        for state in self.types.values():
            if state.cancel is not None:
                state.cancel()
                state.cancel = None


class AdsServicer:
    def __init__(
        self, watcher: ConfigWatcher, authenticator: Authenticator, callbacks: Callbacks | None = None
    ) -> None:
        self.watcher = watcher
        self.authenticator = authenticator
        self.callbacks = callbacks or Callbacks()
        self._ids = itertools.count(1)
        self.open_streams = 0

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream_aggregated_resources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity,  # responses are assembled from pre-serialized bytes
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))

    async def stream_aggregated_resources(self, _requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        assert isinstance(first, discovery_pb2.DiscoveryRequest)
        metadata: Metadata = tuple((m.key, m.value) for m in (context.invocation_metadata() or ()))
        try:
            identity = await self.authenticator(metadata, first.node)
        except Exception as exc:
            # A refusal may carry its own status (the license: RESOURCE_EXHAUSTED, as registration
            # answers); anything else is an authentication failure.
            code = getattr(exc, "status_code", None)
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.UNAUTHENTICATED
            if code is grpc.StatusCode.UNAUTHENTICATED:
                log.warning("xds_unauthenticated", node=first.node.id, peer=context.peer(), reason=str(exc))
            else:
                log.warning("xds_refused", node=first.node.id, peer=context.peer(), code=code.name, reason=str(exc))
            await context.abort(code, str(exc) or "authentication failed")
            return
        info = StreamInfo(next(self._ids), identity, first.node, context.peer())
        stream = _Stream(info, self.watcher, self.callbacks)
        self.open_streams += 1
        log.info("xds_stream_opened", proxy=identity.key, stream=info.stream_id, peer=info.peer)
        await self.callbacks.run(self.callbacks.stream_open, info)
        reader = asyncio.create_task(self._read(context, stream, first))
        writer = asyncio.create_task(self._write(context, stream))
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await run_to_completion(self._closed(info, stream, reader, writer))

    async def _closed(
        self, info: StreamInfo, stream: _Stream, reader: asyncio.Task[None], writer: asyncio.Task[None]
    ) -> None:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        stream.close()
        self.open_streams -= 1
        log.info("xds_stream_closed", proxy=info.identity.key, stream=info.stream_id)
        await self.callbacks.run(self.callbacks.stream_close, info)

    @staticmethod
    async def _read(
        context: grpc.aio.ServicerContext[Any, Any], stream: _Stream, first: discovery_pb2.DiscoveryRequest
    ) -> None:
        request: object = first
        while request is not grpc.aio.EOF:
            assert isinstance(request, discovery_pb2.DiscoveryRequest)
            await stream.handle(request)
            request = await context.read()

    @staticmethod
    async def _write(context: grpc.aio.ServicerContext[Any, Any], stream: _Stream) -> None:
        while True:
            await context.write(await stream.outbox.get())


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class TlsFiles:
    cert_path: Path
    key_path: Path


ServicerFactory = Callable[[grpc.aio.Server], None]


class XdsServer:
    """The zone's xDS gRPC server on ``config.xds_address:xds_port`` (TLS), ADS plus whatever
    ``extra_servicers`` add on the same port (e.g. dataplane registration)."""

    def __init__(
        self,
        config: Config,
        cache: ConfigWatcher,
        authenticator: Authenticator,
        tls: TlsFiles | None,
        extra_servicers: Sequence[ServicerFactory] = (),
        callbacks: Callbacks | None = None,
    ) -> None:
        self.config = config
        self.servicer = AdsServicer(cache, authenticator, callbacks)
        self.tls = tls
        self.extra_servicers = list(extra_servicers)
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", 1 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                # A zone's proxies reconnect together (a CP restart, a network blip): gRPC core
                # keeps at most 1,000 streams waiting for the servicer to pick them up and fails
                # the rest; let all of them wait for the (busy) event loop instead.
                ("grpc.server.max_pending_requests", 1 << 16),
                ("grpc.server.max_pending_requests_hard_limit", 1 << 17),
            ]
        )
        self.servicer.register(server)
        for add in self.extra_servicers:
            add(server)
        address = f"{self.config.xds_address}:{self.config.xds_port}"
        if self.tls is None:  # tests and benchmarks of the protocol only
            self.port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.key_path.read_bytes(), self.tls.cert_path.read_bytes())]
            )
            self.port = server.add_secure_port(address, credentials)
        await server.start()
        self._server = server
        log.info("listening", server="xds", address=self.config.xds_address, port=self.port, tls=self.tls is not None)

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> XdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = ["PUSH_ORDER", "Authenticator", "Callbacks", "StreamInfo", "TlsFiles", "XdsServer"]
