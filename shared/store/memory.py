"""In-memory store: for tests and for simulations; loses everything on exit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from zonemesh.shared.resources.model import Resource, ResourceKey, now
from zonemesh.shared.store.base import (
    NO_FILTER,
    AlreadyExists,
    Conflict,
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


class MemoryStore(Store):
    def __init__(self) -> None:
        self._data: dict[ResourceKey, Resource] = {}
        self._hub = EventHub()

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        res = self._data.get(ResourceKey(type, mesh, name))
        if res is None:
            raise NotFound(ResourceKey(type, mesh, name))
        return res.copy()

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
            (
                r
                for k, r in self._data.items()
                if k.type == type and (mesh is None or k.mesh == mesh) and filter.matches(r)
            ),
            key=lambda r: (r.mesh, r.name),
        )
        start, end, next_offset = page_bounds(offset, size, len(matching))
        return ListResult([r.copy() for r in matching[start:end]], len(matching), next_offset)

    async def create(self, res: Resource) -> Resource:
        if res.key in self._data:
            raise AlreadyExists(res.key)
        stored = res.copy()
        stored.version = 1
        stored.creation_time = stored.modification_time = now()
        self._data[res.key] = stored
        self._hub.publish([Event(EventKind.CREATED, stored.copy())])
        return stored.copy()

    async def update(self, res: Resource) -> Resource:
        current = self._data.get(res.key)
        if current is None:
            raise NotFound(res.key)
        if current.version != res.version:
            raise Conflict(res.key, res.version, current.version)
        stored = res.copy()
        stored.version = current.version + 1
        stored.creation_time = current.creation_time
        stored.modification_time = now()
        self._data[res.key] = stored
        self._hub.publish([Event(EventKind.UPDATED, stored.copy())])
        return stored.copy()

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        key = ResourceKey(type, mesh, name)
        current = self._data.get(key)
        if current is None:
            raise NotFound(key)
        if version is not None and current.version != version:
            raise Conflict(key, version, current.version)
        del self._data[key]
        self._hub.publish([Event(EventKind.DELETED, current.copy())])
        return current

    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        upserts = list(upserts)
        for key, version in (expected or {}).items():
            current = self._data.get(key)
            if (current.version if current else 0) != version:
                raise Conflict(key, version, current.version if current else 0)
        events: list[Event] = []
        ts = now()
        for res in upserts:
            current = self._data.get(res.key)
            stored = res.copy()
            stored.version = current.version + 1 if current else 1
            stored.creation_time = current.creation_time if current else ts
            stored.modification_time = ts
            self._data[res.key] = stored
            events.append(Event(EventKind.UPDATED if current else EventKind.CREATED, stored.copy()))
        for key in deletes:
            gone = self._data.pop(key, None)
            if gone is not None:
                events.append(Event(EventKind.DELETED, gone))
        self._hub.publish(events)

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        return self._hub.subscribe(types)

    async def close(self) -> None:
        self._hub.close()
