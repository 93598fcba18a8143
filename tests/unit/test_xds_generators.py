"""Envoy config generation without servers: golden files and policy matching.

Each ``testdata/xds/<case>.input.yaml`` (plus the dataplanes of ``_base.yaml``, which a case
may override by name) is generated for the proxy ``web-1`` and compared with
``<case>.golden.yaml``. Regenerate with ``UPDATE_GOLDEN_FILES=true pytest tests/unit/test_xds_generators.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import GenerationError, generate
from zonemesh.zone_cp.xds.policies import meshtrafficpermission
from zonemesh.zone_cp.xds.policies.matching import matched, to_conf
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, SECRET
from zonemesh.zone_cp.xds.testing import TestCA, assert_golden, load_resources, mesh_context, yaml_dump

TESTDATA = Path(__file__).parent / "testdata" / "xds"
CASES = sorted(p.name.removesuffix(".input.yaml") for p in TESTDATA.glob("*.input.yaml"))
POLICY_TYPES = {"MeshTrafficPermission", "MeshTimeout", "MeshRetry", "MeshCircuitBreaker", "MeshHealthCheck"}


async def context_for(case_text: str, ca: TestCA | None = None) -> MeshContext:
    base = load_resources((TESTDATA / "_base.yaml").read_text())
    return await mesh_context(load_resources(case_text), base, ca, POLICY_TYPES)


@pytest.mark.parametrize("case", CASES)
async def test_golden(case: str) -> None:
    ctx = await context_for((TESTDATA / f"{case}.input.yaml").read_text())
    rendered = yaml_dump(dump(generate(ctx, ctx.dataplanes["web-1"]), hide_certificates=True))
    assert_golden(TESTDATA / f"{case}.golden.yaml", rendered)


async def test_generation_is_deterministic_and_shares_pieces() -> None:
    ctx = await context_for((TESTDATA / "mtls-strict.input.yaml").read_text())
    first = generate(ctx, ctx.dataplanes["web-1"])
    second = generate(ctx, ctx.dataplanes["web-1"])
    assert dump(first) == dump(second)
    # Outbound clusters built once per round are shared, not rebuilt, between proxies.
    assert first.get(CLUSTER, "backend") is second.get(CLUSTER, "backend")


async def test_missing_certificate_names_the_generator() -> None:
    ctx = await context_for((TESTDATA / "mtls-strict.input.yaml").read_text())
    ctx.certs = {}
    with pytest.raises(GenerationError, match=r"generator 'secrets'.*no workload certificate for service 'web'"):
        generate(ctx, ctx.dataplanes["web-1"])


async def test_endpoints_follow_dataplanes() -> None:
    text = (TESTDATA / "plain.input.yaml").read_text()
    ctx = await context_for(text)
    cla = generate(ctx, ctx.dataplanes["web-1"]).by_type[
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    ]
    addresses = sorted(e.endpoint.address.socket_address.address for e in cla["backend"].endpoints[0].lb_endpoints)
    assert addresses == ["10.0.0.2", "10.0.0.3"]  # the NotReady inbound is left out


async def test_secrets_only_with_mtls() -> None:
    plain = await context_for((TESTDATA / "plain.input.yaml").read_text())
    assert not generate(plain, plain.dataplanes["web-1"]).by_type[SECRET]
    strict = await context_for((TESTDATA / "mtls-strict.input.yaml").read_text())
    secrets = generate(strict, strict.dataplanes["web-1"]).names(SECRET)
    assert secrets == ["identity_cert:secret:web", "mesh_ca:secret:default"]


# --- policy matching ------------------------------------------------------------------------


def _policy(name: str, top: dict[str, object], to: list[dict[str, object]]) -> Resource:
    return Resource(type="MeshTimeout", name=name, mesh="default", spec={"targetRef": top, "to": to})


def _to(kind: str, conf: dict[str, object], name: str | None = None) -> dict[str, object]:
    ref: dict[str, object] = {"kind": kind}
    if name:
        ref["name"] = name
    return {"targetRef": ref, "default": conf}


async def test_precedence_mesh_subset_service_then_name() -> None:
    policies = [
        _policy("z-mesh", {"kind": "Mesh"}, [_to("Mesh", {"connectionTimeout": "1s", "idleTimeout": "1m"})]),
        _policy("a-service", {"kind": "MeshService", "name": "web"}, [_to("Mesh", {"connectionTimeout": "3s"})]),
        _policy(
            "b-subset",
            {"kind": "MeshSubset", "tags": {"version": "v1"}},
            [_to("Mesh", {"connectionTimeout": "2s", "idleTimeout": "4m"})],
        ),
        _policy("a-subset", {"kind": "MeshSubset", "tags": {"version": "v1"}}, [_to("Mesh", {"idleTimeout": "5m"})]),
        _policy("other-service", {"kind": "MeshService", "name": "api"}, [_to("Mesh", {"connectionTimeout": "9s"})]),
        _policy(
            "other-subset", {"kind": "MeshSubset", "tags": {"version": "v2"}}, [_to("Mesh", {"idleTimeout": "9m"})]
        ),
    ]
    ctx = await context_for("type: Mesh\nname: default\n")
    ctx = MeshContext.build(ctx.mesh, ctx.dataplanes.values(), policies)
    web = ctx.dataplanes["web-1"]
    found = matched(ctx, web, "MeshTimeout")
    # Least specific first; among equals the lexicographically smallest name last: it wins (Kuma).
    assert [p.name for p in found] == ["z-mesh", "b-subset", "a-subset", "a-service"]
    # Merged in that order: the MeshService policy's connectionTimeout wins, a-subset's idleTimeout
    # beats b-subset's.
    assert to_conf(found, "backend") == {"connectionTimeout": "3s", "idleTimeout": "5m"}


async def test_to_entries_more_specific_destination_wins() -> None:
    policy = _policy(
        "p",
        {"kind": "Mesh"},
        [_to("MeshService", {"connectionTimeout": "7s"}, name="backend"), _to("Mesh", {"connectionTimeout": "1s"})],
    )
    ctx = await context_for("type: Mesh\nname: default\n")
    ctx = MeshContext.build(ctx.mesh, ctx.dataplanes.values(), [policy])
    found = matched(ctx, ctx.dataplanes["web-1"], "MeshTimeout")
    assert to_conf(found, "backend") == {"connectionTimeout": "7s"}
    assert to_conf(found, "api") == {"connectionTimeout": "1s"}


async def test_proxy_types_select_sidecars_or_gateways() -> None:
    sidecar_only = _policy("s", {"kind": "Mesh", "proxyTypes": ["Sidecar"]}, [_to("Mesh", {"idleTimeout": "1m"})])
    gateway_only = _policy("g", {"kind": "Mesh", "proxyTypes": ["Gateway"]}, [_to("Mesh", {"idleTimeout": "2m"})])
    text = (TESTDATA / "gateway-default-policies.input.yaml").read_text()
    gw_ctx = await context_for(text)
    ctx = MeshContext.build(gw_ctx.mesh, gw_ctx.dataplanes.values(), [sidecar_only, gateway_only])
    assert [p.name for p in matched(ctx, ctx.dataplanes["web-1"], "MeshTimeout")] == ["g"]
    assert [p.name for p in matched(ctx, ctx.dataplanes["backend-1"], "MeshTimeout")] == ["s"]


def test_mtp_actions_resolve_per_source_service() -> None:
    mtp = Resource(
        type="MeshTrafficPermission",
        name="m",
        mesh="default",
        spec={
            "targetRef": {"kind": "Mesh"},
            "from": [
                {"targetRef": {"kind": "MeshService", "name": "bad"}, "default": {"action": "Deny"}},
                {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}},
            ],
        },
    )
    assert meshtrafficpermission.actions([mtp]) == ("Allow", {"bad": "Deny"})
    assert meshtrafficpermission.actions([]) == (None, {})


async def test_listener_names() -> None:
    ctx = await context_for((TESTDATA / "plain.input.yaml").read_text())
    names = generate(ctx, ctx.dataplanes["web-1"]).names(LISTENER)
    assert names == ["inbound:10.0.0.1:8080", "outbound:127.0.0.1:10001", "outbound:127.0.0.1:10002"]


def test_golden_files_are_valid_yaml() -> None:
    for golden in TESTDATA.glob("*.golden.yaml"):
        assert isinstance(yaml.safe_load(golden.read_text()), dict)
