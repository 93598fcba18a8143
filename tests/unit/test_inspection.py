"""What ``_rules`` / ``_policies`` report (zone_cp/xds/inspection.py) is what generation applies.

Two ways: field by field for MeshTimeout and MeshTrafficPermission (the reported value is the one
in the generated Envoy config), and for every golden case of every policy and both proxy kinds at
once: the reported rules, written back as one policy per type in place of the real ones, generate
exactly the same Envoy config. A plugin that merged its confs otherwise than the rules say would
fail the second test."""

from __future__ import annotations

from typing import Any

import pytest
from test_policy_golden import CASES, PROXIES, context_for
from zonemesh.shared.resources.model import DISPLAY_NAME_LABEL, ORIGIN_LABEL, ZONE_LABEL, Resource
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext, inbounds, is_gateway
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.generators.gateway import select_gateway
from zonemesh.zone_cp.xds.inspection import RULE_MATCHES_HASH, kri, proxy_policies, rules
from zonemesh.zone_cp.xds.policies import PLUGINS, POLICY_TYPES
from zonemesh.zone_cp.xds.policies.matching import section_name
from zonemesh.zone_cp.xds.testing import load_resources, mesh_context

Json = dict[str, Any]

BASE = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
    - {port: 8080, name: main-port, servicePort: 80, tags: {kuma.io/service: web, kuma.io/protocol: http}}
    - {port: 9090, name: admin-port, servicePort: 90, tags: {kuma.io/service: web-admin, kuma.io/protocol: http}}
  outbound:
    - {port: 10001, tags: {kuma.io/service: backend}}
    - {port: 10002, tags: {kuma.io/service: api}}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound: [{port: 9000, tags: {kuma.io/service: backend, kuma.io/protocol: http}}]
---
type: Dataplane
mesh: default
name: api-1
networking:
  address: 10.0.0.3
  inbound: [{port: 7000, tags: {kuma.io/service: api, kuma.io/protocol: http}}]
"""

# Kuma's overriding_meshtimeout case, plus a policy for one inbound only (sectionName).
TIMEOUTS = """
type: MeshTimeout
mesh: default
name: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 20s, connectionTimeout: 2s, http: {requestTimeout: 10s}}
  from:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 20s, connectionTimeout: 2s, http: {requestTimeout: 5s}}
---
type: MeshTimeout
mesh: default
name: override
spec:
  targetRef: {kind: MeshService, name: web}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default: {http: {requestTimeout: 15s}}
    - targetRef: {kind: MeshService, name: nobody-calls-it}
      default: {http: {requestTimeout: 20s}}
  from:
    - targetRef: {kind: Mesh}
      default: {connectionTimeout: 20s}
---
type: MeshTimeout
mesh: default
name: admin-only
spec:
  targetRef: {kind: Dataplane, name: web-1, sectionName: admin-port}
  from:
    - targetRef: {kind: Mesh}
      default: {http: {requestTimeout: 2s}}
