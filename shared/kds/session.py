"""One KDS stream, seen from either end: an Outbox that sends, an inbox callback that
applies, ACKs per nonce, heartbeats both ways and a silence watchdog.

The inbox callback returns the resources it refused (shared/kds/trust.py): the ACK is then a
NACK naming them, the rest of the message having been applied, and the sending Outbox treats
only those as undelivered.

The handshake (Hello / Welcome) is done by the global server and the zone client before a
Session starts; from then on both ends run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from zonemesh.proto import kds_pb2
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.kds.codec import key_str, parse_key
from zonemesh.shared.kds.metrics import DELTA_GENERATION, NACK_TOTAL, RESOURCES_SYNC
from zonemesh.shared.kds.snapshot import Item, Snapshot

log = structlog.get_logger(__name__)

# Resources per Changes message: large enough to amortise the per-message cost (kds-floor.md),
# small enough to stay far below gRPC's message size limit.
CHUNK = 1000
# Changes messages in flight (sent, not yet ACKed) per stream.
WINDOW = 16
# After a NACK, wait before sending a refused resource again: 1 s, doubling with each refusal of
# that resource in a row up to 30 s (a resource the peer keeps refusing is not resent every
# second, however busy the stream is), back to 1 s once the peer accepted it.
NACK_BACKOFF = 1.0
NACK_BACKOFF_MAX = 30.0
# Refused resources logged one by one per NACK (all are counted); the NACK's line has the total.
LOG_REFUSED = 10

Reader = Callable[[], Awaitable[Any]]
Writer = Callable[[kds_pb2.Message], Awaitable[None]]
# Applies one received Changes; returns the resources it refused (None or empty: all applied).
# Raising refuses the whole message.
Applier = Callable[[kds_pb2.Changes], Awaitable[list[kds_pb2.Rejected] | None]]


@dataclass
class TypeStats:
    sent: int = 0  # Changes this side sent...
    acked: int = 0  # ...that the peer applied entirely
    nacked: int = 0  # ...that the peer NACKed (all or some of their resources refused)
    refused_by_peer: int = 0  # resources the peer refused
    last_refusal: str = ""  # the last one: "Type/mesh/name: reason"
    received: int = 0  # Changes this side received...
    rejected: int = 0  # ...and NACKed
    refused: int = 0  # resources this side refused

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "responsesSent": self.sent,
            "responsesAcknowledged": self.acked,
            "responsesRejected": self.nacked,
            "resourcesRejected": self.refused_by_peer,
            "requestsReceived": self.received,
            "requestsRejected": self.rejected,
            "requestResourcesRejected": self.refused,
        }
        if self.last_refusal:
            out["lastRejection"] = self.last_refusal
        return out


@dataclass
class Stats:
    by_type: dict[str, TypeStats] = field(default_factory=lambda: defaultdict(TypeStats))
    last_update: float = 0.0

    def total(self) -> dict[str, Any]:
        out = TypeStats()
        for s in self.by_type.values():
            out.sent += s.sent
            out.acked += s.acked
            out.nacked += s.nacked
            out.refused_by_peer += s.refused_by_peer
            out.received += s.received
            out.rejected += s.rejected
            out.refused += s.refused
        return out.as_dict()


@dataclass
class _InFlight:
    type: str
    upserts: dict[str, str]
    removals: list[str]


class Outbox:
    """Keeps a peer in step with a Snapshot: sends the difference between the snapshot
    (as filtered by ``accept``) and ``peer_has`` (key -> hash the peer holds), then every change."""

    def __init__(
        self,
        snapshot: Snapshot,
        send: Writer,
        *,
        peer_has: dict[str, str],
        accept: Callable[[Item], bool] = lambda item: True,
        stats: Stats,
        zone: str,
    ) -> None:
        self.snapshot = snapshot
        self.send = send
        self.peer_has = dict(peer_has)
        self.accept = accept
        self.stats = stats
        self.zone = zone
        self._pending: set[str] = set()
        self._resync = False
        self._wake = asyncio.Event()
        self._window = asyncio.Semaphore(WINDOW)
        self._inflight: dict[str, _InFlight] = {}
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._refusals: dict[str, int] = {}  # key -> refusals in a row by the peer (its retry backoff)
        self.synced = asyncio.Event()  # set when nothing is pending and every sent message is answered

    def start(self) -> None:
        self._unsubscribe = self.snapshot.subscribe(self.notify)
        self.notify(set(self.snapshot.items) | set(self.peer_has), resync=True)
        self._task = asyncio.create_task(self._run(), name=f"kds-outbox-{self.zone}")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel_and_wait([self._task, *self._retries])

    def notify(self, keys: Iterable[str], resync: bool = False) -> None:
        self._pending.update(keys)
        self._resync = self._resync or resync
        self.synced.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys, self._pending = self._pending, set()
            resync, self._resync = self._resync, False
            await self._push(keys, resync)
            self._check_synced()

    def _check_synced(self) -> None:
        if not self._pending and not self._inflight:
            self.synced.set()

    def _delta(self, keys: set[str]) -> dict[str, tuple[list[kds_pb2.Resource], list[str]]]:
        by_type: dict[str, tuple[list[kds_pb2.Resource], list[str]]] = {}
        items = self.snapshot.items
        for key in keys:
            item = items.get(key)
            if item is not None and self.accept(item):
                if self.peer_has.get(key) != item.hash:
                    by_type.setdefault(item.type, ([], []))[0].append(item.wire)
                    continue
            elif key in self.peer_has:
                by_type.setdefault(parse_key(key).type, ([], []))[1].append(key)
                continue
            self._refusals.pop(key, None)  # nothing to send: in step with the peer, or gone on both sides
        return by_type

    async def _push(self, keys: set[str], resync: bool) -> None:
        started = time.perf_counter()
        by_type = self._delta(keys)
        DELTA_GENERATION.labels(self.zone).observe(time.perf_counter() - started)
        # Meshes first: a zone should hold a mesh before what lives in it.
        for type in sorted(by_type, key=lambda t: (t != "Mesh", t)):
            upserts, removals = by_type[type]
            for start in range(0, max(len(upserts), len(removals)), CHUNK):
                await self._send_chunk(type, upserts[start : start + CHUNK], removals[start : start + CHUNK], resync)

    async def _send_chunk(self, type: str, upserts: list[kds_pb2.Resource], removals: list[str], resync: bool) -> None:
        await self._window.acquire()
        nonce = uuid.uuid4().hex
        entry = _InFlight(type, {}, removals)
        for wire in upserts:
            key = f"{wire.type}/{wire.mesh}/{wire.name}"
            entry.upserts[key] = wire.hash
            self.peer_has[key] = wire.hash
        for key in removals:
            self.peer_has.pop(key, None)
        self._inflight[nonce] = entry
        changes = kds_pb2.Changes(
            nonce=nonce,
            type=type,
            upserts=upserts,
            removals=[kds_pb2.ResourceKey(type=k.type, mesh=k.mesh, name=k.name) for k in map(parse_key, removals)],
            resync=resync,
        )
        self.stats.by_type[type].sent += 1
        self.stats.last_update = time.time()
        await self.send(kds_pb2.Message(changes=changes))

    def on_ack(self, ack: kds_pb2.Ack) -> None:
        entry = self._inflight.pop(ack.nonce, None)
        if entry is None:
            log.warning("kds_unknown_nonce", zone=self.zone, nonce=ack.nonce)
            return
        self._window.release()
        stats = self.stats.by_type[entry.type]
        self.stats.last_update = time.time()
        sent = [*entry.upserts, *entry.removals]
        if not ack.nack:
            stats.acked += 1
            for key in sent:
                self._refusals.pop(key, None)
            self._check_synced()
            return
        stats.nacked += 1
        NACK_TOTAL.labels(self.zone, entry.type).inc()
        # A NACK naming resources: only those were refused, the rest applied. Naming none (an older
        # peer, or the whole message refused), or only keys this message did not carry: all refused.
        reasons = {key_str(r.key.type, r.key.mesh, r.key.name): r.reason for r in ack.rejected}
        refused = [key for key in sent if key in reasons] or sent
        for key in set(sent) - set(refused):
            self._refusals.pop(key, None)
        # Forget what the peer refused, so that the retry sends it again.
        removals = set(entry.removals)
        for key in refused:
            if key in removals:
                self.peer_has.setdefault(key, "")
            elif self.peer_has.get(key) == entry.upserts[key]:
                del self.peer_has[key]
        stats.refused_by_peer += len(refused)
        stats.last_refusal = f"{refused[0]}: {reasons.get(refused[0]) or ack.error}"
        by_delay: dict[float, list[str]] = {}
        for key in refused:
            count = self._refusals.get(key, 0)
            by_delay.setdefault(min(NACK_BACKOFF_MAX, NACK_BACKOFF * 2**count), []).append(key)
            self._refusals[key] = min(count + 1, 16)
        log.warning(
            "kds_nack_received",
            zone=self.zone,
            type=entry.type,
            error=ack.error,
            refused=len(refused),
            applied=len(sent) - len(refused),
            retry_in=min(by_delay),
        )
        for key in refused[:LOG_REFUSED] if reasons else ():
            reason = reasons.get(key, ack.error)
            log.warning("kds_resource_refused_by_peer", zone=self.zone, resource=key, reason=reason)
        for delay, keys in by_delay.items():
            task = asyncio.create_task(self._retry_later(keys, delay))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retry_later(self, keys: list[str], delay: float) -> None:
        await asyncio.sleep(delay)
        self.notify(keys)


class StreamClosed(Exception):
    """The session ended; ``code``/``details`` say why (for the gRPC status on the server side)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(details)


