"""Outbound: a listener on each outbound's address:port (default 127.0.0.1) sending to a
cluster per destination service; the cluster's endpoints come over EDS from the MeshContext.

With mesh mTLS the cluster presents the proxy's workload certificate (SDS), checks the peer's
SPIFFE ID ``spiffe://<mesh>/<destination>`` and sends Kuma's SNI ``<destination>{mesh=<mesh>}``;
policies may set its TLS versions and ciphers (MeshTLS, ``configure_upstream_tls``).
ExternalServices are reached directly (static IPs the control plane resolved, or a DNS
cluster with ``networking.disableHostDNSLookup``), with TLS when they ask for it.

Cross-zone (crosszone.py): a service's endpoints are this zone's instances at priority 0 and,
per other zone that has it, that zone's ingress (weighted by its instance count) at the next
priority, so Envoy keeps traffic local while local instances are healthy. With the Mesh's
``routing.zoneEgress`` the remote part is this zone's egress instead, and ExternalServices are
reached through the egress too (mTLS to it, SNI naming the external service; the egress
originates TLS to the real host).

Routes (MeshHTTPRoute, MeshTCPRoute: policies/meshhttproute.py) may send an outbound's traffic
to other services and to subsets of them (instances carrying tags): each such destination gets
a cluster (``destination_cluster``); a subset's cluster ``<service>-<hash>`` has the service's
settings, only the matching endpoints (this zone's, then the other zones' ingresses that have
matching instances, weighted by how many), and with mTLS an SNI carrying the tags, by which a
zone ingress finds those instances. A ``kuma.io/zone`` tag selects by zone: this zone's instances
when it names this zone (whether or not their Dataplanes carry the tag), else that zone's ingresses.

The pieces of an outbound depend only on (destination, the proxy's identity, which policies
match the proxy), so proxies sharing those share the very same messages (``ctx.memo``): one
build and one serialization per round, whatever the number of proxies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds import policies as policy_plugins
from zonemesh.zone_cp.xds import sni as mesh_sni
from zonemesh.zone_cp.xds.context import (
    HTTP_PROTOCOLS,
    LOCALHOST,
    SERVICE_TAG,
    Endpoint,
    MeshContext,
    outbounds,
    services,
    tag_sets,
)
from zonemesh.zone_cp.xds.crosszone import (
    EGRESS_SERVICE,
    external_load_assignment,
    external_secrets,
    external_tls,
    in_subset,
    load_assignment,
    remote_subset,
)
from zonemesh.zone_cp.xds.envoy import (
    Destination,
    OutboundPieces,
    ads_source,
    ca_secret_name,
    common_tls,
    identity_secret_name,
    pack,
    sni,
    socket_address,
    spiffe_id,
)
from zonemesh.zone_cp.xds.generators.common import http_protocol_options
from zonemesh.zone_cp.xds.generators.inbound import ROUTER
from zonemesh.zone_cp.xds.locality import LocalityPlan
from zonemesh.zone_cp.xds.policies import MatchedPolicies, meshhttproute, outbound_signature, upstream_tls_content
from zonemesh.zone_cp.xds.policies.meshretry import TYPE as MESH_RETRY
from zonemesh.zone_cp.xds.policies.meshretry import omit_host_tag_keys
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ResourceSet


@dataclass(frozen=True)
class _Built:
    cluster: cluster_pb2.Cluster
    terminal: listener_components_pb2.Filter
    route: route_pb2.RouteConfiguration | None
    endpoints: bool  # True: the cluster takes its endpoints over EDS
    locality: LocalityPlan | None = None  # how a policy lays the endpoints out (None: the Mesh's default)
    destinations: tuple[Destination, ...] = ()  # where its routes send traffic (their clusters)


def _tls_socket(context: tls_pb2.UpstreamTlsContext) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _mesh_cluster(service: str) -> cluster_pb2.Cluster:
    """An EDS cluster (without the TLS of a source identity: ``_build`` adds it)."""
    cluster = cluster_pb2.Cluster(name=service, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    return cluster


def _split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def external_cluster(
    mesh: str,
    service: str,
    external: Resource,
    resolved: Mapping[str, list[str]] | None = None,
    name: str | None = None,
) -> cluster_pb2.Cluster:
    """A cluster straight to an ExternalService (also the zone egress's upstream side); its TLS
    certificates and key come over SDS (``add_external_secrets``)."""
    net: Mapping[str, Any] = external.spec.get("networking") or {}
    host, port = _split_host_port(str(net.get("address")))
    name = name or service
    cla, dns = external_load_assignment(name, host, port, bool(net.get("disableHostDNSLookup")), resolved or {})
    cluster = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.STRICT_DNS if dns else cluster_pb2.Cluster.STATIC, load_assignment=cla
    )
    if dns:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED  # as the control plane's own lookup
    tls = net.get("tls") or {}
    if tls.get("enabled"):
        cluster.transport_socket.CopyFrom(_tls_socket(external_tls(tls, host, mesh, service)))
    return cluster


def add_external_secrets(ctx: MeshContext, service: str, resources: ResourceSet) -> None:
    """The SDS secrets an ExternalService's cluster refers to (``external_tls``), built once per
    round; a missing Secret fails the proxy's generation with an error naming the field."""
    external = ctx.external_services.get(service)
    if external is None:
        return
    key = ("external-secrets", service)
    secrets = ctx.memo.get(key)
    if secrets is None:
        secrets = ctx.memo[key] = external_secrets(ctx, service, external)
    for secret in secrets:
        resources.add(SECRET, secret.name, secret)


def _build(ctx: MeshContext, service: str, identity: str | None, policies: MatchedPolicies) -> _Built:
    """An outbound's pieces for a proxy of ``identity``: the shared ones (``_shared``), with a
    cluster presenting the identity's certificate and expecting the destination's SPIFFE ID
    (the egress's, for an ExternalService reached through it) when mesh mTLS applies."""
    shared = _shared(ctx, service, policies)
    if ctx.mtls is None or not shared.endpoints:  # no mTLS, or an ExternalService reached directly
        return shared
    server_name = sni(ctx.name, service)

    def build() -> cluster_pb2.Cluster:
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(shared.cluster)
        cluster.transport_socket.CopyFrom(_mesh_tls(ctx, service, identity, server_name, policies))
        return cluster

    # Kept across rounds by what it is built from: the shared cluster's content and what _mesh_tls
    # reads (mesh, destination, identity, SNI, the client-TLS policies' content).
    external = service in ctx.external_services
    tls = upstream_tls_content(policies, ctx.kept.digests)
    key = ("outbound-cluster", ctx.name, service, identity, server_name, _cluster_bytes(ctx, shared), external, tls)
    return replace(shared, cluster=ctx.keep(key, CLUSTER, build))


def _cluster_bytes(ctx: MeshContext, shared: _Built) -> bytes:
    """The shared cluster serialized, once per round (``_build`` keys its callers' clusters by it)."""
    key = ("shared-cluster-bytes", id(shared.cluster))
    found = ctx.memo.get(key)
    if found is None or found[0] is not shared.cluster:
        found = ctx.memo[key] = (shared.cluster, shared.cluster.SerializeToString(deterministic=True))
    return bytes(found[1])


def _mesh_tls(
    ctx: MeshContext, service: str, identity: str | None, server_name: str, policies: MatchedPolicies
) -> base_pb2.TransportSocket:
    if identity is None:
        raise ValueError("mTLS is on but the proxy serves no service to take its identity from")
    peer = EGRESS_SERVICE if service in ctx.external_services else service
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=common_tls(ctx.name, identity, spiffe_id(ctx.name, peer), exact=True), sni=server_name
    )
    if peer == service:  # the egress's side is not MeshTLS's (as in Kuma, ExternalServices are left alone)
        policy_plugins.configure_upstream_tls(context, policies)
    return _tls_socket(context)


