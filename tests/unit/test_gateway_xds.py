"""Builtin and delegated gateway config generation, without servers.

Golden cases: ``testdata/gateway/<case>.input.yaml`` plus the workloads of ``_base.yaml``
(a case may override a Dataplane by name), generated for ``gateway-1`` and compared with
``<case>.golden.yaml``; inputs go through the real validation first. Regenerate with
``UPDATE_GOLDEN_FILES=true pytest tests/unit/test_gateway_xds.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import GenerationError, generate
from zonemesh.zone_cp.xds.generators.gateway import (
    host_covers,
    listeners,
    select_gateway,
    virtual_hosts,
)
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from zonemesh.zone_cp.xds.testing import TestCA, assert_golden, mesh_context, self_signed_server_cert, yaml_dump

TESTDATA = Path(__file__).parent / "testdata" / "gateway"
CASES = sorted(p.name.removesuffix(".input.yaml") for p in TESTDATA.glob("*.input.yaml"))


def load(text: str) -> list[Resource]:
    return [from_universal(doc)[0] for doc in load_documents(text)]


async def context_for(resources: list[Resource], ca: TestCA | None = None) -> MeshContext:
    return await mesh_context(resources, load((TESTDATA / "_base.yaml").read_text()), ca)


@pytest.mark.parametrize("case", CASES)
async def test_golden(case: str) -> None:
    ctx = await context_for(load((TESTDATA / f"{case}.input.yaml").read_text()))
    rendered = yaml_dump(dump(generate(ctx, ctx.dataplanes["gateway-1"]), hide_certificates=True))
    assert_golden(TESTDATA / f"{case}.golden.yaml", rendered)


# --- pieces --------------------------------------------------------------------------------------------


async def _http_case() -> MeshContext:
    return await context_for(load((TESTDATA / "builtin-http.input.yaml").read_text()))


async def test_listeners_on_one_port_merge_and_routes_attach_by_tags() -> None:
    ctx = await _http_case()
    gateway = select_gateway(ctx.policies["MeshGateway"], ctx.dataplanes["gateway-1"])
    assert gateway is not None
    by_port = listeners(gateway, ctx.dataplanes["gateway-1"], ctx.policies["MeshGatewayRoute"])
    assert list(by_port) == [8080]
    catch_all, foo = by_port[8080]
    assert (catch_all.hostname, foo.hostname) == ("*", "foo.example.com")
    # The gateway's own tags join the listener's: selectors may use both.
    assert foo.tags == {"kuma.io/service": "edge-gateway", "port": "http-8080", "host": "foo"}
    assert [r.name for r in catch_all.routes] == ["edge-route"]
    assert [r.name for r in foo.routes] == ["edge-route", "foo-only"]

    resources = generate(ctx, ctx.dataplanes["gateway-1"])
    assert resources.names(LISTENER) == ["edge-gateway:HTTP:8080"]
    routes = resources.get(ROUTE, "edge-gateway:HTTP:8080")
    assert isinstance(routes, route_pb2.RouteConfiguration)
    # Exact host first, then the catch-all; the foo host also serves the catch-all's routes.
    assert [(v.name, list(v.domains)) for v in routes.virtual_hosts] == [
        ("foo.example.com", ["foo.example.com", "foo.example.com:*"]),
        ("*", ["*"]),
    ]
    foo_vhost, any_vhost = routes.virtual_hosts
    assert len(foo_vhost.routes) == 6 and len(any_vhost.routes) == 2
    # Most specific first: exact, regex, then prefixes longest first ("/" last), ties by route name.
    paths = [
        (
            r.match.WhichOneof("path_specifier"),
            r.match.path or r.match.safe_regex.regex or r.match.path_separated_prefix or r.match.prefix,
        )
        for r in foo_vhost.routes
    ]
    assert paths == [
        ("path", "/exact"),
        ("safe_regex", "^/v[0-9]+/.*"),
        ("path_separated_prefix", "/strip"),
        ("path_separated_prefix", "/api"),
        ("path_separated_prefix", "/old"),
        ("prefix", "/"),
    ]
    assert [r.match.path_separated_prefix or r.match.prefix or r.match.path for r in any_vhost.routes] == ["/api", "/"]


async def test_weighted_split_and_subset_cluster() -> None:
    ctx = await _http_case()
    resources = generate(ctx, ctx.dataplanes["gateway-1"])
    routes = resources.get(ROUTE, "edge-gateway:HTTP:8080")
    assert isinstance(routes, route_pb2.RouteConfiguration)
    root = next(r for r in routes.virtual_hosts[1].routes if r.match.prefix == "/")
    split = [(c.name, c.weight.value) for c in root.route.weighted_clusters.clusters]
    assert split[1] == ("b", 10) and split[0][1] == 90 and split[0][0].startswith("a-")
    # The subset cluster carries only the endpoints with version=v1.
    cla = resources.get(ENDPOINT, split[0][0])
    addresses = [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints]  # type: ignore[union-attr]
    assert addresses == ["10.0.0.11"]
    full = resources.get(ENDPOINT, "a")
    assert len(full.endpoints[0].lb_endpoints) == 2  # type: ignore[union-attr]
    # Clusters to backends use mTLS with the gateway's own identity.
    cluster = resources.get(CLUSTER, "b")
    assert cluster is not None and cluster.transport_socket.name == "envoy.transport_sockets.tls"
    assert "identity_cert:secret:edge-gateway" in resources.names(SECRET)


async def test_https_terminates_with_a_secret_certificate() -> None:
    pem = b"".join(self_signed_server_cert("secure.example.com"))
    resources = load(
        f"""