"""


async def context(*texts: str) -> MeshContext:
    return await mesh_context(load_resources("\n---\n".join(texts)))


def by_type(found: Json, policy_type: str) -> Json:
    return next(r for r in found["rules"] if r["type"] == policy_type)


def names(origin: list[Json]) -> list[str]:
    return [o["name"] for o in origin]


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def listener(config: Json, name: str) -> Json:
    return next(item for item in config["listeners"] if item["name"] == name)


def hcm(item: Json) -> Json:
    typed: Json = item["filterChains"][0]["filters"][-1]["typedConfig"]
    return typed


async def test_meshtimeout_rules_are_the_values_in_the_envoy_config() -> None:
    ctx = await context(BASE, TIMEOUTS)
    web = ctx.dataplanes["web-1"]
    found = rules(ctx, web)
    assert found["resource"] == {"type": "Dataplane", "mesh": "default", "name": "web-1", "labels": {}}
    timeout = by_type(found, "MeshTimeout")
    to = {tuple((m["key"], m["value"], m["not"]) for m in r["matchers"]): r for r in timeout["toRules"]}
    backend = to[((SERVICE_TAG, "backend", False),)]
    assert backend["conf"] == {"idleTimeout": "20s", "connectionTimeout": "2s", "http": {"requestTimeout": "15s"}}
    assert names(backend["origin"]) == ["default", "override"]  # merge order: the last one wins
    others = to[((SERVICE_TAG, "backend", True), (SERVICE_TAG, "nobody-calls-it", True))]
    assert others["conf"]["http"] == {"requestTimeout": "10s"} and names(others["origin"]) == ["default"]

    config = dump(generate(ctx, web))
    clusters = {c["name"]: c for c in config["clusters"]}
    routes = {r["name"]: r["virtualHosts"][0]["routes"][0]["route"] for r in config["routes"]}
    for service, rule in (("backend", backend), ("api", others)):
        assert seconds(clusters[service]["connectTimeout"]) == seconds(rule["conf"]["connectionTimeout"])
        assert seconds(routes[f"outbound:{service}"]["timeout"]) == seconds(rule["conf"]["http"]["requestTimeout"])

    inbound = {r["inbound"]["name"]: r for r in timeout["fromRules"]}
    assert [r["inbound"]["port"] for r in timeout["fromRules"]] == [8080, 9090]
    assert inbound["main-port"]["inbound"]["tags"] == {SERVICE_TAG: "web", "kuma.io/protocol": "http"}
    main, admin = inbound["main-port"]["rules"], inbound["admin-port"]["rules"]
    assert [r["matchers"] for r in main] == [[]]  # from any client
    assert main[0]["conf"] == {"idleTimeout": "20s", "connectionTimeout": "20s", "http": {"requestTimeout": "5s"}}
    assert names(main[0]["origin"]) == ["default", "override"]
    assert admin[0]["conf"]["http"] == {"requestTimeout": "2s"} and names(admin[0]["origin"]) == [
        "default",
        "admin-only",
    ]
    # web-admin is served by web-1 but not by the service `web` override selects: not in its origin.
    assert admin[0]["conf"]["connectionTimeout"] == "2s"
    for port, local, rule in ((8080, "localhost:80", main[0]), (9090, "localhost:90", admin[0])):
        chain = hcm(listener(config, f"inbound:10.0.0.1:{port}"))
        route = chain["routeConfig"]["virtualHosts"][0]["routes"][0]["route"]
        assert seconds(route["timeout"]) == seconds(rule["conf"]["http"]["requestTimeout"])
        assert seconds(clusters[local]["connectTimeout"]) == seconds(rule["conf"]["connectionTimeout"])


PERMISSIONS = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends: [{name: ca-1, type: builtin}]
---
type: MeshTrafficPermission
mesh: default
name: allow-all-but-api
spec:
  targetRef: {kind: Mesh}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Allow}
    - targetRef: {kind: MeshService, name: api}
      default: {action: Deny}
---
type: MeshTrafficPermission
mesh: default
name: backend-shadow
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: backend}}
      default: {action: AllowWithShadowDeny}
"""


async def test_meshtrafficpermission_rules_per_client_are_the_rbac_in_the_envoy_config() -> None:
    ctx = await context(BASE.replace("type: Mesh\nname: default\n", ""), PERMISSIONS)
    web = ctx.dataplanes["web-1"]
    permission = by_type(rules(ctx, web), "MeshTrafficPermission")
    assert permission["toRules"] == []  # MeshTrafficPermission has no `to`
    main = next(r for r in permission["fromRules"] if r["inbound"]["port"] == 8080)["rules"]
    actions = {tuple((m["value"], m["not"]) for m in r["matchers"]): r["conf"]["action"] for r in main}
    assert actions == {
        (("api", False),): "Deny",
        (("backend", False),): "AllowWithShadowDeny",
        (("api", True), ("backend", True)): "Allow",
    }
    origins = {tuple(m["value"] for m in r["matchers"] if not m["not"]): names(r["origin"]) for r in main}
    assert origins[("backend",)] == ["allow-all-but-api", "backend-shadow"]

    rbac = hcm(listener(dump(generate(ctx, web)), "inbound:10.0.0.1:8080"))["httpFilters"][0]["typedConfig"]
    enforced, shadow = rbac["rules"], rbac["shadowRules"]
    denied = {
        p["authenticated"]["principalName"]["exact"]
        for p in enforced["policies"][next(iter(enforced["policies"]))]["principals"]
    }
    shadowed = {
        p["authenticated"]["principalName"]["exact"]
        for p in shadow["policies"][next(iter(shadow["policies"]))]["principals"]
    }
    assert enforced["action"] == "DENY" and denied == {"spiffe://default/api"}
    assert shadowed == {"spiffe://default/backend"}


