"""The zone's one view of its resources (zone_cp/view.py): one store watch feeds it, every reader of
the zone reads through it, and an etcd re-list after a compaction is taken in once and reaches them all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from conftest import EtcdServer
from envoy.config.core.v3 import base_pb2
from test_etcd_resync import mesh, revision
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import EventKind, Store
from zonemesh.shared.store.base import Event, Watch
from zonemesh.shared.store.etcd import EtcdStore
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.store.sqlite import SqliteStore
from zonemesh.zone_cp.ingress import AvailableServicesUpdater
from zonemesh.zone_cp.insights import InsightRecorder
from zonemesh.zone_cp.view import ZoneView
from zonemesh.zone_cp.xds.crosszone import is_online
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.server import StreamInfo
from zonemesh.zone_cp.xds.testing import RecordingCache, stream_infos
from zonemesh.zone_cp.xds.zoneproxies import ZoneProxyReconciler

from zonemesh.lab.chaos_proxy import ChaosProxy
from zonemesh.testing import free_port


async def names(view: ZoneView, rtype: str) -> set[str]:
    return {r.name for r in (await view.list(rtype)).items}


async def until(view: ZoneView, rtype: str, wanted: set[str]) -> None:
    """Wait for the view to hold ``wanted``, woken by the view's own watch."""
    async with view.watch([rtype]) as changes:
        async with asyncio.timeout(30):
            while await names(view, rtype) != wanted:
                await changes.queue.get()


