"""Certificates and private keys in ExternalService, MeshGateway and Mesh (issue 15, finding 3).

- They are Kuma DataSources: exactly one of ``secret``, ``inline``, ``inlineString``, ``file``.
- ``secret:`` references are read at generation and reach Envoy over SDS only (no key in a
  cluster or listener); a missing Secret is an error naming resource, field and Secret, for that
  proxy only (the zone egress skips just that ExternalService); a changed Secret is pushed.
- No API response carries a key: resource reads show a marker instead of an inline key (and a
  marker applied back keeps the stored key), config dumps redact every key wherever it sits.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import any_pb2
from test_api import make_client
from zonemesh.shared.resources.codec import from_universal, load_documents, to_universal
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.redaction import redact, restore
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert
from zonemesh.zone_cp.xds.crosszone import EGRESS_SERVICE, ZoneContext
from zonemesh.zone_cp.xds.dump import REDACTED, dump
from zonemesh.zone_cp.xds.envoy import external_ca_secret_name, external_cert_secret_name, pack
from zonemesh.zone_cp.xds.generators import GenerationError, generate
from zonemesh.zone_cp.xds.generators import egress as egress_gen
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, SECRET, ResourceSet
from zonemesh.zone_cp.xds.testing import RecordingCache, TestCA, mesh_context, self_signed_server_cert, stream_infos

CERT, KEY = self_signed_server_cert("client.example")
CA, _ = self_signed_server_cert("ca.example")
OTHER_CERT, OTHER_KEY = self_signed_server_cert("other.example")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse(text: str) -> list[Resource]:
    return [from_universal(doc)[0] for doc in load_documents(text)]


def leaks(text: str, *keys: bytes) -> bool:
    """Does ``text`` hold a private key: PEM, or any key of ``keys`` as text or base64?"""
    return "PRIVATE KEY" in text or any(k.decode() in text or b64(k) in text for k in keys)


def external_service(tls: dict[str, Any], name: str = "ext", service: str = "ext") -> dict[str, Any]:
    return {
        "type": "ExternalService",
        "mesh": "default",
        "name": name,
        "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"},
        "networking": {"address": "127.0.0.1:9443", "tls": {"enabled": True, **tls}},
    }


SECRET_REFS = {"caCert": {"secret": "ext-ca"}, "clientCert": {"secret": "ext-cert"}, "clientKey": {"secret": "ext-key"}}


def gateway(*certificates: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "MeshGateway",
        "mesh": "default",
        "name": "edge",
        "selectors": [{"match": {"kuma.io/service": "edge"}}],
        "conf": {
            "listeners": [
                {"port": 8443 + i, "protocol": "HTTPS", "tls": {"certificates": [cert]}}
                for i, cert in enumerate(certificates)
            ]
        },
    }


def provided_mesh(key: dict[str, Any]) -> dict[str, Any]:
    backend = {"name": "ca-1", "type": "provided", "conf": {"cert": {"inlineString": CERT.decode()}, "key": key}}
    return {"type": "Mesh", "name": "m1", "mtls": {"backends": [backend]}}


def secret(name: str, data: bytes) -> Resource:
    return Resource(type="Secret", name=name, mesh="default", spec={"data": b64(data)}, version=1)


# --- schema: Kuma's DataSource shapes -------------------------------------------------------------

SOURCES = [
    {"secret": "a-secret"},
    {"inline": b64(KEY)},
    {"inlineString": KEY.decode()},
    {"file": "/etc/certs/key.pem"},
]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: next(iter(s)))
def test_every_kuma_data_source_shape_is_accepted_in_every_key_and_certificate_field(source: dict[str, Any]) -> None:
    for field in ("caCert", "clientCert", "clientKey"):
        tls = {"caCert": {"secret": "ca"}, "clientCert": {"secret": "c"}, "clientKey": {"secret": "k"}, field: source}
        from_universal(external_service(tls))
    from_universal(gateway(source))
    from_universal(provided_mesh(source))


@pytest.mark.parametrize(
    ("source", "bad_field"),
    [
        ({}, ""),
        ({"secret": "s", "inline": b64(KEY)}, ""),
        ({"inlineString": "x", "file": "/f"}, ""),
        ({"inline": "not base64!"}, ".inline"),
        ({"secret": "Not A Name"}, ".secret"),
    ],
    ids=["none", "secret-and-inline", "inlineString-and-file", "inline-not-base64", "secret-not-a-name"],
)
def test_a_data_source_with_none_or_two_sources_is_refused_field_by_field(
    source: dict[str, Any], bad_field: str
) -> None:
    cases = [
        (external_service({"clientCert": {"secret": "c"}, "clientKey": source}), "networking.tls.clientKey"),
        (external_service({"caCert": source}), "networking.tls.caCert"),
        (gateway(source), "conf.listeners[0].tls.certificates[0]"),
        (provided_mesh(source), "mtls.backends[0].conf.key"),
    ]
    for doc, path in cases:
        with pytest.raises(ValidationError) as exc:
            from_universal(doc)
        reasons = {e.field: e.reason for e in exc.value.errors}
        assert path + bad_field in reasons, reasons
        if not bad_field:
            assert reasons[path] == "must have exactly one of: secret, inline, inlineString, file"


# --- reads: inline keys are never served; a marker applied back keeps the stored key ---------------


@pytest.mark.parametrize(
    "doc",
    [
        external_service({"clientCert": {"inlineString": CERT.decode()}, "clientKey": {"inline": b64(KEY)}}),
        external_service({"clientCert": {"inline": b64(CERT)}, "clientKey": {"inlineString": KEY.decode()}}),
        gateway({"inlineString": (CERT + KEY).decode()}, {"inline": b64(OTHER_CERT + OTHER_KEY)}),
        provided_mesh({"inline": b64(KEY)}),
    ],
    ids=["es-inline", "es-inlineString", "gateway", "mesh-provided-ca"],
)
def test_a_read_shows_a_marker_for_each_inline_key_and_applying_it_back_keeps_the_key(doc: dict[str, Any]) -> None:
    stored, _ = from_universal(doc)
    stored.version = 1
    served = to_universal(redact(stored))
    assert not leaks(json.dumps(served), KEY, OTHER_KEY)
    assert "<redacted sha256:" in json.dumps(served)
    assert stored.spec == from_universal(doc)[0].spec  # the stored resource itself is untouched

    back, _ = from_universal(served)  # what `zmctl get -o yaml | zmctl apply -f -` sends
    assert restore(back, stored).spec == stored.spec


def test_certificates_and_references_are_shown_as_they_are() -> None:
    doc = external_service(
        {"caCert": {"inlineString": CA.decode()}, **{k: v for k, v in SECRET_REFS.items() if k != "caCert"}}
    )
    res, _ = from_universal(doc)
    assert redact(res).spec == res.spec


def test_two_keys_each_come_back_to_their_own_place_when_listeners_are_reordered() -> None:
    stored, _ = from_universal(
        gateway({"inlineString": (CERT + KEY).decode()}, {"inline": b64(OTHER_CERT + OTHER_KEY)})
    )
    served = to_universal(redact(stored))
    assert not leaks(json.dumps(served), KEY, OTHER_KEY)
    served["conf"]["listeners"].reverse()
    back = restore(from_universal(served)[0], stored)
    assert [listener["tls"]["certificates"][0] for listener in back.spec["conf"]["listeners"]] == [
        {"inline": b64(OTHER_CERT + OTHER_KEY)},
        {"inlineString": (CERT + KEY).decode()},
    ]


def test_a_marker_that_names_no_stored_key_is_refused_with_its_field() -> None:
    stored, _ = from_universal(
        external_service({"clientCert": {"inline": b64(CERT)}, "clientKey": {"inline": b64(KEY)}})
    )
    other, _ = from_universal(
        external_service({"clientCert": {"inline": b64(CERT)}, "clientKey": {"inline": b64(OTHER_KEY)}})
    )
    marked = from_universal(to_universal(redact(other)))[0]
    for candidate in (stored, None):  # another key stored, nothing stored
        with pytest.raises(ValidationError) as exc:
            restore(marked, candidate)
        (error,) = exc.value.errors
        assert error.field == "networking.tls.clientKey.inlineString"
        assert "redaction marker" in error.reason and "secret: NAME" in error.reason
    # A marker where no key is expected (a certificate field) is refused too.
    ca_marked = copy.deepcopy(to_universal(redact(stored)))
    ca_marked["networking"]["tls"]["caCert"] = ca_marked["networking"]["tls"]["clientKey"]
    with pytest.raises(ValidationError, match=r"networking.tls.caCert.inlineString: is a redaction marker"):
        restore(from_universal(ca_marked)[0], stored)


async def test_the_api_never_serves_an_inline_key_and_takes_its_own_output_back() -> None:
    client, store = await make_client()
    try:
        doc = external_service({"clientCert": {"inlineString": CERT.decode()}, "clientKey": {"inline": b64(KEY)}})
        created = await client.put("/meshes/default/externalservices/ext", json=doc)
        assert created.status == 201 and not leaks(await created.text(), KEY)
        item = await client.get("/meshes/default/externalservices/ext")
        body = await item.text()
        assert item.status == 200 and not leaks(body, KEY) and "<redacted sha256:" in body
        for path in ("/meshes/default/externalservices", "/externalservices"):
            listed = await client.get(path)
            assert listed.status == 200 and not leaks(await listed.text(), KEY)

        again = await client.put("/meshes/default/externalservices/ext", json=json.loads(body))
        assert again.status == 200, await again.text()
        kept = await store.get("ExternalService", "ext", "default")
        assert kept.spec["networking"]["tls"]["clientKey"] == {"inline": b64(KEY)}

        forged = json.loads(body)
        forged["networking"]["tls"]["clientKey"] = {"inlineString": "<redacted sha256:0123456789abcdef>"}
        refused = await client.put("/meshes/default/externalservices/ext", json=forged)
        assert refused.status == 400
        problems = (await refused.json())["invalid_parameters"]
        assert [p["field"] for p in problems] == ["networking.tls.clientKey.inlineString"]
    finally:
        await client.close()


# --- config dumps: every key redacted, wherever it sits --------------------------------------------


def test_a_dump_redacts_keys_in_clusters_listeners_and_secrets_alike() -> None:
    resources = ResourceSet()
    upstream = tls_pb2.UpstreamTlsContext()
    upstream.common_tls_context.tls_certificates.append(
        common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=CERT),
            private_key=base_pb2.DataSource(inline_bytes=KEY),
        )
    )
    cluster = cluster_pb2.Cluster(name="c")
    cluster.transport_socket.name = "envoy.transport_sockets.tls"
    cluster.transport_socket.typed_config.CopyFrom(pack(upstream))
    resources.add(CLUSTER, "c", cluster)
    downstream = tls_pb2.DownstreamTlsContext()
    downstream.common_tls_context.tls_certificates.append(
        common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=CERT.decode()),
            private_key=base_pb2.DataSource(inline_string=OTHER_KEY.decode()),
        )
    )
    chain = listener_components_pb2.FilterChain(
        transport_socket=base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(downstream))
    )
    resources.add(LISTENER, "l", listener_pb2.Listener(name="l", filter_chains=[chain]))
    resources.add(
        SECRET,
        "s",
        secret_pb2.Secret(
            name="s",
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename="/certs/s.crt"),
                private_key=base_pb2.DataSource(filename="/certs/s.key"),
            ),
        ),
    )
    # A key where no key field is expected (here a CA bundle someone pasted a key into).
    resources.add(
        SECRET,
        "odd",
        secret_pb2.Secret(
            name="odd",
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=CA + KEY)
            ),
        ),
    )
    text = json.dumps(dump(resources))
    assert not leaks(text, KEY, OTHER_KEY)
    assert text.count(REDACTED) == 3
    assert "/certs/s.key" in text  # a file name is no key: shown
    assert b64(CERT) in text  # certificates are shown


# --- generation: secret references over SDS -------------------------------------------------------

SIDECAR = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: web, kuma.io/protocol: http}}]
  outbound:
    - {port: 10001, tags: {kuma.io/service: ext}}
    - {port: 10002, tags: {kuma.io/service: backend}}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound: [{port: 8080, tags: {kuma.io/service: backend, kuma.io/protocol: http}}]
"""


