"""Builtin CA: CA stored as mesh secrets, workload certs chain to it with the SPIFFE SAN, rotation."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from zonemesh.shared.ca import MeshCA, MtlsNotEnabled
from zonemesh.shared.ca.backend import BACKDATE_SECONDS, enabled_backend
from zonemesh.shared.ca.builtin import BuiltinCaManager, ca_cert_secret_name, ca_key_secret_name
from zonemesh.shared.resources.codec import validate_resource
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tls import ensure_self_signed

T0 = 1_800_000_000.0


def mtls_mesh(name: str = "default", expiration: str = "1h", enabled: str = "ca-1") -> Resource:
    return Resource(
        type="Mesh",
        name=name,
        spec={
            "mtls": {
                "enabledBackend": enabled,
                "backends": [
                    {"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": expiration}}},
                    {"name": "ca-2", "type": "builtin"},
                ],
            }
        },
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def make_ca(mesh: Resource | None = None, clock: Clock | None = None) -> tuple[MeshCA, MemoryStore]:
    store = MemoryStore()
    await store.create(mesh or mtls_mesh())
    return MeshCA(store, clock or Clock(T0)), store


async def root_pem(store: MemoryStore, backend: str = "ca-1") -> bytes:
    secret = await store.get("Secret", ca_cert_secret_name("default", backend), "default")
    return base64.b64decode(secret.spec["data"])


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    key = issuer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert cert.signature_hash_algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)


async def test_ca_is_generated_once_and_stored_as_mesh_secrets() -> None:
    _, store = await make_ca()
    backend = enabled_backend(await store.get("Mesh", "default"))
    assert backend is not None
    await BuiltinCaManager(Clock(T0)).ensure(backend, store)
    first = await root_pem(store)
    await BuiltinCaManager(Clock(T0)).ensure(backend, store)  # another replica finds it
    assert await root_pem(store) == first
    assert await store.find("Secret", ca_key_secret_name("default", "ca-1"), "default") is not None
    root = x509.load_pem_x509_certificate(first)
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    key = root.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048


async def test_workload_cert_chains_to_the_mesh_ca_with_spiffe_san() -> None:
    ca, store = await make_ca()
    cert_pem, key_pem, ca_pem, not_after = await ca.workload_cert("default", "backend")
    assert ca_pem == await root_pem(store)  # the trusted roots: the builtin CA's
    cert = x509.load_pem_x509_certificate(cert_pem)
    root = x509.load_pem_x509_certificate(ca_pem)
    assert cert.issuer == root.subject
    verify_signed_by(cert, root)
    # The policy-aware verifier also checks validity, key usage and the SAN being present.
    store = x509.verification.Store([root])
    verifier = (
        x509.verification.PolicyBuilder()
        .store(store)
        .time(dt.datetime.fromtimestamp(T0 + 10, dt.UTC))
        .build_client_verifier()
    )
    verified = verifier.verify(cert, [])
    assert x509.UniformResourceIdentifier("spiffe://default/backend") in verified.subjects
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://default/backend",
        "kuma://kuma.io/service/backend",
    ]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert not_after == dt.datetime.fromtimestamp(T0 + 3600, dt.UTC)
    assert b"PRIVATE KEY" in key_pem


async def test_cert_is_cached_then_rotated_before_expiry() -> None:
    clock = Clock(T0)
    ca, _ = await make_ca(clock=clock)
    first = await ca.issue("default", "backend")
    clock.now = T0 + 0.5 * 3600
    assert await ca.issue("default", "backend") == first
    clock.now = T0 + 0.85 * 3600  # past 80% of a 1h lifetime, still before expiry
    rotated = await ca.issue("default", "backend")
    assert rotated.cert_pem != first.cert_pem
    assert dt.datetime.fromtimestamp(clock.now, dt.UTC) < first.not_after
    assert rotated.not_after > first.not_after
    assert rotated.ca_fingerprint == first.ca_fingerprint  # same CA: connections keep verifying


async def test_concurrent_requests_share_one_certificate() -> None:
    ca, _ = await make_ca()
    certs = await asyncio.gather(*(ca.issue("default", "web") for _ in range(5)))
    assert len({c.cert_pem for c in certs}) == 1


async def test_without_a_ca_state_switching_backend_issues_from_the_new_ca() -> None:
    """Before the keeper wrote a MeshCAState (tests/unit/test_ca_rotation.py) the enabled backend issues."""
    ca, store = await make_ca()
    before = await ca.issue("default", "web")
    mesh = await store.get("Mesh", "default")
    mesh.spec["mtls"]["enabledBackend"] = "ca-2"
    await store.update(mesh)
    after = await ca.issue("default", "web")
    assert after.ca_fingerprint != before.ca_fingerprint and after.backend == "ca-2"
    assert await store.find("Secret", ca_cert_secret_name("default", "ca-2"), "default") is not None


async def test_a_workload_cert_never_outlives_its_ca() -> None:
    mesh = mtls_mesh(expiration="48h")
    mesh.spec["mtls"]["backends"][0]["conf"] = {"caCert": {"expiration": "24h"}}
    ca, _ = await make_ca(mesh)
    cert = await ca.issue("default", "web")
    assert cert.not_after == dt.datetime.fromtimestamp(T0 + 24 * 3600, dt.UTC)  # the CA's end, not 48h


async def test_root_chain_request_timeout_bounds_loading_the_ca() -> None:
    """rootChain.requestTimeout takes effect: loading the CA (here slowed down, standing for a
    slow backend) fails once it has passed."""
    mesh = mtls_mesh()
    mesh.spec["mtls"]["backends"][0]["rootChain"] = {"requestTimeout": "50ms"}
    ca, _ = await make_ca(mesh)

    class Slow(BuiltinCaManager):
        async def signing_ca(self, *args: object) -> object:  # type: ignore[override]
            await asyncio.sleep(1)
            raise AssertionError("not reached")

    ca.managers["builtin"] = Slow(Clock(T0))
    with pytest.raises(TimeoutError):
        await ca.issue("default", "web")


async def test_dp_cert_request_timeout_bounds_issuance(monkeypatch: pytest.MonkeyPatch) -> None:
    """dpCert.requestTimeout takes effect: signing a workload certificate that takes longer fails."""
    mesh = mtls_mesh()
    mesh.spec["mtls"]["backends"][0]["dpCert"]["requestTimeout"] = "50ms"
    ca, _ = await make_ca(mesh)
    from zonemesh.shared.ca import mesh as mesh_module

    real = mesh_module.issue_workload_cert

    def slow(*args: object) -> object:
        time.sleep(0.3)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mesh_module, "issue_workload_cert", slow)
    with pytest.raises(TimeoutError):
        await ca.issue("default", "web")
    monkeypatch.setattr(mesh_module, "issue_workload_cert", real)
    assert (await ca.issue("default", "web")).backend == "ca-1"


async def test_workload_certs_of_a_round_are_each_services_workload_cert(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler's one call per mesh gives what asking per service gives; a service whose
    issuance fails gets its exception, the others their certificates; the mesh's CA failing fails all."""
    ca, store = await make_ca()
    finds: list[tuple[str, str]] = []
    real_find = store.find

    async def counting_find(rtype: str, name: str, mesh: str = "") -> Resource | None:
        finds.append((rtype, name))
        return await real_find(rtype, name, mesh)

    monkeypatch.setattr(store, "find", counting_find)
    batch = await ca.workload_certs("default", ["web", "api", "db"])
    assert list(batch) == ["web", "api", "db"]
    for service in ("web", "api", "db"):
        assert batch[service] == await ca.workload_cert("default", service)
    before = len(finds)
    await ca.workload_certs("default", ["web", "api", "db"])
    assert finds[before:].count(("Mesh", "default")) == 2  # once to issue, once for the trust bundle

    from zonemesh.shared.ca import mesh as mesh_module

    real = mesh_module.issue_workload_cert

    def failing_for_new(ca_: object, mesh: str, service: str, *args: object) -> object:
        if service == "new":
            raise RuntimeError("signer down")
        return real(ca_, mesh, service, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(mesh_module, "issue_workload_cert", failing_for_new)
    batch = await ca.workload_certs("default", ["web", "new"])
    assert isinstance(batch["new"], RuntimeError)
    assert batch["web"] == await ca.workload_cert("default", "web")
    with pytest.raises(MtlsNotEnabled):
        await ca.workload_certs("missing", ["web"])


async def test_no_builtin_backend_is_refused() -> None:
    store = MemoryStore()
    await store.create(Resource(type="Mesh", name="plain"))
    with pytest.raises(MtlsNotEnabled):
        await MeshCA(store).workload_cert("plain", "web")
    with pytest.raises(MtlsNotEnabled):
        await MeshCA(store).workload_cert("missing", "web")


def test_self_signed_server_cert_is_created_once_and_reused(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path / "tls", "xds", ["127.0.0.1", "localhost"])
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca  # its own CA file
    before = cert_path.read_bytes()
    assert ensure_self_signed(tmp_path / "tls", "xds", ["127.0.0.1"]) == (cert_path, key_path)
    assert cert_path.read_bytes() == before  # reused
    ensure_self_signed(tmp_path / "tls", "xds", ["127.0.0.1", "cp.example"])
    assert cert_path.read_bytes() != before  # a new host needs a new certificate


async def test_kuma_day_and_year_lifetimes_are_taken_and_applied() -> None:
    """Kuma's docs write ``dpCert.rotation.expiration: 1d`` and ``caCert.expiration: 10y`` (Kuma's
    mesh.ParseDuration units): zonemesh validates them and the certificates last that long."""
    mesh = mtls_mesh(expiration="1d")
    mesh.spec["mtls"]["backends"][0]["conf"] = {"caCert": {"RSAbits": 2048, "expiration": "10y"}}
    validate_resource(mesh)
    ca, _ = await make_ca(mesh)
    _, _, ca_pem, not_after = await ca.workload_cert("default", "backend")
    assert not_after == dt.datetime.fromtimestamp(T0 + 86400, dt.UTC)
    root = x509.load_pem_x509_certificate(ca_pem)
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc - dt.timedelta(seconds=BACKDATE_SECONDS)
    assert lifetime == dt.timedelta(days=3650)


@pytest.mark.parametrize("expiration", ["1.5d", "1d12h", "-1d", "10Y"])
def test_cert_lifetimes_outside_kumas_forms_are_refused(expiration: str) -> None:
    with pytest.raises(ValidationError) as refused:
        validate_resource(mtls_mesh(expiration=expiration))
    assert [e.field for e in refused.value.errors] == ["mtls.backends[0].dpCert.rotation.expiration"]
