"""Small builders of Envoy messages, and the pieces policies configure before they are packed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from zonemesh.shared.resources.schema import parse_duration
from zonemesh.zone_cp.xds.context import SERVICE_TAG, Mtls
from zonemesh.zone_cp.xds.locality import LocalityPlan

HttpConnectionManager: TypeAlias = hcm_pb2.HttpConnectionManager
TcpProxy: TypeAlias = tcp_proxy_pb2.TcpProxy


def duration(text: str | float) -> duration_pb2.Duration:
    seconds = parse_duration(text) if isinstance(text, str) else float(text)
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=2)


# --- names (Kuma's) ------------------------------------------------------------------------


def identity_secret_name(service: str) -> str:
    return f"identity_cert:secret:{service}"


def ca_secret_name(mesh: str) -> str:
    return f"mesh_ca:secret:{mesh}"


def external_cert_secret_name(mesh: str, service: str) -> str:
    """An ExternalService's client certificate and key (``networking.tls.clientCert/clientKey``)."""
    return f"external_cert:secret:{mesh}:{service}"


def external_ca_secret_name(mesh: str, service: str) -> str:
    """The CA an ExternalService's server certificate is checked against (``networking.tls.caCert``)."""
    return f"external_ca:secret:{mesh}:{service}"


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def sni(mesh: str, service: str) -> str:
    """Kuma's legacy SNI for mesh traffic: ``backend{mesh=default}``."""
    return f"{service}{{mesh={mesh}}}"


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def common_tls(mesh: str, identity: str, peer_san: str, *, exact: bool) -> tls_pb2.CommonTlsContext:
    """Present our workload cert (SDS); validate the peer against the mesh CA and its SPIFFE ID."""
    matcher = string_pb2.StringMatcher(exact=peer_san) if exact else string_pb2.StringMatcher(prefix=peer_san)
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds(identity_secret_name(identity))],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher)
                ]
            ),
            validation_context_sds_secret_config=sds(ca_secret_name(mesh)),
        ),
    )


def http2_options() -> protocol_pb2.Http2ProtocolOptions:
    return protocol_pb2.Http2ProtocolOptions()


# --- pieces policies configure ---------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a route sends traffic: a service, or the subset of its instances carrying tags."""

    service: str
    tags: tuple[tuple[str, str], ...]  # every destination tag (kuma.io/service included), sorted

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> Destination:
        return cls(str(tags[SERVICE_TAG]), tuple(sorted((str(k), str(v)) for k, v in tags.items())))

    @classmethod
    def to(cls, service: str, tags: Mapping[str, str] | None = None) -> Destination:
        return cls.of({**(tags or {}), SERVICE_TAG: service})

    @property
    def subset(self) -> dict[str, str]:
        """The tags narrowing the service (empty: all its instances)."""
        return {k: v for k, v in self.tags if k != SERVICE_TAG}

    @property
    def cluster_name(self) -> str:
        """The service's own (sidecar-shared) cluster, or a subset cluster named by a tag hash."""
        if len(self.tags) == 1:
            return self.service
        digest = hashlib.sha256(repr(self.tags).encode()).hexdigest()[:10]
        return f"{self.service}-{digest}"


@dataclass
class OutboundPieces:
    """One outbound (traffic to ``service``) before packing: policies edit these in place."""

    mesh: str
    service: str
    protocol: str
    cluster: cluster_pb2.Cluster
    common_http: protocol_pb2.HttpProtocolOptions = field(default_factory=protocol_pb2.HttpProtocolOptions)
    tcp_proxy: TcpProxy | None = None
    hcm: HttpConnectionManager | None = None
    route: route_components_pb2.Route | None = None
    # How the endpoints are laid out over zones and priorities (MeshLoadBalancingStrategy's
    # localityAwareness); None: the Mesh's default (crosszone.load_assignment).
    locality: LocalityPlan | None = None
    # Set by the route policies (MeshHTTPRoute): the outbound's routes in place of ``route``,
    # which stays the template the other policies configure (the generator copies what they set
    # there onto each route).
    routes: list[route_components_pb2.Route] | None = None
    # Where the routes (or the TCP proxy's weighted clusters) send traffic besides ``service``:
    # the generator adds their clusters (named ``Destination.cluster_name``).
    destinations: list[Destination] = field(default_factory=list)

    @property
    def is_http(self) -> bool:
        return self.hcm is not None


@dataclass
class InboundPieces:
    """One inbound (traffic to ``service`` on this proxy) before packing; also a builtin gateway
    listener (``service``: the gateway's), and an ExternalService's chain on the zone egress."""

    mesh: str
    service: str
    protocol: str
    mtls: Mtls | None
    cluster: cluster_pb2.Cluster
    tcp_proxy: TcpProxy | None = None
    hcm: HttpConnectionManager | None = None
    route: route_components_pb2.Route | None = None
    # Routes tried before ``route``: copies of it for some callers only (MeshTimeout rules with
    # matches), made by a plugin from ``route`` as it is when that plugin runs.
    caller_routes: list[route_components_pb2.Route] = field(default_factory=list)
    network_filters: list[listener_components_pb2.Filter] = field(default_factory=list)  # before the terminal one
    http_filters: list[hcm_pb2.HttpFilter] = field(default_factory=list)  # before the router
    stat_prefix: str = ""  # of the listener (chain) these pieces become: filters policies add name stats after it
    # TLS versions and ciphers of the inbound's mesh mTLS (an empty message: Envoy's defaults)
    tls_params: common_pb2.TlsParameters = field(default_factory=common_pb2.TlsParameters)

    @property
    def is_http(self) -> bool:
        return self.hcm is not None
