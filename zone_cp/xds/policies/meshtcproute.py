"""MeshTCPRoute: where a sidecar outbound's (or a builtin gateway TCP listener's) connections go.

The ``to`` entries selecting a destination are merged in matching's order, each contributing
the ``default`` of its one rule: a later entry's ``backendRefs`` replace an earlier one's (Kuma
merges them as JSON merge patches). In Envoy: the outbound's TCP proxy sends to one cluster,
or to ``weighted_clusters`` (a weight of 0 drops a backend; subsets are clusters of their own,
see meshhttproute.py).

A destination whose protocol is HTTP-based keeps its HTTP routes when a MeshHTTPRoute also
selects it (the HTTP route wins, as in Kuma); otherwise the MeshTCPRoute turns its outbound into
a TCP proxy.
"""

from __future__ import annotations

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import Destination, OutboundPieces, TcpProxy
from zonemesh.zone_cp.xds.policies.matching import merge_all, to_entries
from zonemesh.zone_cp.xds.policies.meshhttproute import policy_destinations, split
from zonemesh.zone_cp.xds.policies.plugin import Conf, Plugin, Policies

TYPE = "MeshTCPRoute"


def route_conf(policies: Policies, service: str | None) -> Conf | None:
    """The one rule of each entry selecting ``service``, merged: Kuma's ``{"default":
    {"backendRefs": [...]}}`` (None: no entry selects it)."""
    return merge_all(e.item["rules"][0] for e in to_entries(policies, service))


def configure(proxy: TcpProxy, backends: list[tuple[Destination, int]]) -> None:
    """Point a TCP proxy at its backends (the schema insists on one weighing more than 0)."""
    if len(backends) == 1:
        proxy.cluster = backends[0][0].cluster_name
        return
    for dest, weight in backends:
        proxy.weighted_clusters.clusters.add(name=dest.cluster_name, weight=weight)


def apply_outbound(pieces: OutboundPieces, conf: Conf) -> None:
    if pieces.routes is not None:
        return  # a MeshHTTPRoute routes this HTTP destination (its plugin runs first): it wins
    backends = split((conf.get("default") or {}).get("backendRefs") or [])
    if pieces.hcm is not None:
        # Connections are forwarded as they are: the later policies see a TCP outbound.
        pieces.tcp_proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=pieces.hcm.stat_prefix)
        pieces.hcm = None
        pieces.route = None
        pieces.protocol = "tcp"
    assert pieces.tcp_proxy is not None
    pieces.tcp_proxy.ClearField("cluster")
    configure(pieces.tcp_proxy, backends)
    pieces.destinations = [dest for dest, _ in backends]


def destinations(policy: Resource) -> list[Destination]:
    return policy_destinations(policy)


PLUGIN = Plugin(TYPE, order=3, outbound=apply_outbound, to_conf=route_conf, destinations=destinations)
