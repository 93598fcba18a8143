"""The snapshot cache: versioned, consistent per-proxy snapshots and the watches on them.

As in go-control-plane, the gRPC servicer knows only ``create_watch`` (State of the World) and
``create_delta_watch`` (incremental), each returning a cancel function; the reconciler only
``set_snapshot``. Versions are content hashes, so they are stable across control plane restarts:
an Envoy that reconnects with the versions it already has gets nothing re-sent.

Each resource has its own version (a hash of its encoded bytes, computed once per round per
message and shared by every proxy holding it); a type's version is a hash of its resources'
names and versions. For delta xDS the cache answers a watch with the difference between the
proxy's snapshot and what the proxy has (go-control-plane's ``createDeltaResponse``): the
resources whose version differs, and the names it has that are gone.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

import structlog
from google.protobuf.message import Message
from zonemesh.zone_cp.xds.resources import (
    PUSH_ORDER,
    WILDCARD_TYPES,
    ResourceSet,
    delta_head,
    encode_any,
    encode_response,
)

log = structlog.get_logger(__name__)


def resource_version(encoded: bytes) -> str:
    """The version of one resource (its encoded ``Any``) in delta xDS: a hash of its bytes."""
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()


class TypeSnapshot:
    """One type of a proxy's snapshot: its resources (name -> encoded ``google.protobuf.Any``)
    and a version derived from theirs. Proxies share them (``SnapshotBuilder``), and one is made
    per proxy per round for what is its own (its listeners): a plain class with slots, what it
    derives computed on first use, costs a fraction of a frozen dataclass with factories."""

    __slots__ = ("_bodies", "_heads", "_names", "_ordered", "_versions", "resources", "version")

    version: str
    resources: Mapping[str, bytes]

    def __init__(
        self,
        version: str,
        resources: Mapping[str, bytes],
        versions: Mapping[str, str] | None = None,
        heads: dict[tuple[str, str], bytes] | None = None,
    ) -> None:
        self.version = version
        self.resources = resources
        # name -> resource_version(bytes), when whoever built this already knows them (SnapshotBuilder)
        self._versions = versions
        # (name, version) -> delta_head: shared by the TypeSnapshots of one round (SnapshotBuilder)
        self._heads = {} if heads is None else heads
        self._bodies: dict[str, bytes] | None = None
        self._ordered: tuple[bytes, ...] | None = None
        self._names: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        resources: Mapping[str, bytes],
        versions: Mapping[str, str] | None = None,
        heads: dict[tuple[str, str], bytes] | None = None,
    ) -> TypeSnapshot:
        """The snapshot of ``resources``, its version derived from theirs (``versions``, if known)."""
        if versions is None:
            versions = {name: resource_version(data) for name, data in resources.items()}
        return cls(_version(versions), resources, versions, heads)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TypeSnapshot):
            return NotImplemented
        return self.version == other.version and self.resources == other.resources

    __hash__ = None  # type: ignore[assignment]  # equal by content, and the content is a dict

    def __repr__(self) -> str:
        return f"TypeSnapshot(version={self.version!r}, resources={self.resources!r})"

    def head(self, name: str) -> bytes:
        """What precedes resource ``name`` in a delta response (``resources.delta_head``): encoded
        once per round for every proxy holding that resource at that version."""
        key = (name, self.versions[name])
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = delta_head(name, key[1], self.resources[name])
        return head

    @property
    def versions(self) -> Mapping[str, str]:
        """Per resource name, its version (delta xDS). Computed once; proxies share TypeSnapshots."""
        versions = self._versions
        if versions is None:
            versions = self._versions = {name: resource_version(data) for name, data in self.resources.items()}
        return versions

    def response_body(self, type_url: str) -> bytes:
        """A DiscoveryResponse with all the resources, but for its nonce, encoded once: proxies
        share TypeSnapshots, so a push to the next proxy is this plus its nonce."""
        bodies = self._bodies
        if bodies is None:
            bodies = self._bodies = {}
        body = bodies.get(type_url)
        if body is None:
            body = bodies[type_url] = encode_response(self.version, self.ordered, type_url, None)
        return body

    @property
    def ordered(self) -> tuple[bytes, ...]:
        """All resources by name: a wildcard response. Computed once; proxies share TypeSnapshots."""
        ordered = self._ordered
        if ordered is None:
            ordered = self._ordered = tuple(self.resources[name] for name in sorted(self.resources))
        return ordered

    @property
    def names(self) -> frozenset[str]:
        names = self._names
        if names is None:
            names = self._names = frozenset(self.resources)
        return names


def _version(versions: Mapping[str, str]) -> str:
    """A type's version from its resources' (hashing their hashes, not their bytes again)."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(versions):
        digest.update(f"{name}\0{versions[name]}\0".encode())
    return digest.hexdigest()


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
            types[type_url] = TypeSnapshot.of(items)
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
    held for the round so that their ids stay unique. ``known``: messages whose encoding is known
    already (parsed from bytes an earlier round made: ``MeshContext.encoded``), not serialized again.
    Across rounds, a proxy whose type holds exactly what it held keeps its ``TypeSnapshot`` (``build``)."""

    def __init__(self, known: Mapping[int, tuple[Message, bytes, str]] | None = None) -> None:
        self._encoded: dict[int, tuple[Message, bytes, str]] = {}  # id -> (message, Any bytes, version)
        self._known = known if known is not None else {}
        self._typed: dict[tuple[str, tuple[str, ...], tuple[int, ...]], TypeSnapshot] = {}
        self._by_dict: dict[tuple[str, int], tuple[dict[str, Message], TypeSnapshot]] = {}
        self.encodes = 0  # messages serialized this round (bench/xds_generation.py, tests)
        self._heads: dict[tuple[str, str], bytes] = {}  # delta heads, shared by this round's TypeSnapshots

    def _encoded_once(self, type_url: str, message: Message) -> tuple[Message, bytes, str]:
        hit = self._encoded.get(id(message))
        if hit is None:
            hit = self._known.get(id(message))
            if hit is None or hit[0] is not message:
                data = encode_any(type_url, message)
                self.encodes += 1
                hit = (message, data, resource_version(data))
            self._encoded[id(message)] = hit
        return hit

    def encode(self, type_url: str, message: Message) -> bytes:
        return self._encoded_once(type_url, message)[1]

    def encoded(self, type_url: str, message: Message) -> tuple[bytes, str]:
        """``message``'s encoded ``Any`` and its version (serialized once per round)."""
        _, data, version = self._encoded_once(type_url, message)
        return data, version

    def _typed_snapshot(self, type_url: str, by_name: dict[str, Message], kept: TypeSnapshot | None) -> TypeSnapshot:
        shared = self._by_dict.get((type_url, id(by_name)))
        if shared is not None:
            return shared[1]
        names = tuple(by_name)
        key = (type_url, names, tuple(map(id, by_name.values())))
        typed = self._typed.get(key)
        if typed is None:
            if kept is not None and self._holds(kept, type_url, names, by_name):
                # What the proxy had: the same object, so no version to hash again, nothing new to
                # hold, and set_snapshot sees at once that nothing of this type is to be sent.
                # Its delta heads are looked up in this round's (those of its round may go).
                kept._heads = self._heads
                typed = kept
            else:
                items, versions = {}, {}
                for name, msg in by_name.items():
                    _, items[name], versions[name] = self._encoded_once(type_url, msg)
                typed = TypeSnapshot.of(items, versions, self._heads)
            self._typed[key] = typed
        self._by_dict[(type_url, id(by_name))] = (by_name, typed)
        return typed

    def _holds(self, kept: TypeSnapshot, type_url: str, names: tuple[str, ...], by_name: dict[str, Message]) -> bool:
        """Whether ``kept`` holds exactly what ``by_name`` (whose keys are ``names``) encodes to:
        the same names in the same order, each with the same bytes (so the same version)."""
        resources = kept.resources
        if len(resources) != len(names) or tuple(resources) != names:
            return False
        encoded = self._encoded
        for msg, data in zip(by_name.values(), resources.values(), strict=True):
            hit = encoded.get(id(msg))
            if hit is None:
                hit = self._encoded_once(type_url, msg)
            if hit[1] != data:
                return False
        return True

    def carried(
        self,
        previous: Snapshot,
        shape: ResourceSet,
        own: Iterable[str],
        applied: frozenset[tuple[str, str, int]],
        changed_at: float | None = None,
    ) -> Snapshot:
        """A proxy's snapshot when what is its own has not changed (``generators.MadeFrom``): its
        ``own`` types as in ``previous``, its other types its shape's (``shape``: this round's, the
        very dicts its replicas' copies share, so the same TypeSnapshots as theirs, or its previous
        ones where they hold the same). Nothing of it is generated, copied or compared again."""
        types: dict[str, TypeSnapshot] = {}
        for type_url in PUSH_ORDER:
            if type_url in own:
                typed = previous.types[type_url]
                typed._heads = self._heads  # as a kept one (_typed_snapshot): this round's heads
            else:
                typed = self._typed_snapshot(type_url, shape.by_type[type_url], previous.types.get(type_url))
            types[type_url] = typed
        return Snapshot(types, changed_at, applied, {})

    def build(
        self, resources: ResourceSet, changed_at: float | None = None, previous: Snapshot | None = None
    ) -> Snapshot:
        """The snapshot of ``resources``. ``previous``: the proxy's current snapshot, whose
        TypeSnapshots are kept for the types whose resources are exactly what they were."""
        by_type = resources.by_type
        kept = previous.types if previous is not None else {}
        types = {t: self._typed_snapshot(t, by_type[t], kept.get(t)) for t in PUSH_ORDER}
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


