"""A config-dump-like JSON view of generated resources (the ``_config`` API, golden files)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from zonemesh.zone_cp.xds.resources import PUSH_ORDER, SECRET, SHORT_NAMES, ResourceSet

REDACTED = "<redacted>"


def _redact_secret(doc: dict[str, Any], certificates: bool) -> None:
    tls = doc.get("tlsCertificate")
    if isinstance(tls, dict):
        if "privateKey" in tls:
            tls["privateKey"] = {"inlineBytes": REDACTED}
        if certificates and "certificateChain" in tls:
            tls["certificateChain"] = {"inlineBytes": "<certificate>"}
    validation = doc.get("validationContext")
    if certificates and isinstance(validation, dict) and "trustedCa" in validation:
        validation["trustedCa"] = {"inlineBytes": "<CA certificate>"}


def dump(resources: ResourceSet, *, hide_certificates: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Resources by type (clusters, endpoints, listeners, routes, secrets), each sorted by name.
    Private keys are always redacted; ``hide_certificates`` also replaces certificates (golden files)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for type_url in PUSH_ORDER:
        items = []
        for name in resources.names(type_url):
            # via JSON: plain dicts (MessageToDict returns OrderedDicts for Any-typed maps)
            doc = json.loads(json.dumps(MessageToDict(resources.by_type[type_url][name])))
            if type_url == SECRET:
                _redact_secret(doc, hide_certificates)
            items.append(doc)
        out[SHORT_NAMES[type_url]] = items
    return out
