"""MeshLoadBalancingStrategy: validation (Kuma 2.14's, plus what Envoy would NACK), the pure
locality functions (priorities, failover order, affinity groups), and generation: what each field
of Kuma's schema sets in Envoy, on sidecars across zones, on the zone egress and on gateways.

Golden files: ``testdata/policies/meshloadbalancingstrategy/`` (sidecar and gateway) and
``testdata/crosszone/lb-*`` (zones, the egress)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.json_format import MessageToDict
from test_crosszone import ZONE, contexts
from test_policy_golden import TESTDATA, load
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.zone_cp.xds.context import Endpoint
from zonemesh.zone_cp.xds.generators import GenerationError, generate
from zonemesh.zone_cp.xds.generators import egress as egress_gen
from zonemesh.zone_cp.xds.locality import (
    ANY,
    ANY_EXCEPT,
    NONE,
    ONLY,
    Affinity,
    Failover,
    LocalityPlan,
    compact,
    default_affinity_weight,
    local_groups,
    overprovisioning_factor,
    zone_priorities,
)
from zonemesh.zone_cp.xds.policies.meshloadbalancingstrategy import locality_plan
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet
from zonemesh.zone_cp.xds.testing import load_resources, mesh_context

MTLS = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
"""


def policy(to: list[dict[str, Any]], top: dict[str, Any] | None = None, name: str = "lb") -> dict[str, Any]:
    spec: dict[str, Any] = {"to": to}
    if top is not None:
        spec["targetRef"] = top
    return {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": name, "spec": spec}


def to_backend(default: dict[str, Any], kind: str = "MeshService") -> dict[str, Any]:
    ref = {"kind": kind, "name": "backend"} if kind == "MeshService" else {"kind": kind}
    return {"targetRef": ref, "default": default}


def refused(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        from_universal(doc)
    return {e.field: e.reason for e in exc.value.errors}


# --- validation ----------------------------------------------------------------------------

EVERY_FIELD = yaml.safe_load("""
type: MeshLoadBalancingStrategy
mesh: default
name: every-field
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default:
        loadBalancer:
          type: LeastRequest
          leastRequest: {choiceCount: 3, activeRequestBias: "1.5"}
        localityAwareness:
          disabled: false
          localZone:
            affinityTags:
              - {key: k8s.io/node, weight: 9000}
              - {key: version, weight: 90}
          crossZone:
            failover:
              - from: {zones: [zone-1]}
                to: {type: Only, zones: [zone-3]}
              - to: {type: AnyExcept, zones: [zone-9]}
              - to: {type: Any}
              - to: {type: None}
            failoverThreshold: {percentage: "62.5"}
    - targetRef: {kind: MeshService, name: backend}
      default:
        loadBalancer:
          type: RingHash
          ringHash:
            hashFunction: MurmurHash2
            minRingSize: 64
            maxRingSize: 2048
            hashPolicies:
              - {type: Header, header: {name: x-user}, terminal: true}
              - {type: Cookie, cookie: {name: session, path: /app, ttl: 30m}}
              - {type: Connection, connection: {sourceIP: true}}
              - {type: SourceIP, connection: {sourceIP: true}}
              - {type: QueryParameter, queryParameter: {name: user}}
              - {type: FilterState, filterState: {key: io.zonemesh.user}}
    - targetRef: {kind: MeshService, name: api}
      default:
        loadBalancer: {type: Maglev, maglev: {tableSize: 65537}}
        hashPolicies:
          - {type: Header, header: {name: x-user}}
""")


def test_every_field_of_kumas_schema_is_accepted() -> None:
    res, _ = from_universal(EVERY_FIELD)
    assert res.type == "MeshLoadBalancingStrategy"
    for lb in ({"type": "RoundRobin", "roundRobin": {}}, {"type": "Random", "random": {}}):
        from_universal(policy([to_backend({"loadBalancer": lb})]))
    from_universal(policy([{"targetRef": {"kind": "Mesh"}}]))  # `default` is optional, as in Kuma


def spec_with(default: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return policy([to_backend(default)], **kwargs)


@pytest.mark.parametrize(
    ("default", "field", "reason"),
    [
        (
            {"hashPolicies": [{"type": "Header"}]},
            "spec.to[0].default.hashPolicies[0].header",
            "must be defined",
        ),
        (
            {"hashPolicies": [{"type": "Header", "header": {"name": "x"}, "cookie": {"name": "c"}}]},
            "spec.to[0].default.hashPolicies[0].cookie",
            "must not be set with type Header",
        ),
        (
            {"hashPolicies": [{"type": "Cookie", "cookie": {"name": "c", "path": "app"}}]},
            "spec.to[0].default.hashPolicies[0].cookie.path",
            "must be an absolute path",
        ),
        (
            {"hashPolicies": [{"type": "SourceIP"}]},
            "spec.to[0].default.hashPolicies[0].connection",
            "must be defined",
        ),
        (
            {"hashPolicies": [{"type": "Header", "header": {"name": "x user"}}]},
            "spec.to[0].default.hashPolicies[0].header.name",
            "must be an HTTP header name",
        ),
        (
            {"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65536}}},
            "spec.to[0].default.loadBalancer.maglev.tableSize",
            "must be a prime number (Envoy's Maglev table), e.g. 65537",
        ),
        (
            {"loadBalancer": {"type": "RingHash", "ringHash": {"minRingSize": 2048, "maxRingSize": 1024}}},
            "spec.to[0].default.loadBalancer.ringHash.minRingSize",
            "must be less than or equal to maxRingSize",
        ),
        (
            {"loadBalancer": {"type": "RoundRobin", "ringHash": {"minRingSize": 2}}},
            "spec.to[0].default.loadBalancer.ringHash",
            "must not be set with type RoundRobin",
        ),
        (
            {"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 1}}},
            "spec.to[0].default.loadBalancer.leastRequest.choiceCount",
            "must be greater than or equal to 2",
        ),
        (
            {"loadBalancer": {"type": "LeastRequest", "leastRequest": {"activeRequestBias": 1.5}}},
            "spec.to[0].default.loadBalancer.leastRequest.activeRequestBias",
            'must be a number greater than or equal to 0: an integer, or a decimal in quotes such as "1.5"',
        ),
        (
            {
                "loadBalancer": {
                    "type": "RingHash",
                    "ringHash": {"hashPolicies": [{"type": "SourceIP", "connection": {}}]},
                },
                "hashPolicies": [{"type": "SourceIP", "connection": {}}],
            },
            "spec.to[0].default.loadBalancer.ringHash.hashPolicies",
            "hashPolicies already specified in the root level",
        ),
        (
            {"localityAwareness": {"localZone": {"affinityTags": [{"key": "a", "weight": 1}, {"key": "b"}]}}},
            "spec.to[0].default.localityAwareness.localZone.affinityTags",
            "all or none affinity tags should have weight",
        ),
        (
            {"localityAwareness": {"localZone": {"affinityTags": [{"key": f"t{i}"} for i in range(10)]}}},
            "spec.to[0].default.localityAwareness.localZone.affinityTags",
            "without weights at most 9 affinity tags (the default weights 9·10^n exceed 32 bits beyond): "
            "give each tag a weight",
        ),
        (
            {
                "localityAwareness": {
                    "localZone": {"affinityTags": [{"key": "a", "weight": 4_000_000_000}, {"key": "b", "weight": 4e8}]}
                }
            },
            "spec.to[0].default.localityAwareness.localZone.affinityTags[1].weight",
            "must be an integer",
        ),
        (
            {
                "localityAwareness": {
                    "localZone": {
                        "affinityTags": [{"key": "a", "weight": 4_000_000_000}, {"key": "b", "weight": 400_000_000}]
                    }
                }
            },
            "spec.to[0].default.localityAwareness.localZone.affinityTags",
            "the weights must add up to less than 4294967295",
        ),
        (
            {"localityAwareness": {"localZone": {"affinityTags": [{"key": "a"}, {"key": "a"}]}}},
            "spec.to[0].default.localityAwareness.localZone.affinityTags[1].key",
            "'a' is listed twice",
        ),
        (
            {"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Only"}}]}}},
            "spec.to[0].default.localityAwareness.crossZone.failover[0].to.zones",
            "must not be empty when type is Only",
        ),
        (
            {"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Any", "zones": ["zone-2"]}}]}}},
            "spec.to[0].default.localityAwareness.crossZone.failover[0].to.zones",
            "must be empty when type is Any",
        ),
        (
            {"localityAwareness": {"crossZone": {"failover": [{"from": {"zones": []}, "to": {"type": "Any"}}]}}},
            "spec.to[0].default.localityAwareness.crossZone.failover[0].from.zones",
            "must not be empty",
        ),
        (
            {"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Somewhere"}}]}}},
            "spec.to[0].default.localityAwareness.crossZone.failover[0].to.type",
            "must be one of: Any, Only, AnyExcept, None",
        ),
        (
            {"localityAwareness": {"crossZone": {"failoverThreshold": {"percentage": 0}}}},
            "spec.to[0].default.localityAwareness.crossZone.failoverThreshold.percentage",
            "must be greater than 0",
        ),
    ],
)
def test_invalid_fields_are_refused_by_name(default: dict[str, Any], field: str, reason: str) -> None:
    assert refused(spec_with(default)) == {field: reason}


