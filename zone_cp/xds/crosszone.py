"""Where traffic for another zone (or outside the mesh) goes: remote ingresses and the local egress.

Pure functions over the ZoneIngress and ZoneEgress resources this zone holds (its own, and
the other zones' ingresses that global pushed here):

- ``remote_endpoints``: per service of a mesh, one endpoint per *remote* zone ingress that
  advertises it, at the ingress's advertised address and weighted by its instance count;
  ``remote_groups`` the same per group of instances with the same tags, from which
  ``remote_subset`` picks the ingresses that have instances of a subset (routes to a subset);
- ``egress_endpoints``: this zone's egresses, where a mesh with ``routing.zoneEgress: true``
  sends its cross-zone and external traffic instead.

An ingress's zone is its ``zone`` field (set by the zone control plane that registered it),
else its ``zonemesh.io/zone`` label (set by KDS). Only proxies that are ``online`` (their
ZoneIngressInsight/ZoneEgressInsight has an open subscription) are given to these functions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from zonemesh.shared.resources.model import ZONE_LABEL, Resource
from zonemesh.zone_cp.xds.context import SERVICE_TAG, Endpoint, MeshContext, WorkloadCert
from zonemesh.zone_cp.xds.datasource import envoy_data_source
from zonemesh.zone_cp.xds.envoy import external_ca_secret_name, external_cert_secret_name, sds, socket_address
from zonemesh.zone_cp.xds.locality import LocalityPlan, compact, local_groups, zone_priorities

log = structlog.get_logger(__name__)

ZONE_TAG = "kuma.io/zone"
ZONE_INGRESS = "ZoneIngress"
ZONE_EGRESS = "ZoneEgress"
# The identity (kuma.io/service) a zone egress presents to proxies of a mesh for external services.
EGRESS_SERVICE = "zone-egress"


def proxy_zone(res: Resource) -> str:
    return str(res.spec.get("zone") or res.labels.get(ZONE_LABEL) or "")


def _networking(res: Resource) -> Mapping[str, Any]:
    value = res.spec.get("networking")
    return value if isinstance(value, Mapping) else {}


def advertised(ingress: Resource) -> tuple[str, int] | None:
    """The address other zones dial: advertisedAddress:advertisedPort, else address:port."""
    net = _networking(ingress)
    address = net.get("advertisedAddress") or net.get("address")
    port = net.get("advertisedPort") or net.get("port")
    if not address or not port:
        return None
    return str(address), int(port)


def is_online(insight: Resource | None) -> bool:
    """A zone proxy is online while the last xDS subscription in its insight is open."""
    subscriptions = insight.spec.get("subscriptions") if insight is not None else None
    last = subscriptions[-1] if isinstance(subscriptions, list) and subscriptions else None
    return isinstance(last, Mapping) and not last.get("disconnectTime")


def online(proxies: Iterable[Resource], insights: Iterable[Resource]) -> list[Resource]:
    """The zone proxies (ZoneIngress/ZoneEgress) whose insight of the same name says online.

    Without an insight a proxy has never held an xDS stream: not a place to send traffic. A
    killed ingress keeps its ZoneIngress (nobody unregistered it) but its stream closes, so
    other zones stop using it as soon as the closed subscription reaches them.
    """
    by_name = {i.name: i for i in insights}
    return [p for p in proxies if is_online(by_name.get(p.name))]


def remote_endpoints(zone: str, mesh: str, ingresses: Iterable[Resource]) -> dict[str, list[Endpoint]]:
    """service -> one endpoint per remote ingress advertising it in ``mesh`` (weight: instances).

    Several tag sets of one service behind one ingress add up; endpoints are sorted by zone,
    then ingress name, so that generation is deterministic.
    """
    result: dict[str, list[Endpoint]] = {}
    for ingress in sorted(ingresses, key=lambda r: (proxy_zone(r), r.name)):
        try:
            offered = _offered(zone, mesh, ingress)
        except (AttributeError, TypeError, ValueError) as exc:
            # Ingresses are validated (and a bad one counted) before they get here (zone_cp/xds/usable.py);
            # should one still be malformed, it alone is left out, never the whole cross-zone view.
            log.warning("cross_zone_ingress_skipped", name=ingress.name, mesh=mesh, error=repr(exc))
            continue
        for service, endpoint in offered.items():
            result.setdefault(service, []).append(endpoint)
    return result


def _offered(zone: str, mesh: str, ingress: Resource) -> dict[str, Endpoint]:
    """service -> this remote ingress as its endpoint in ``mesh`` (nothing for this zone's own)."""
    remote_zone = proxy_zone(ingress)
    target = advertised(ingress)
    if not remote_zone or remote_zone == zone or target is None:
        return {}
    weights: dict[str, int] = {}
    tags_of: dict[str, dict[str, str]] = {}
    for entry in ingress.spec.get("availableServices") or []:
        tags = entry.get("tags") or {}
        service = tags.get(SERVICE_TAG)
        instances = int(entry.get("instances") or 0)
        if entry.get("mesh") != mesh or not service or instances <= 0:
            continue
        weights[service] = weights.get(service, 0) + instances
        # Tags every instance group shares (kuma.io/protocol in particular) describe the service.
        known = tags_of.get(service)
        tags_of[service] = dict(tags) if known is None else {k: v for k, v in known.items() if tags.get(k) == v}
    return {
        service: Endpoint(target[0], target[1], tags_of[service], zone=remote_zone, weight=weight)
        for service, weight in weights.items()
    }


def remote_groups(zone: str, mesh: str, ingresses: Iterable[Resource]) -> dict[str, list[Endpoint]]:
    """service -> one endpoint per (remote ingress, group of instances it advertises): the
    ingress's address, the group's tags, the group's instance count as weight."""
    result: dict[str, list[Endpoint]] = {}
    for ingress in sorted(ingresses, key=lambda r: (proxy_zone(r), r.name)):
        remote_zone, target = proxy_zone(ingress), advertised(ingress)
        if not remote_zone or remote_zone == zone or target is None:
            continue
        for entry in ingress.spec.get("availableServices") or []:
            if not isinstance(entry, Mapping):
                continue
            tags = entry.get("tags") or {}
            service, instances = tags.get(SERVICE_TAG), entry.get("instances") or 0
            if entry.get("mesh") != mesh or not service or not isinstance(instances, int) or instances <= 0:
                continue
            result.setdefault(str(service), []).append(
                Endpoint(target[0], target[1], dict(tags), zone=remote_zone, weight=instances)
            )
    return result


def in_subset(tags: Mapping[str, str], zone: str | None, wanted: Mapping[str, str]) -> bool:
    """Are instances with ``tags`` in zone ``zone`` part of the subset ``wanted``? A
    ``kuma.io/zone`` in ``wanted`` is matched against the instances' zone when their tags do not
    say it (zonemesh does not add that tag to Dataplanes, Kuma does)."""
    for key, value in wanted.items():
        have = tags.get(key) if key != ZONE_TAG else (tags.get(ZONE_TAG) or zone)
        if have != value:
            return False
    return True


def remote_subset(cross: CrossZone, service: str, wanted: Mapping[str, str]) -> list[Endpoint]:
    """One endpoint per remote ingress that has instances of the subset ``wanted`` of
    ``service``, weighted by how many (an ingress serves a subset by the SNI naming its tags)."""
    weights: dict[tuple[str, int, str | None], int] = {}
    for group in cross.remote_groups.get(service, ()):
        if in_subset(group.tags, group.zone, wanted):
            key = (group.address, group.port, group.zone)
            weights[key] = weights.get(key, 0) + group.weight
    return [Endpoint(address, port, {}, zone=zone, weight=weight) for (address, port, zone), weight in weights.items()]


def egress_endpoints(zone: str, egresses: Iterable[Resource]) -> list[Endpoint]:
    """This zone's egresses (address:port), sorted by name."""
    result = []
    for egress in sorted(egresses, key=lambda r: r.name):
        net = _networking(egress)
        egress_zone = proxy_zone(egress)
        if egress_zone and egress_zone != zone:
            continue
        if net.get("port"):
            result.append(Endpoint(str(net.get("address") or "127.0.0.1"), int(net["port"]), {}, zone=zone))
    return result


@dataclass(frozen=True)
class CrossZone:
    """What one mesh's generation needs to know beyond the zone: filled by the reconciler."""

    zone: str = ""
    remote: Mapping[str, list[Endpoint]] = field(default_factory=dict)  # service -> remote ingresses
    egress: list[Endpoint] = field(default_factory=list)  # this zone's egresses
    resolved: Mapping[str, list[str]] = field(default_factory=dict)  # ExternalService host -> IPs
    remote_groups: Mapping[str, list[Endpoint]] = field(default_factory=dict)  # per group of instances

    @classmethod
    def build(
        cls,
        zone: str,
        mesh: str,
        ingresses: Iterable[Resource] = (),
        egresses: Iterable[Resource] = (),
        resolved: Mapping[str, list[str]] | None = None,
    ) -> CrossZone:
        ingresses = list(ingresses)
        return cls(
            zone,
            remote_endpoints(zone, mesh, ingresses),
            egress_endpoints(zone, egresses),
            resolved or {},
            remote_groups(zone, mesh, ingresses),
        )


# --- Envoy endpoints ------------------------------------------------------------------------


def _lb_endpoint(
    endpoint: Endpoint, weighted: bool, tag_keys: frozenset[str] = frozenset()
) -> endpoint_components_pb2.LbEndpoint:
    lb = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(endpoint.address, endpoint.port))
    )
    if weighted:
        lb.load_balancing_weight.value = max(1, endpoint.weight)
    tags = sorted((k, v) for k, v in endpoint.tags.items() if k in tag_keys)
    if tags:  # what Envoy's load balancer (and MeshRetry's OmitHostsWithTags) reads of a host
        lb_metadata = lb.metadata.filter_metadata["envoy.lb"]
        for key, value in tags:
            lb_metadata.fields[key].string_value = str(value)
    return lb


