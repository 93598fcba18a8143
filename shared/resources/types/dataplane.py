"""Dataplane: one data plane proxy (a sidecar next to a workload, or a gateway).

Dataplanes are created in a zone (by kuma-dp or the user) and uploaded to global, so the
global control plane can compute cross-zone endpoints and insights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import (
    AnyValue,
    Bool,
    Duration,
    Enum,
    Errors,
    FieldError,
    Int,
    List,
    Map,
    Obj,
    Str,
    one_of,
)
from zonemesh.shared.resources.types.common import PORT, PROTOCOLS, Address, Tags, tag_zone
from zonemesh.shared.resources.types.mesh import constraint_violation
from zonemesh.shared.resources.types.targetref import not_supported

GATEWAY_DELEGATED = "DELEGATED"
GATEWAY_BUILTIN = "BUILTIN"

SERVICE_PROBE = Obj(
    {
        "interval": Duration(positive=True),
        "timeout": Duration(positive=True),
        "healthyThreshold": Int(min=1),
        "unhealthyThreshold": Int(min=1),
        "tcp": Obj({}),
    }
)

INBOUND = Obj(
    {
        "port": PORT,
        "servicePort": PORT,
        "serviceAddress": Address(ip_only=True),
        "address": Address(ip_only=True),
        "tags": Tags(require_service=True),
        "name": Str(min_len=1),
        "protocol": Enum(*PROTOCOLS),
        "state": Enum("Ready", "NotReady", "Ignored"),
        "health": Obj({"ready": Bool()}),
        "serviceProbe": SERVICE_PROBE,
    },
    required=("port", "tags"),
)

_LABELS = Map(Str(), key=Str(min_len=1))


def _outbound_destination(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    if value.get("tags") is None and value.get("backendRef") is None:
        errors.add(path, "must have tags (with kuma.io/service) or backendRef")
    if value.get("backendRef") is not None:
        # A backendRef names a MeshService resource, which zonemesh does not have yet: accepted,
        # the outbound would never be generated.
        errors.add(
            f"{path}.backendRef",
            "an outbound by backendRef (MeshService resources) is not supported yet by zonemesh; "
            "name the service with tags: {kuma.io/service: NAME}",
        )


OUTBOUND = Obj(
    {
        "address": Address(ip_only=True),
        "port": PORT,
        "tags": Tags(require_service=True),
        "backendRef": Obj(
            {"kind": Str(min_len=1), "name": Str(min_len=1), "labels": _LABELS, "port": PORT},
            required=("kind",),
        ),
    },
    required=("port",),
    checks=(one_of("tags", "backendRef"), _outbound_destination),
)

GATEWAY = Obj(
    {"type": Enum(GATEWAY_DELEGATED, GATEWAY_BUILTIN), "tags": Tags(require_service=True)},
    required=("tags",),
)

# Kuma's reachableBackends kinds. zonemesh has no MeshService resources: a MeshService ref names
# a service by its kuma.io/service tag (as targetRefs do); what needs the resources is refused.
BACKEND_KINDS = ("MeshService", "MeshExternalService", "MeshMultiZoneService")


def _reachable_backend(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """What zonemesh can resolve of a ``reachableBackends`` ref: a MeshService by name."""
    kind = value.get("kind")
    if kind in BACKEND_KINDS and kind != "MeshService":
        errors.add(f"{path}.kind", not_supported(f"reachableBackends of kind {kind}") + "; use MeshService")
    if value.get("labels") is not None:
        errors.add(f"{path}.labels", not_supported("selecting reachableBackends by labels") + "; use name")
    elif not value.get("name"):
        errors.add(f"{path}.name", "must be defined (the service's kuma.io/service tag)")
    if value.get("port") is not None:
        errors.add(
            f"{path}.port",
            not_supported("reachableBackends port") + " (a service has no ports without MeshService resources)",
        )


# What only transparent proxying (iptables redirecting the workload's traffic to Envoy) reads.
# zonemesh has none: refused rather than accepted while traffic goes to ports nothing listens on.
_REDIRECT_FIELDS = (
    "redirectPortInbound",
    "redirectPortInboundV6",
    "redirectPortOutbound",
    "directAccessServices",
    "ipFamilyMode",
)


def _no_redirection(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    for field in _REDIRECT_FIELDS:
        if value.get(field) is not None:
            errors.add(
                f"{path}.{field}",
                not_supported("transparent proxying")
                + ": declare outbounds in networking.outbound (reachableServices and reachableBackends are applied)",
            )


TRANSPARENT_PROXYING = Obj(
    {
        "redirectPortInbound": PORT,
        "redirectPortInboundV6": PORT,  # Kuma < 2.2 wrote a separate IPv6 port; still accepted
        "redirectPortOutbound": PORT,
        "directAccessServices": List(Str(min_len=1)),
        # Both trim the proxy's outbounds to the services they name (zone_cp/xds/context.py).
        "reachableServices": List(Str(min_len=1)),
        "reachableBackends": Obj(
            {
                "refs": List(
                    Obj(
                        {
                            "kind": Enum(*BACKEND_KINDS),
                            "name": Str(min_len=1),
                            "namespace": Str(),  # ignored in universal, as in targetRefs
                            "labels": _LABELS,
                            "port": PORT,
                        },
                        required=("kind",),
                        checks=(_reachable_backend,),
                    )
                )
            }
        ),
        "ipFamilyMode": Enum("DualStack", "IPv4", "IPv6"),
    },
    checks=(_no_redirection,),
)


def _effective_address(inbound: Mapping[str, Any], networking: Mapping[str, Any]) -> Any:
    return inbound.get("address") or networking.get("address")


def _check_networking(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Rules across networking fields: Kuma's dataplane validator, minus the legacy model."""
    inbounds = value.get("inbound")
    gateway = value.get("gateway")
    # A wrongly typed `inbound` is reported by its own node; don't also call it missing.
    has_inbound = bool(inbounds) if isinstance(inbounds, list) else inbounds is not None
    if not has_inbound and gateway is None:
        errors.add(path, "has to contain at least one inbound interface or gateway")
    if has_inbound and gateway is not None:
        errors.add(path, "inbound cannot be defined both with gateway")
    if not isinstance(inbounds, list):
        return
    # Two listeners on one address:port cannot both bind; Envoy would reject the whole config.
    used: dict[tuple[Any, Any], int] = {}
    for i, inbound in enumerate(inbounds):
        if not isinstance(inbound, Mapping) or not isinstance(inbound.get("port"), int):
            continue
        where = f"{path}.inbound[{i}]"
        port = inbound["port"]
        key = (_effective_address(inbound, value), port)
        if key in used:
            errors.add(f"{where}.port", f"port {port} is already used by inbound[{used[key]}]")
        else:
            used[key] = i
        service_address = inbound.get("serviceAddress")
        if service_address and service_address == key[0] and inbound.get("servicePort", port) == port:
            errors.add(f"{where}.serviceAddress", "serviceAddress and servicePort have to differ from address and port")