class Session:
    """Runs an established stream until the peer goes away, goes silent, or ``close()``."""

    def __init__(
        self,
        *,
        zone: str,
        read: Reader,
        write: Writer,
        apply: Applier,
        stats: Stats,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        status: Callable[[], bytes] | None = None,
        on_heartbeat: Callable[[kds_pb2.Heartbeat], None] | None = None,
        outbox: Callable[[Writer], Outbox] | None = None,
    ) -> None:
        """``outbox``: makes what this side sends its peer, given the session's ``send`` (started
        by the caller once the stream is set up; stopped when the session ends)."""
        self.zone = zone
        self._read = read
        self._write = write
        self._apply = apply
        self.stats = stats
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._status = status
        self._on_heartbeat = on_heartbeat
        self._queue: asyncio.Queue[kds_pb2.Message] = asyncio.Queue()
        self.outbox = outbox(self.send) if outbox is not None else None
        self.last_seen = time.monotonic()
        self._closed: asyncio.Future[StreamClosed] = asyncio.get_running_loop().create_future()

    async def send(self, msg: kds_pb2.Message) -> None:
        self._queue.put_nowait(msg)

    def close(self, code: grpc.StatusCode, details: str) -> None:
        if not self._closed.done():
            self._closed.set_result(StreamClosed(code, details))

    async def run(self) -> StreamClosed:
        """Serve until the stream ends. Returns why it ended (never raises for a peer going away)."""
        tasks = [
            asyncio.create_task(self._writer(), name="kds-writer"),
            asyncio.create_task(self._heartbeats(), name="kds-heartbeat"),
            asyncio.create_task(self._reader(), name="kds-reader"),
        ]
        try:
            waiting: list[asyncio.Future[Any]] = [*tasks, self._closed]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._closed.done():
                return self._closed.result()
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if isinstance(exc, StreamClosed):
                        return exc
                    if isinstance(exc, grpc.aio.AioRpcError):
                        return StreamClosed(exc.code(), exc.details() or "stream failed")
                    log.error("kds_stream_failed", zone=self.zone, error=repr(exc))
                    return StreamClosed(grpc.StatusCode.INTERNAL, f"stream failed: {exc!r}")
            return StreamClosed(grpc.StatusCode.OK, "peer closed the stream")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if self.outbox is not None:
                await self.outbox.stop()

    async def _writer(self) -> None:
        while True:
            msg = await self._queue.get()
            await self._write(msg)

    async def _heartbeats(self) -> None:
        while True:
            status = self._status() if self._status is not None else b""
            await self.send(
                kds_pb2.Message(heartbeat=kds_pb2.Heartbeat(time_unix_ms=int(time.time() * 1000), status=status))
            )
            await asyncio.sleep(self.heartbeat_interval)
            silence = time.monotonic() - self.last_seen
            if silence > self.heartbeat_timeout:
                raise StreamClosed(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message from the peer for {silence:.1f}s (heartbeat timeout {self.heartbeat_timeout:g}s)",
                )

    async def _reader(self) -> None:
        while True:
            msg = await self._read()
            if msg is grpc.aio.EOF or msg is None:
                return
            self.last_seen = time.monotonic()
            kind = msg.WhichOneof("kind")
            if kind == "changes":
                await self._receive(msg.changes)
            elif kind == "ack":
                if self.outbox is not None:
                    self.outbox.on_ack(msg.ack)
            elif kind == "heartbeat":
                if self._on_heartbeat is not None:
                    self._on_heartbeat(msg.heartbeat)
            else:
                log.warning("kds_unexpected_message", zone=self.zone, kind=kind)

    async def _receive(self, changes: kds_pb2.Changes) -> None:
        stats = self.stats.by_type[changes.type]
        stats.received += 1
        self.stats.last_update = time.time()
        started = time.perf_counter()
        total = len(changes.upserts) + len(changes.removals)
        try:
            rejected = list(await self._apply(changes) or ())
        except Exception as exc:
            stats.rejected += 1
            stats.refused += total
            NACK_TOTAL.labels(self.zone, changes.type).inc()
            log.warning("kds_nack_sent", zone=self.zone, type=changes.type, nonce=changes.nonce, error=str(exc))
            await self.send(kds_pb2.Message(ack=kds_pb2.Ack(nonce=changes.nonce, nack=True, error=str(exc))))
            return
        RESOURCES_SYNC.labels(self.zone).observe(time.perf_counter() - started)
        if not rejected:
            await self.send(kds_pb2.Message(ack=kds_pb2.Ack(nonce=changes.nonce)))
            return
        stats.rejected += 1
        stats.refused += len(rejected)
        NACK_TOTAL.labels(self.zone, changes.type).inc()
        first = rejected[0]
        error = (
            f"{len(rejected)} of {total} resources refused, the others applied; "
            f"{key_str(first.key.type, first.key.mesh, first.key.name)}: {first.reason}"
        )
        log.warning("kds_nack_sent", zone=self.zone, type=changes.type, nonce=changes.nonce, error=error)
        await self.send(
            kds_pb2.Message(ack=kds_pb2.Ack(nonce=changes.nonce, nack=True, error=error, rejected=rejected))
        )
