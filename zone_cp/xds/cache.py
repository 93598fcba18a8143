"""The snapshot cache: versioned, consistent per-proxy snapshots and the watches on them.

As in go-control-plane, the gRPC servicer knows only ``create_watch`` (returning a cancel
function); the reconciler only ``set_snapshot``. A version is a content hash, so it is
stable across control plane restarts: an Envoy that reconnects with the version it already
has gets nothing re-sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, Protocol

import structlog
from google.protobuf.message import Message
from zonemesh.zone_cp.xds.resources import (
    PUSH_ORDER,
    WILDCARD_TYPES,
    ResourceSet,
    encode_any,
    encode_response,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TypeSnapshot:
    version: str
    resources: Mapping[str, bytes]  # name -> encoded google.protobuf.Any
    _bodies: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    def response_body(self, type_url: str) -> bytes:
        """A DiscoveryResponse with all the resources, but for its nonce, encoded once: proxies
        share TypeSnapshots, so a push to the next proxy is this plus its nonce."""
        body = self._bodies.get(type_url)
        if body is None:
            body = self._bodies[type_url] = encode_response(self.version, self.ordered, type_url, None)
        return body

    @cached_property
    def ordered(self) -> tuple[bytes, ...]:
        """All resources by name: a wildcard response. Computed once; proxies share TypeSnapshots."""
        return tuple(self.resources[name] for name in sorted(self.resources))

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(self.resources)


def _version(resources: Mapping[str, bytes]) -> str:
    parts: list[bytes] = []
    for name in sorted(resources):
        parts += (name.encode(), b"\0", resources[name])
    return hashlib.blake2b(b"".join(parts), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy gets, per type URL. ``changed_at`` is when (time.monotonic) the
    store change that produced it was detected: the delivery metric counts from there."""

    types: Mapping[str, TypeSnapshot]
    changed_at: float | None = None
    # Where the config came from, to attribute a NACK (nacks.py): the policies selecting the proxy
    # as (type, name, version), and per type URL the policies that changed its resources after
    # generation (MeshProxyPatch), as "Type/name".
    applied: frozenset[tuple[str, str, int]] = frozenset()
    patched_by: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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
        return cls(types, changed_at, resources.applied, _patched_by(resources))

    def version(self, type_url: str) -> str:
        return self.types[type_url].version


def _patched_by(resources: ResourceSet) -> dict[str, tuple[str, ...]]:
    return {
        type_url: tuple(sorted({who for names in by_name.values() for who in names}))
        for type_url, by_name in resources.changed_by.items()
    }


class SnapshotBuilder:
    """Builds the snapshots of one round. Generation shares identical message objects between
    proxies (a service's clusters, routes, endpoints, secrets): each is serialized once, and a
    type whose resources are the very same objects as another proxy's gets the same
    ``TypeSnapshot`` (no re-hashing, and one copy in memory); replicas of a shape even share the
    very dicts (``ResourceSet.copy``), recognized without looking inside. Messages and dicts are
    held for the round so that their ids stay unique."""

    def __init__(self) -> None:
        self._encoded: dict[int, tuple[Message, bytes]] = {}
        self._typed: dict[tuple[str, tuple[str, ...], tuple[int, ...]], TypeSnapshot] = {}
        self._by_dict: dict[tuple[str, int], tuple[dict[str, Message], TypeSnapshot]] = {}

    def encode(self, type_url: str, message: Message) -> bytes:
        hit = self._encoded.get(id(message))
        if hit is None:
            hit = self._encoded[id(message)] = (message, encode_any(type_url, message))
        return hit[1]

    def _typed_snapshot(self, type_url: str, by_name: dict[str, Message]) -> TypeSnapshot:
        shared = self._by_dict.get((type_url, id(by_name)))
        if shared is not None:
            return shared[1]
        key = (type_url, tuple(by_name), tuple(map(id, by_name.values())))
        typed = self._typed.get(key)
        if typed is None:
            items = {name: self.encode(type_url, msg) for name, msg in by_name.items()}
            typed = self._typed[key] = TypeSnapshot(_version(items), items)
        self._by_dict[(type_url, id(by_name))] = (by_name, typed)
        return typed

    def build(self, resources: ResourceSet, changed_at: float | None = None) -> Snapshot:
        by_type = resources.by_type
        types = {t: self._typed_snapshot(t, by_type[t]) for t in PUSH_ORDER}
        return Snapshot(types, changed_at, resources.applied, _patched_by(resources))


# --- the watch protocol the servicer speaks ------------------------------------------------


# NamedTuples: one of each per request and response on every stream.
class WatchRequest(NamedTuple):
    node: str  # cache key of the proxy
    type_url: str
    version: str  # what the proxy has (acked), or what it refused (nacked): no resend of that
    names: frozenset[str] = frozenset()  # requested names; empty = all
    sent_names: frozenset[str] | None = None  # names the last response on this stream answered


class WatchResponse(NamedTuple):
    type_url: str
    version: str
    resources: Sequence[bytes]
    names: frozenset[str]
    changed_at: float | None
    body: bytes = b""  # when not empty: the encoded response without its nonce (resources included)


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


_PUSH_RANK = {type_url: rank for rank, type_url in enumerate(PUSH_ORDER)}


def _push_rank(item: tuple[int, _Watch]) -> int:
    return _PUSH_RANK.get(item[1].request.type_url, len(PUSH_ORDER))


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
        for watch_id, watch in sorted(watches.items(), key=_push_rank):
            if self._answer(watch.request, watch.respond, snapshot):
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
        if typed.version == request.version and (
            wildcard or request.sent_names is None or request.names == request.sent_names
        ):
            return False  # the proxy has it, and asks for nothing else
        # No per-response log line: with structlog's module-level proxy even a filtered debug
        # call binds a logger (~9 µs), once per response to every proxy.
        if wildcard or request.names == typed.names:  # all of the type: the shared, pre-encoded response
            body = typed.response_body(request.type_url)
            changed_at = snapshot.changed_at
            respond(WatchResponse(request.type_url, typed.version, typed.ordered, typed.names, changed_at, body))
        else:
            names = request.names
            payload = [typed.resources[name] for name in sorted(request.names) if name in typed.resources]
            respond(WatchResponse(request.type_url, typed.version, payload, names, snapshot.changed_at))
        return True
