"""TLS material of the KDS server: a self-signed certificate made on first start, or the operator's."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE = "kds-tls.crt"
KEY_FILE = "kds-tls.key"


def self_signed(hostnames: list[str], days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed server certificate (ECDSA P-256) for ``hostnames`` plus loopback; returns (cert, key) PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in dict.fromkeys(["localhost", *hostnames])]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zonemesh-global-kds")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_or_create(data_dir: Path, cert_file: str = "", key_file: str = "") -> tuple[bytes, bytes, Path]:
    """(cert PEM, key PEM, cert path). Given files win; else reuse or create data_dir/kds-tls.{crt,key}."""
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ValueError("give both --kds-tls-cert-file and --kds-tls-key-file, or neither")
        return Path(cert_file).read_bytes(), Path(key_file).read_bytes(), Path(cert_file)
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path.read_bytes(), key_path.read_bytes(), cert_path
    data_dir.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed([socket.gethostname()])
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)
    cert_path.write_bytes(cert)
    return cert, key, cert_path


def first_dns_name(cert_pem: bytes) -> str | None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None
