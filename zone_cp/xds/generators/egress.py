"""Zone egress: the one way out of the zone for meshes with ``routing.zoneEgress: true``.

One listener on the egress's ``networking.address:port`` with a TLS inspector; per mesh with
mTLS, filter chains by the SNI the proxies of this zone send (``sni.py``):

- a service of another zone (``service{mesh=<mesh>}``): the TLS bytes are passed through
  untouched to the remote zones' ingresses that advertise it (weighted by their instances,
  one locality per zone), so mTLS stays end to end between the two proxies; a
  MeshLoadBalancingStrategy selecting every sidecar orders those zones (``egress_locality``);
  likewise a subset the mesh's routes send to (``service{...tags...,mesh=<mesh>}``), to the
  ingresses that have instances of it;
- an ExternalService (``<its kuma.io/service>{mesh=<mesh>}``): the egress terminates the
  proxy's mTLS with its own certificate for the mesh (``spiffe://<mesh>/zone-egress``,
  requiring a client certificate of the mesh CA), checks MeshTrafficPermission for the caller's
  SPIFFE ID (the policies' ``egress`` hooks, with the policies selecting the external service as
  if it were a proxy serving it: ``Mesh``, ``MeshSubset`` on its tags, ``MeshService`` with its
  name), then connects to the real host,
  originating TLS when ``networking.tls.enabled`` asks for it.
"""

from __future__ import annotations

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.targetref import DATAPLANE, top_level
from zonemesh.zone_cp.xds import sni
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.crosszone import (
    EGRESS_SERVICE,
    ZoneContext,
    external_secrets,
    load_assignment,
    remote_subset,
)
from zonemesh.zone_cp.xds.envoy import InboundPieces, ca_secret_name, pack, sds, spiffe_id
from zonemesh.zone_cp.xds.generators.ingress import (
    eds_cluster,
    listener_address,
    routed_subsets,
    sni_chain,
    sni_listener,
    stat_prefix,
)
from zonemesh.zone_cp.xds.generators.outbound import external_cluster
from zonemesh.zone_cp.xds.policies import EGRESS_TYPES, configure_egress, egress_locality
from zonemesh.zone_cp.xds.policies.matching import matched
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, SECRET, ResourceSet

log = structlog.get_logger(__name__)


def egress_secret_name(mesh: str) -> str:
    """The egress serves several meshes, so its identity secret is named per mesh."""
    return f"identity_cert:secret:{EGRESS_SERVICE}:{mesh}"


def _downstream_tls(mesh: str) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds(egress_secret_name(mesh))],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.URI,
                        matcher=string_pb2.StringMatcher(prefix=f"spiffe://{mesh}/"),
                    )
                ]
            ),
            validation_context_sds_secret_config=sds(ca_secret_name(mesh)),
        ),
    )
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common, require_client_certificate={"value": True})
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _secrets(zctx: ZoneContext, mesh: str, resources: ResourceSet) -> None:
    cert = zctx.egress_certs.get(mesh)
    if cert is None:
        raise ValueError(f"no {spiffe_id(mesh, EGRESS_SERVICE)} certificate for the egress in mesh {mesh!r}")
    resources.add(
        SECRET,
        egress_secret_name(mesh),
        secret_pb2.Secret(
            name=egress_secret_name(mesh),
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=cert.cert_pem),
                private_key=base_pb2.DataSource(inline_bytes=cert.key_pem),
            ),
        ),
    )
    resources.add(
        SECRET,
        ca_secret_name(mesh),
        secret_pb2.Secret(
            name=ca_secret_name(mesh),
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=cert.ca_pem)
            ),
        ),
    )


def permissions(mctx: MeshContext, service: str, external: Resource) -> list[listener_components_pb2.Filter]:
    """The filters guarding an ExternalService on the egress (who may call it): the ``egress``
    hooks of the policies selecting the service as if it were a proxy serving it."""
    tags = dict(external.spec.get("tags") or {})
    as_proxy = Resource(
        type="Dataplane",
        name=f"external:{service}",
        mesh=mctx.name,
        spec={"networking": {"inbound": [{"port": 1, "tags": tags}]}},
    )
    pieces = InboundPieces(
        mctx.name,
        service,
        "tcp",
        mctx.mtls,
        cluster_pb2.Cluster(),  # scratch: the chain's cluster is the external service's
        tcp_proxy=tcp_proxy_pb2.TcpProxy(),  # scratch: the chain's TCP proxy is sni_chain's
        stat_prefix=stat_prefix("egress", mctx.name, service),
    )
    # A Dataplane targetRef selects Dataplanes, never an ExternalService (as Kuma's egress matching).
    configure_egress(
        pieces,
        {t: [p for p in matched(mctx, as_proxy, t) if top_level(p.spec)["kind"] != DATAPLANE] for t in EGRESS_TYPES},
    )
    return pieces.network_filters


def generate(zctx: ZoneContext, proxy: Resource) -> ResourceSet:
    resources = ResourceSet()
    chains = []
    for mesh, mctx in sorted(zctx.meshes.items()):
        if mctx.mtls is None:
            continue
        cross = mctx.cross
        if cross is not None:
            for service, endpoints in sorted(cross.remote.items()):
                if service in mctx.external_services:
                    continue
                name = sni.encode(service, mesh)
                chains.append(sni_chain(name, name, stat_prefix("egress", mesh, service)))
                resources.add(CLUSTER, name, eds_cluster(name))
                plan = egress_locality(mctx, service)
                resources.add(ENDPOINT, name, load_assignment(name, [], endpoints, zctx.zone, plan=plan))
            for dest in routed_subsets(mctx):
                remote = remote_subset(cross, dest.service, dest.subset)
                if not remote or dest.service in mctx.external_services:
                    continue
                name = sni.encode(dest.service, mesh, dest.subset)
                chains.append(sni_chain(name, name, stat_prefix("egress", mesh, dest.service)))
                resources.add(CLUSTER, name, eds_cluster(name))
                plan = egress_locality(mctx, dest.service)
                resources.add(ENDPOINT, name, load_assignment(name, [], remote, zctx.zone, plan=plan))
        for service, external in sorted(mctx.external_services.items()):
            name = sni.encode(service, mesh)
            try:
                tls_secrets = external_secrets(mctx, service, external)
            except ValueError as exc:
                # The egress serves every mesh: one ExternalService's missing Secret leaves that
                # one unreachable through it (no chain: the caller's handshake fails), not the rest.
                log.error("zone_egress_external_service_skipped", mesh=mesh, service=service, error=str(exc))
                continue
            for secret in tls_secrets:
                resources.add(SECRET, secret.name, secret)
            cluster = external_cluster(mesh, service, external, cross.resolved if cross else None, name=name)
            chain = sni_chain(name, name, stat_prefix("egress", mesh, service))
            chain.transport_socket.CopyFrom(_downstream_tls(mesh))
            filters = [*permissions(mctx, service, external), *chain.filters]
            del chain.filters[:]
            chain.filters.extend(filters)
            chains.append(chain)
            resources.add(CLUSTER, name, cluster)
        if mctx.external_services:
            _secrets(zctx, mesh, resources)
    if chains:
        address, port = listener_address(proxy)
        name = f"inbound:{address}:{port}"
        resources.add(LISTENER, name, sni_listener(name, address, port, chains))
    return resources
