"""The ADS gRPC server: State of the World and delta (incremental) xDS on the same port, secrets
over the same stream.

The servicer knows only the ``ConfigWatcher`` protocol of the cache: per type URL it opens a
watch with what the proxy has, and sends what the watch answers. State of the World
(``StreamAggregatedResources``): a watch names the version of the type the proxy has; per nonce
the servicer tells ACKs from NACKs and ignores stale nonces (a reply to a response that was
already superseded). A NACK keeps the proxy on its last good config: the refused version is not
re-sent; the next snapshot is.

Delta (``DeltaAggregatedResources``, what zonemesh-dp's Envoy speaks by default): per type the
stream keeps the subscription (wildcard for LDS and CDS, names for EDS, RDS and SDS, changed by
``resource_names_subscribe``/``unsubscribe``) and, per resource, the version the proxy has; the
cache answers a watch with only the resources whose version differs and the names that are gone
(``removed_resources``). A reconnecting Envoy names what it has (``initial_resource_versions``):
nothing of it is re-sent. Each response is remembered by nonce until answered: an ACK makes its
versions the last ACKed ones; a NACK (Envoy refuses a whole response) leaves the last ACKed
versions as they were and keeps the refused ones from being re-sent until they change, so the
other resources of the type keep flowing.

Cluster warming: Envoy keeps an updated EDS cluster warming until it receives that cluster's
endpoints again, even when they did not change (xDS protocol, "Resource warming"; Kuma patched
go-control-plane the same way, kumahq/kuma#331). So after a CDS response the next EDS request
is answered in full whatever version it names, unless an EDS response followed the CDS one.
With delta Envoy does not ask again (its subscription did not change): after a CDS response the
endpoints of the clusters it carried are sent again, changed or not.

Credentials hold for the life of the stream, not only at its start. The Authenticator's
``Admission`` says until when the proxy's token is accepted (its ``exp`` plus the verification
leeway) and how to check it again: the stream is closed with UNAUTHENTICATED at that moment
(``xds_token_expired``), and ``revalidate`` closes every stream whose credential no longer passes
after a signing key or revocation change (``xds_stream_revoked``). From the moment a stream is
found invalid nothing more is sent on it.

Before authentication a stream costs the server and proves nothing: its first request (which
names the proxy the token is checked against) must come within ``auth_timeout``, and at most
``xds_max_unauthenticated_streams`` streams and calls may wait for it at once (``PreAuthGate``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.aio import run_to_completion
from zonemesh.shared.config import Config
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.store import Store
from zonemesh.zone_cp.xds.cache import (
    Cancel,
    ConfigWatcher,
    DeltaWatchRequest,
    DeltaWatchResponse,
    WatchRequest,
    WatchResponse,
)
from zonemesh.zone_cp.xds.metrics import (
    XDS_DELIVERY,
    XDS_NACKS,
    XDS_RESOURCES_SENT,
    XDS_RESPONSE_BYTES,
    XDS_STREAMS_REVOKED,
    XDS_UNAUTHENTICATED_DROPPED,
)
from zonemesh.zone_cp.xds.names import NOTHING, SharedNames
from zonemesh.zone_cp.xds.proxy import ProxyIdentity, ProxyType
from zonemesh.zone_cp.xds.resources import (
    CLUSTER,
    ENDPOINT,
    PUSH_ORDER,
    SHORT_NAMES,
    encode_delta_response,
    encode_response,
    with_nonce,
)

log = structlog.get_logger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

Metadata = tuple[tuple[str, str | bytes], ...]


class CredentialRefused(Exception):
    """A proxy's credential does not (or no longer) admit it; the message is the reason it is
    told, ``status_code`` the gRPC status its stream ends with."""

    def __init__(self, message: str, status_code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED) -> None:
        super().__init__(message)
        self.status_code = status_code


# Checks a stream's credential again, reading keys and revocations through ``store``; raises
# CredentialRefused when it no longer holds (anything else: the check itself failed).
Recheck = Callable[[Store], Awaitable[None]]


@dataclass(frozen=True)
class Admission:
    """What the Authenticator found: who the proxy is, and for how long and on what condition
    its stream may stay open."""

    identity: ProxyIdentity
    credential: str  # what the proxy presented, for messages: "dataplane token", "zone token"
    valid_until: float  # unix time the credential stops being accepted (a token's exp + leeway)
    recheck: Recheck
    # Which change may affect it: its token's id (jti) and signing key (kid); never the token.
    token_id: str = ""
    key_id: str = ""


# Checks the stream's initial metadata (``authorization: Bearer <token>``) and the Envoy node;
# returns the admission or raises (the message is the reason given to the proxy).
Authenticator = Callable[[Metadata, base_pb2.Node], Awaitable[Admission]]

# A proxy sends its first request as soon as its stream is open (Envoy: in the same packets).
# A stream still silent after this long holds one of the unauthenticated slots while it waits.
FIRST_MESSAGE_GRACE = 0.1


class PreAuthGate:
    """The wait for the first message of an xDS stream or call: bounded in time, and in how
    many may wait at once."""

    def __init__(self, timeout: float, limit: int) -> None:
        self.timeout = timeout
        self.limit = limit
        self.waiting = 0

    async def first_message(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> object:
        """The first message (or ``grpc.aio.EOF``); aborts the call with RESOURCE_EXHAUSTED when
        it is silent and every slot is taken, with DEADLINE_EXCEEDED when it stays silent."""
        read = asyncio.ensure_future(context.read())
        try:
            done, _ = await asyncio.wait((read,), timeout=min(FIRST_MESSAGE_GRACE, self.timeout))
            if done:
                return read.result()
            if self.waiting >= self.limit:
                log.warning("xds_unauthenticated_limit", peer=context.peer(), limit=self.limit)
                XDS_UNAUTHENTICATED_DROPPED.labels(reason="limit").inc()
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many xDS streams waiting to authenticate (xds_max_unauthenticated_streams={self.limit}): "
                    "retry later",
                )
            self.waiting += 1
            try:
                done, _ = await asyncio.wait((read,), timeout=max(0.0, self.timeout - FIRST_MESSAGE_GRACE))
            finally:
                self.waiting -= 1
            if done:
                return read.result()
            log.warning("xds_auth_timeout", peer=context.peer(), waited=self.timeout)
            XDS_UNAUTHENTICATED_DROPPED.labels(reason="deadline").inc()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no {what} within {self.timeout:g}s of opening the stream (auth_timeout)",
            )
            raise AssertionError("abort returns only by raising")  # pragma: no cover
        finally:
            if not read.done():
                read.cancel()
            # An aborted call fails the pending read (AbortError) rather than cancelling it: that is
            # the abort we made, nothing to report.
            read.add_done_callback(lambda task: task.cancelled() or task.exception())


class _FirstMessageDeadline(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Unary calls on the xDS port (dataplane registration) read their request under the same
    gate as ADS streams: gRPC would otherwise wait for a silent caller's message forever. The
    handler is served as stream-unary (the same frames on the wire) to read it ourselves."""

    def __init__(self, gate: PreAuthGate) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler  # ADS reads its first request through the gate itself
        unary = handler.unary_unary

        async def gated(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = await self.gate.first_message(context, "request")
            if request is grpc.aio.EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request")
            return await unary(request, context)

        return grpc.stream_unary_rpc_method_handler(
            gated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class StreamInfo:
    stream_id: int
    identity: ProxyIdentity
    node: base_pb2.Node  # what hooks read of it: ``kept_node``
    peer: str


def kept_node(node: base_pb2.Node) -> base_pb2.Node:
    """The part of a proxy's Envoy node a stream keeps for its life, in a message of its own.

    An Envoy's first request carries its node with every extension it was built with (Envoy 1.40:
    516 of them, 61 KB on the wire) and client features; nothing reads them. Keeping the node
    itself would keep the whole first request alive (a sub-message holds its parent's memory)."""
    kept = base_pb2.Node(id=node.id, cluster=node.cluster, user_agent_name=node.user_agent_name)
    for name in ("metadata", "locality"):
        if node.HasField(name):
            getattr(kept, name).CopyFrom(getattr(node, name))
    version = node.WhichOneof("user_agent_version_type")
    if version == "user_agent_version":
        kept.user_agent_version = node.user_agent_version
    elif version == "user_agent_build_version":
        kept.user_agent_build_version.CopyFrom(node.user_agent_build_version)
    return kept


StreamHook = Callable[[StreamInfo], Awaitable[None]]
AckHook = Callable[[StreamInfo, str, str], Awaitable[None]]  # type_url, version
NackHook = Callable[[StreamInfo, str, str, str], Awaitable[None]]  # type_url, refused version, error
# (node key, type_url, refused version) -> the policies the refusal is due to ("Type/name"; nacks.py)
Attribute = Callable[[str, str, str], list[str]]


@dataclass
class Callbacks:
    """Hooks into stream life; several parts may register (insights, the reconciler)."""

    stream_open: list[StreamHook] = field(default_factory=list)
    stream_close: list[StreamHook] = field(default_factory=list)
    ack: list[AckHook] = field(default_factory=list)
    nack: list[NackHook] = field(default_factory=list)
    attribute: Attribute | None = None  # names the policies a NACK is due to in its log line

    async def run(self, hooks: Sequence[Callable[..., Awaitable[None] | None]], *args: Any) -> None:
        for hook in hooks:
            try:
                pending = hook(*args)  # None: a scoped hook for other proxy types (_ScopedHooks)
                if pending is not None:
                    await pending
            except Exception:
                log.exception("xds_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)))

    def only(self, *proxy_types: ProxyType) -> ScopedCallbacks:
        """Where to register hooks that see the streams of ``proxy_types`` only (the dataplane side:
        its reconciler, insights and NACK attribution): they join these callbacks in order."""
        return ScopedCallbacks(self, frozenset(proxy_types))


class _ScopedHooks:
    """A hook list that adds each hook to ``target``, run only for streams of ``proxy_types``."""

    def __init__(self, target: list[Any], proxy_types: frozenset[ProxyType]) -> None:
        self.target = target
        self.proxy_types = proxy_types

    def append(self, hook: Callable[..., Awaitable[None]]) -> None:
        proxy_types = self.proxy_types

        # Not a coroutine of its own around the hook's: every ACK of every proxy runs the ACK
        # hooks, and ``Callbacks.run`` awaits what this returns.
        def scoped(info: StreamInfo, *args: Any) -> Awaitable[None] | None:
            if info.identity.proxy_type in proxy_types:
                return hook(info, *args)
            return None

        scoped.__qualname__ = getattr(hook, "__qualname__", repr(hook))  # as xds_hook_failed names it
        self.target.append(scoped)


class ScopedCallbacks:
    """``Callbacks.only(...)``: registers on the server's callbacks, for some proxy types."""

    def __init__(self, callbacks: Callbacks, proxy_types: frozenset[ProxyType]) -> None:
        self.callbacks = callbacks
        self.stream_open = _ScopedHooks(callbacks.stream_open, proxy_types)
        self.stream_close = _ScopedHooks(callbacks.stream_close, proxy_types)
        self.ack = _ScopedHooks(callbacks.ack, proxy_types)
        self.nack = _ScopedHooks(callbacks.nack, proxy_types)

    @property
    def attribute(self) -> Attribute | None:
        return self.callbacks.attribute

    @attribute.setter
    def attribute(self, attribute: Attribute | None) -> None:
        self.callbacks.attribute = attribute


@dataclass
class _TypeState:
    nonce: str = ""
    sent_version: str = ""
    sent_names: frozenset[str] | None = None
    changed_at: float | None = None
    acked: bool = True
    cancel: Cancel | None = None


@functools.cache
def _sent_counters(type_url: str, protocol: str) -> tuple[Any, Any]:
    """The metric children a response of ``type_url`` counts in (bound once: every response counts)."""
    return XDS_RESOURCES_SENT.labels(type_url=type_url, protocol=protocol), XDS_RESPONSE_BYTES.labels(protocol)


class _Outbox:
    """The responses a stream's writer has yet to write, in order. An ``asyncio.Queue`` is three
    deques and an Event (~3 KB) per stream; this is a list and, while the writer waits, a future."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: bytes) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def qsize(self) -> int:
        return len(self._items)


class _StreamBase:
    """What an ADS stream has whichever its protocol: who it is, its outbox, how it ends."""

    protocol = ""

    def __init__(self, info: StreamInfo, admission: Admission, watcher: ConfigWatcher, callbacks: Callbacks) -> None:
        self.info = info
        self.admission = admission
        self.watcher = watcher
        self.callbacks = callbacks
        self.outbox = _Outbox()
        # Set (status, reason) when the stream must end from the outside: its credential no longer holds.
        self.ended: asyncio.Future[tuple[grpc.StatusCode, str]] = asyncio.get_running_loop().create_future()
        self._nonces = itertools.count(1)
        self._delivered_stamp: float | None = None
        # gRPC's write of a response is under way (``AdsServicer._write``), and whether the stream is
        # closing (the writer then stops after that write).
        self.writing = False
        self.closing = False

    def end(self, code: grpc.StatusCode, reason: str) -> None:
        """Close the stream with ``code``; nothing more is sent on it from now on."""
        if not self.ended.done():
            self.ended.set_result((code, reason))
        self.close()

    async def handle(self, request: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _put(self, type_url: str, resources: int, body: bytes) -> None:
        """Queue a response for the writer, counted in the metrics."""
        sent, size = _sent_counters(type_url, self.protocol)
        sent.inc(resources)
        size.inc(len(body))
        self.outbox.put_nowait(body)

    def _newer(self, stamp: float | None) -> bool:
        """Whether ``stamp`` (a change's) is after the last change found delivered on this stream."""
        return stamp is not None and (self._delivered_stamp is None or stamp > self._delivered_stamp)

    def _delivered(self, stamp: float) -> None:
        self._delivered_stamp = stamp
        XDS_DELIVERY.observe(time.monotonic() - stamp)

    async def _report_nack(self, type_url: str, version: str, error: str, **details: Any) -> None:
        XDS_NACKS.labels(type_url=type_url).inc()
        attribute = self.callbacks.attribute
        policies = attribute(self.info.identity.key, type_url, version) if attribute is not None else []
        log.warning(
            "xds_nack",
            proxy=self.info.identity.key,
            type_url=type_url,
            version=version,
            error=error,
            policies=policies,
            **details,
        )
        await self.callbacks.run(self.callbacks.nack, self.info, type_url, version, error)


class _Stream(_StreamBase):
    """One State of the World ADS stream: per type, the last response sent and the watch waiting
    for the next."""

    protocol = "sotw"

    def __init__(self, info: StreamInfo, admission: Admission, watcher: ConfigWatcher, callbacks: Callbacks) -> None:
        super().__init__(info, admission, watcher, callbacks)
        self.types: dict[str, _TypeState] = {}
        self._endpoints_owed = False  # a CDS response went out with no EDS response after it

    async def handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        if self.ended.done():
            return
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
        names = _NAMES.of(request.resource_names)
        if type_url == ENDPOINT and self._endpoints_owed:
            version = ""  # answer even an unchanged version: updated clusters are warming on it
        watch = WatchRequest(self.info.identity.key, type_url, version, names, state.sent_names)
        state.cancel = self.watcher.create_watch(watch, lambda resp: self._send(state, resp))

    def _send(self, state: _TypeState, resp: WatchResponse) -> None:
        if self.ended.done():
            return
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
            body = with_nonce(resp.body, nonce)
        else:
            body = encode_response(resp.version, resp.resources, resp.type_url, nonce)
        self._put(resp.type_url, len(resp.resources), body)

    async def _acked(self, type_url: str, state: _TypeState, version: str) -> None:
        # A change is delivered when every response it caused is ACKed: all types sent with its
        # stamp, and the EDS response owed after a CDS one (Envoy re-subscribes to EDS then, and
        # that request also "ACKs" the previous, older EDS response: not a delivery).
        stamp = state.changed_at
        owed = self._endpoints_owed and ENDPOINT in self.types
        if self._newer(stamp) and not owed and all(s.acked or s.changed_at != stamp for s in self.types.values()):
            assert stamp is not None
            self._delivered(stamp)
        await self.callbacks.run(self.callbacks.ack, self.info, type_url, version)

    async def _nacked(self, type_url: str, state: _TypeState, error: str) -> None:
        await self._report_nack(type_url, state.sent_version, error)

    def close(self) -> None:
        for state in self.types.values():
            if state.cancel is not None:
                state.cancel()
                state.cancel = None


# How long a stream's end waits for a response gRPC is writing (a client that reads nothing holds it).
WRITE_GRACE = 1.0

# A delta stream answers each request with at most one response; a proxy that never answers
# them could still make them pile up (subscribing and unsubscribing). Beyond this many
# unanswered responses of one type, the oldest is forgotten (a late reply to it is ignored).
MAX_UNANSWERED = 64

# Subscriptions add up over a delta stream's requests (each is bounded by gRPC's message size,
# their sum is not): a stream that subscribes to more names of one type than any proxy's config
# holds, or names more resources it has, is ended rather than let the server's memory grow.
MAX_SUBSCRIBED = 100_000

# Subscribing to this name (or unsubscribing from it) turns the wildcard on (off).
WILDCARD = "*"
_TYPE_URLS = {type_url: type_url for type_url in SHORT_NAMES}


@dataclass(slots=True)
class _Sent:
    """One delta response until the proxy answers it: what it carried."""

    versions: dict[str, str]  # name -> version of each resource sent
    removed: tuple[str, ...]
    system_version: str  # the type's version in the snapshot it came from (what hooks and logs name)
    changed_at: float | None


# What a stream owes or forces when it owes nothing: one object for every stream and type (an
# empty frozenset built from an empty set is a new 216-byte object each time).
_NOTHING: frozenset[str] = NOTHING
# The names streams subscribe to, one frozenset for all the streams subscribing to the same.
_NAMES = SharedNames()


# One per type per stream, thousands of them: slots, and nothing kept that is not read. What the
# proxy ACKed is not kept apart from ``known`` (no per-stream copy of every resource's version).
@dataclass(slots=True)
class _DeltaTypeState:
    wildcard: bool = False
    names: frozenset[str] = _NOTHING  # subscribed by name
    # Per resource, the version the proxy has as far as the server knows: ACKed, sent and not
    # answered yet, or refused (never re-sent at that version). What the diffs are taken against.
    known: dict[str, str] = field(default_factory=dict)
    unanswered: dict[str, _Sent] = field(default_factory=dict)  # by nonce
    # EDS: endpoints to send even unchanged (clusters warm on them). Immutable, so that the open
    # watch takes it as it is (``forced``) instead of a copy per watch.
    owed: frozenset[str] = _NOTHING
    forced: frozenset[str] = _NOTHING  # the owed names the open watch was opened with
    watching: bool = False  # a watch is open, waiting for a change
    cancel: Cancel | None = None


class _DeltaStream(_StreamBase):
    """One delta (incremental) ADS stream: per type, the subscription, what the proxy has, and the
    responses it has not answered yet."""

    protocol = "delta"

    def __init__(self, info: StreamInfo, admission: Admission, watcher: ConfigWatcher, callbacks: Callbacks) -> None:
        super().__init__(info, admission, watcher, callbacks)
        self.types: dict[str, _DeltaTypeState] = {}
        # Clusters sent before the stream subscribed to endpoints (a reconnect's requests come in
        # any order): their endpoints are owed once it does.
        self._warming: set[str] = set()

    async def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if self.ended.done():
            return
        # The module's own string, not the request's copy: the stream keeps it (its states' key,
        # its watches) for as long as it lives.
        type_url = _TYPE_URLS.get(request.type_url)
        if type_url is None:
            log.warning("xds_unknown_type", proxy=self.info.identity.key, type_url=request.type_url)
            return
        state = self.types.get(type_url)
        fresh = state is None
        if state is None:
            # The first request of a type says what the proxy has (after a reconnect): not re-sent.
            state = self.types[type_url] = _DeltaTypeState(known=dict(request.initial_resource_versions))
        if request.response_nonce:
            sent = state.unanswered.pop(request.response_nonce, None)
            if sent is None:
                log.debug("xds_stale_nonce", proxy=self.info.identity.key, type_url=type_url)
            elif request.HasField("error_detail"):
                await self._nacked(type_url, sent, request.error_detail.message)
            else:
                await self._acked(type_url, sent)
            if self.ended.done():
                return
        self._subscribe(state, request, fresh)
        if len(state.names) > MAX_SUBSCRIBED or len(state.known) > MAX_SUBSCRIBED:
            count = max(len(state.names), len(state.known))
            log.warning("xds_too_many_subscriptions", proxy=self.info.identity.key, type_url=type_url, count=count)
            self.end(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_SUBSCRIBED} resources of {SHORT_NAMES[type_url]} subscribed or held on one stream",
            )
            return
        if fresh and type_url == ENDPOINT and self._warming:
            state.owed = frozenset(name for name in self._warming if state.wildcard or name in state.names) or _NOTHING
            self._warming.clear()
        # A fresh wildcard subscription waits for a first response (Envoy's initialization), even
        # an empty one; one that names what it has (a reconnect) only for what differs.
        self._watch(type_url, state, reply_if_empty=fresh and state.wildcard and not request.initial_resource_versions)

    @staticmethod
    def _subscribe(state: _DeltaTypeState, request: discovery_pb2.DeltaDiscoveryRequest, fresh: bool) -> None:
        subscribe, unsubscribe = request.resource_names_subscribe, request.resource_names_unsubscribe
        if fresh and not subscribe:
            state.wildcard = True  # "legacy" wildcard: how Envoy subscribes to LDS and CDS
        if not subscribe and not unsubscribe:
            return
        names = set(state.names)
        for name in subscribe:
            if name == WILDCARD:
                state.wildcard = True
            else:
                if not fresh and name in names:
                    # Subscribed again: Envoy dropped its copy (its interest went and came back).
                    state.known.pop(name, None)
                names.add(name)
        for name in unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                continue
            names.discard(name)
            if state.wildcard:
                state.known[name] = ""  # still wanted through the wildcard: sent again, or removed
            else:
                state.known.pop(name, None)
                if name in state.owed:
                    state.owed = state.owed - {name} or _NOTHING
        state.names = _NAMES.of(names)

    def _watch(self, type_url: str, state: _DeltaTypeState, reply_if_empty: bool = False) -> None:
        if state.cancel is not None:
            state.cancel()
        state.forced = state.owed
        request = DeltaWatchRequest(
            self.info.identity.key, type_url, state.wildcard, state.names, state.known, state.forced, reply_if_empty
        )
        state.watching = True
        state.cancel = self.watcher.create_delta_watch(request, functools.partial(self._send, type_url, state))

    def _send(self, type_url: str, state: _DeltaTypeState, resp: DeltaWatchResponse) -> None:
        state.watching = False
        state.cancel = None
        if self.ended.done():
            return
        nonce = str(next(self._nonces))
        versions = {name: version for name, version, _ in resp.resources}
        state.known.update(versions)
        for name in resp.removed:
            state.known.pop(name, None)
        if state.forced:  # sent now, or no longer in the snapshot
            state.owed = state.owed - state.forced or _NOTHING
        if len(state.unanswered) >= MAX_UNANSWERED:
            del state.unanswered[next(iter(state.unanswered))]
        state.unanswered[nonce] = _Sent(versions, tuple(resp.removed), resp.system_version, resp.changed_at)
        body = encode_delta_response(resp.system_version, resp.resources, resp.removed, type_url, nonce, resp.heads)
        self._put(type_url, len(resp.resources), body)
        if type_url == CLUSTER and versions:
            self._owe_endpoints(versions)

    def _owe_endpoints(self, clusters: Iterable[str]) -> None:
        """The clusters just sent warm until their endpoints arrive again: send them after."""
        state = self.types.get(ENDPOINT)
        if state is None:
            self._warming.update(clusters)
            return
        owed = {name for name in clusters if state.wildcard or name in state.names}
        if not owed:
            return
        state.owed = state.owed | owed
        if state.watching:  # else the next EDS request (the ACK of the one on its way) opens a watch
            self._watch(ENDPOINT, state)

    async def _acked(self, type_url: str, sent: _Sent) -> None:
        # A change is delivered when every response it caused is ACKed, the endpoints owed after a
        # CDS response included.
        stamp = sent.changed_at
        if self._newer(stamp) and not self._awaiting(stamp):
            assert stamp is not None
            self._delivered(stamp)
        await self.callbacks.run(self.callbacks.ack, self.info, type_url, sent.system_version)

    def _awaiting(self, stamp: float | None) -> bool:
        for state in self.types.values():  # loops, not a generator per type: once per ACK
            if state.owed:
                return True
            for sent in state.unanswered.values():
                if sent.changed_at == stamp:
                    return True
        return False

    async def _nacked(self, type_url: str, sent: _Sent, error: str) -> None:
        # Envoy refused the response as a whole; its listener and cluster managers still apply the
        # valid resources of it and refuse only the invalid ones. The refused versions stay in
        # ``known`` (not re-sent until they change); the last ACKed versions stay as they were.
        await self._report_nack(type_url, sent.system_version, error, resources=sorted(sent.versions))

    def close(self) -> None:
        for state in self.types.values():
            if state.cancel is not None:
                state.cancel()
                state.cancel = None
            state.watching = False


class AdsServicer:
    def __init__(
        self, watcher: ConfigWatcher, authenticator: Authenticator, callbacks: Callbacks, gate: PreAuthGate
    ) -> None:
        self.watcher = watcher
        self.authenticator = authenticator
        self.callbacks = callbacks
        self.gate = gate
        self._ids = itertools.count(1)
        self._streams: dict[int, _StreamBase] = {}

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream_aggregated_resources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity,  # responses are assembled from pre-serialized bytes
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.delta_aggregated_resources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))

    async def stream_aggregated_resources(self, _requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """State of the World ADS."""
        await self._serve(context, _Stream, discovery_pb2.DiscoveryRequest)

    async def delta_aggregated_resources(self, _requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Delta (incremental) ADS."""
        await self._serve(context, _DeltaStream, discovery_pb2.DeltaDiscoveryRequest)

    async def _serve(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        protocol: type[_StreamBase],
        request_type: type[discovery_pb2.DiscoveryRequest] | type[discovery_pb2.DeltaDiscoveryRequest],
    ) -> None:
        """One ADS stream, whichever its protocol: authenticated by its first request, closed when
        its credential stops holding."""
        first = await self.gate.first_message(context, request_type.__name__)
        if first is grpc.aio.EOF:
            return
        assert isinstance(first, request_type)
        metadata: Metadata = tuple((m.key, m.value) for m in (context.invocation_metadata() or ()))
        try:
            admission = await self.authenticator(metadata, first.node)
        except Exception as exc:
            # A refusal may carry its own status (the license: RESOURCE_EXHAUSTED, as registration
            # answers); anything else is an authentication failure.
            code = exc.status_code if isinstance(exc, CredentialRefused) else grpc.StatusCode.UNAUTHENTICATED
            if code is grpc.StatusCode.UNAUTHENTICATED:
                log.warning("xds_unauthenticated", node=first.node.id, peer=context.peer(), reason=str(exc))
            else:
                log.warning("xds_refused", node=first.node.id, peer=context.peer(), code=code.name, reason=str(exc))
            await context.abort(code, str(exc) or "authentication failed")
            return
        identity = admission.identity
        info = StreamInfo(next(self._ids), identity, kept_node(first.node), context.peer())
        stream = protocol(info, admission, self.watcher, self.callbacks)
        self._streams[info.stream_id] = stream
        # The credential's end closes the stream, whatever it is doing then.
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, admission.valid_until - time.time()), self._expired, stream
        )
        log.info(
            "xds_stream_opened", proxy=identity.key, stream=info.stream_id, peer=info.peer, protocol=protocol.protocol
        )
        await self.callbacks.run(self.callbacks.stream_open, info)
        reader = asyncio.create_task(self._read(context, stream, first))
        writer = asyncio.create_task(self._write(context, stream))
        # Not kept for the stream's life: the first request (an Envoy's node is ~60 KB) and the
        # metadata (its token).
        del first, metadata
        try:
            await asyncio.wait((reader, writer, stream.ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            expiry.cancel()
            await run_to_completion(self._closed(info, stream, reader, writer))
        if stream.ended.done():
            code, reason = stream.ended.result()
            await context.abort(code, reason)

    def _expired(self, stream: _StreamBase) -> None:
        credential = stream.admission.credential
        log.warning(
            "xds_token_expired", proxy=stream.info.identity.key, stream=stream.info.stream_id, credential=credential
        )
        XDS_STREAMS_REVOKED.labels(reason="expired").inc()
        stream.end(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{credential} expired: the stream closes at the token's exp; give the proxy a new token",
        )

    async def revalidate(self, select: Callable[[Admission], bool], store: Store) -> int:
        """Check the credential of every open stream ``select`` picks again (after a signing key or
        a revocation changed), reading through ``store``; close those that no longer pass.
        Returns how many were closed."""
        streams = [s for s in self._streams.values() if select(s.admission) and not s.ended.done()]
        results = await asyncio.gather(*(s.admission.recheck(store) for s in streams), return_exceptions=True)
        closed = 0
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, CredentialRefused):
                self._revoked(stream, str(result), result.status_code)
                closed += 1
            elif isinstance(result, Exception):
                # The check could not run (the store failed): the stream stays until the next
                # change or its exp; closing every stream on a store hiccup would help no one.
                log.warning("xds_revalidation_failed", proxy=stream.info.identity.key, error=str(result))
        return closed

    def _revoked(
        self, stream: _StreamBase, reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
    ) -> None:
        log.warning("xds_stream_revoked", proxy=stream.info.identity.key, stream=stream.info.stream_id, reason=reason)
        XDS_STREAMS_REVOKED.labels(reason="refused").inc()
        stream.end(code, reason)

    async def still_admitted(self, proxies: Iterable[ProxyIdentity], store: Store) -> set[ProxyIdentity]:
        """Of ``proxies``, those with an open stream whose credential passes now (checked again,
        reading through ``store``): what may receive a new workload certificate. Streams that
        fail are closed."""
        wanted = set(proxies)
        await self.revalidate(lambda admission: admission.identity in wanted, store)
        return {s.info.identity for s in self._streams.values() if s.info.identity in wanted and not s.ended.done()}

    async def _closed(
        self, info: StreamInfo, stream: _StreamBase, reader: asyncio.Task[None], writer: asyncio.Task[None]
    ) -> None:
        reader.cancel()
        stream.closing = True
        if stream.writing:  # only while the writer is inside a write, so it is not done
            # A write gRPC has started is let finish (bounded): cancelling the wait for it leaves
            # the write pending in gRPC, and the status that ends the call (abort) was then refused
            # (TOO_MANY_OPERATIONS): a revoked stream stayed open. The writer stops after it.
            await asyncio.wait((writer,), timeout=WRITE_GRACE)
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        stream.close()
        self._streams.pop(info.stream_id, None)
        log.info("xds_stream_closed", proxy=info.identity.key, stream=info.stream_id)
        await self.callbacks.run(self.callbacks.stream_close, info)

    @staticmethod
    async def _read(context: grpc.aio.ServicerContext[Any, Any], stream: _StreamBase, first: object) -> None:
        request: object = first
        del first
        while request is not grpc.aio.EOF:
            await stream.handle(request)
            # Nothing is kept while waiting for the next request: a State of the World Envoy may
            # send its node (~60 KB) in every request.
            request = None
            request = await context.read()

    @staticmethod
    async def _write(context: grpc.aio.ServicerContext[Any, Any], stream: _StreamBase) -> None:
        while not stream.closing:
            body = await stream.outbox.get()
            if stream.ended.done():
                return  # found invalid meanwhile: nothing more is sent on it
            stream.writing = True
            try:
                await context.write(body)
            finally:
                stream.writing = False


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class TlsFiles:
    cert_path: Path
    key_path: Path


ServicerFactory = Callable[[grpc.aio.Server], None]

# The largest TLS record the xDS server writes. Each connection holds a buffer of this size (gRPC's
# default: 16 KB): with 2 KB, 7 KB less per proxy at 500 proxies (bench/xds_zone.py), for records
# of at most 2 KB (22 bytes of TLS overhead each; a mesh-wide change sends ~0.8 KB per proxy).
XDS_TLS_FRAME_SIZE = 2048
# The server options that bound its memory per connection (bench/xds_zone.py gives its floor the
# same, and measures the floor without them too).
XDS_MEMORY_OPTIONS: list[tuple[str, Any]] = [("grpc.tsi.max_frame_size", XDS_TLS_FRAME_SIZE)]


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
        self.auth_timeout = parse_duration(config.auth_timeout)
        self.gate = PreAuthGate(self.auth_timeout, config.xds_max_unauthenticated_streams)
        self.servicer = AdsServicer(cache, authenticator, callbacks or Callbacks(), self.gate)
        self.tls = tls
        self.extra_servicers = list(extra_servicers)
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(
            interceptors=[_FirstMessageDeadline(self.gate)],
            options=[
                ("grpc.so_reuseport", 0),
                # A client that connects must finish TLS and HTTP/2 setup in time too (default 120 s).
                ("grpc.server_handshake_timeout_ms", int(self.auth_timeout * 1000)),
                ("grpc.max_concurrent_streams", 1 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                # A zone's proxies reconnect together (a CP restart, a network blip): gRPC core
                # keeps at most 1,000 streams waiting for the servicer to pick them up and fails
                # the rest; let all of them wait for the (busy) event loop instead.
                ("grpc.server.max_pending_requests", 1 << 16),
                ("grpc.server.max_pending_requests_hard_limit", 1 << 17),
                # gRPC's TLS writer keeps a buffer of its frame size per connection (16 KB by
                # default) and cuts what it sends into TLS records that big at most.
                *XDS_MEMORY_OPTIONS,
            ],
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


__all__ = [
    "PUSH_ORDER",
    "XDS_MEMORY_OPTIONS",
    "XDS_TLS_FRAME_SIZE",
    "Admission",
    "Authenticator",
    "Callbacks",
    "CredentialRefused",
    "PreAuthGate",
    "StreamInfo",
    "TlsFiles",
    "XdsServer",
]