type: Mesh
name: default
---
type: Secret
mesh: default
name: secure-cert
data: {base64.b64encode(pem).decode()}
---
type: MeshGateway
mesh: default
name: edge-gateway
selectors: [{{match: {{kuma.io/service: edge-gateway}}}}]
conf:
  listeners:
    - port: 8443
      protocol: HTTPS
      hostname: secure.example.com
      tls: {{mode: TERMINATE, certificates: [{{secret: secure-cert}}]}}
    - port: 8443
      protocol: HTTPS
      tls: {{certificates: [{{inlineString: "{pem.decode().replace(chr(10), chr(92) + "n")}"}}]}}
"""
    )
    ctx = await context_for(resources)
    out = generate(ctx, ctx.dataplanes["gateway-1"])
    listener = out.get(LISTENER, "edge-gateway:HTTPS:8443")
    assert isinstance(listener, listener_pb2.Listener)
    # One filter chain per hostname; the catch-all one has no SNI condition.
    assert [list(c.filter_chain_match.server_names) for c in listener.filter_chains] == [[], ["secure.example.com"]]
    assert listener.listener_filters[0].name == "envoy.filters.listener.tls_inspector"
    secrets = {n: out.get(SECRET, n) for n in out.names(SECRET)}
    assert len(secrets) == 2
    for secret in secrets.values():
        assert b"BEGIN CERTIFICATE" in secret.tls_certificate.certificate_chain.inline_bytes  # type: ignore[union-attr]
        assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes  # type: ignore[union-attr]
        assert b"PRIVATE KEY" not in secret.tls_certificate.certificate_chain.inline_bytes  # type: ignore[union-attr]


async def test_missing_listener_secret_is_a_clear_generation_error() -> None:
    resources = load(
        """
type: Mesh
name: default
---
type: MeshGateway
mesh: default
name: edge-gateway
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  listeners:
    - {port: 8443, protocol: HTTPS, tls: {certificates: [{secret: nope}]}}
