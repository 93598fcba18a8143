"""Builtin gateway: listeners, routes and clusters from MeshGateway / MeshGatewayRoute (seed 004).

A builtin gateway Dataplane (``networking.gateway.type: BUILTIN``) has no inbound or outbound;
its config comes from the MeshGateway selecting it (the most specific selector wins, then the
name) and the MeshGatewayRoutes selecting that gateway's listeners:

- Listeners on the same port are merged into one Envoy listener (they share the protocol,
  validation makes sure). HTTP/HTTPS listeners become virtual hosts of one route table per port,
  keyed by hostname: Envoy picks exact names before ``*.suffix`` wildcards before ``*``, which
  is Kuma's precedence. HTTPS/TLS listeners terminate TLS with their certificates (mesh Secrets,
  files or inline data, delivered over SDS), one filter chain per hostname matched by SNI.
- A route attaches to a listener when all tags of one of its selectors are among the listener's
  tags (the gateway Dataplane's tags plus the listener's own). Route ``hostnames`` narrow the
  virtual hosts a route joins (and may add more specific ones under a wildcard listener).
- Rules of all attached routes are ordered by match specificity: exact paths, then regular
  expressions, then prefixes (longest first); ties go to the rule with more header, query and
  method conditions. Backends become weighted clusters; a destination with tags beyond
  ``kuma.io/service`` gets a subset cluster of just those endpoints.
- Clusters are the sidecar outbound clusters (``outbound._build``: mTLS, endpoints, and the
  cluster-level policies: MeshCircuitBreaker, MeshHealthCheck, MeshTimeout connect/idle).
- MeshHTTPRoutes / MeshTCPRoutes whose top-level targetRef is the MeshGateway (with ``tags``,
  the listeners carrying them) route the listener ports they attach to instead of the
  MeshGatewayRoutes (as Kuma, which skips MeshGatewayRoutes then): ``_mesh_http_hosts`` turns
  their ``hostnames`` into virtual hosts and their merged rules into routes
  (policies/meshhttproute.py), a TCP port's proxy takes their merged backends.
- A ``crossMesh`` listener requires mTLS from clients of any mesh (the gateway presents its own
  mesh identity and trusts every mesh's CA) and answers ``internal.<gateway>.<mesh>.mesh`` or its
  hostname.

Policies on the gateway (seed 004's table), through the plugins' hooks (``policies/``): the
``gateway`` hook per listener (MeshTimeout ``from``: listener timeouts,
``mesh-gateways-timeout-all-default`` is the default; MeshFaultInjection and MeshRateLimit:
listener filters from ``to: Mesh``), the ``outbound`` hook per route and per cluster (MeshTimeout
and MeshRetry ``to``: route timeouts and retries; MeshCircuitBreaker and MeshHealthCheck and
MeshTimeout connect/idle: the clusters). MeshTrafficPermission is enforced by the destinations'
inbounds against the gateway's identity. With backends of different services one route gets the
``Mesh``-wide (wildcard) retry/timeout conf, as Kuma does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.targetref import top_level
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext, networking, tag_sets
from zonemesh.zone_cp.xds.datasource import content
from zonemesh.zone_cp.xds.envoy import (
    Destination,
    InboundPieces,
    OutboundPieces,
    ads_source,
    identity_secret_name,
    pack,
    sds,
    socket_address,
)
from zonemesh.zone_cp.xds.generators import outbound
from zonemesh.zone_cp.xds.generators.inbound import ROUTER
from zonemesh.zone_cp.xds.policies import (
    ROUTE_TYPES,
    MatchedPolicies,
    configure_gateway_listener,
    configure_outbound,
    configure_route,
    meshhttproute,
    meshtcproute,
)
from zonemesh.zone_cp.xds.policies.matching import MESH_GATEWAY, ordered
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, ROUTE, SECRET, ResourceSet

MESH_GATEWAY_TYPE = "MeshGateway"
MESH_GATEWAY_ROUTE_TYPE = "MeshGatewayRoute"
MESH_CA_TYPE = "_MeshCA"  # context-only, see crossmesh.py
BUILTIN = "BUILTIN"
HTTP_PROTOCOLS = ("HTTP", "HTTPS")
TLS_PROTOCOLS = ("HTTPS", "TLS")
# Every mesh's CA, trusted by cross-mesh listeners (see cross_mesh_ca_secret).
CROSS_MESH_CA_SECRET = "cross_mesh_ca:secret:all"
EDGE_BUFFER_LIMIT = 32768  # bytes per connection: Envoy's edge recommendation

_REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}


# --- which gateway, which listeners, which routes ----------------------------------------------


def is_builtin(dp: Resource) -> bool:
    gateway = networking(dp).get("gateway")
    return isinstance(gateway, Mapping) and gateway.get("type") == BUILTIN


def selector_matches(selectors: Iterable[Mapping[str, Any]], tags: Mapping[str, str]) -> bool:
    """Kuma's ``selectors: [{match: {...}}]``: some selector's tags are all in ``tags``."""
    items = tags.items()
    return any((s.get("match") or {}).items() <= items for s in selectors)


def _specificity(gateway: Resource) -> int:
    return max((len(s.get("match") or {}) for s in gateway.spec.get("selectors") or []), default=0)


def select_gateway(gateways: Iterable[Resource], dp: Resource) -> Resource | None:
    """The MeshGateway configuring a builtin gateway proxy: most specific selector, then name."""
    if not is_builtin(dp):
        return None
    tags = tag_sets(dp)[0]
    found = [g for g in gateways if selector_matches(g.spec.get("selectors") or [], tags)]
    return min(found, key=lambda g: (-_specificity(g), g.name), default=None)


def gateway_policies(ctx: MeshContext, dp: Resource, policies: MatchedPolicies) -> dict[str, list[Resource]]:
    """The matched policies plus those whose top-level targetRef is ``MeshGateway`` naming the
    gateway that selects ``dp`` (by the name it was created with: a MeshGateway from global is
    stored renamed on zones), least specific first (matching's order)."""
    gateway = select_gateway(ctx.policies.get(MESH_GATEWAY_TYPE, ()), dp)
    result: dict[str, list[Resource]] = {}
    for policy_type, matched in policies.items():
        extra = []
        if gateway is not None:
            extra = [
                p
                for p in ctx.policies.get(policy_type, ())
                if (p.spec.get("targetRef") or {}).get("kind") == MESH_GATEWAY
                and (p.spec.get("targetRef") or {}).get("name") == gateway.display_name
            ]
        result[policy_type] = ordered([*matched, *extra])
    return result


@dataclass
class Listener:
    """One MeshGateway listener, with the tags routes match against."""

    index: int
    port: int
    protocol: str
    hostname: str  # "*" when it matches any host
    tags: dict[str, str]
    spec: Mapping[str, Any]
    routes: list[Resource] = field(default_factory=list)
    # MeshHTTPRoutes / MeshTCPRoutes whose top-level targetRef is this gateway (and whose
    # listener tags, if any, are among the listener's), least specific first.
    http_routes: list[Resource] = field(default_factory=list)
    tcp_routes: list[Resource] = field(default_factory=list)

    @property
    def cross_mesh(self) -> bool:
        return bool(self.spec.get("crossMesh"))


def cross_mesh_host(gateway: Resource) -> str:
    return f"internal.{gateway.display_name}.{gateway.mesh}.mesh"


def listeners(gateway: Resource, dp: Resource, routes: Iterable[Resource]) -> dict[int, list[Listener]]:
    """The gateway's listeners by port, each with the routes attached to it (sorted by name)."""
    base = dict(tag_sets(dp)[0])
    by_port: dict[int, list[Listener]] = {}
    ordered = sorted(routes, key=lambda r: r.name)
    for i, spec in enumerate((gateway.spec.get("conf") or {}).get("listeners") or []):
        hostname = str(spec.get("hostname") or "*")
        if spec.get("crossMesh") and hostname == "*":
            hostname = cross_mesh_host(gateway)
        tags = {**base, **(spec.get("tags") or {})}
        item = Listener(i, int(spec["port"]), str(spec["protocol"]), hostname, tags, spec)
        item.routes = [r for r in ordered if selector_matches(r.spec.get("selectors") or [], tags)]
        by_port.setdefault(item.port, []).append(item)
    return dict(sorted(by_port.items()))


# --- hostnames ---------------------------------------------------------------------------------


def host_covers(pattern: str, host: str) -> bool:
    """Does a listener hostname (``*``, ``*.example.com`` or a name) accept ``host``?"""
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return (host.endswith(suffix) and len(host) > len(suffix)) or (host.startswith("*.") and host.endswith(suffix))
    return False


def _domains(host: str) -> list[str]:
    # Host headers carry the port when it is not the default one: match both forms.
    return ["*"] if host == "*" else [host, f"{host}:*"]


def virtual_hosts(items: Sequence[Listener]) -> dict[str, list[tuple[Resource, Mapping[str, Any]]]]:
    """hostname -> the (route, rule) pairs serving it, across the listeners of one port."""
    result: dict[str, list[tuple[Resource, Mapping[str, Any]]]] = {}
    for item in items:
        result.setdefault(item.hostname, [])
    for item in items:
        for route in item.routes:
            http = (route.spec.get("conf") or {}).get("http")
            if not http:
                continue
            names = list(http.get("hostnames") or [])
            if not names:
                targets = [item.hostname]
            else:
                # A route hostname under the listener's joins that host (a more specific one is created).
                targets = [n if host_covers(item.hostname, n) else item.hostname for n in names if _overlap(item, n)]
            for host in dict.fromkeys(targets):
                result.setdefault(host, []).extend((route, rule) for rule in http.get("rules") or [])
    # A host that only a route's hostnames created (under a wildcard listener) also gets that
    # listener's routes without hostnames; a listener's own host keeps just its own routes.
    own = {item.hostname for item in items}
    for item in items:
        for host in [h for h in result if h not in own]:
            if host_covers(item.hostname, host):
                for route in item.routes:
                    http = (route.spec.get("conf") or {}).get("http") or {}
                    if http and not http.get("hostnames"):
                        for rule in http.get("rules") or []:
                            if (route, rule) not in result[host]:
                                result[host].append((route, rule))
    return {host: pairs for host, pairs in result.items() if pairs}


def _overlap(item: Listener, name: str) -> bool:
    return host_covers(item.hostname, name) or host_covers(name, item.hostname)


# --- route matches, filters, backends ---------------------------------------------------------------


def _regex(text: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=text)


def _path_match(path: Mapping[str, Any] | None) -> route_components_pb2.RouteMatch:
    match = route_components_pb2.RouteMatch()
    if not path:
        match.prefix = "/"
        return match
    kind, value = path.get("match") or "EXACT", str(path["value"])
    if kind == "EXACT":
        match.path = value
    elif kind == "REGEX":
        match.safe_regex.CopyFrom(_regex(value))
    elif value == "/" or value.endswith("/"):
        match.prefix = value
    else:
        # Kuma: a prefix matches whole path elements ("/api" matches "/api" and "/api/x", not "/apix").
        match.path_separated_prefix = value
    return match


def route_match(spec: Mapping[str, Any]) -> route_components_pb2.RouteMatch:
    match = _path_match(spec.get("path"))
    if spec.get("method"):
        match.headers.append(
            route_components_pb2.HeaderMatcher(
                name=":method", string_match=string_pb2.StringMatcher(exact=str(spec["method"]))
            )
        )
    for header in spec.get("headers") or []:
        matcher = route_components_pb2.HeaderMatcher(name=str(header["name"]).lower())
        kind = header.get("match") or "EXACT"
        if kind == "EXACT":
            matcher.string_match.exact = str(header["value"])
        elif kind == "REGEX":
            matcher.string_match.safe_regex.CopyFrom(_regex(str(header["value"])))
        elif kind == "PRESENT":
            matcher.present_match = True
        else:  # ABSENT
            matcher.present_match = True
            matcher.invert_match = True
        match.headers.append(matcher)
    for query in spec.get("queryParameters") or []:
        param = route_components_pb2.QueryParameterMatcher(name=str(query["name"]))
        if (query.get("match") or "EXACT") == "REGEX":
            param.string_match.safe_regex.CopyFrom(_regex(str(query["value"])))
        else:
            param.string_match.exact = str(query["value"])
        match.query_parameters.append(param)
    return match


def match_rank(spec: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """Sort key, most specific first: exact < regex < prefix (longest first) < no path; then
    more headers, more query parameters, a method. (A regex after the prefix "/" could never
    match, so regexes go before prefixes.)"""
    path = spec.get("path") or {}
    kind = {"EXACT": 0, "REGEX": 1, "PREFIX": 2}.get(path.get("match") or "EXACT", 3) if path else 3
    return (
        kind,
        -len(str(path.get("value") or "")),
        -len(spec.get("headers") or []),
        -len(spec.get("queryParameters") or []),
        0 if spec.get("method") else 1,
    )


def _header_options(items: Iterable[Mapping[str, Any]], append: bool) -> list[base_pb2.HeaderValueOption]:
    action = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=str(h["name"]).lower(), value=str(h["value"])), append_action=action
        )
        for h in items
    ]


