"""Leadership: which replica of a control plane runs the parts that must run once.

Several replicas of a global (or of a zone) control plane may share one etcd. Most of their work
is per replica (the API, the KDS and xDS servers, the insights of their own streams); some must be
done by one of them at a time (license grants, mesh CA creation, marking dead streams offline, the
zone's one KDS stream to global). ``shared/components.py`` starts those *leader components* while
this replica holds leadership and stops them when it loses it.

- ``SingleProcess``: SQLite and memory stores belong to one process, which always leads.
- ``EtcdElector``: leadership is an etcd key created only if absent (one transaction) and attached
  to this replica's lease; the lease is kept alive every ``ttl / 3`` by ``LeaseKeeper``, from a
  thread of its own (its own event loop and etcd client), so that keepalives do not wait behind a
  busy event loop; but only while that loop proves it is alive (a heartbeat every ``ttl / 12``):
  a loop stuck for ``ttl - ttl / 6`` stops the renewals. A replica that has not had a keepalive
  answered for ``ttl / 2``, or whose keeper stopped renewing, ends its term (``leadership_lost``,
  with the reason) and its leader components are stopped; etcd expires the lease no earlier than
  ``ttl`` after the last keepalive it received, so they have stopped before another replica can
  win, and the lease is revoked only once they have. Others watch the key and campaign as soon as
  it is deleted (lease expired or revoked). Every write of a leader component goes
  through ``Term.store``, which on etcd is *fenced*: the transaction also requires that the leader
  key still has the creation revision of this term, so even a replica that has not yet noticed it
  lost cannot write as a leader.

Each replica also registers itself under ``{prefix}/members/`` with its lease, so the leader knows
which instances are alive (``members()``) and can close what dead ones left open (insights).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aetcd
import grpc
import structlog
from aetcd import rpc
from prometheus_client import Counter, Gauge
from zonemesh.shared.store import Store, StoreError
from zonemesh.shared.store.etcd import EtcdStore, Fence

log = structlog.get_logger(__name__)

LEADER = Gauge("control_plane_leader", "1 while this control plane instance leads (runs the leader components)")
LEADERSHIP_CHANGES = Counter(
    "control_plane_leadership_changes_total", "Terms this instance won (acquired) and ended (lost)", ["change"]
)

# After a failed campaign round (etcd unreachable...), or after resigning a term whose leader
# components failed to start: how long before campaigning again.
RETRY = 1.0
RESIGNED_PAUSE = 5.0  # gives another replica the chance to lead instead
REVOKE_TIMEOUT = 2.0


@dataclass
class Term:
    """One period of leadership. ``store`` is what leader components write through: on etcd, its
    writes fail with ``NotLeader`` once the term has ended. ``lost`` is set when it ends."""

    number: int
    store: Store
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    # Set by the component manager once the term's leader components have stopped: only then
    # does the elector revoke the lease (which lets another replica win at once).
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


class Elector(ABC):
    """Decides whether this replica leads. ``start()`` begins campaigning; ``next_term()`` waits until
    this replica leads and returns the term; ``stop()`` resigns (others take over at once)."""

    instance_id: str

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def next_term(self) -> Term:
        """The next term this replica wins (waits until it does)."""

    @abstractmethod
    async def settled(self) -> None:
        """Return once the first campaign round has an answer (won, or someone else leads): at start,
        leader components run inline when this replica wins at once."""

    @abstractmethod
    def current(self) -> Term | None:
        """The term in progress, if this replica leads now."""

    @abstractmethod
    async def members(self) -> set[str]:
        """Instance ids of the replicas alive now (this one included)."""

    @abstractmethod
    async def resign(self, term: Term, reason: str) -> None:
        """End ``term`` and leave leadership to others for a while (its leader components failed)."""

    def is_leader(self) -> bool:
        return self.current() is not None

    def describe(self) -> dict[str, Any]:
        """For GET /status/leader."""
        term = self.current()
        return {"instanceId": self.instance_id, "leader": term is not None, "term": term.number if term else None}


class SingleProcess(Elector):
    """A SQLite or memory store has one process: it leads from start to stop, in one term."""

    def __init__(self, store: Store, instance_id: str) -> None:
        self.store = store
        self.instance_id = instance_id
        self._term: Term | None = None
        self._given = False

    async def start(self) -> None:
        self._term = Term(1, self.store)
        LEADER.set(1)
        log.info("leadership_acquired", instance=self.instance_id, term=1, election="single process")

    async def stop(self) -> None:
        if self._term is not None:
            self._term.end("shutting down")
        self._term = None
        LEADER.set(0)

    async def next_term(self) -> Term:
        if self._term is not None and not self._given:
            self._given = True
            return self._term
        await asyncio.Event().wait()  # one term only
        raise AssertionError("unreachable")

    async def settled(self) -> None:
        return

    def current(self) -> Term | None:
        return self._term

    async def members(self) -> set[str]:
        return {self.instance_id}

    async def resign(self, term: Term, reason: str) -> None:
        # Nobody else can lead: the control plane runs without its leader components and says so.
        term.end(reason)
        self._term = None
        LEADER.set(0)


class SessionOver(Exception):
    """This replica's lease can no longer be trusted (expired, or unconfirmed for ttl / 2)."""


