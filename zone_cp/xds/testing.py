"""Helpers for tests of the xDS side (and for users testing their own hooks): a tiny CA that
issues SPIFFE workload certificates, and a loader of universal YAML into Resources."""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from zonemesh.shared.resources.model import Resource

# Types whose spec is under `spec:` (targetRef policies); the others are flat (Mesh, Dataplane, ...).
_FLAT = {"Mesh", "Dataplane", "ExternalService", "Secret", "ZoneIngress", "ZoneEgress"}


def load_resources(text: str) -> list[Resource]:
    """Universal YAML documents -> Resources, without validation (inputs of generator tests)."""
    resources = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        doc = dict(doc)
        rtype, name, mesh = doc.pop("type"), doc.pop("name"), doc.pop("mesh", "")
        labels = doc.pop("labels", {}) or {}
        spec = doc if rtype in _FLAT else (doc.get("spec") or {})
        resources.append(Resource(type=rtype, name=name, mesh=mesh, spec=spec, labels=labels, version=1))
    return resources


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TestCA:
    """A CA per mesh (EC P-256, fast) issuing ``spiffe://<mesh>/<service>`` certificates; it
    satisfies the CertProvider protocol."""

    __test__ = False  # not a pytest class

    def __init__(self, validity: dt.timedelta = dt.timedelta(days=1)) -> None:
        self.validity = validity
        self._cas: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}
        self._certs: dict[tuple[str, str], tuple[bytes, bytes, bytes, dt.datetime]] = {}
        self.issued = 0

    def _ca(self, mesh: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if mesh not in self._cas:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"test CA {mesh}")])
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            self._cas[mesh] = (key, cert)
        return self._cas[mesh]

    def ca_pem(self, mesh: str) -> bytes:
        return _pem_cert(self._ca(mesh)[1])

    def issue(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        ca_key, ca_cert = self._ca(mesh)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = now + self.validity
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, mesh)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}/{service}")]),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.issued += 1
        return _pem_cert(cert), key_pem, self.ca_pem(mesh), not_after

    async def workload_cert(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        if (mesh, service) not in self._certs:
            self._certs[(mesh, service)] = self.issue(mesh, service)
        return self._certs[(mesh, service)]


def self_signed_server_cert(host: str = "127.0.0.1", *more_hosts: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) for a TLS server on ``host`` (and ``more_hosts``): IP addresses (then
    DNS localhost too) or DNS names. The certificate is its own CA, so clients can trust it directly."""
    import ipaddress

    sans: list[x509.GeneralName] = []
    for entry in (host, *more_hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            sans.append(x509.DNSName(entry))
    if any(isinstance(san, x509.IPAddress) for san in sans):
        sans.append(x509.DNSName("localhost"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _pem_cert(cert), key_pem


def yaml_dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=120)
