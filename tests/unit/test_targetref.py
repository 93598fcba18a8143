"""targetRef as in Kuma 2.14: the shapes of Kuma's docs are accepted (through the API's
validation) and take effect on the proxies they select, and only on those: generated config of
sidecars, a delegated gateway and a builtin gateway, each policy a MeshTimeout whose `to` sets a
7 s connect timeout on the proxy's clusters and whose `from` sets a 77 s idle timeout on the
inbounds it selects."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.policies.matching import matched, ordered
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER
from zonemesh.zone_cp.xds.testing import mesh_context

WORKLOADS = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
labels: {team: web}
networking:
  address: 10.0.0.1
  inbound:
    - {port: 8080, name: http, tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}}
    - {port: 8081, tags: {kuma.io/service: web-admin, kuma.io/protocol: http}}
  outbound:
    - {port: 10001, tags: {kuma.io/service: backend}}
---
type: Dataplane
mesh: default
name: web-2
labels: {team: web}
networking:
  address: 10.0.0.2
  inbound:
    - {port: 8080, name: http, tags: {kuma.io/service: web, kuma.io/protocol: http, version: v2}}
  outbound:
    - {port: 10001, tags: {kuma.io/service: backend}}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.3
  inbound:
    - {port: 9000, tags: {kuma.io/service: backend, kuma.io/protocol: http}}
  outbound:
    - {port: 10002, tags: {kuma.io/service: web}}
---
type: Dataplane
mesh: default
name: kong-1
networking:
  address: 10.0.0.4
  gateway: {type: DELEGATED, tags: {kuma.io/service: kong}}
  outbound:
    - {port: 10001, tags: {kuma.io/service: backend}}
---
type: Dataplane
mesh: default
name: gateway-1
networking:
  address: 10.0.0.5
  gateway: {type: BUILTIN, tags: {kuma.io/service: edge}}
---
type: MeshGateway
mesh: default
name: edge
selectors: [{match: {kuma.io/service: edge}}]
conf:
  listeners: [{port: 8000, protocol: HTTP, tags: {port: http}}]
---
type: MeshGatewayRoute
mesh: default
name: to-backend
selectors: [{match: {port: http}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: backend}}]}]
"""
PROXIES = ("web-1", "web-2", "backend-1", "kong-1", "gateway-1")
SIDECARS = ("web-1", "web-2", "backend-1")


def timeout_policy(target: dict[str, Any] | None, name: str = "p") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "7s"}}],
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "77s"}}],
    }
    if target is not None:
        spec["targetRef"] = target
    return {"type": "MeshTimeout", "mesh": "default", "name": name, "spec": spec}


async def context(*docs: dict[str, Any]) -> MeshContext:
    resources = [from_universal(d)[0] for d in load_documents(WORKLOADS)]
    resources += [from_universal(d)[0] for d in docs]  # accepted as the API accepts them
    return await mesh_context(resources)


def to_applied(ctx: MeshContext, name: str) -> bool:
    """Did the policy's `to` reach this proxy (its outbound or gateway clusters)?"""
    clusters = generate(ctx, ctx.dataplanes[name]).by_type[CLUSTER].values()
    return any(isinstance(c, cluster_pb2.Cluster) and c.connect_timeout.seconds == 7 for c in clusters)


def from_applied(ctx: MeshContext, name: str) -> set[int]:
    """The inbound ports of this sidecar the policy's `from` reached."""
    ports = set()
    for listener in generate(ctx, ctx.dataplanes[name]).by_type[LISTENER].values():
        assert isinstance(listener, listener_pb2.Listener)
        if not listener.name.startswith("inbound:"):
            continue
        hcm = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
        if hcm.common_http_protocol_options.idle_timeout.seconds == 77:
            ports.add(listener.address.socket_address.port_value)
    return ports


