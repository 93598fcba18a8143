"""What the protected etcds of tests/conftest.py are set up with: certificates for the one requiring
TLS client certificates (``etcd_tls_server``), users for the one with auth on (``etcd_auth_server``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from zonemesh.shared.certs import key_usage, private_key_pem, self_signed_ca

# etcd_auth_server's users: root, and USER, who may read and write under AUTH_PREFIX only.
ROOT_PASSWORD = "root-secret"
USER = "zonemesh"
PASSWORD = "zonemesh-secret"
AUTH_PREFIX = "/granted"


@dataclass(frozen=True)
class EtcdPki:
    ca: Path  # signed etcd's server certificate and the client's
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a wrong --etcd-ca-file
    stranger_cert: Path  # a client certificate the other CA signed
    stranger_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    return key, self_signed_ca(key, _name(common_name), now - dt.timedelta(hours=1), now + dt.timedelta(days=1), usage)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in names]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def make_pki(directory: Path, server_names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> EtcdPki:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca = _ca("etcd test CA")
    other_key, other = _ca("another CA")
    names = (
        "ca.crt",
        "etcd.crt",
        "etcd.key",
        "client.crt",
        "client.key",
        "other-ca.crt",
        "stranger.crt",
        "stranger.key",
    )
    pki = EtcdPki(*(directory / name for name in names))
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    leaves = [
        (_leaf(ca_key, ca, "etcd", ExtendedKeyUsageOID.SERVER_AUTH, server_names), pki.server_cert, pki.server_key),
        (_leaf(ca_key, ca, "zonemesh", ExtendedKeyUsageOID.CLIENT_AUTH), pki.client_cert, pki.client_key),
        (_leaf(other_key, other, "stranger", ExtendedKeyUsageOID.CLIENT_AUTH), pki.stranger_cert, pki.stranger_key),
    ]
    for (cert, key), cert_path, key_path in leaves:
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
    return pki


def jwt_keys(directory: Path) -> tuple[Path, Path]:
    """(private, public) PEM files of an ECDSA P-256 key etcd signs its JWT auth tokens with."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "jwt.key", directory / "jwt.pub"
    private.write_bytes(private_key_pem(key))
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public