"""
    )
    ctx = await context_for(resources)
    with pytest.raises(GenerationError, match=r"generator 'gateway'.*secret 'nope' not found in mesh 'default'"):
        generate(ctx, ctx.dataplanes["gateway-1"])


async def test_delegated_gateway_gets_outbounds_only() -> None:
    ctx = await context_for(load((TESTDATA / "delegated.input.yaml").read_text()))
    out = generate(ctx, ctx.dataplanes["gateway-1"])
    assert out.names(LISTENER) == ["outbound:127.0.0.1:33033"]
    assert out.names(CLUSTER) == ["b"]
    # Its identity is its gateway service: the backend's MeshTrafficPermission sees "kong".
    assert "identity_cert:secret:kong" in out.names(SECRET)


async def test_builtin_gateway_without_a_mesh_gateway_has_no_listeners() -> None:
    ctx = await context_for(load("type: Mesh\nname: default\n"))
    out = generate(ctx, ctx.dataplanes["gateway-1"])
    assert out.names(LISTENER) == [] and out.names(CLUSTER) == []


def _gateway(name: str, match: dict[str, str]) -> Resource:
    return Resource(
        type="MeshGateway",
        name=name,
        mesh="default",
        spec={"selectors": [{"match": match}], "conf": {"listeners": [{"port": 1, "protocol": "HTTP"}]}},
    )


async def test_most_specific_gateway_selector_wins() -> None:
    ctx = await context_for(load("type: Mesh\nname: default\n"))
    dp = ctx.dataplanes["gateway-1"]
    broad = _gateway("a-broad", {"kuma.io/service": "edge-gateway"})
    other = _gateway("b-other", {"kuma.io/service": "other"})
    assert select_gateway([other, broad], dp) is broad
    narrow = Resource(type="Dataplane", name="gw", mesh="default", spec=dp.spec)
    assert select_gateway([other], narrow) is None
    assert select_gateway([broad], ctx.dataplanes["a-1"]) is None  # sidecars never get gateway config


@pytest.mark.parametrize(
    ("pattern", "host", "covered"),
    [
        ("*", "a.example.com", True),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", True),
        ("a.example.com", "a.example.com", True),
        ("a.example.com", "b.example.com", False),
        ("a.example.com", "*", False),
    ],
)
def test_host_covers(pattern: str, host: str, covered: bool) -> None:
    assert host_covers(pattern, host) is covered


async def test_route_hostnames_narrow_virtual_hosts() -> None:
    resources = load(
        """
type: Mesh
name: default
---
type: MeshGateway
mesh: default
name: edge-gateway
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  listeners:
    - {port: 80, protocol: HTTP, hostname: "*.example.com"}
    - {port: 80, protocol: HTTP, hostname: other.org}
---
type: MeshGatewayRoute
mesh: default
name: api-only
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  http:
    hostnames: [api.example.com]
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: a}}]}]
---
type: MeshGatewayRoute
mesh: default
name: everything
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /b}}], backends: [{destination: {kuma.io/service: b}}]}]
"""
    )
    ctx = await context_for(resources)
    dp = ctx.dataplanes["gateway-1"]
    gateway = select_gateway(ctx.policies["MeshGateway"], dp)
    assert gateway is not None
    hosts = virtual_hosts(listeners(gateway, dp, ctx.policies["MeshGatewayRoute"])[80])
    assert {h: sorted(r.name for r, _ in pairs) for h, pairs in hosts.items()} == {
        "*.example.com": ["everything"],
        "other.org": ["everything"],
        "api.example.com": ["api-only", "everything"],
    }


def test_golden_cases_exist() -> None:
    assert {"builtin-http", "builtin-tcp", "delegated", "gateway-policies"} <= set(CASES)


# --- cross-mesh ------------------------------------------------------------------------------------------

CROSS_MESH = """
type: Mesh
name: mesh-a
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: Mesh
name: mesh-b
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: MeshGateway
mesh: mesh-a
name: cross-gw
selectors: [{match: {kuma.io/service: cross-gw}}]
conf:
  listeners: [{port: 8080, protocol: HTTP, crossMesh: true}]
---
type: Dataplane
mesh: mesh-a
name: cross-gw-1
networking:
  address: 10.1.0.1
  gateway: {type: BUILTIN, tags: {kuma.io/service: cross-gw}}
---
type: Dataplane
mesh: mesh-b
name: client-1
networking:
  address: 10.2.0.1
  inbound: [{port: 80, tags: {kuma.io/service: client}}]
  outbound: [{port: 8080, tags: {kuma.io/service: cross-gw, kuma.io/mesh: mesh-a}}]
