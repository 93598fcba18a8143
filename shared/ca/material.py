"""A signing CA as zonemesh uses it: certificate, key and the chain above it, checked once.

Every mesh CA, builtin or provided, becomes a ``SigningCA`` before it signs anything. Loading
checks what Envoy and the X509-SVID specification need of it, and says which part is wrong:

- ``cert`` holds PEM certificates: the signing CA first, then (optionally) the intermediates
  above it, each signed by the next, ending with a **self-signed root** (Envoy verifies a peer's
  chain up to a self-signed trust anchor; a chain cut short would be refused at every handshake);
- ``key`` is the unencrypted private key of the first certificate (RSA of 2048 bits or more, or
  ECDSA P-256/P-384);
- every certificate is a CA (basic constraint ``CA:TRUE``), may sign certificates
  (``keyCertSign``), may not do key agreement (X509-SVID: Appendix A), allows the CAs below it
  (``pathlen``), and is valid now.

Trust anchors are the root only: a proxy presents its certificate with the intermediates, and
its peers verify the path up to the root they trust. Two backends under one root trust each
other's certificates from the start (a rotation between them needs no trust phase).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
MIN_RSA_BITS = 2048
CURVES = (ec.SECP256R1, ec.SECP384R1)


class CaProblem(ValueError):
    """The CA material is unusable. ``part`` is ``cert`` or ``key`` (``cert[i]``: the i-th
    certificate of the chain), ``reason`` says what is wrong with it."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: how zonemesh names a CA in states and insights."""
    return cert.fingerprint(hashes.SHA256()).hex()


def split_pem(data: bytes) -> list[x509.Certificate]:
    """Every PEM certificate in ``data``, in order (an empty list when there is none)."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SigningCA:
    """A CA that signs workload certificates: ``cert`` with ``key``; ``chain`` the certificates
    above ``cert`` up to and including its self-signed root (empty: ``cert`` is the root)."""

    backend: str
    cert: x509.Certificate
    key: SigningKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    @property
    def anchors(self) -> list[bytes]:
        """What a proxy must trust to accept this CA's certificates: its root."""
        return [pem(self.root)]

    @property
    def presented_chain(self) -> bytes:
        """The certificates a proxy sends after its own: the signing CA and intermediates, not
        the root (its peers have it). Empty when the signing CA is the root."""
        if not self.chain:
            return b""
        return b"".join(pem(c) for c in (self.cert, *self.chain[:-1]))

    @property
    def not_after(self) -> dt.datetime:
        """When the first certificate of the path expires: nothing it signs is valid after."""
        return min(c.not_valid_after_utc for c in (self.cert, *self.chain))

    @property
    def cert_pem(self) -> bytes:
        return pem(self.cert)


def _load_key(key_pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CaProblem("key", "is encrypted: give the unencrypted PEM key (keep it in a Secret)") from None
    except ValueError:
        raise CaProblem("key", "is not a PEM private key (PKCS#8, or PKCS#1 RSA / SEC1 EC)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CaProblem("key", f"is RSA of {key.key_size} bits: at least {MIN_RSA_BITS} are needed")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, CURVES):
            raise CaProblem("key", f"is ECDSA on {key.curve.name}: use P-256 or P-384")
        return key
    raise CaProblem("key", f"is a {type(key).__name__.lstrip('_')}: use RSA (2048 bits or more) or ECDSA P-256/P-384")


def _public_numbers(key: object) -> object:
    return key.public_numbers() if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _check_ca_extensions(cert: x509.Certificate, part: str, below: int) -> None:
    """One certificate of the chain, with ``below`` CA certificates under it in the chain."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise CaProblem(part, "basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)")
    if basic.path_length is not None and below > basic.path_length:
        raise CaProblem(
            part, f"its pathlen is {basic.path_length}, but {below} CA certificate(s) of the chain are below it"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.key_cert_sign:
        raise CaProblem(part, "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)")
    if usage.key_agreement:
        raise CaProblem(
            part,
            "key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)",
        )


def _check_validity(cert: x509.Certificate, part: str, now: dt.datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise CaProblem(part, f"expired at {cert.not_valid_after_utc.isoformat()} ({_name(cert)})")
    if cert.not_valid_before_utc > now:
        raise CaProblem(part, f"is not valid before {cert.not_valid_before_utc.isoformat()} ({_name(cert)})")


def _part(i: int, count: int) -> str:
    return f"cert[{i}]" if count > 1 else "cert"


@functools.lru_cache(maxsize=64)
def _parsed(cert_pem: bytes, key_pem: bytes) -> tuple[tuple[x509.Certificate, ...], SigningKey]:
    """The certificates and key, checked but for time: once per CA (an RSA key's check takes tens
    of milliseconds, and a zone issues a certificate per service in a row)."""
    certs = split_pem(cert_pem)
    if not certs:
        raise CaProblem("cert", "holds no PEM certificate")
    key = _load_key(key_pem)
    if _public_numbers(key.public_key()) != _public_numbers(certs[0].public_key()):
        raise CaProblem("key", f"does not match the certificate (the key of '{_name(certs[0])}' is needed)")
    for i, cert in enumerate(certs):
        _check_ca_extensions(cert, _part(i, len(certs)), i)
    for i in range(len(certs) - 1):
        if not _signed_by(certs[i], certs[i + 1]):
            raise CaProblem(
                f"cert[{i}]",
                f"is not signed by the next certificate ('{_name(certs[i + 1])}'): "
                "list the signing CA first, then each certificate above it up to the root",
            )
    root = certs[-1]
    if not _signed_by(root, root):
        raise CaProblem(
            _part(len(certs) - 1, len(certs)),
            f"the chain ends at '{_name(root)}', which is not self-signed: append the certificates above it "
            "up to the root CA (proxies verify up to a self-signed root)",
        )
    return tuple(certs), key


def load_signing_ca(backend: str, cert_pem: bytes, key_pem: bytes, now: float) -> SigningCA:
    """Check and load a CA (CPU-bound the first time for an RSA key: call it off the event loop).
    Raises CaProblem."""
    certs, key = _parsed(cert_pem, key_pem)
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    for i, cert in enumerate(certs):
        _check_validity(cert, _part(i, len(certs)), at)
    return SigningCA(backend=backend, cert=certs[0], key=key, chain=certs[1:])
