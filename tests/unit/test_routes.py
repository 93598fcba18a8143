"""MeshHTTPRoute / MeshTCPRoute: how rules merge and order (Kuma's semantics), what a route
becomes in Envoy, and what is refused as not supported yet. The golden files under
testdata/policies/meshhttproute/ and meshtcproute/ show whole configs; the e2e test
(tests/e2e/test_routes_envoy.py) runs them through a real Envoy."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from zonemesh.shared.resources.codec import from_universal, parse_universal
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.zone_cp.xds.envoy import Destination
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.inspection import RULE_MATCHES_HASH, rules
from zonemesh.zone_cp.xds.policies.meshhttproute import (
    build_routes,
    match_rank,
    matches_hash,
    merge_rules,
    origins,
    route_conf,
)
from zonemesh.zone_cp.xds.resources import LISTENER, ROUTE
from zonemesh.zone_cp.xds.testing import mesh_context

PREFIX = {"path": {"type": "PathPrefix", "value": "/api"}}
EXACT = {"path": {"type": "Exact", "value": "/api/login"}}


def rule(match: dict[str, Any], **default: Any) -> dict[str, Any]:
    return {"matches": [match], "default": default}


def backends(*names: str) -> list[dict[str, Any]]:
    return [{"kind": "MeshService", "name": n} for n in names]


# --- merging: rules with equal matches merge, the more precedent entry's come first -------------------


def test_equal_matches_merge_later_default_over_earlier_and_takes_its_place() -> None:
    mesh_wide = (
        "mesh-wide",
        [
            rule(PREFIX, backendRefs=backends("a"), filters=[{"type": "RequestHeaderModifier"}]),
            rule(EXACT, backendRefs=backends("login")),
        ],
    )
    specific = ("specific", [rule(PREFIX, backendRefs=backends("b"))])
    merged = merge_rules([mesh_wide, specific])
    # The most precedent entry first; the rule it shares with the earlier entry took its place.
    assert [(r.matches[0], r.origin) for r in merged] == [(PREFIX, "specific"), (EXACT, "mesh-wide")]
    # backendRefs (a list) replaced; filters, which the later rule does not set, kept.
    assert merged[0].default == {"backendRefs": backends("b"), "filters": [{"type": "RequestHeaderModifier"}]}


def test_an_entrys_rules_keep_their_written_order() -> None:
    first = ("p", [rule({"method": "GET"}), rule({"method": "POST"}), rule({"method": "PUT"})])
    assert [r.matches[0]["method"] for r in merge_rules([first])] == ["GET", "POST", "PUT"]


def test_matches_differing_in_order_or_content_do_not_merge() -> None:
    a = {"path": {"type": "PathPrefix", "value": "/a"}}
    b = {"path": {"type": "PathPrefix", "value": "/b"}}
    merged = merge_rules([("one", [{"matches": [a, b], "default": {}}]), ("two", [{"matches": [b, a], "default": {}}])])
    assert len(merged) == 2


def policy(name: str, top: dict[str, Any] | None, to: list[dict[str, Any]]) -> Any:
    spec: dict[str, Any] = {"to": to}
    if top is not None:
        spec["targetRef"] = top
    return from_universal({"type": "MeshHTTPRoute", "mesh": "default", "name": name, "spec": spec})[0]


def test_the_more_specific_top_level_target_ref_wins_a_shared_rule() -> None:
    entry = {"targetRef": {"kind": "MeshService", "name": "api"}, "rules": [rule(PREFIX, backendRefs=backends("x"))]}
    mesh = policy("a-mesh", {"kind": "Mesh"}, [entry])
    service = copy.deepcopy(entry)
    service["rules"][0]["default"]["backendRefs"] = backends("y")
    by_service = policy("z-service", {"kind": "MeshService", "name": "web"}, [service])
    conf = route_conf([mesh, by_service], "api")  # matching's order: least specific first
    assert conf == {"rules": [{"matches": [PREFIX], "default": {"backendRefs": backends("y")}}]}
    assert origins([mesh, by_service], "api") == {matches_hash([PREFIX]): "z-service"}
    assert route_conf([mesh, by_service], "other") is None


# --- ordering: most specific match first (Kuma's CompareMatch) -----------------------------------------


def test_matches_are_ordered_most_specific_first() -> None:
    matches = [
        {},
        {"headers": [{"name": "a", "value": "1"}]},
        {"headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]},
        {"method": "GET"},
        {"path": {"type": "RegularExpression", "value": "/x.*"}},
        {"path": {"type": "PathPrefix", "value": "/"}},
        {"path": {"type": "PathPrefix", "value": "/long/prefix"}},
        {"path": {"type": "Exact", "value": "/e"}, "method": "GET"},
        {"path": {"type": "Exact", "value": "/e"}},
    ]
    ordered = sorted(matches, key=match_rank)
    assert ordered == [
        {"path": {"type": "Exact", "value": "/e"}, "method": "GET"},
        {"path": {"type": "Exact", "value": "/e"}},
        {"path": {"type": "PathPrefix", "value": "/long/prefix"}},
        {"path": {"type": "PathPrefix", "value": "/"}},
        {"path": {"type": "RegularExpression", "value": "/x.*"}},
        {"method": "GET"},
        {"headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]},
        {"headers": [{"name": "a", "value": "1"}]},
        {},
    ]


def test_a_catch_all_to_the_destination_comes_last_unless_a_rule_is_one() -> None:
    own = Destination.to("api")
    rules = merge_rules([("r", [rule({"method": "GET"}, backendRefs=backends("b"))])])
    routes, _ = build_routes([r.json for r in rules], own)
    assert [(r.match.prefix, r.route.cluster) for r in routes] == [("/", "b"), ("/", "api")]
    rules = merge_rules([("r", [rule({"path": {"type": "PathPrefix", "value": "/"}}, backendRefs=backends("b"))])])
    routes, _ = build_routes([r.json for r in rules], own)
    assert [r.route.cluster for r in routes] == ["b"]


def test_prefix_rewrite_keeps_whole_path_segments() -> None:
    """PathPrefix /old with ReplacePrefixMatch /new: /old -> /new, /old/x -> /new/x (two Envoy
    routes; /older is not matched at all)."""
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
    }
    rules = merge_rules(
        [("r", [rule({"path": {"type": "PathPrefix", "value": "/old"}}, filters=[rewrite], backendRefs=backends("a"))])]
    )
    routes, _ = build_routes([r.json for r in rules], None)
    exact, prefix = routes
    assert exact.match.path == "/old" and exact.route.regex_rewrite.substitution == "/new"
    assert prefix.match.prefix == "/old/" and prefix.route.prefix_rewrite == "/new/"


def test_weight_zero_drops_a_backend_and_a_rule_left_without_one() -> None:
    rules = merge_rules(
        [
            (
                "r",
                [
                    rule({"method": "GET"}, backendRefs=[{"kind": "MeshService", "name": "b", "weight": 0}]),
                    rule(
                        {"method": "PUT"},
                        backendRefs=[*backends("c"), {"kind": "MeshService", "name": "d", "weight": 0}],
                    ),
                ],
            )
        ]
    )
    routes, used = build_routes([r.json for r in rules], Destination.to("api"))
    assert [r.route.cluster for r in routes] == ["c", "api"]
    assert used == [Destination.to("c"), Destination.to("api")]


# --- on a proxy ------------------------------------------------------------------------------------

WORKLOADS = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: web, kuma.io/protocol: http}}]
  outbound: [{port: 10001, tags: {kuma.io/service: api}}]
---
type: Dataplane
mesh: default
name: api-1
networking:
  address: 10.0.0.2
  inbound: [{port: 7000, tags: {kuma.io/service: api, kuma.io/protocol: http, version: v1}}]
"""