class DeltaWatchRequest(NamedTuple):
    """What a delta (incremental) xDS stream has of one type, and wants."""

    node: str  # cache key of the proxy
    type_url: str
    wildcard: bool  # all resources of the type (LDS, CDS), plus ``names``
    names: frozenset[str]  # subscribed by name
    # name -> version the proxy has (ACKed, sent and not answered yet, or refused): nothing is
    # re-sent at that version. Read when the watch is answered; the stream replaces the watch
    # whenever it changes this otherwise.
    known: Mapping[str, str]
    force: frozenset[str] = frozenset()  # send these even when unchanged (clusters warming on them)
    reply_if_empty: bool = False  # answer at once even with nothing to send (a fresh wildcard waits for one)


class DeltaWatchResponse(NamedTuple):
    type_url: str
    system_version: str  # the type's version in the snapshot the diff was taken from
    resources: Sequence[tuple[str, str, bytes]]  # (name, version, encoded Any): new or changed
    removed: Sequence[str]  # names the proxy has that are no longer there (or no longer subscribed)
    changed_at: float | None
    heads: Sequence[bytes] = ()  # per resource, its delta_head (TypeSnapshot.head): encoded once per round


Respond = Callable[[WatchResponse], None]
DeltaRespond = Callable[[DeltaWatchResponse], None]
Cancel = Callable[[], None]