def ext_secrets() -> list[Resource]:
    return [secret("ext-ca", CA), secret("ext-cert", CERT), secret("ext-key", KEY)]


async def sidecar_context(*extra: Resource) -> MeshContext:
    es, _ = from_universal(external_service(SECRET_REFS))
    return await mesh_context([*parse(SIDECAR), es, *extra])


def unpack_secret(resources: ResourceSet, name: str) -> secret_pb2.Secret:
    found = resources.get(SECRET, name)
    assert isinstance(found, secret_pb2.Secret), f"no secret {name}: {resources.names(SECRET)}"
    return found


def assert_no_inline_material(cluster: Any) -> None:
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    assert not context.common_tls_context.tls_certificates
    assert not context.common_tls_context.HasField("validation_context")
    assert [c.name for c in context.common_tls_context.tls_certificate_sds_secret_configs] == [
        external_cert_secret_name("default", "ext")
    ]


async def test_secret_references_reach_the_sidecar_over_sds_only() -> None:
    ctx = await sidecar_context(*ext_secrets())
    out = generate(ctx, ctx.dataplanes["web-1"])
    assert_no_inline_material(out.get(CLUSTER, "ext"))
    cert = unpack_secret(out, external_cert_secret_name("default", "ext")).tls_certificate
    assert (cert.certificate_chain.inline_bytes, cert.private_key.inline_bytes) == (CERT, KEY)
    ca = unpack_secret(out, external_ca_secret_name("default", "ext")).validation_context
    assert ca.trusted_ca.inline_bytes == CA
    assert not out.missing()
    text = json.dumps(dump(out))
    assert not leaks(text, KEY) and b64(CERT) in text


