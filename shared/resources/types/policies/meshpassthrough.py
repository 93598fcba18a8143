"""MeshPassthrough: which destinations outside the mesh a proxy lets its application reach
(Kuma 2.14: ``passthroughMode`` All / Matched / None, ``appendMatch`` by domain, IP or CIDR and
port).

Not supported yet, and the refusal says why: in Kuma it configures only the outbound
passthrough of a *transparent* proxy (traffic iptables redirects to Envoy; Kuma applies
nothing, with a warning, to a proxy without transparent proxying), and zonemesh has no
transparent proxying. Its applications connect to non-mesh destinations directly, past Envoy,
which therefore could neither let such traffic through nor stop it. The schema is Kuma's, with
its validator's rules, for when transparent proxying exists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Enum, Errors, List, Obj, Str
from zonemesh.shared.resources.types.common import PORT, is_hostname
from zonemesh.shared.resources.types.targetref import DATAPLANE, MESH, MESH_SUBSET, target_ref

PROTOCOLS = ("tcp", "tls", "grpc", "http", "http2", "mysql")
_L7 = ("grpc", "http", "http2")  # one port cannot serve several of them

REASON = (
    "it configures what a transparent proxy lets through to destinations outside the "
    "mesh, and zonemesh has no transparent proxying: applications reach non-mesh destinations "
    "directly, past Envoy, so no proxy could apply it (Kuma too ignores it on proxies without "
    "transparent proxying); reach external services through ExternalService outbounds instead"
)


def _valid_value(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Kuma's validator: the value fits its type; domains take neither tcp nor mysql."""
    kind, text, protocol = value.get("type"), value.get("value"), value.get("protocol", "tcp")
    if not isinstance(text, str):
        return
    if kind == "IP":
        try:
            ipaddress.ip_address(text)
        except ValueError:
            errors.add(f"{path}.value", "provided IP has incorrect value")
    elif kind == "CIDR":
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            errors.add(f"{path}.value", "provided CIDR has incorrect value")
    elif kind == "Domain":
        if protocol in ("tcp", "mysql"):
            errors.add(f"{path}.protocol", f"protocol {protocol} is not supported for a domain")
        if text.startswith("*") and not text.startswith("*."):
            errors.add(f"{path}.value", "provided DNS has incorrect value, partial wildcard is currently not supported")
        elif not is_hostname(text.removeprefix("*.")):
            errors.add(f"{path}.value", "provided DNS has incorrect value")
        if value.get("port") is None and text.startswith("*") and protocol in _L7:
            errors.add(f"{path}.port", "wildcard domains doesn't work for all ports and layer 7 protocol")
    if protocol == "mysql" and value.get("port") is None:
        errors.add(f"{path}.port", "port must be defined for Mysql protocol")


MATCH = Obj(
    {
        "type": Enum("Domain", "IP", "CIDR"),
        "value": Str(min_len=1),
        "port": PORT,
        "protocol": Enum(*PROTOCOLS),
    },
    required=("type", "value"),
    checks=(_valid_value,),
)


def _ports_and_values(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Kuma's validator across matches: one L7 protocol per port; a value once per port and protocol."""
    protocols: dict[int, str] = {}
    seen: set[tuple[int, str, str]] = set()
    for i, match in enumerate(value.get("appendMatch") or []):
        port, protocol = match.get("port"), match.get("protocol", "tcp")
        if not isinstance(port, int):
            continue
        where = f"{path}.appendMatch[{i}]"
        if port in protocols and protocols[port] != protocol and protocol in _L7:
            errors.add(
                f"{where}.port",
                "using the same port in multiple matches requires the same protocol for grpc, http and http2",
            )
        protocols.setdefault(port, protocol)
        key = (port, protocol, str(match.get("value")))
        if key in seen:
            errors.add(f"{where}.value", f"value {match.get('value')} is already defined for this port and protocol")
        seen.add(key)


CONF = Obj(
    {"passthroughMode": Enum("All", "Matched", "None"), "appendMatch": List(MATCH)},
    checks=(_ports_and_values,),
)

MESH_PASSTHROUGH = register(
    ResourceType(
        name="MeshPassthrough",
        plural="meshpassthroughs",
        short_name="mp",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        support=PolicySupport(plugin=None, reason=REASON),
        # No to/from: the top-level targetRef selects proxies, `default` is their conf.
        spec=Obj({"targetRef": target_ref((MESH, MESH_SUBSET, DATAPLANE), top_level=True), "default": CONF}),
    )
)