def zone_groups(endpoints: Iterable[Endpoint], priority: int) -> list[endpoint_components_pb2.LocalityLbEndpoints]:
    """One locality per zone, at ``priority``; hosts weighted by instances, zones by their sum."""
    by_zone: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_zone.setdefault(endpoint.zone or "", []).append(endpoint)
    groups = []
    for zone, members in sorted(by_zone.items()):
        group = endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(zone=zone),
            lb_endpoints=[_lb_endpoint(e, weighted=True) for e in members],
            priority=priority,
        )
        group.load_balancing_weight.value = sum(max(1, e.weight) for e in members)
        groups.append(group)
    return groups


def load_assignment(
    name: str,
    local: list[Endpoint],
    remote: list[Endpoint],
    zone: str = "",
    prefer_local: bool = True,
    tag_keys: frozenset[str] = frozenset(),
    plan: LocalityPlan | None = None,
    behind_egress: Sequence[str] = (),
) -> endpoint_pb2.ClusterLoadAssignment:
    """Local endpoints at priority 0, remote ones (ingresses or the egress) at the next priority.

    Envoy sends everything to the lowest priority with healthy hosts: remote zones take traffic
    only when this zone has no (healthy) instance, as Kuma's default locality awareness does.
    With ``prefer_local=False`` (the Mesh sets ``routing.localityAwareLoadBalancing: false``)
    every zone shares priority 0 and traffic spreads by instance count across zones.
    Priorities start at 0 whatever is present (Envoy wants no gap). Local endpoints carry their
    tags named in ``tag_keys`` as ``envoy.lb`` metadata.

    ``plan``: a MeshLoadBalancingStrategy's locality awareness for this destination (locality.py),
    which replaces the Mesh's switch. ``behind_egress``: ``remote`` is this zone's egress, in
    front of these zones (the plan decides whether traffic may go there at all).
    """
    if plan is not None:
        prefer_local = plan.prefer_local
        if plan.grouped:
            return _planned(name, local, remote, zone, plan, behind_egress, tag_keys)
    groups = []
    if local or not remote:
        weighted = bool(remote) and not prefer_local  # instance weights only mean something beside remote ones
        groups.append(
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[_lb_endpoint(e, weighted, tag_keys) for e in local]
            )
        )
        if zone and local:
            groups[0].locality.zone = zone
    groups.extend(zone_groups(remote, priority=1 if local and prefer_local else 0))
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=groups)


