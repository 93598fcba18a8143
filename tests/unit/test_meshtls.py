"""MeshTLS and MeshPassthrough: what is accepted (Kuma 2.14's validator, plus the settings zonemesh
refuses because they could not work or would do nothing), and how MeshTLS's entries combine on
one proxy. What MeshTLS sets in Envoy: the golden cases in testdata/policies/meshtls/; on real
Envoys: tests/e2e/test_meshtls.py."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.schema import ValidationError, validate
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.testing import TestCA, load_resources, mesh_context


def meshtls(spec: dict[str, Any], name: str = "tls") -> dict[str, Any]:
    return {"type": "MeshTLS", "mesh": "default", "name": name, "spec": spec}


def errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        from_universal(doc)
    return {e.field: e.reason for e in exc.value.errors}


MESH_FROM = {"targetRef": {"kind": "Mesh"}}

# -- Kuma's validator (pkg/plugins/policies/meshtls/api/v1alpha1/testdata) ------------------------


def test_kuma_full_valid_example_is_accepted() -> None:
    from_universal(
        meshtls(
            {
                "targetRef": {"kind": "Mesh"},
                "from": [
                    {
                        **MESH_FROM,
                        "default": {
                            "tlsVersion": {"min": "TLS11", "max": "TLS12"},
                            "tlsCiphers": [
                                "ECDHE-ECDSA-AES128-GCM-SHA256",
                                "ECDHE-ECDSA-AES256-GCM-SHA384",
                                "ECDHE-ECDSA-CHACHA20-POLY1305",
                                "ECDHE-RSA-AES128-GCM-SHA256",
                                "ECDHE-RSA-AES256-GCM-SHA384",
                                "ECDHE-RSA-CHACHA20-POLY1305",
                            ],
                            "mode": "Strict",
                        },
                    }
                ],
            }
        )
    )


def test_kuma_full_invalid_example_names_every_bad_field() -> None:
    found = errors(
        meshtls(
            {
                "targetRef": {"kind": "Mesh"},
                "from": [
                    {"targetRef": {"kind": "MeshService", "name": "x"}, "default": {}},
                    {
                        **MESH_FROM,
                        "default": {
                            "tlsVersion": {"min": "TLS15", "max": "TLS16"},
                            "tlsCiphers": ["NotExistingCipher"],
                            "mode": "NotExistingMode",
                        },
                    },
                ],
            }
        )
    )
    assert set(found) == {
        "spec.from[0].targetRef.kind",
        "spec.from[1].default.mode",
        "spec.from[1].default.tlsCiphers[0]",
        "spec.from[1].default.tlsVersion.min",
        "spec.from[1].default.tlsVersion.max",
    }
    assert found["spec.from[1].default.mode"] == "must be one of: Strict, Permissive"


@pytest.mark.parametrize(
    "target",
    [{"kind": "MeshSubset", "tags": {"kuma.io/service": "svc-1"}}, {"kind": "Dataplane", "labels": {"a": "b"}}],
)
def test_versions_and_ciphers_only_with_a_top_level_mesh(target: dict[str, Any]) -> None:
    conf = {"tlsVersion": {"min": "TLS12"}, "tlsCiphers": ["ECDHE-ECDSA-AES128-GCM-SHA256"], "mode": "Strict"}
    assert errors(meshtls({"targetRef": target, "from": [{**MESH_FROM, "default": conf}]})) == {
        "spec.from[0].default.tlsCiphers": "tlsCiphers can only be defined with top level targetRef kind: Mesh",
        "spec.from[0].default.tlsVersion": "tlsVersion can only be defined with top level targetRef kind: Mesh",
    }
    # `mode` alone is per proxy: fine with any top-level kind.
    from_universal(meshtls({"targetRef": target, "rules": [{"default": {"mode": "Permissive"}}]}))


def test_min_above_max_is_refused() -> None:
    doc = meshtls({"rules": [{"default": {"tlsVersion": {"min": "TLS13", "max": "TLS12"}}}]})
    assert errors(doc) == {"spec.rules[0].default.tlsVersion.min": "min version must be lower than max"}


def test_from_and_rules_exclude_each_other_and_one_is_needed() -> None:
    both = meshtls({"from": [{**MESH_FROM, "default": {}}], "rules": [{"default": {}}]})
    assert errors(both) == {"spec": "field 'from' must be empty when 'rules' is defined"}
    assert errors(meshtls({"targetRef": {"kind": "Mesh"}})) == {"spec": "must have at least one of: from, rules"}
    assert errors(meshtls({"rules": []})) == {"spec.rules": "needs at least one item"}


def test_section_name_selects_one_inbound_with_rules_too() -> None:
    target = {"kind": "Dataplane", "name": "web-1", "sectionName": "8080"}
    from_universal(meshtls({"targetRef": target, "rules": [{"default": {"mode": "Permissive"}}]}))
    assert "spec.targetRef.kind" in errors(
        meshtls({"targetRef": {"kind": "MeshService", "name": "web"}, "rules": [{"default": {}}]})
    )


# -- what zonemesh refuses on top of Kuma's validator ------------------------------------------------


@pytest.mark.parametrize("maximum", ["TLS10", "TLS11"])
def test_a_maximum_below_tls12_is_refused(maximum: str) -> None:
    """Measured on Envoy 1.40 (tests/e2e/test_meshtls.py's reasoning): proxies cannot complete a
    handshake with each other below TLS 1.2, so every mesh connection would fail."""
    found = errors(meshtls({"rules": [{"default": {"tlsVersion": {"min": "TLS10", "max": maximum}}}]}))
    assert list(found) == ["spec.rules[0].default.tlsVersion.max"]
    assert "would fail every mesh connection" in found["spec.rules[0].default.tlsVersion.max"]


def test_ciphers_without_an_ecdsa_suite_are_refused() -> None:
    conf = {"tlsCiphers": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"]}
    found = errors(meshtls({"rules": [{"default": conf}]}))
    assert list(found) == ["spec.rules[0].default.tlsCiphers"]
    assert "workload certificates are ECDSA" in found["spec.rules[0].default.tlsCiphers"]


def test_ciphers_with_a_tls13_minimum_are_refused_as_doing_nothing() -> None:
    conf = {"tlsVersion": {"min": "TLS13"}, "tlsCiphers": ["ECDHE-ECDSA-AES128-GCM-SHA256"]}
    found = errors(meshtls({"rules": [{"default": conf}]}))
    assert list(found) == ["spec.rules[0].default.tlsCiphers"]
    assert "no effect" in found["spec.rules[0].default.tlsCiphers"]


def test_a_tls13_minimum_for_sidecars_only_is_refused() -> None:
    """Sidecar inbounds would require TLS 1.3 while builtin gateways' clusters keep Envoy's
    client maximum of TLS 1.2: gateway traffic to every sidecar would fail."""
    sidecars = {"kind": "Mesh", "proxyTypes": ["Sidecar"]}
    found = errors(meshtls({"targetRef": sidecars, "rules": [{"default": {"tlsVersion": {"min": "TLS13"}}}]}))
    assert list(found) == ["spec.rules[0].default.tlsVersion.min"]
    assert "builtin gateways" in found["spec.rules[0].default.tlsVersion.min"]
    from_universal(meshtls({"targetRef": sidecars, "rules": [{"default": {"tlsVersion": {"max": "TLS12"}}}]}))


def test_a_mode_reaching_only_builtin_gateways_is_refused() -> None:
    gateways = {"kind": "Mesh", "proxyTypes": ["Gateway"]}
    found = errors(meshtls({"targetRef": gateways, "rules": [{"default": {"mode": "Permissive"}}]}))
    assert list(found) == ["spec.rules[0].default.mode"]
    assert "no effect on builtin gateways" in found["spec.rules[0].default.mode"]
    # Versions and ciphers do reach them: the client end of their clusters to mesh services.
    from_universal(meshtls({"targetRef": gateways, "rules": [{"default": {"tlsVersion": {"min": "TLS13"}}}]}))


# -- how entries combine on a proxy -----------------------------------------------------------------

TWO_INBOUNDS = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - {port: 8080, servicePort: 80, tags: {kuma.io/service: web, kuma.io/protocol: http}}
  - {name: admin, port: 9901, servicePort: 99, tags: {kuma.io/service: web-admin}}
"""


def inbound_modes(ctx: MeshContext) -> dict[str, tuple[str | None, ...]]:
    """Per inbound listener of web-1: the transport protocols its chains match (None: any)."""
    listeners = dump(generate(ctx, ctx.dataplanes["web-1"]), hide_certificates=True)["listeners"]
    return {
        item["name"]: tuple(
            (chain.get("filterChainMatch") or {}).get("transportProtocol") for chain in item["filterChains"]
        )
        for item in listeners
        if item["name"].startswith("inbound:")
    }


async def context(*policies: dict[str, Any], mesh_mode: str | None = None) -> MeshContext:
    resources = load_resources(TWO_INBOUNDS)
    if mesh_mode is not None:
        resources[0].spec["mtls"]["backends"][0]["mode"] = mesh_mode
    resources += [from_universal(p)[0] for p in policies]
    return await mesh_context(resources, ca=TestCA())


async def test_the_more_specific_policy_sets_one_inbounds_mode() -> None:
    everywhere = meshtls({"rules": [{"default": {"mode": "Permissive"}}]}, name="a-everywhere")
    admin = meshtls(
        {
            "targetRef": {"kind": "Dataplane", "name": "web-1", "sectionName": "admin"},
            "rules": [{"default": {"mode": "Strict"}}],
        },
        name="z-admin",
    )
    ctx = await context(everywhere, admin)
    assert inbound_modes(ctx) == {
        "inbound:10.0.0.1:8080": ("tls", "raw_buffer"),
        "inbound:10.0.0.1:9901": (None,),
    }


async def test_without_a_mode_the_mesh_backend_mode_stays() -> None:
    versions_only = meshtls({"rules": [{"default": {"tlsVersion": {"min": "TLS12"}}}]})
    ctx = await context(versions_only, mesh_mode="PERMISSIVE")
    assert set(inbound_modes(ctx).values()) == {("tls", "raw_buffer")}
    ctx = await context(versions_only)
    assert set(inbound_modes(ctx).values()) == {(None,)}


# -- MeshPassthrough ----------------------------------------------------------------------------------

PASSTHROUGH = yaml.safe_load("""
type: MeshPassthrough
mesh: default
name: allow-some
spec:
  targetRef: {kind: Mesh}
  default:
    passthroughMode: Matched
    appendMatch:
    - {type: Domain, value: httpbin.org, port: 443, protocol: tls}
    - {type: IP, value: 10.0.0.1, port: 5432}
""")


def test_mesh_passthrough_is_refused_saying_why() -> None:
    (reason,) = errors(PASSTHROUGH).values()
    assert reason.startswith("MeshPassthrough is not supported yet by zonemesh: ")
    assert "zonemesh has no transparent proxying" in reason


def test_mesh_passthrough_schema_is_kumas() -> None:
    """Not applied yet, but its schema is Kuma's (with its validator's rules), for the day it is."""
    spec = REGISTRY.get("MeshPassthrough").spec
    assert validate(spec, PASSTHROUGH["spec"], "spec") == []
    bad = {
        "default": {
            "passthroughMode": "Some",
            "appendMatch": [
                {"type": "Domain", "value": "*foo.com", "protocol": "tcp"},
                {"type": "IP", "value": "300.1.1.1"},
                {"type": "CIDR", "value": "10.0.0.0/8", "port": 80, "protocol": "http"},
                {"type": "CIDR", "value": "10.1.0.0/16", "port": 80, "protocol": "grpc"},
                {"type": "Domain", "value": "*.foo.com", "protocol": "http"},
                {"type": "IP", "value": "1.1.1.1", "protocol": "mysql"},
                {"type": "Domain", "value": "a.com", "port": 443, "protocol": "tls"},
                {"type": "Domain", "value": "a.com", "port": 443, "protocol": "tls"},
            ],
        }
    }
    found = {e.field: e.reason for e in validate(spec, bad, "spec")}
    assert found == {
        "spec.default.passthroughMode": "must be one of: All, Matched, None",
        "spec.default.appendMatch[0].protocol": "protocol tcp is not supported for a domain",
        "spec.default.appendMatch[0].value": (
            "provided DNS has incorrect value, partial wildcard is currently not supported"
        ),
        "spec.default.appendMatch[1].value": "provided IP has incorrect value",
        "spec.default.appendMatch[3].port": (
            "using the same port in multiple matches requires the same protocol for grpc, http and http2"
        ),
        "spec.default.appendMatch[4].port": "wildcard domains doesn't work for all ports and layer 7 protocol",
        "spec.default.appendMatch[5].port": "port must be defined for Mysql protocol",
        "spec.default.appendMatch[7].value": "value a.com is already defined for this port and protocol",
    }
