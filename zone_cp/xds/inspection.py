"""Which policy sets which value for a proxy: Kuma 2.14's inspect API, computed by generation's code.

``rules(ctx, dp)`` is the body of ``GET /meshes/{mesh}/dataplanes/{name}/_rules`` (Kuma's
``InspectRules``): per policy type that configures the proxy, the merged conf

- ``toRules``: per destination. A rule per service a ``to`` entry names (matcher
  ``kuma.io/service: <name>``), and a catch-all for every other service (the same matchers
  negated), each with the conf of ``matching.to_conf`` for that destination: what the outbound
  generator applies to an outbound to it;
- ``fromRules``: per inbound of a sidecar (per listener port of a builtin gateway), from the
  policies selecting it (``policies.match_inbound``): a rule per caller service a ``from`` entry
  names and one for every other caller, merged by ``callers.from_by_caller``; not where a
  policy selecting the inbound has ``rules`` (then `from` is not read, or read as rules);
- ``inboundRules``: Kuma 2.x's inbound rules of the same policies (``callers.rules``): for a type
  that merges them (``Plugin.from_as_rules``: MeshTimeout, MeshCircuitBreaker, MeshRateLimit,
  MeshTLS, whose `from` entries count as rules without matches) the effective rules, one for
  every caller and one per caller class (``callers.classes``); for the others (MeshTrafficPermission,
  MeshFaultInjection) each rule as it applies, in order; origins name the policy and the rule's
  index in it;
- ``proxyRule``: the merged top-level ``default`` of policies without ``to``/``from``
  (``matching.proxy_conf``; MeshProxyPatch: its ``appendModifications`` add up, in the order
  they run),

each with ``origin``: the policies whose entries were merged, in merge order (the last one wins
where they disagree). The policies are those generation matches (``policies.match_all``, plus a
builtin gateway's MeshGateway-targeted ones, ``gateway.gateway_policies``), and only the sections
zonemesh applies on that kind of proxy (``PolicySupport.sidecar`` / ``gateway``) are listed: a
rule here is a value in the proxy's Envoy config. ``warnings`` says when a type's policies set
nothing in this mesh (``Plugin.inert``, e.g. MeshTrafficPermission without mTLS), as Kuma does.
A builtin gateway no MeshGateway selects gets proxy rules only: it has nothing else to
configure. ``toResourceRules`` (Kuma's rules for MeshService resources) is empty: zonemesh has
none.

The route types (MeshHTTPRoute, MeshTCPRoute) report their merged `to` conf as Kuma does
(``Plugin.to_conf``: ``{"rules": [{"matches", "default"}]}``, ``{"default": {"backendRefs"}}``;
on a builtin gateway one rule per route hostname, ``conf.hostnames`` naming it), and
``httpMatches`` lists the hash naming each HTTP rule's routes (Kuma's ``HashMatches``). A policy
applied per route (a top-level MeshHTTPRoute targetRef, ``PolicySupport.per_route``) adds a `to`
rule for that route's hash (matcher ``__rule-matches-hash__``, as Kuma) with the conf its routes
get; on builtin gateways those are not listed yet.

``proxy_policies(ctx, dp)`` is the body of ``GET .../_policies`` (Kuma's ``PoliciesList``): the
proxy-level confs (``proxyRule``) with the KRIs of the policies they come from.

A plugin that merges its confs otherwise than ``matching`` / ``callers`` do must make this module
report what it applies: tests/unit/test_inspection.py writes the reported rules of every golden
case back as policies and checks that they generate the same config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.model import DISPLAY_NAME_LABEL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL, Resource
from zonemesh.shared.resources.redaction import redact
from zonemesh.shared.resources.registry import WHOLE, PolicySupport
from zonemesh.shared.resources.types.targetref import top_level
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext, inbounds, networking
from zonemesh.zone_cp.xds.generators.gateway import (
    MESH_GATEWAY_ROUTE_TYPE,
    MESH_GATEWAY_TYPE,
    gateway_policies,
    is_builtin,
    listeners,
    select_gateway,
)
from zonemesh.zone_cp.xds.policies import (
    PER_ROUTE,
    PLUGINS,
    callers,
    match_all,
    match_inbound,
    meshhttproute,
    route_policies,
)
from zonemesh.zone_cp.xds.policies.matching import MESH, Entry, entries, merge_all, proxy_conf, to_conf, to_entries
from zonemesh.zone_cp.xds.policies.plugin import Plugin

Json = dict[str, Any]
RULES = "rules"  # Kuma 2.x's inbound rules: a section of its own (registry.SECTIONS)
RULE_MATCHES_HASH = "__rule-matches-hash__"  # Kuma's matcher key for a per-route rule


def meta(res: Resource) -> Json:
    """Kuma's ``Meta`` of a resource (origins, the inspected resource)."""
    return {"type": res.type, "mesh": res.mesh, "name": res.name, "labels": dict(res.labels)}