HTTP_ROUTE = """
type: MeshHTTPRoute
mesh: default
name: http
spec:
  to:
    - targetRef: {kind: MeshService, name: api}
      rules:
        - matches: [{path: {type: PathPrefix, value: /v1}}]
          default:
            backendRefs: [{kind: MeshServiceSubset, name: api, tags: {version: v1}}]
"""

TCP_ROUTE = """
type: MeshTCPRoute
mesh: default
name: tcp
spec:
  to:
    - targetRef: {kind: MeshService, name: api}
      rules: [{default: {backendRefs: [{kind: MeshService, name: api}]}}]
"""


async def outbound_of(*docs: str) -> tuple[Any, Any]:
    resources = [from_universal(d)[0] for text in (WORKLOADS, *docs) for d in yaml.safe_load_all(text)]
    ctx = await mesh_context(resources)
    out = generate(ctx, ctx.dataplanes["web-1"])
    listener = out.get(LISTENER, "outbound:127.0.0.1:10001")
    assert listener is not None
    return listener.filter_chains[0].filters[0].name, out.get(ROUTE, "outbound:api")  # type: ignore[attr-defined]


async def test_an_http_route_wins_over_a_tcp_route_for_an_http_destination() -> None:
    terminal, routes = await outbound_of(TCP_ROUTE, HTTP_ROUTE)
    assert terminal == "envoy.filters.network.http_connection_manager"
    assert [r.match.path or r.match.prefix for r in routes.virtual_hosts[0].routes] == ["/v1", "/v1/", "/"]


async def test_a_tcp_route_alone_forwards_an_http_destination_as_tcp() -> None:
    terminal, routes = await outbound_of(TCP_ROUTE)
    assert terminal == "envoy.filters.network.tcp_proxy" and routes is None