def test_to_kinds_follow_kuma() -> None:
    lb = {"loadBalancer": {"type": "Random"}}
    gateway = {"kind": "MeshGateway", "name": "edge"}
    # With a MeshGateway and a loadBalancer, `to` can only be Mesh (Kuma's validateTo).
    assert refused(policy([to_backend(lb)], top=gateway)) == {
        "spec.to[0].targetRef.kind": "must be Mesh when the top-level targetRef is a MeshGateway and loadBalancer "
        "is set (Kuma's rule: a gateway route may split over several services)"
    }
    from_universal(policy([to_backend(lb, kind="Mesh")], top=gateway))
    from_universal(policy([to_backend({"hashPolicies": [{"type": "SourceIP", "connection": {}}]})], top=gateway))
    # Kinds zonemesh cannot apply yet are refused as such.
    route = {"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "default": {"hashPolicies": []}}
    assert refused(policy([route])) == {
        "spec.to[0].targetRef.kind": (
            "MeshLoadBalancingStrategy `to` kind MeshHTTPRoute is not supported yet by zonemesh"
        )
    }
    multi = {"targetRef": {"kind": "MeshMultiZoneService", "name": "b"}, "default": lb}
    assert refused(policy([multi])) == {
        "spec.to[0].targetRef.kind": "targetRef kind MeshMultiZoneService is not supported yet by zonemesh"
    }
    assert refused(policy([to_backend(lb, kind="MeshSubset")])) == {
        "spec.to[0].targetRef.kind": "value is not supported here; supported kinds: "
        "Mesh, MeshService, MeshMultiZoneService, MeshHTTPRoute"
    }
    assert "spec.to" in refused(policy([]))


def test_a_route_entry_is_refused_even_once_route_targets_are_supported() -> None:
    """The plugin applies hash policies to destinations only: a `to` MeshHTTPRoute entry stays
    refused by the type's own support check, whatever targetref.NOT_YET_KINDS says later."""
    res, _ = from_universal(policy([to_backend({"loadBalancer": {"type": "Random"}})]))
    res.spec["to"].append({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "default": {"hashPolicies": []}})
    support = REGISTRY.get("MeshLoadBalancingStrategy").support
    assert support is not None and support.not_yet is not None
    assert [(e.field, e.reason) for e in support.not_yet(res)] == [
        (
            "spec.to[1].targetRef.kind",
            "MeshLoadBalancingStrategy `to` kind MeshHTTPRoute is not supported yet by zonemesh",
        )
    ]


# --- pure functions: priorities, failover order, affinity --------------------------------------


def test_failover_rules_give_each_other_zone_the_priority_of_the_first_rule_admitting_it() -> None:
    rules = (
        Failover(ONLY, frozenset({"zone-2"}), from_zones=frozenset({"zone-2"})),  # not from zone-1
        Failover(NONE),  # admits nothing, does not stop the list (Kuma)
        Failover(ONLY, frozenset({"zone-3"})),
        Failover(ANY_EXCEPT, frozenset({"zone-5"})),
        Failover(ANY),
    )
    zones = ["zone-1", "zone-2", "zone-3", "zone-4", "zone-5"]
    assert zone_priorities("zone-1", zones, rules) == {"zone-3": 3, "zone-4": 4, "zone-2": 4, "zone-5": 5}
    # The same rules from zone-2: its first rule applies (zone-2 is its own zone: never listed).
    assert zone_priorities("zone-2", zones, rules) == {"zone-3": 3, "zone-1": 4, "zone-4": 4, "zone-5": 5}
    # No rule admitting a zone: it is not used; no rules at all: no other zone.
    assert zone_priorities("zone-1", zones, (Failover(ONLY, frozenset({"zone-3"})),)) == {"zone-3": 1}
    assert zone_priorities("zone-1", zones, ()) == {}
    assert zone_priorities("zone-1", zones, (Failover(NONE),)) == {}


def test_priorities_are_renumbered_without_gaps() -> None:
    assert compact([0, 3, 3, 5]) == {0: 0, 3: 1, 5: 2}
    assert compact([2, 4]) == {2: 0, 4: 1}


def test_failover_threshold_sets_the_overprovisioning_factor() -> None:
    # Envoy moves load to the next priority when healthy% x factor/100 < 100.
    assert overprovisioning_factor(None) == 200  # Kuma's default threshold: 50 %
    assert overprovisioning_factor(50) == 200
    assert overprovisioning_factor(70) == 143  # 7 of 10 healthy: 0.7 x 1.43 >= 1; 6 of 10 is below
    assert overprovisioning_factor(100) == 100
    assert overprovisioning_factor(12.5) == 800


def test_default_affinity_weights_are_kumas() -> None:
    assert [default_affinity_weight(i, 3) for i in range(3)] == [900, 90, 9]
    assert default_affinity_weight(0, 9) == 900_000_000  # the most tags without weights: fits 32 bits


def test_affinity_groups_follow_the_proxys_values() -> None:
    plan = LocalityPlan(grouped=True, affinity=(Affinity("node", 90), Affinity("rack", 9), Affinity("az", 1)))
    # The proxy's own values (the smallest when its inbounds differ); a tag it lacks selects nothing.
    resolved = plan.for_proxy([{"node": "n1", "rack": "r2"}, {"rack": "r1"}])
    assert resolved.affinity == (Affinity("node", 90, "n1"), Affinity("rack", 9, "r1"))
    endpoints = [
        Endpoint("10.0.0.1", 1, {"node": "n1", "rack": "r1"}),  # first matching tag wins: node
        Endpoint("10.0.0.2", 1, {"node": "n2", "rack": "r1"}),
        Endpoint("10.0.0.3", 1, {"node": "n2", "rack": "r2"}),
        Endpoint("10.0.0.4", 1, {}),
    ]
    groups = [
        (sub, weight, [e.address for e in members])
        for sub, weight, members in local_groups(endpoints, resolved.affinity)
    ]
    assert groups == [
        ("node=n1", 90, ["10.0.0.1"]),
        ("rack=r1", 9, ["10.0.0.2"]),
        ("", 1, ["10.0.0.3", "10.0.0.4"]),
    ]


def test_locality_plan_from_a_conf() -> None:
    assert locality_plan({}) == LocalityPlan()  # a policy without localityAwareness: this zone first
    assert locality_plan({"localityAwareness": {"disabled": True}}) == LocalityPlan(prefer_local=False)
    plan = locality_plan(
        {
            "localityAwareness": {
                "localZone": {"affinityTags": [{"key": "a"}, {"key": "b"}]},
                "crossZone": {
                    "failover": [{"from": {"zones": ["z1"]}, "to": {"type": "Only", "zones": ["z3"]}}],
                    "failoverThreshold": {"percentage": "80"},
                },
            }
        }
    )
    assert plan == LocalityPlan(
        grouped=True,
        affinity=(Affinity("a", 90), Affinity("b", 9)),
        failover=(Failover(ONLY, frozenset({"z3"}), frozenset({"z1"})),),
        overprovisioning_factor=125,
        weighted_localities=True,
    )


# --- generation: sidecars across zones (testdata/crosszone: zone-1, zone-2 and zone-3) -----------


def groups(resources: ResourceSet, name: str) -> list[tuple[int, str, str, list[str], int]]:
    cla = resources.get(ENDPOINT, name)
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    return [
        (
            g.priority,
            g.locality.zone,
            g.locality.sub_zone,
            [e.endpoint.address.socket_address.address for e in g.lb_endpoints],
            g.load_balancing_weight.value,
        )
        for g in cla.endpoints
    ]


def factor(resources: ResourceSet, name: str) -> int | None:
    cla = resources.get(ENDPOINT, name)
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    return cla.policy.overprovisioning_factor.value if cla.policy.HasField("overprovisioning_factor") else None


async def web_1(*docs: dict[str, Any] | str, mesh: str = MTLS) -> ResourceSet:
    text = "\n---\n".join([mesh, *(d if isinstance(d, str) else yaml.safe_dump(d) for d in docs)])
    zctx = await contexts(text)
    mctx = zctx.meshes["default"]
    return generate(mctx, mctx.dataplanes["web-1"])


async def test_without_a_policy_this_zone_first_then_every_other_zone() -> None:
    """The default this policy type must not change (docs/cross-zone.md)."""
    out = await web_1()
    assert groups(out, "backend") == [
        (0, ZONE, "", ["10.1.0.2"], 0),
        (1, "zone-2", "", ["192.0.2.2"], 3),
        (1, "zone-3", "", ["10.3.0.100"], 1),
    ]
    assert factor(out, "backend") is None


async def test_failover_order_puts_the_zone_named_first_right_after_this_zone() -> None:
    failover = {
        "localityAwareness": {
            "crossZone": {"failover": [{"to": {"type": "Only", "zones": ["zone-3"]}}, {"to": {"type": "Any"}}]}
        }
    }
    out = await web_1(policy([to_backend(failover)]))
    assert groups(out, "backend") == [
        (0, ZONE, "", ["10.1.0.2"], 0),
        (1, "zone-3", "", ["10.3.0.100"], 1),
        (2, "zone-2", "", ["192.0.2.2"], 3),
    ]
    assert factor(out, "backend") == 200
    # api (only in zone-2, no policy for it): unchanged, zone-2 at priority 0.
    assert groups(out, "api") == [(0, "zone-2", "", ["192.0.2.2"], 1)]


async def test_a_zone_no_rule_admits_gets_nothing() -> None:
    only_3 = {"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Only", "zones": ["zone-3"]}}]}}}
    out = await web_1(policy([to_backend(only_3, kind="Mesh")]))
    assert [g[1] for g in groups(out, "backend")] == [ZONE, "zone-3"]
    assert groups(out, "api") == [(0, "", "", [], 0)]  # api is only in zone-2: nowhere to go
    # localZone without crossZone: traffic stays in this zone (Kuma).
    local = {"localityAwareness": {"localZone": {"affinityTags": [{"key": "version"}]}}}
    out = await web_1(policy([to_backend(local)]))
    assert [g[1] for g in groups(out, "backend")] == [ZONE]