def kri(res: Resource) -> str:
    """Kuma's resource identifier ``kri_<short name>_<mesh>_<zone>_<namespace>_<name>_<section>``
    (no namespaces in universal; the zone of a resource a zone created, empty for global's)."""
    rtype = REGISTRY.get(res.type)
    zone = res.labels.get(ZONE_LABEL, "") if res.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE else ""
    name = res.labels.get(DISPLAY_NAME_LABEL) or res.name
    return f"kri_{rtype.short_name or rtype.name.lower()}_{res.mesh}_{zone}__{name}_"


def shown(policies: Iterable[Resource]) -> list[Resource]:
    """The policies as the API shows them (private keys written inline redacted, as on GET): the
    rules show nothing a read of the policies would not."""
    return [redact(p) for p in policies]


def _origin(policies: Sequence[Resource], found: Iterable[Entry]) -> list[Json]:
    by_name = {p.name: p for p in policies}
    return [meta(by_name[name]) for name in dict.fromkeys(e.policy for e in found)]


def _matcher(key: str, value: str, negated: bool = False) -> Json:
    return {"key": key, "value": value, "not": negated}


def to_rules(policies: Sequence[Resource], plugin: Plugin | None = None) -> list[Json]:
    """Per destination service a ``to`` entry names, then for every other service (the conf as
    the type merges it: ``Plugin.to_conf``, else ``matching.to_conf``)."""
    merge = (plugin.to_conf if plugin is not None else None) or to_conf
    named = sorted(
        {
            str(e.target_ref["name"])
            for e in entries(policies, "to")
            if e.target_ref.get("kind") != MESH and e.target_ref.get("name")
        }
    )
    rules = []
    for service in named:
        conf = merge(policies, service)
        if conf is not None:
            origin = _origin(policies, to_entries(policies, service))
            rules.append({"matchers": [_matcher(SERVICE_TAG, service)], "conf": conf, "origin": origin})
    conf = merge(policies, None)
    if conf is not None:
        others = [_matcher(SERVICE_TAG, service, negated=True) for service in named]
        rules.append({"matchers": others, "conf": conf, "origin": _origin(policies, to_entries(policies, None))})
    return rules


def gateway_route_rules(policies: Sequence[Resource], plugin: Plugin) -> list[Json]:
    """A builtin gateway's route types: one `to` rule per route hostname (MeshHTTPRoute), or the
    one merged rule (MeshTCPRoute), of the routes whose top-level targetRef is the gateway."""
    attached = [p for p in policies if top_level(p.spec).get("kind") == MESH_GATEWAY_TYPE]
    if not attached:
        return []
    if plugin.type != meshhttproute.TYPE:
        tcp = plugin.to_conf(attached, None) if plugin.to_conf is not None else None
        origin = _origin(attached, to_entries(attached, None))
        return [{"matchers": [], "conf": tcp, "origin": origin}] if tcp is not None else []
    found = []
    for host, merged in meshhttproute.gateway_rules(attached).items():
        conf: Json = {"rules": merged} if host == "*" else {"hostnames": [host], "rules": merged}
        with_host = [e for e in entries(attached, "to") if host in (e.item.get("hostnames") or ["*"])]
        found.append({"matchers": [], "conf": conf, "origin": _origin(attached, with_host)})
    return found


def per_route_rules(ctx: MeshContext, selecting: Mapping[str, Sequence[Resource]], plugin: Plugin) -> list[Json]:
    """The routes configured by the policies of ``plugin`` whose top-level targetRef is the
    MeshHTTPRoute that decided them: their conf merged over the destination's, per matches hash."""
    routes = selecting.get(meshhttproute.TYPE, ())
    policies = shown(selecting.get(plugin.type, ()))
    named = sorted({str(e.target_ref["name"]) for e in entries(routes, "to") if e.target_ref.get("name")})
    found = []
    for service in named:
        for digest, origin in meshhttproute.origins(routes, service).items():
            extra = shown(route_policies(ctx, origin).get(plugin.type, ()))
            if not extra:
                continue
            conf = merge_all(c for c in (to_conf(policies, service), to_conf(extra, service)) if c is not None)
            from_entries = [*to_entries(policies, service), *to_entries(extra, service)]
            found.append(
                {
                    "matchers": [_matcher(RULE_MATCHES_HASH, digest), _matcher(SERVICE_TAG, service)],
                    "conf": conf,
                    "origin": _origin([*policies, *extra], from_entries),
                }
            )
    return found