async def test_a_type_that_sets_nothing_in_the_mesh_says_so() -> None:
    without_mtls = PERMISSIONS.split("---", 1)[1]
    ctx = await context(BASE, without_mtls)
    permission = by_type(rules(ctx, ctx.dataplanes["web-1"]), "MeshTrafficPermission")
    assert permission["warnings"] == ["Mesh is not mTLS enabled: MeshTrafficPermission has no effect"]
    config = dump(generate(ctx, ctx.dataplanes["web-1"]))
    assert "rbac" not in str(hcm(listener(config, "inbound:10.0.0.1:8080"))["httpFilters"])
    with_mtls = await context(BASE.replace("type: Mesh\nname: default\n", ""), PERMISSIONS)
    assert by_type(rules(with_mtls, with_mtls.dataplanes["web-1"]), "MeshTrafficPermission")["warnings"] == []


async def test_a_builtin_gateway_no_meshgateway_selects_gets_no_rules() -> None:
    ctx = await context_for("meshtimeout", "gateway")
    gateway = ctx.dataplanes["gateway-1"]
    alone = MeshContext.build(
        ctx.mesh, ctx.dataplanes.values(), [p for t, ps in ctx.policies.items() if t != "MeshGateway" for p in ps]
    )
    assert dump(generate(alone, gateway))["listeners"] == []
    assert rules(alone, gateway)["rules"] == []
    assert rules(ctx, gateway)["rules"]


async def test_a_type_with_rules_reports_inbound_rules_from_its_from_and_rules_entries() -> None:
    ctx = await context_for("meshtls", "permissive-and-params")
    tls = by_type(rules(ctx, ctx.dataplanes["web-1"]), "MeshTLS")
    assert tls["fromRules"] == [] and tls["toRules"] == []
    [inbound] = tls["inboundRules"]
    assert inbound["inbound"]["port"] == 8080
    [rule] = inbound["rules"]
    assert rule["conf"] == [
        {
            "tlsVersion": {"min": "TLS12", "max": "TLS13"},
            "tlsCiphers": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
            "mode": "Permissive",
        }
    ]
    assert [(o["resourceMeta"]["name"], o["ruleIndex"]) for o in rule["origin"]] == [
        ("mesh-tls-params", 0),
        ("web-1-permissive", 0),
    ]
    chains = listener(dump(generate(ctx, ctx.dataplanes["web-1"])), "inbound:10.0.0.1:8080")["filterChains"]
    assert [c["filterChainMatch"]["transportProtocol"] for c in chains] == ["tls", "raw_buffer"]  # Permissive


async def test_inbound_rules_per_caller_class_are_the_merged_rules_with_their_indexes() -> None:
    ctx = await context_for("meshtimeout", "rules")
    timeout = by_type(rules(ctx, ctx.dataplanes["web-1"]), "MeshTimeout")
    assert timeout["fromRules"] == []  # a policy with rules selects the inbound: its rules say it all
    [inbound] = timeout["inboundRules"]
    found = {
        (r.get("match") or {}).get("spiffeID", {}).get("value"): (
            r["conf"][0],
            [(o["resourceMeta"]["name"], o["ruleIndex"]) for o in r["origin"]],
        )
        for r in inbound["rules"]
    }
    every = {"connectionTimeout": "3s", "idleTimeout": "10m", "http": {"requestTimeout": "20s"}}
    base = [("mesh-wide", 0), ("inbound-rules", 0)]  # the `from` of mesh-wide counts as a rule
    assert found == {
        None: (every, base),
        "spiffe://default/backend": ({**every, "http": {"requestTimeout": "1s"}}, [*base, ("inbound-rules", 2)]),
        "spiffe://default/ap": (
            {**every, "http": {"requestTimeout": "20s", "streamIdleTimeout": "3s"}},
            [*base, ("inbound-rules", 1)],
        ),
    }