def _prefix_of(match: Mapping[str, Any]) -> str:
    return str((match.get("path") or {}).get("value") or "/")


def _rewrite_path(
    rewrite: Mapping[str, Any], match: Mapping[str, Any]
) -> regex_pb2.RegexMatchAndSubstitute | str | None:
    """A path rewrite as Envoy needs it: a regex substitution, or a plain prefix rewrite."""
    if rewrite.get("replaceFull"):
        return regex_pb2.RegexMatchAndSubstitute(pattern=_regex(".*"), substitution=str(rewrite["replaceFull"]))
    replacement = rewrite.get("replacePrefixMatch")
    if replacement is None:
        return None
    prefix = _prefix_of(match).rstrip("/")
    if str(replacement).endswith("/"):
        # "/prefix" -> "/": "/prefix/rest" must become "/rest", not "//rest".
        return regex_pb2.RegexMatchAndSubstitute(
            pattern=_regex(f"^{re.escape(prefix)}/*"), substitution=str(replacement)
        )
    return str(replacement)


def _apply_filters(
    route: route_components_pb2.Route, filters: Iterable[Mapping[str, Any]], match: Mapping[str, Any]
) -> bool:
    """Apply a rule's filters to an Envoy route; True when the rule redirects (no backends)."""
    for item in filters:
        if "requestHeader" in item:
            spec = item["requestHeader"] or {}
            route.request_headers_to_add.extend(_header_options(spec.get("set") or [], False))
            route.request_headers_to_add.extend(_header_options(spec.get("add") or [], True))
            route.request_headers_to_remove.extend(str(n).lower() for n in spec.get("remove") or [])
        elif "responseHeader" in item:
            spec = item["responseHeader"] or {}
            route.response_headers_to_add.extend(_header_options(spec.get("set") or [], False))
            route.response_headers_to_add.extend(_header_options(spec.get("add") or [], True))
            route.response_headers_to_remove.extend(str(n).lower() for n in spec.get("remove") or [])
        elif "redirect" in item:
            spec = item["redirect"]
            redirect = route.redirect
            redirect.scheme_redirect = str(spec["scheme"])
            redirect.host_redirect = str(spec["hostname"])
            if spec.get("port"):
                redirect.port_redirect = int(spec["port"])
            redirect.response_code = _REDIRECT_CODES.get(int(spec["statusCode"]), redirect.FOUND)
            rewritten = _rewrite_path(spec.get("path") or {}, match)
            if isinstance(rewritten, str):
                redirect.prefix_rewrite = rewritten
            elif rewritten is not None:
                redirect.regex_rewrite.CopyFrom(rewritten)
            return True
        elif "rewrite" in item:
            spec = item["rewrite"]
            rewritten = _rewrite_path(spec, match)
            if isinstance(rewritten, str):
                route.route.prefix_rewrite = rewritten
            elif rewritten is not None:
                route.route.regex_rewrite.CopyFrom(rewritten)
            if spec.get("hostToBackendHostname"):
                route.route.auto_host_rewrite.value = True
    return False


