"""MeshHTTPRoute: the HTTP routes of a sidecar outbound, or of a builtin gateway listener.

Merging, as Kuma does it (pkg/plugins/policies/core/rules/merge): the ``to`` entries selecting
a destination are taken in matching's merge order (entry specificity, then policy precedence:
``matching.entries``), each contributing its rules. A rule whose ``matches`` equal those of a
rule before it (the same list, compared as JSON) merges with it: its ``default`` is deep-merged
over the earlier one's (``filters`` and ``backendRefs`` replace, as lists do) and the merged rule
takes the later one's place. The merged rules list the most precedent entry's rules first, each
entry's in their written order.

Routes: one per match of every rule (a rule applies when any of its matches does), sorted most
specific first with a stable sort (Kuma's ``CompareMatch``, the Gateway API order): an Exact path,
then PathPrefix, then RegularExpression (longer values first within each), then no path; then a
method before none, more header matches before fewer, more query matches before fewer; ties keep
the merged rules' order. On a sidecar a last route (``PathPrefix /`` to the destination itself)
catches what no rule matches, unless a rule matches exactly that; a rule without backendRefs
sends to the destination itself.

Envoy: a PathPrefix ``/a`` is two routes, path ``/a`` and prefix ``/a/`` (only whole path
segments match), so that ``ReplacePrefixMatch`` gives ``/a/x`` -> ``<replacement>/x`` (Kuma's own
generator gives ``<replacement>x``; zonemesh follows the Gateway API semantics Kuma documents).
Backends: one cluster, or ``weighted_clusters``; a weight of 0 drops a backend, and a rule left
with no backend is skipped (as Kuma). Subsets (MeshServiceSubset) are clusters of their own,
named ``<service>-<hash of the tags>`` (``envoy.Destination``), created by the generator.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.policies.meshhttproute import backend_refs
from zonemesh.shared.resources.types.targetref import MESH_SERVICE_SUBSET
from zonemesh.zone_cp.xds.envoy import Destination, OutboundPieces
from zonemesh.zone_cp.xds.policies.matching import entries, merge_all, to_entries
from zonemesh.zone_cp.xds.policies.plugin import Conf, Plugin, Policies

TYPE = "MeshHTTPRoute"
CATCH_ALL: Mapping[str, Any] = {"path": {"type": "PathPrefix", "value": "/"}}
_PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}
_REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}


@dataclass(frozen=True)
class Rule:
    """A merged rule: its matches, its merged ``default``, and the MeshHTTPRoute that had the
    last word on it (policies targeting that MeshHTTPRoute configure its routes)."""

    matches: tuple[Mapping[str, Any], ...]
    default: Mapping[str, Any]
    origin: str

    @property
    def json(self) -> dict[str, Any]:
        """As Kuma shows a merged rule (inspection's ``conf.rules``)."""
        return {"matches": list(self.matches), "default": dict(self.default)}


# --- merging ------------------------------------------------------------------------------------


def _key(matches: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(matches), sort_keys=True, separators=(",", ":"))


def matches_hash(matches: Sequence[Mapping[str, Any]]) -> str:
    """What names a rule's routes, as Kuma's ``HashMatches``: the same matches, the same name
    (policies targeting a MeshHTTPRoute find its routes by it, inspection lists it)."""
    return base64.b64encode(hashlib.sha256(_key(matches).encode()).digest()).decode()


def merge_rules(contributions: Iterable[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[Rule]:
    """Kuma's merge of rules by their matches. ``contributions``: (policy name, rules) per
    entry, least precedent first."""
    merged: list[tuple[str, Sequence[Mapping[str, Any]], list[tuple[str, Mapping[str, Any]]]] | None] = []
    for origin, rules in contributions:
        # Each entry's rules go in reversed, and the whole list is reversed at the end: the most
        # precedent entry ends up first with its rules in their written order.
        for rule in reversed(rules):
            key = _key(rule["matches"])
            defaults = [(origin, rule.get("default") or {})]
            for i, earlier in enumerate(merged):
                if earlier is not None and earlier[0] == key:
                    defaults = earlier[2] + defaults
                    merged[i] = None  # the later rule takes its place
            merged.append((key, rule["matches"], defaults))
    result = [
        Rule(tuple(item[1]), merge_all(conf for _, conf in item[2]) or {}, item[2][-1][0])
        for item in merged
        if item is not None
    ]
    result.reverse()
    return result


def _merged(policies: Policies, service: str | None) -> list[Rule]:
    return merge_rules((e.policy, e.item.get("rules") or []) for e in to_entries(policies, service))


def route_conf(policies: Policies, service: str | None) -> Conf | None:
    """The merged rules for traffic to ``service`` in Kuma's shape, ``{"rules": [{"matches",
    "default"}, ...]}`` (None: no entry selects it)."""
    if not to_entries(policies, service):
        return None
    return {"rules": [rule.json for rule in _merged(policies, service)]}


def origins(policies: Policies, service: str | None) -> dict[str, str]:
    """Matches hash -> the MeshHTTPRoute whose rule decided the routes of that name."""
    return {matches_hash(rule.matches): rule.origin for rule in _merged(policies, service)}


def _by_host(policies: Policies) -> dict[str, list[Rule]]:
    by_host: dict[str, list[tuple[str, Sequence[Mapping[str, Any]]]]] = {}
    for entry in entries(policies, "to"):
        for host in entry.item.get("hostnames") or ["*"]:
            by_host.setdefault(str(host), []).append((entry.policy, entry.item.get("rules") or []))
    return {host: merge_rules(contributions) for host, contributions in by_host.items()}


def gateway_rules(policies: Policies) -> dict[str, list[dict[str, Any]]]:
    """Hostname -> merged rules of the ``to`` entries (kind Mesh) of MeshHTTPRoutes on a builtin
    gateway: an entry's rules count under each of its ``hostnames`` (``*`` without), merged per
    hostname string exactly as Kuma does (``*.example.com`` rules do not merge into
    ``a.example.com``'s: the gateway generator adds them after, see generators/gateway.py)."""
    return {host: [rule.json for rule in rules] for host, rules in _by_host(policies).items()}


def gateway_origins(policies: Policies) -> dict[str, str]:
    """Matches hash -> the MeshHTTPRoute that decided it on a gateway (where several hostnames
    have rules with the same matches, the most specific hostname's)."""
    found: dict[str, str] = {}
    for _, rules in sorted(_by_host(policies).items(), key=lambda item: _host_rank(item[0]), reverse=True):
        found.update((matches_hash(rule.matches), rule.origin) for rule in rules)
    return found


def _host_rank(host: str) -> tuple[bool, bool, int, str]:
    return (host == "*", host.startswith("*"), -len(host), host)


# --- Envoy routes -----------------------------------------------------------------------------------


def match_rank(match: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """Sort key of a match, most specific first (Kuma's CompareMatch)."""
    path = match.get("path")
    rank = _PATH_RANK[path["type"]] if path else 3
    length = -len(path["value"]) if path and path["type"] != "Exact" else 0
    return (
        rank,
        length,
        0 if match.get("method") else 1,
        -len(match.get("headers") or []),
        -len(match.get("queryParams") or []),
    )


def _regex(text: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=text)


def _path_matches(path: Mapping[str, Any] | None) -> list[tuple[route_components_pb2.RouteMatch, str]]:
    """Envoy matches for a path match, each with how a prefix rewrite applies to it: ``exact``
    (the whole path is the prefix), ``prefix`` (the prefix and its ``/``), ``root`` (prefix ``/``),
    or ``""`` (not a prefix match)."""
    if path is None:
        return [(route_components_pb2.RouteMatch(prefix="/"), "")]
    kind, value = path["type"], str(path["value"])
    if kind == "Exact":
        return [(route_components_pb2.RouteMatch(path=value), "")]
    if kind == "RegularExpression":
        return [(route_components_pb2.RouteMatch(safe_regex=_regex(value)), "")]
    if value == "/":
        return [(route_components_pb2.RouteMatch(prefix="/"), "root")]
    # Only whole path segments: "/a" matches "/a" and "/a/...", never "/ab".
    return [
        (route_components_pb2.RouteMatch(path=value), "exact"),
        (route_components_pb2.RouteMatch(prefix=value + "/"), "prefix"),
    ]


def _header_matcher(header: Mapping[str, Any]) -> route_components_pb2.HeaderMatcher:
    matcher = route_components_pb2.HeaderMatcher(name=str(header["name"]))
    kind, value = header.get("type") or "Exact", str(header.get("value") or "")
    if kind == "Exact":
        matcher.string_match.exact = value
    elif kind == "RegularExpression":
        matcher.string_match.safe_regex.CopyFrom(_regex(value))
    elif kind == "Prefix" and value:
        matcher.string_match.prefix = value
    elif kind == "Absent":
        matcher.present_match = True
        matcher.invert_match = True
    else:  # Present, or a Prefix of "" (which every present value has)
        matcher.present_match = True
    return matcher


def route_matches(match: Mapping[str, Any]) -> list[tuple[route_components_pb2.RouteMatch, str]]:
    """The Envoy route matches of one MeshHTTPRoute match (see ``_path_matches`` for the kind)."""
    found = _path_matches(match.get("path"))
    for envoy_match, _ in found:
        if match.get("method"):
            envoy_match.headers.append(
                route_components_pb2.HeaderMatcher(
                    name=":method", string_match=string_pb2.StringMatcher(exact=str(match["method"]))
                )
            )
        for header in match.get("headers") or []:
            envoy_match.headers.append(_header_matcher(header))
        for query in match.get("queryParams") or []:
            param = route_components_pb2.QueryParameterMatcher(name=str(query["name"]))
            if query["type"] == "RegularExpression":
                param.string_match.safe_regex.CopyFrom(_regex(str(query.get("value") or "")))
            else:
                param.string_match.exact = str(query.get("value") or "")
            envoy_match.query_parameters.append(param)
    return found


def _header_options(modifier: Mapping[str, Any]) -> list[base_pb2.HeaderValueOption]:
    options = []
    for action, items in (
        (base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD, modifier.get("set") or []),
        (base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD, modifier.get("add") or []),
    ):
        options += [
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=str(h["name"]), value=str(h["value"])), append_action=action
            )
            for h in items
        ]
    return options


def _path_rewrite(
    rewrite: Mapping[str, Any], prefix: str
) -> tuple[str | None, regex_pb2.RegexMatchAndSubstitute | None]:
    """(prefix_rewrite, regex_rewrite) for a path rewrite on a route of kind ``prefix``."""
    if rewrite["type"] == "ReplaceFullPath":
        return None, regex_pb2.RegexMatchAndSubstitute(pattern=_regex(".*"), substitution=rewrite["replaceFullPath"])
    replacement = str(rewrite["replacePrefixMatch"])
    if prefix == "exact":  # the whole path is the matched prefix
        whole = replacement.rstrip("/") or "/"
        return None, regex_pb2.RegexMatchAndSubstitute(pattern=_regex(".*"), substitution=whole)
    # "prefix" (matched "<p>/") and "root" (matched "/"): keep the "/" before the rest.
    return replacement.rstrip("/") + "/", None


def _percent(value: Any) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(float(value) * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def destination(ref: Mapping[str, Any]) -> Destination:
    """The destination a backendRef names (kind MeshService or MeshServiceSubset)."""
    tags = ref.get("tags") if ref.get("kind") == MESH_SERVICE_SUBSET else None
    return Destination.to(str(ref["name"]), tags)


def split(refs: Iterable[Mapping[str, Any]]) -> list[tuple[Destination, int]]:
    """(destination, weight) of the backendRefs with a weight above 0 (1 when not given); the
    same destination twice is one cluster with the weights added."""
    weights: dict[Destination, int] = {}
    for ref in refs:
        weight = int(ref.get("weight", 1))
        if weight > 0:
            dest = destination(ref)
            weights[dest] = weights.get(dest, 0) + weight
    return list(weights.items())


def _apply_filters(
    route: route_components_pb2.Route, filters: Iterable[Mapping[str, Any]], prefix: str, mirrors: list[Destination]
) -> None:
    redirect: Mapping[str, Any] | None = None
    for item in filters:
        kind = item["type"]
        if kind == "RequestHeaderModifier":
            spec = item["requestHeaderModifier"]
            route.request_headers_to_add.extend(_header_options(spec))
            route.request_headers_to_remove.extend(str(n) for n in spec.get("remove") or [])
        elif kind == "ResponseHeaderModifier":
            spec = item["responseHeaderModifier"]
            route.response_headers_to_add.extend(_header_options(spec))
            route.response_headers_to_remove.extend(str(n) for n in spec.get("remove") or [])
        elif kind == "RequestRedirect":
            redirect = item["requestRedirect"]
        elif kind == "URLRewrite":
            spec = item["urlRewrite"]
            if spec.get("hostname"):
                route.route.host_rewrite_literal = str(spec["hostname"])
            if spec.get("path"):
                prefix_rewrite, regex_rewrite = _path_rewrite(spec["path"], prefix)
                if prefix_rewrite is not None:
                    route.route.prefix_rewrite = prefix_rewrite
                if regex_rewrite is not None:
                    route.route.regex_rewrite.CopyFrom(regex_rewrite)
        elif kind == "RequestMirror":
            spec = item["requestMirror"]
            target = destination(spec["backendRef"])
            mirrors.append(target)
            policy = route.route.request_mirror_policies.add(cluster=target.cluster_name)
            if spec.get("percentage") is not None:
                policy.runtime_fraction.default_value.CopyFrom(_percent(spec["percentage"]))
    if redirect is not None:
        _redirect(route, redirect, prefix)


def _redirect(route: route_components_pb2.Route, spec: Mapping[str, Any], prefix: str) -> None:
    """Answer with a redirect instead of forwarding (the semantic check refuses a redirect
    together with a rewrite or a mirror, which need a forwarded request)."""
    route.ClearField("route")
    action = route.redirect
    if spec.get("scheme"):
        action.scheme_redirect = str(spec["scheme"])
    if spec.get("hostname"):
        action.host_redirect = str(spec["hostname"])
    if spec.get("port"):
        action.port_redirect = int(spec["port"])
    if spec.get("path"):
        prefix_rewrite, regex_rewrite = _path_rewrite(spec["path"], prefix)
        if prefix_rewrite is not None:
            action.prefix_rewrite = prefix_rewrite
        if regex_rewrite is not None:
            action.regex_rewrite.CopyFrom(regex_rewrite)
    action.response_code = _REDIRECT_CODES[int(spec.get("statusCode") or 302)]


def _forward(route: route_components_pb2.Route, backends: Sequence[tuple[Destination, int]]) -> None:
    if len(backends) == 1:
        route.route.cluster = backends[0][0].cluster_name
        return
    for dest, weight in backends:
        route.route.weighted_clusters.clusters.add(name=dest.cluster_name, weight={"value": weight})


def build_routes(
    rules: Sequence[Mapping[str, Any]], default: Destination | None
) -> tuple[list[route_components_pb2.Route], list[Destination]]:
    """Envoy routes for merged rules (``route_conf``'s), each named by its rule's matches hash,
    and every destination they send or mirror to. ``default``: where rules without backendRefs
    and the catch-all route go (a sidecar's destination); None on a gateway (every rule has
    backends or redirects, the schema insists)."""
    items: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = [(m, r) for r in rules for m in r["matches"]]
    items.sort(key=lambda item: match_rank(item[0]))
    if default is not None and not any(match == CATCH_ALL for match, _ in items):
        items.append((CATCH_ALL, None))
    routes: list[route_components_pb2.Route] = []
    used: dict[Destination, None] = {}
    for match, rule in items:
        conf: Mapping[str, Any] = (rule.get("default") or {}) if rule is not None else {}
        filters = conf.get("filters") or []
        redirects = any(f["type"] == "RequestRedirect" for f in filters)
        refs = conf.get("backendRefs")
        backends = split(refs) if refs else ([(default, 1)] if default is not None else [])
        if not backends and not redirects:
            continue  # every backend weighs 0: the route is left out, the next one matches
        for envoy_match, prefix in route_matches(match):
            name = matches_hash(rule["matches"]) if rule is not None else ""
            route = route_components_pb2.Route(name=name, match=envoy_match)
            mirrors: list[Destination] = []
            if backends:
                _forward(route, backends)
            _apply_filters(route, filters, prefix, mirrors)
            routes.append(route)
            if route.HasField("route"):
                used.update(dict.fromkeys(dest for dest, _ in backends))
                used.update(dict.fromkeys(mirrors))
    return routes, list(used)


def apply_outbound(pieces: OutboundPieces, conf: Conf) -> None:
    """A MeshHTTPRoute routes HTTP traffic: an outbound whose destination's ``kuma.io/protocol``
    is not HTTP-based (http, http2, grpc) is left to MeshTCPRoute, as in Kuma."""
    if not pieces.is_http:
        return
    pieces.routes, pieces.destinations = build_routes(conf["rules"], Destination.to(pieces.service))


def policy_destinations(policy: Resource) -> list[Destination]:
    return [destination(ref) for _, ref in backend_refs(policy.spec)]


# Runs before the policies that configure routes (their settings go on the template route).
PLUGIN = Plugin(TYPE, order=2, outbound=apply_outbound, to_conf=route_conf, destinations=policy_destinations)
