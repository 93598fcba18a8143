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

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from google.protobuf.message import Message
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds import policies as policy_plugins
from zonemesh.zone_cp.xds.context import (
    HTTP_PROTOCOLS,
    LOCALHOST,
    PROTOCOL_TAG,
    SERVICE_TAG,
    MeshContext,
    Mtls,
    PlacedListener,
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
from zonemesh.zone_cp.xds.policies import MatchedPolicies, inbound_content, match_inbound, policy_signature
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, SECRET, ResourceSet

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
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
        terminal = listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm))
    else:
        assert pieces.tcp_proxy is not None
        terminal = listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(pieces.tcp_proxy))
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


def local_cluster_name(service_address: str, service_port: int) -> str:
    """Kuma's name of an inbound's local cluster (the app next to the proxy)."""
    host = "localhost" if service_address == LOCALHOST else service_address
    return f"{host}:{service_port}"


def _direct(
    ctx: MeshContext, service: str, protocol: str, service_address: str, service_port: int, policies: MatchedPolicies
) -> tuple[cluster_pb2.Cluster, listener_pb2.Listener]:
    """An inbound's local cluster and its listener without name or address, built for its app's
    address and port: what placing a template must give, and its way out when it cannot."""
    cluster = _local_cluster(local_cluster_name(service_address, service_port), service_address, service_port)
    pieces = _pieces(ctx, service, protocol, cluster)
    policy_plugins.configure_inbound(pieces, policies)
    options = http_protocol_options(protocol, None)
    if options is not None:
        cluster.typed_extension_protocol_options[options[0]].CopyFrom(options[1])
    # pieces.mtls: the mesh's mTLS, in the mode policies (MeshTLS) may have changed
    template = _listener("", "", 0, _filters(pieces), pieces.mtls, ctx.name, service, pieces.tls_params)
    template.ClearField("address")
    return cluster, template


# The local cluster a template stands for: not a name a real one has (those are host:port with
# a port from 1 to 65535), so placing can check that nothing of the template still names it.
_ANY_APP = "<app>:0"
_ANY_STAT = _ANY_APP.replace(":", "_")
_MARKERS = (_ANY_APP.encode(), _ANY_STAT.encode())


def _names_any_app(filters: Sequence[listener_components_pb2.Filter]) -> bool:
    return any(marker in f.typed_config.value for f in filters for marker in _MARKERS)


@dataclass(frozen=True)
class Template:
    """All of one inbound's config but where it listens and where its app is, with the policies
    selecting it applied, at ``_ANY_APP``: its local cluster; its listener's filter chains without
    filters; the network filters policies add (they name no cluster); the terminal filter's
    message, whose route(s) and stat prefix name the local cluster. Built once per (service,
    protocol, matched policies), kept across rounds while what it is built from is alike
    (``_template``); ``place`` puts it at a proxy's ports. Never changed once built: placing copies."""

    service: str
    protocol: str
    policies: MatchedPolicies
    cluster: cluster_pb2.Cluster
    listener: listener_pb2.Listener
    network_filters: tuple[listener_components_pb2.Filter, ...]
    hcm: hcm_pb2.HttpConnectionManager | None  # complete (routes, HTTP filters), or ...
    tcp_proxy: tcp_proxy_pb2.TcpProxy | None  # ... a TCP proxy
    key: tuple[object, ...]
    cluster_bytes: bytes  # ``cluster`` serialized: the same for every service whose policies leave it alike
    direct: bool  # a policy named the local cluster where placing does not look: build it per app
    # A digest of all placing reads of it (cluster, listener, filters, terminal message): a
    # listener placed in an earlier round from a template of the same content at the same
    # addresses and ports is the same (``place``, ``MeshContext.placed``).
    fingerprint: bytes


def _template(ctx: MeshContext, service: str, protocol: str, policies: MatchedPolicies) -> Template:
    key = ("inbound-template", service, protocol, policy_signature(policies))
    built = ctx.memo.get(key)
    if built is None:
        # Kept across rounds by what it is built from (``ctx.templates``, kept by the reconciler):
        # its mesh's name and mTLS, the service, its protocol and what the inbound hooks read of
        # the policies. A change of what inbounds do not read (a mesh-wide outbound timeout)
        # builds no template again.
        content = (ctx.name, ctx.mtls, service, protocol, inbound_content(policies, ctx.kept.digests))
        built = ctx.templates.get(content)
        if built is None:
            built = ctx.templates[content] = _build_template(ctx, service, protocol, policies, key)
        ctx.templates_used.add(content)
        ctx.memo[key] = built
    assert isinstance(built, Template)
    return built


