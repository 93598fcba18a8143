"""A config-dump-like JSON view of generated resources (the ``_config`` API, golden files).

No private key leaves through it, wherever it sits: every Envoy field that holds key material
(``privateKey``, ``pkcs12``, ``password`` of a TlsCertificate, session ticket keys, generic
secrets) is replaced in every resource, SDS secret or not, and so is any other string that is, or
base64-decodes to, PEM private key text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from google.protobuf.json_format import MessageToDict
from zonemesh.zone_cp.xds.resources import PUSH_ORDER, SECRET, SHORT_NAMES, ResourceSet

REDACTED = "<redacted>"
# DataSource-valued fields of Envoy's TLS messages that hold secrets (a filename is kept: it is not one).
_KEY_SOURCES = frozenset({"privateKey", "pkcs12", "password"})
# Fields whose whole value is secret material.
_SECRET_VALUES = frozenset({"sessionTicketKeys", "genericSecret"})
_KEY_PEM = b"PRIVATE KEY-----"
_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def _is_key_text(text: str) -> bool:
    """PEM private key text, or base64 (how protobuf JSON writes bytes) of something holding it."""
    if _KEY_PEM.decode() in text:
        return True
    if not _BASE64.fullmatch(text):
        return False
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return _KEY_PEM in decoded


def _redact_keys(node: Any) -> Any:
    """``node`` (JSON data) with key material replaced, changed in place where it is a container."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _KEY_SOURCES and isinstance(value, dict) and set(value) != {"filename"}:
                node[key] = {"inlineBytes": REDACTED}
            elif key in _SECRET_VALUES:
                node[key] = REDACTED
            else:
                node[key] = _redact_keys(value)
        return node
    if isinstance(node, list):
        return [_redact_keys(item) for item in node]
    if isinstance(node, str) and _is_key_text(node):
        return REDACTED
    return node


def _hide_certificates(doc: dict[str, Any]) -> None:
    tls = doc.get("tlsCertificate")
    if isinstance(tls, dict) and "certificateChain" in tls:
        tls["certificateChain"] = {"inlineBytes": "<certificate>"}
    validation = doc.get("validationContext")
    if isinstance(validation, dict) and "trustedCa" in validation:
        validation["trustedCa"] = {"inlineBytes": "<CA certificate>"}


def dump(resources: ResourceSet, *, hide_certificates: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Resources by type (clusters, endpoints, listeners, routes, secrets), each sorted by name.
    Private keys are always redacted; ``hide_certificates`` also replaces the certificates of SDS
    secrets (golden files)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for type_url in PUSH_ORDER:
        items = []
        for name in resources.names(type_url):
            # via JSON: plain dicts (MessageToDict returns OrderedDicts for Any-typed maps)
            doc = json.loads(json.dumps(MessageToDict(resources.by_type[type_url][name])))
            _redact_keys(doc)
            if hide_certificates and type_url == SECRET:
                _hide_certificates(doc)
            items.append(doc)
        out[SHORT_NAMES[type_url]] = items
    return out
