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

Readers that keep indexes of their own over what the view holds (the xDS reconciler: which
proxies consume a service) ``follow`` it instead: their listener is called with the state before
and after each change, in the step the view takes it in, so an index never sees the view ahead of
it, and keeps no copy of the resources (``in_mesh`` / ``all`` / ``peek`` read them in place).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
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


# Called with (before, after) of one resource: after None when it was deleted, before None when created.
Listener = Callable[[Resource | None, Resource | None], None]
_EMPTY: Mapping[str, Resource] = {}


class ZoneView(Store):
    def __init__(self) -> None:
        self.source: Store | None = None
        # type -> mesh ("" for global-scoped types) -> name -> resource: a mesh's resources of a
        # type are read without going over every mesh's (a round reads its mesh's Dataplanes).
        self._items: dict[str, dict[str, dict[str, Resource]]] = {}
        self._hub = EventHub()
        self._listeners: list[Listener] = []
        self._source_watch: Watch | None = None
        self._drained = asyncio.Event()  # set when the view has taken in all its store published
        self._task: asyncio.Task[None] | None = None
        self.events = 0  # store events taken in (tests, diagnostics)

    # -- life ----------------------------------------------------------------------------

    async def start(self, store: Store) -> None:
        self.source = store
        watch = store.watch()  # every type, before listing: no change falls in between
        try:
            for rtype in REGISTRY:
                by_mesh: dict[str, dict[str, Resource]] = {}
                for res in (await store.list(rtype.name)).items:
                    by_mesh.setdefault(res.mesh, {})[res.name] = res
                self._items[rtype.name] = by_mesh
        except BaseException:
            watch.close()
            raise
        self._source_watch = watch
        self._task = asyncio.create_task(self._follow(watch), name="zone-view")
        log.info("zone_view_loaded", resources=sum(len(n) for m in self._items.values() for n in m.values()))

    async def _follow(self, watch: Watch) -> None:
        try:
            async for event in watch:
                if self._apply(event):
                    self.events += 1
                    self._hub.publish([event])
                if watch.queue.empty():
                    self._drained.set()
        finally:
            watch.close()
            self._source_watch = None  # stopped: nothing more will be taken in, nobody waits for it
            self._drained.set()

    def _apply(self, event: Event) -> bool:
        """Take a store event in; False when it is older than what the view holds (an event queued
        while the view was listing, which the listing already shows)."""
        res = event.resource
        names = self._items.setdefault(res.type, {}).setdefault(res.mesh, {})
        held = names.get(res.name)
        if event.kind is EventKind.DELETED:
            # A delete found by a re-list carries its key only (etcd compacted its last value away).
            if held is None or (res.creation_time is not None and _stamp(held) > _stamp(res)):
                return False
            del names[res.name]
            self._tell(held, None)
            return True
        if held is not None and _stamp(held) >= _stamp(res):
            return False
        names[res.name] = res
        self._tell(held, res)
        return True

    def _tell(self, before: Resource | None, after: Resource | None) -> None:
        for listener in self._listeners:
            try:
                listener(before, after)
            except Exception:  # a reader's bug must not stop the view (every later change would be lost)
                res = after or before
                assert res is not None
                log.exception("zone_view_listener_failed", resource=f"{res.type}/{res.mesh}/{res.name}")

    def follow(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(before, after)`` for every change the view takes in from now on, in the
        same step (the view already holds ``after``); returns what stops it. Taken with a read of
        the view's contents and no ``await`` in between, no change is missed or seen twice."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def caught_up(self) -> None:
        """Return once the view holds every change its store has published so far (a write through
        the store returns once the store's own watch has published it: read through the view next)."""
        while self.behind():
            self._drained.clear()
            await self._drained.wait()

    def behind(self) -> bool:
        """Has the store published changes the view has not taken in yet? (``idle()`` of readers.)"""
        return self._source_watch is not None and not self._source_watch.queue.empty()

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
        return self._items.get(type, {}).get(mesh, _EMPTY).get(name)

    def in_mesh(self, type: str, mesh: str) -> Mapping[str, Resource]:
        """A mesh's resources of ``type`` by name, as held now (read, do not keep: it follows the view)."""
        return self._items.get(type, {}).get(mesh, _EMPTY)

    def all(self, type: str) -> Iterator[Resource]:
        """Every resource of ``type``, in no particular order (``list`` sorts)."""
        for names in self._items.get(type, {}).values():
            yield from names.values()

    def count(self, type: str) -> int:
        return sum(len(names) for names in self._items.get(type, {}).values())

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        found = self.peek(type, name, mesh)
        if found is None:
            raise NotFound(ResourceKey(type, mesh, name))
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
        held = self.all(type) if mesh is None else iter(self.in_mesh(type, mesh).values())
        matching = sorted((r for r in held if filter.matches(r)), key=lambda r: (r.mesh, r.name))
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

    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        raise TypeError("ZoneView is read-only: write to the store")

    async def close(self) -> None:
        """Nothing to close: the store is not the view's (``stop`` ends the view)."""