def _build_template(
    ctx: MeshContext, service: str, protocol: str, policies: MatchedPolicies, key: tuple[object, ...]
) -> Template:
    cluster = _local_cluster(_ANY_APP, "", 0)
    pieces = _pieces(ctx, service, protocol, cluster)
    policy_plugins.configure_inbound(pieces, policies)
    options = http_protocol_options(protocol, None)
    if options is not None:
        cluster.typed_extension_protocol_options[options[0]].CopyFrom(options[1])
    filters = _filters(pieces)  # completes pieces.hcm: its route configuration and HTTP filters
    # Its filter chains without filters: placing adds the filters naming the app's cluster.
    listener = _listener("", "", 0, [], pieces.mtls, ctx.name, service, pieces.tls_params)
    listener.ClearField("address")
    network = tuple(filters[:-1])
    cluster_bytes = cluster.SerializeToString(deterministic=True)
    terminal_message = pieces.hcm if pieces.hcm is not None else pieces.tcp_proxy
    assert terminal_message is not None
    return Template(
        service,
        protocol,
        policies,
        cluster,
        listener,
        network,
        pieces.hcm,
        pieces.tcp_proxy,
        key,
        cluster_bytes=cluster_bytes,
        direct=_names_any_app(network),
        fingerprint=_fingerprint(
            cluster_bytes,
            listener.SerializeToString(deterministic=True),
            *(f.SerializeToString(deterministic=True) for f in network),
            HCM.encode() if pieces.hcm is not None else TCP_PROXY.encode(),
            terminal_message.SerializeToString(deterministic=True),
        ),
    )


def _fingerprint(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _terminal(template: Template, cluster_name: str) -> listener_components_pb2.Filter:
    """The template's terminal filter naming ``cluster_name``: the route(s) to the local cluster
    (policies may have added copies for some callers) and the stat prefix derived from it."""
    stat = cluster_name.replace(":", "_")
    if template.hcm is not None:
        hcm = hcm_pb2.HttpConnectionManager()
        hcm.CopyFrom(template.hcm)
        if hcm.stat_prefix == _ANY_STAT:
            hcm.stat_prefix = stat
        for host in hcm.route_config.virtual_hosts:
            for route in host.routes:
                if route.HasField("route") and route.route.cluster == _ANY_APP:
                    route.route.cluster = cluster_name
        return listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm))
    assert template.tcp_proxy is not None
    tcp = tcp_proxy_pb2.TcpProxy()
    tcp.CopyFrom(template.tcp_proxy)
    if tcp.cluster == _ANY_APP:
        tcp.cluster = cluster_name
    if tcp.stat_prefix == _ANY_STAT:
        tcp.stat_prefix = stat
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(tcp))


def _local_cluster_at(
    ctx: MeshContext, template: Template, name: str, service_address: str, service_port: int
) -> cluster_pb2.Cluster:
    """The template's local cluster for an app at ``service_address:service_port``. Inbounds of
    other services whose policies leave their local cluster alike get the very same message
    (serialized once per round): the key is the template cluster's content."""
    key = ("inbound-cluster", template.cluster_bytes, service_address, service_port)
    cluster = ctx.memo.get(key)
    if cluster is None:
        cluster = ctx.memo[key] = cluster_pb2.Cluster()
        cluster.CopyFrom(template.cluster)
        cluster.name = name
        assignment = cluster.load_assignment
        assignment.cluster_name = name
        app = assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        app.address, app.port_value = service_address, service_port
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster


def _kept_local_cluster(
    ctx: MeshContext, template: Template, before: PlacedListener, service_address: str, service_port: int
) -> cluster_pb2.Cluster:
    """The local cluster ``_local_cluster_at`` gives, as placed in an earlier round with the kept
    listener ``before``: its bytes parsed back (not built nor serialized again), unless this round
    has it already (another proxy whose app is at the same place)."""
    key = ("inbound-cluster", template.cluster_bytes, service_address, service_port)
    cluster = ctx.memo.get(key)
    if cluster is None:
        cluster = ctx.memo[key] = cluster_pb2.Cluster.FromString(before.cluster_data[before.cluster_offset :])
        ctx.encoded[id(cluster)] = (cluster, before.cluster_data, before.cluster_version)
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster


def _at(
    ctx: MeshContext, template: Template, service_address: str, service_port: int
) -> tuple[cluster_pb2.Cluster, list[listener_components_pb2.Filter], bool]:
    """The template's local cluster and its listener's filters for an app at
    ``service_address:service_port``: the very same as ``_direct`` builds, shared by the proxies
    whose app is there (``ctx.memo``); and whether they were placed from the template (False:
    built for the app directly)."""
    key = ("inbound-at", template.key, service_address, service_port)
    placed = ctx.memo.get(key)
    if placed is None:
        name = local_cluster_name(service_address, service_port)
        terminal = None if template.direct else _terminal(template, name)
        if terminal is None or _names_any_app([terminal]):
            # A policy put the local cluster's name where placing does not look: built for this
            # app directly (correct, only slower).
            cluster, listener = _direct(
                ctx, template.service, template.protocol, service_address, service_port, template.policies
            )
            placed = (cluster, list(listener.filter_chains[0].filters), False)
        else:
            placed = (
                _local_cluster_at(ctx, template, name, service_address, service_port),
                [*template.network_filters, terminal],
                True,
            )
        ctx.memo[key] = placed
    assert isinstance(placed, tuple)
    return placed


