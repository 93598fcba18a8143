"""Envoy messages from and to their JSON form (protobuf's JSON mapping, as Envoy's own config
files and Kuma's MeshProxyPatch values write them).

A value may hold ``google.protobuf.Any`` fields (``typedConfig: {"@type": ...}``): their message
types must be known to protobuf's default pool, which holds a type only once its ``_pb2`` module
is imported. ``parse`` imports, for every ``@type`` in the document, the modules of that type's
package (``envoy.extensions.filters.http.router.v3`` -> ``envoy/extensions/filters/http/router/v3/*_pb2.py``
of the xds-protos distribution) first, so any Envoy extension can be named without zonemesh
importing all of them up front.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator
from typing import Any, TypeVar

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

TYPE_URL_PREFIX = "type.googleapis.com/"


class ProtoJsonError(ValueError):
    """A document is not a valid JSON form of the message it should be; the message says why."""


@functools.cache
def _import_package(package: str) -> None:
    """Import every ``_pb2`` module of a proto package (no-op for a package that is not there)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{module.name}")


def message_class(full_name: str) -> type[Message] | None:
    """The Python class of a message type (``envoy.config.cluster.v3.Cluster``), importing its
    package's modules when needed; None when no installed module defines it."""
    for attempt in range(2):
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
            found: type[Message] = message_factory.GetMessageClass(descriptor)
            return found
        except KeyError:
            if attempt == 0:
                _import_package(full_name.rpartition(".")[0])
    return None


def _type_urls(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "@type" and isinstance(value, str):
                yield value
            else:
                yield from _type_urls(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _type_urls(item)


def _reason(exc: Exception) -> str:
    # protobuf lists every field of the message after an unknown one: keep the sentence only.
    return str(exc).split("\n Available Fields")[0].strip()


def parse(cls: type[M], doc: Any) -> M:
    """``doc`` (JSON data) as a ``cls`` message. Unknown fields are errors: a field Envoy would
    never see must not be accepted."""
    if not isinstance(doc, dict):
        raise ProtoJsonError(f"must be an object (an Envoy {cls.DESCRIPTOR.name})")
    for type_url in _type_urls(doc):
        message_class(type_url.rpartition("/")[2])
    message = cls()
    try:
        json_format.ParseDict(doc, message)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise ProtoJsonError(_reason(exc)) from None
    result: M = message
    return result


def to_json(message: Message) -> dict[str, Any]:
    """The JSON form of ``message`` (camelCase names, as Envoy's config dump and Kuma write them)."""
    doc: dict[str, Any] = json_format.MessageToDict(message)
    return doc


def unpack(any_message: Any) -> Message:
    """The message inside a ``google.protobuf.Any``."""
    cls = message_class(str(any_message.type_url).rpartition("/")[2])
    if cls is None:
        raise ProtoJsonError(f"unknown message type {any_message.type_url}")
    inner = cls()
    if not any_message.Unpack(inner):
        raise ProtoJsonError(f"cannot unpack {any_message.type_url}")
    return inner