async def test_sections_zonemesh_does_not_apply_on_a_proxy_are_not_reported() -> None:
    # MeshFaultInjection `to` applies on builtin gateways only: a sidecar it selects gets nothing.
    ctx = await context_for("meshfaultinjection", "every-gateway")
    sidecar, gateway = (rules(ctx, ctx.dataplanes[PROXIES[kind]]) for kind in ("sidecar", "gateway"))
    assert "MeshFaultInjection" not in {r["type"] for r in sidecar["rules"]}
    fault = by_type(gateway, "MeshFaultInjection")
    assert fault["toRules"] and fault["fromRules"] == []


async def test_a_builtin_gateway_gets_rules_per_listener_port() -> None:
    ctx = await context_for("meshtimeout", "gateway")
    timeout = by_type(rules(ctx, ctx.dataplanes["gateway-1"]), "MeshTimeout")
    assert [r["inbound"]["port"] for r in timeout["fromRules"]] == [8080, 9090]
    assert timeout["fromRules"][0]["inbound"]["tags"] == {SERVICE_TAG: "edge-gateway"}


async def test_a_proxy_no_policy_selects_has_no_rules() -> None:
    ctx = await context(BASE)
    assert rules(ctx, ctx.dataplanes["web-1"]) == {
        "resource": {"type": "Dataplane", "mesh": "default", "name": "web-1", "labels": {}},
        "rules": [],
        "httpMatches": [],
    }
    assert proxy_policies(ctx, ctx.dataplanes["web-1"]) == {"policies": []}


def patch(timeout: str) -> Json:
    return {"cluster": {"operation": "Patch", "match": {"name": "api"}, "value": f"connectTimeout: {timeout}"}}


async def test_proxy_level_confs_add_up_in_the_order_they_run_with_their_kris() -> None:
    """MeshProxyPatch: the modifications of every policy selecting the proxy, least specific
    first (Kuma appends the lists), and the last one is what the proxy's cluster gets."""

    def proxy_patch(name: str, target: Json, timeout: str, labels: dict[str, str] | None = None) -> Resource:
        spec = {"targetRef": target, "default": {"appendModifications": [patch(timeout)]}}
        return Resource(type="MeshProxyPatch", name=name, mesh="default", spec=spec, labels=labels or {})

    ctx = await context(BASE)
    zone_made = {ORIGIN_LABEL: "zone", ZONE_LABEL: "zone-1", DISPLAY_NAME_LABEL: "b"}
    policies = [
        proxy_patch("zone-1.b", {"kind": "Dataplane", "name": "web-1"}, "12s", zone_made),
        proxy_patch("a", {"kind": "Mesh"}, "13s"),
    ]
    ctx = MeshContext.build(ctx.mesh, ctx.dataplanes.values(), policies)
    web = ctx.dataplanes["web-1"]
    found = proxy_policies(ctx, web)
    assert found == {
        "policies": [
            {
                "kind": "MeshProxyPatch",
                "conf": {"appendModifications": [patch("13s"), patch("12s")]},
                "origins": [{"kri": "kri_mpp_default___a_"}, {"kri": "kri_mpp_default_zone-1__b_"}],
            }
        ]
    }
    proxy_rule = by_type(rules(ctx, web), "MeshProxyPatch")["proxyRule"]
    assert proxy_rule["conf"] == found["policies"][0]["conf"] and names(proxy_rule["origin"]) == ["a", "zone-1.b"]
    api = next(c for c in dump(generate(ctx, web))["clusters"] if c["name"] == "api")
    assert api["connectTimeout"] == "12s"  # the last modification of the list
    assert kri(web) == "kri_dp_default___web-1_"


