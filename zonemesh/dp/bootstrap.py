"""The Envoy bootstrap the agent writes: who the proxy is and where its control plane is.

Everything else (listeners, clusters, routes, endpoints, certificates) arrives over ADS. The
xDS cluster speaks HTTP/2 over TLS and verifies the control plane's certificate against the CA
file (--ca-cert-file, else the system CA bundle), including its name (DNS or IP SAN); the
dataplane token rides in the stream's initial metadata as ``authorization: Bearer <token>``.
Only with ``zonemesh-dp --tls-skip-verify`` (no CA file) is the certificate not verified.

ADS speaks delta (incremental) xDS by default: the control plane sends only the resources that
changed. ``--xds-protocol sotw`` writes State of the World instead (every resource of a type on
every change of it), for comparison or for a control plane that serves only that.

With several control plane addresses (``--cp-address A,B``: replicas of one zone control plane),
the xDS cluster lists each as an endpoint, with its own TLS settings (SNI, and the name or IP its
certificate must hold) chosen per endpoint: when the stream to one ends (it died), Envoy reopens
it to the next endpoint, and meanwhile keeps serving with the configuration it has.

Envoy's admin API listens on a Unix socket, mode 0600, in the agent's work dir (admin.py says
why: ``/config_dump`` shows that token); on TCP 127.0.0.1 only with ``--admin-port``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zonemesh.dp.admin import ADMIN_SOCKET_MODE, ADMIN_TCP_ADDRESS, envoy_socket_path

ADS_CLUSTER = "ads_cluster"
# zonemesh-dp's --xds-protocol: Envoy's ads_config.api_type for each
XDS_PROTOCOLS = {"delta": "DELTA_GRPC", "sotw": "GRPC"}
DEFAULT_XDS_PROTOCOL = "delta"


@dataclass(frozen=True)
class BootstrapParams:
    mesh: str
    name: str
    service: str
    cp_host: str
    cp_port: int
    ca_cert_file: str | None  # None: --tls-skip-verify, Envoy accepts any certificate
    token: str
    admin_port: int | None  # --admin-port: TCP on admin_address; None: the Unix socket admin_socket
    proxy_type: str = "dataplane"
    agent_version: str = ""
    envoy_version: str = ""
    admin_address: str = ADMIN_TCP_ADDRESS
    admin_socket: str | None = None
    xds_protocol: str = DEFAULT_XDS_PROTOCOL  # a key of XDS_PROTOCOLS
    # More (host, port) of the same control plane (its other replicas), after cp_host:cp_port.
    more_cps: tuple[tuple[str, int], ...] = ()

    @property
    def node_id(self) -> str:
        return f"{self.mesh}.{self.name}"

    @property
    def control_planes(self) -> tuple[tuple[str, int], ...]:
        return ((self.cp_host, self.cp_port), *self.more_cps)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def admin_config(p: BootstrapParams) -> tuple[dict[str, Any], dict[str, str]]:
    """Envoy's ``admin`` section and the node metadata that describes it (Kuma's keys)."""
    if (p.admin_port is None) == (p.admin_socket is None):
        raise ValueError("Envoy's admin listens on a Unix socket or a TCP port: give exactly one")
    if p.admin_socket is not None:
        pipe = {"path": envoy_socket_path(Path(p.admin_socket)), "mode": ADMIN_SOCKET_MODE}
        return {"address": {"pipe": pipe}}, {"dataplane.admin.socketPath": p.admin_socket}
    address = {"socket_address": {"address": p.admin_address, "port_value": p.admin_port}}
    return {"address": address}, {"dataplane.admin.port": str(p.admin_port), "dataplane.admin.address": p.admin_address}


def _tls(p: BootstrapParams, host: str) -> dict[str, Any]:
    """The xDS cluster's transport socket towards ``host``: TLS, its certificate verified against
    the CA file and required to name ``host`` (DNS or IP SAN)."""
    san_type = "IP_ADDRESS" if _is_ip(host) else "DNS"
    common: dict[str, Any] = {"alpn_protocols": ["h2"]}
    if p.ca_cert_file is not None:
        # Without a validation context Envoy verifies nothing: only --tls-skip-verify leaves it out.
        common["validation_context"] = {
            "trusted_ca": {"filename": p.ca_cert_file},
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
        }
    tls: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    if not _is_ip(host):
        tls["sni"] = host
    return {"name": "envoy.transport_sockets.tls", "typed_config": tls}


def _endpoint(host: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def _discovery(p: BootstrapParams) -> dict[str, Any]:
    """How the xDS cluster finds the control plane's addresses: STATIC for IPs. One name: LOGICAL_DNS
    (kuma-dp's docs write https://localhost:5678, which may resolve to IPv6 and IPv4 while the
    control plane listens on one: ALL connects to its addresses in turn, Happy Eyeballs, as the
    agent's own call does). Several addresses with a name among them: STRICT_DNS, every address of
    every name an endpoint (LOGICAL_DNS takes one endpoint only)."""
    hosts = [host for host, _ in p.control_planes]
    if all(_is_ip(host) for host in hosts):
        return {"type": "STATIC"}
    if len(hosts) == 1:
        return {"type": "LOGICAL_DNS", "dns_lookup_family": "ALL"}
    return {"type": "STRICT_DNS", "dns_lookup_family": "ALL"}


def _ads_cluster(p: BootstrapParams) -> dict[str, Any]:
    endpoints = [_endpoint(host, port) for host, port in p.control_planes]
    matches: list[dict[str, Any]] = []
    if len(endpoints) > 1:
        # Each replica's TLS settings (SNI, the name its certificate must hold) go with its own
        # endpoint: Envoy picks the transport socket whose match the endpoint's metadata carries.
        for index, ((host, _), endpoint) in enumerate(zip(p.control_planes, endpoints, strict=True)):
            endpoint["metadata"] = {"filter_metadata": {"envoy.transport_socket_match": {"cp": str(index)}}}
            matches.append({"name": f"cp-{index}", "match": {"cp": str(index)}, "transport_socket": _tls(p, host)})
    cluster: dict[str, Any] = {
        "name": ADS_CLUSTER,
        **_discovery(p),
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": ADS_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "10s", "timeout": "5s"},
                    }
                },
            }
        },
        "transport_socket": _tls(p, p.cp_host),
    }
    if matches:
        cluster["transport_socket_matches"] = matches
    return cluster


def build_bootstrap(p: BootstrapParams) -> dict[str, Any]:
    admin, admin_metadata = admin_config(p)
    if p.xds_protocol not in XDS_PROTOCOLS:
        raise ValueError(f"xDS protocol {p.xds_protocol!r}: choose among {', '.join(XDS_PROTOCOLS)}")
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {
            "id": p.node_id,
            "cluster": p.service,
            "metadata": {
                "proxyType": p.proxy_type,
                **admin_metadata,
                "version": {"zonemeshDp": {"version": p.agent_version}, "envoy": {"version": p.envoy_version}},
            },
        },
        "admin": admin,
        "dynamic_resources": {
            "ads_config": {
                "api_type": XDS_PROTOCOLS[p.xds_protocol],
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {"cluster_name": ADS_CLUSTER},
                        "initial_metadata": [{"key": "authorization", "value": f"Bearer {p.token}"}],
                    }
                ],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {"clusters": [_ads_cluster(p)]},
    }