async def test_a_missing_secret_fails_that_proxy_naming_resource_field_and_secret() -> None:
    ctx = await sidecar_context(secret("ext-ca", CA), secret("ext-cert", CERT))
    with pytest.raises(GenerationError) as exc:
        generate(ctx, ctx.dataplanes["web-1"])
    assert "ExternalService 'ext' networking.tls.clientKey: secret 'ext-key' not found in mesh 'default'" in str(
        exc.value
    )
    generate(ctx, ctx.dataplanes["backend-1"])  # a proxy that does not call it is generated as ever


EDGE = """
type: Dataplane
mesh: default
name: edge-1
networking:
  address: 10.0.0.9
  gateway: {type: BUILTIN, tags: {kuma.io/service: edge}}
"""
ROUTE_TO_EXT = """
type: MeshGatewayRoute
mesh: default
name: to-ext
selectors: [{match: {kuma.io/service: edge}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: ext}}]}]
"""


async def test_a_builtin_gateway_routing_to_the_external_service_gets_its_secrets() -> None:
    listener = {**gateway({"secret": "ext-cert"}), "conf": {"listeners": [{"port": 8080, "protocol": "HTTP"}]}}
    ctx = await sidecar_context(*ext_secrets(), *parse(EDGE), *parse(ROUTE_TO_EXT), from_universal(listener)[0])
    out = generate(ctx, ctx.dataplanes["edge-1"])
    assert_no_inline_material(out.get(CLUSTER, "ext"))
    key = unpack_secret(out, external_cert_secret_name("default", "ext")).tls_certificate.private_key
    assert key.inline_bytes == KEY
    assert not out.missing()


