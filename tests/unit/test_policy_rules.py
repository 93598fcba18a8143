"""Kuma 2.x inbound `rules` (MeshTimeout, MeshCircuitBreaker, MeshTrafficPermission,
MeshFaultInjection, MeshRateLimit): accepted as Kuma 2.14 accepts them, refused field by field
where Kuma refuses them, and resolved per inbound in Kuma's order (zone_cp/xds/policies/callers.py)."""

from __future__ import annotations

from typing import Any

import pytest
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.zone_cp.xds.policies import callers
from zonemesh.zone_cp.xds.policies.matching import ordered


def policy(type_name: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"type": type_name, "mesh": "default", "name": name, "spec": spec}


def refused(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        from_universal(document)
    return {e.field: e.reason for e in exc.value.errors}


def spiffe(value: str, kind: str = "Exact") -> dict[str, Any]:
    return {"spiffeID": {"type": kind, "value": value}}


SIDECARS = {"kind": "Mesh", "proxyTypes": ["Sidecar"]}
TIMEOUT = {"http": {"requestTimeout": "1s"}}
RATE = {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}}}}
FAULT = {"http": [{"abort": {"httpStatus": 500, "percentage": 10}}]}
BREAKER = {"connectionLimits": {"maxConnections": 3}}


@pytest.mark.parametrize(
    ("type_name", "rule"),
    [
        ("MeshTimeout", {"matches": [spiffe("spiffe://default/web")], "default": TIMEOUT}),
        ("MeshTimeout", {"default": {"connectionTimeout": "1s", "idleTimeout": "1m"}}),
        ("MeshRateLimit", {"matches": [spiffe("spiffe://default", "Prefix")], "default": RATE}),
        ("MeshFaultInjection", {"matches": [spiffe("spiffe://default/web")], "default": FAULT}),
        ("MeshFaultInjection", {"default": FAULT}),
        ("MeshCircuitBreaker", {"default": BREAKER}),
        ("MeshTrafficPermission", {"default": {"deny": [spiffe("spiffe://default/web")]}}),
    ],
)
def test_kuma_rules_are_accepted(type_name: str, rule: dict[str, Any]) -> None:
    """Each was refused before (``spec.rules: unknown field``)."""
    res, _ = from_universal(policy(type_name, {"targetRef": SIDECARS, "rules": [rule]}))
    assert res.spec["rules"] == [rule]


@pytest.mark.parametrize(
    ("match", "field", "reason"),
    [
        (spiffe("spiffe://default/"), "spiffeID.value", "must be a valid SPIFFE ID"),
        (spiffe("http://default/web"), "spiffeID.value", "must be a valid SPIFFE ID"),
        (spiffe("spiffe://Default/web"), "spiffeID.value", "must be a valid SPIFFE ID"),
        (spiffe("spiffe://default/a/../b"), "spiffeID.value", "must be a valid SPIFFE ID"),
        ({"spiffeID": {"type": "Regex", "value": "spiffe://default/web"}}, "spiffeID.type", "must be one of"),
        ({}, "", "must have at least one of: spiffeID, sni"),
        ({"sni": {"type": "Exact", "value": "Not_A_Name"}}, "sni.value", "must be a lower-case DNS name"),
    ],
)
def test_bad_matches_are_refused_by_field(match: dict[str, Any], field: str, reason: str) -> None:
    errors = refused(
        policy("MeshFaultInjection", {"targetRef": SIDECARS, "rules": [{"matches": [match], "default": FAULT}]})
    )
    path = "spec.rules[0].matches[0]" + (f".{field}" if field else "")
    assert errors[path].startswith(reason)


@pytest.mark.parametrize(
    ("type_name", "spec", "field", "reason"),
    [
        (
            "MeshTimeout",
            {"rules": [{"default": TIMEOUT}], "from": [{"targetRef": {"kind": "Mesh"}, "default": TIMEOUT}]},
            "spec",
            "fields 'to' and 'from' must be empty when 'rules' is defined",
        ),
        (
            "MeshCircuitBreaker",
            {"rules": [{"default": BREAKER}], "to": [{"targetRef": {"kind": "Mesh"}, "default": BREAKER}]},
            "spec",
            "fields 'to' and 'from' must be empty when 'rules' is defined",
        ),
        (
            "MeshFaultInjection",
            {"rules": [{"default": FAULT}], "from": [{"targetRef": {"kind": "Mesh"}, "default": FAULT}]},
            "spec",
            "field 'from' must be empty when 'rules' is defined",
        ),
        (
            "MeshTrafficPermission",
            {
                "rules": [{"default": {"allow": [spiffe("spiffe://default/web")]}}],
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
            },
            "spec",
            "field 'from' must be empty when 'rules' is defined",
        ),
        ("MeshTrafficPermission", {"rules": [{"default": {}}]}, "spec.rules[0].default", "at least one of 'allow'"),
        (
            "MeshTimeout",
            {"rules": [{"matches": [spiffe("spiffe://default/web")]}]},
            "spec.rules[0].default",
            "must be defined",
        ),
        (
            "MeshTimeout",
            {"rules": [{"matches": [spiffe("spiffe://default/web")], "default": {"idleTimeout": "1m"}}]},
            "spec.rules[0].default.idleTimeout",
            "can't be specified when matches contain spiffeID",
        ),
        (
            "MeshRateLimit",
            {
                "rules": [
                    {
                        "matches": [spiffe("spiffe://default/web")],
                        "default": {"local": {"tcp": {"connectionRate": {"num": 1, "interval": "1s"}}}},
                    }
                ]
            },
            "spec.rules[0].default.local.tcp",
            "can't be specified when matches contain spiffeID",
        ),
        ("MeshTimeout", {"rules": []}, "spec.rules", "needs at least one item"),
    ],
)
def test_kuma_refusals_of_rules(type_name: str, spec: dict[str, Any], field: str, reason: str) -> None:
    errors = refused(policy(type_name, {"targetRef": SIDECARS, **spec}))
    assert errors[field].startswith(reason), errors