def http_matches(found: Iterable[Json]) -> list[Json]:
    """Kuma's ``httpMatches``: the hash naming the routes of each reported MeshHTTPRoute rule."""
    matches: dict[str, Any] = {}
    for rule in found:
        if rule["type"] != meshhttproute.TYPE:
            continue
        for item in rule["toRules"]:
            for merged in item["conf"].get("rules") or []:
                matches.setdefault(meshhttproute.matches_hash(merged["matches"]), merged["matches"])
    return [{"hash": digest, "match": match} for digest, match in matches.items()]


def from_rules(policies: Sequence[Resource]) -> list[Json]:
    """The `from` rules of one inbound: per caller service an entry names, then for every other
    caller, merged as ``callers.from_by_caller`` merges them for the plugins that read `from`."""
    every, per_service = callers.from_by_caller(policies)
    found = entries(policies, "from")
    rules = []
    for service, conf in sorted(per_service.items()):
        origin = _origin(policies, [e for e in found if callers.caller_service(e.target_ref) in (None, service)])
        rules.append({"matchers": [_matcher(SERVICE_TAG, service)], "conf": conf, "origin": origin})
    if every is not None:
        others = [_matcher(SERVICE_TAG, service, negated=True) for service in sorted(per_service)]
        origin = _origin(policies, [e for e in found if callers.caller_service(e.target_ref) is None])
        rules.append({"matchers": others, "conf": every, "origin": origin})
    return rules


def _rule_origin(policies: Sequence[Resource], rules: Iterable[callers.Rule]) -> list[Json]:
    by_name = {p.name: p for p in policies}
    return [{"resourceMeta": meta(by_name[r.policy]), "ruleIndex": r.index} for r in rules]


def _inbound_rule(conf: Mapping[str, Any], match: callers.Match | None, origin: list[Json]) -> Json:
    rule: Json = {"conf": [conf], "origin": origin}
    if match is not None:
        rule["match"] = dict(match)
    return rule


def inbound_rules(policies: Sequence[Resource], plugin: Plugin) -> list[Json]:
    """Kuma's ``InboundRule`` list for one inbound, from ``callers.rules``. A type that merges
    them (``Plugin.from_as_rules``): the effective rules, one for every caller (no ``match``) and
    one per caller class (``callers.classes``), each with the rules merged into it. Another type
    (MeshTrafficPermission, MeshFaultInjection) applies each rule on its own: one per rule, in order."""
    found = callers.rules(policies, from_as_rules=plugin.from_as_rules)
    if not plugin.from_as_rules:
        return [_inbound_rule(r.conf, r.match, _rule_origin(policies, [r])) for r in found]
    result = []
    every = callers.catch_all(found)
    if every is not None:
        result.append(_inbound_rule(every, None, _rule_origin(policies, [r for r in found if r.match is None])))
    for caller_class in callers.classes(found):
        result.append(_inbound_rule(caller_class.conf, caller_class.match, _rule_origin(policies, caller_class.rules)))
    return result


def _inbound(dp: Resource, inbound: Mapping[str, Any]) -> Json:
    found: Json = {"port": int(inbound["port"]), "tags": dict(inbound.get("tags") or {})}
    if inbound.get("name"):
        found["name"] = str(inbound["name"])
    return found


def _sections(dp: Resource, support: PolicySupport) -> tuple[str, ...]:
    """The sections of a type zonemesh applies on this proxy (delegated gateways: as sidecars)."""
    return support.gateway if is_builtin(dp) else support.sidecar


def _gateway_inbounds(ctx: MeshContext, dp: Resource) -> list[Json]:
    """A builtin gateway's listener ports: each gets the `from` conf of the policies selecting it."""
    gateway = select_gateway(ctx.policies.get(MESH_GATEWAY_TYPE, ()), dp)
    if gateway is None:
        return []
    tags = dict((networking(dp).get("gateway") or {}).get("tags") or {})
    by_port = listeners(gateway, dp, ctx.policies.get(MESH_GATEWAY_ROUTE_TYPE, ()))
    return [{"port": port, "tags": tags} for port in by_port]