async def test_a_gateway_certificate_secret_that_is_missing_is_named_with_its_listener() -> None:
    ctx = await sidecar_context(*parse(EDGE), from_universal(gateway({"secret": "nope"}))[0])
    with pytest.raises(GenerationError) as exc:
        generate(ctx, ctx.dataplanes["edge-1"])
    assert "MeshGateway 'edge' conf.listeners[0].tls.certificates[0]: secret 'nope' not found in mesh 'default'" in str(
        exc.value
    )


EGRESS_MESH = """
type: Mesh
name: default
mtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}
routing: {zoneEgress: true}
---
type: ZoneEgress
name: egress-1
zone: zone-1
networking: {address: 10.0.0.100, port: 10002}
"""


async def test_the_egress_gets_the_secrets_and_skips_only_an_external_service_whose_secret_is_missing() -> None:
    resources = parse(EGRESS_MESH)
    mesh, proxy = resources
    broken, _ = from_universal(
        external_service({"clientCert": {"secret": "ext-cert"}, "clientKey": {"secret": "gone"}}, "broken", "broken")
    )
    good, _ = from_universal(external_service(SECRET_REFS))
    ca = TestCA()
    mctx = MeshContext.build(mesh, [], ext_secrets(), [good, broken])
    zctx = ZoneContext(
        "zone-1", {"default": mctx}, {"default": WorkloadCert(*await ca.workload_cert("default", EGRESS_SERVICE))}
    )
    with structlog.testing.capture_logs() as logs:
        out = egress_gen.generate(zctx, proxy)
    chains = out.get(LISTENER, "inbound:10.0.0.100:10002").filter_chains  # type: ignore[union-attr]
    assert [c.filter_chain_match.server_names[0] for c in chains] == ["ext{mesh=default}"]
    assert_no_inline_material(out.get(CLUSTER, "ext{mesh=default}"))
    assert (
        unpack_secret(out, external_cert_secret_name("default", "ext")).tls_certificate.private_key.inline_bytes == KEY
    )
    assert not out.missing()
    (skipped,) = [e for e in logs if e["event"] == "zone_egress_external_service_skipped"]
    assert skipped["service"] == "broken" and "networking.tls.clientKey: secret 'gone' not found" in skipped["error"]