def test_rate_limit_rules_need_a_scope_without_gateways() -> None:
    """As Kuma: gateways read MeshRateLimit `to`; rules with a scope including them are refused."""
    errors = refused(policy("MeshRateLimit", {"targetRef": {"kind": "Mesh"}, "rules": [{"default": RATE}]}))
    assert errors["spec.rules"].startswith("must not be defined when the top-level targetRef includes gateways")


def test_rules_make_a_dataplane_section_name_an_inbound_policy() -> None:
    target = {"kind": "Dataplane", "name": "web-1", "sectionName": "http"}
    from_universal(policy("MeshTimeout", {"targetRef": target, "rules": [{"default": TIMEOUT}]}))


def test_rules_on_gateways_only_are_refused_where_zonemesh_does_not_apply_them() -> None:
    """MeshCircuitBreaker rules configure an inbound's local cluster: gateways have none."""
    gateways = {"kind": "Mesh", "proxyTypes": ["Gateway"]}
    errors = refused(policy("MeshCircuitBreaker", {"targetRef": gateways, "rules": [{"default": BREAKER}]}))
    assert errors["spec.rules"].startswith("MeshCircuitBreaker `rules` is not supported yet on builtin gateways")


# --- resolution per inbound ---------------------------------------------------------------------


def resource(type_name: str, name: str, spec: dict[str, Any]) -> Resource:
    return from_universal(policy(type_name, spec, name))[0]


def test_rules_follow_policy_precedence_and_from_counts_as_a_rule() -> None:
    """Least important first: a MeshService policy after a Mesh one, and among equals the smallest
    name last; `from` entries of kind Mesh are rules without matches for from-as-rules types."""
    mesh_wide = resource(
        "MeshTimeout",
        "a-mesh",
        {"targetRef": SIDECARS, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]},
    )
    service = resource(
        "MeshTimeout",
        "z-service",
        {"targetRef": {"kind": "MeshService", "name": "web"}, "rules": [{"default": {"idleTimeout": "2m"}}]},
    )
    found = callers.rules(ordered([service, mesh_wide]), from_as_rules=True)
    assert [r.policy for r in found] == ["a-mesh", "z-service"]
    assert callers.catch_all(found) == {"idleTimeout": "2m"}
    assert callers.rules(ordered([service, mesh_wide]), from_as_rules=False) == found[1:]


def test_caller_classes_merge_the_rules_covering_them_most_specific_first() -> None:
    found = callers.rules(
        [
            resource(
                "MeshTimeout",
                "p",
                {
                    "targetRef": SIDECARS,
                    "rules": [
                        {"default": {"http": {"requestTimeout": "10s", "streamIdleTimeout": "1m"}}},
                        {
                            "matches": [spiffe("spiffe://default/we", "Prefix")],
                            "default": {"http": {"requestTimeout": "5s"}},
                        },
                        {
                            "matches": [spiffe("spiffe://default/web"), spiffe("spiffe://default", "Prefix")],
                            "default": {"http": {"streamIdleTimeout": "2s"}},
                        },
                    ],
                },
            )
        ],
        from_as_rules=True,
    )
    classes = callers.classes(found)
    assert [c.match["spiffeID"]["value"] for c in classes] == [
        "spiffe://default/web",  # Exact first
        "spiffe://default/we",  # then the longest prefix
        "spiffe://default",
    ]
    # web: the rule without matches, then the prefixes covering it (shortest first), then its own.
    assert classes[0].conf == {"http": {"requestTimeout": "5s", "streamIdleTimeout": "2s"}}
    assert classes[1].conf == {"http": {"requestTimeout": "5s", "streamIdleTimeout": "2s"}}
    assert classes[2].conf == {"http": {"requestTimeout": "10s", "streamIdleTimeout": "2s"}}


def test_from_entries_per_caller_service() -> None:
    fault = resource(
        "MeshFaultInjection",
        "f",
        {
            "targetRef": SIDECARS,
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": FAULT},
                {"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"http": []}},
                {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "api"}}, "default": FAULT},
            ],
        },
    )
    every, per_service = callers.from_by_caller([fault])
    assert every == FAULT
    assert per_service == {"api": FAULT, "web": {"http": []}}  # web: no fault (its list replaces)