@dataclass
class _Gen:
    """State of one gateway proxy's generation."""

    ctx: MeshContext
    proxy: Resource
    gateway: Resource
    policies: Mapping[str, Sequence[Resource]]
    resources: ResourceSet
    identity: str
    signature: tuple[tuple[str, ...], ...] = ()
    # services a route sends to -> a scratch route holding the policies' route-level settings
    route_templates: dict[frozenset[str], route_components_pb2.Route] = field(default_factory=dict)
    # The policies configuring clusters and routes: the route types decide the gateway's
    # routes themselves (attach_route_policies), they do not configure its destinations.
    outbound_policies: Mapping[str, Sequence[Resource]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbound_policies = {t: p for t, p in self.policies.items() if t not in ROUTE_TYPES}
        self.signature = _signature(self.outbound_policies)

    def cluster(self, dest: Destination) -> str:
        """Add the destination's cluster (and endpoints) and return its name."""
        return outbound.destination_cluster(
            self.ctx, dest, self.identity, self.outbound_policies, self.resources, self.signature, self.proxy
        )

    def route_policies(self, route: route_components_pb2.Route, services: set[str]) -> None:
        """MeshRetry / MeshTimeout ``to`` conf on a route: the destination's when all backends are
        one service, the Mesh-wide (wildcard) entries otherwise. Computed once per set of services."""
        key = frozenset(services)
        template = self.route_templates.get(key)
        if template is None:
            template = self.route_templates[key] = route_components_pb2.Route()
            self._route_policies(template, services)
        if template.route.HasField("retry_policy"):
            route.route.retry_policy.CopyFrom(template.route.retry_policy)
        if template.route.HasField("timeout"):
            route.route.timeout.CopyFrom(template.route.timeout)
        if template.route.HasField("idle_timeout"):
            route.route.idle_timeout.CopyFrom(template.route.idle_timeout)
        if template.route.hash_policy:
            route.route.hash_policy.extend(template.route.hash_policy)

    def _route_policies(self, route: route_components_pb2.Route, services: set[str]) -> None:
        service = next(iter(services)) if len(services) == 1 else ""
        protocol = self.ctx.protocol(service) if service else "http"
        pieces = OutboundPieces(
            self.ctx.name,
            service,
            protocol,
            cluster_pb2.Cluster(),  # scratch: cluster settings come with the destination's cluster
            hcm=hcm_pb2.HttpConnectionManager(),  # scratch: listener timeouts come from `from`
            route=route,
        )
        configure_outbound(pieces, self.outbound_policies)
        assert pieces.hcm is not None
        if pieces.hcm.HasField("stream_idle_timeout"):
            # MeshTimeout `to` http.streamIdleTimeout: per route here, as Kuma does.
            route.route.idle_timeout.CopyFrom(pieces.hcm.stream_idle_timeout)

    def tcp_policies(self, proxy: tcp_proxy_pb2.TcpProxy, services: set[str]) -> None:
        service = next(iter(services)) if len(services) == 1 else ""
        # The cluster is scratch: cluster settings come with the destination's cluster.
        pieces = OutboundPieces(self.ctx.name, service, "tcp", cluster_pb2.Cluster(), tcp_proxy=proxy)
        configure_outbound(pieces, self.outbound_policies)


def _signature(policies: Mapping[str, Sequence[Resource]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.name for p in policies[t]) for t in sorted(policies))


def route_destinations(routes: Iterable[Resource]) -> set[Destination]:
    """Every destination MeshGatewayRoutes send or mirror to (zone ingresses route subsets by SNI)."""
    found: set[Destination] = set()
    for route in routes:
        conf = route.spec.get("conf") or {}
        http_rules = (conf.get("http") or {}).get("rules") or []
        tcp_rules = (conf.get("tcp") or {}).get("rules") or []
        for rule in [*http_rules, *tcp_rules]:
            for backend in rule.get("backends") or []:
                found.add(Destination.of(backend["destination"]))
            for item in rule.get("filters") or []:
                if item.get("mirror"):
                    found.add(Destination.of(item["mirror"]["backend"]["destination"]))
    return found


def _weighted(gen: _Gen, backends: Iterable[Mapping[str, Any]]) -> list[tuple[str, int, str]]:
    """(cluster, weight, service) per backend with a non-zero weight (an omitted weight is 1)."""
    result = []
    for backend in backends:
        weight = int(backend.get("weight", 1))
        if weight <= 0:
            continue
        dest = Destination.of(backend["destination"])
        result.append((gen.cluster(dest), weight, dest.service))
    return result


def _http_routes(gen: _Gen, pairs: Sequence[tuple[Resource, Mapping[str, Any]]]) -> list[route_components_pb2.Route]:
    entries: list[tuple[tuple[int, int, int, int, int], str, int, int, route_components_pb2.Route]] = []
    for r_index, (resource, rule) in enumerate(pairs):
        for m_index, match in enumerate(rule.get("matches") or []):
            route = route_components_pb2.Route(name=f"{resource.name}", match=route_match(match))
            if _apply_filters(route, rule.get("filters") or [], match):
                entries.append((match_rank(match), resource.name, r_index, m_index, route))
                continue
            backends = _weighted(gen, rule.get("backends") or [])
            for item in rule.get("filters") or []:
                mirror = item.get("mirror")
                if mirror:
                    policy = route.route.request_mirror_policies.add(
                        cluster=gen.cluster(Destination.of(mirror["backend"]["destination"]))
                    )
                    percent = float(mirror.get("percentage", 100))
                    policy.runtime_fraction.default_value.CopyFrom(
                        percent_pb2.FractionalPercent(
                            numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
                        )
                    )
            if not backends:
                route.ClearField("route")
                route.direct_response.status = 503
            elif len(backends) == 1:
                route.route.cluster = backends[0][0]
            else:
                for cluster, weight, _ in backends:
                    route.route.weighted_clusters.clusters.add(name=cluster, weight={"value": weight})
            if backends:
                gen.route_policies(route, {service for _, _, service in backends})
            entries.append((match_rank(match), resource.name, r_index, m_index, route))
    entries.sort(key=lambda e: e[:4])
    return [e[4] for e in entries]


def _host_rank(host: str) -> tuple[bool, bool, int, str]:
    """Exact hostnames first, then wildcards (longer first), then ``*``."""
    return (host == "*", host.startswith("*"), -len(host), host)


def _route_config(gen: _Gen, name: str, items: Sequence[Listener]) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=name, validate_clusters={"value": False})
    if any(i.http_routes for i in items):
        hosts = _mesh_http_hosts(gen, items)  # MeshHTTPRoutes replace the port's MeshGatewayRoutes
    else:
        hosts = {host: _http_routes(gen, pairs) for host, pairs in virtual_hosts(items).items()}
    # Envoy matches exact domains, then the longest suffix wildcard, then "*": list them in that order too.
    for host in sorted(hosts, key=_host_rank):
        config.virtual_hosts.append(
            route_components_pb2.VirtualHost(name=host, domains=_domains(host), routes=hosts[host])
        )
    return config


