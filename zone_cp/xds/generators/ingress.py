"""Zone ingress: TLS passthrough by SNI from other zones to this zone's instances.

One listener on the ingress's ``networking.address:port`` with a TLS inspector. Per mesh with
mTLS and per service with instances here, a filter chain matches the SNI the calling proxy
sends (``service{mesh=<mesh>}``, see ``sni.py``) and TCP-proxies the still-encrypted bytes to
the service's instances; one more chain per distinct tag set of its instances matches
``service{...tags...,mesh=<mesh>}`` and goes to those instances only, and one per subset the
mesh's routes send to (MeshHTTPRoute / MeshTCPRoute / MeshGatewayRoute backends:
``routed_subsets``) that has instances here (a ``kuma.io/zone`` tag in it names this zone:
``crosszone.in_subset``). The ingress terminates no
TLS and holds no certificate: the mTLS session runs from the calling proxy in the other zone
to the proxy of the instance here, which checks the caller's SPIFFE ID (MeshTrafficPermission).

A mesh without mTLS has no SNI to route by and is not served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds import sni
from zonemesh.zone_cp.xds.context import SERVICE_TAG, Endpoint, MeshContext
from zonemesh.zone_cp.xds.crosszone import ZoneContext, in_subset, load_assignment
from zonemesh.zone_cp.xds.envoy import Destination, ads_source, pack, socket_address
from zonemesh.zone_cp.xds.generators.gateway import MESH_GATEWAY_ROUTE_TYPE, route_destinations
from zonemesh.zone_cp.xds.policies import destinations
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ResourceSet

TLS_INSPECTOR = listener_components_pb2.ListenerFilter(
    name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
)


def stat_prefix(*parts: str) -> str:
    """Envoy stat names: keep them to letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", "_".join(parts))


def listener_address(proxy: Resource) -> tuple[str, int]:
    net = proxy.spec.get("networking") or {}
    return str(net.get("address") or "0.0.0.0"), int(net["port"])


def sni_chain(server_name: str, cluster: str, prefix: str) -> listener_components_pb2.FilterChain:
    """A filter chain matching one SNI, forwarding the TLS bytes untouched to ``cluster``."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=prefix, cluster=cluster)
    chain = listener_components_pb2.FilterChain(
        name=server_name,
        filters=[listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy))],
    )
    chain.filter_chain_match.server_names.append(server_name)
    chain.filter_chain_match.transport_protocol = "tls"
    return chain


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    return cluster


def sni_listener(
    name: str, address: str, port: int, chains: list[listener_components_pb2.FilterChain]
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[TLS_INSPECTOR],
        filter_chains=chains,
    )


def targets(
    mesh: str, service: str, endpoints: list[Endpoint], subsets: Iterable[Mapping[str, str]] = (), zone: str = ""
) -> dict[str, list[Endpoint]]:
    """SNI -> the instances it reaches: the whole service, each distinct tag set of it, and each
    of ``subsets`` (routes' destinations) that has instances here, in ``zone``."""
    result = {sni.encode(service, mesh): endpoints}
    for wanted in subsets:
        members = [e for e in endpoints if in_subset(e.tags, zone, wanted)]
        if members:
            result.setdefault(sni.encode(service, mesh, wanted), members)
    for endpoint in endpoints:
        tags: Mapping[str, str] = {k: v for k, v in endpoint.tags.items() if k != SERVICE_TAG}
        if not tags:
            continue
        try:
            name = sni.encode(service, mesh, tags)
        except sni.SniError:
            continue  # a tag named "mesh": that subset is reachable only as part of the whole service
        result.setdefault(name, [e for e in endpoints if all(e.tags.get(k) == v for k, v in tags.items())])
    return result


def routed_subsets(mctx: MeshContext) -> list[Destination]:
    """The subsets (destinations with tags) the mesh's routes send to, sorted."""
    found = destinations(mctx) | route_destinations(mctx.policies.get(MESH_GATEWAY_ROUTE_TYPE, ()))
    return sorted((d for d in found if d.subset), key=lambda d: d.tags)


def generate(zctx: ZoneContext, proxy: Resource) -> ResourceSet:
    resources = ResourceSet()
    chains = []
    for mesh, mctx in sorted(zctx.meshes.items()):
        if mctx.mtls is None:
            continue
        subsets: dict[str, list[Mapping[str, str]]] = {}
        for dest in routed_subsets(mctx):
            subsets.setdefault(dest.service, []).append(dest.subset)
        for service, endpoints in sorted(mctx.endpoints.items()):
            found = targets(mesh, service, endpoints, subsets.get(service, ()), zctx.zone)
            for server_name, members in sorted(found.items()):
                chains.append(sni_chain(server_name, server_name, stat_prefix("ingress", mesh, service)))
                resources.add(CLUSTER, server_name, eds_cluster(server_name))
                resources.add(ENDPOINT, server_name, load_assignment(server_name, members, [], zctx.zone))
    if chains:
        address, port = listener_address(proxy)
        name = f"inbound:{address}:{port}"
        resources.add(LISTENER, name, sni_listener(name, address, port, chains))
    return resources