def _shared(ctx: MeshContext, service: str, policies: MatchedPolicies) -> _Built:
    """What an outbound to ``service`` is whatever the source's identity: built once per
    (destination, policies configuring outbounds) and shared by every proxy calling it."""
    key = ("outbound-shared", service, outbound_signature(policies))
    built = ctx.memo.get(key)
    if built is None:
        built = ctx.memo[key] = _build_shared(ctx, service, policies)
    assert isinstance(built, _Built)
    return built


def _build_shared(ctx: MeshContext, service: str, policies: MatchedPolicies) -> _Built:
    external = ctx.external_services.get(service)
    protocol = ctx.protocol(service)
    if external is None or ctx.via_egress:
        cluster = _mesh_cluster(service)
    else:
        cluster = external_cluster(ctx.name, service, external, ctx.cross.resolved if ctx.cross else None)
    pieces = OutboundPieces(ctx.name, service, protocol, cluster)
    stat_prefix = service.replace(":", "_")
    if protocol in HTTP_PROTOCOLS:
        pieces.route = route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"), route=route_components_pb2.RouteAction(cluster=service)
        )
        pieces.hcm = hcm_pb2.HttpConnectionManager(stat_prefix=stat_prefix)
    else:
        pieces.tcp_proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=service)

    policy_plugins.configure_outbound(pieces, policies)

    # The destination's own protocol: a MeshTCPRoute forwarding an HTTP service's connections
    # leaves the cluster as other routes to it need it.
    options = http_protocol_options(protocol, pieces.common_http)
    if options is not None:
        cluster.typed_extension_protocol_options[options[0]].CopyFrom(options[1])
    route: route_pb2.RouteConfiguration | None = None
    if pieces.hcm is not None:
        assert pieces.route is not None
        routes = [pieces.route]
        if pieces.routes is not None:
            origins = meshhttproute.origins(policies.get(meshhttproute.TYPE, ()), service)
            routes = [_route(ctx, pieces, own, policies, origins.get(own.name)) for own in pieces.routes]
        route_name = f"outbound:{service}"
        route = route_pb2.RouteConfiguration(
            name=route_name,
            virtual_hosts=[route_components_pb2.VirtualHost(name=service, domains=["*"], routes=routes)],
            validate_clusters={"value": False},
        )
        hcm = pieces.hcm
        hcm.rds.config_source.CopyFrom(ads_source())
        hcm.rds.route_config_name = route_name
        hcm.http_filters.append(ROUTER)
        terminal = listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
        )
    else:
        assert pieces.tcp_proxy is not None
        terminal = listener_components_pb2.Filter(
            name="envoy.filters.network.tcp_proxy", typed_config=pack(pieces.tcp_proxy)
        )
    return _Built(
        cluster,
        terminal,
        route,
        endpoints=external is None or ctx.via_egress,
        destinations=tuple(pieces.destinations),
        locality=pieces.locality,
    )