def attach_route_policies(by_port: Mapping[int, Sequence[Listener]], policies: MatchedPolicies) -> None:
    """Attach to each listener the MeshHTTPRoutes and MeshTCPRoutes whose top-level targetRef is
    the gateway, with listener ``tags`` that are all among the listener's (or none)."""

    def attached(policy: Resource, item: Listener) -> bool:
        ref = top_level(policy.spec)
        return ref.get("kind") == MESH_GATEWAY and (ref.get("tags") or {}).items() <= item.tags.items()

    for items in by_port.values():
        for item in items:
            item.http_routes = [p for p in policies.get(meshhttproute.TYPE, ()) if attached(p, item)]
            item.tcp_routes = [p for p in policies.get(meshtcproute.TYPE, ()) if attached(p, item)]


def _mesh_http_hosts(gen: _Gen, items: Sequence[Listener]) -> dict[str, list[route_components_pb2.Route]]:
    """Virtual hosts of a port from the MeshHTTPRoutes of its listeners (Kuma's gateway
    routes). A listener serves its hostname and the route hostnames under it; a virtual host
    gets the rules of every route hostname covering it, the most specific hostname's first
    (``a.example.com`` before ``*.example.com`` before ``*``), then by match specificity. A host
    that a listener with a more specific hostname serves is that listener's alone."""
    hosts: dict[str, list[route_components_pb2.Route]] = {}
    served: list[str] = []
    for item in sorted(items, key=lambda i: _host_rank(i.hostname)):
        by_host = meshhttproute.gateway_rules(item.http_routes)
        wanted: dict[str, None] = {}
        for host in by_host:
            if host_covers(item.hostname, host):
                wanted[host] = None
            elif host_covers(host, item.hostname):
                wanted[item.hostname] = None
        for vhost in sorted(wanted, key=_host_rank):
            if vhost in hosts or any(host_covers(other, vhost) for other in served):
                continue
            groups = sorted((h for h in by_host if host_covers(h, vhost)), key=_host_rank)
            origins = meshhttproute.gateway_origins(item.http_routes)
            hosts[vhost] = _mesh_http_routes(gen, [rule for h in groups for rule in by_host[h]], origins)
        served.append(item.hostname)
    return hosts