---
type: MeshGatewayRoute
mesh: mesh-a
name: cross-route
selectors: [{match: {kuma.io/service: cross-gw}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: x}}]}]
"""


def _ca_secret(mesh: str, pem: bytes) -> Resource:
    return Resource(
        type="Secret", name=f"{mesh}.ca-builtin-cert-ca-1", mesh=mesh, spec={"data": base64.b64encode(pem).decode()}
    )


async def test_cross_mesh_gateway_and_client() -> None:
    from zonemesh.zone_cp.xds.generators import crossmesh

    resources = load(CROSS_MESH)
    meshes = {r.name: r for r in resources if r.type == "Mesh"}
    dataplanes = [r for r in resources if r.type == "Dataplane"]
    gateways = [r for r in resources if r.type == "MeshGateway"]
    ca = TestCA()
    pems = {m: ca.ca_pem(m) for m in ("mesh-a", "mesh-b")}
    secrets = [_ca_secret(m, pem) for m, pem in pems.items()]

    # mesh-b learns about mesh-a's cross-mesh gateway (its instance addresses and ports) and both CAs.
    extra_b = crossmesh.context_resources("mesh-b", meshes.values(), gateways, dataplanes, secrets)
    target = next(r for r in extra_b if r.type == crossmesh.CROSS_MESH_GATEWAY)
    assert target.spec == {
        "mesh": "mesh-a",
        "gateway": "cross-gw",
        "service": "cross-gw",
        "hosts": ["internal.cross-gw.mesh-a.mesh"],
        "ports": [8080],
        "addresses": ["10.1.0.1"],
    }
    assert sorted(r.name for r in extra_b if r.type == crossmesh.MESH_CA) == ["mesh-a", "mesh-b"]
    # A mesh does not list its own cross-mesh gateways as foreign ones.
    extra_a = crossmesh.context_resources("mesh-a", meshes.values(), gateways, dataplanes, secrets)
    assert not [r for r in extra_a if r.type == crossmesh.CROSS_MESH_GATEWAY]

    client = next(d for d in dataplanes if d.name == "client-1")
    cert_b = WorkloadCert(*await ca.workload_cert("mesh-b", "client"))
    ctx_b = MeshContext.build(meshes["mesh-b"], [client], extra_b, (), {"client": cert_b})
    out = generate(ctx_b, client)
    assert "outbound:127.0.0.1:8080" in out.names(LISTENER)
    cluster = out.get(CLUSTER, "crossmesh:mesh-a:cross-gw:8080")
    assert cluster is not None
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    upstream = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(upstream)  # type: ignore[attr-defined]
    tls = upstream.common_tls_context
    # Our mesh-b identity, the gateway's mesh-a SPIFFE ID checked with mesh-a's CA.
    assert tls.tls_certificate_sds_secret_configs[0].name == "identity_cert:secret:client"
    validation = tls.combined_validation_context
    assert validation.default_validation_context.match_typed_subject_alt_names[0].matcher.exact == (
        "spiffe://mesh-a/cross-gw"
    )
    assert validation.validation_context_sds_secret_config.name == "mesh_ca:secret:mesh-a"
    ca_a = out.get(SECRET, "mesh_ca:secret:mesh-a")
    assert ca_a is not None and ca_a.validation_context.trusted_ca.inline_bytes == pems["mesh-a"]  # type: ignore[union-attr]
    assert not [n for n in out.names(CLUSTER) if n == "cross-gw"]  # not treated as a mesh-b service

    # The gateway side: mTLS required, every mesh's CA trusted, the internal host served.
    gateway_dp = next(d for d in dataplanes if d.name == "cross-gw-1")
    cert_a = WorkloadCert(*await ca.workload_cert("mesh-a", "cross-gw"))
    routes_a = [r for r in resources if r.type == "MeshGatewayRoute"]
    ctx_a = MeshContext.build(
        meshes["mesh-a"], [gateway_dp], [*gateways, *routes_a, *extra_a], (), {"cross-gw": cert_a}
    )
    out_a = generate(ctx_a, gateway_dp)
    listener = out_a.get(LISTENER, "cross-gw:HTTP:8080")
    assert isinstance(listener, listener_pb2.Listener)
    downstream = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(downstream)
    assert downstream.require_client_certificate.value is True
    trusted = out_a.get(SECRET, "cross_mesh_ca:secret:all")
    assert trusted is not None
    bundle = trusted.validation_context.trusted_ca.inline_bytes  # type: ignore[union-attr]
    assert pems["mesh-a"] in bundle and pems["mesh-b"] in bundle
    routes = out_a.get(ROUTE, "cross-gw:HTTP:8080")
    assert isinstance(routes, route_pb2.RouteConfiguration)
    assert [list(v.domains) for v in routes.virtual_hosts] == [
        ["internal.cross-gw.mesh-a.mesh", "internal.cross-gw.mesh-a.mesh:*"]
    ]


# --- a gateway in zone-1 reaching a backend that only runs in zone-2 -------------------------------------

CROSS_ZONE = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
---
type: ZoneIngress
name: zone-2.ingress
labels: {zonemesh.io/origin: zone, zonemesh.io/zone: zone-2}
zone: zone-2
networking: {address: 10.2.0.100, port: 10001, advertisedAddress: 192.0.2.2, advertisedPort: 20001}
availableServices:
  - tags: {kuma.io/service: api, kuma.io/protocol: http}
    instances: 2
    mesh: default
---
type: MeshGateway
mesh: default
name: edge-gateway
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  listeners: [{port: 8080, protocol: HTTP}]
---
type: MeshGatewayRoute
mesh: default
name: to-api
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: api}}]}]
"""


