"""A watch that falls behind etcd's compaction: the etcd store re-lists and publishes what changed,
so every in-process watcher (and the mirrors fed by them, here global's KDS snapshot) is current
again without a restart.
Real etcd; a real TCP proxy cuts one replica off while another writes and etcd compacts."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aetcd import rpc
from conftest import EtcdServer
from zonemesh.shared.kds.codec import key_str
from zonemesh.shared.kds.snapshot import Snapshot
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.base import Event, EventKind, Watch
from zonemesh.shared.store.etcd import EtcdStore

from zonemesh.lab.chaos_proxy import ChaosProxy
from zonemesh.testing import free_port

pytestmark = pytest.mark.etcd


async def revision(store: EtcdStore) -> int:
    response = await store.client.kvstub.Range(rpc.RangeRequest(key=b"/", count_only=True), timeout=5)
    return int(response.header.revision)


async def events(watch: Watch, count: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            event = await watch.queue.get()
            assert event is not None
            got.append(event)
    return got


async def mirror_holds(mirror: Snapshot, names: set[str]) -> None:
    wanted = {key_str("Mesh", "", name) for name in names}
    changed = asyncio.Event()
    unsubscribe = mirror.subscribe(lambda _keys: changed.set())
    try:
        async with asyncio.timeout(30):
            while set(mirror.items) != wanted:
                changed.clear()
                await changed.wait()
    finally:
        unsubscribe()


def mesh(name: str, **spec: object) -> Resource:
    return Resource(type="Mesh", name=name, spec=dict(spec))


async def test_a_watch_behind_a_compaction_relists_and_publishes_what_it_missed(etcd_server: EtcdServer) -> None:
    prefix = f"/resync-{uuid.uuid4().hex[:8]}"
    proxy = ChaosProxy("etcd", free_port(), etcd_server.port)
    await proxy.start()
    writer = await EtcdStore.open(etcd_server.endpoint, prefix=prefix, rpc_timeout=3)
    behind = await EtcdStore.open(f"127.0.0.1:{proxy.listen_port}", prefix=prefix, rpc_timeout=3)
    # A real mirror fed by that watch: the KDS snapshot global serves zones from.
    mirror = Snapshot(behind, ["Mesh"], lambda res: res, debounce=0.0)
    await mirror.start()
    try:
        watch = behind.watch(["Mesh"])
        await writer.create(mesh("kept"))
        await writer.create(mesh("changed"))
        await writer.create(mesh("deleted"))
        assert [e.resource.name for e in await events(watch, 3)] == ["kept", "changed", "deleted"]
        before = mirror.items[key_str("Mesh", "", "changed")].hash

        proxy.partition(60)  # `behind` hears nothing from here on
        changed = await writer.get("Mesh", "changed")
        changed.spec = {"mtls": {}}
        await writer.update(changed)
        await writer.delete("Mesh", "deleted")
        await writer.create(mesh("created"))
        await writer.client.compact(await revision(writer), physical=True)
        assert behind.resyncs == 0 and watch.queue.empty()

        proxy.heal()
        missed = {(e.kind, e.resource.name) for e in await events(watch, 3)}
        assert missed == {
            (EventKind.UPDATED, "changed"),
            (EventKind.DELETED, "deleted"),
            (EventKind.CREATED, "created"),
        }
        assert behind.resyncs == 1
        # the mirror fed by the store's watch is the store's state again
        await mirror_holds(mirror, {"changed", "created", "kept"})
        assert mirror.items[key_str("Mesh", "", "changed")].hash != before
        # and the watch goes on from there
        await writer.create(mesh("after"))
        assert [(e.kind, e.resource.name) for e in await events(watch, 1)] == [(EventKind.CREATED, "after")]
        watch.close()
    finally:
        await mirror.stop()
        await behind.close()
        await writer.close()
        await proxy.close()


async def test_a_resource_listed_ahead_of_the_lagging_watch_then_deleted_and_compacted_is_deleted(
    etcd_server: EtcdServer,
) -> None:
    """A reader (the zone's view) lists while the store's watch lags: it holds a resource the watch
    never published. Deleted, and etcd compacted, before the watch catches up: the watch's re-list
    must still say it is gone, or that reader keeps it until a restart."""
    prefix = f"/resync-ahead-{uuid.uuid4().hex[:8]}"
    writer = await EtcdStore.open(etcd_server.endpoint, prefix=prefix, rpc_timeout=3)
    behind = await EtcdStore.open(etcd_server.endpoint, prefix=prefix, rpc_timeout=3)
    try:
        watch = behind.watch(["Mesh"])
        # The watch lags (a slow or starved process): stopped here so that the order is certain.
        assert behind._watch_task is not None
        behind._watch_task.cancel()
        await asyncio.gather(behind._watch_task, return_exceptions=True)
        await writer.create(mesh("fleeting"))
        assert [res.name for res in (await behind.list("Mesh")).items] == ["fleeting"]
        await writer.delete("Mesh", "fleeting")
        await writer.client.compact(await revision(writer), physical=True)

        behind._watch_task = asyncio.create_task(behind._watch_loop(behind._seen_revision + 1))
        assert [(e.kind, e.resource.name) for e in await events(watch, 1)] == [(EventKind.DELETED, "fleeting")]
        assert behind.resyncs == 1
        watch.close()
    finally:
        await behind.close()
        await writer.close()