# --- the reconciler: a missing Secret, then created, then rotated ---------------------------------


async def test_a_secret_created_later_and_rotated_reaches_the_proxy_and_only_its_secrets_change() -> None:
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in parse("type: Mesh\nname: default\nskipCreatingInitialPolicies: ['*']\n---" + SIDECAR.split("---", 1)[1]):
        await manager.apply(res)
    await manager.apply(from_universal(external_service(SECRET_REFS))[0])
    await manager.apply(secret("ext-ca", CA))
    await manager.apply(secret("ext-cert", CERT))
    cache = RecordingCache()
    async with Reconciler(store, cache, None, debounce=0.02, max_delay=0.1) as reconciler:
        with structlog.testing.capture_logs() as logs:
            for info in stream_infos("web-1", "backend-1"):
                await reconciler.on_stream_open(info)
            assert await cache.settle(reconciler) == ["default/backend-1"]  # web-1 cannot be generated
        failed = [e for e in logs if e["event"] == "xds_generation_failed"]
        assert failed and all(e["proxy"] == "default/web-1" for e in failed)
        assert "networking.tls.clientKey: secret 'ext-key' not found in mesh 'default'" in failed[0]["error"]

        await manager.apply(secret("ext-key", KEY))
        assert "default/web-1" in await cache.settle(reconciler)
        first = cache.snapshot("default/web-1")
        assert first is not None

        def pushed_key() -> bytes:
            snapshot = cache.snapshot("default/web-1")
            assert snapshot is not None
            found = secret_pb2.Secret()
            any_pb2.Any.FromString(
                snapshot.types[SECRET].resources[external_cert_secret_name("default", "ext")]
            ).Unpack(found)
            return found.tls_certificate.private_key.inline_bytes

        assert pushed_key() == KEY
        await manager.apply(secret("ext-cert", OTHER_CERT))
        await manager.apply(secret("ext-key", OTHER_KEY))
        await cache.settle(reconciler)
        assert pushed_key() == OTHER_KEY
        second = cache.snapshot("default/web-1")
        assert second is not None
        # Envoy swaps the certificate in over SDS: its clusters and listeners are untouched.
        for type_url in (CLUSTER, LISTENER):
            assert second.version(type_url) == first.version(type_url)