def _planned(
    name: str,
    local: list[Endpoint],
    remote: list[Endpoint],
    zone: str,
    plan: LocalityPlan,
    behind_egress: Sequence[str],
    tag_keys: frozenset[str] = frozenset(),
) -> endpoint_pb2.ClusterLoadAssignment:
    """``localZone``/``crossZone`` given: this zone at priority 0 (in affinity sub-localities),
    other zones where the failover rules put them, the rest nowhere (locality.py)."""
    local_parts = sorted(local_groups(local, plan.affinity), key=lambda part: part[0])
    by_zone: dict[str, list[Endpoint]] = {}
    if behind_egress:
        # The egress forwards to the zones behind it: used when the rules admit one of them.
        admitted = zone_priorities(zone, behind_egress, plan.failover)
        priorities = {zone: min(admitted.values())} if admitted and remote else {}
        by_zone[zone] = remote
    else:
        for endpoint in remote:
            by_zone.setdefault(endpoint.zone or "", []).append(endpoint)
        priorities = zone_priorities(zone, by_zone, plan.failover)
    ranks = compact([0] * bool(local_parts) + list(priorities.values()))
    groups: list[endpoint_components_pb2.LocalityLbEndpoints] = []
    for sub_zone, weight, members in local_parts:
        group = endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(zone=zone, sub_zone=sub_zone),
            lb_endpoints=[_lb_endpoint(e, False, tag_keys) for e in members],
        )
        if plan.weighted_localities:
            group.load_balancing_weight.value = weight
        groups.append(group)
    for other, priority in sorted(priorities.items(), key=lambda item: (item[1], item[0])):
        groups.extend(zone_groups(by_zone[other], ranks[priority]))
    if not groups:
        groups.append(endpoint_components_pb2.LocalityLbEndpoints())  # nowhere to go: no host, as without instances
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=groups)
    if plan.overprovisioning_factor is not None:
        cla.policy.overprovisioning_factor.value = plan.overprovisioning_factor
    return cla


