"""Kuma's DataSource: where a certificate or a key comes from.

Exactly one of ``secret`` (the name of a Secret in the resource's mesh), ``inline`` (base64
bytes), ``inlineString`` (text, e.g. PEM) or ``file`` (a path on the proxy's host; Kuma keeps it,
deprecated). The schema says which DataSources hold a private key (``KEY_SOURCE``): those are
never served back by the API (``shared/resources/redaction.py``) and reach Envoy over SDS only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from zonemesh.shared.resources.schema import Errors, List, Map, Name, Node, Obj, Str, join
from zonemesh.shared.resources.types.common import exactly_one

SOURCES = ("secret", "inline", "inlineString", "file")


def _inline_is_base64(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    inline = value.get("inline")
    if not isinstance(inline, str):
        return
    try:
        base64.b64decode(inline, validate=True)
    except (binascii.Error, ValueError):
        errors.add(f"{path}.inline", "must be base64-encoded (use inlineString for PEM text)")


@dataclass
class DataSource(Obj):
    """A DataSource object; ``private_key``: what it holds includes a private key."""

    private_key: bool = False


def data_source(*, private_key: bool = False) -> DataSource:
    return DataSource(
        {"secret": Name, "inline": Str(min_len=1), "inlineString": Str(min_len=1), "file": Str(min_len=1)},
        checks=(exactly_one(*SOURCES), _inline_is_base64),
        private_key=private_key,
    )


DATA_SOURCE = data_source()  # a certificate or a CA
KEY_SOURCE = data_source(private_key=True)  # a private key, or a certificate chain with its key


def data_sources(node: Node, value: Any, path: str = "") -> Iterator[tuple[str, DataSource, dict[str, Any]]]:
    """Every DataSource in ``value`` (a document of schema ``node``): (path, its node, the object).

    Walks the schema alongside the document, so only what the schema declares a DataSource is
    found; the objects are those of ``value`` itself (change them to change the document).
    """
    if isinstance(node, DataSource):
        if isinstance(value, dict):
            yield path, node, value
    elif isinstance(node, Obj):
        if isinstance(value, dict):
            for key, child in node.fields.items():
                if key in value:
                    yield from data_sources(child, value[key], join(path, key))
    elif isinstance(node, List):
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from data_sources(node.item, item, f"{path}[{i}]")
    elif isinstance(node, Map) and isinstance(value, dict):
        for key, item in value.items():
            yield from data_sources(node.value, item, f'{path}["{key}"]')


def has_data_sources(node: Node) -> bool:
    """Does the schema declare any DataSource (else a document of it needs no walk)?"""
    if isinstance(node, DataSource):
        return True
    if isinstance(node, Obj):
        return any(has_data_sources(child) for child in node.fields.values())
    if isinstance(node, List):
        return has_data_sources(node.item)
    if isinstance(node, Map):
        return has_data_sources(node.value)
    return False
