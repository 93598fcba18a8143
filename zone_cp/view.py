"""The zone's one in-memory view of its resources: one store watch, one listing at start.

Every part of a zone that follows the store reads through it instead of watching and listing the
store on its own: the xDS reconcilers (dataplanes, zone proxies), the KDS upload snapshot, the
license gate, the zone ingresses' ``availableServices``. So an etcd re-list (a watch that fell
behind a compaction: the store publishes what changed, ``shared/store/etcd.py``) is taken in once,
and a leader component started in a new term (the KDS client, the ingress updater) starts from
memory rather than from another listing of etcd.

``ZoneView`` is a read-only ``Store``: readers take it where they took the store (``list``,
``get``, ``find``, ``watch``); writes still go to the store, and come back through the view's
watch. A watch opened on the view and a listing made right after it, with no ``await`` that
suspends in between (the view's reads never suspend), see every change exactly once: the view
applies an event and hands it to its watches in one step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import structlog
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.resources.registry import REGISTRY
from zonemesh.shared.store import Event, EventKind, NotFound, Store
from zonemesh.shared.store.base import NO_FILTER, EventHub, ListFilter, ListResult, Watch, page_bounds

log = structlog.get_logger(__name__)


def _stamp(res: Resource) -> tuple[float, int]:
    """Which of two states of one key is the later: a recreated resource has a later creation time."""
    return (res.creation_time.timestamp() if res.creation_time else 0.0, res.version)


class ZoneView(Store):
    def __init__(self) -> None:
        self.source: Store | None = None
        self._items: dict[str, dict[ResourceKey, Resource]] = {}
        self._hub = EventHub()
        self._task: asyncio.Task[None] | None = None
        self.events = 0  # store events taken in (tests, diagnostics)

    # -- life ----------------------------------------------------------------------------

    async def start(self, store: Store) -> None:
        self.source = store
        watch = store.watch()  # every type, before listing: no change falls in between
        try:
            for rtype in REGISTRY:
                self._items[rtype.name] = {r.key: r for r in (await store.list(rtype.name)).items}
        except BaseException:
            watch.close()
            raise
        self._task = asyncio.create_task(self._follow(watch), name="zone-view")
        log.info("zone_view_loaded", resources=sum(len(items) for items in self._items.values()))

    async def _follow(self, watch: Watch) -> None:
        try:
            async for event in watch:
                if self._apply(event):
                    self.events += 1
                    self._hub.publish([event])
        finally:
            watch.close()

    def _apply(self, event: Event) -> bool:
        """Take a store event in; False when it is older than what the view holds (an event queued
        while the view was listing, which the listing already shows)."""
        res = event.resource
        items = self._items.setdefault(res.type, {})
        held = items.get(res.key)
        if event.kind is EventKind.DELETED:
            # A delete found by a re-list carries its key only (etcd compacted its last value away).
            if held is None or (res.creation_time is not None and _stamp(held) > _stamp(res)):
                return False
            del items[res.key]
            return True
        if held is not None and _stamp(held) >= _stamp(res):
            return False
        items[res.key] = res
        return True

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._hub.close()

    @contextlib.asynccontextmanager
    async def run(self, cp: Any) -> AsyncIterator[ZoneView]:
        """The component (zone_cp/app.py): entered before every part that reads through the view."""
        await self.start(cp.store)
        try:
            yield self
        finally:
            await self.stop()

    # -- reading (the Store interface) ------------------------------------------------------

    def peek(self, type: str, name: str, mesh: str = "") -> Resource | None:
        """What the view holds under that key now (no await: for code that cannot wait)."""
        return self._items.get(type, {}).get(ResourceKey(type, mesh, name))

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        key = ResourceKey(type, mesh, name)
        found = self._items.get(type, {}).get(key)
        if found is None:
            raise NotFound(key)
        return found

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        matching = sorted(
            (r for k, r in self._items.get(type, {}).items() if (mesh is None or k.mesh == mesh) and filter.matches(r)),
            key=lambda r: (r.mesh, r.name),
        )
        start, end, next_offset = page_bounds(offset, size, len(matching))
        return ListResult(matching[start:end], len(matching), next_offset)

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        return self._hub.subscribe(types)

    # -- writes go to the store ---------------------------------------------------------------

    async def create(self, res: Resource) -> Resource:
        raise TypeError("ZoneView is read-only: write to the store")

    async def update(self, res: Resource) -> Resource:
        raise TypeError("ZoneView is read-only: write to the store")

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        raise TypeError("ZoneView is read-only: write to the store")

    async def batch(self, upserts: Iterable[Resource] = (), deletes: Iterable[ResourceKey] = ()) -> None:
        raise TypeError("ZoneView is read-only: write to the store")

    async def close(self) -> None:
        """Nothing to close: the store is not the view's (``stop`` ends the view)."""