def rules(ctx: MeshContext, dp: Resource) -> Json:
    """Kuma's ``InspectRules`` for ``dp`` (see the module docstring)."""
    builtin = is_builtin(dp)
    # A builtin gateway no MeshGateway selects gets no listeners, clusters or routes to configure:
    # only the policies changing the whole proxy (MeshProxyPatch) apply.
    unselected = builtin and select_gateway(ctx.policies.get(MESH_GATEWAY_TYPE, ()), dp) is None
    selecting: Mapping[str, Sequence[Resource]] = match_all(ctx, dp)
    if builtin:
        selecting = gateway_policies(ctx, dp, selecting)
    gateway_inbounds = _gateway_inbounds(ctx, dp) if builtin else []
    own = [(i, inbound) for i, inbound in enumerate(inbounds(dp)) if inbound.get("state") != "Ignored"]
    found = []
    for plugin in PLUGINS:
        support = REGISTRY.get(plugin.type).support
        assert support is not None  # a plugin's type declares its support (plugin_table)
        sections = _sections(dp, support)
        if unselected:
            sections = tuple(s for s in sections if s == WHOLE)
        policies = shown(selecting.get(plugin.type, ()))
        reason = plugin.inert(ctx) if plugin.inert is not None else None
        warnings: list[str] = [reason] if reason else []
        tos = []
        if "to" in sections and plugin.destinations is not None and builtin:
            tos = gateway_route_rules(policies, plugin)  # a gateway's routes are its own
        elif "to" in sections:
            tos = to_rules(policies, plugin)
            if plugin in PER_ROUTE and not builtin:
                tos += per_route_rules(ctx, selecting, plugin)
        # Per inbound (a builtin gateway: per listener port, all with the gateway's policies), the
        # policies selecting it.
        reads_from, reads_rules = "from" in sections, RULES in sections
        per_inbound: list[tuple[Json, list[Resource]]] = []
        if (reads_from or reads_rules) and builtin:
            per_inbound = [(inbound, policies) for inbound in gateway_inbounds]
        elif reads_from or reads_rules:
            per_inbound = [
                (_inbound(dp, inbound), shown(match_inbound(ctx, dp, index).get(plugin.type, ())))
                for index, inbound in sorted(own, key=lambda item: int(item[1]["port"]))
            ]
        froms: list[Json] = []
        inbound: list[Json] = []
        for where, selecting_inbound in per_inbound:
            with_rules = reads_rules and any(p.spec.get(RULES) for p in selecting_inbound)
            if with_rules or (reads_from and plugin.from_as_rules):
                found_rules = inbound_rules(selecting_inbound, plugin)
                if found_rules:
                    inbound.append({"inbound": where, "rules": found_rules})
            # With rules, `from` is read as rules (Plugin.from_as_rules) or not at all.
            found_from = from_rules(selecting_inbound) if reads_from and not with_rules else []
            if found_from:
                froms.append({"inbound": where, "rules": found_from})
        proxy = proxy_rule(policies, plugin.appends) if WHOLE in sections else None
        if not (tos or froms or inbound or proxy):
            continue
        rule: Json = {
            "type": plugin.type,
            "toRules": tos,
            "toResourceRules": [],
            "fromRules": froms,
            "inboundRules": inbound,
            "warnings": list(dict.fromkeys(warnings)),
        }
        if proxy is not None:
            rule["proxyRule"] = proxy
        found.append(rule)
    return {"resource": meta(dp), "rules": found, "httpMatches": http_matches(found)}


def proxy_rule(policies: Sequence[Resource], appends: Sequence[str] = ()) -> Json | None:
    conf = proxy_conf(policies, appends)
    if conf is None:
        return None
    return {"conf": conf, "origin": [meta(p) for p in policies if isinstance(p.spec.get("default"), Mapping)]}


def proxy_policies(ctx: MeshContext, dp: Resource) -> Json:
    """Kuma's ``PoliciesList`` for ``dp``: the proxy-level conf of each policy type, with the
    KRIs of the policies merged into it (in merge order)."""
    selecting: Mapping[str, Sequence[Resource]] = match_all(ctx, dp)
    if is_builtin(dp):
        selecting = gateway_policies(ctx, dp, selecting)
    found = []
    for plugin in PLUGINS:
        support = REGISTRY.get(plugin.type).support
        assert support is not None
        if WHOLE not in _sections(dp, support):
            continue
        policies = shown(selecting.get(plugin.type, ()))
        conf = proxy_conf(policies, plugin.appends)
        if conf is None:
            continue
        origins = [{"kri": kri(p)} for p in policies if isinstance(p.spec.get("default"), Mapping)]
        found.append({"kind": plugin.type, "conf": conf, "origins": origins})
    return {"policies": found}


__all__ = ["from_rules", "kri", "meta", "proxy_policies", "rules", "to_rules"]