# --- refused: what zonemesh cannot apply yet, and what cannot work ---------------------------------------


def http_route(default: dict[str, Any], top: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "to": [
            {"targetRef": {"kind": "MeshService", "name": "api"}, "rules": [{"matches": [PREFIX], "default": default}]}
        ]
    }
    if top is not None:
        spec["targetRef"] = top
        spec["to"][0]["targetRef"] = {"kind": "Mesh"}
    return {"type": "MeshHTTPRoute", "mesh": "default", "name": "r", "spec": spec}


def reasons(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        from_universal(doc)
    return {e.field: e.reason for e in exc.value.errors}


BACKENDS = "spec.to[0].rules[0].default.backendRefs[0]"
NOT_YET = [
    (
        {"kind": "MeshService", "name": "api", "port": 8080},
        f"{BACKENDS}.port",
        "a backendRef port is not supported yet",
    ),
    (
        {"kind": "MeshService", "name": "api", "sectionName": "http"},
        f"{BACKENDS}.sectionName",
        "a backendRef sectionName is not supported yet",
    ),
    ({"kind": "MeshService", "labels": {"app": "api"}}, f"{BACKENDS}.labels", "selecting backends by labels is not"),
    (
        {"kind": "MeshExternalService", "name": "httpbin"},
        f"{BACKENDS}.kind",
        "backendRef kind MeshExternalService is not supported yet",
    ),
    (
        {"kind": "MeshMultiZoneService", "name": "api"},
        f"{BACKENDS}.kind",
        "backendRef kind MeshMultiZoneService is not supported yet",
    ),
    ({"kind": "MeshService", "name": "api", "mesh": "other"}, f"{BACKENDS}.mesh", "a backendRef to another mesh"),
]


@pytest.mark.parametrize(("ref", "field", "reason"), NOT_YET, ids=[n[1].rsplit(".", 1)[1] for n in NOT_YET])
def test_backend_refs_zonemesh_cannot_route_to_are_refused_as_not_supported_yet(
    ref: dict[str, Any], field: str, reason: str
) -> None:
    doc = http_route({"backendRefs": [ref]})
    parse_universal(copy.deepcopy(doc))  # valid Kuma
    assert reasons(doc)[field].startswith(reason)
    tcp = {
        "type": "MeshTCPRoute",
        "mesh": "default",
        "name": "t",
        "spec": {
            "to": [
                {"targetRef": {"kind": "MeshService", "name": "api"}, "rules": [{"default": {"backendRefs": [ref]}}]}
            ]
        },
    }
    assert reasons(tcp)[field].startswith(reason)


def test_host_to_backend_hostname_is_refused_as_not_supported_yet() -> None:
    doc = http_route(
        {
            "filters": [{"type": "URLRewrite", "urlRewrite": {"hostToBackendHostname": True}}],
            "backendRefs": backends("a"),
        },
        top={"kind": "MeshGateway", "name": "edge"},
    )
    field = "spec.to[0].rules[0].default.filters[0].urlRewrite.hostToBackendHostname"
    assert reasons(doc)[field].startswith("MeshHTTPRoute urlRewrite.hostToBackendHostname is not supported yet")


def test_a_redirect_cannot_be_combined_with_a_rewrite_or_a_mirror() -> None:
    doc = http_route(
        {
            "filters": [
                {"type": "RequestRedirect", "requestRedirect": {"hostname": "example.com"}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal"}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"kind": "MeshService", "name": "m"}}},
            ]
        }
    )
    found = reasons(doc)
    assert found["spec.to[0].rules[0].default.filters[1].type"] == "URLRewrite cannot be combined with RequestRedirect"
    assert (
        found["spec.to[0].rules[0].default.filters[2].type"] == "RequestMirror cannot be combined with RequestRedirect"
    )


def test_a_mirror_weight_other_than_one_is_refused() -> None:
    mirror = {"backendRef": {"kind": "MeshService", "name": "m", "weight": 5}}
    doc = http_route({"filters": [{"type": "RequestMirror", "requestMirror": mirror}]})
    assert (
        "has no effect on a mirror"
        in reasons(doc)["spec.to[0].rules[0].default.filters[0].requestMirror.backendRef.weight"]
    )
    mirror["backendRef"]["weight"] = 1  # Kuma's default, as its output may carry it
    from_universal(doc)


def test_a_tcp_route_has_one_rule_with_a_backend_that_weighs_something() -> None:
    zero = [{"kind": "MeshService", "name": "a", "weight": 0}]
    rules = [{"default": {"backendRefs": zero}}, {"default": {"backendRefs": backends("b")}}]
    doc = {
        "type": "MeshTCPRoute",
        "mesh": "default",
        "name": "t",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "api"}, "rules": rules}]},
    }
    found = reasons(doc)
    assert found["spec.to[0].rules"] == "must have at most 1 items"
    assert found["spec.to[0].rules[0].default.backendRefs"] == "needs a backendRef with a weight above 0"


