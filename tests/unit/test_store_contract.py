"""The Store contract (shared/store/base.py), run against every backend: memory, SQLite, etcd.

Each backend is opened through ``open_store`` with its URL, so the factory is exercised too.
The etcd runs use a real etcd server (tests/conftest.py) and a key prefix per test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.store import (
    AlreadyExists,
    Conflict,
    Event,
    EventKind,
    InvalidOffset,
    ListFilter,
    NotFound,
    Store,
    Watch,
    open_store,
)
from zonemesh.shared.store.base import NO_FILTER
from zonemesh.shared.store.etcd import EtcdStore, parse_endpoints
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.store.sqlite import SqliteStore

MT = "MeshTimeout"
EVENT_TIMEOUT = 10.0  # generous: etcd delivers events through its watch stream


@dataclass
class Backend:
    name: str
    url: str

    async def open(self) -> Store:
        """Another store on the same data (for memory: a fresh, empty one)."""
        return await open_store(self.url)


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    if name == "memory":
        return Backend(name, "memory://")
    if name == "sqlite":
        return Backend(name, f"sqlite://{tmp_path / 'zonemesh.db'}")
    server = request.getfixturevalue("etcd_server")
    return Backend(name, f"etcd://{server.endpoint}?prefix=/test-{uuid.uuid4().hex}")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = await backend.open()
    yield opened
    await opened.close()


def mt(name: str, mesh: str = "default", *, labels: dict[str, str] | None = None, timeout: str = "5s") -> Resource:
    spec = {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": timeout}}],
    }
    return Resource(type=MT, name=name, mesh=mesh, spec=spec, labels=labels or {})


async def next_events(watch: Watch, count: int) -> list[Event]:
    events: list[Event] = []
    iterator = aiter(watch)
    for _ in range(count):
        events.append(await asyncio.wait_for(anext(iterator), EVENT_TIMEOUT))
    return events


async def list_names(store: Store, mesh: str | None = "default", *, filter: ListFilter = NO_FILTER) -> list[str]:
    return [r.name for r in (await store.list(MT, mesh, filter=filter)).items]


# --- create / get -----------------------------------------------------------------------


async def test_create_then_get(store: Store) -> None:
    created = await store.create(mt("t1", labels={"team": "a"}))
    assert created.version == 1
    assert created.creation_time is not None
    assert created.creation_time == created.modification_time

    got = await store.get(MT, "t1", "default")
    assert got.key == ResourceKey(MT, "default", "t1")
    assert got.spec == created.spec
    assert got.labels == {"team": "a"}
    assert got.version == 1
    assert got.creation_time == created.creation_time
    assert got.modification_time == created.modification_time


async def test_create_ignores_caller_version_and_times(store: Store) -> None:
    res = mt("t1")
    res.version = 41
    created = await store.create(res)
    assert created.version == 1


async def test_global_scoped_resource_has_empty_mesh(store: Store) -> None:
    await store.create(Resource(type="Mesh", name="default", spec={"mtls": {}}))
    got = await store.get("Mesh", "default")
    assert got.mesh == ""
    assert [r.name for r in (await store.list("Mesh", "")).items] == ["default"]
    assert [r.name for r in (await store.list("Mesh")).items] == ["default"]


async def test_create_existing_raises_already_exists_and_keeps_the_original(store: Store) -> None:
    await store.create(mt("t1", timeout="1s"))
    with pytest.raises(AlreadyExists) as caught:
        await store.create(mt("t1", timeout="2s"))
    assert caught.value.key == ResourceKey(MT, "default", "t1")
    got = await store.get(MT, "t1", "default")
    assert got.spec["to"][0]["default"]["connectionTimeout"] == "1s"


async def test_same_name_in_another_mesh_or_type_is_another_resource(store: Store) -> None:
    await store.create(mt("t1", "default"))
    await store.create(mt("t1", "other"))
    await store.create(Resource(type="MeshRetry", name="t1", mesh="default"))
    assert (await store.get(MT, "t1", "other")).mesh == "other"


async def test_missing_resource_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as caught:
        await store.get(MT, "nope", "default")
    assert caught.value.key == ResourceKey(MT, "default", "nope")
    assert await store.find(MT, "nope", "default") is None
    with pytest.raises(NotFound):
        await store.update(mt("nope"))
    with pytest.raises(NotFound):
        await store.delete(MT, "nope", "default")
    with pytest.raises(NotFound):
        await store.delete(MT, "nope", "default", version=1)


async def test_returned_resources_are_copies(store: Store) -> None:
    created = await store.create(mt("t1"))
    created.spec["targetRef"]["kind"] = "Changed"
    got = await store.get(MT, "t1", "default")
    assert got.spec["targetRef"]["kind"] == "Mesh"


# --- update / delete ----------------------------------------------------------------------


async def test_update_bumps_version_and_keeps_creation_time(store: Store) -> None:
    created = await store.create(mt("t1", timeout="1s"))
    changed = mt("t1", timeout="9s", labels={"team": "b"})
    changed.version = created.version
    changed.creation_time = None  # the store keeps its own, whatever the caller sends

    updated = await store.update(changed)
    assert updated.version == 2
    assert updated.creation_time == created.creation_time
    assert updated.modification_time is not None and created.modification_time is not None
    assert updated.modification_time >= created.modification_time

    got = await store.get(MT, "t1", "default")
    assert got.version == 2
    assert got.creation_time == created.creation_time
    assert got.spec["to"][0]["default"]["connectionTimeout"] == "9s"
    assert got.labels == {"team": "b"}


async def test_update_with_stale_version_conflicts_and_changes_nothing(store: Store) -> None:
    first = await store.create(mt("t1", timeout="1s"))
    first.spec["to"][0]["default"]["connectionTimeout"] = "2s"
    await store.update(first)  # now version 2

    stale = mt("t1", timeout="3s")
    stale.version = 1
    with pytest.raises(Conflict) as caught:
        await store.update(stale)
    assert (caught.value.expected, caught.value.actual) == (1, 2)

    got = await store.get(MT, "t1", "default")
    assert got.version == 2
    assert got.spec["to"][0]["default"]["connectionTimeout"] == "2s"


async def test_concurrent_updates_of_one_version_let_exactly_one_win(store: Store) -> None:
    await store.create(mt("t1"))
    attempts = []
    for i in range(5):
        res = mt("t1", timeout=f"{i + 1}s")
        res.version = 1
        attempts.append(store.update(res))
    results = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [r for r in results if isinstance(r, Resource)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Resource))
    got = await store.get(MT, "t1", "default")
    assert got.version == 2
    assert got.spec == winners[0].spec


async def test_delete_returns_the_last_state(store: Store) -> None:
    created = await store.create(mt("t1", labels={"team": "a"}))
    gone = await store.delete(MT, "t1", "default")
    assert gone.version == created.version
    assert gone.labels == {"team": "a"}
    with pytest.raises(NotFound):
        await store.get(MT, "t1", "default")


async def test_delete_with_stale_version_conflicts_and_keeps_the_resource(store: Store) -> None:
    created = await store.create(mt("t1"))
    updated = await store.update(created)  # version 2
    with pytest.raises(Conflict) as caught:
        await store.delete(MT, "t1", "default", version=1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert (await store.get(MT, "t1", "default")).version == 2

    gone = await store.delete(MT, "t1", "default", version=updated.version)
    assert gone.version == 2
    assert await store.find(MT, "t1", "default") is None


async def test_recreated_resource_starts_again_at_version_1(store: Store) -> None:
    await store.update(await store.create(mt("t1")))
    await store.delete(MT, "t1", "default")
    assert (await store.create(mt("t1"))).version == 1


# --- batch --------------------------------------------------------------------------------


async def test_batch_upserts_and_deletes(store: Store) -> None:
    existing = await store.create(mt("keep", timeout="1s"))
    await store.create(mt("drop"))

    await store.batch(
        upserts=[mt("keep", timeout="2s"), mt("new")],
        deletes=[ResourceKey(MT, "default", "drop"), ResourceKey(MT, "default", "never-existed")],
    )

    keep = await store.get(MT, "keep", "default")
    assert keep.version == 2  # no version check, but the version still moves on
    assert keep.creation_time == existing.creation_time
    assert keep.spec["to"][0]["default"]["connectionTimeout"] == "2s"
    new = await store.get(MT, "new", "default")
    assert new.version == 1
    assert new.creation_time is not None
    assert await store.find(MT, "drop", "default") is None
    assert await list_names(store) == ["keep", "new"]


async def test_a_batch_with_expected_versions_applies_only_if_they_hold(store: Store) -> None:
    await store.create(mt("read", timeout="1s"))
    stale = {ResourceKey(MT, "default", "read"): 1, ResourceKey(MT, "default", "absent"): 0}
    await store.create(mt("absent"))  # created by someone else since it was read as absent
    with pytest.raises(Conflict) as refused:
        await store.batch(upserts=[mt("read", timeout="2s"), mt("absent", timeout="2s")], expected=stale)
    assert (refused.value.key, refused.value.expected, refused.value.actual) == (
        ResourceKey(MT, "default", "absent"),
        0,
        1,
    )
    assert (await store.get(MT, "read", "default")).version == 1  # nothing of the batch applied

    current = {ResourceKey(MT, "default", "read"): 1, ResourceKey(MT, "default", "absent"): 1}
    await store.batch(upserts=[mt("read", timeout="2s"), mt("absent", timeout="2s")], expected=current)
    assert [(await store.get(MT, n, "default")).version for n in ("read", "absent")] == [2, 2]


async def test_batch_of_many_resources(store: Store) -> None:
    # More than etcd's 128 operations per transaction.
    await store.batch(upserts=[mt(f"t{i:03d}") for i in range(300)])
    assert (await store.list(MT, "default", size=1)).total == 300
    await store.batch(deletes=[ResourceKey(MT, "default", f"t{i:03d}") for i in range(0, 300, 2)])
    result = await store.list(MT, "default")
    assert result.total == 150
    assert result.items[0].name == "t001"


async def test_empty_batch_is_a_no_op(store: Store) -> None:
    await store.batch()
    assert (await store.list(MT)).total == 0


# --- list -----------------------------------------------------------------------------------


async def test_list_orders_by_mesh_then_name(store: Store) -> None:
    for mesh, name in [("zeta", "b"), ("default", "web-2"), ("alpha", "z"), ("default", "api"), ("default", "web")]:
        await store.create(mt(name, mesh))
    result = await store.list(MT)
    assert [(r.mesh, r.name) for r in result.items] == [
        ("alpha", "z"),
        ("default", "api"),
        ("default", "web"),
        ("default", "web-2"),
        ("zeta", "b"),
    ]
    assert result.total == 5
    assert result.next_offset is None


async def test_list_orders_meshes_whose_names_prefix_each_other(store: Store) -> None:
    await store.create(mt("a", "default-2"))
    await store.create(mt("b", "default"))
    assert [(r.mesh, r.name) for r in (await store.list(MT)).items] == [("default", "b"), ("default-2", "a")]


async def test_list_mesh_filter_and_all_meshes(store: Store) -> None:
    await store.create(mt("a", "default"))
    await store.create(mt("b", "default"))
    await store.create(mt("c", "other"))
    await store.create(Resource(type="MeshRetry", name="x", mesh="default"))

    assert await list_names(store, "default") == ["a", "b"]
    assert await list_names(store, "other") == ["c"]
    assert await list_names(store, "missing") == []
    assert await list_names(store, None) == ["a", "b", "c"]
    assert (await store.list(MT, None)).total == 3
    assert (await store.list("Unknown")).items == []


async def test_list_label_filter(store: Store) -> None:
    await store.create(mt("a", labels={"zonemesh.io/origin": "zone", "team": "x"}))
    await store.create(mt("b", labels={"zonemesh.io/origin": "global", "team": "x"}))
    await store.create(mt("c", labels={"team": "x"}))
    await store.create(mt("d", "other", labels={"zonemesh.io/origin": "zone"}))

    only_zone = ListFilter(labels={"zonemesh.io/origin": "zone"})
    assert await list_names(store, "default", filter=only_zone) == ["a"]
    assert await list_names(store, None, filter=only_zone) == ["a", "d"]
    both = ListFilter(labels={"zonemesh.io/origin": "global", "team": "x"})
    assert await list_names(store, filter=both) == ["b"]
    assert await list_names(store, filter=ListFilter(labels={"team": "y"})) == []
    result = await store.list(MT, None, filter=ListFilter(labels={"team": "x"}))
    assert result.total == 3


async def test_list_name_contains(store: Store) -> None:
    for name in ["web-1", "web-2", "api", "backend-web"]:
        await store.create(mt(name))
    assert await list_names(store, filter=ListFilter(name_contains="web")) == ["backend-web", "web-1", "web-2"]
    assert await list_names(store, filter=ListFilter(name_contains="%")) == []
    assert await list_names(store, filter=ListFilter(name_contains="_")) == []


async def test_list_name_prefix(store: Store) -> None:
    """One zone's resources at global (``{zone}.{name}``), in one mesh or all, paged, counted."""
    for name in ["zone-1.a", "zone-1.b", "zone-1.c", "zone-10.a", "zone-1", "xzone-1.a"]:
        await store.create(mt(name))
    await store.create(mt("zone-1.d", mesh="other"))
    prefix = ListFilter(name_prefix="zone-1.")
    assert await list_names(store, "default", filter=prefix) == ["zone-1.a", "zone-1.b", "zone-1.c"]
    assert await list_names(store, None, filter=prefix) == ["zone-1.a", "zone-1.b", "zone-1.c", "zone-1.d"]
    assert await list_names(store, "default", filter=ListFilter(name_prefix="%")) == []
    first = await store.list(MT, "default", filter=prefix, size=2)
    assert [r.name for r in first.items] == ["zone-1.a", "zone-1.b"] and first.total == 3
    rest = await store.list(MT, "default", filter=prefix, size=2, offset=first.next_offset)
    assert [r.name for r in rest.items] == ["zone-1.c"] and rest.total == 3
    both = ListFilter(name_prefix="zone-1.", name_contains="b")
    assert await list_names(store, "default", filter=both) == ["zone-1.b"]