def _presents_client_cert(tls: Mapping[str, Any]) -> bool:
    return bool(tls.get("clientCert") and tls.get("clientKey"))


def _verifies_server(tls: Mapping[str, Any]) -> bool:
    mode = str((tls.get("verification") or {}).get("mode") or "Secured")
    return bool(tls.get("caCert")) and mode in ("Secured", "SkipSAN")


def external_tls(tls: Mapping[str, Any], host: str, mesh: str, service: str) -> tls_pb2.UpstreamTlsContext:
    """TLS origination to an ExternalService (``networking.tls``).

    SNI: ``serverName``, else the host. With ``caCert`` the server certificate is verified
    against it and (mode ``Secured``, the default) its SAN against ``verification.subjectAltNames``
    or else the SNI (DNS SAN; IP SAN when it is an address); ``SkipSAN`` checks the CA only,
    ``SkipCA``/``SkipAll`` nothing. ``clientCert``/``clientKey`` are presented when set.
    The certificates and the key come over SDS (``external_secrets``): none is in the cluster.
    """
    verification = tls.get("verification") or {}
    server_name = str(verification.get("serverName") or tls.get("serverName") or host)
    context = tls_pb2.UpstreamTlsContext(sni=server_name)
    context.allow_renegotiation = bool(tls.get("allowRenegotiation", False))
    common = context.common_tls_context
    if _presents_client_cert(tls):
        common.tls_certificate_sds_secret_configs.append(sds(external_cert_secret_name(mesh, service)))
    if _verifies_server(tls):
        combined = common.combined_validation_context
        combined.validation_context_sds_secret_config.CopyFrom(sds(external_ca_secret_name(mesh, service)))
        validation = combined.default_validation_context
        if str(verification.get("mode") or "Secured") == "Secured":
            sans = verification.get("subjectAltNames") or [{"type": "Exact", "value": server_name}]
            for san in sans:
                value = str(san["value"])
                matcher = (
                    string_pb2.StringMatcher(prefix=value)
                    if san.get("type") == "Prefix"
                    else string_pb2.StringMatcher(exact=value)
                )
                san_type = (
                    common_pb2.SubjectAltNameMatcher.IP_ADDRESS
                    if is_ip(value)
                    else common_pb2.SubjectAltNameMatcher.DNS
                )
                validation.match_typed_subject_alt_names.append(
                    common_pb2.SubjectAltNameMatcher(san_type=san_type, matcher=matcher)
                )
    return context


