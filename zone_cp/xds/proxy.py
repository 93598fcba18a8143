"""Who is at the other end of an xDS stream."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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

    @property
    def key(self) -> str:
        """The snapshot cache key. Resource names may contain dots but never a slash."""
        return node_key(self.mesh, self.name)


def node_key(mesh: str, name: str) -> str:
    return f"{mesh}/{name}"


def parse_node_id(node_id: str) -> tuple[str, str]:
    """Kuma's Envoy node id format ``<mesh>.<name>`` (mesh names carry no dot in practice)."""
    mesh, sep, name = node_id.partition(".")
    if not sep or not mesh or not name:
        raise ValueError(f"node id {node_id!r} is not in the form <mesh>.<dataplane name>")
    return mesh, name
