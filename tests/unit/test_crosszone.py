"""Cross-zone config generation without servers: outbound endpoints across zones, zone
ingress (SNI passthrough), zone egress, ExternalServices; golden files plus properties.

Each ``testdata/crosszone/<case>.input.yaml`` (a Mesh, maybe ExternalServices) is combined
with ``_base.yaml`` (zone-1's dataplanes, its ingress and egress, zone-2's and zone-3's
ingresses as KDS delivers them) and generated for web-1, ingress-1 and egress-1 into
``<case>.golden.yaml``. Regenerate with ``UPDATE_GOLDEN_FILES=true``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds import sni
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert, services
from zonemesh.zone_cp.xds.crosszone import (
    EGRESS_SERVICE,
    CrossZone,
    ZoneContext,
    external_load_assignment,
    remote_endpoints,
)
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import egress as egress_gen
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.generators import ingress as ingress_gen
from zonemesh.zone_cp.xds.policies import POLICY_TYPES, meshtrafficpermission
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, SECRET, ResourceSet
from zonemesh.zone_cp.xds.testing import TestCA, assert_golden, load_resources, yaml_dump

TESTDATA = Path(__file__).parent / "testdata" / "crosszone"
CASES = sorted(p.name.removesuffix(".input.yaml") for p in TESTDATA.glob("*.input.yaml"))
ZONE = "zone-1"
RESOLVED = {"httpbin.example": ["203.0.113.7"]}


async def contexts(case_text: str, ca: TestCA | None = None) -> ZoneContext:
    base: dict[tuple[str, str], Resource] = {
        (r.type, r.name): r for r in load_resources((TESTDATA / "_base.yaml").read_text())
    }
    for res in load_resources(case_text):
        base[(res.type, res.name)] = res
    everything = list(base.values())
    mesh = next(r for r in everything if r.type == "Mesh")
    dataplanes = [r for r in everything if r.type == "Dataplane"]
    ingresses = [r for r in everything if r.type == "ZoneIngress"]
    egresses = [r for r in everything if r.type == "ZoneEgress"]
    externals = [r for r in everything if r.type == "ExternalService"]
    policies = [r for r in everything if r.type in POLICY_TYPES]
    ca = ca or TestCA()
    certs: dict[str, WorkloadCert] = {}
    egress_certs: dict[str, WorkloadCert] = {}
    if (mesh.spec.get("mtls") or {}).get("enabledBackend"):
        for dp in dataplanes:
            for service in services(dp):
                certs[service] = WorkloadCert(*await ca.workload_cert(mesh.name, service))
        egress_certs[mesh.name] = WorkloadCert(*await ca.workload_cert(mesh.name, EGRESS_SERVICE))
    cross = CrossZone.build(ZONE, mesh.name, ingresses, egresses, RESOLVED)
    mctx = MeshContext.build(mesh, dataplanes, policies, externals, certs, cross=cross)
    zctx = ZoneContext(ZONE, {mesh.name: mctx}, egress_certs)
    zctx.memo["proxies"] = {r.name: r for r in [*ingresses, *egresses]}
    return zctx


def render(resources: ResourceSet) -> dict[str, Any]:
    return {k: v for k, v in dump(resources, hide_certificates=True).items() if v}


@pytest.mark.parametrize("case", CASES)
async def test_golden(case: str) -> None:
    zctx = await contexts((TESTDATA / f"{case}.input.yaml").read_text())
    mctx = zctx.meshes["default"]
    proxies = zctx.memo["proxies"]
    rendered = yaml_dump(
        {
            "web-1": render(generate(mctx, mctx.dataplanes["web-1"])),
            "ingress-1": render(ingress_gen.generate(zctx, proxies["ingress-1"])),
            "egress-1": render(egress_gen.generate(zctx, proxies["egress-1"])),
        }
    )
    assert_golden(TESTDATA / f"{case}.golden.yaml", rendered)


def _groups(resources: ResourceSet, name: str) -> list[tuple[int, str, list[tuple[str, int, int]]]]:
    cla = resources.get(ENDPOINT, name)
    assert cla is not None
    return [
        (
            group.priority,
            group.locality.zone,
            [
                (
                    e.endpoint.address.socket_address.address,
                    e.endpoint.address.socket_address.port_value,
                    e.load_balancing_weight.value,
                )
                for e in group.lb_endpoints
            ],
        )
        for group in cla.endpoints  # type: ignore[attr-defined]
    ]


async def test_local_first_then_remote_ingresses_weighted_by_instances() -> None:
    zctx = await contexts((TESTDATA / "remote-direct.input.yaml").read_text())
    mctx = zctx.meshes["default"]
    out = generate(mctx, mctx.dataplanes["web-1"])
    assert _groups(out, "backend") == [
        (0, ZONE, [("10.1.0.2", 9000, 0)]),
        (1, "zone-2", [("192.0.2.2", 20001, 3)]),  # advertised address; v1 (2) + v2 (1)
        (1, "zone-3", [("10.3.0.100", 10001, 1)]),  # no advertised address: its address
    ]
    # Only in zone-2: the remote group is priority 0 (no gap); other meshes' entries do not count.
    assert _groups(out, "api") == [(0, "zone-2", [("192.0.2.2", 20001, 1)])]


async def test_mesh_without_locality_awareness_spreads_over_zones_by_instances() -> None:
    """``routing.localityAwareLoadBalancing: false``: one priority, hosts weighted by instances."""
    zctx = await contexts((TESTDATA / "remote-direct.input.yaml").read_text())
    mctx = zctx.meshes["default"]
    mctx.mesh.spec.setdefault("routing", {})["localityAwareLoadBalancing"] = False
    out = generate(mctx, mctx.dataplanes["web-1"])
    assert _groups(out, "backend") == [
        (0, ZONE, [("10.1.0.2", 9000, 1)]),
        (0, "zone-2", [("192.0.2.2", 20001, 3)]),
        (0, "zone-3", [("10.3.0.100", 10001, 1)]),
    ]
    mctx.mesh.spec["routing"]["localityAwareLoadBalancing"] = True  # explicit true: local first, as by default
    mctx.memo.clear()
    assert [g[0] for g in _groups(generate(mctx, mctx.dataplanes["web-1"]), "backend")] == [0, 1, 1]


async def test_via_egress_remote_part_and_external_services_go_to_the_egress() -> None:
    zctx = await contexts((TESTDATA / "remote-via-egress.input.yaml").read_text())
    mctx = zctx.meshes["default"]
    out = generate(mctx, mctx.dataplanes["web-1"])
    assert _groups(out, "backend") == [(0, ZONE, [("10.1.0.2", 9000, 0)]), (1, ZONE, [("10.1.0.101", 10002, 1)])]
    assert _groups(out, "httpbin") == [(0, ZONE, [("10.1.0.101", 10002, 1)])]
    text = json.dumps(dump(out)["clusters"])
    assert '"sni": "httpbin{mesh=default}"' in text and "spiffe://default/zone-egress" in text


async def test_removing_the_last_remote_instance_removes_the_zone() -> None:
    text = (TESTDATA / "remote-direct.input.yaml").read_text()
    zctx = await contexts(text)
    ingresses = [r for r in zctx.memo["proxies"].values() if r.type == "ZoneIngress"]
    for ingress in ingresses:
        if ingress.name == "zone-3.ingress":
            ingress.spec["availableServices"] = []
    remote = remote_endpoints(ZONE, "default", ingresses)
    assert [(e.zone, e.weight) for e in remote["backend"]] == [("zone-2", 3)]
    assert "gone" not in remote  # zero instances advertise nothing


async def test_ingress_passes_tls_through_and_holds_no_key() -> None:
    zctx = await contexts((TESTDATA / "remote-direct.input.yaml").read_text())
    out = ingress_gen.generate(zctx, zctx.memo["proxies"]["ingress-1"])
    assert not out.by_type[SECRET]
    listener = out.get(LISTENER, "inbound:10.1.0.100:10001")
    assert listener is not None
    names = [list(chain.filter_chain_match.server_names) for chain in listener.filter_chains]  # type: ignore[attr-defined]
    assert names == [
        ["backend{mesh=default,version=v1}"],
        ["backend{mesh=default}"],
        ["web{kuma.io/protocol=http,mesh=default}"],
        ["web{mesh=default}"],
    ]
    for chain in listener.filter_chains:  # type: ignore[attr-defined]
        assert not chain.HasField("transport_socket")
    for cluster in out.by_type[CLUSTER].values():
        assert not cluster.HasField("transport_socket")  # type: ignore[attr-defined]
    assert _groups(out, "backend{mesh=default}") == [(0, ZONE, [("10.1.0.2", 9000, 0)])]


async def test_without_mtls_no_remote_endpoints() -> None:
    zctx = await contexts((TESTDATA / "egress-without-mtls.input.yaml").read_text())
    mctx = zctx.meshes["default"]
    out = generate(mctx, mctx.dataplanes["web-1"])
    assert _groups(out, "backend") == [(0, ZONE, [("10.1.0.2", 9000, 0)])]
    assert _groups(out, "api") == [(0, "", [])]


async def test_ingress_without_mtls_or_instances_has_no_listener() -> None:
    zctx = await contexts((TESTDATA / "egress-without-mtls.input.yaml").read_text())
    assert not ingress_gen.generate(zctx, zctx.memo["proxies"]["ingress-1"]).by_type[LISTENER]


async def test_egress_routes_remote_services_by_sni_and_terminates_only_external_ones() -> None:
    zctx = await contexts((TESTDATA / "remote-via-egress.input.yaml").read_text())
    out = egress_gen.generate(zctx, zctx.memo["proxies"]["egress-1"])
    listener = out.get(LISTENER, "inbound:10.1.0.101:10002")
    assert listener is not None
    chains = {chain.filter_chain_match.server_names[0]: chain for chain in listener.filter_chains}  # type: ignore[attr-defined]
    assert sorted(chains) == ["api{mesh=default}", "backend{mesh=default}", "httpbin{mesh=default}"]
    assert not chains["backend{mesh=default}"].HasField("transport_socket")
    assert chains["httpbin{mesh=default}"].HasField("transport_socket")
    assert _groups(out, "backend{mesh=default}") == [
        (0, "zone-2", [("192.0.2.2", 20001, 3)]),
        (0, "zone-3", [("10.3.0.100", 10001, 1)]),
    ]
    assert out.names(SECRET) == ["identity_cert:secret:zone-egress:default", "mesh_ca:secret:default"]
    assert not out.missing()


async def test_egress_without_its_certificate_fails_clearly() -> None:
    zctx = await contexts((TESTDATA / "remote-via-egress.input.yaml").read_text())
    zctx.egress_certs = {}
    with pytest.raises(ValueError, match="zone-egress certificate for the egress in mesh 'default'"):
        egress_gen.generate(zctx, zctx.memo["proxies"]["egress-1"])


def test_external_endpoints_ip_resolved_or_dns() -> None:
    cla, dns = external_load_assignment("x", "127.0.0.1", 80, False, {})
    assert not dns and cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "127.0.0.1"
    cla, dns = external_load_assignment("x", "svc.example", 80, False, {"svc.example": ["10.9.0.2", "10.9.0.1"]})
    addresses = [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints]
    assert not dns and addresses == ["10.9.0.1", "10.9.0.2"]
    _, dns = external_load_assignment("x", "svc.example", 80, True, {"svc.example": ["10.9.0.1"]})
    assert dns  # disableHostDNSLookup: Envoy resolves
    _, dns = external_load_assignment("x", "unresolved.example", 80, False, {})
    assert dns


async def test_traffic_permission_checks_the_remote_callers_spiffe_id() -> None:
    """A proxy in zone-2 serving backend denies web (a caller in zone-1) by its SPIFFE ID: the
    identity travels in the client certificate through ingress passthrough, unchanged."""
    ca = TestCA()
    deny = Resource(
        type="MeshTrafficPermission",
        name="deny-web",
        mesh="default",
        spec={
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}},
            ],
        },
    )
    enforced, _ = meshtrafficpermission.rules("default", [deny])
    principals = enforced.policies["MeshTrafficPermission-deny"].principals
    web_cert = await ca.workload_cert("default", "web")  # what zone-1's web proxy presents
    from cryptography import x509

    sans = x509.load_pem_x509_certificate(web_cert[0]).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    assert [p.authenticated.principal_name.exact for p in principals] == uris == ["spiffe://default/web"]


def test_outbound_sni_is_what_ingress_and_egress_match() -> None:
    assert sni.parse("backend{mesh=default}") == ("backend", "default", {})
