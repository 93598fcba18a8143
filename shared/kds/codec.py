"""Resources on the KDS wire: the proto Resource, keys as strings, content hashes.

A resource's *hash* covers what a receiver stores (labels and spec), not the sender's store
version: versions are local to each store, hashes are equal on both sides when the content
is. Resumption compares hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from zonemesh.proto import kds_pb2
from zonemesh.shared.resources.codec import parse_json
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.resources.schema import ValidationError


def key_str(type: str, mesh: str, name: str) -> str:
    return f"{type}/{mesh}/{name}"


def parse_key(key: str) -> ResourceKey:
    type, mesh, name = key.split("/", 2)
    return ResourceKey(type, mesh, name)


def encode_spec(spec: Mapping[str, Any]) -> bytes:
    return json.dumps(spec, separators=(",", ":"), sort_keys=True).encode()


def content_hash(labels: Mapping[str, str], spec_json: bytes) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps(sorted(labels.items()), separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(spec_json)
    return digest.hexdigest()


def resource_hash(res: Resource, drop_labels: tuple[str, ...] = ()) -> str:
    labels = {k: v for k, v in res.labels.items() if k not in drop_labels} if drop_labels else res.labels
    return content_hash(labels, encode_spec(res.spec))


def to_wire(res: Resource) -> kds_pb2.Resource:
    spec = encode_spec(res.spec)
    return kds_pb2.Resource(
        type=res.type,
        mesh=res.mesh,
        name=res.name,
        version=res.version,
        labels=res.labels,
        spec=spec,
        hash=content_hash(res.labels, spec),
    )


def from_wire(msg: kds_pb2.Resource) -> Resource:
    """The resource a wire message carries. Raises ValueError when its spec is not JSON data within
    the bounds every document has (codec.parse_json: a spec nested ~1000 deep raised RecursionError,
    which no receiver caught)."""
    try:
        spec = parse_json(msg.spec, "spec") if msg.spec else {}
    except ValidationError as exc:
        raise ValueError("; ".join(f"{e.field}: {e.reason}" for e in exc.errors)) from None
    if not isinstance(spec, dict):
        raise ValueError(f"{msg.type} {msg.name!r}: spec must be a JSON object")
    return Resource(type=msg.type, name=msg.name, mesh=msg.mesh, spec=spec, labels=dict(msg.labels))