@pytest.mark.etcd
async def test_etcd_lists_a_name_prefix_of_one_mesh_as_one_key_range(etcd_server: Any) -> None:
    """What is outside the prefix is not even read: a value there that does not decode (as no
    full read of the type would survive) is not met."""
    store = await EtcdStore.open(etcd_server.endpoint, prefix=f"/test-{uuid.uuid4().hex}")
    try:
        await store.create(mt("zone-1.web"))
        await store.create(mt("zone-2.web"))
        other = store._key(ResourceKey(MT, "default", "zone-2.broken"))
        await store.client.put(other, b"not json")
        only = ListFilter(name_prefix="zone-1.")
        assert [r.name for r in (await store.list(MT, "default", filter=only)).items] == ["zone-1.web"]
        with pytest.raises(ValueError):
            await store.list(MT, "default", filter=ListFilter(name_contains="zone-1."))  # reads them all
    finally:
        await store.close()


@pytest.mark.etcd
async def test_etcd_decodes_a_long_list_letting_the_event_loop_run(
    etcd_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of 100,000 records takes seconds to decode: the event loop must get turns meanwhile
    (lease keepalives, KDS heartbeats), not only between the reads from etcd."""
    from zonemesh.shared.store import etcd as etcd_module

    store = await EtcdStore.open(etcd_server.endpoint, prefix=f"/test-{uuid.uuid4().hex}")
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []  # the loop's turns so far, at each record decoded
    decode = etcd_module._decode
    monkeypatch.setattr(etcd_module, "_decode", lambda value: (seen.append(turns), decode(value))[1])
    try:
        count = 1500  # three slices
        await store.batch(upserts=[mt(f"t{i}") for i in range(count)])
        for flt in (NO_FILTER, ListFilter(name_contains="t")):
            seen.clear()
            task = asyncio.create_task(ticker())
            try:
                assert len((await store.list(MT, "default", filter=flt)).items) == count
            finally:
                task.cancel()
            assert len(seen) == count
            assert seen[-1] > seen[0], "every record was decoded in one turn of the event loop"
    finally:
        await store.close()


@pytest.mark.etcd
async def test_etcd_read_cancelled_by_its_caller_is_not_cancelled_in_etcd(
    etcd_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd before 3.5.5 panics when a client cancels a read-only txn (etcd issue 14110): a caller
    that gives up on a read (a KDS stream or a leader term that ends) must not cancel it in etcd."""
    import grpc

    store = await EtcdStore.open(etcd_server.endpoint, prefix=f"/test-{uuid.uuid4().hex}")
    try:
        await store.batch(upserts=[mt(f"t{i}") for i in range(300)])
        calls: list[Any] = []
        txn = store.client.kvstub.Txn

        def recording(*args: Any, **kwargs: Any) -> Any:
            calls.append(txn(*args, **kwargs))
            return calls[-1]

        monkeypatch.setattr(store.client.kvstub, "Txn", recording)
        reader = asyncio.create_task(store.list(MT, "default"))
        for _ in range(1000):
            if calls:
                break
            await asyncio.sleep(0)
        assert calls, "the list sent no txn"
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert await asyncio.wait_for(calls[0].code(), 10) == grpc.StatusCode.OK
    finally:
        await store.close()


async def test_list_predicate_after_other_filters(store: Store) -> None:
    for i in range(6):
        await store.create(mt(f"t{i}", labels={"parity": "even" if i % 2 == 0 else "odd"}, timeout=f"{i}s"))
    seen: list[str] = []

    def slow(res: Resource) -> bool:
        seen.append(res.name)
        return bool(res.spec["to"][0]["default"]["connectionTimeout"] in ("0s", "4s", "5s"))

    result = await store.list(MT, "default", filter=ListFilter(labels={"parity": "even"}, predicate=slow))
    assert [r.name for r in result.items] == ["t0", "t4"]
    assert result.total == 2
    assert set(seen) <= {"t0", "t2", "t4"}  # the predicate only sees what the labels let through


async def test_pagination_walks_every_item_once(store: Store) -> None:
    names = [f"t{i:02d}" for i in range(10)]
    await store.batch(upserts=[mt(n) for n in reversed(names)])

    pages: list[list[str]] = []
    offset: str | None = None
    for _ in range(10):  # bounded: 4 pages expected
        page = await store.list(MT, "default", offset=offset, size=3)
        assert page.total == 10
        pages.append([r.name for r in page.items])
        offset = page.next_offset
        if offset is None:
            break
    assert pages == [names[0:3], names[3:6], names[6:9], names[9:10]]


async def test_pagination_exact_multiple_ends_with_no_next(store: Store) -> None:
    await store.batch(upserts=[mt(f"t{i}") for i in range(6)])
    first = await store.list(MT, "default", size=3)
    assert first.next_offset is not None
    second = await store.list(MT, "default", offset=first.next_offset, size=3)
    assert len(second.items) == 3
    assert second.next_offset is None


async def test_pagination_with_filter(store: Store) -> None:
    await store.batch(upserts=[mt(f"t{i}", labels={"keep": "yes" if i != 4 else "no"}) for i in range(8)])
    keep = ListFilter(labels={"keep": "yes"})
    first = await store.list(MT, "default", filter=keep, size=3)
    assert [r.name for r in first.items] == ["t0", "t1", "t2"]
    assert first.total == 7
    second = await store.list(MT, "default", filter=keep, offset=first.next_offset, size=3)
    assert [r.name for r in second.items] == ["t3", "t5", "t6"]
    third = await store.list(MT, "default", filter=keep, offset=second.next_offset, size=3)
    assert [r.name for r in third.items] == ["t7"]
    assert third.next_offset is None


async def test_offset_without_size_returns_the_rest(store: Store) -> None:
    await store.batch(upserts=[mt(f"t{i}") for i in range(5)])
    first = await store.list(MT, "default", size=2)
    rest = await store.list(MT, "default", offset=first.next_offset)
    assert [r.name for r in rest.items] == ["t2", "t3", "t4"]
    assert rest.total == 5
    assert rest.next_offset is None


@pytest.mark.parametrize("offset", ["garbage!", "-1", "not a token"])
async def test_bad_offset_raises_invalid_offset(store: Store, offset: str) -> None:
    await store.create(mt("t1"))
    with pytest.raises(InvalidOffset):
        await store.list(MT, "default", offset=offset, size=3)


# --- watch --------------------------------------------------------------------------------


async def test_watch_sees_created_updated_deleted_in_order(store: Store) -> None:
    async with store.watch([MT]) as watch:
        created = await store.create(mt("t1"))
        await store.update(created)
        await store.delete(MT, "t1", "default")
        events = await next_events(watch, 3)
    assert [e.kind for e in events] == [EventKind.CREATED, EventKind.UPDATED, EventKind.DELETED]
    assert [e.resource.version for e in events] == [1, 2, 2]
    assert all(e.key == ResourceKey(MT, "default", "t1") for e in events)
    assert events[2].resource.spec == created.spec  # DELETED carries the last stored state


async def test_watch_filters_by_type(store: Store) -> None:
    async with store.watch([MT]) as watch:
        await store.create(Resource(type="Mesh", name="default"))
        await store.create(mt("t1"))
        (event,) = await next_events(watch, 1)
    assert event.key == ResourceKey(MT, "default", "t1")


async def test_watch_sees_batch_changes(store: Store) -> None:
    await store.create(mt("old"))
    async with store.watch() as watch:
        await store.batch(upserts=[mt("old"), mt("new")], deletes=[ResourceKey(MT, "default", "old2")])
        await store.batch(deletes=[ResourceKey(MT, "default", "old")])
        events = await next_events(watch, 3)
    assert {(e.kind, e.resource.name) for e in events[:2]} == {
        (EventKind.UPDATED, "old"),
        (EventKind.CREATED, "new"),
    }
    assert (events[2].kind, events[2].resource.name) == (EventKind.DELETED, "old")


async def test_closed_watch_ends_iteration(store: Store) -> None:
    watch = store.watch()
    watch.close()
    assert [e async for e in watch] == []


# --- backend-specific: persistence and sharing ----------------------------------------------


async def test_sqlite_data_survives_close_and_reopen(backend: Backend, store: Store) -> None:
    if backend.name != "sqlite":
        pytest.skip("only SQLite persists in a local file")
    created = await store.create(mt("t1", labels={"team": "a"}))
    await store.update(created)
    await store.close()

    reopened = await backend.open()
    try:
        got = await reopened.get(MT, "t1", "default")
        assert got.version == 2
        assert got.labels == {"team": "a"}
        assert got.creation_time == created.creation_time
        with pytest.raises(AlreadyExists):
            await reopened.create(mt("t1"))
    finally:
        await reopened.close()


async def test_etcd_second_instance_sees_changes_of_the_first(backend: Backend, store: Store) -> None:
    if backend.name != "etcd":
        pytest.skip("only etcd is shared between control-plane instances")
    other = await backend.open()
    try:
        async with other.watch([MT]) as watch:
            created = await store.create(mt("t1"))
            await store.update(created)
            await store.delete(MT, "t1", "default")
            events = await next_events(watch, 3)
        assert [e.kind for e in events] == [EventKind.CREATED, EventKind.UPDATED, EventKind.DELETED]

        await store.create(mt("t2"))
        assert (await other.get(MT, "t2", "default")).version == 1
        stale = await other.get(MT, "t2", "default")
        await store.update(await store.get(MT, "t2", "default"))
        with pytest.raises(Conflict):
            await other.update(stale)
    finally:
        await other.close()


async def test_etcd_offset_of_another_listing_is_rejected(backend: Backend, store: Store) -> None:
    if backend.name != "etcd":
        pytest.skip("keyset tokens are etcd's")
    await store.batch(upserts=[mt(f"t{i}", "default") for i in range(3)] + [mt("t0", "other")])
    token = (await store.list(MT, "default", size=1)).next_offset
    assert token is not None
    with pytest.raises(InvalidOffset):
        await store.list(MT, "other", offset=token, size=1)
    # A token stays valid after the item it points at is deleted: pages do not shift.
    await store.delete(MT, "t0", "default")
    assert [r.name for r in (await store.list(MT, "default", offset=token, size=5)).items] == ["t1", "t2"]


# --- factory --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://localhost/zonemesh",
        "zonemesh.db",
        "memory://extra",
        "sqlite://",
        "etcd://",
        "etcd://127.0.0.1:2379?prefix=no-slash",
        "etcd://127.0.0.1:2379?timeout=3",
        "etcd://127.0.0.1:notaport",
        "etcd://etcd-a:2379,etcd-b:2379",  # several endpoints must be IPs
    ],
)
async def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        await open_store(url)


