"""Who is at the other end of an xDS stream."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from zonemesh.shared.resources.schema import MESH_NAME, FieldError, check_name


class ProxyType(StrEnum):
    DATAPLANE = "dataplane"
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True)
class ProxyIdentity:
    """An authenticated proxy: the Dataplane (or zone proxy) ``name`` in ``mesh``."""

    mesh: str
    name: str
    proxy_type: ProxyType = ProxyType.DATAPLANE

    @cached_property
    def key(self) -> str:
        """The snapshot cache key. Resource names may contain dots but never a slash. Built once:
        a stream names its proxy by it in every watch, ACK and insight it keeps."""
        if self.proxy_type is ProxyType.DATAPLANE:
            return node_key(self.mesh, self.name)
        return zone_proxy_key(self.proxy_type, self.name)


def node_key(mesh: str, name: str) -> str:
    return f"{mesh}/{name}"


def zone_proxy_key(proxy_type: str, name: str) -> str:
    """Zone ingresses and egresses serve every mesh: keyed by type, never clashing with a mesh."""
    return f"{proxy_type}:/{name}"


def parse_zone_proxy_node_id(node_id: str) -> str:
    """A zone proxy's Envoy node id is its ZoneIngress/ZoneEgress name (a leading dot, Kuma's
    form for a proxy outside any mesh, is accepted). Raises ValueError for an invalid name."""
    name = node_id.removeprefix(".")
    if not name:
        raise ValueError(f"node id {_shown(node_id)} names no zone proxy")
    errors = check_name(name, "name")
    if errors:
        raise ValueError(f"node id {_shown(node_id)}: {_reasons(errors)}")
    return name


def parse_node_id(node_id: str) -> tuple[str, str]:
    """Kuma's Envoy node id format ``<mesh>.<name>``, split at the first dot: mesh names hold no
    dot (schema.MESH_NAME). Both parts follow the API's name rules; raises ValueError otherwise."""
    mesh, sep, name = node_id.partition(".")
    if not sep or not mesh or not name:
        raise ValueError(f"node id {_shown(node_id)} is not in the form <mesh>.<dataplane name>")
    errors = check_name(mesh, "mesh", MESH_NAME) + check_name(name, "name")
    if errors:
        raise ValueError(f"node id {_shown(node_id)} is not <mesh>.<dataplane name>: {_reasons(errors)}")
    return mesh, name


def _shown(node_id: str) -> str:
    """The node id as errors quote it: a client chooses its length, a gRPC status must stay small."""
    return repr(node_id) if len(node_id) <= 300 else repr(node_id[:300]) + "..."


def _reasons(errors: list[FieldError]) -> str:
    return "; ".join(f"{e.field}: {e.reason}" for e in errors)


# What a zone proxy registers as, and the insight its streams are recorded in.
RESOURCE_TYPES = {ProxyType.INGRESS.value: "ZoneIngress", ProxyType.EGRESS.value: "ZoneEgress"}
INSIGHT_TYPES = {ProxyType.INGRESS.value: "ZoneIngressInsight", ProxyType.EGRESS.value: "ZoneEgressInsight"}