# (top-level targetRef, proxies whose `to` it reaches, {sidecar: inbound ports its `from` reaches})
SHAPES: list[tuple[str, dict[str, Any] | None, set[str], dict[str, set[int]]]] = [
    ("absent", None, set(PROXIES), {"web-1": {8080, 8081}, "web-2": {8080}, "backend-1": {9000}}),
    ("mesh", {"kind": "Mesh"}, set(PROXIES), {"web-1": {8080, 8081}, "web-2": {8080}, "backend-1": {9000}}),
    (
        "mesh-sidecars",
        {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
        set(SIDECARS),
        {"web-1": {8080, 8081}, "web-2": {8080}, "backend-1": {9000}},
    ),
    ("mesh-gateways", {"kind": "Mesh", "proxyTypes": ["Gateway"]}, {"kong-1", "gateway-1"}, {}),
    ("mesh-subset", {"kind": "MeshSubset", "tags": {"version": "v1"}}, {"web-1"}, {"web-1": {8080}}),
    ("mesh-service", {"kind": "MeshService", "name": "web-admin"}, {"web-1"}, {"web-1": {8081}}),
    (
        "mesh-service-namespace",
        {"kind": "MeshService", "name": "web", "namespace": "kuma-demo"},
        {"web-1", "web-2"},
        {"web-1": {8080}, "web-2": {8080}},
    ),
    ("mesh-service-of-gateway", {"kind": "MeshService", "name": "edge"}, {"gateway-1"}, {}),
    (
        "mesh-service-subset",
        {"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v2"}},
        {"web-2"},
        {"web-2": {8080}},
    ),
    (
        "dataplane-all",
        {"kind": "Dataplane"},
        {*SIDECARS, "kong-1"},
        {"web-1": {8080, 8081}, "web-2": {8080}, "backend-1": {9000}},
    ),
    ("dataplane-name", {"kind": "Dataplane", "name": "web-2"}, {"web-2"}, {"web-2": {8080}}),
    (
        "dataplane-labels",
        {"kind": "Dataplane", "labels": {"team": "web"}},
        {"web-1", "web-2"},
        {"web-1": {8080, 8081}, "web-2": {8080}},
    ),
    (
        "dataplane-section-name",
        {"kind": "Dataplane", "name": "web-1", "sectionName": "http"},
        {"web-1"},
        {"web-1": {8080}},
    ),
    ("dataplane-section-port", {"kind": "Dataplane", "sectionName": "8081"}, {"web-1"}, {"web-1": {8081}}),
    ("mesh-gateway", {"kind": "MeshGateway", "name": "edge"}, {"gateway-1"}, {}),
]


@pytest.mark.parametrize(("target", "to_proxies", "from_ports"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
async def test_target_ref_shapes_take_effect_where_they_select(
    target: dict[str, Any] | None, to_proxies: set[str], from_ports: dict[str, set[int]]
) -> None:
    ctx = await context(timeout_policy(target))
    assert {name for name in PROXIES if to_applied(ctx, name)} == to_proxies
    assert {name: ports for name in SIDECARS if (ports := from_applied(ctx, name))} == from_ports


REPLICA = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-3",
    "labels": {"team": "other"},
    "networking": {
        "address": "10.0.0.6",
        "inbound": [
            {
                "port": 8080,
                "name": "http",
                "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http", "version": "v2"},
            }
        ],
        "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
    },
}


@pytest.mark.parametrize(
    "target", [{"kind": "Dataplane", "name": "web-2"}, {"kind": "Dataplane", "labels": {"team": "web"}}]
)
async def test_replicas_alike_but_for_name_or_labels_get_their_own_config(target: dict[str, Any]) -> None:
    """web-3 is web-2 but for its name, labels and address: generation shares config between
    proxies alike in what policies select on, so a Dataplane name or label must tell them apart."""
    ctx = await context(REPLICA, timeout_policy(target))
    assert [to_applied(ctx, name) for name in ("web-2", "web-3")] == [True, False]


def test_precedence_follows_kuma() -> None:
    def p(name: str, ref: dict[str, Any]) -> Resource:
        return Resource(type="MeshTimeout", name=name, mesh="default", spec={"targetRef": ref, "to": []})

    policies = [
        p("a-service-subset", {"kind": "MeshServiceSubset", "name": "web", "tags": {"v": "1"}}),
        p("a-service", {"kind": "MeshService", "name": "web"}),
        p("a-gateway", {"kind": "MeshGateway", "name": "edge"}),
        p("b-subset", {"kind": "MeshSubset", "tags": {"v": "1"}}),
        p("a-subset", {"kind": "MeshSubset", "tags": {"v": "1"}}),
        p("a-dp-section", {"kind": "Dataplane", "name": "web-1", "sectionName": "http"}),
        p("b-dp-name", {"kind": "Dataplane", "name": "web-1"}),
        p("a-dp-labels", {"kind": "Dataplane", "labels": {"team": "web"}}),
        p("a-dp-all", {"kind": "Dataplane"}),
        p("z-mesh", {"kind": "Mesh"}),
        p("a-mesh", {"kind": "Mesh"}),
    ]
    # Least specific first: the last one wins. Kind order is Kuma's (Mesh < Dataplane < MeshSubset
    # < MeshGateway < MeshService < MeshServiceSubset); among equals the smallest name wins.
    assert [x.name for x in ordered(policies)] == [
        "z-mesh",
        "a-mesh",
        "a-dp-all",
        "a-dp-labels",
        "b-dp-name",
        "a-dp-section",
        "b-subset",
        "a-subset",
        "a-gateway",
        "a-service",
        "a-service-subset",
    ]


