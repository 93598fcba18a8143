"""Trusted license issuer keys: the release key embedded here, plus keys the operator adds.

Operators (and tests) add Ed25519 public keys in PEM with ``license_trusted_keys`` (comma-separated
file paths; env ``ZONEMESH_LICENSE_TRUSTED_KEYS``). ``zonemesh-license keygen`` makes a pair.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from zonemesh.shared.certs import private_key_pem
from zonemesh.shared.license.format import LicenseError

# The zonemesh release issuer. Its private half is not in this repository.
RELEASE_KEY_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAwyr6UNYZNCpQtn2XAsQH0zpk3Zqf0B7kcjQmMC50BP8=
-----END PUBLIC KEY-----
"""


def load_public_key(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise LicenseError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LicenseError(f"{where}: the license issuer key must be Ed25519, got {type(key).__name__}")
    return key


def release_key() -> Ed25519PublicKey:
    return load_public_key(RELEASE_KEY_PEM, "embedded release key")


def trusted_keys(paths: str) -> list[Ed25519PublicKey]:
    """The release key plus every key in ``paths`` (comma-separated PEM files). Blocking (file reads)."""
    keys = [release_key()]
    for raw in paths.split(","):
        path = raw.strip()
        if not path:
            continue
        try:
            pem = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise LicenseError(f"cannot read trusted license key {path}: {exc.strerror}") from None
        keys.append(load_public_key(pem, f"trusted license key {path}"))
    return keys


def generate_keypair() -> tuple[bytes, bytes]:
    """A new issuer pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private_key_pem(private)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise LicenseError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenseError(f"{where}: the license issuer key must be Ed25519, got {type(key).__name__}")
    return key
