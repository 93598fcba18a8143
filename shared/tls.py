"""Self-signed TLS server certificates for control plane ports (xDS :5678, KDS :5685).

``ensure_self_signed(dir, name, hosts)`` writes ``<name>.crt`` and ``<name>.key`` into
``dir`` once and reuses them on later starts while they cover ``hosts`` and stay valid for
another 30 days. The certificate is its own CA (``CA:TRUE``), so clients pass the ``.crt``
file itself as their CA file (``zonemesh-dp --ca-cert-file``). Operators with a real PKI
configure their own certificate and key files instead: ``server_credentials`` takes either.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from zonemesh.shared.certs import key_usage, private_key_pem, self_signed_ca

log = structlog.get_logger(__name__)

VALIDITY = dt.timedelta(days=10 * 365)
RENEW_BEFORE = dt.timedelta(days=30)


def default_hosts() -> list[str]:
    """Names a local client may dial: loopback, localhost and this host's name."""
    return ["127.0.0.1", "::1", "localhost", socket.gethostname()]


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _covers(cert: x509.Certificate, hosts: Iterable[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = set(san)
    return all(_general_name(h) in present for h in hosts)


def generate_self_signed(name: str, hosts: Iterable[str]) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for ``hosts`` and its key, as PEM."""
    hosts = list(dict.fromkeys(hosts))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonemesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = self_signed_ca(
        key,
        subject,
        now - dt.timedelta(minutes=5),
        now + VALIDITY,
        key_usage(digital_signature=True, key_agreement=True, key_cert_sign=True),
        [
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
        ],
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def ensure_self_signed(directory: str | Path, name: str, hosts: Iterable[str] | None = None) -> tuple[Path, Path]:
    """Paths of ``<name>.crt``/``<name>.key`` in ``directory``, (re)generated when missing, expiring
    within 30 days, or not covering ``hosts``. Blocking file and CPU work: call it at startup
    or via ``asyncio.to_thread``."""
    hosts = list(hosts) if hosts is not None else default_hosts()
    directory = Path(directory).expanduser()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
            if fresh and _covers(cert, hosts):
                return cert_path, key_path
        except ValueError:
            pass  # unreadable: replace it
    cert_pem, key_pem = generate_self_signed(name, hosts)
    # The key is written owner-only before any byte of it lands on disk.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert_pem)
    log.info("self_signed_certificate_created", cert=str(cert_path), hosts=hosts)
    return cert_path, key_path


def server_material(
    directory: str | Path, name: str, cert_file: str = "", key_file: str = "", hosts: Iterable[str] | None = None
) -> tuple[bytes, bytes, Path]:
    """(certificate PEM, key PEM, certificate path) for a TLS port: the operator's files when given
    (both or neither), else the self-signed pair of ``ensure_self_signed``. Blocking."""
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ValueError(f"give both the {name} certificate file and key file, or neither")
        return Path(cert_file).read_bytes(), Path(key_file).read_bytes(), Path(cert_file)
    cert_path, key_path = ensure_self_signed(directory, name, hosts)
    return cert_path.read_bytes(), key_path.read_bytes(), cert_path


def first_dns_name(cert_pem: bytes) -> str | None:
    """The first DNS name in a certificate's SAN: what a client pins when it trusts that certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None
