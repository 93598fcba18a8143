"""X.509 building blocks shared by the builtin mesh CA (shared/ca) and the control plane's own
self-signed TLS certificates (shared/tls.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage naming only the bits these certificates use (the others are off)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def self_signed_ca(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usage: x509.KeyUsage,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """A certificate signed by its own ``key`` (SHA-256): ``CA:TRUE, pathlen:0`` and ``usage``
    (both critical), a subject key identifier, then ``extensions`` (non-critical)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())
