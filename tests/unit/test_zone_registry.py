"""Zone insights written by several global replicas on one store (global_cp/zones.py): each replica
records the streams it holds, another replica sees them through the store, a zone that moves to
another replica has one open stream, and the leader closes what a dead replica left open."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from kds_harness import eventually
from zonemesh.global_cp.zones import Subscription, ZoneInsightFinalizer, ZoneRegistry
from zonemesh.shared.kds.session import Stats
from zonemesh.shared.store.memory import MemoryStore

TIMEOUT = 3.0  # heartbeat timeout of the registries


def stream(zone: str, replica: str, connected: datetime | None = None) -> Subscription:
    return Subscription(
        id=uuid.uuid4().hex,
        zone=zone,
        global_instance_id=replica,
        zone_instance_id=f"{zone}-cp",
        version="test",
        features=[],
        config={},
        stats=Stats(),
        connect_time=connected or datetime.now(UTC),
    )


@contextlib.asynccontextmanager
async def registry(store: MemoryStore, replica: str) -> AsyncIterator[ZoneRegistry]:
    zones = ZoneRegistry(store, replica, TIMEOUT, flush_interval=3600)  # flushed by the test
    await zones.start()
    try:
        yield zones
    finally:
        await zones.stop()


async def test_a_zone_moving_between_replicas_has_one_open_stream_seen_by_both() -> None:
    store = MemoryStore()
    async with registry(store, "global-a") as a, registry(store, "global-b") as b:
        first = stream("zone-1", "global-a")
        a.connected(first)
        await a.flush()
        await eventually(lambda: b.is_online("zone-1"), what="global-b seeing zone-1's stream on global-a")

        # global-a's stream dies unnoticed; the zone reconnects to global-b
        second = stream("zone-1", "global-b", first.connect_time + timedelta(seconds=1))
        b.connected(second)
        await b.flush()
        stored = (await store.get("ZoneInsight", "zone-1")).spec["subscriptions"]
        assert [s["globalInstanceId"] for s in stored] == ["global-a", "global-b"]
        assert stored[0]["disconnectTime"] == stored[1]["connectTime"]  # closed when the new one opened
        assert stored[1]["disconnectTime"] is None

        # global-a notices late and writes its stream's end: global-b's stream stays open
        a.disconnected(first)
        await eventually(lambda: a.is_online("zone-1"), what="online on global-a through global-b's stream")
        await a.flush()
        stored = (await store.get("ZoneInsight", "zone-1")).spec["subscriptions"]
        assert [s["disconnectTime"] is None for s in stored] == [False, True]

        # a stream that ends is offline at once on its replica, before anything is written
        b.disconnected(second)
        assert not b.is_online("zone-1")
        assert b.insight("zone-1")["subscriptions"][-1]["disconnectTime"]


async def test_the_leader_closes_the_streams_of_a_replica_that_is_gone() -> None:
    store = MemoryStore()
    async with registry(store, "global-b") as b:
        async with registry(store, "global-a") as a:
            a.connected(stream("zone-1", "global-a"))
            await a.flush()
            a.active.clear()  # killed: it never writes the end of its stream
        await eventually(lambda: b.is_online("zone-1"), what="zone-1 online as stored")

        alive = {"global-b"}

        async def members() -> set[str]:
            return alive

        finalizer = ZoneInsightFinalizer(store, members)
        assert await finalizer.sweep() == 1
        await eventually(lambda: not b.is_online("zone-1"), what="zone-1 offline once its replica is gone")
        stored = (await store.get("ZoneInsight", "zone-1")).spec
        assert stored["subscriptions"][-1]["disconnectTime"]
        assert await finalizer.sweep() == 0  # nothing left open

        # a stream of a live replica is left alone
        async with registry(store, "global-c") as c:
            alive.add("global-c")
            c.connected(stream("zone-2", "global-c"))
            await c.flush()
            assert await finalizer.sweep() == 0
            assert (await store.get("ZoneInsight", "zone-2")).spec["subscriptions"][-1]["disconnectTime"] is None
