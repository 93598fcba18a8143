"""What zonemesh does not apply yet, refused wherever a document enters.

A targetRef policy type declares its ``PolicySupport`` in the registry. ``unsupported(res)``
turns it into field errors for one document: a type that is not supported yet at all, fields
its plugin does not apply yet (``PolicySupport.not_yet``), or a section (``to`` / ``from``) whose
top-level targetRef only reaches proxies on which zonemesh does not apply that section of that
type. ``codec.check_resource`` asks it, and everything that validates a resource goes through
that: the API and zmctl, KDS on both sides (shared/kds/trust.py; global also before sending), and
the zone's generation (zone_cp/xds/usable.py, for documents stored before an upgrade): nothing
is stored, synced or generated that would be silently ignored.
"""

from __future__ import annotations

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
from zonemesh.shared.resources.types.targetref import not_supported, selectable_proxy_types, top_level

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
