"""Which policy sets which value for a proxy: Kuma 2.14's inspect API, computed by generation's code.

``rules(ctx, dp)`` is the body of ``GET /meshes/{mesh}/dataplanes/{name}/_rules`` (Kuma's
``InspectRules``): per policy type that configures the proxy, the merged conf

- ``toRules``: per destination. A rule per service a ``to`` entry names (matcher
  ``kuma.io/service: <name>``), and a catch-all for every other service (the same matchers
  negated), each with the conf of ``matching.to_conf`` for that destination: what the outbound
  generator applies to an outbound to it;
- ``fromRules``: per inbound of a sidecar (per listener port of a builtin gateway), a rule per
  client subset a ``from`` entry names (Kuma's subsets: each combination of the client tags the
  entries select on), merged by ``matching.from_conf`` from the policies selecting that inbound
  (``policies.match_inbound``);
- ``inboundRules``: instead of ``fromRules`` for a type with a ``rules`` section (Kuma's "from as
  rules", e.g. MeshTLS): per inbound, one rule with the merged ``from`` (Mesh) entries and
  ``rules`` of the policies selecting it (``matching.rules_conf``), and each entry's policy and
  index as its origin;
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
none. ``httpMatches`` is empty until MeshHTTPRoute is applied.

``proxy_policies(ctx, dp)`` is the body of ``GET .../_policies`` (Kuma's ``PoliciesList``): the
proxy-level confs (``proxyRule``) with the KRIs of the policies they come from.

A plugin that merges its confs otherwise than ``matching``'s functions must make this module
report what it applies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.model import DISPLAY_NAME_LABEL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL, Resource
from zonemesh.shared.resources.redaction import redact
from zonemesh.shared.resources.registry import WHOLE, PolicySupport
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext, inbounds, networking
from zonemesh.zone_cp.xds.generators.gateway import (
    MESH_GATEWAY_ROUTE_TYPE,
    MESH_GATEWAY_TYPE,
    gateway_policies,
    is_builtin,
    listeners,
    select_gateway,
)
from zonemesh.zone_cp.xds.policies import PLUGINS, match_all, match_inbound
from zonemesh.zone_cp.xds.policies.matching import (
    MESH,
    Entry,
    entries,
    from_conf,
    from_entries,
    proxy_conf,
    rules_conf,
    rules_entries,
    source_tags,
    to_conf,
    to_entries,
)

Json = dict[str, Any]

# Kuma lists every subset of the client tags `from` entries select on; past this many (a mesh
# whose policies select clients by many tags at once) the rest are left out with a warning.
MAX_SUBSETS = 1024


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


def to_rules(policies: Sequence[Resource]) -> list[Json]:
    """Per destination service a ``to`` entry names, then for every other service."""
    named = sorted(
        {
            str(e.target_ref["name"])
            for e in entries(policies, "to")
            if e.target_ref.get("kind") != MESH and e.target_ref.get("name")
        }
    )
    rules = []
    for service in named:
        conf = to_conf(policies, service)
        if conf is not None:
            origin = _origin(policies, to_entries(policies, service))
            rules.append({"matchers": [_matcher(SERVICE_TAG, service)], "conf": conf, "origin": origin})
    conf = to_conf(policies, None)
    if conf is not None:
        others = [_matcher(SERVICE_TAG, service, negated=True) for service in named]
        rules.append({"matchers": others, "conf": conf, "origin": _origin(policies, to_entries(policies, None))})
    return rules


def _subsets(policies: Sequence[Resource]) -> tuple[list[tuple[dict[str, str], dict[str, list[str]]]], bool]:
    """Kuma's client subsets: for each tag key some ``from`` entry selects on, either one of its
    values or none of them. Returns (positive tags, negated tags) per subset, and whether the
    list was cut at MAX_SUBSETS."""
    values: dict[str, set[str]] = {}
    for entry in entries(policies, "from"):
        for key, value in (source_tags(entry.target_ref) or {}).items():
            values.setdefault(key, set()).add(value)
    keys = sorted(values)
    choices = [[*sorted(values[k]), None] for k in keys]
    subsets = []
    for picked in itertools.islice(itertools.product(*choices), MAX_SUBSETS + 1):
        positive = {k: v for k, v in zip(keys, picked, strict=True) if v is not None}
        negated = {k: sorted(values[k]) for k, v in zip(keys, picked, strict=True) if v is None}
        subsets.append((positive, negated))
    return subsets[:MAX_SUBSETS], len(subsets) > MAX_SUBSETS


def from_rules(policies: Sequence[Resource]) -> tuple[list[Json], list[str]]:
    """The rules for one inbound, most specific client subset first; and warnings."""
    subsets, cut = _subsets(policies)
    rules = []
    for positive, negated in sorted(subsets, key=lambda s: -len(s[0])):
        conf = from_conf(policies, positive)
        if conf is None:
            continue
        matchers = [_matcher(k, v) for k, v in sorted(positive.items())]
        matchers += [_matcher(k, v, negated=True) for k, vs in sorted(negated.items()) for v in vs]
        rules.append(
            {"matchers": matchers, "conf": conf, "origin": _origin(policies, from_entries(policies, positive))}
        )
    warnings = [f"only the first {MAX_SUBSETS} client subsets are listed"] if cut else []
    return rules, warnings


def from_as_rules(policy_type: str) -> bool:
    """Kuma's ``isFromAsRules``: the type has a ``rules`` section, which its ``from`` entries join
    (``matching.rules_entries``); its inbound confs are ``inboundRules``, not ``fromRules``."""
    return "rules" in getattr(REGISTRY.get(policy_type).spec, "fields", {})


def inbound_rule(policies: Sequence[Resource]) -> list[Json]:
    """Kuma's ``InboundRule`` list for one inbound: a single rule (zonemesh has no ``matches``)
    with the merged conf and the (policy, rule index) of every entry merged into it."""
    conf = rules_conf(policies)
    if conf is None:
        return []
    by_name = {p.name: p for p in policies}
    origin = [{"resourceMeta": meta(by_name[e.policy]), "ruleIndex": e.order[2]} for e in rules_entries(policies)]
    return [{"conf": [conf], "origin": origin}]


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
        tos = to_rules(policies) if "to" in sections else []
        # Per inbound (a builtin gateway: per listener port, all with the gateway's policies), the
        # policies selecting it.
        per_inbound: list[tuple[Json, list[Resource]]] = []
        if "from" in sections and builtin:
            per_inbound = [(inbound, policies) for inbound in gateway_inbounds]
        elif "from" in sections:
            per_inbound = [
                (_inbound(dp, inbound), shown(match_inbound(ctx, dp, index).get(plugin.type, ())))
                for index, inbound in sorted(own, key=lambda item: int(item[1]["port"]))
            ]
        froms: list[Json] = []
        inbound_rules: list[Json] = []
        for inbound, selecting_inbound in per_inbound:
            if from_as_rules(plugin.type):
                found_rules = inbound_rule(selecting_inbound)
                if found_rules:
                    inbound_rules.append({"inbound": inbound, "rules": found_rules})
                continue
            found_rules, more = from_rules(selecting_inbound)
            warnings += more
            if found_rules:
                froms.append({"inbound": inbound, "rules": found_rules})
        proxy = proxy_rule(policies, plugin.appends) if WHOLE in sections else None
        if not (tos or froms or inbound_rules or proxy):
            continue
        rule: Json = {
            "type": plugin.type,
            "toRules": tos,
            "toResourceRules": [],
            "fromRules": froms,
            "inboundRules": inbound_rules,
            "warnings": list(dict.fromkeys(warnings)),
        }
        if proxy is not None:
            rule["proxyRule"] = proxy
        found.append(rule)
    return {"resource": meta(dp), "rules": found, "httpMatches": []}


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