def _route(
    ctx: MeshContext,
    pieces: OutboundPieces,
    own: route_components_pb2.Route,
    policies: MatchedPolicies,
    origin: str | None,
) -> route_components_pb2.Route:
    """A MeshHTTPRoute route with the route-level settings the other policies put on the
    outbound's template route (timeouts, retries: they apply to every route of the outbound, as
    in Kuma), then those of the policies targeting ``origin``, the MeshHTTPRoute it comes from."""
    assert pieces.route is not None
    route = route_components_pb2.Route()
    route.CopyFrom(pieces.route)
    route.name = own.name
    route.match.CopyFrom(own.match)
    if own.HasField("redirect"):
        route.redirect.SetInParent()  # the action is a redirect: no upstream to time or retry
        route.redirect.CopyFrom(own.redirect)
    else:
        route.route.ClearField("cluster")
        route.route.MergeFrom(own.route)
    route.request_headers_to_add.extend(own.request_headers_to_add)
    route.request_headers_to_remove.extend(own.request_headers_to_remove)
    route.response_headers_to_add.extend(own.response_headers_to_add)
    route.response_headers_to_remove.extend(own.response_headers_to_remove)
    policy_plugins.configure_route(ctx, route, pieces.service, pieces.protocol, policies, origin)
    return route


def host_tag_keys(ctx: MeshContext) -> frozenset[str]:
    """The tags endpoints must carry as metadata this round (MeshRetry's OmitHostsWithTags)."""
    key = ("host-tag-keys",)
    found = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = omit_host_tag_keys(ctx.policies.get(MESH_RETRY, ()))
    assert isinstance(found, frozenset)
    return found


