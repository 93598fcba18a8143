"""Cross-mesh gateways (seed 004): a proxy in one mesh reaching a builtin gateway of another.

A MeshGateway listener with ``crossMesh: true`` in mesh A is reachable from proxies of every
other mesh. Without transparent proxying a client names it with an outbound tagged with the
gateway's service and mesh::

    outbound:
      - port: 8080
        tags: {kuma.io/service: cross-mesh-gateway, kuma.io/mesh: mesh-a}

The client's outbound sends over mTLS with the client's *own* mesh identity and checks the
gateway's SPIFFE ID ``spiffe://mesh-a/<gateway service>`` against mesh A's CA; the gateway's
cross-mesh listener accepts client certificates of any mesh (``gateway.py``). HTTP requests keep
their Host header: the listener answers ``internal.<gateway>.<mesh-a>.mesh`` (or its hostname).

Generation stays a function of one MeshContext: the reconciler, which sees every mesh, adds
what a mesh needs to know about the others as two context-only kinds (never stored):
``CROSS_MESH_GATEWAY`` (a cross-mesh gateway of another mesh with its endpoints) and
``MESH_CA`` (the roots each mesh with mTLS trusts: its MeshCAState's, else its builtin CA),
built by ``context_resources``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from zonemesh.shared.ca.state import STATE_TYPE, trusted_of
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import LOCALHOST, SERVICE_TAG, MeshContext, networking, outbounds, services
from zonemesh.zone_cp.xds.envoy import (
    ca_secret_name,
    common_tls,
    identity_secret_name,
    pack,
    sni,
    socket_address,
    spiffe_id,
)
from zonemesh.zone_cp.xds.generators.gateway import MESH_CA_TYPE, cross_mesh_host, select_gateway
from zonemesh.zone_cp.xds.generators.inbound import ROUTER
from zonemesh.zone_cp.xds.policies import MatchedPolicies
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, SECRET, ResourceSet

MESH_TAG = "kuma.io/mesh"
CROSS_MESH_GATEWAY = "_CrossMeshGateway"  # context-only: never stored, never served by the API
MESH_CA = MESH_CA_TYPE


# --- what the reconciler puts in a mesh's context (pure) ----------------------------------------------


def _ca_pem(mesh: Resource, secrets: Iterable[Resource], states: Mapping[str, Resource]) -> bytes | None:
    """The roots the mesh's proxies trust: those of its CA state (during a rotation, the old and
    the new CA), else its builtin CA as stored (``<mesh>.ca-builtin-cert-<backend>``)."""
    backend = (mesh.spec.get("mtls") or {}).get("enabledBackend")
    if not backend:
        return None
    state = states.get(mesh.name)
    if state is not None:
        roots: dict[str, str] = {}
        for entry in trusted_of(state.spec):
            roots.update(entry.anchor_pems())
        return "".join(roots.values()).encode() or None
    wanted = f"{mesh.name}.ca-builtin-cert-{backend}"
    for secret in secrets:
        if secret.mesh == mesh.name and secret.name == wanted:
            return base64.b64decode(str(secret.spec.get("data") or ""))
    return None


def _cross_listeners(gateway: Resource) -> list[Mapping[str, Any]]:
    return [item for item in (gateway.spec.get("conf") or {}).get("listeners") or [] if item.get("crossMesh")]


def context_resources(
    mesh_name: str,
    meshes: Iterable[Resource],
    gateways: Iterable[Resource],
    dataplanes: Iterable[Resource],
    secrets: Iterable[Resource],
    states: Iterable[Resource] = (),
) -> list[Resource]:
    """What mesh ``mesh_name`` needs to know about every mesh: their CAs (a cross-mesh listener
    trusts them all; a client checks the gateway's), and the cross-mesh gateways of the others."""
    secrets, dataplanes = list(secrets), list(dataplanes)
    by_mesh = {s.mesh: s for s in states}
    result: list[Resource] = []
    for mesh in sorted(meshes, key=lambda m: m.name):
        pem = _ca_pem(mesh, secrets, by_mesh)
        if pem is not None:
            result.append(Resource(type=MESH_CA, name=mesh.name, mesh=mesh_name, spec={"pem": pem}))
    for gateway in sorted(gateways, key=lambda g: (g.mesh, g.name)):
        listeners = _cross_listeners(gateway)
        if gateway.mesh == mesh_name or not listeners:
            continue
        instances = [
            dp
            for dp in sorted(dataplanes, key=lambda d: d.name)
            if dp.mesh == gateway.mesh and select_gateway([g for g in gateways if g.mesh == dp.mesh], dp) is gateway
        ]
        if not instances:
            continue
        tags = next(iter((s.get("match") or {}) for s in gateway.spec.get("selectors") or []))
        result.append(
            Resource(
                type=CROSS_MESH_GATEWAY,
                name=f"{gateway.mesh}.{gateway.name}",
                mesh=mesh_name,
                spec={
                    "mesh": gateway.mesh,
                    "gateway": gateway.name,
                    "service": str(tags.get(SERVICE_TAG) or ""),
                    "hosts": [str(item.get("hostname") or cross_mesh_host(gateway)) for item in listeners],
                    "ports": [int(item["port"]) for item in listeners],
                    "addresses": [str(networking(dp).get("address")) for dp in instances],
                },
            )
        )
    return result


def cross_mesh_clients(dataplanes: Iterable[Resource]) -> set[tuple[str, str]]:
    """(mesh, name) of the proxies with an outbound to another mesh (regenerated when gateways change)."""
    return {
        (dp.mesh, dp.name)
        for dp in dataplanes
        if any((o.get("tags") or {}).get(MESH_TAG, dp.mesh) != dp.mesh for o in outbounds(dp))
    }


def changes_trust(res: Resource) -> bool:
    """A Mesh (its mTLS backend), its CA state or a builtin CA certificate changed: cross-mesh
    trust changes."""
    return res.type in ("Mesh", STATE_TYPE) or (res.type == "Secret" and ".ca-builtin-cert-" in res.name)


def trusted_cas(ctx: MeshContext) -> list[bytes]:
    return [bytes(r.spec["pem"]) for r in ctx.policies.get(MESH_CA, ())]


# --- the client side ----------------------------------------------------------------------------------


def _target(ctx: MeshContext, mesh: str, service: str) -> Resource | None:
    for item in ctx.policies.get(CROSS_MESH_GATEWAY, ()):
        if item.spec["mesh"] == mesh and item.spec["service"] == service:
            return item
    return None


def _cluster(ctx: MeshContext, target: Resource, port: int, identity: str) -> cluster_pb2.Cluster:
    mesh, service = str(target.spec["mesh"]), str(target.spec["service"])
    name = f"crossmesh:{mesh}:{service}:{port}"
    lb = [
        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=socket_address(a, port)))
        for a in target.spec["addresses"]
    ]
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
        ),
    )
    # Our own mesh identity; the gateway's SPIFFE ID checked against *its* mesh's CA.
    tls = common_tls(ctx.name, identity, spiffe_id(mesh, service), exact=True)
    tls.combined_validation_context.validation_context_sds_secret_config.name = ca_secret_name(mesh)
    context = tls_pb2.UpstreamTlsContext(common_tls_context=tls, sni=sni(mesh, service))
    cluster.transport_socket.CopyFrom(
        base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))
    )
    return cluster


