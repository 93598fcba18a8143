"""The snapshot cache: versioned, consistent per-proxy snapshots and the watches on them.

As in go-control-plane, the gRPC servicer knows only ``create_watch`` (returning a cancel
function); the reconciler only ``set_snapshot``. A version is a content hash, so it is
stable across control plane restarts: an Envoy that reconnects with the version it already
has gets nothing re-sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from google.protobuf.message import Message
from zonemesh.zone_cp.xds.resources import PUSH_ORDER, SHORT_NAMES, WILDCARD_TYPES, ResourceSet, encode_any

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TypeSnapshot:
    version: str
    resources: Mapping[str, bytes]  # name -> encoded google.protobuf.Any


def _version(resources: Mapping[str, bytes]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(resources):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(resources[name])
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy gets, per type URL. ``changed_at`` is when (time.monotonic) the
    store change that produced it was detected: the delivery metric counts from there."""

    types: Mapping[str, TypeSnapshot]
    changed_at: float | None = None

    @classmethod
    def from_resources(
        cls,
        resources: ResourceSet,
        *,
        changed_at: float | None = None,
        encoded: Callable[[str, Message], bytes] = encode_any,
    ) -> Snapshot:
        """Serialize a ResourceSet. ``encoded`` may memoize: generation shares identical
        message objects between proxies, so they are serialized once."""
        types: dict[str, TypeSnapshot] = {}
        for type_url in PUSH_ORDER:
            items = {name: encoded(type_url, msg) for name, msg in resources.by_type[type_url].items()}
            types[type_url] = TypeSnapshot(_version(items), items)
        return cls(types, changed_at)

    def version(self, type_url: str) -> str:
        return self.types[type_url].version


# --- the watch protocol the servicer speaks ------------------------------------------------


@dataclass(frozen=True)
class WatchRequest:
    node: str  # cache key of the proxy
    type_url: str
    version: str  # what the proxy has (acked), or what it refused (nacked): no resend of that
    names: frozenset[str] = frozenset()  # requested names; empty = all
    sent_names: frozenset[str] | None = None  # names the last response on this stream answered


@dataclass(frozen=True)
class WatchResponse:
    type_url: str
    version: str
    resources: list[bytes]
    names: frozenset[str]
    changed_at: float | None


Respond = Callable[[WatchResponse], None]
Cancel = Callable[[], None]


class ConfigWatcher(Protocol):
    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """Call ``respond`` (now, or when a newer snapshot is set) once; cancel to stop waiting."""
        ...


def _noop() -> None:
    return None


@dataclass
class _Watch:
    request: WatchRequest
    respond: Respond


@dataclass
class SnapshotCache:
    """Snapshots by node key, plus open watches. Single event loop: no locking."""

    _snapshots: dict[str, Snapshot] = field(default_factory=dict)
    _watches: dict[str, dict[int, _Watch]] = field(default_factory=dict)
    _next_id: int = 0

    def set_snapshot(self, node: str, snapshot: Snapshot) -> None:
        self._snapshots[node] = snapshot
        watches = self._watches.get(node)
        if not watches:
            return
        # Answer in push order (clusters before listeners) so Envoy can warm them.
        for type_url in PUSH_ORDER:
            for watch_id, watch in list(watches.items()):
                if watch.request.type_url == type_url and self._answer(watch.request, watch.respond, snapshot):
                    del watches[watch_id]

    def clear_snapshot(self, node: str) -> None:
        self._snapshots.pop(node, None)

    def snapshot(self, node: str) -> Snapshot | None:
        return self._snapshots.get(node)

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        snapshot = self._snapshots.get(request.node)
        if snapshot is not None and self._answer(request, respond, snapshot):
            return _noop
        self._next_id += 1
        watch_id = self._next_id
        self._watches.setdefault(request.node, {})[watch_id] = _Watch(request, respond)

        def cancel() -> None:
            watches = self._watches.get(request.node)
            if watches is not None:
                watches.pop(watch_id, None)
                if not watches:
                    del self._watches[request.node]

        return cancel

    @staticmethod
    def _answer(request: WatchRequest, respond: Respond, snapshot: Snapshot) -> bool:
        """Respond when the proxy's version is not the snapshot's, or it now asks for other names."""
        typed = snapshot.types.get(request.type_url)
        if typed is None:
            return False
        wildcard = request.type_url in WILDCARD_TYPES or not request.names
        names_changed = not wildcard and request.sent_names is not None and request.names != request.sent_names
        if typed.version == request.version and not names_changed:
            return False
        if wildcard:
            names = frozenset(typed.resources)
            payload = [typed.resources[name] for name in sorted(typed.resources)]
        else:
            names = request.names
            payload = [typed.resources[name] for name in sorted(request.names) if name in typed.resources]
        log.debug("xds_respond", node=request.node, type=SHORT_NAMES.get(request.type_url), version=typed.version)
        respond(WatchResponse(request.type_url, typed.version, payload, names, snapshot.changed_at))
        return True