# -- every golden case: the rules, written back as policies, generate the same config ------------


def _written_back(ctx: MeshContext, dp: Resource, found: Json) -> list[Resource]:
    """The reported rules as policies selecting ``dp``: synthetic ones (one per type and section),
    except a type whose inbound rules apply one by one (MeshTrafficPermission names its policies
    in the RBAC matcher): those keep their policy's name and top-level targetRef."""
    gateway = is_gateway(dp)
    top = {"kind": "Mesh", "proxyTypes": ["Gateway"]} if gateway else {"kind": "Dataplane", "name": dp.name}
    policies: list[Resource] = []

    def selecting(inbound: Json) -> dict[str, Any]:
        ref = dict(top)
        if not gateway:
            own = next(i for i in inbounds(dp) if i["port"] == inbound["port"])
            ref["sectionName"] = section_name(own)
        return ref

    def as_rule(item: Json) -> Json:
        [conf] = item["conf"]
        return {"default": conf, **({"matches": [item["match"]]} if "match" in item else {})}

    routes_to: dict[str, str] = {}  # service -> the written-back MeshHTTPRoute routing to it
    for rule in found["rules"]:
        kind, n = rule["type"], len(policies)
        plugin = next(p for p in PLUGINS if p.type == kind)
        if rule["toRules"] and plugin.destinations is not None:  # the route types: rules, not a default
            policies.append(_routes_written_back(ctx, dp, rule, f"w{n}", top, routes_to))
        elif rule["toRules"]:
            to = []
            for item in rule["toRules"]:  # merged Mesh first (entry precedence): a service's conf includes it
                positive = [m for m in item["matchers"] if not m["not"]]
                if any(m["key"] == RULE_MATCHES_HASH for m in positive):
                    # One route's conf: a policy for the MeshHTTPRoute written back for its service
                    # (it decides every route of that service but the catch-all here).
                    [service] = [m["value"] for m in positive if m["key"] == SERVICE_TAG]
                    spec = {
                        "targetRef": {"kind": "MeshHTTPRoute", "name": routes_to[service]},
                        "to": [{"targetRef": {"kind": "Mesh"}, "default": item["conf"]}],
                    }
                    policies.append(Resource(type=kind, name=f"w{n}-route-{len(policies)}", mesh=dp.mesh, spec=spec))
                    continue
                ref = {"kind": "MeshService", "name": positive[0]["value"]} if positive else {"kind": "Mesh"}
                to.append({"targetRef": ref, "default": item["conf"]})
            policies.append(Resource(type=kind, name=f"w{n}", mesh=dp.mesh, spec={"targetRef": top, "to": to}))
        with_rules = {entry["inbound"]["port"] for entry in rule["inboundRules"]}
        for k, entry in enumerate(rule["fromRules"]):
            if entry["inbound"]["port"] in with_rules:
                continue  # the inbound rules say it all (a type that takes `from` as rules)
            sources = []
            for item in entry["rules"]:
                positive = [m for m in item["matchers"] if not m["not"]]
                assert all(m["key"] == SERVICE_TAG for m in positive) and len(positive) <= 1, item
                source = {"kind": "MeshService", "name": positive[0]["value"]} if positive else {"kind": "Mesh"}
                sources.append({"targetRef": source, "default": item["conf"]})
            spec = {"targetRef": selecting(entry["inbound"]), "from": sources}
            policies.append(Resource(type=kind, name=f"w{n}-{k}", mesh=dp.mesh, spec=spec))
        originals = {p.name: p for p in ctx.policies.get(kind, ())}
        by_policy: dict[str, list[tuple[int, Any, Json]]] = {}
        for k, entry in enumerate(rule["inboundRules"]):
            if plugin.from_as_rules:  # the effective rules, merged: one policy per inbound
                spec = {"targetRef": selecting(entry["inbound"]), "rules": [as_rule(i) for i in entry["rules"]]}
                policies.append(Resource(type=kind, name=f"w{n}-r{k}", mesh=dp.mesh, spec=spec))
                continue
            for item in entry["rules"]:  # each rule of its policy, in order
                [origin] = item["origin"]
                listed = by_policy.setdefault(origin["resourceMeta"]["name"], [])
                if (origin["ruleIndex"], item.get("match")) not in [(i, m) for i, m, _ in listed]:
                    listed.append((origin["ruleIndex"], item.get("match"), as_rule(item)))
        for name, listed in by_policy.items():
            spec = {"targetRef": originals[name].spec.get("targetRef"), "rules": [r for _, _, r in listed]}
            policies.append(Resource(type=kind, name=name, mesh=dp.mesh, spec=spec))
        if "proxyRule" in rule:
            spec = {"targetRef": top, "default": rule["proxyRule"]["conf"]}
            policies.append(Resource(type=kind, name=f"w{n}-p", mesh=dp.mesh, spec=spec))
    return policies