async def test_open_store_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = await open_store("memory://")
    assert isinstance(memory, MemoryStore)
    await memory.close()

    monkeypatch.chdir(tmp_path)
    relative = await open_store("sqlite://data/zm.db")
    assert isinstance(relative, SqliteStore)
    await relative.create(mt("t1"))
    await relative.close()
    assert (tmp_path / "data" / "zm.db").exists()

    absolute = await open_store(f"sqlite://{tmp_path / 'data' / 'zm.db'}")
    assert (await absolute.get(MT, "t1", "default")).version == 1
    await absolute.close()


def test_parse_etcd_endpoints() -> None:
    assert [str(e) for e in parse_endpoints("10.0.0.1:2379, 10.0.0.2")] == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert [str(e) for e in parse_endpoints(["[::1]:32379"])] == ["[::1]:32379"]
    for bad in ["", "h:port", "[::1", "h:0"]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)


@pytest.mark.etcd
async def test_etcd_store_accepts_several_ip_endpoints(etcd_server: Any) -> None:
    endpoint = etcd_server.endpoint
    # The first address refuses connections; gRPC fails over to the second.
    store = await EtcdStore.open(f"127.0.0.1:1,{endpoint}", prefix=f"/test-{uuid.uuid4().hex}")
    try:
        await store.create(mt("t1"))
        assert (await store.get(MT, "t1", "default")).version == 1
    finally:
        await store.close()


async def _closing(make: Callable[[], Awaitable[Store]]) -> None:
    store = await make()
    await store.close()
    await store.close()  # idempotent


async def test_close_twice_is_harmless(backend: Backend) -> None:
    await _closing(backend.open)
