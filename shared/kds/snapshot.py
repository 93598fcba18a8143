"""What one side offers to its peers: a live, hashed view of some resources of the store.

A Snapshot loads the selected resources once, then follows ``store.watch``. Bursts of
changes are coalesced for ``debounce`` seconds, then every subscriber is told which keys
changed; each subscriber (an Outbox, one per stream) diffs those keys against what its
peer has. Wire form and hash are computed once per change, not once per peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from zonemesh.proto import kds_pb2
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.kds.codec import key_str, to_wire
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import EventKind, Store
from zonemesh.shared.store.base import Event, Watch

log = structlog.get_logger(__name__)

# Turns a stored resource into what is sent (e.g. labels normalised), or None to leave it out.
Selector = Callable[[Resource], Resource | None]
Subscriber = Callable[[set[str]], None]


@dataclass(frozen=True)
class Item:
    key: str
    type: str
    labels: dict[str, str]
    wire: kds_pb2.Resource
    hash: str


class Snapshot:
    def __init__(self, store: Store, types: Iterable[str], select: Selector, debounce: float = 0.01) -> None:
        self.store = store
        self.types = list(types)
        self.select = select
        self.debounce = debounce
        self.items: dict[str, Item] = {}
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    async def start(self) -> None:
        watch = self.store.watch(self.types)  # before loading, so that no change falls in between
        for type in self.types:
            for res in (await self.store.list(type)).items:
                self._put(res)
        self.loaded.set()
        log.debug("kds_snapshot_loaded", types=len(self.types), items=len(self.items))
        self._task = asyncio.create_task(self._follow(watch), name="kds-snapshot")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    def _put(self, res: Resource) -> str:
        key = key_str(res.type, res.mesh, res.name)
        selected = self.select(res)
        if selected is None:
            self.items.pop(key, None)
        else:
            wire = to_wire(selected)
            self.items[key] = Item(key, selected.type, dict(selected.labels), wire, wire.hash)
        return key

    def _apply(self, event: Event) -> str:
        res = event.resource
        if event.kind is EventKind.DELETED:
            key = key_str(res.type, res.mesh, res.name)
            self.items.pop(key, None)
            return key
        return self._put(res)

    async def _follow(self, watch: Watch) -> None:
        queue = watch.queue
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                changed = {self._apply(event)}
                if self.debounce > 0:
                    await asyncio.sleep(self.debounce)
                while not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        break
                    changed.add(self._apply(more))
                for subscriber in list(self._subscribers):
                    subscriber(changed)
        finally:
            watch.close()