def _mesh_http_routes(
    gen: _Gen, rules: Sequence[Mapping[str, Any]], origins: Mapping[str, str]
) -> list[route_components_pb2.Route]:
    routes, destinations = meshhttproute.build_routes(rules, default=None)
    service_of = {dest.cluster_name: dest.service for dest in destinations}
    for dest in destinations:
        gen.cluster(dest)
    for route in routes:
        if not route.HasField("route"):
            continue  # a redirect
        action = route.route
        names = [action.cluster] if action.cluster else [c.name for c in action.weighted_clusters.clusters]
        services = {service_of[n] for n in names}
        gen.route_policies(route, services)
        service = next(iter(services)) if len(services) == 1 else ""
        protocol = gen.ctx.protocol(service) if service else "http"
        configure_route(gen.ctx, route, service, protocol, gen.policies, origins.get(route.name))
    return routes


# --- TLS ---------------------------------------------------------------------------------------------


def _certificate_secret(ctx: MeshContext, source: Mapping[str, Any], name: str, where: str) -> secret_pb2.Secret:
    """A listener certificate (PEM: the certificate chain and its private key) as an SDS secret."""
    pem = content(ctx, source, where)
    if pem is None:  # a file on the gateway's host holding both
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=str(source["file"])),
                private_key=base_pb2.DataSource(filename=str(source["file"])),
            ),
        )
    text = pem.decode(errors="replace")
    key_blocks = re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\s*", text, re.S)
    if not key_blocks or "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{where}: must hold a PEM certificate chain and its private key")
    chain = "".join(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\s*", text, re.S))
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain.encode()),
            private_key=base_pb2.DataSource(inline_bytes=key_blocks[0].encode()),
        ),
    )