def external_secrets(ctx: MeshContext, service: str, external: Resource) -> list[secret_pb2.Secret]:
    """The SDS secrets ``external_tls`` refers to for ``external`` (serving ``service``), read
    from its DataSources now. Raises MissingSecret naming the field of a Secret that is missing."""
    tls = (external.spec.get("networking") or {}).get("tls") or {}
    if not tls.get("enabled"):
        return []
    where = f"ExternalService {external.name!r} networking.tls"
    secrets = []
    if _presents_client_cert(tls):
        secrets.append(
            secret_pb2.Secret(
                name=external_cert_secret_name(ctx.name, service),
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=envoy_data_source(ctx, tls["clientCert"], f"{where}.clientCert"),
                    private_key=envoy_data_source(ctx, tls["clientKey"], f"{where}.clientKey"),
                ),
            )
        )
    if _verifies_server(tls):
        secrets.append(
            secret_pb2.Secret(
                name=external_ca_secret_name(ctx.name, service),
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=envoy_data_source(ctx, tls["caCert"], f"{where}.caCert")
                ),
            )
        )
    return secrets


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def external_load_assignment(
    name: str, host: str, port: int, disable_dns: bool, resolved: Mapping[str, list[str]]
) -> tuple[endpoint_pb2.ClusterLoadAssignment, bool]:
    """The endpoints of an ExternalService and whether Envoy must resolve them (STRICT_DNS).

    An IP is used as is; a hostname is replaced by the addresses the control plane resolved,
    unless ``disableHostDNSLookup`` asks to leave the name to Envoy's own DNS resolution (or
    the control plane could not resolve it).
    """
    if is_ip(host):
        addresses, dns = [host], False
    elif not disable_dns and resolved.get(host):
        addresses, dns = sorted(resolved[host]), False
    else:
        addresses, dns = [host], True
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=socket_address(a, port)))
        for a in addresses
    ]
    cla = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)]
    )
    return cla, dns


async def resolve_hosts(externals: Iterable[Resource], per_host_seconds: float = 2.0) -> dict[str, list[str]]:
    """host -> IPv4/IPv6 addresses, for ExternalServices that let the control plane resolve them.

    IPv4 addresses when the host has any. Bounded by ``per_host_seconds`` per host; a host that
    does not resolve is left out (Envoy then resolves it itself), and said so in the log.
    """
    loop = asyncio.get_running_loop()
    hosts = set()
    for es in externals:
        net = es.spec.get("networking") or {}
        host = str(net.get("address") or "").rpartition(":")[0].strip("[]")
        if host and not is_ip(host) and not net.get("disableHostDNSLookup"):
            hosts.add(host)
    result: dict[str, list[str]] = {}
    for host in sorted(hosts):
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), per_host_seconds)
        except (OSError, TimeoutError) as exc:
            log.warning("external_service_unresolved", host=host, error=str(exc))
            continue
        addresses = sorted({str(info[4][0]) for info in infos})
        # IPv4 first, as Envoy's V4_PREFERRED: "localhost" is often also ::1, where a server may not listen.
        result[host] = [a for a in addresses if ":" not in a] or addresses
    return result


class CrossZoneViews:
    """The per-mesh CrossZone views of the zone: the zone-proxy reconciler computes them
    (``replace``), the dataplane reconciler reads them (``get``) and follows their changes. Both
    take this object in their constructors: neither is reached into after it was built."""

    def __init__(self) -> None:
        self._views: dict[str, CrossZone] = {}
        self._on_mesh: list[Callable[[str], None]] = []
        self._on_services: list[Callable[[str, set[str]], None]] = []

    def get(self, mesh: str) -> CrossZone | None:
        return self._views.get(mesh)

    def follow(self, on_mesh: Callable[[str], None], on_services: Callable[[str, set[str]], None]) -> None:
        """``on_services(mesh, services)`` when only some services' remote endpoints moved (instances
        coming and going in other zones), else ``on_mesh(mesh)``."""
        self._on_mesh.append(on_mesh)
        self._on_services.append(on_services)

    def replace(self, views: dict[str, CrossZone]) -> None:
        before, self._views = self._views, views
        for mesh in sorted(set(before) | set(views)):
            old, new = before.get(mesh), views.get(mesh)
            if old == new:
                continue
            if (
                old is None
                or new is None
                or (old.zone, old.egress, old.resolved) != (new.zone, new.egress, new.resolved)
            ):
                for on_mesh in self._on_mesh:
                    on_mesh(mesh)
                continue
            services = {s for s in set(old.remote) | set(new.remote) if old.remote.get(s) != new.remote.get(s)}
            for on_services in self._on_services:
                on_services(mesh, services)


# --- what zone proxies (ingress, egress) are generated from -----------------------------------


@dataclass
class ZoneContext:
    """Every mesh of the zone, for the zone proxies, which serve all meshes at once.

    ``meshes`` holds one MeshContext per mesh (this zone's endpoints, the ExternalServices and
    the CrossZone view); ``egress_certs`` the certificate a zone egress presents to the proxies
    of each mesh (identity ``spiffe://<mesh>/zone-egress``) when it terminates their mTLS for
    ExternalServices. A zone ingress gets no certificate at all.
    """

    zone: str
    meshes: Mapping[str, MeshContext]
    egress_certs: Mapping[str, WorkloadCert] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)