async def test_disabled_spreads_over_every_zone_and_replaces_the_meshs_switch() -> None:
    out = await web_1(policy([to_backend({"localityAwareness": {"disabled": True}})]))
    assert [g[0] for g in groups(out, "backend")] == [0, 0, 0]
    # The Mesh turns locality awareness off, a policy for backend without `disabled` turns it on.
    mesh = MTLS + "routing: {localityAwareLoadBalancing: false}\n"
    out = await web_1(policy([to_backend({"loadBalancer": {"type": "Random"}})]), mesh=mesh)
    assert [g[0] for g in groups(out, "backend")] == [0, 1, 1]
    assert [g[0] for g in groups(out, "api")] == [0]


async def test_through_the_egress_the_sidecar_decides_whether_to_leave_and_the_egress_the_order() -> None:
    mesh = MTLS + "routing: {zoneEgress: true}\n"
    rules = {
        "localityAwareness": {
            "crossZone": {"failover": [{"to": {"type": "Only", "zones": ["zone-3"]}}, {"to": {"type": "Any"}}]}
        }
    }
    zctx = await contexts("\n---\n".join([mesh, yaml.safe_dump(policy([to_backend(rules, kind="Mesh")]))]))
    mctx = zctx.meshes["default"]
    out = generate(mctx, mctx.dataplanes["web-1"])
    assert groups(out, "backend") == [(0, ZONE, "", ["10.1.0.2"], 0), (1, ZONE, "", ["10.1.0.101"], 1)]
    egress = egress_gen.generate(zctx, zctx.memo["proxies"]["egress-1"])
    assert groups(egress, "backend{mesh=default}") == [
        (0, "zone-3", "", ["10.3.0.100"], 1),
        (1, "zone-2", "", ["192.0.2.2"], 3),
    ]
    # A policy selecting only some sidecars does not reach the egress (it serves every sidecar alike).
    narrow = policy([to_backend(rules, kind="Mesh")], top={"kind": "MeshService", "name": "web"})
    zctx = await contexts("\n---\n".join([mesh, yaml.safe_dump(narrow)]))
    egress = egress_gen.generate(zctx, zctx.memo["proxies"]["egress-1"])
    assert [g[0] for g in groups(egress, "backend{mesh=default}")] == [0, 0]