NETWORKING = Obj(
    {
        "address": Address(),
        "advertisedAddress": Address(),
        "inbound": List(INBOUND),
        "outbound": List(OUTBOUND),
        "gateway": GATEWAY,
        "admin": Obj({"port": PORT}),
        "transparentProxying": TRANSPARENT_PROXYING,
    },
    required=("address",),
    checks=(_check_networking,),
)

DATAPLANE_SPEC = Obj(
    {
        "networking": NETWORKING,
        "probes": Obj(
            {
                "port": PORT,
                "endpoints": List(
                    Obj(
                        {"inboundPort": PORT, "inboundPath": Str(min_len=1), "path": Str(min_len=1)},
                        required=("inboundPort", "inboundPath", "path"),
                    )
                ),
            }
        ),
        # Kuma's per-proxy metrics backend override: refused when set (_refuse_metrics).
        "metrics": AnyValue(),
    },
    required=("networking",),
)


def _dataplane_zones(res: Resource) -> list[tuple[str, str]]:
    """The zone tag of what the proxy serves (inbounds, gateway): policies and routes select by it."""
    networking = _networking(res)
    gateway = networking.get("gateway")
    refs = tag_zone(gateway.get("tags") if isinstance(gateway, Mapping) else None, "networking.gateway.tags")
    inbounds = networking.get("inbound")
    for i, inbound in enumerate(inbounds if isinstance(inbounds, list) else []):
        if isinstance(inbound, Mapping):
            refs += tag_zone(inbound.get("tags"), f"networking.inbound[{i}].tags")
    return refs


def _check_constraints(res: Resource, mesh: Resource | None) -> list[FieldError]:
    """A Dataplane written through the API or registered by its agent must meet its mesh's
    constraints.dataplaneProxy (proxies already connected are checked again when they change:
    zone_cp/admission.py)."""
    reason = constraint_violation(mesh, dataplane_tags(res)) if mesh is not None else None
    return [FieldError("networking", reason)] if reason else []


DATAPLANE = register(
    ResourceType(
        name="Dataplane",
        plural="dataplanes",
        short_name="dp",
        insight="DataplaneInsight",
        scope=Scope.MESH,
        sync=Sync.ZONE_TO_GLOBAL,
        spec=DATAPLANE_SPEC,
        zone_refs=_dataplane_zones,
        mesh_check=lambda res, mesh: _check_constraints(res, mesh),
        semantic=lambda res: _refuse_metrics(res),
    )
)


def _refuse_metrics(res: Resource) -> list[FieldError]:
    # No proxy exposes a metrics backend yet: an override would be stored and do nothing.
    if res.spec.get("metrics"):
        return [
            FieldError(
                "metrics",
                "is not supported yet by zonemesh: proxies expose no metrics backend yet; leave it out",
            )
        ]
    return []


def _networking(res: Resource) -> Mapping[str, Any]:
    networking = res.spec.get("networking")
    return networking if isinstance(networking, Mapping) else {}


def is_gateway(res: Resource) -> bool:
    """True for a gateway dataplane (delegated or builtin), False for a sidecar."""
    return _networking(res).get("gateway") is not None


def is_builtin_gateway(res: Resource) -> bool:
    gateway = _networking(res).get("gateway")
    return isinstance(gateway, Mapping) and gateway.get("type") == GATEWAY_BUILTIN


def dataplane_tags(res: Resource) -> list[dict[str, str]]:
    """The tag sets this proxy serves: one per inbound, or the gateway's single set.

    Policy matching (MeshSubset, MeshService) and service discovery work on these.
    """
    networking = _networking(res)
    gateway = networking.get("gateway")
    if isinstance(gateway, Mapping):
        return [dict(gateway.get("tags") or {})]
    return [dict(inbound.get("tags") or {}) for inbound in networking.get("inbound") or []]
