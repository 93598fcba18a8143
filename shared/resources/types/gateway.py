"""MeshGateway and MeshGatewayRoute: the builtin gateway's listeners and routes (seed 004).

A MeshGateway selects builtin gateway Dataplanes by tags and lists the listeners they expose
(port, protocol, hostname, listener tags, TLS termination, cross-mesh). A MeshGatewayRoute
selects listeners by the union of gateway and listener tags and says where their traffic goes:
HTTP rules (matches, filters, weighted backends) or TCP rules (weighted backends only).

Both are created on global and synced to every zone, like Kuma's. Field shapes follow Kuma's
universal YAML (``kuma.mesh.v1alpha1.MeshGateway`` / ``MeshGatewayRoute``, camelCase names).

Rules that need more than the document (crossMesh requires mesh mTLS) are checked by
``check_gateway_in_mesh`` when the resource manager writes the resource.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import (
    Bool,
    Enum,
    Errors,
    FieldError,
    Int,
    List,
    Map,
    Number,
    Obj,
    Str,
    one_of,
)
from zonemesh.shared.resources.types.common import PORT, Tags, exactly_one, is_hostname
from zonemesh.shared.resources.types.datasource import KEY_SOURCE

HTTP, HTTPS, TCP, TLS = "HTTP", "HTTPS", "TCP", "TLS"
LISTENER_PROTOCOLS = (HTTP, HTTPS, TCP, TLS)
HTTP_LISTENER_PROTOCOLS = (HTTP, HTTPS)
TLS_TERMINATE, TLS_PASSTHROUGH = "TERMINATE", "PASSTHROUGH"

# --- shared pieces ---------------------------------------------------------------------------

# Listener tags and selectors take any non-empty value: the seed's own example uses "tcp/8080",
# which the stricter dataplane tag rule would refuse.
LISTENER_TAGS = Map(Str(min_len=1), key=Str(min_len=1))
SELECTORS = List(Obj({"match": LISTENER_TAGS}, required=("match",)), min_items=1)


def _selector_not_empty(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    for i, selector in enumerate(value.get("selectors") or []):
        if isinstance(selector, Mapping) and isinstance(selector.get("match"), Mapping) and not selector["match"]:
            errors.add(f"{path}.selectors[{i}].match" if path else f"selectors[{i}].match", "must not be empty")


def _hostname_ok(text: str) -> bool:
    """A listener or route hostname: a DNS name, optionally with one leading ``*.`` label, or ``*``."""
    if text == "*":
        return True
    return is_hostname(text.removeprefix("*.")) and "*" not in text.removeprefix("*.")


class Hostname(Str):
    def __init__(self) -> None:
        super().__init__(min_len=1, max_len=253)

    def check(self, value: Any, path: str, errors: Errors) -> None:
        before = len(errors)
        super().check(value, path, errors)
        if len(errors) == before and not _hostname_ok(value):
            errors.add(path, 'must be a DNS name, a wildcard such as "*.example.com", or "*"')


# --- MeshGateway -------------------------------------------------------------------------------

LISTENER_TLS = Obj(
    {
        "mode": Enum(TLS_TERMINATE, TLS_PASSTHROUGH),
        "certificates": List(KEY_SOURCE),  # each: a PEM certificate chain and its private key
        "options": Obj({}),
    }
)

LISTENER = Obj(
    {
        "port": PORT,
        "protocol": Enum(*LISTENER_PROTOCOLS),
        "hostname": Hostname(),
        "tags": LISTENER_TAGS,
        "tls": LISTENER_TLS,
        "crossMesh": Bool(),
        "resources": Obj({"connectionLimit": Int(min=0)}),
    },
    required=("port", "protocol"),
)

MESH_GATEWAY_SPEC = Obj(
    {"selectors": SELECTORS, "conf": Obj({"listeners": List(LISTENER, min_items=1)}, required=("listeners",))},
    required=("selectors", "conf"),
    checks=(_selector_not_empty,),
)


def listener_hostname(listener: Mapping[str, Any]) -> str:
    """``*`` when a listener matches every host (no hostname, empty, or ``*``)."""
    return str(listener.get("hostname") or "*")


def _check_listener_tls(listener: Mapping[str, Any], where: str) -> list[FieldError]:
    protocol, tls = listener.get("protocol"), listener.get("tls")
    if protocol in (HTTPS, TLS):
        if not isinstance(tls, Mapping):
            return [FieldError(f"{where}.tls", f"must be defined with protocol {protocol}")]
        mode = tls.get("mode") or TLS_TERMINATE
        if mode == TLS_PASSTHROUGH:
            return [FieldError(f"{where}.tls.mode", "PASSTHROUGH is not supported; use TERMINATE")]
        if not tls.get("certificates"):
            return [FieldError(f"{where}.tls.certificates", "must have at least one certificate with mode TERMINATE")]
        return []
    if tls is not None:
        return [FieldError(f"{where}.tls", f"can only be set with protocol HTTPS or TLS, not {protocol}")]
    return []


def _check_mesh_gateway(res: Resource) -> list[FieldError]:
    errors: list[FieldError] = []
    listeners = res.spec["conf"]["listeners"]
    protocol_on_port: dict[int, tuple[str, int]] = {}
    hosts_on_port: dict[tuple[int, str], int] = {}
    cross_mesh = False
    for i, listener in enumerate(listeners):
        where = f"conf.listeners[{i}]"
        port, protocol = listener["port"], listener["protocol"]
        first = protocol_on_port.setdefault(port, (protocol, i))
        if first[0] != protocol:
            errors.append(
                FieldError(
                    f"{where}.protocol",
                    f"port {port} is already used with protocol {first[0]} by listeners[{first[1]}]; "
                    "listeners sharing a port must share the protocol",
                )
            )
        host = listener_hostname(listener)
        if protocol in (TCP,) and listener.get("hostname") not in (None, "", "*"):
            errors.append(FieldError(f"{where}.hostname", "cannot be set with protocol TCP (no host to match)"))
        other = hosts_on_port.setdefault((port, host), i)
        if other != i:
            errors.append(
                FieldError(
                    f"{where}.hostname", f"hostname {host!r} on port {port} is already used by listeners[{other}]"
                ),
            )
        errors += _check_listener_tls(listener, where)
        if listener.get("crossMesh"):
            cross_mesh = True
            if protocol != HTTP:
                errors.append(
                    FieldError(f"{where}.crossMesh", f"cross-mesh listeners support only protocol HTTP, not {protocol}")
                )
    selectors = len(res.spec["selectors"])
    if cross_mesh and selectors != 1:
        errors.append(
            FieldError(
                "selectors", f"a MeshGateway with a crossMesh listener must have exactly one selector (has {selectors})"
            )
        )
    return errors


MESH_GATEWAY = register(
    ResourceType(
        name="MeshGateway",
        plural="meshgateways",
        short_name="mgw",
        scope=Scope.MESH,
        # As in Kuma 2.x: a zone may create its own MeshGateways (not MeshGatewayRoutes).
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        spec=MESH_GATEWAY_SPEC,
        semantic=_check_mesh_gateway,
        mesh_check=lambda res, mesh: check_gateway_in_mesh(res, mesh),
    )
)


def has_cross_mesh_listener(gateway: Resource) -> bool:
    return any(bool(item.get("crossMesh")) for item in (gateway.spec.get("conf") or {}).get("listeners") or [])


# --- MeshGatewayRoute --------------------------------------------------------------------------

BACKEND = Obj({"weight": Int(min=0), "destination": Tags(require_service=True)}, required=("destination",))

_PATH_MATCHES = ("EXACT", "PREFIX", "REGEX")


def _path_value(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    text, kind = value.get("value"), value.get("match") or "EXACT"
    if not isinstance(text, str) or not text:
        return
    if kind == "REGEX":
        try:
            re.compile(text)
        except re.error as exc:
            errors.add(f"{path}.value", f"is not a valid regular expression: {exc}")
    elif not text.startswith("/"):
        errors.add(f"{path}.value", f"must be an absolute path starting with '/' for match {kind}")


def _value_needed(valueless: tuple[str, ...]) -> Any:
    def check(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        kind = value.get("match") or "EXACT"
        if kind in valueless:
            if value.get("value"):
                errors.add(f"{path}.value", f"must not be set with match {kind}")
        elif not value.get("value"):
            errors.add(f"{path}.value", f"must be set with match {kind}")
        if kind == "REGEX" and isinstance(value.get("value"), str):
            try:
                re.compile(value["value"])
            except re.error as exc:
                errors.add(f"{path}.value", f"is not a valid regular expression: {exc}")

    return check


def _match_not_empty(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    if not any(value.get(k) for k in ("path", "method", "headers", "queryParameters")):
        errors.add(path, "must have at least one of: path, method, headers, queryParameters")


_HEADER_NAME = Str(min_len=1, pattern=r"[A-Za-z0-9!#$%&'*+\-.^_`|~:]+", pattern_reason="must be an HTTP header name")

MATCH = Obj(
    {
        "path": Obj(
            {"match": Enum(*_PATH_MATCHES), "value": Str(min_len=1)},
            required=("value",),
            checks=(_path_value,),
        ),
        "method": Enum("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"),
        "headers": List(
            Obj(
                {"match": Enum("EXACT", "REGEX", "ABSENT", "PRESENT"), "name": _HEADER_NAME, "value": Str()},
                required=("name",),
                checks=(_value_needed(("ABSENT", "PRESENT")),),
            )
        ),
        "queryParameters": List(
            Obj(
                {"match": Enum("EXACT", "REGEX"), "name": Str(min_len=1), "value": Str()},
                required=("name",),
                checks=(_value_needed(()),),
            )
        ),
    },
    checks=(_match_not_empty,),
)


class _RedirectStatus(Int):
    """Kuma allows 300-308; Envoy can only send these five."""

    CODES = (301, 302, 303, 307, 308)

    def check(self, value: Any, path: str, errors: Errors) -> None:
        before = len(errors)
        super().check(value, path, errors)
        if len(errors) == before and value not in self.CODES:
            errors.add(path, f"must be one of: {', '.join(map(str, self.CODES))}")


_REDIRECT_STATUS = _RedirectStatus()

HEADER_FILTER = Obj(
    {
        "set": List(Obj({"name": _HEADER_NAME, "value": Str()}, required=("name", "value"))),
        "add": List(Obj({"name": _HEADER_NAME, "value": Str()}, required=("name", "value"))),
        "remove": List(_HEADER_NAME),
    }
)

REWRITE = Obj(
    {"replaceFull": Str(min_len=1), "replacePrefixMatch": Str(min_len=1), "hostToBackendHostname": Bool()},
    checks=(one_of("replaceFull", "replacePrefixMatch"),),
)

FILTER = Obj(
    {
        "requestHeader": HEADER_FILTER,
        "responseHeader": HEADER_FILTER,
        "mirror": Obj({"backend": BACKEND, "percentage": Number(min=0, max=100)}, required=("backend",)),
        "redirect": Obj(
            {
                "scheme": Enum("http", "https"),
                "hostname": Str(min_len=1),
                "port": Int(min=1, max=65534),
                "statusCode": _REDIRECT_STATUS,
                "path": REWRITE,
            },
            required=("scheme", "hostname", "statusCode"),
        ),
        "rewrite": REWRITE,
    },
    checks=(exactly_one("requestHeader", "responseHeader", "mirror", "redirect", "rewrite"),),
)


def _rule_consistent(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    filters = [f for f in value.get("filters") or [] if isinstance(f, Mapping)]
    redirect = any(f.get("redirect") is not None for f in filters)
    if redirect:
        if len(filters) > 1:
            errors.add(f"{path}.filters", "a redirect filter must be the only filter of its rule")
        if value.get("backends"):
            errors.add(f"{path}.backends", "must not be set with a redirect filter (the gateway answers itself)")
    elif not value.get("backends"):
        errors.add(f"{path}.backends", "must have at least one backend (or a redirect filter)")
    rewrites = [f.get("rewrite") for f in filters] + [(f.get("redirect") or {}).get("path") for f in filters]
    prefix_rewrite = any(isinstance(r, Mapping) and r.get("replacePrefixMatch") for r in rewrites)
    if prefix_rewrite:
        for i, match in enumerate(value.get("matches") or []):
            kind = ((match.get("path") or {}).get("match") or "EXACT") if isinstance(match, Mapping) else None
            if kind != "PREFIX":
                errors.add(f"{path}.matches[{i}].path", "replacePrefixMatch needs a PREFIX path match")


HTTP_RULE = Obj(
    {"matches": List(MATCH, min_items=1), "filters": List(FILTER), "backends": List(BACKEND)},
    required=("matches",),
    checks=(_rule_consistent,),
)

TCP_RULE = Obj({"backends": List(BACKEND, min_items=1)}, required=("backends",))

MESH_GATEWAY_ROUTE_SPEC = Obj(
    {
        "selectors": SELECTORS,
        "conf": Obj(
            {
                "http": Obj(
                    {"hostnames": List(Hostname()), "rules": List(HTTP_RULE, min_items=1)},
                    required=("rules",),
                ),
                "tcp": Obj({"rules": List(TCP_RULE, min_items=1)}, required=("rules",)),
            },
            checks=(exactly_one("http", "tcp"),),
        ),
    },
    required=("selectors", "conf"),
    checks=(_selector_not_empty,),
)

MESH_GATEWAY_ROUTE = register(
    ResourceType(
        name="MeshGatewayRoute",
        plural="meshgatewayroutes",
        short_name="mgwr",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        spec=MESH_GATEWAY_ROUTE_SPEC,
    )
)


# --- checks that need the mesh -------------------------------------------------------------------


def check_gateway_in_mesh(gateway: Resource, mesh: Resource | None) -> list[FieldError]:
    """A cross-mesh listener is reached over mTLS from other meshes: its mesh must have mTLS on."""
    if not has_cross_mesh_listener(gateway) or mesh is None:
        return []
    if (mesh.spec.get("mtls") or {}).get("enabledBackend"):
        return []
    listeners = gateway.spec["conf"]["listeners"]
    first = next(i for i, item in enumerate(listeners) if item.get("crossMesh"))
    return [
        FieldError(
            f"conf.listeners[{first}].crossMesh",
            f"mesh {gateway.mesh!r} has no mTLS enabled; cross-mesh gateways need mTLS on every mesh involved",
        )
    ]