def templates(
    ctx: MeshContext, proxy: Resource, policies: MatchedPolicies, resources: ResourceSet
) -> list[tuple[int, Template]]:
    """All of the inbounds' config but where they listen and where their apps are, one
    ``Template`` per inbound for ``place``. Nothing here reads an address or a port, so replicas
    of a service share the result, whatever their ports (generators/__init__.py). Each inbound
    (its index in ``networking.inbound``) gets the policies selecting it (``policies``, those
    selecting the proxy, configure its outbounds)."""
    found: list[tuple[int, Template]] = []
    for index, inbound in enumerate(inbounds(proxy)):
        if inbound.get("state") == "Ignored":
            continue
        tags = inbound.get("tags") or {}
        service = str(tags[SERVICE_TAG])
        protocol = str(tags.get(PROTOCOL_TAG) or "tcp")
        found.append((index, _template(ctx, service, protocol, match_inbound(ctx, proxy, index))))
        if ctx.mtls is not None:
            resources.require(SECRET, identity_secret_name(service))
            resources.require(SECRET, ca_secret_name(ctx.name))
    return found


def place(ctx: MeshContext, proxy: Resource, found: Sequence[tuple[int, Template]], resources: ResourceSet) -> None:
    """The proxy's own inbounds: each template's local cluster at the inbound's app
    (``serviceAddress:servicePort``) and its listener at the inbound's address:port.

    A listener placed in an earlier round from a template of the same content (its fingerprint)
    at the same addresses and ports is that round's bytes (``ctx.placed``, kept by the
    reconciler): a change of what the inbounds do not read (an outbound's policy) builds and
    serializes no proxy's listener again."""
    own = inbounds(proxy)
    held = ctx.placed.get(proxy.name)
    for index, template in found:
        inbound = own[index]
        service_address = str(inbound.get("serviceAddress") or LOCALHOST)
        service_port = int(inbound.get("servicePort") or inbound["port"])
        address, port = inbound_address(proxy, inbound), int(inbound["port"])
        name = f"inbound:{address}:{port}"
        key = (template.fingerprint, service_address, service_port, address, port)
        before = held.get(index) if held is not None else None
        if before is not None and before.key == key:
            # Only templates placed from (not built directly) are kept: so is this one, and its
            # local cluster is the one placed with it then (the key covers the template's cluster).
            cluster = _kept_local_cluster(ctx, template, before, service_address, service_port)
            listener = listener_pb2.Listener.FromString(before.data[before.offset :])
            ctx.encoded[id(listener)] = (listener, before.data, before.version)
        else:
            cluster, filters, from_template = _at(ctx, template, service_address, service_port)
            listener = listener_pb2.Listener()
            listener.CopyFrom(template.listener)  # a C-level copy of the shared filter chains
            for chain in listener.filter_chains:
                chain.filters.extend(filters)
            listener.name = name
            listener.address.CopyFrom(socket_address(address, port))
            if from_template:
                ctx.placing.append((proxy.name, index, key, listener, cluster))
        resources.add(CLUSTER, cluster.name, cluster)
        resources.add(LISTENER, name, listener)


def keep_placed(ctx: MeshContext, encoded: Callable[[str, Message], tuple[bytes, str]]) -> None:
    """Record the listeners this round placed anew in ``ctx.placed``, each with its encoding as the
    round's SnapshotBuilder made it (``encoded``: the same bytes its snapshot holds, so keeping
    them costs no memory of their own), for the next rounds' ``place``."""
    for proxy_name, index, key, listener, cluster in ctx.placing:
        data, version = encoded(LISTENER, listener)
        cluster_data, cluster_version = encoded(CLUSTER, cluster)
        ctx.placed.setdefault(proxy_name, {})[index] = PlacedListener(
            key,
            data,
            version,
            len(data) - listener.ByteSize(),
            cluster_data,
            cluster_version,
            len(cluster_data) - cluster.ByteSize(),
        )
    ctx.placing.clear()


# Templates kept across rounds beyond those the last round used: the stale ones (built from
# policies since changed) are dropped once there are more than this, or than four times as many
# as the round used.
TEMPLATES_KEPT = 1024


def forget_templates(ctx: MeshContext) -> None:
    """After a round: drop the kept templates it did not use, once they are many. A round of some
    proxies only (one service's callers) uses few, so the others stay until the bound."""
    if len(ctx.templates) > max(TEMPLATES_KEPT, 4 * len(ctx.templates_used)):
        for content in [c for c in ctx.templates if c not in ctx.templates_used]:
            del ctx.templates[content]
    ctx.templates_used.clear()