class ConfigWatcher(Protocol):
    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """Call ``respond`` (now, or when a newer snapshot is set) once; cancel to stop waiting."""
        ...

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        """Call ``respond`` once, as soon as the proxy's snapshot differs from what it has
        (``request.known``), or at once when ``request.reply_if_empty``; cancel to stop waiting."""
        ...


def _noop() -> None:
    return None


def _cancel(by_node: dict[str, dict[int, _W]], node: str, watch_id: int) -> None:
    """Stop watch ``watch_id`` of ``node``. A partial of this is the cancel function a watch
    returns: smaller than a closure (with its cells), and there is one per open watch."""
    watches = by_node.get(node)
    if watches is not None:
        watches.pop(watch_id, None)
        if not watches:
            del by_node[node]


# One per open watch, every type of every stream: slots.
@dataclass(slots=True)
class _Watch:
    request: WatchRequest
    respond: Respond


@dataclass(slots=True)
class _DeltaWatch:
    request: DeltaWatchRequest
    respond: DeltaRespond


_W = TypeVar("_W", "_Watch", "_DeltaWatch")

_PUSH_RANK = {type_url: rank for rank, type_url in enumerate(PUSH_ORDER)}


def _push_rank(item: tuple[int, _Watch | _DeltaWatch]) -> int:
    return _PUSH_RANK.get(item[1].request.type_url, len(PUSH_ORDER))


