"""Self-signed TLS server certificates for control plane ports (xDS :5678, KDS :5685).

``ensure_self_signed(dir, name, hosts)`` writes ``<name>.crt`` and ``<name>.key`` into
``dir`` once and reuses them on later starts while they cover ``hosts`` and stay valid for
another 30 days. The certificate is its own CA (``CA:TRUE``), so clients pass the ``.crt``
file itself as their CA file (``zonemesh-dp --ca-cert-file``). Operators with a real PKI
configure their own certificate and key files instead: ``server_credentials`` takes either.

The client side: ``system_ca_file`` is the trust store zones and proxies verify against when no
CA file is given, and ``verification_failure`` recognises a gRPC error that means "the server's
certificate did not verify", so that the caller can name the certificate and the fix.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
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


def system_ca_file() -> Path | None:
    """The operating system's CA bundle (``$SSL_CERT_FILE``, else OpenSSL's default file such as
    /etc/ssl/certs/ca-certificates.crt), or None when there is none as a single file.

    Why not gRPC's own default (``root_certificates=None``): in grpcio that is the Mozilla bundle
    shipped inside the wheel (or ``$GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``), which ignores a CA the
    operator installed in the OS, and Envoy, which dials the same xDS port, needs a file. Zones
    and proxies read this one file for gRPC and give its path to Envoy: one trust store for all."""
    cafile = ssl.get_default_verify_paths().cafile  # None unless it is an existing file
    return Path(cafile) if cafile else None


HOST_NAME_MISMATCH = "the certificate does not name the host dialled (host name verification failed)"
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED(?::\s*([^:]+))?")


def verification_failure(details: str) -> str | None:
    """Why the server's certificate did not verify, from a gRPC error's details; None when the
    error is something else (refused, reset, timed out). gRPC (BoringSSL) words it as
    ``... CERTIFICATE_VERIFY_FAILED: self signed certificate`` (no CA vouches for it) or
    ``... Hostname Verification Check failed.`` (it does not name the host dialled)."""
    if "Hostname Verification Check failed" in details:
        return HOST_NAME_MISMATCH
    match = _VERIFY_FAILED.search(details)
    if match is None:
        return None
    return (match.group(1) or "certificate verify failed").strip()