class EtcdElector(Elector):
    def __init__(self, store: EtcdStore, instance_id: str, ttl: int, *, info: dict[str, Any] | None = None) -> None:
        if ttl < 2:
            raise ValueError("the leader lease TTL must be at least 2 seconds (etcd's minimum)")
        self.store = store
        self.client = store.client
        self.instance_id = instance_id
        self.ttl = ttl
        self.leader_key = f"{store.prefix}/leader".encode()
        self.members_prefix = f"{store.prefix}/members/".encode()
        self.info = {"instance": instance_id, "host": socket.gethostname(), "pid": os.getpid(), **(info or {})}
        self.leader: str = ""  # the instance leading now, as last seen (diagnostics)
        self._term: Term | None = None
        self._terms: asyncio.Queue[Term] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._stale_leases: set[int] = set()  # leases of ended sessions, revoked once etcd answers
        self._resign: asyncio.Event = asyncio.Event()
        self.lease_id = 0
        self._keeper: LeaseKeeper | None = None

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def stop(self) -> None:
        """Resign: end the term and revoke the lease, so that another replica leads at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._revoke_stale()

    async def next_term(self) -> Term:
        return await self._terms.get()

    async def settled(self) -> None:
        await self._settled.wait()

    def current(self) -> Term | None:
        term = self._term
        keeper = self._keeper
        if term is not None and keeper is not None and not term.lost.is_set():
            # Asked right after the loop comes back from a stall, before the tasks that would
            # notice run: a lease that cannot be trusted any more is not leading.
            reason = keeper.lapsed(time.monotonic())
            if reason:
                term.end(reason)
        return term if term is not None and not term.lost.is_set() else None

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"leaderInstanceId": self.leader or None, "leaseTtlSeconds": self.ttl}

    async def resign(self, term: Term, reason: str) -> None:
        if term is self._term:
            self._resign.set()
        term.end(reason)

    async def members(self) -> set[str]:
        request = rpc.RangeRequest(
            key=self.members_prefix, range_end=aetcd.utils.prefix_range_end(self.members_prefix), keys_only=True
        )
        response = await self._call(self.client.kvstub.Range, request)
        return {kv.key[len(self.members_prefix) :].decode() for kv in response.kvs}

    # -- etcd calls -------------------------------------------------------------------------------

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            await self.client.connect()
            return await method(request, timeout=self.store.rpc_timeout, metadata=self.client.metadata)
        except (aetcd.ClientError, rpc.AioRpcError) as exc:
            raise StoreError(f"etcd at {self.store.where()}: {_details(exc)}") from exc

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self.client.connect()
            await self.client.leasestub.LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=lease_id), timeout=REVOKE_TIMEOUT, metadata=self.client.metadata
            )
            self._stale_leases.discard(lease_id)
        except rpc.AioRpcError as exc:
            if "requested lease not found" in (exc.details() or ""):
                self._stale_leases.discard(lease_id)  # expired already
            else:
                self._stale_leases.add(lease_id)

    async def _revoke_stale(self) -> None:
        for lease_id in sorted(self._stale_leases):
            await self._revoke(lease_id)

    # -- the campaign -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                lost = await self._session()
                # A term lost (this loop stalled, the lease expired) is given up to the others for
                # a moment: another replica watching the key wins first, and a replica left alone
                # leads again after it.
                pause = RESIGNED_PAUSE if self._resign.is_set() else RETRY if lost else 0.0
            except asyncio.CancelledError:
                raise
            except (StoreError, SessionOver, aetcd.ClientError, rpc.AioRpcError) as exc:
                log.warning("leader_election_failed", instance=self.instance_id, error=str(exc), retry_in=RETRY)
                pause = RETRY
            self._settled.set()
            self._resign.clear()
            await asyncio.sleep(pause)

    async def _session(self) -> bool:
        """One lease: register, campaign, lead or wait for the leader to go; ends when the lease
        cannot be trusted any more (or this replica resigns). Whether it ended a term of ours."""
        await self._revoke_stale()
        asked = time.monotonic()
        granted = await self._call(self.client.leasestub.LeaseGrant, rpc.LeaseGrantRequest(TTL=self.ttl, ID=0))
        lease_id, ttl = granted.ID, max(granted.TTL, 2)
        self.lease_id = lease_id
        over = asyncio.Event()
        why: list[str] = []

        def ended(reason: str) -> None:  # the keeper's thread stopped renewing (run on this loop)
            why.append(reason)
            over.set()

        keeper = LeaseKeeper(self.store.new_client, lease_id, ttl, asked, ended)
        keeper.start()
        self._keeper = keeper
        keepalive = asyncio.create_task(self._watch_lease(keeper, over, why), name="leader-lease")
        try:
            await self._register(lease_id)
            while not over.is_set() and not self._resign.is_set():
                won, revision = await self._campaign(lease_id)
                if won:
                    await self._lead(revision, over, why)
                    return True
                self._settled.set()
                await self._wait_for_vacancy(revision, over)
            return False
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            self._keeper = None
            await keeper.stop()
            self._stale_leases.add(lease_id)
            with contextlib.suppress(Exception):
                await self._revoke(lease_id)  # the keys go at once: another replica may lead now

    async def _register(self, lease_id: int) -> None:
        key = self.members_prefix + self.instance_id.encode()
        value = json.dumps(self.info).encode()
        await self._call(self.client.kvstub.Put, rpc.PutRequest(key=key, value=value, lease=lease_id))

    async def _campaign(self, lease_id: int) -> tuple[bool, int]:
        """Create the leader key if absent, with our lease. (won, term) or (lost, revision seen)."""
        key = self.leader_key
        claim = rpc.PutRequest(key=key, value=json.dumps(self.info).encode(), lease=lease_id)
        request = rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)],
            success=[rpc.RequestOp(request_put=claim)],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        response = await self._call(self.client.kvstub.Txn, request)
        if response.succeeded:
            return True, response.header.revision
        kvs = response.responses[0].response_range.kvs
        if not kvs:
            return False, response.header.revision  # gone meanwhile: the next round may win
        if kvs[0].lease == lease_id:
            return True, kvs[0].create_revision  # ours already (a round whose answer was lost)
        with contextlib.suppress(ValueError, AttributeError):
            self.leader = str(json.loads(kvs[0].value).get("instance", ""))
        return False, response.header.revision

    async def _lead(self, revision: int, over: asyncio.Event, why: list[str]) -> None:
        term = Term(revision, self.store.fenced(Fence(self.leader_key, revision)))
        self._term, self.leader = term, self.instance_id
        LEADER.set(1)
        LEADERSHIP_CHANGES.labels("acquired").inc()
        log.info("leadership_acquired", instance=self.instance_id, term=revision, lease_ttl=self.ttl)
        self._terms.put_nowait(term)
        self._settled.set()
        try:
            resigned = asyncio.create_task(self._resign.wait())
            ended = asyncio.create_task(over.wait())
            lost = asyncio.create_task(term.lost.wait())
            try:
                await asyncio.wait([resigned, ended, lost], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (resigned, ended, lost):
                    task.cancel()
            reason = why[0] if why else term.reason or "resigned"
        except asyncio.CancelledError:
            reason = "shutting down"
            raise
        finally:
            term.end(reason)
            self._term = None
            LEADER.set(0)
            LEADERSHIP_CHANGES.labels("lost").inc()
            if reason == "shutting down":
                log.info("leadership_released", instance=self.instance_id, term=revision)
            else:
                log.warning("leadership_lost", instance=self.instance_id, term=revision, reason=reason)
            # The session's end revokes the lease, and another replica may win at once: not before
            # this term's leader components have stopped (bounded: the lease expires anyway).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl):
                    await term.released.wait()

    async def _wait_for_vacancy(self, revision: int, over: asyncio.Event) -> None:
        """Until the leader key is deleted (its lease expired or was revoked), or our session ends."""
        watch = await self.client.watch(self.leader_key, start_revision=revision + 1)

        async def deleted() -> None:
            async for event in watch:
                if event.kind == aetcd.EventKind.DELETE:
                    return

        waiter = asyncio.create_task(deleted())
        ended = asyncio.create_task(over.wait())
        try:
            done, _ = await asyncio.wait([waiter, ended], return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                waiter.result()  # a watch error ends the session's round: campaign again
        finally:
            for task in (waiter, ended):
                task.cancel()
            with contextlib.suppress(Exception):
                await watch.cancel()

    async def _watch_lease(self, keeper: LeaseKeeper, over: asyncio.Event, why: list[str]) -> None:
        """The event loop's side of the lease: tick the keeper's heartbeat (the proof that this
        loop makes progress), and end the session (``over``) once the lease can no longer be
        trusted (``keeper.lapsed``), whoever notices first: this loop or the keeper's thread."""
        last = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now - last > self.ttl / 2:
                    # What lost the lease before keepalives had a thread of their own.
                    log.warning("event_loop_stalled", instance=self.instance_id, seconds=round(now - last, 2))
                keeper.beat(now)
                reason = keeper.lapsed(now, stalled=now - last)
                if reason:
                    why.append(reason)
                    return
                last = now
                await asyncio.sleep(keeper.tick)
        finally:
            over.set()


