"""Private keys written inline in a resource are never served back by the API.

On read (GET of an item, lists), every DataSource the schema marks as holding a private key
(``KEY_SOURCE``: ExternalService ``networking.tls.clientKey``, MeshGateway listener
``tls.certificates``, a Mesh's provided CA ``key``) that carries the key itself (``inline`` or
``inlineString``) is replaced by ``{"inlineString": "<redacted sha256:…>"}``: the marker names
the key by the first 16 hex digits of the SHA-256 of its bytes, which tells keys apart and
gives nothing of them away. ``secret`` and ``file`` references are shown as they are.

On write, a DataSource holding a marker stands for the key of the stored resource (same type,
mesh and name) with that digest, wherever it was in that resource: ``zmctl get -o yaml`` output
applied back keeps the keys, even with listeners reordered. A marker matching no stored key is
refused with a field error.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import REGISTRY, ResourceType
from zonemesh.shared.resources.schema import FieldError, ValidationError, join
from zonemesh.shared.resources.types.datasource import DataSource, data_sources, has_data_sources

MARKER_PREFIX = "<redacted sha256:"
_MARKER = re.compile(r"<redacted sha256:([0-9a-f]{16})>")
_WITH_DATA_SOURCES: dict[str, bool] = {}


def marker(digest: str) -> str:
    return f"{MARKER_PREFIX}{digest}>"


def _has_sources(rtype: ResourceType) -> bool:
    known = _WITH_DATA_SOURCES.get(rtype.name)
    if known is None:
        known = _WITH_DATA_SOURCES[rtype.name] = has_data_sources(rtype.spec)
    return known


def _sources(rtype: ResourceType, spec: dict[str, Any]) -> Iterator[tuple[str, DataSource, dict[str, Any]]]:
    return data_sources(rtype.spec, spec, "spec" if rtype.wrapped else "")


def _key_bytes(source: dict[str, Any]) -> bytes | None:
    """The key a DataSource carries itself (None for a secret or file reference)."""
    if isinstance(source.get("inlineString"), str):
        return str(source["inlineString"]).encode()
    if isinstance(source.get("inline"), str):
        try:
            return base64.b64decode(source["inline"], validate=True)
        except (binascii.Error, ValueError):
            return str(source["inline"]).encode()
    return None


def digest(source: dict[str, Any]) -> str | None:
    data = _key_bytes(source)
    return hashlib.sha256(data).hexdigest()[:16] if data is not None else None


def redact(res: Resource) -> Resource:
    """``res`` as the API serves it: inline private keys replaced by their markers."""
    rtype = REGISTRY.get(res.type)
    if not _has_sources(rtype):
        return res
    found = [(path, source) for path, node, source in _sources(rtype, res.spec) if node.private_key]
    if not any(_key_bytes(source) is not None for _, source in found):
        return res
    spec = copy.deepcopy(res.spec)
    for _, node, source in _sources(rtype, spec):
        hidden = digest(source) if node.private_key else None
        if hidden is not None:
            source.clear()
            source["inlineString"] = marker(hidden)
    return dataclasses.replace(res, spec=spec)


def has_markers(res: Resource) -> bool:
    """Does ``res`` carry a redaction marker (then ``restore`` needs the stored resource)?"""
    rtype = REGISTRY.get(res.type)
    return _has_sources(rtype) and any(_is_marker(source) for _, _, source in _sources(rtype, res.spec))


def restore(res: Resource, stored: Resource | None) -> Resource:
    """``res`` (a document being applied) with each marker replaced by the stored key it names.
    Raises ValidationError naming every marker that names no key of ``stored``."""
    rtype = REGISTRY.get(res.type)
    if not has_markers(res):
        return res
    keys: dict[str, dict[str, Any]] = {}
    if stored is not None:
        for _, node, source in _sources(rtype, stored.spec):
            hidden = digest(source) if node.private_key else None
            if hidden is not None:
                keys.setdefault(hidden, source)
    spec = copy.deepcopy(res.spec)
    errors = []
    for path, node, source in _sources(rtype, spec):
        if not _is_marker(source):
            continue
        match = _MARKER.fullmatch(str(source["inlineString"]))
        original = keys.get(match.group(1)) if match is not None and node.private_key else None
        if original is None:
            reason = (
                f"the stored {res.type} {res.name!r} holds no key with this digest"
                if node.private_key
                else "only a private key field can take one"
            )
            errors.append(
                FieldError(
                    join(path, "inlineString"),
                    f"is a redaction marker, not data ({reason}): give the data (inline, inlineString) "
                    "or a Secret (secret: NAME)",
                )
            )
            continue
        source.clear()
        source.update(copy.deepcopy(original))
    if errors:
        raise ValidationError(errors)
    return dataclasses.replace(res, spec=spec)


def _is_marker(source: dict[str, Any]) -> bool:
    text = source.get("inlineString")
    return isinstance(text, str) and text.startswith(MARKER_PREFIX)