async def test_affinity_tags_split_this_zone_by_the_proxys_values() -> None:
    """web-1 (version v1 here) prefers the backend of its version; web-2 (v2) the other. The two
    differ in nothing else (testdata/crosszone/_base.yaml's web-1 but its version and address):
    they must not share a generated config, since the policy reads that tag."""
    text = """
type: Dataplane
mesh: default
name: backend-2
networking:
  address: 10.1.0.3
  inbound: [{port: 9000, tags: {kuma.io/service: backend, version: v2}}]
---
type: Dataplane
mesh: default
name: web-2
networking:
  address: 10.1.0.4
  inbound:
    - port: 8080
      servicePort: 80
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v2}
  outbound:
    - {port: 10001, tags: {kuma.io/service: backend}}
    - {port: 10002, tags: {kuma.io/service: api}}
    - {port: 10003, tags: {kuma.io/service: httpbin}}
"""
    affinity = {"localityAwareness": {"localZone": {"affinityTags": [{"key": "version"}]}}}
    zctx = await contexts("\n---\n".join([MTLS, text, yaml.safe_dump(policy([to_backend(affinity)]))]))
    mctx = zctx.meshes["default"]
    mctx.dataplanes["web-1"].spec["networking"]["inbound"][0]["tags"]["version"] = "v1"
    one, two = generate(mctx, mctx.dataplanes["web-1"]), generate(mctx, mctx.dataplanes["web-2"])
    assert groups(one, "backend") == [(0, ZONE, "", ["10.1.0.3"], 1), (0, ZONE, "version=v1", ["10.1.0.2"], 9)]
    assert groups(two, "backend") == [(0, ZONE, "", ["10.1.0.2"], 1), (0, ZONE, "version=v2", ["10.1.0.3"], 9)]
    cluster = one.get(CLUSTER, "backend")
    assert isinstance(cluster, cluster_pb2.Cluster) and cluster.common_lb_config.HasField("locality_weighted_lb_config")