def endpoints(
    ctx: MeshContext, service: str, plan: LocalityPlan | None = None, proxy: Resource | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """The service's endpoints: this zone's dataplanes first, then other zones' ingresses (or
    this zone's egress); an ExternalService reached through the egress has only the egress.
    ``plan`` (from the outbound's policies) lays them out over zones and priorities instead of
    the Mesh's switch; its affinity tags take their values from ``proxy``'s tags."""
    if service in ctx.external_services:
        plan = None  # an ExternalService is in no zone: nothing to lay out by locality
    if plan is not None and proxy is not None:
        plan = plan.for_proxy(tag_sets(proxy))
    key = ("endpoints", service, plan)
    cached = ctx.memo.get(key)
    if cached is None:
        cross = ctx.cross
        local: list[Endpoint] = list(ctx.endpoints.get(service, ()))
        # Other zones are reached through their ingress, which routes by the SNI of mesh mTLS only.
        remote: list[Endpoint] = list(cross.remote.get(service, ())) if cross is not None and ctx.mtls else []
        behind_egress: list[str] = []
        if service in ctx.external_services:
            local, remote = [], []
            if ctx.via_egress and cross is not None:
                remote = list(cross.egress)
        elif remote and ctx.via_egress and cross is not None:
            behind_egress = sorted({e.zone or "" for e in remote})
            remote = list(cross.egress)  # the egress forwards by SNI to the remote ingresses
        # Kuma's Mesh switch: local-first unless the mesh turns locality awareness off explicitly.
        prefer_local = (ctx.mesh.spec.get("routing") or {}).get("localityAwareLoadBalancing") is not False
        zone = cross.zone if cross else ""
        tag_keys = host_tag_keys(ctx)
        # Kept across rounds while what it is built from is alike (the endpoints by equality): a
        # change that moves no endpoint builds and serializes no ClusterLoadAssignment again.
        cached = ctx.memo[key] = ctx.keep(
            ("endpoints", service, zone, prefer_local, tag_keys, plan, tuple(behind_egress)),
            ENDPOINT,
            lambda: load_assignment(
                service, local, remote, zone, prefer_local, tag_keys, plan=plan, behind_egress=behind_egress
            ),
            inputs=(local, remote),
        )
    assert isinstance(cached, endpoint_pb2.ClusterLoadAssignment)
    return cached


def subset_endpoints(
    ctx: MeshContext, dest: Destination, plan: LocalityPlan | None = None, proxy: Resource | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """A subset's endpoints, laid out as ``endpoints`` lays out the whole service's: this zone's
    matching instances, then the other zones' ingresses that have matching instances (weighted
    by how many), or this zone's egress in front of them."""
    if dest.service in ctx.external_services:
        plan = None
    if plan is not None and proxy is not None:
        plan = plan.for_proxy(tag_sets(proxy))
    name = dest.cluster_name
    key = ("subset-endpoints", name, plan)
    cached = ctx.memo.get(key)
    if cached is None:
        cross = ctx.cross
        zone = cross.zone if cross else ""
        wanted = dest.subset
        local = [e for e in ctx.endpoints.get(dest.service, ()) if in_subset(e.tags, zone, wanted)]
        remote = remote_subset(cross, dest.service, wanted) if cross is not None and ctx.mtls else []
        behind_egress: list[str] = []
        if remote and ctx.via_egress and cross is not None:
            behind_egress = sorted({e.zone or "" for e in remote})
            remote = list(cross.egress)  # the egress forwards the subset's SNI to those ingresses
        prefer_local = (ctx.mesh.spec.get("routing") or {}).get("localityAwareLoadBalancing") is not False
        tag_keys = host_tag_keys(ctx)
        cached = ctx.memo[key] = ctx.keep(  # kept across rounds as ``endpoints`` keeps a service's
            ("subset-endpoints", name, zone, prefer_local, tag_keys, plan, tuple(behind_egress)),
            ENDPOINT,
            lambda: load_assignment(
                name, local, remote, zone, prefer_local, tag_keys, plan=plan, behind_egress=behind_egress
            ),
            inputs=(local, remote),
        )
    assert isinstance(cached, endpoint_pb2.ClusterLoadAssignment)
    return cached


def _subset_cluster(
    ctx: MeshContext, built: _Built, dest: Destination, identity: str | None, policies: MatchedPolicies
) -> cluster_pb2.Cluster:
    """The service's cluster for a subset: its name, and with mTLS the SNI naming the tags."""
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(built.cluster)
    cluster.name = dest.cluster_name
    if ctx.mtls is not None and built.endpoints:
        server_name = mesh_sni.encode(dest.service, ctx.name, dest.subset)
        cluster.transport_socket.CopyFrom(_mesh_tls(ctx, dest.service, identity, server_name, policies))
    return cluster


def destination_cluster(
    ctx: MeshContext,
    dest: Destination,
    identity: str | None,
    policies: MatchedPolicies,
    resources: ResourceSet,
    signature: Any = None,
    proxy: Resource | None = None,
) -> str:
    """Add the cluster (with its endpoints and secrets) a route sends ``dest``'s traffic to, built
    as the outbound to its service would be; return its name. ``signature`` identifies
    ``policies`` within the round (default: ``outbound_signature``); ``proxy``'s tags give the
    affinity tags of a locality plan their values."""
    service = dest.service
    key = ("outbound", service, identity, outbound_signature(policies) if signature is None else signature)
    built = ctx.memo.get(key)
    if built is None:
        built = ctx.memo[key] = _build(ctx, service, identity, policies)
    assert isinstance(built, _Built)
    name = dest.cluster_name
    if name == service:
        resources.add(CLUSTER, service, built.cluster)
        if built.endpoints:
            resources.add(ENDPOINT, service, endpoints(ctx, service, built.locality, proxy))
    else:
        subset = ctx.memo.get(("subset-cluster", name, key))
        if subset is None:
            subset = ctx.memo[("subset-cluster", name, key)] = _subset_cluster(ctx, built, dest, identity, policies)
        resources.add(CLUSTER, name, subset)
        if built.endpoints:
            resources.add(ENDPOINT, name, subset_endpoints(ctx, dest, built.locality, proxy))
    if not built.endpoints:
        add_external_secrets(ctx, service, resources)
    elif ctx.mtls is not None and identity is not None:
        resources.require(SECRET, identity_secret_name(identity))
        resources.require(SECRET, ca_secret_name(ctx.name))
    return name


def _outbound_listener(
    name: str, address: str, port: int, terminal: listener_components_pb2.Filter
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[listener_components_pb2.FilterChain(filters=[terminal])],
    )


def generate(ctx: MeshContext, proxy: Resource, policies: MatchedPolicies, resources: ResourceSet) -> None:
    own = services(proxy)
    identity = own[0] if own else None
    signature = outbound_signature(policies)
    for outbound in outbounds(proxy):
        tags = outbound["tags"]  # an outbound by backendRef is refused where Dataplanes enter
        if tags.get("kuma.io/mesh", ctx.name) != ctx.name:
            continue  # another mesh's cross-mesh gateway: generators/crossmesh.py
        service = str(tags[SERVICE_TAG])
        address, port = str(outbound.get("address") or LOCALHOST), int(outbound["port"])

        key = ("outbound", service, identity, signature)
        built = ctx.memo.get(key)
        if built is None:
            built = ctx.memo[key] = _build(ctx, service, identity, policies)
        assert isinstance(built, _Built)

        listener_name = f"outbound:{address}:{port}"
        listener_key = ("listener", listener_name, service, signature)  # no identity in it: shared
        listener = ctx.memo.get(listener_key)
        if listener is None:
            terminal = built.terminal
            # Kept across rounds by its whole content: its name, address and port, and its filter.
            content = (listener_name, address, port, terminal.name, terminal.typed_config.type_url)
            listener = ctx.memo[listener_key] = ctx.keep(
                ("outbound-listener", *content, terminal.typed_config.value),
                LISTENER,
                partial(_outbound_listener, listener_name, address, port, terminal),
            )
        resources.add(LISTENER, listener_name, listener)
        resources.add(CLUSTER, service, built.cluster)
        if built.route is not None:
            resources.add(ROUTE, built.route.name, built.route)
        if built.endpoints:
            resources.add(ENDPOINT, service, endpoints(ctx, service, built.locality, proxy))
        else:
            add_external_secrets(ctx, service, resources)
        if ctx.mtls is not None and built.endpoints and identity is not None:
            resources.require(SECRET, identity_secret_name(identity))
            resources.require(SECRET, ca_secret_name(ctx.name))
        for dest in built.destinations:
            destination_cluster(ctx, dest, identity, policies, resources, signature, proxy)