def _listener(name: str, address: str, port: int, cluster: str) -> listener_pb2.Listener:
    route = route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=cluster,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=cluster),
                    )
                ],
            )
        ],
    )
    # The route table is inlined: one cluster, nothing a client would want to change over RDS.
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name.replace(":", "_"), route_config=route, http_filters=[ROUTER])
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
                    )
                ]
            )
        ],
    )
    return listener


def generate(ctx: MeshContext, proxy: Resource, policies: MatchedPolicies, resources: ResourceSet) -> None:
    """Outbounds tagged with another mesh: HTTP to that mesh's cross-mesh gateway over mTLS."""
    foreign = [o for o in outbounds(proxy) if (o.get("tags") or {}).get(MESH_TAG, ctx.name) != ctx.name]
    if not foreign:
        return
    own = services(proxy)
    if ctx.mtls is None or not own:
        raise ValueError("cross-mesh outbounds need mTLS on the client's mesh and a service identity")
    cas = {r.name: bytes(r.spec["pem"]) for r in ctx.policies.get(MESH_CA, ())}
    for outbound in foreign:
        tags = outbound["tags"]
        mesh, service = str(tags[MESH_TAG]), str(tags[SERVICE_TAG])
        target = _target(ctx, mesh, service)
        port = int(outbound["port"])
        address = str(outbound.get("address") or LOCALHOST)
        if target is None:
            continue  # no cross-mesh gateway (yet): no listener, the port stays closed
        if mesh not in cas:
            raise ValueError(f"cross-mesh outbound to {service!r}: mesh {mesh!r} has no CA (mTLS off?)")
        ports: Sequence[int] = target.spec["ports"]
        gateway_port = port if port in ports else int(ports[0])
        cluster = _cluster(ctx, target, gateway_port, own[0])
        listener = _listener(f"outbound:{address}:{port}", address, port, cluster.name)
        resources.add(CLUSTER, cluster.name, cluster)
        resources.add(LISTENER, listener.name, listener)
        name = ca_secret_name(mesh)
        if resources.get(SECRET, name) is None:
            resources.add(
                SECRET,
                name,
                secret_pb2.Secret(
                    name=name,
                    validation_context=common_pb2.CertificateValidationContext(
                        trusted_ca=base_pb2.DataSource(inline_bytes=cas[mesh])
                    ),
                ),
            )
        resources.require(SECRET, identity_secret_name(own[0]))


__all__ = ["CROSS_MESH_GATEWAY", "MESH_CA", "context_resources", "cross_mesh_clients", "generate", "trusted_cas"]