async def test_an_external_service_is_in_no_zone() -> None:
    only_3 = {"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "Only", "zones": ["zone-3"]}}]}}}
    out = await web_1(policy([to_backend(only_3, kind="Mesh")]), mesh=MTLS + "routing: {zoneEgress: true}\n")
    assert groups(out, "httpbin") == [(0, ZONE, "", ["10.1.0.101"], 1)]  # still through the egress


async def test_affinity_tags_and_fail_traffic_on_panic_cannot_share_a_cluster() -> None:
    affinity = {"localityAwareness": {"localZone": {"affinityTags": [{"key": "version"}]}}}
    health = {
        "type": "MeshHealthCheck",
        "mesh": "default",
        "name": "hc",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [to_backend({"failTrafficOnPanic": True, "tcp": {}})]},
    }
    base = """
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: web, version: v1}}]
  outbound: [{port: 10001, tags: {kuma.io/service: backend}}]
"""
    docs = [*load_resources(MTLS), *load_resources(base)]
    docs += [from_universal(policy([to_backend(affinity)]))[0], from_universal(health)[0]]
    ctx = await mesh_context(docs)
    with pytest.raises(GenerationError, match=r"MeshLoadBalancingStrategy: ConflictError: .*failTrafficOnPanic"):
        generate(ctx, ctx.dataplanes["web-1"])


