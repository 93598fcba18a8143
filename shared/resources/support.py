"""What zonemesh does not apply yet, refused wherever a document enters.

A targetRef policy type declares its ``PolicySupport`` in the registry. ``unsupported(res)``
turns it into field errors for one document: a type that is not supported yet at all, fields
its plugin does not apply yet (``PolicySupport.not_yet``), a section (``to`` / ``from``) whose
top-level targetRef only reaches proxies on which zonemesh does not apply that section of that
type, or, with a top-level MeshHTTPRoute targetRef, what does not apply to a single route
(``PolicySupport.per_route``). ``codec.check_resource`` asks it, and everything that validates a resource goes through
that: the API and zmctl, KDS on both sides (shared/kds/trust.py; global also before sending), and
the zone's generation (zone_cp/xds/usable.py, for documents stored before an upgrade): nothing
is stored, synced or generated that would be silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import (
    ALL_SECTIONS,
    GATEWAY,
    REGISTRY,
    SIDECAR,
    PolicySupport,
    Registry,
    ResourceType,
)
from zonemesh.shared.resources.schema import FieldError
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_HTTP_ROUTE,
    not_supported,
    selectable_proxy_types,
    top_level,
)

_PROXIES = {SIDECAR: "sidecars", GATEWAY: "builtin gateways"}


def type_not_supported(rtype: ResourceType) -> list[FieldError]:
    """The error for a policy type zonemesh does not apply at all yet (empty otherwise)."""
    if rtype.support is None or rtype.support.supported:
        return []
    why = rtype.support.reason or "it would be stored but never applied to a proxy"
    return [FieldError("type", f"{not_supported(rtype.name)}: {why}")]


def unsupported(res: Resource, registry: Registry = REGISTRY) -> list[FieldError]:
    """Why zonemesh would not apply ``res`` (empty: it applies all of it). ``res`` must be a
    well-formed document of a registered type."""
    rtype = registry.get(res.type)
    support = rtype.support
    if support is None:
        return []  # not a targetRef policy
    if not support.supported:
        return type_not_supported(rtype)
    selectable = selectable_proxy_types(top_level(res.spec))
    errors = support.not_yet(res) if support.not_yet is not None else []
    if top_level(res.spec).get("kind") == MESH_HTTP_ROUTE:
        errors += per_route(rtype.name, support, res.spec)
    for section in ALL_SECTIONS:
        if not res.spec.get(section):
            continue
        applied = {SIDECAR} if section in support.sidecar else set()
        applied |= {GATEWAY} if section in support.gateway else set()
        if applied & selectable:
            continue
        missing = " or ".join(_PROXIES[p] for p in sorted(selectable, reverse=True))
        errors.append(
            FieldError(
                f"spec.{section}",
                f"{rtype.name} `{section}` is not supported yet on {missing} by zonemesh; {where(rtype.name, support)}",
            )
        )
    return errors


def where(name: str, support: PolicySupport) -> str:
    """Where zonemesh applies a supported type, for error messages and docs."""
    parts = [
        f"on {_PROXIES[proxy]} ({', '.join(f'`{s}`' for s in sections)})"
        for proxy, sections in ((SIDECAR, support.sidecar), (GATEWAY, support.gateway))
        if sections
    ]
    return f"zonemesh applies {name} " + " and ".join(parts)


def per_route(name: str, support: PolicySupport, spec: Mapping[str, Any]) -> list[FieldError]:
    """Why a policy whose top-level targetRef is a MeshHTTPRoute would not be applied to that
    route's routes: the type applies nothing per route, or an entry sets what cannot apply to
    one route (a cluster or a listener setting), or it has ``from`` / non-Mesh ``to`` entries
    (Kuma refuses those: the route is the destination)."""
    if support.per_route is None:
        return [
            FieldError(
                "spec.targetRef.kind",
                not_supported(f"{name} with a top-level MeshHTTPRoute targetRef (per-route {name})"),
            )
        ]
    errors = []
    if spec.get("from"):
        errors.append(FieldError("spec.from", "must not be defined when the top-level targetRef is a MeshHTTPRoute"))
    allowed = ", ".join(f"`{f}`" for f in support.per_route)
    for i, entry in enumerate(spec.get("to") or []):
        if not isinstance(entry, Mapping):
            continue
        if (entry.get("targetRef") or {}).get("kind") != MESH:
            reason = "must be Mesh when the top-level targetRef is a MeshHTTPRoute"
            errors.append(FieldError(f"spec.to[{i}].targetRef.kind", reason))
        for field in _leaves(entry.get("default") or {}):
            if not any(field == f or field.startswith(f + ".") for f in support.per_route):
                errors.append(
                    FieldError(
                        f"spec.to[{i}].default.{field}",
                        not_supported(f"{name} {field} on a single route")
                        + f"; with a top-level MeshHTTPRoute it applies {allowed}",
                    )
                )
    return errors


def _leaves(conf: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of the values set in ``conf`` (an object is walked, anything else is a leaf)."""
    found = []
    for key, value in conf.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            found += _leaves(value, path + ".")
        else:
            found.append(path)
    return found