class LeaseKeeper:
    """Keeps one lease alive from a thread of its own, while this process's event loop is alive.

    The keepalives do not queue behind the event loop's work (uploads, insight waves, decoding):
    the thread runs its own event loop and its own etcd client (gRPC channel), and shares nothing
    with the main loop but a few numbers behind a lock. The main loop proves it is alive by
    ``beat()`` every ``tick``; once it has not for ``stall_limit`` (TTL - TTL / 6) the thread stops
    renewing, so a process whose loop is stuck (deadlocked, or busy for that long) still loses
    leadership and its lease expires.

    ``lapsed()`` says whether the lease can no longer be trusted, and why: the thread stopped
    renewing (the loop stalled, etcd said the lease expired), or no keepalive sent in the last
    TTL / 2 was answered. etcd expires a lease no earlier than TTL after the last keepalive it
    received, so a term ended then has TTL / 2 to stop its leader components before another
    replica can win. Times are ``time.monotonic()`` (which asyncio's loops use as well)."""

    def __init__(
        self,
        new_client: Callable[[], Any],
        lease_id: int,
        ttl: int,
        confirmed: float,
        on_end: Callable[[str], None],
    ) -> None:
        self.lease_id = lease_id
        self.interval = ttl / 3  # between keepalives
        self.margin = ttl / 2  # a keepalive answered keeps the lease trusted this long after it was sent
        self.stall_limit = ttl - ttl / 6  # no heartbeat from the main loop for this long: stop renewing
        self.tick = ttl / 12  # the main loop's heartbeat, and how often the thread looks at it
        self._new_client = new_client
        self._main = asyncio.get_running_loop()
        self._on_end = on_end
        self._lock = threading.Lock()
        self._heartbeat = time.monotonic()
        self._trusted_until = confirmed + self.margin
        self._ended = ""  # why the thread stopped renewing
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._thread_main, name=f"leader-lease-{lease_id:x}", daemon=True)

    # -- the main loop's side ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Stop renewing and wait (bounded) for the thread to close its client."""
        self._stopping.set()  # seen within a tick, even if the thread has not started its loop yet
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop has finished already
                loop.call_soon_threadsafe(task.cancel)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, REVOKE_TIMEOUT)

    def beat(self, now: float) -> None:
        with self._lock:
            self._heartbeat = now

    def lapsed(self, now: float, *, stalled: float = 0.0) -> str:
        """Why the lease can no longer be trusted, or "" while it can. ``stalled``: how long this
        loop went without a heartbeat before ``now`` (said in the reason when the loop, not etcd,
        kept the keepalives from being sent or read)."""
        with self._lock:
            if self._ended:
                return self._ended
            if now <= self._trusted_until:
                return ""
        if stalled > self.margin:
            return (
                f"this process's event loop stalled for {stalled:.1f}s and no lease keepalive was answered "
                f"for {self.margin:g}s meanwhile"
            )
        return _unanswered(self.margin)

    # -- the thread's side ------------------------------------------------------------------------

    def _thread_main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        client = self._new_client()
        try:
            await self._keep(client)
        except asyncio.CancelledError:
            pass  # stopped by the main loop
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), REVOKE_TIMEOUT)

    def _end(self, reason: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = reason
        with contextlib.suppress(RuntimeError):  # the main loop is closed: nobody to tell
            self._main.call_soon_threadsafe(self._on_end, reason)

    def _stalled(self) -> float:
        """How long the main loop has gone without a heartbeat, when longer than the limit; else 0."""
        with self._lock:
            age = time.monotonic() - self._heartbeat
        return age if age > self.stall_limit else 0.0

    async def _keep(self, client: Any) -> None:
        """Send a keepalive every ``interval`` on one stream while the main loop beats; stop renewing
        (``_end``) when it has not beaten for ``stall_limit``, when etcd says the lease expired, or
        when no keepalive sent in the last ``margin`` was answered."""
        while not self._stopping.is_set():
            requests: asyncio.Queue[Any] = asyncio.Queue()

            async def outgoing(queue: asyncio.Queue[Any] = requests) -> AsyncIterator[Any]:
                while True:
                    yield await queue.get()

            try:
                await client.connect()
                call = client.leasestub.LeaseKeepAlive(outgoing(), metadata=client.metadata)
                try:
                    next_send = 0.0
                    while not self._stopping.is_set():
                        stalled = self._stalled()
                        if stalled:
                            self._end(
                                f"this process's event loop stalled for {stalled:.1f}s (longer than "
                                f"{self.stall_limit:.2g}s): the lease keepalives stopped"
                            )
                            return
                        sent = time.monotonic()
                        if sent < next_send:  # between keepalives, the heartbeat is watched every tick
                            await asyncio.sleep(min(self.tick, next_send - sent))
                            continue
                        with self._lock:
                            deadline = self._trusted_until
                        if sent >= deadline:
                            self._end(_unanswered(self.margin))
                            return
                        requests.put_nowait(rpc.LeaseKeepAliveRequest(ID=self.lease_id))
                        async with asyncio.timeout_at(deadline):
                            reply = await call.read()
                        if reply is grpc.aio.EOF:
                            raise ConnectionError("the keepalive stream ended")
                        if reply.TTL <= 0:
                            self._end("the lease expired in etcd")
                            return
                        with self._lock:
                            self._trusted_until = max(self._trusted_until, sent + self.margin)
                        next_send = sent + self.interval
                finally:
                    call.cancel()
            except TimeoutError:
                self._end(_unanswered(self.margin))
                return
            except (aetcd.ClientError, rpc.AioRpcError, ConnectionError) as exc:
                with self._lock:
                    deadline = self._trusted_until
                if time.monotonic() >= deadline:
                    self._end(f"lease keepalive failing: {_details(exc)}")
                    return
                log.debug("leader_keepalive_retry", error=_details(exc))
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _unanswered(margin: float) -> str:
    return f"no lease keepalive answered for {margin:g}s (etcd unreachable?)"


def _details(exc: BaseException) -> str:
    if isinstance(exc, rpc.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


def elector_for(store: Store, instance_id: str, ttl: int, info: dict[str, Any] | None = None) -> Elector:
    """Leader election on etcd; one process alone on SQLite or memory."""
    if isinstance(store, EtcdStore):
        return EtcdElector(store, instance_id, ttl, info=info)
    return SingleProcess(store, instance_id)