# --- generation: what each field sets in Envoy ---------------------------------------------------


async def test_every_field_takes_effect_in_envoy() -> None:
    text = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: web, version: v1, k8s.io/node: n1}}]
  outbound:
    - {port: 10001, tags: {kuma.io/service: backend}}
    - {port: 10002, tags: {kuma.io/service: api}}
    - {port: 10003, tags: {kuma.io/service: db}}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound: [{port: 9000, tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}}]
---
type: Dataplane
mesh: default
name: api-1
networking:
  address: 10.0.0.3
  inbound: [{port: 9000, tags: {kuma.io/service: api, kuma.io/protocol: http}}]
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 10.0.0.4
  inbound: [{port: 5432, tags: {kuma.io/service: db, k8s.io/node: n1}}]
"""
    ctx = await mesh_context([*load_resources(text), from_universal(EVERY_FIELD)[0]])
    out = generate(ctx, ctx.dataplanes["web-1"])
    as_dict = {
        kind: {name: MessageToDict(msg) for name, msg in out.by_type[kind].items()}
        for kind in (CLUSTER, ENDPOINT, ROUTE)
    }
    db = as_dict[CLUSTER]["db"]  # the Mesh entry: LeastRequest, locality
    assert (db["lbPolicy"], db["leastRequestLbConfig"]["choiceCount"]) == ("LEAST_REQUEST", 3)
    assert db["leastRequestLbConfig"]["activeRequestBias"]["defaultValue"] == 1.5
    assert "localityWeightedLbConfig" in db["commonLbConfig"]  # affinityTags
    db_cla = as_dict[ENDPOINT]["db"]
    assert db_cla["policy"]["overprovisioningFactor"] == 160  # failoverThreshold 62.5 %
    assert db_cla["endpoints"] == [
        {
            "locality": {"subZone": "k8s.io/node=n1"},
            "lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "10.0.0.4", "portValue": 5432}}}}],
            "loadBalancingWeight": 9000,
        }
    ]
    backend = as_dict[CLUSTER]["backend"]  # MeshService entry over the Mesh one: RingHash
    assert backend["lbPolicy"] == "RING_HASH"
    assert backend["ringHashLbConfig"] == {
        "minimumRingSize": "64",
        "maximumRingSize": "2048",
        "hashFunction": "MURMUR_HASH_2",
    }
    assert as_dict[ENDPOINT]["backend"]["endpoints"][0]["locality"] == {"subZone": "version=v1"}
    (route,) = as_dict[ROUTE]["outbound:backend"]["virtualHosts"][0]["routes"]
    assert route["route"]["hashPolicy"] == [
        {"header": {"headerName": "x-user"}, "terminal": True},
        {"cookie": {"name": "session", "path": "/app", "ttl": "1800s"}},
        {"connectionProperties": {"sourceIp": True}},
        {"connectionProperties": {"sourceIp": True}},
        {"queryParameter": {"name": "user"}},
        {"filterState": {"key": "io.zonemesh.user"}},
    ]
    api = as_dict[CLUSTER]["api"]
    assert (api["lbPolicy"], api["maglevLbConfig"]) == ("MAGLEV", {"tableSize": "65537"})
    (route,) = as_dict[ROUTE]["outbound:api"]["virtualHosts"][0]["routes"]
    assert route["route"]["hashPolicy"] == [{"header": {"headerName": "x-user"}}]
    # A TCP destination: the TCP proxy hashes on the first source-IP or filter-state policy.
    conn = {"type": "Connection", "connection": {"sourceIP": True}}
    ctx = await mesh_context(
        [*load_resources(text), from_universal(policy([to_backend({"hashPolicies": [conn]}, kind="Mesh")]))[0]]
    )
    listener = generate(ctx, ctx.dataplanes["web-1"]).get(LISTENER, "outbound:127.0.0.1:10003")
    assert isinstance(listener, listener_pb2.Listener)
    tcp = tcp_proxy_pb2.TcpProxy()
    listener.filter_chains[0].filters[0].typed_config.Unpack(tcp)
    assert json.loads(json.dumps(MessageToDict(tcp)))["hashPolicy"] == [{"sourceIp": {}}]


async def test_on_a_builtin_gateway_clusters_and_routes_follow_the_destinations() -> None:
    """testdata/policies/_base.yaml's gateway (HTTP to api, TCP to backend) with the MeshGateway
    targeted: clusters get the load balancer, routes the hash policies."""
    docs = {(r.type, r.name): r for r in load(TESTDATA / "_base.yaml")}
    sticky = policy(
        [
            to_backend(
                {
                    "loadBalancer": {"type": "RingHash"},
                    "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}],
                },
                kind="Mesh",
            )
        ],
        top={"kind": "MeshGateway", "name": "edge-gateway"},
    )
    ctx = await mesh_context([*docs.values(), from_universal(sticky)[0]])
    out = generate(ctx, ctx.dataplanes["gateway-1"])
    for name in ("api", "backend"):
        cluster = out.get(CLUSTER, name)
        assert isinstance(cluster, cluster_pb2.Cluster) and cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    (config,) = (r for r in out.by_type[ROUTE].values() if isinstance(r, route_pb2.RouteConfiguration))
    hashes = [h.header.header_name for vh in config.virtual_hosts for r in vh.routes for h in r.route.hash_policy]
    assert hashes == ["x-user"]
    # The sidecar web-1 is not selected by a MeshGateway policy.
    web = generate(ctx, ctx.dataplanes["web-1"]).get(CLUSTER, "api")
    assert isinstance(web, cluster_pb2.Cluster) and web.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
