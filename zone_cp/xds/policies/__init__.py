"""Policy plugins: one module per targetRef policy type (Kuma's plugin idea, two levels deep).

The registry says which module applies a type (``PolicySupport.plugin`` in
``shared/resources/types/policies/<type>.py``); that module defines ``PLUGIN = Plugin(...)``
with the hooks it needs, each optional:

- ``outbound(pieces, conf)``: the merged ``to`` conf for one destination (``pieces.service``),
  on the outbounds of sidecars and delegated gateways and on the clusters, routes and TCP
  proxies of builtin gateways;
- ``inbound(pieces, policies)``: the policies selecting one sidecar inbound, least specific
  first (resolve ``from`` entries with ``matching.from_conf`` / ``entries``, Kuma 2.x ``rules``
  with ``callers.rules``);
- ``gateway(pieces, policies)``: one builtin gateway listener (HTTP: ``pieces.hcm`` and
  ``pieces.http_filters``; TCP: ``pieces.tcp_proxy`` and ``pieces.network_filters``), with the
  policies selecting the gateway;
- ``egress(pieces, policies)``: one ExternalService's filter chain on the zone egress, seen as
  an inbound of that service;
- ``upstream_tls(context, policies)``: the client end of mesh mTLS (the ``UpstreamTlsContext``
  of a cluster to a mesh service, on sidecars and builtin gateways), with the policies
  selecting the proxy.
- ``proxy(ctx, proxy, resources, policies)``: the whole config of one sidecar or builtin gateway
  (its own ResourceSet), after every generator and every other hook (MeshProxyPatch);
- ``to_conf(policies, service)``: how the ``to`` entries merge for one destination, when not
  ``matching.to_conf``'s deep merge (MeshHTTPRoute merges rules by their matches);
- ``destinations(policy)``: the services and subsets a policy sends traffic to, which zone
  ingresses and egresses must route (the route types).

A type whose ``PolicySupport.per_route`` is set is also applied to single routes: its
``outbound`` hook runs on each route a MeshHTTPRoute generates with the conf of the policies
whose top-level targetRef is that MeshHTTPRoute merged over the destination's (``configure_route``).

Two more optional fields: ``tag_keys(policy)``, the proxy tags a policy's conf reads (its
affinity tags: proxies differing in them must not share a generated config), and
``egress_locality``, whose outbound hook's ``pieces.locality`` (how endpoints are laid out over
zones) the zone egress applies too (``egress_locality``).

``PLUGINS`` is built from the registry when this package is imported, in ``order``;
``plugin_table`` refuses a supported type without a plugin, a plugin of another type, and hooks
that disagree with the sections the type declares it applies (``PolicySupport.sidecar`` /
``gateway``): what a type accepts is what its plugin applies. Hooks run in ``PLUGINS`` order on
the pieces before a generator packs them into Envoy resources; they edit the pieces in place.

To add a policy: declare its type with ``support=PolicySupport(plugin="<module>", ...)``, write
``zone_cp/xds/policies/<module>.py`` with ``PLUGIN``, and a golden case under
``tests/unit/testdata/policies/<module>/`` (see docs/policies.md).

Inspection (``xds/inspection.py``, the ``_rules`` / ``_policies`` API) reports the confs
``matching``'s ``to_conf`` / ``from_conf`` / ``rules_conf`` (a type with a ``rules`` section) /
``proxy_conf`` (with ``Plugin.appends``) merge; tests/unit/test_inspection.py checks, for every
golden case, that those rules generate the same config as the policies. A plugin that merges its
confs otherwise must make inspection report what it applies; one whose policies set nothing in
some meshes says why in ``Plugin.inert`` (shown as a warning).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.targetref import MESH_HTTP_ROUTE, SIDECAR, top_level
from zonemesh.zone_cp.xds.context import MeshContext, inbounds, tag_sets
from zonemesh.zone_cp.xds.envoy import Destination, InboundPieces, OutboundPieces
from zonemesh.zone_cp.xds.locality import LocalityPlan
from zonemesh.zone_cp.xds.policies.matching import (
    MESH,
    Selectors,
    matched,
    matched_inbound,
    merge_all,
    ordered,
    proxy_type,
    selectors,
    signature,
    to_conf,
)
from zonemesh.zone_cp.xds.policies.plugin import InboundHook, Plugin, PluginError, Policies, plugin_table
from zonemesh.zone_cp.xds.resources import ResourceSet

__all__ = [
    "EGRESS_LOCALITY_TYPES",
    "EGRESS_TYPES",
    "OUTBOUND_TYPES",
    "PLUGINS",
    "POLICY_TYPES",
    "ROUTE_TYPES",
    "MatchedPolicies",
    "Plugin",
    "PluginError",
    "PolicyError",
    "configure_egress",
    "configure_gateway_listener",
    "configure_inbound",
    "configure_outbound",
    "configure_proxy",
    "configure_route",
    "configure_upstream_tls",
    "destinations",
    "egress_locality",
    "inbound_content",
    "match_all",
    "match_inbound",
    "outbound_signature",
    "plugin_table",
    "policy_selectors",
    "policy_signature",
    "route_policies",
    "upstream_tls_content",
]

PLUGINS = plugin_table(REGISTRY)
POLICY_TYPES = tuple(p.type for p in PLUGINS)
# What an outbound's pieces depend on: its `to` conf, and the client end of its mesh mTLS.
OUTBOUND_TYPES = tuple(p.type for p in PLUGINS if p.outbound is not None or p.upstream_tls is not None)
EGRESS_TYPES = tuple(p.type for p in PLUGINS if p.egress is not None)
# What an inbound's pieces depend on (configure_inbound's types).
INBOUND_TYPES = tuple(p.type for p in PLUGINS if p.inbound is not None)
# What the client end of an outbound's mesh mTLS depends on (configure_upstream_tls's types).
UPSTREAM_TLS_TYPES = tuple(p.type for p in PLUGINS if p.upstream_tls is not None)
EGRESS_LOCALITY_TYPES = tuple(p.type for p in PLUGINS if p.egress_locality)
# The route types: they say where traffic goes (Plugin.destinations).
ROUTE_TYPES = tuple(p.type for p in PLUGINS if p.destinations is not None)


def _per_route(plugin: Plugin) -> bool:
    support = REGISTRY.get(plugin.type).support
    return plugin.outbound is not None and support is not None and support.per_route is not None


# Applied per route when their top-level targetRef is a MeshHTTPRoute (PolicySupport.per_route).
PER_ROUTE = tuple(p for p in PLUGINS if _per_route(p))


class PolicyError(Exception):
    """A policy could not be applied; the message names the policy type."""


MatchedPolicies = Mapping[str, Policies]


def _memo_key(ctx: MeshContext, proxy: Resource) -> tuple[Any, ...]:
    """What matching reads of a proxy: proxies alike in it (a service's replicas) share the answer."""
    found = policy_selectors(ctx)
    return (
        proxy_type(proxy),
        tuple(tuple(sorted(tags.items())) for tags in tag_sets(proxy)),
        tuple(found.section(i) for i in inbounds(proxy)),
        proxy.name if proxy.name in found.names else "",
        tuple(sorted((k, v) for k, v in proxy.labels.items() if k in found.label_keys)),
    )


def _kept_matches(ctx: MeshContext) -> list[tuple[str, dict[Any, Any]]]:
    """Per policy type, the matches kept from earlier rounds (``Kept.matches``) while the type's
    policies are the very same objects as then (the view replaces a changed resource, never
    changes it in place), else none: a mesh-wide change of one policy matches again only for
    that policy's type. Looked at once per round."""
    key = ("kept-matches",)
    found = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = []
        kept = ctx.kept.matches
        for policy_type in POLICY_TYPES:
            policies = tuple(ctx.policies.get(policy_type, ()))
            held = kept.get(policy_type)
            same = held is not None and len(held[0]) == len(policies)
            if held is None or not same or any(a is not b for a, b in zip(held[0], policies, strict=True)):
                held = kept[policy_type] = (policies, {})
            found.append((policy_type, held[1]))
        ctx.kept.forget_unless(sum(len(p) for p in ctx.policies.values()), len(ctx.dataplanes))
    assert isinstance(found, list)
    return found


def match_all(ctx: MeshContext, proxy: Resource) -> dict[str, list[Resource]]:
    """The policies of every type selecting ``proxy`` (its ``to`` and gateway config), shared
    within a round by proxies alike in what matching reads, and across rounds while the type's
    policies are the same (``_kept_matches``); the caller gets its own dict (the lists are
    shared: read them, do not change them)."""
    memo_key = _memo_key(ctx, proxy)
    key = ("match-all", memo_key)
    found = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = {}
        for policy_type, kept in _kept_matches(ctx):
            matches = kept.get(key)
            if matches is None:
                matches = kept[key] = matched(ctx, proxy, policy_type)
            found[policy_type] = matches
    return dict(found)


def match_inbound(ctx: MeshContext, proxy: Resource, index: int) -> dict[str, list[Resource]]:
    """The policies of every type selecting inbound ``index`` of ``proxy`` (its ``from`` config),
    shared as ``match_all``'s."""
    key = ("match-inbound", _memo_key(ctx, proxy), index)
    found = ctx.memo.get(key)
    if found is None:
        inbound = inbounds(proxy)[index]
        found = ctx.memo[key] = {}
        for policy_type, kept in _kept_matches(ctx):
            matches = kept.get(key)
            if matches is None:
                matches = kept[key] = matched_inbound(ctx, proxy, inbound, policy_type)
            found[policy_type] = matches
    return dict(found)


def policy_selectors(ctx: MeshContext) -> Selectors:
    """What of a proxy the mesh's policies select on (tags, Dataplane labels and names), and the
    tags their confs read (``Plugin.tag_keys``: affinity tags): a proxy's other tags and labels
    change nothing in its config."""
    key = ("policy-selectors",)
    found = ctx.memo.get(key)
    if found is None:
        found = selectors(p for t in POLICY_TYPES for p in ctx.policies.get(t, ()))
        read = {
            k for p in PLUGINS if p.tag_keys is not None for r in ctx.policies.get(p.type, ()) for k in p.tag_keys(r)
        }
        if read - found.tag_keys:
            found = replace(found, tag_keys=found.tag_keys | read)
        ctx.memo[key] = found
    assert isinstance(found, Selectors)
    return found


def policy_signature(policies: MatchedPolicies) -> tuple[tuple[str, ...], ...]:
    return tuple(signature(policies.get(t, ())) for t in POLICY_TYPES)


def inbound_content(policies: MatchedPolicies, memo: dict[Any, Any]) -> tuple[tuple[bytes, ...], ...]:
    """What ``configure_inbound`` reads of the matched policies, by content rather than by name:
    per type with an inbound hook, a digest of each policy but its ``to`` (which only outbounds
    read). Equal from one round to the next when only outbound parts changed, so an inbound's
    template can be kept across rounds (generators/inbound.py). ``memo``: where digests are kept
    by policy object (``Kept.digests``).

    A policy with nothing but its targetRef and ``to`` is left out: the inbound hooks read a
    policy's ``from`` and ``rules`` only (tests/unit/test_xds_sharing.py checks each), so creating
    or deleting a policy on requests to some service (every proxy selected, its ``to`` naming
    the service) builds no proxy's inbound template again."""
    return tuple(
        tuple(_inbound_digest(p, memo) for p in policies.get(t, ()) if not _outbound_only(p)) for t in INBOUND_TYPES
    )


def _outbound_only(policy: Resource) -> bool:
    return policy.spec.keys() <= {"targetRef", "to"}


def upstream_tls_content(policies: MatchedPolicies, memo: dict[Any, Any]) -> tuple[tuple[bytes, ...], ...]:
    """What ``configure_upstream_tls`` reads of the matched policies, by content: per type with an
    ``upstream_tls`` hook, a digest of each policy (an outbound's mTLS cluster is kept across
    rounds by it, generators/outbound.py). ``memo``: as ``inbound_content``'s."""
    return tuple(tuple(_digest(p, memo) for p in policies.get(t, ())) for t in UPSTREAM_TLS_TYPES)


def _inbound_digest(policy: Resource, memo: dict[Any, Any]) -> bytes:
    return _digest(policy, memo, without="to")


def _digest(policy: Resource, memo: dict[Any, Any], without: str = "") -> bytes:
    """A digest of ``policy``'s type, name, labels and spec but its ``without`` section."""
    key = (id(policy), without)
    found = memo.get(key)
    if found is not None and found[0] is policy:  # the same object, not another at the same id
        return bytes(found[1])
    spec = {k: v for k, v in policy.spec.items() if k != without}
    parts = [policy.type, policy.name, policy.labels, spec]
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    memo[key] = (policy, digest)
    return digest


def outbound_signature(policies: MatchedPolicies) -> tuple[tuple[str, ...], ...]:
    """The part of ``policy_signature`` an outbound depends on (``configure_outbound``'s types)."""
    return tuple(signature(policies.get(t, ())) for t in OUTBOUND_TYPES)


def _run(plugin: Plugin, hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception as exc:
        raise PolicyError(f"{plugin.type}: {type(exc).__name__}: {exc}") from exc


def configure_outbound(pieces: OutboundPieces, policies: MatchedPolicies) -> None:
    for plugin in PLUGINS:
        if plugin.outbound is None:
            continue
        conf = (plugin.to_conf or to_conf)(policies.get(plugin.type, ()), pieces.service)
        if conf is not None:
            _run(plugin, plugin.outbound, pieces, conf)


def _selects_every_sidecar(policy: Resource) -> bool:
    ref = top_level(policy.spec)
    return ref.get("kind") == MESH and SIDECAR in (ref.get("proxyTypes") or (SIDECAR,))


def egress_locality(ctx: MeshContext, service: str) -> LocalityPlan | None:
    """How the zone egress lays out the other zones' endpoints of ``service``: the outbound
    hooks of ``EGRESS_LOCALITY_TYPES`` with the policies selecting every sidecar (top-level
    ``Mesh``), as Kuma's egress reads them. The egress serves all proxies of the zone alike:
    it cannot follow a policy that selects only some of them."""
    every_sidecar = ctx.memo.get(("egress-locality-policies",))
    if every_sidecar is None:
        every_sidecar = ctx.memo[("egress-locality-policies",)] = [
            (plugin, ordered(p for p in ctx.policies.get(plugin.type, ()) if _selects_every_sidecar(p)))
            for plugin in PLUGINS
            if plugin.egress_locality and plugin.outbound is not None
        ]
    key = ("egress-locality", service)
    if key not in ctx.memo:
        pieces = OutboundPieces(ctx.name, service, ctx.protocol(service), cluster_pb2.Cluster())  # scratch
        for plugin, policies in every_sidecar:
            conf = to_conf(policies, service) if policies else None
            if conf is not None and plugin.outbound is not None:
                _run(plugin, plugin.outbound, pieces, conf)
        ctx.memo[key] = pieces.locality
    found = ctx.memo[key]
    assert found is None or isinstance(found, LocalityPlan)
    return found


def _targets_route(ref: Mapping[str, Any], route: Resource) -> bool:
    if ref.get("kind") != MESH_HTTP_ROUTE:
        return False
    if ref.get("name"):
        return bool(ref["name"] == route.display_name)  # a copy from global is stored renamed
    labels: Mapping[str, str] = ref.get("labels") or {}
    return bool(labels) and all(route.labels.get(k) == v for k, v in labels.items())


def route_policies(ctx: MeshContext, route_name: str) -> dict[str, list[Resource]]:
    """The policies applied per route (``PER_ROUTE`` types) whose top-level targetRef is the
    MeshHTTPRoute ``route_name`` (by name, or by its labels), least specific first."""
    key = ("route-policies", route_name)
    found = ctx.memo.get(key)
    if found is None:
        route = next((r for r in ctx.policies.get(MESH_HTTP_ROUTE, ()) if r.name == route_name), None)
        found = {}
        if route is not None:
            for plugin in PER_ROUTE:
                hits = [p for p in ctx.policies.get(plugin.type, ()) if _targets_route(top_level(p.spec), route)]
                if hits:
                    found[plugin.type] = ordered(hits)
        ctx.memo[key] = found
    return dict(found)


def configure_route(
    ctx: MeshContext,
    route: route_components_pb2.Route,
    service: str,
    protocol: str,
    policies: MatchedPolicies,
    origin: str | None,
) -> None:
    """Apply to one route the policies targeting ``origin``, the MeshHTTPRoute whose rule it comes
    from, their ``to`` conf merged over the destination's: e.g. a MeshTimeout's request timeout
    for that route only. Redirects have no upstream request to configure."""
    if not route.HasField("route") or origin is None:
        return
    targeting = route_policies(ctx, origin)
    for plugin in PER_ROUTE:
        extra = targeting.get(plugin.type)
        if not extra or plugin.outbound is None:
            continue
        confs = (to_conf(policies.get(plugin.type, ()), service), to_conf(extra, service))
        conf = merge_all(c for c in confs if c is not None)
        if conf is None:
            continue
        # Only the route is kept: cluster and listener settings are the destination's.
        scratch = OutboundPieces(
            ctx.name, service, protocol, cluster_pb2.Cluster(), hcm=hcm_pb2.HttpConnectionManager(), route=route
        )
        _run(plugin, plugin.outbound, scratch, conf)


def destinations(ctx: MeshContext) -> set[Destination]:
    """Every destination the mesh's policies send traffic to (``Plugin.destinations``)."""
    key = ("policy-destinations",)
    found = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = {
            dest
            for plugin in PLUGINS
            if plugin.destinations is not None
            for policy in ctx.policies.get(plugin.type, ())
            for dest in plugin.destinations(policy)
        }
    assert isinstance(found, set)
    return found


def _configure(pieces: InboundPieces, policies: MatchedPolicies, hooks: Iterable[tuple[Plugin, InboundHook]]) -> None:
    for plugin, hook in hooks:
        _run(plugin, hook, pieces, policies.get(plugin.type, ()))


def configure_inbound(pieces: InboundPieces, policies: MatchedPolicies) -> None:
    _configure(pieces, policies, ((p, p.inbound) for p in PLUGINS if p.inbound is not None))


def configure_gateway_listener(pieces: InboundPieces, policies: MatchedPolicies) -> None:
    _configure(pieces, policies, ((p, p.gateway) for p in PLUGINS if p.gateway is not None))


def configure_egress(pieces: InboundPieces, policies: MatchedPolicies) -> None:
    _configure(pieces, policies, ((p, p.egress) for p in PLUGINS if p.egress is not None))


def configure_upstream_tls(context: tls_pb2.UpstreamTlsContext, policies: MatchedPolicies) -> None:
    for plugin in PLUGINS:
        if plugin.upstream_tls is not None:
            _run(plugin, plugin.upstream_tls, context, policies.get(plugin.type, ()))


def configure_proxy(ctx: MeshContext, proxy: Resource, resources: ResourceSet, policies: MatchedPolicies) -> None:
    """The ``proxy`` hooks, on the proxy's own config once everything else is generated."""
    for plugin in PLUGINS:
        if plugin.proxy is not None:
            _run(plugin, plugin.proxy, ctx, proxy, resources, policies.get(plugin.type, ()))
