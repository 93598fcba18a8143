"""Certificate lifecycle: warnings and gauges before a proxy certificate or a mesh CA expires."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from prometheus_client import REGISTRY as PROMETHEUS
from structlog.testing import capture_logs
from zonemesh.shared.ca import MeshCA
from zonemesh.shared.ca.material import fingerprint
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource, format_time
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.certificates import ExpiryWatch, Held, HeldCert, HeldCertificates
from zonemesh.zone_cp.insights import InsightRecorder
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotCache, TypeSnapshot
from zonemesh.zone_cp.xds.envoy import ca_secret_name, identity_secret_name
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.resources import SECRET, encode_any
from zonemesh.zone_cp.xds.server import StreamInfo

T0 = 1_800_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mesh(name: str, ca_expiration: str) -> Resource:
    backend = {"name": "ca-1", "type": "builtin", "conf": {"caCert": {"expiration": ca_expiration}}}
    backend["dpCert"] = {"rotation": {"expiration": "10h"}}
    return Resource(type="Mesh", name=name, spec={"mtls": {"enabledBackend": "ca-1", "backends": [backend]}})


async def held_by_a_proxy(ca: MeshCA, mesh_name: str) -> Held:
    cert = await ca.issue(mesh_name, "web")
    held = HeldCert(
        "web",
        fingerprint(x509.load_pem_x509_certificate(cert.leaf_pem)),
        cert.not_before,
        cert.not_after,
        cert.issued_at,
        cert.backend,
        cert.ca_fingerprint,
    )
    return Held((held,), (), ("ca-1",))


def gauge(name: str, **labels: str) -> float | None:
    return PROMETHEUS.get_sample_value(name, labels)


async def test_a_proxy_certificate_left_unrenewed_and_a_ca_close_to_its_end_are_warned_once() -> None:
    store, clock = MemoryStore(), Clock(T0)
    await store.create(mesh("expiring", "9600h"))  # a CA of 400 days
    ca = MeshCA(store, clock)
    held = {("expiring", "web-1"): await held_by_a_proxy(ca, "expiring")}
    watch = ExpiryWatch(ca, lambda: held, clock)
    with capture_logs() as logs:
        await watch.check()  # fresh certificate, CA 400 days from its end: nothing to say
        assert not [e for e in logs if e["log_level"] == "warning"]
        left = gauge("mesh_proxy_cert_expiry_seconds", mesh="expiring")
        assert left is not None and abs(left - 10 * HOUR) < 120
        assert gauge("mesh_certificates_expiring", mesh="expiring", kind="proxy") == 0

        clock.now = T0 + 9.5 * HOUR  # the proxy still holds it at 95% of its lifetime: renewal failed
        await watch.check()
        await watch.check()
        proxy = [e for e in logs if e["event"] == "proxy_certificate_expiring"]
        assert len(proxy) == 1 and proxy[0]["proxy"] == "web-1" and proxy[0]["backend"] == "ca-1"
        assert gauge("mesh_certificates_expiring", mesh="expiring", kind="proxy") == 1

        clock.now = T0 + 371 * 24 * HOUR  # the CA has 29 days left
        await watch.check()
        ca_warnings = [e for e in logs if e["event"] == "mesh_ca_expiring"]
        assert len(ca_warnings) == 1 and ca_warnings[0]["mesh"] == "expiring"
        assert gauge("mesh_certificates_expiring", mesh="expiring", kind="ca") == 1
        ca_left = gauge("mesh_ca_cert_expiry_seconds", mesh="expiring", backend="ca-1")
        assert ca_left is not None and abs(ca_left - 29 * 24 * HOUR) < 120


def secrets_snapshot(cert: Any, trust: bytes, mesh_name: str) -> Snapshot:
    """A proxy's snapshot holding web's workload certificate and the mesh's roots."""
    identity = secret_pb2.Secret(name=identity_secret_name("web"))
    identity.tls_certificate.certificate_chain.inline_bytes = cert.cert_pem
    identity.tls_certificate.private_key.inline_bytes = cert.key_pem
    roots = secret_pb2.Secret(name=ca_secret_name(mesh_name))
    roots.validation_context.trusted_ca.inline_bytes = trust
    return Snapshot({SECRET: TypeSnapshot.of({s.name: encode_any(SECRET, s) for s in (identity, roots)})})


async def test_an_acked_certificate_is_held_by_its_fingerprint_and_its_changes_are_counted() -> None:
    """What a proxy holds is kept per proxy for as long as it is connected: its certificate's
    fingerprint, expiry and issuer, not the certificate's PEM (1.1 KB per proxy). The insight's
    mTLS section is what it was, and a new certificate counts as a regeneration, the same one
    ACKed again does not."""
    store, clock = MemoryStore(), Clock(T0)
    await store.create(mesh("held", "9600h"))
    ca, cache = MeshCA(store, clock), SnapshotCache()
    recorder = InsightRecorder(ResourceManager(store), "cp-test", held=HeldCertificates(cache, ca))
    info = StreamInfo(1, ProxyIdentity("held", "web-1"), base_pb2.Node(), "peer")
    await recorder.stream_open(info)

    async def ack_certificate() -> dict[str, Any]:
        cert = await ca.issue("held", "web")
        cache.set_snapshot(info.identity.key, secrets_snapshot(cert, (await ca.trust("held")).bundle, "held"))
        snapshot = cache.snapshot(info.identity.key)
        assert snapshot is not None
        await recorder.ack(info, SECRET, snapshot.version(SECRET))
        await recorder.flush()
        held = recorder.connected_held()[("held", "web-1")]
        (leaf,) = held.certs
        assert leaf.fingerprint == fingerprint(x509.load_pem_x509_certificate(cert.leaf_pem))
        assert not [f.name for f in dataclasses.fields(leaf) if isinstance(getattr(leaf, f.name), bytes)]
        insight = await store.get("DataplaneInsight", "web-1", "held")
        mtls: dict[str, Any] = insight.spec["mTLS"]
        assert mtls["certificateExpirationTime"] == format_time(cert.not_after)
        assert mtls["issuedCAFingerprint"] == cert.ca_fingerprint and mtls["issuedBackend"] == "ca-1"
        return mtls

    first = await ack_certificate()
    assert first["certificateRegenerations"] == 0
    assert (await ack_certificate())["certificateRegenerations"] == 0  # the same certificate again
    clock.now = T0 + 9 * HOUR  # past 80% of its 10 h: the CA issues web a new one
    renewed = await ack_certificate()
    assert renewed["certificateRegenerations"] == 1
    assert renewed["certificateExpirationTime"] != first["certificateExpirationTime"]
    assert sorted(renewed) == sorted(first)  # the section's shape is the same
