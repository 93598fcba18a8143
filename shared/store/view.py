"""A view: the resources of some types of a store, mirrored in memory from one watch.

A zone's components all read one view (zone_cp/app.py): the xDS reconciler, the KDS upload
snapshot, the license gate, the zone ingresses' availableServices and the zone-proxy reconciler.
One watch feeds it, so when the store's watch re-lists (etcd compaction: shared/store/etcd.py) or
another replica becomes leader, there is one mirror to bring up to date, and every reader sees the
same state.

It is a ``Store``: reads of mirrored types come from memory, reads of other types and every write
go to the store, and ``watch`` delivers the mirrored types' events once the mirror holds them.
Before each read the view applies the events the store has already published, so a read through
the view sees every write that has returned (the stores publish before a write returns).

What it hands out is shared, not copied: never change a resource read from a view (``copy()`` it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import structlog
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.store.base import (
    NO_FILTER,
    Event,
    EventHub,
    EventKind,
    ListFilter,
    ListResult,
    NotFound,
    Store,
    Watch,
    page_bounds,
)

log = structlog.get_logger(__name__)


class StoreView(Store):
    def __init__(self, store: Store, types: Iterable[str]) -> None:
        self.store = store
        self.types = frozenset(types)
        self._tables: dict[str, dict[ResourceKey, Resource]] = {t: {} for t in self.types}
        self._hub = EventHub()
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        self._watch = self.store.watch(self.types)  # before listing: nothing falls in between
        for type in sorted(self.types):
            for res in (await self.store.list(type)).items:
                self._tables[type][res.key] = res
        self.loaded.set()
        self._task = asyncio.create_task(self._follow(), name="store-view")
        log.debug("store_view_loaded", types=len(self.types), resources=sum(map(len, self._tables.values())))

    async def close(self) -> None:
        """Stop following; the store itself stays open (it is not the view's)."""
        await cancel_and_wait([self._task])
        if self._watch is not None:
            self._watch.close()
        self._hub.close()

    async def __aenter__(self) -> StoreView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- following the store ----------------------------------------------------------------------

    async def _follow(self) -> None:
        assert self._watch is not None
        queue = self._watch.queue
        while True:
            event = await queue.get()
            if event is None:
                return
            self._apply(event)
            self._drain()

    def _drain(self) -> None:
        """Apply what the store has published and the follower has not taken yet."""
        if self._watch is None:
            return
        queue = self._watch.queue
        while not queue.empty():
            event = queue.get_nowait()
            if event is None:
                return
            self._apply(event)

    def _apply(self, event: Event) -> None:
        res = event.resource
        table = self._tables.get(res.type)
        if table is None:
            return
        if event.kind is EventKind.DELETED:
            table.pop(res.key, None)
        else:
            known = table.get(res.key)
            if known is not None and res.version and known.version > res.version:
                return  # older than what the initial list already held
            table[res.key] = res
        self._hub.publish([event])

    # -- reads ------------------------------------------------------------------------------------

    def table(self, type: str) -> Mapping[ResourceKey, Resource]:
        """The mirrored resources of ``type`` by key, live (not a copy): for readers that index them."""
        self._drain()
        return self._tables[type]

    def resources(self, type: str, mesh: str | None = None) -> list[Resource]:
        """Every mirrored ``type`` (of ``mesh`` when given), in no particular order."""
        values = self.table(type).values()
        return list(values) if mesh is None else [r for r in values if r.mesh == mesh]

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        if type not in self.types:
            return await self.store.get(type, name, mesh)
        key = ResourceKey(type, mesh, name)
        res = self.table(type).get(key)
        if res is None:
            raise NotFound(key)
        return res

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        if type not in self.types:
            return await self.store.list(type, mesh, filter=filter, offset=offset, size=size)
        matching = sorted(
            (r for r in self.resources(type, mesh) if filter.matches(r)),
            key=lambda r: (r.mesh, r.name),
        )
        start, end, next_offset = page_bounds(offset, size, len(matching))
        return ListResult(matching[start:end], len(matching), next_offset)

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        wanted = self.types if types is None else frozenset(types)
        missing = wanted - self.types
        if missing:
            raise ValueError(f"the view does not mirror {', '.join(sorted(missing))}: watch the store for them")
        return self._hub.subscribe(wanted)

    # -- writes go to the store -------------------------------------------------------------------

    async def create(self, res: Resource) -> Resource:
        return await self.store.create(res)

    async def update(self, res: Resource) -> Resource:
        return await self.store.update(res)

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        return await self.store.delete(type, name, mesh, version=version)

    async def batch(self, upserts: Iterable[Resource] = (), deletes: Iterable[ResourceKey] = ()) -> None:
        await self.store.batch(upserts, deletes)

    def idle(self) -> bool:
        """No published event is waiting to be applied (tests: ``settle``)."""
        return self._watch is None or self._watch.queue.empty()