def _routes_written_back(
    ctx: MeshContext, dp: Resource, rule: Json, name: str, top: Json, routes_to: dict[str, str]
) -> Resource:
    """A route type's reported rules as one route: per service (a sidecar) or per hostname (a
    builtin gateway, whose routes name the MeshGateway), `to` entries carrying the merged rules."""
    http = rule["type"] == "MeshHTTPRoute"
    to = []
    for item in rule["toRules"]:
        rules = item["conf"]["rules"] if http else [item["conf"]]
        if is_gateway(dp):
            to.append(
                {
                    "targetRef": {"kind": "Mesh"},
                    **{k: v for k, v in item["conf"].items() if k == "hostnames"},
                    "rules": rules,
                }
            )
            continue
        [service] = [m["value"] for m in item["matchers"] if not m["not"]]
        routes_to[service] = name
        to.append({"targetRef": {"kind": "MeshService", "name": service}, "rules": rules})
    if is_gateway(dp):
        gateway = select_gateway(ctx.policies.get("MeshGateway", ()), dp)
        assert gateway is not None
        top = {"kind": "MeshGateway", "name": gateway.name}
    return Resource(type=rule["type"], name=name, mesh=dp.mesh, spec={"targetRef": top, "to": to})


def assert_rules_generate_the_same_config(ctx: MeshContext, dp: Resource) -> None:
    found = rules(ctx, dp)
    assert found["rules"], "a case without rules would prove nothing"
    assert all(not r["toResourceRules"] for r in found["rules"])
    applied = dump(generate(ctx, dp), hide_certificates=True)
    others = [p for t, of_type in ctx.policies.items() if t not in POLICY_TYPES for p in of_type]
    externals = list(ctx.external_services.values())
    written = [*others, *_written_back(ctx, dp, found)]
    rewritten = MeshContext.build(ctx.mesh, ctx.dataplanes.values(), written, externals, ctx.certs)
    assert dump(generate(rewritten, dp), hide_certificates=True) == applied


@pytest.mark.parametrize("kind", sorted(PROXIES))
@pytest.mark.parametrize(("policy", "case"), CASES, ids=[f"{p}/{c}" for p, c in CASES])
async def test_the_reported_rules_generate_the_same_config(policy: str, case: str, kind: str) -> None:
    ctx = await context_for(policy, case)
    dp = ctx.dataplanes[PROXIES[kind]]
    if not rules(ctx, dp)["rules"]:
        pytest.skip(f"no {policy} rule on the {kind} in this case (its sections apply elsewhere)")
    assert_rules_generate_the_same_config(ctx, dp)


@pytest.mark.parametrize("texts", [(BASE, TIMEOUTS), (BASE.replace("type: Mesh\nname: default\n", ""), PERMISSIONS)])
async def test_overlapping_policies_reported_generate_the_same_config(texts: tuple[str, str]) -> None:
    ctx = await context(*texts)
    assert_rules_generate_the_same_config(ctx, ctx.dataplanes["web-1"])