def _changed(
    watches: dict[int, _W], before: Mapping[str, TypeSnapshot], after: Mapping[str, TypeSnapshot]
) -> list[tuple[int, _W]]:
    """The open watches on the types whose version differs from ``before``'s. An open watch was
    answered "nothing to send" against the previous snapshot (when it was opened, or when that
    snapshot was set): for a type whose version (a hash of its resources' names and versions)
    did not change, the answer is the same. A mesh-wide change of routes thus looks at each
    proxy's routes only, not at its clusters, endpoints, listeners and secrets too; a type whose
    TypeSnapshot the proxy kept (SnapshotBuilder) is passed over without even that comparison."""
    changed = []
    for item in watches.items():
        type_url = item[1].request.type_url
        old = before.get(type_url)
        if old is not None:
            new = after.get(type_url)
            if new is old or (new is not None and new.version == old.version):
                continue
        changed.append(item)
    return changed


@dataclass
class SnapshotCache:
    """Snapshots by node key, plus open watches. Single event loop: no locking."""

    _snapshots: dict[str, Snapshot] = field(default_factory=dict)
    _watches: dict[str, dict[int, _Watch]] = field(default_factory=dict)
    _delta_watches: dict[str, dict[int, _DeltaWatch]] = field(default_factory=dict)
    _next_id: int = 0

    def set_snapshot(self, node: str, snapshot: Snapshot) -> None:
        previous = self._snapshots.get(node)
        self._snapshots[node] = snapshot
        # Only the watches on types whose version changed are looked at (``_changed``).
        kept = previous.types if previous is not None else {}
        types = snapshot.types
        watches = self._watches.get(node)
        if watches:
            # Answer in push order (clusters before listeners) so Envoy can warm them.
            for watch_id, watch in sorted(_changed(watches, kept, types), key=_push_rank):
                if self._answer(watch.request, watch.respond, snapshot):
                    del watches[watch_id]
        delta = self._delta_watches.get(node)
        if delta:
            # A response may make its stream replace another of its watches (the endpoints a
            # cluster update leaves warming): answer only those still open when their turn comes.
            changed = _changed(delta, kept, types)
            if len(changed) > 1:
                changed.sort(key=_push_rank)
            for delta_id, delta_watch in changed:
                if delta.get(delta_id) is delta_watch and self._answer_delta(
                    delta_watch.request, delta_watch.respond, snapshot
                ):
                    delta.pop(delta_id, None)
            if not delta and self._delta_watches.get(node) is delta:
                del self._delta_watches[node]

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
        return functools.partial(_cancel, self._watches, request.node, watch_id)

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        snapshot = self._snapshots.get(request.node)
        if snapshot is not None and self._answer_delta(request, respond, snapshot):
            return _noop
        self._next_id += 1
        watch_id = self._next_id
        self._delta_watches.setdefault(request.node, {})[watch_id] = _DeltaWatch(request, respond)
        return functools.partial(_cancel, self._delta_watches, request.node, watch_id)

    @staticmethod
    def _answer_delta(request: DeltaWatchRequest, respond: DeltaRespond, snapshot: Snapshot) -> bool:
        """Respond with what differs between the snapshot and what the proxy has, if anything does."""
        typed = snapshot.types.get(request.type_url)
        if typed is None:
            return False
        resources, versions, known, force = typed.resources, typed.versions, request.known, request.force
        # A wildcard subscription wants every resource (its by-name subscriptions are among them).
        wanted: Iterable[str] = resources if request.wildcard else request.names
        changed = []
        held = 0  # of the wanted resources, how many the proxy has (at whatever version)
        for name in wanted:
            data = resources.get(name)
            if data is not None:
                version = versions[name]
                has = known.get(name)
                if has is not None:
                    held += 1
                if has != version or name in force:
                    changed.append((name, version, data))
        # What it has that is gone, or that it no longer subscribes to (go-control-plane does the
        # same): none when all it has is among the wanted resources (an ACK's new watch).
        removed = (
            [name for name in known if name not in resources or not (request.wildcard or name in request.names)]
            if len(known) > held
            else []
        )
        if not changed and not removed and not request.reply_if_empty:
            return False
        heads = [typed.head(name) for name, _, _ in changed]
        respond(DeltaWatchResponse(request.type_url, typed.version, changed, removed, snapshot.changed_at, heads))
        return True

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