def _terminate(gen: _Gen, item: Listener) -> base_pb2.TransportSocket:
    names = []
    for i, source in enumerate((item.spec.get("tls") or {}).get("certificates") or []):
        name = f"gateway-cert:{gen.gateway.display_name}:{item.index}:{i}"
        where = f"MeshGateway {gen.gateway.display_name!r} conf.listeners[{item.index}].tls.certificates[{i}]"
        gen.resources.add(SECRET, name, _certificate_secret(gen.ctx, source, name, where))
        names.append(name)
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(tls_certificate_sds_secret_configs=[sds(n) for n in names])
    )
    if item.protocol == "HTTPS":
        context.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"])
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _cross_mesh_tls(gen: _Gen) -> base_pb2.TransportSocket:
    """The gateway's mesh identity; clients of any mesh, checked against every mesh's CA."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[sds(identity_secret_name(gen.identity))],
            validation_context_sds_secret_config=sds(CROSS_MESH_CA_SECRET),
        ),
        require_client_certificate={"value": True},
    )
    gen.resources.require(SECRET, identity_secret_name(gen.identity))
    if gen.resources.get(SECRET, CROSS_MESH_CA_SECRET) is None:
        cas = [bytes(r.spec["pem"]) for r in gen.ctx.policies.get(MESH_CA_TYPE, ())]
        if not cas:
            raise ValueError("cross-mesh listener: no mesh CA known yet")
        gen.resources.add(SECRET, CROSS_MESH_CA_SECRET, cross_mesh_ca_secret(cas))
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def cross_mesh_ca_secret(ca_pems: Iterable[bytes]) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=CROSS_MESH_CA_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=b"".join(ca_pems))
        ),
    )


# --- listeners -----------------------------------------------------------------------------------------


def _network_limits(item_specs: Iterable[Listener], stat_prefix: str) -> list[listener_components_pb2.Filter]:
    limits = [
        int((i.spec.get("resources") or {}).get("connectionLimit") or 0)
        for i in item_specs
        if (i.spec.get("resources") or {}).get("connectionLimit")
    ]
    if not limits:
        return []
    limit = connection_limit_pb2.ConnectionLimit(stat_prefix=f"connection_limit_{stat_prefix}")
    limit.max_connections.value = min(limits)
    return [listener_components_pb2.Filter(name="envoy.filters.network.connection_limit", typed_config=pack(limit))]


def _hcm(gen: _Gen, route_name: str, stat_prefix: str) -> listener_components_pb2.Filter:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=stat_prefix, use_remote_address={"value": True})
    # Envoy's edge proxy best practices (seed 004: "configured with the Envoy best practices for
    # edge proxies"): normalized paths, no header-name ambiguity, bounded HTTP/2 streams.
    hcm.normalize_path.value = True
    hcm.merge_slashes = True
    hcm.path_with_escaped_slashes_action = hcm.UNESCAPE_AND_REDIRECT
    hcm.common_http_protocol_options.headers_with_underscores_action = protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
    hcm.http2_protocol_options.max_concurrent_streams.value = 100
    hcm.http2_protocol_options.initial_stream_window_size.value = 65536
    hcm.http2_protocol_options.initial_connection_window_size.value = 1048576
    hcm.rds.config_source.CopyFrom(ads_source())
    hcm.rds.route_config_name = route_name
    # Listener-side policies: timeouts (mesh-gateways-timeout-all-default by default), filters.
    listener = InboundPieces(
        gen.ctx.name, gen.identity, "http", None, cluster_pb2.Cluster(), hcm=hcm, stat_prefix=stat_prefix
    )
    configure_gateway_listener(listener, gen.policies)
    hcm.http_filters.extend([*listener.http_filters, ROUTER])
    return listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))


def _tcp_filters(gen: _Gen, items: Sequence[Listener], stat_prefix: str) -> list[listener_components_pb2.Filter]:
    """The TCP proxy, after the filters the listener's policies add (rate limits)."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    tcp_routes = ordered({p.name: p for item in items for p in item.tcp_routes}.values())
    if tcp_routes:  # MeshTCPRoutes replace the port's MeshGatewayRoutes
        conf = meshtcproute.route_conf(tcp_routes, None) or {}
        split = meshhttproute.split((conf.get("default") or {}).get("backendRefs") or [])
        backends = [(gen.cluster(dest), weight, dest.service) for dest, weight in split]
    else:
        rules = [
            rule
            for item in items
            for route in item.routes
            for rule in ((route.spec.get("conf") or {}).get("tcp") or {}).get("rules") or []
        ]
        backends = _weighted(gen, rules[0].get("backends") or []) if rules else []
    if not backends:
        # Nothing routed here yet: a cluster with no endpoints refuses connections cleanly.
        name = f"gateway-blackhole:{gen.gateway.display_name}"
        gen.resources.add(CLUSTER, name, cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC))
        proxy.cluster = name
    elif len(backends) == 1:
        proxy.cluster = backends[0][0]
    else:
        for cluster, weight, _ in backends:
            proxy.weighted_clusters.clusters.add(name=cluster, weight=weight)
    listener = InboundPieces(
        gen.ctx.name, gen.identity, "tcp", None, cluster_pb2.Cluster(), tcp_proxy=proxy, stat_prefix=stat_prefix
    )
    configure_gateway_listener(listener, gen.policies)
    if backends:
        gen.tcp_policies(proxy, {service for _, _, service in backends})
    terminal = listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy))
    return [*listener.network_filters, terminal]


