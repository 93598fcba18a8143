"""The Store protocol: one small async interface, three interchangeable backends.

Backends: memory (tests), sqlite (embedded default), etcd (real deployments). All of them
pass the same contract suite (tests/unit/test_store_contract.py).

Semantics every backend keeps:
- ``create`` fails with AlreadyExists; it sets version 1 and both timestamps.
- ``update`` is optimistic: the resource's ``version`` must be the stored one, else Conflict;
  the stored version becomes version + 1.
- ``delete`` with a ``version`` checks it the same way.
- ``batch`` applies upserts and deletes in one transaction with no version check (KDS sync).
- ``list`` orders by (mesh, name); ``offset`` is an opaque token returned as ``next_offset``.
- ``watch`` yields an Event for every committed change, after the commit.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from zonemesh.shared.resources.model import Resource, ResourceKey

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The store cannot be reached (etcd down or cut off): nothing was read or written. The API
    answers 503; the control plane keeps serving what it holds in memory meanwhile."""


class NotFound(StoreError):
    def __init__(self, key: ResourceKey) -> None:
        self.key = key
        super().__init__(f"{key.type} {key.name!r}" + (f" in mesh {key.mesh!r}" if key.mesh else "") + " not found")


class AlreadyExists(StoreError):
    def __init__(self, key: ResourceKey) -> None:
        self.key = key
        super().__init__(
            f"{key.type} {key.name!r}" + (f" in mesh {key.mesh!r}" if key.mesh else "") + " already exists"
        )


class Conflict(StoreError):
    """The caller's version is not the stored one: someone else changed the resource."""

    def __init__(self, key: ResourceKey, expected: int, actual: int) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{key} was changed by someone else: you sent version {expected}, the stored version is {actual}; "
            "read it again and re-apply your change"
        )


class InvalidOffset(StoreError):
    pass


class EventKind(StrEnum):
    CREATED = "Created"
    UPDATED = "Updated"
    DELETED = "Deleted"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    resource: Resource  # for DELETED: the last stored state

    @property
    def key(self) -> ResourceKey:
        return self.resource.key


@dataclass
class ListResult:
    items: list[Resource]
    total: int
    next_offset: str | None


@dataclass(frozen=True)
class ListFilter:
    """What a list call selects. Labels must all match; ``predicate`` runs on each resource
    after the other filters (for type-specific filters such as Dataplane tags)."""

    labels: Mapping[str, str] | None = None
    name_contains: str | None = None
    predicate: Callable[[Resource], bool] | None = None
    # Names that start with it; with a mesh given, etcd reads only that key range (what global
    # holds from one zone, ``{zone}.*``, without reading every zone's resources).
    name_prefix: str | None = None

    def is_empty(self) -> bool:
        return not self.labels and not self.name_contains and self.predicate is None and not self.name_prefix

    def matches(self, res: Resource) -> bool:
        if self.labels and any(res.labels.get(k) != v for k, v in self.labels.items()):
            return False
        if self.name_contains and self.name_contains not in res.name:
            return False
        if self.name_prefix and not res.name.startswith(self.name_prefix):
            return False
        return self.predicate is None or self.predicate(res)


NO_FILTER = ListFilter()


class Watch:
    """An async iterator over change events, closed with ``close()`` or ``async with``."""

    def __init__(self, hub: EventHub, types: frozenset[str] | None) -> None:
        self._hub = hub
        self.types = types
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self._hub.unsubscribe(self)
        self.queue.put_nowait(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Fans committed events out to every open Watch (in this process)."""

    def __init__(self) -> None:
        self._watches: set[Watch] = set()

    def subscribe(self, types: Iterable[str] | None = None) -> Watch:
        watch = Watch(self, frozenset(types) if types is not None else None)
        self._watches.add(watch)
        return watch

    def unsubscribe(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for watch in self._watches:
                if watch.types is None or event.resource.type in watch.types:
                    watch.queue.put_nowait(event)

    def close(self) -> None:
        for watch in list(self._watches):
            watch.close()


class Store(ABC):
    """The async interface every backend implements."""

    @abstractmethod
    async def get(self, type: str, name: str, mesh: str = "") -> Resource: ...

    @abstractmethod
    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        """List resources of a type; ``mesh=None`` lists across all meshes, ``size=None`` returns all."""

    @abstractmethod
    async def create(self, res: Resource) -> Resource: ...

    @abstractmethod
    async def update(self, res: Resource) -> Resource: ...

    @abstractmethod
    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        """Delete and return the last stored state."""

    @abstractmethod
    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        """Apply upserts and deletes atomically. Missing deletes are ignored. Without version checks,
        but for the keys in ``expected`` (key -> the version the caller read, 0: absent): if one is
        stored at another version, ``Conflict`` and nothing of the batch is applied (etcd: nothing
        of that key's chunk of ``MAX_TXN_OPS``)."""

    @abstractmethod
    def watch(self, types: Iterable[str] | None = None) -> Watch: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def find(self, type: str, name: str, mesh: str = "") -> Resource | None:
        try:
            return await self.get(type, name, mesh)
        except NotFound:
            return None


def page_bounds(offset: str | None, size: int | None, total: int) -> tuple[int, int, str | None]:
    """Turn an integer offset token and a size into a slice and the next token.

    The token is ASCII digits (int() would also take "+5", "1_0" or "٣"); one past the end gives an
    empty page. Clamping matters beyond the slice: SQLite's OFFSET takes at most a 64-bit integer,
    and "?offset=99999999999999999999" used to reach it."""
    start = 0
    if offset:
        if not (offset.isascii() and offset.isdigit()):
            raise InvalidOffset(f"invalid offset {offset!r}: use the `next` link of the previous page")
        try:
            start = int(offset)
        except ValueError:  # more than 4300 digits
            raise InvalidOffset("invalid offset: use the `next` link of the previous page") from None
    start = min(start, total)
    if size is None:
        return start, total, None
    end = start + size
    return start, end, str(end) if end < total else None