async def next_events(watch: Watch, count: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            event = await watch.queue.get()
            assert event is not None
            got.append(event)
    return got


def dataplane(name: str) -> Resource:
    spec = {"networking": {"address": "10.0.0.1", "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}]}}
    return Resource(type="Dataplane", mesh="default", name=name, spec=spec)


async def test_the_view_holds_what_is_stored_and_its_readers_follow_it() -> None:
    store = MemoryStore()
    await store.create(mesh("default"))
    await store.create(dataplane("web-1"))
    view = ZoneView()
    await view.start(store)
    try:
        assert await names(view, "Dataplane") == {"web-1"}
        watch = view.watch(["Dataplane"])
        await store.create(dataplane("web-2"))
        await store.delete("Dataplane", "web-1", "default")
        kinds = [(e.kind, e.resource.name) for e in await next_events(watch, 2)]
        assert kinds == [(EventKind.CREATED, "web-2"), (EventKind.DELETED, "web-1")]
        assert await names(view, "Dataplane") == {"web-2"}
        assert (await view.get("Dataplane", "web-2", "default")).version == 1
        with pytest.raises(TypeError, match="read-only"):
            await view.create(dataplane("web-3"))

        # a reader that takes the view instead of the store: the zone ingresses' availableServices
        ingress = Resource(type="ZoneIngress", name="ingress-1", spec={"networking": {"address": "10.0.0.9"}})
        await store.create(ingress)
        await until(view, "ZoneIngress", {"ingress-1"})
        updater = AvailableServicesUpdater(store, "zone-1", view=view)
        assert await updater.update_once() == 1
        written = await store.get("ZoneIngress", "ingress-1")
        assert written.spec["availableServices"] == [
            {"tags": {"kuma.io/service": "web"}, "instances": 1, "mesh": "default"}
        ]
    finally:
        await view.stop()


async def test_a_reader_that_fails_on_a_change_stops_neither_the_view_nor_the_others() -> None:
    store = MemoryStore()
    view = ZoneView()
    await view.start(store)
    seen: list[tuple[str | None, str | None]] = []

    def broken(before: Resource | None, after: Resource | None) -> None:
        raise RuntimeError("a reader's bug")

    view.follow(broken)
    stop = view.follow(lambda before, after: seen.append((before and before.name, after and after.name)))
    try:
        with structlog.testing.capture_logs() as logs:
            await store.create(dataplane("web-1"))
            await store.delete("Dataplane", "web-1", "default")
            await view.caught_up()
        assert seen == [(None, "web-1"), ("web-1", None)]
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["zone_view_listener_failed"] * 2
        assert await names(view, "Dataplane") == set()
        stop()
        await store.create(dataplane("web-2"))
        await view.caught_up()
        assert len(seen) == 2 and await names(view, "Dataplane") == {"web-2"}
    finally:
        await view.stop()


@pytest.mark.etcd
async def test_a_relist_after_a_compaction_rebuilds_the_view_once_for_every_reader(etcd_server: EtcdServer) -> None:
    prefix = f"/zone-view-{uuid.uuid4().hex[:8]}"
    proxy = ChaosProxy("etcd", free_port(), etcd_server.port)
    await proxy.start()
    writer = await EtcdStore.open(etcd_server.endpoint, prefix=prefix, rpc_timeout=3)
    behind = await EtcdStore.open(f"127.0.0.1:{proxy.listen_port}", prefix=prefix, rpc_timeout=3)
    view = ZoneView()
    await view.start(behind)
    try:
        readers = [view.watch(["Mesh"]), view.watch(["Mesh"])]  # two parts of the zone reading the view
        for name in ("kept", "changed", "deleted"):
            await writer.create(mesh(name))
        await until(view, "Mesh", {"kept", "changed", "deleted"})

        proxy.partition(60)  # the zone replica hears nothing from here on
        changed = await writer.get("Mesh", "changed")
        changed.spec = {"mtls": {}}
        await writer.update(changed)
        await writer.delete("Mesh", "deleted")
        await writer.create(mesh("created"))
        await writer.client.compact(await revision(writer), physical=True)

        proxy.heal()
        await until(view, "Mesh", {"kept", "changed", "created"})
        assert behind.resyncs == 1
        assert (await view.get("Mesh", "changed")).spec == {"mtls": {}}
        for reader in readers:  # each reader got what the one re-list found, once
            events = await next_events(reader, 6)
            assert [e.resource.name for e in events[:3]] == ["kept", "changed", "deleted"]
            missed = {(e.kind, e.resource.name) for e in events[3:]}
            assert missed == {
                (EventKind.UPDATED, "changed"),
                (EventKind.DELETED, "deleted"),
                (EventKind.CREATED, "created"),
            }
            assert reader.queue.empty()
    finally:
        await view.stop()
        await behind.close()
        await writer.close()
        await proxy.close()


async def test_a_proxy_that_moved_between_zone_replicas_stays_online_in_its_insight() -> None:
    """Two replicas of a zone record one proxy's streams: it connected to A, then to B, then A saw its
    old stream close. A's write keeps B's subscription (read from the view), so the insight's last
    subscription is the open one on B: the proxy is online."""
    store = MemoryStore()
    manager = ResourceManager(store)
    await manager.ensure_default_mesh()
    view = ZoneView()
    await view.start(store)
    stored = lambda mesh, name: view.peek("DataplaneInsight", name, mesh)  # noqa: E731
    a = InsightRecorder(manager, "replica-a", stored=stored)
    b = InsightRecorder(manager, "replica-b", stored=stored)
    proxy = ProxyIdentity("default", "web-1")

    async def recorded(recorder: InsightRecorder) -> None:
        async with view.watch(["DataplaneInsight"]) as changes:
            await recorder.flush()
            await asyncio.wait_for(changes.queue.get(), timeout=5)  # the view has taken the write in

    try:
        await a.stream_open(StreamInfo(1, proxy, base_pb2.Node(), "peer"))
        await recorded(a)
        await asyncio.sleep(0.01)  # a later connect time
        await b.stream_open(StreamInfo(7, proxy, base_pb2.Node(), "peer"))
        await recorded(b)
        await a.stream_close(StreamInfo(1, proxy, base_pb2.Node(), "peer"))
        await recorded(a)
        insight = await store.get("DataplaneInsight", "web-1", "default")
        subs = insight.spec["subscriptions"]
        assert [s["controlPlaneInstanceId"] for s in subs] == ["replica-a", "replica-b"]
        assert subs[0].get("disconnectTime") and not subs[-1].get("disconnectTime")
        assert is_online(insight)
    finally:
        await view.stop()


def resources_in(value: object, depth: int = 4) -> int:
    """How many Resources ``value`` holds, through dicts, lists, tuples and sets."""
    if isinstance(value, Resource):
        return 1
    if depth == 0:
        return 0
    if isinstance(value, dict):
        return sum(resources_in(k, depth - 1) + resources_in(v, depth - 1) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(resources_in(v, depth - 1) for v in value)
    return 0


def serving(name: str, service: str, *outbounds: str, address: str = "10.0.0.1") -> Resource:
    net = {
        "address": address,
        "inbound": [{"port": 80, "servicePort": 81, "tags": {"kuma.io/service": service}}],
        "outbound": [{"port": 20000 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(outbounds)],
    }
    return Resource(type="Dataplane", mesh="default", name=name, spec={"networking": net})


@pytest.mark.etcd
async def test_a_relist_reaches_the_xds_reconciler_through_the_view_which_is_its_only_copy(
    etcd_server: EtcdServer,
) -> None:
    """The dataplane reconciler reads the view's resources in place (no mirror of its own): what an
    etcd re-list finds is taken in once, by the view, and regenerates the proxies it affects."""
    prefix = f"/zone-view-xds-{uuid.uuid4().hex[:8]}"
    proxy = ChaosProxy("etcd", free_port(), etcd_server.port)
    await proxy.start()
    writer = await EtcdStore.open(etcd_server.endpoint, prefix=prefix, rpc_timeout=3)
    behind = await EtcdStore.open(f"127.0.0.1:{proxy.listen_port}", prefix=prefix, rpc_timeout=3)
    await writer.create(Resource(type="Mesh", name="default", spec={"skipCreatingInitialPolicies": ["*"]}))
    await writer.create(serving("web-1", "web", "backend"))
    await writer.create(serving("backend-1", "backend"))
    await writer.create(serving("gone-1", "backend"))
    view = ZoneView()
    await view.start(behind)
    cache = RecordingCache()
    try:
        zone_proxies = ZoneProxyReconciler(view, cache, None, "zone-1", quiet=0.01)
        async with Reconciler(view, cache, None, debounce=0.01, max_delay=0.05) as reconciler, zone_proxies.running():
            for info in stream_infos("web-1"):
                await reconciler.on_stream_open(info)
            assert await cache.settle(reconciler) == ["default/web-1"]
            ctx, dp = reconciler.inspection("default", "web-1")
            assert dp is view.peek("Dataplane", "web-1", "default")  # the view's resource, not a copy
            assert ctx.dataplanes["backend-1"] is view.peek("Dataplane", "backend-1", "default")
            # Besides the view, only the shapes cache refers to Dataplanes (the version each
            # shape was made from); the reconciler's indexes hold names.
            kept = {k: v for k, v in vars(reconciler).items() if k not in ("view", "_shapes", "cache")}
            assert resources_in(kept) == 0

            # The view listed what the writer stored; its store's watch must have seen that too
            # before the partition, or the re-list below cannot tell that gone-1 went (it diffs
            # against what the watch published: a race left alone, see the report).
            written = await revision(writer)
            for _ in range(200):  # bounded: 10 s
                if behind._seen_revision >= written:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the replica's etcd watch did not catch up within 10 s")
            proxy.partition(60)  # this replica hears nothing from here on
            moved = await writer.get("Dataplane", "backend-1", "default")
            moved.spec = serving("backend-1", "backend", address="10.0.0.2").spec
            await writer.update(moved)
            await writer.delete("Dataplane", "gone-1", "default")
            await writer.create(serving("backend-2", "backend", address="10.0.0.3"))
            await writer.client.compact(await revision(writer), physical=True)
            taken_in = view.events

            proxy.heal()
            await until(view, "Dataplane", {"web-1", "backend-1", "backend-2"})
            assert behind.resyncs == 1
            assert view.events - taken_in == 3  # the re-list's changes, taken in once
            assert "default/web-1" in await cache.settle(reconciler)
            ctx, _ = reconciler.inspection("default", "web-1")
            assert {e.address for e in ctx.endpoints["backend"]} == {"10.0.0.2", "10.0.0.3"}
            assert ctx.dataplanes["backend-2"] is view.peek("Dataplane", "backend-2", "default")
            # The zone proxies' generation reads the same copy, re-listed once.
            zctx = await zone_proxies.context(with_dataplanes=True)
            assert zctx.meshes["default"].dataplanes["backend-2"] is view.peek("Dataplane", "backend-2", "default")
            assert "gone-1" not in zctx.meshes["default"].dataplanes
    finally:
        await view.stop()
        await behind.close()
        await writer.close()
        await proxy.close()


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def two_replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two zone replicas' stores over one stored state (memory and SQLite: one store object)."""
    if request.param == "memory":
        store: Store = MemoryStore()
        yield store, store
    elif request.param == "sqlite":
        sqlite = await SqliteStore.open(tmp_path / "zone.db")
        yield sqlite, sqlite
        await sqlite.close()
    else:
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        prefix = f"/zone-insights-{uuid.uuid4().hex[:8]}"
        a = await EtcdStore.open(etcd.endpoint, prefix=prefix, rpc_timeout=3)
        b = await EtcdStore.open(etcd.endpoint, prefix=prefix, rpc_timeout=3)
        yield a, b
        await a.close()
        await b.close()


async def test_two_replicas_writing_one_insight_at_once_both_keep_their_subscriptions(
    two_replicas: tuple[Store, Store],
) -> None:
    """Replicas A and B of a zone both read one proxy's DataplaneInsight (absent), then A writes its
    subscription and B writes its own merged into what it had read: B's write is conditional on
    the version it read, fails, and B merges again into what A wrote (it overwrote A's)."""
    store_a, store_b = two_replicas
    a_manager, b_manager = ResourceManager(store_a), ResourceManager(store_b)
    await a_manager.ensure_default_mesh()
    read_together: dict[tuple[str, str], Resource | None] = {("default", "web-1"): None}  # what both read
    a = InsightRecorder(a_manager, "replica-a", stored=lambda mesh, name: read_together[(mesh, name)])
    b = InsightRecorder(b_manager, "replica-b", stored=lambda mesh, name: read_together[(mesh, name)])
    proxy = ProxyIdentity("default", "web-1")

    await a.stream_open(StreamInfo(1, proxy, base_pb2.Node(), "peer"))
    await a.flush()
    await asyncio.sleep(0.01)  # a later connect time
    await b.stream_open(StreamInfo(7, proxy, base_pb2.Node(), "peer"))
    with structlog.testing.capture_logs() as logs:
        await b.flush()

    insight = await store_a.get("DataplaneInsight", "web-1", "default")
    subs = insight.spec["subscriptions"]
    assert [s["controlPlaneInstanceId"] for s in subs] == ["replica-a", "replica-b"]
    assert insight.version == 2
    retried = [e["event"] for e in logs if e["event"].startswith("dataplane_insight")]
    assert retried == ["dataplane_insight_merge_retried"]