async def test_gateway_routes_to_a_backend_in_another_zone_through_its_ingress() -> None:
    from zonemesh.zone_cp.xds.crosszone import CrossZone
    from zonemesh.zone_cp.xds.testing import load_resources

    everything = load_resources(CROSS_ZONE)  # ZoneIngress as KDS delivers it (no API validation)
    mesh = everything[0]
    gateway_dp = load((TESTDATA / "_base.yaml").read_text())[-1]
    assert gateway_dp.name == "gateway-1"
    config = [from_universal(d)[0] for d in load_documents(CROSS_ZONE) if d["type"].startswith("MeshGateway")]
    ingresses = [r for r in everything if r.type == "ZoneIngress"]
    cross = CrossZone.build("zone-1", "default", ingresses, [], {})
    cert = WorkloadCert(*await TestCA().workload_cert("default", "edge-gateway"))
    ctx = MeshContext.build(mesh, [gateway_dp], config, (), {"edge-gateway": cert}, cross=cross)
    out = generate(ctx, gateway_dp)
    cla = out.get(ENDPOINT, "api")
    assert cla is not None
    remote = [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for group in cla.endpoints  # type: ignore[attr-defined]
        for e in group.lb_endpoints
    ]
    assert remote == [("192.0.2.2", 20001)]  # zone-2's ingress, advertised address
    cluster = out.get(CLUSTER, "api")
    assert cluster is not None and cluster.transport_socket.name == "envoy.transport_sockets.tls"  # mTLS end to end


async def test_external_service_backend() -> None:
    resources = load(
        """
type: Mesh
name: default
---
type: ExternalService
mesh: default
name: httpbin
networking: {address: "httpbin.example:443", tls: {enabled: true}}
tags: {kuma.io/service: httpbin, kuma.io/protocol: http}
---
type: MeshGateway
mesh: default
name: edge-gateway
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  listeners: [{port: 8080, protocol: HTTP}]
---
type: MeshGatewayRoute
mesh: default
name: to-httpbin
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: httpbin}}]}]
"""
    )
    ctx = await context_for(resources)
    out = generate(ctx, ctx.dataplanes["gateway-1"])
    cluster = out.get(CLUSTER, "httpbin")
    assert cluster is not None
    # Reached directly (no EDS, no mesh mTLS), with TLS originated to the external host.
    assert cluster.type != cluster.EDS  # type: ignore[attr-defined]
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"  # type: ignore[attr-defined]
    assert "httpbin" not in out.names(ENDPOINT)
