"""Envoy resource types, the ResourceSet generators fill, and protobuf wire helpers.

Resources are serialized once per generation into ``Any``-encoded bytes; a DiscoveryResponse
is then assembled by concatenating those bytes (protobuf fields are length-delimited), so a
push to a proxy costs a join, not a re-serialization.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order Envoy warms resources in: clusters (and their endpoints) before the listeners
# (and routes) that use them; secrets are requested once a cluster or listener names them.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
SHORT_NAMES = {CLUSTER: "clusters", ENDPOINT: "endpoints", LISTENER: "listeners", ROUTE: "routes", SECRET: "secrets"}
# Types Envoy subscribes to as a whole (wildcard); the others by resource name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


@dataclass
class ResourceSet:
    """What generation produces for one proxy: per type URL, resources by name. Read ``by_type``;
    change it through ``add``, ``put`` and ``remove`` only (a copy shares the dicts of its original
    until it changes them)."""

    by_type: dict[str, dict[str, Message]] = field(default_factory=lambda: {t: {} for t in PUSH_ORDER})
    # Names other resources refer to (EDS cluster -> endpoints, listener -> routes, clusters, secrets).
    required: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in PUSH_ORDER})
    _borrowed: set[str] = field(default_factory=set, repr=False, compare=False)  # dicts of the original
    # Kuma's "origin" of each resource: which generator made it (inbound, outbound, gateway,
    # secrets; mesh-proxy-patch for what a MeshProxyPatch added). ``add`` records ``origin``, which
    # the generation pipeline sets before each generator (generators/__init__.py).
    origin: str = ""
    origins: dict[str, dict[str, str]] = field(default_factory=lambda: {t: {} for t in PUSH_ORDER})
    _origins_borrowed: set[str] = field(default_factory=set, repr=False, compare=False)
    # Per proxy, never carried by ``copy``: the policies selecting it (type, name, version), and per
    # type URL and resource name the policies that changed that resource after generation
    # (MeshProxyPatch). A NACK is attributed with them (nacks.py).
    applied: frozenset[tuple[str, str, int]] = frozenset()
    changed_by: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def _bucket(self, type_url: str) -> dict[str, Message]:
        """The proxy's own dict of ``type_url`` (copied from the original's on first change)."""
        if type_url in self._borrowed:
            self.by_type[type_url] = dict(self.by_type[type_url])
            self._borrowed.discard(type_url)
        return self.by_type[type_url]

    def _origins(self, type_url: str) -> dict[str, str]:
        if type_url in self._origins_borrowed:
            self.origins[type_url] = dict(self.origins[type_url])
            self._origins_borrowed.discard(type_url)
        return self.origins[type_url]

    def add(self, type_url: str, name: str, resource: Message) -> None:
        existing = self.by_type[type_url].get(name)
        if existing is resource:
            return
        if existing is not None:
            raise ValueError(f"two {SHORT_NAMES[type_url]} resources named {name!r}")
        self._bucket(type_url)[name] = resource
        self._origins(type_url)[name] = self.origin

    def put(self, type_url: str, name: str, resource: Message, origin: str | None = None) -> None:
        """Set ``name`` to ``resource``, replacing what is there (``origin``: give it that origin)."""
        self._bucket(type_url)[name] = resource
        if origin is not None or name not in self.origins[type_url]:
            self._origins(type_url)[name] = self.origin if origin is None else origin

    def remove(self, type_url: str, name: str) -> None:
        if name in self.by_type[type_url]:
            del self._bucket(type_url)[name]
            self._origins(type_url).pop(name, None)

    def origin_of(self, type_url: str, name: str) -> str:
        return self.origins[type_url].get(name, "")

    def copy(self) -> ResourceSet:
        """Another set holding the same messages, sharing the original's dicts until it adds to
        them (replicas of a shape share all types but their listeners: SnapshotBuilder then
        recognizes a shared dict at once)."""
        return ResourceSet(
            dict(self.by_type),
            {t: set(names) for t, names in self.required.items()},
            set(self.by_type),
            self.origin,
            dict(self.origins),
            set(self.origins),
        )

    def require(self, type_url: str, name: str) -> None:
        self.required[type_url].add(name)

    def missing(self) -> list[str]:
        """References to resources the set does not contain (go-control-plane's consistent())."""
        return [
            f"{SHORT_NAMES[t]}/{name}" for t in PUSH_ORDER for name in sorted(self.required[t] - self.by_type[t].keys())
        ]

    def get(self, type_url: str, name: str) -> Message | None:
        return self.by_type[type_url].get(name)

    def items(self) -> Iterator[tuple[str, str, Message]]:
        for type_url in PUSH_ORDER:
            for name, resource in self.by_type[type_url].items():
                yield type_url, name, resource

    def names(self, type_url: str) -> list[str]:
        return sorted(self.by_type[type_url])


# --- protobuf wire encoding ------------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def length_delimited(field_number: int, payload: bytes) -> bytes:
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


@functools.cache
def _any_type_url(type_url: str) -> bytes:
    return length_delimited(1, type_url.encode())


def encode_any(type_url: str, message: Message) -> bytes:
    """``google.protobuf.Any{type_url, value}`` as bytes, deterministic."""
    value: bytes = message.SerializeToString(deterministic=True)
    return _any_type_url(type_url) + b"\x12" + varint(len(value)) + value  # field 2 (value), length-delimited


# DiscoveryResponse field numbers (envoy.service.discovery.v3).
RESPONSE_VERSION, RESPONSE_RESOURCES, RESPONSE_TYPE_URL, RESPONSE_NONCE = 1, 2, 4, 5


def encode_response(version: str, resources: Sequence[bytes], type_url: str, nonce: str | None) -> bytes:
    """A serialized DiscoveryResponse from pre-encoded ``Any`` resources (``nonce`` None: without
    it, for ``with_nonce`` to complete; a field may come in any order on the wire)."""
    parts = [length_delimited(RESPONSE_VERSION, version.encode())]
    parts.extend(length_delimited(RESPONSE_RESOURCES, item) for item in resources)
    parts.append(length_delimited(RESPONSE_TYPE_URL, type_url.encode()))
    if nonce is not None:
        parts.append(length_delimited(RESPONSE_NONCE, nonce.encode()))
    return b"".join(parts)


def with_nonce(body: bytes, nonce: str) -> bytes:
    """A response encoded by ``encode_response(..., nonce=None)``, completed with its nonce."""
    return body + length_delimited(RESPONSE_NONCE, nonce.encode())


# DeltaDiscoveryResponse and its Resource (envoy.service.discovery.v3): field numbers.
DELTA_SYSTEM_VERSION, DELTA_RESOURCES, DELTA_TYPE_URL, DELTA_NONCE, DELTA_REMOVED = 1, 2, 4, 5, 6
RESOURCE_VERSION, RESOURCE_BODY, RESOURCE_NAME = 1, 2, 3


_DELTA_RESOURCE_TAG = varint(DELTA_RESOURCES << 3 | 2)


def delta_head(name: str, version: str, body: bytes) -> bytes:
    """What comes before a resource's encoded ``Any`` in a DeltaDiscoveryResponse: the field's tag
    and length, then the Resource's name, version and its body's tag and length."""
    head = (
        length_delimited(RESOURCE_NAME, name.encode())
        + length_delimited(RESOURCE_VERSION, version.encode())
        + varint(RESOURCE_BODY << 3 | 2)
        + varint(len(body))
    )
    return _DELTA_RESOURCE_TAG + varint(len(head) + len(body)) + head


def encode_delta_response(
    system_version: str,
    resources: Sequence[tuple[str, str, bytes]],
    removed: Sequence[str],
    type_url: str,
    nonce: str,
    heads: Sequence[bytes] = (),
) -> bytes:
    """A serialized DeltaDiscoveryResponse from (name, version, encoded ``Any``) resources and
    the names removed: a join of pre-encoded bytes, as ``encode_response``. ``heads``: the
    resources' ``delta_head`` in the same order, when the snapshot has them (each encoded once
    per round and shared by the proxies holding the resource, ``TypeSnapshot.head``)."""
    parts = [length_delimited(DELTA_SYSTEM_VERSION, system_version.encode())]
    if not heads:
        heads = [delta_head(name, version, body) for name, version, body in resources]
    for head, (_, _, body) in zip(heads, resources, strict=True):
        # The Resource's head, then its body as is: the join below is the only copy of the body.
        parts += (head, body)
    parts.append(length_delimited(DELTA_TYPE_URL, type_url.encode()))
    parts.extend(length_delimited(DELTA_REMOVED, name.encode()) for name in removed)
    parts.append(length_delimited(DELTA_NONCE, nonce.encode()))
    return b"".join(parts)