async def test_more_specific_target_ref_wins_on_the_proxy() -> None:
    mesh = timeout_policy({"kind": "Mesh"}, "a-mesh")
    named = timeout_policy({"kind": "Dataplane", "name": "web-1"}, "z-named")
    named["spec"]["to"][0]["default"]["connectionTimeout"] = "8s"
    ctx = await context(mesh, named)
    assert [p.name for p in matched(ctx, ctx.dataplanes["web-1"], "MeshTimeout")] == ["a-mesh", "z-named"]
    assert not to_applied(ctx, "web-1")  # 8 s from the Dataplane policy, not the Mesh's 7 s
    assert to_applied(ctx, "web-2")


# -- what cannot take effect yet is refused ----------------------------------------------------------

REFUSED = [
    (
        {"kind": "MeshExternalService", "name": "httpbin"},
        "spec.targetRef.kind",
        "targetRef kind MeshExternalService is not supported yet by zonemesh",
    ),
    (
        {"kind": "MeshMultiZoneService", "name": "web"},
        "spec.targetRef.kind",
        "targetRef kind MeshMultiZoneService is not supported yet by zonemesh",
    ),
    (
        # A MeshTimeout for one MeshHTTPRoute applies its request timeout only (a connect
        # timeout is the destination cluster's).
        {"kind": "MeshHTTPRoute", "name": "route"},
        "spec.to[0].default.connectionTimeout",
        "MeshTimeout connectionTimeout on a single route is not supported yet by zonemesh",
    ),
    (
        {"kind": "MeshService", "labels": {"app": "web"}},
        "spec.targetRef.labels",
        "selecting MeshServices by labels is not supported yet",
    ),
    (
        {"kind": "MeshService", "name": "web", "sectionName": "http"},
        "spec.targetRef.sectionName",
        "a MeshService port (sectionName) is not supported yet",
    ),
    (
        {"kind": "MeshGateway", "name": "edge", "tags": {"port": "http"}},
        "spec.targetRef.tags",
        "selecting MeshGateway listeners by tags is not supported yet",
    ),
    ({"kind": "Mesh", "mesh": "other"}, "spec.targetRef.mesh", "a targetRef to another mesh is not supported yet"),
    ({"kind": "Dataplane", "name": "web-1", "labels": {"a": "b"}}, "spec.targetRef.labels", "either labels or name"),
    (
        {"kind": "Dataplane", "proxyTypes": ["Sidecar"]},
        "spec.targetRef.proxyTypes",
        "must not be set with kind Dataplane",
    ),
    ({"kind": "Mesh", "proxyTypes": []}, "spec.targetRef.proxyTypes", "must not be empty"),
]


@pytest.mark.parametrize(
    ("target", "field", "reason"), REFUSED, ids=[f"{r[0]['kind']}-{r[1].rsplit('.', 1)[1]}" for r in REFUSED]
)
def test_target_refs_that_cannot_take_effect_are_refused(target: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as exc:
        from_universal(timeout_policy(target))
    assert {e.field: e.reason for e in exc.value.errors}[field].startswith(reason)


def test_a_dataplane_section_name_needs_an_inbound_policy() -> None:
    policy = timeout_policy({"kind": "Dataplane", "sectionName": "http"})
    del policy["spec"]["from"]
    with pytest.raises(ValidationError, match="sectionName: can only be used with inbound policies"):
        from_universal(policy)


def test_own_mesh_and_namespace_are_accepted() -> None:
    res, _ = from_universal(
        timeout_policy({"kind": "Dataplane", "name": "web-1", "namespace": "kuma-demo", "mesh": "default"})
    )
    assert res.spec["targetRef"]["namespace"] == "kuma-demo"


def test_kuma_docs_examples_validate() -> None:
    """Top-level targetRefs as Kuma's policy docs write them."""
    examples = yaml.safe_load_all("""
kind: Dataplane
labels:
  app: frontend
---
kind: Dataplane
name: backend-1
sectionName: http-port
---
kind: Mesh
proxyTypes: ["Sidecar"]
---
kind: MeshSubset
proxyTypes: ["Gateway"]
tags:
  kuma.io/zone: east
---
kind: MeshServiceSubset
name: backend
tags:
  version: v1
""")
    for target in examples:
        from_universal(timeout_policy(target))