def _listener(gen: _Gen, address: str, port: int, items: Sequence[Listener]) -> listener_pb2.Listener:
    protocol = items[0].protocol
    name = f"{gen.gateway.display_name}:{protocol}:{port}"
    stat_prefix = name.replace(":", "_")
    listener = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.INBOUND
    )
    listener.per_connection_buffer_limit_bytes.value = EDGE_BUFFER_LIMIT
    limits = _network_limits(items, stat_prefix)
    if protocol in HTTP_PROTOCOLS:
        gen.resources.add(ROUTE, name, _route_config(gen, name, items))
        filters = [*limits, _hcm(gen, name, stat_prefix)]
    else:
        filters = [*limits, *_tcp_filters(gen, items, stat_prefix)]
    if any(i.cross_mesh for i in items):
        listener.filter_chains.append(
            listener_components_pb2.FilterChain(filters=filters, transport_socket=_cross_mesh_tls(gen))
        )
    elif protocol in TLS_PROTOCOLS:
        listener.listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
        )
        # Most specific SNI first is not needed (Envoy picks exact, then wildcard, then none).
        for item in sorted(items, key=lambda i: i.hostname):
            chain = listener_components_pb2.FilterChain(filters=filters, transport_socket=_terminate(gen, item))
            if item.hostname != "*":
                chain.filter_chain_match.server_names.append(item.hostname)
            listener.filter_chains.append(chain)
    else:
        listener.filter_chains.append(listener_components_pb2.FilterChain(filters=filters))
    return listener


def generate(ctx: MeshContext, proxy: Resource, policies: MatchedPolicies, resources: ResourceSet) -> None:
    if not is_builtin(proxy):
        return
    gateway = select_gateway(ctx.policies.get(MESH_GATEWAY_TYPE, ()), proxy)
    if gateway is None:
        return  # no MeshGateway selects it yet: an Envoy with no listeners
    identity = str(tag_sets(proxy)[0][SERVICE_TAG])
    gen = _Gen(ctx, proxy, gateway, gateway_policies(ctx, proxy, policies), resources, identity)
    address = str(networking(proxy).get("address"))
    by_port = listeners(gateway, proxy, ctx.policies.get(MESH_GATEWAY_ROUTE_TYPE, ()))
    attach_route_policies(by_port, gen.policies)
    for port, items in by_port.items():
        if any(i.cross_mesh for i in items) and ctx.mtls is None:
            raise ValueError(f"MeshGateway {gateway.name!r}: cross-mesh listener on port {port} needs mesh mTLS")
        listener = _listener(gen, address, port, items)
        resources.add(LISTENER, listener.name, listener)
