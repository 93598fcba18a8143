"""Inbound: a listener on each inbound's address:port forwarding to the local service.

HTTP protocols (kuma.io/protocol http, http2, grpc) get an HTTP connection manager, anything
else a TCP proxy. With mesh mTLS the listener terminates TLS with the workload certificate
(SDS) and requires a client certificate from the mesh CA (STRICT); PERMISSIVE adds a TLS
inspector and a plaintext filter chain next to the TLS one. The Mesh's backend sets the mode;
MeshTLS may set another per inbound, and TLS versions and ciphers (``pieces.mtls``,
``pieces.tls_params``). Both chains carry the same filters, MeshTrafficPermission's RBAC
included: a plaintext client is a client without identity, not one that skips the checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds import policies as policy_plugins
from zonemesh.zone_cp.xds.context import (
    HTTP_PROTOCOLS,
    LOCALHOST,
    PROTOCOL_TAG,
    SERVICE_TAG,
    MeshContext,
    Mtls,
    inbound_address,
    inbounds,
)
from zonemesh.zone_cp.xds.envoy import (
    InboundPieces,
    ca_secret_name,
    common_tls,
    identity_secret_name,
    pack,
    socket_address,
)
from zonemesh.zone_cp.xds.generators.common import http_protocol_options
from zonemesh.zone_cp.xds.policies import MatchedPolicies, match_inbound, policy_signature
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, SECRET, ResourceSet

ROUTER = hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))


def _local_cluster(name: str, address: str, port: int) -> cluster_pb2.Cluster:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, port))
    )
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]
        ),
    )


def _pieces(ctx: MeshContext, service: str, protocol: str, cluster: cluster_pb2.Cluster) -> InboundPieces:
    pieces = InboundPieces(ctx.name, service, protocol, ctx.mtls, cluster, stat_prefix=f"inbound_{service}")
    if protocol in HTTP_PROTOCOLS:
        pieces.route = route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=route_components_pb2.RouteAction(cluster=cluster.name),
        )
        pieces.hcm = hcm_pb2.HttpConnectionManager(stat_prefix=cluster.name.replace(":", "_"))
    else:
        pieces.tcp_proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster.name.replace(":", "_"), cluster=cluster.name)
    return pieces


def _filters(pieces: InboundPieces) -> list[listener_components_pb2.Filter]:
    """The listener's network filters, once policies have added theirs."""
    if pieces.hcm is not None:
        assert pieces.route is not None
        hcm = pieces.hcm
        hcm.route_config.CopyFrom(
            route_pb2.RouteConfiguration(
                name=f"inbound:{pieces.service}",
                virtual_hosts=[
                    route_components_pb2.VirtualHost(
                        name=pieces.service, domains=["*"], routes=[*pieces.caller_routes, pieces.route]
                    )
                ],
            )
        )
        hcm.http_filters.extend([*pieces.http_filters, ROUTER])
        terminal = listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
        )
    else:
        assert pieces.tcp_proxy is not None
        terminal = listener_components_pb2.Filter(
            name="envoy.filters.network.tcp_proxy", typed_config=pack(pieces.tcp_proxy)
        )
    return [*pieces.network_filters, terminal]


def _tls(mesh: str, service: str, params: common_pb2.TlsParameters) -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=common_tls(mesh, service, f"spiffe://{mesh}/", exact=False),
        require_client_certificate={"value": True},
    )
    if params.ByteSize():
        context.common_tls_context.tls_params.CopyFrom(params)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _listener(
    name: str,
    address: str,
    port: int,
    filters: list[listener_components_pb2.Filter],
    mtls: Mtls | None,
    mesh: str,
    service: str,
    tls_params: common_pb2.TlsParameters | None = None,
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.INBOUND
    )
    if mtls is None:
        listener.filter_chains.append(listener_components_pb2.FilterChain(filters=filters))
        return listener
    params = tls_params if tls_params is not None else common_pb2.TlsParameters()
    secure = listener_components_pb2.FilterChain(filters=filters, transport_socket=_tls(mesh, service, params))
    if mtls.mode != "PERMISSIVE":
        listener.filter_chains.append(secure)
        return listener
    listener.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
    )
    secure.filter_chain_match.transport_protocol = "tls"
    plain = listener_components_pb2.FilterChain(filters=filters)
    plain.filter_chain_match.transport_protocol = "raw_buffer"
    listener.filter_chains.extend([secure, plain])
    return listener


