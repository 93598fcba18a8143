"""Certificate lifecycle: warnings and gauges before a proxy certificate or a mesh CA expires."""

from __future__ import annotations

from prometheus_client import REGISTRY as PROMETHEUS
from structlog.testing import capture_logs
from zonemesh.shared.ca import MeshCA
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.certificates import ExpiryWatch, Held, HeldCert

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
        "web", cert.leaf_pem, cert.not_before, cert.not_after, cert.issued_at, cert.backend, cert.ca_fingerprint
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