def per_route(policy_type: str, default: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec = {
        "targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": default}],
    }
    return {"type": policy_type, "mesh": "default", "name": "p", "spec": {**spec, **extra}}


def test_per_route_policies_take_what_applies_to_one_route() -> None:
    from_universal(per_route("MeshTimeout", {"http": {"requestTimeout": "5s"}}))
    from_universal(per_route("MeshRetry", {"http": {"numRetries": 3}}))
    found = reasons(per_route("MeshTimeout", {"idleTimeout": "5s", "http": {"streamIdleTimeout": "1s"}}))
    assert found["spec.to[0].default.idleTimeout"].startswith(
        "MeshTimeout idleTimeout on a single route is not supported yet"
    )
    assert (
        "with a top-level MeshHTTPRoute it applies `http.requestTimeout`"
        in found["spec.to[0].default.http.streamIdleTimeout"]
    )
    assert "spec.to[0].default.tcp.maxConnectAttempt" in reasons(
        per_route("MeshRetry", {"tcp": {"maxConnectAttempt": 2}})
    )
    with_from = per_route(
        "MeshTimeout",
        {"http": {"requestTimeout": "5s"}},
        **{"from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1s"}}]},
    )
    assert reasons(with_from)["spec.from"] == "must not be defined when the top-level targetRef is a MeshHTTPRoute"


def test_a_policy_type_that_applies_nothing_per_route_refuses_a_mesh_http_route_target() -> None:
    doc = {
        "type": "MeshRateLimit",
        "mesh": "default",
        "name": "p",
        "spec": {
            "targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}}}},
                }
            ],
        },
    }
    assert reasons(doc)["spec.targetRef.kind"].startswith(
        "MeshRateLimit with a top-level MeshHTTPRoute targetRef (per-route MeshRateLimit) is not supported yet"
    )


@pytest.mark.parametrize(
    "top",
    [
        {"kind": "Mesh", "proxyTypes": ["Gateway"]},
        {"kind": "MeshSubset", "tags": {"a": "b"}, "proxyTypes": ["Gateway"]},
    ],
)
def test_a_route_selecting_only_gateways_needs_a_mesh_gateway_target_ref(top: dict[str, Any]) -> None:
    """It would route nothing: on gateways routes apply with a top-level MeshGateway targetRef."""
    doc = http_route({"backendRefs": backends("a")})
    doc["spec"]["targetRef"] = top
    assert reasons(doc)["spec.targetRef"].startswith("selects only gateways")


PER_ROUTE_TIMEOUT = """
type: MeshTimeout
mesh: default
name: http-timeout
spec:
  targetRef: {kind: MeshHTTPRoute, name: http}
  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 9s}}}]
"""


async def test_inspection_reports_the_merged_rules_their_hashes_and_per_route_confs() -> None:
    """As Kuma's _rules: a MeshHTTPRoute's conf is its merged rules, httpMatches the hash naming
    each rule's routes, a per-route MeshTimeout a `to` rule for that hash (what its routes get)."""
    resources = [
        from_universal(d)[0] for text in (WORKLOADS, HTTP_ROUTE, PER_ROUTE_TIMEOUT) for d in yaml.safe_load_all(text)
    ]
    ctx = await mesh_context(resources)
    found = rules(ctx, ctx.dataplanes["web-1"])
    by_type = {r["type"]: r for r in found["rules"]}
    match = [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    digest = matches_hash(match)
    [route_rule] = by_type["MeshHTTPRoute"]["toRules"]
    assert route_rule["conf"] == {
        "rules": [{"matches": match, "default": yaml.safe_load(HTTP_ROUTE)["spec"]["to"][0]["rules"][0]["default"]}]
    }
    assert [o["name"] for o in route_rule["origin"]] == ["http"]
    assert found["httpMatches"] == [{"hash": digest, "match": match}]
    per_route = [
        r for r in by_type["MeshTimeout"]["toRules"] if any(m["key"] == RULE_MATCHES_HASH for m in r["matchers"])
    ]
    assert [(r["matchers"], r["conf"]["http"]["requestTimeout"]) for r in per_route] == [
        (
            [
                {"key": RULE_MATCHES_HASH, "value": digest, "not": False},
                {"key": "kuma.io/service", "value": "api", "not": False},
            ],
            "9s",
        )
    ]
    routes = generate(ctx, ctx.dataplanes["web-1"]).get(ROUTE, "outbound:api")
    assert routes is not None
    timeouts = {(r.name, r.route.timeout.seconds) for r in routes.virtual_hosts[0].routes}  # type: ignore[attr-defined]
    assert timeouts == {(digest, 9), ("", 0)}  # the catch-all is no route of `http`: no timeout for it