def _built(
    ctx: MeshContext, service: str, protocol: str, service_address: str, service_port: int, policies: MatchedPolicies
) -> tuple[cluster_pb2.Cluster, listener_pb2.Listener]:
    """The local cluster and a listener without name or address: all an inbound's config but
    where it listens. Replicas of a service share it (``ctx.memo``): built and policy-configured
    once per round instead of once per proxy."""
    key = ("inbound", service, protocol, service_address, service_port, policy_signature(policies))
    built = ctx.memo.get(key)
    if built is None:
        host = "localhost" if service_address == LOCALHOST else service_address
        cluster = _local_cluster(f"{host}:{service_port}", service_address, service_port)
        pieces = _pieces(ctx, service, protocol, cluster)
        policy_plugins.configure_inbound(pieces, policies)
        options = http_protocol_options(protocol, None)
        if options is not None:
            cluster.typed_extension_protocol_options[options[0]].CopyFrom(options[1])
        # pieces.mtls: the mesh's mTLS, in the mode policies (MeshTLS) may have changed
        template = _listener("", "", 0, _filters(pieces), pieces.mtls, ctx.name, service, pieces.tls_params)
        template.ClearField("address")
        built = ctx.memo[key] = (cluster, template)
    return built


def templates(
    ctx: MeshContext, proxy: Resource, policies: MatchedPolicies, resources: ResourceSet
) -> list[tuple[int, listener_pb2.Listener]]:
    """All of the inbounds' config but where they listen: their local clusters go into
    ``resources``; per inbound, (its index in ``networking.inbound``, its listener without name
    or address) is returned for ``place``. Nothing here reads an address the proxy listens on,
    so replicas of a service share the result (generators/__init__.py). Each inbound gets the
    policies selecting it (``policies``, those selecting the proxy, configure its outbounds)."""
    found: list[tuple[int, listener_pb2.Listener]] = []
    for index, inbound in enumerate(inbounds(proxy)):
        if inbound.get("state") == "Ignored":
            continue
        tags = inbound.get("tags") or {}
        service = str(tags[SERVICE_TAG])
        protocol = str(tags.get(PROTOCOL_TAG) or "tcp")
        service_address = str(inbound.get("serviceAddress") or LOCALHOST)
        service_port = int(inbound.get("servicePort") or inbound["port"])
        selecting = match_inbound(ctx, proxy, index)
        cluster, template = _built(ctx, service, protocol, service_address, service_port, selecting)
        resources.add(CLUSTER, cluster.name, cluster)
        if ctx.mtls is not None:
            resources.require(SECRET, identity_secret_name(service))
            resources.require(SECRET, ca_secret_name(ctx.name))
        found.append((index, template))
    return found


def place(proxy: Resource, found: Sequence[tuple[int, listener_pb2.Listener]], resources: ResourceSet) -> None:
    """The proxy's own inbound listeners: each template at its inbound's address:port."""
    own = inbounds(proxy)
    for index, template in found:
        inbound = own[index]
        address, port = inbound_address(proxy, inbound), int(inbound["port"])
        name = f"inbound:{address}:{port}"
        listener = listener_pb2.Listener()
        listener.CopyFrom(template)  # a C-level copy of the shared filter chains
        listener.name = name
        listener.address.CopyFrom(socket_address(address, port))
        resources.add(LISTENER, name, listener)
