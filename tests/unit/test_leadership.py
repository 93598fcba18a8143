"""Leader election on a real etcd (shared/leadership.py) and the component manager that follows it
(shared/components.py): one leader at a time, a resigning leader replaced at once, a leader cut off
from etcd stopping its leader components *before* another replica starts them, and the writes of an
ended term refused by etcd itself (the fence). A real TCP proxy between a replica and etcd makes the
partition (zonemesh/lab/chaos_proxy.py). The lease is kept from a thread of its own while the
event loop is alive: a loop held for a moment keeps the term, a stuck one loses it before another
replica leads (``time.sleep`` on the loop holds it, as a long stretch of work does)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from conftest import EtcdServer
from etcd_secure import AUTH_PREFIX, PASSWORD, USER, EtcdPki
from zonemesh.shared.components import Component, ComponentManager
from zonemesh.shared.leadership import EtcdElector, SingleProcess, Term
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.base import StoreUnavailable
from zonemesh.shared.store.etcd import EtcdStore, NotLeader
from zonemesh.shared.store.factory import EtcdAccess
from zonemesh.shared.store.memory import MemoryStore

from zonemesh.lab.chaos_proxy import ChaosProxy
from zonemesh.testing import free_port

pytestmark = pytest.mark.etcd

TTL = 2  # etcd's minimum: the tests run in seconds


@dataclass
class FakeCP:
    """What components receive: the store, and the term while leading (set by the manager)."""

    store: Any
    term: Term | None = None
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def leader_store(self) -> Any:
        assert self.term is not None
        return self.term.store


def recording(cp: FakeCP, name: str) -> Any:
    @contextlib.asynccontextmanager
    async def run(_: Any) -> AsyncIterator[None]:
        cp.events.append((time.monotonic(), f"{name} started"))
        try:
            yield
        finally:
            cp.events.append((time.monotonic(), f"{name} stopped"))

    return run


async def open_store(endpoint: str, prefix: str) -> EtcdStore:
    return await EtcdStore.open(endpoint, prefix=prefix, rpc_timeout=3.0)


async def wait_for(predicate: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replica(endpoint: str, prefix: str, name: str) -> AsyncIterator[tuple[FakeCP, ComponentManager]]:
    store = await open_store(endpoint, prefix)
    cp = FakeCP(store)
    elector = EtcdElector(store, name, TTL)
    components = [
        Component("api", recording(cp, "api")),
        Component("grants", recording(cp, "grants"), leader=True),
        Component("ca", recording(cp, "ca"), leader=True),
    ]
    manager = ComponentManager(cp, components, elector)  # type: ignore[arg-type]
    await manager.start()
    try:
        yield cp, manager
    finally:
        await manager.stop()
        await store.close()


async def late_write(term: Term) -> Exception:
    """What a write through ``term`` raises once etcd answers again (gRPC reconnects with backoff)."""
    for _ in range(100):
        try:
            await term.store.create(Resource(type="Mesh", name="late-write"))
        except StoreUnavailable:
            await asyncio.sleep(0.1)
            continue
        except Exception as exc:
            return exc
        raise AssertionError("the write of an ended term was applied")
    raise AssertionError("etcd did not come back")


def started(cp: FakeCP, name: str) -> list[float]:
    return [t for t, what in cp.events if what == f"{name} started"]


def stopped(cp: FakeCP, name: str) -> list[float]:
    return [t for t, what in cp.events if what == f"{name} stopped"]


async def test_one_leader_at_a_time_and_a_resigning_leader_is_replaced_at_once(etcd_server: EtcdServer) -> None:
    prefix = f"/lead-{uuid.uuid4().hex[:8]}"
    async with replica(etcd_server.endpoint, prefix, "a") as (a, ma):
        assert ma.elector.is_leader()  # alone: it wins at start, leader components run before start returns
        assert started(a, "grants") and started(a, "ca") and started(a, "api")
        async with replica(etcd_server.endpoint, prefix, "b") as (b, mb):
            assert not mb.elector.is_leader()
            assert started(b, "api") and not started(b, "grants")  # every-replica components run everywhere
            assert await ma.elector.members() == {"a", "b"}
            lease = ma.elector.lease_id  # type: ignore[attr-defined]
            await ma.stop()  # a resigns: its lease is revoked, b need not wait for it to expire
            info = await b.store.client.get_lease_info(lease)
            assert info.TTL == -1  # etcd: no such lease any more
            # b leads, then its manager starts the leader components (in its own task)
            await wait_for(lambda: bool(started(b, "grants") and started(b, "ca")), 5, "b to lead")
            assert mb.elector.is_leader()
            assert stopped(a, "grants") and stopped(a, "ca")
            assert await mb.elector.members() == {"b"}
            ma.stop = lambda: asyncio.sleep(0)  # type: ignore[method-assign]  # stopped already


async def test_a_leader_cut_off_from_etcd_stops_leading_before_another_starts(etcd_server: EtcdServer) -> None:
    prefix = f"/lead-{uuid.uuid4().hex[:8]}"
    proxy = ChaosProxy("a-etcd", free_port(), etcd_server.port)
    await proxy.start()
    try:
        with structlog.testing.capture_logs() as logs:
            async with replica(f"127.0.0.1:{proxy.listen_port}", prefix, "a") as (a, ma):
                term = ma.elector.current()
                assert term is not None
                async with replica(etcd_server.endpoint, prefix, "b") as (b, mb):
                    proxy.partition(30)
                    cut = time.monotonic()
                    await wait_for(lambda: bool(started(b, "grants")), 5 * TTL, "b to lead")
                    took = time.monotonic() - cut
                    # a stopped its leader components, and said why, before b started them
                    assert stopped(a, "grants") and started(b, "grants")
                    assert max(stopped(a, "grants") + stopped(a, "ca")) < min(started(b, "grants"))
                    assert took >= TTL / 2  # b could not win before a's lease expired
                    assert term.lost.is_set() and not ma.elector.is_leader()
                    proxy.heal()
                    # a's old term can no longer write as a leader, even once etcd is reachable again
                    assert isinstance(await late_write(term), NotLeader)
                    assert await b.store.find("Mesh", "late-write") is None
                    # b's term writes fine
                    b_term = mb.elector.current()
                    assert b_term is not None
                    await b_term.store.create(Resource(type="Mesh", name="leader-write"))
                    assert not ma.elector.is_leader()
        lost = [e for e in logs if e["event"] == "leadership_lost"]
        assert lost and lost[0]["instance"] == "a" and "keepalive" in lost[0]["reason"], lost
    finally:
        await proxy.close()


async def test_single_process_stores_always_lead() -> None:
    store = MemoryStore()
    cp = FakeCP(store)
    elector = SingleProcess(store, "only")
    manager = ComponentManager(cp, [Component("grants", recording(cp, "grants"), leader=True)], elector)  # type: ignore[arg-type]
    await manager.start()
    assert elector.is_leader() and started(cp, "grants") and cp.term is not None
    assert cp.leader_store is store
    assert await elector.members() == {"only"}
    await manager.stop()
    assert stopped(cp, "grants") and cp.term is None


async def test_a_leader_component_that_fails_at_start_refuses_the_start() -> None:
    @contextlib.asynccontextmanager
    async def broken(_: Any) -> AsyncIterator[None]:
        raise RuntimeError("invalid license")
        yield

    cp = FakeCP(MemoryStore())
    manager = ComponentManager(cp, [Component("license", broken, leader=True)], SingleProcess(cp.store, "x"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="invalid license"):
        await manager.start()


def hold_the_loop(seconds: float) -> None:
    """Called on the event loop, holds it (and everything on it) for ``seconds``."""
    time.sleep(seconds)


class ThreadReplica:
    """A replica with an event loop of its own (a thread): blocking the test's loop, which the other
    replica runs on, does not block this one, as two processes would not block each other."""

    def __init__(self, endpoint: str, prefix: str, name: str) -> None:
        self.cp: FakeCP | None = None
        self.manager: ComponentManager | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(endpoint, prefix, name),), daemon=True)

    async def _run(self, endpoint: str, prefix: str, name: str) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with replica(endpoint, prefix, name) as (cp, manager):
                self.cp, self.manager = cp, manager
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def __aenter__(self) -> ThreadReplica:
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 30)
        if self._error is not None:
            raise self._error
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 30)

    def leads(self) -> bool:
        return self.manager is not None and self.manager.elector.is_leader() and bool(started(self.cp, "grants"))  # type: ignore[arg-type]


async def test_a_leader_whose_event_loop_is_held_for_less_than_the_bound_keeps_its_term(
    etcd_server: EtcdServer,
) -> None:
    """Keepalives go from a thread of their own: a loop held for 0.6 x TTL (longer than the TTL / 2
    without an answered keepalive that ends a term) no longer costs the leader its lease."""
    prefix = f"/lead-{uuid.uuid4().hex[:8]}"
    with structlog.testing.capture_logs() as logs:
        async with replica(etcd_server.endpoint, prefix, "a") as (a, ma):
            term = ma.elector.current()
            assert term is not None
            async with ThreadReplica(etcd_server.endpoint, prefix, "b") as b:
                for _ in range(3):
                    hold_the_loop(0.6 * TTL)  # as a zone upload applied in one go did
                    await asyncio.sleep(TTL / 3)  # the loop runs again for a moment
                await asyncio.sleep(TTL)  # a lapse would show by now
                assert ma.elector.current() is term and not term.lost.is_set()
                assert not stopped(a, "grants") and not b.leads()
    assert not [e for e in logs if e["event"] == "leadership_lost"], logs
    assert [e for e in logs if e["event"] == "event_loop_stalled"]  # said, though the lease was kept


async def test_a_leader_whose_event_loop_is_stuck_loses_its_term_before_another_leads(etcd_server: EtcdServer) -> None:
    """A loop that makes no progress for longer than TTL - TTL / 6 stops the keepalives (the thread
    alone would otherwise keep a stuck leader in office): the term ends, saying why, and the other
    replica starts its leader components only after this one has stopped them."""
    prefix = f"/lead-{uuid.uuid4().hex[:8]}"
    with structlog.testing.capture_logs() as logs:
        async with replica(etcd_server.endpoint, prefix, "a") as (a, ma):
            term = ma.elector.current()
            assert term is not None
            async with ThreadReplica(etcd_server.endpoint, prefix, "b") as b:
                hold_the_loop(1.1 * TTL)  # stuck past the bound (TTL - TTL / 6), not yet past the lease
                assert ma.elector.current() is None and term.lost.is_set()  # known at once on return
                await wait_for(b.leads, 5 * TTL, "b to lead")
                assert b.cp is not None
                assert max(stopped(a, "grants") + stopped(a, "ca")) < min(started(b.cp, "grants"))
                assert not ma.elector.is_leader()
                b_term = b.manager.elector.current() if b.manager else None
                assert b_term is not None and b_term.number != term.number
    lost = [e for e in logs if e["event"] == "leadership_lost" and e["instance"] == "a"]
    assert lost and "event loop stalled" in lost[0]["reason"], lost


async def keeps_leading(endpoint: str, access: EtcdAccess, prefix: str) -> None:
    """An elector alone on ``endpoint`` wins, and its lease, kept by the keeper's own etcd client
    (which makes its own TLS connection and logs in by itself), outlives several TTLs."""
    store = await EtcdStore.open(endpoint, prefix=prefix, rpc_timeout=5.0, access=access)
    elector = EtcdElector(store, "a", TTL)
    try:
        await elector.start()
        await asyncio.wait_for(elector.settled(), 10)
        term = elector.current()
        assert term is not None
        await asyncio.sleep(3 * TTL)
        assert elector.current() is term, term.reason
    finally:
        await elector.stop()
        await store.close()


async def test_the_lease_is_kept_over_tls_and_client_certificates(
    etcd_tls_server: tuple[EtcdServer, EtcdPki],
) -> None:
    server, pki = etcd_tls_server
    access = EtcdAccess(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    await keeps_leading(server.endpoint, access, f"/lead-{uuid.uuid4().hex[:8]}")


async def test_the_lease_is_kept_with_etcd_auth(etcd_auth_server: EtcdServer) -> None:
    access = EtcdAccess(username=USER, password=PASSWORD)
    await keeps_leading(etcd_auth_server.endpoint, access, f"{AUTH_PREFIX}/lead-{uuid.uuid4().hex[:8]}")
