"""The CA interface: what a mesh mTLS backend type provides, and the settings every backend has.

A Mesh lists ``mtls.backends``; each has a ``type`` served by a ``CaManager`` (Kuma's
``ca.Manager``: ValidateBackend, EnsureBackends, UsedSecrets, GetRootCert, GenerateDataplaneCert):

- ``validate``: what is wrong with the backend, as field errors, read at API write time;
- ``ensure``: make the CA exist (builtin: generate and store it; provided: nothing);
- ``used_secrets``: the mesh Secrets the backend reads (they may not be deleted while in use);
- ``signing_ca``: the CA that signs workload certificates, loaded and checked (material.py).

zonemesh implements ``builtin`` (builtin.py) and ``provided`` (provided.py); both sign locally,
so issuing is one function here (``issue_workload_cert``). docs/identity.md describes how a
backend that signs elsewhere (Vault, cert-manager) would fit.

Workload certificates carry the URI SANs ``spiffe://<mesh>/<service>`` and
``kuma://kuma.io/service/<service>``, are ECDSA P-256, valid for ``dpCert.rotation.expiration``
(default 24h) but never beyond their CA, and are reissued once 80% of their lifetime has passed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from zonemesh.shared.ca.material import SigningCA
from zonemesh.shared.certs import key_usage, private_key_pem
from zonemesh.shared.resources.schema import FieldError, parse_cert_duration, parse_duration

if TYPE_CHECKING:
    from zonemesh.shared.resources.model import Resource
    from zonemesh.shared.store import Store

DEFAULT_CERT_VALIDITY_SECONDS = 24 * 3600
# dpCert.requestTimeout and rootChain.requestTimeout when unset (Kuma: 10s): how long getting a
# workload certificate, or the CA's root chain, may take before the attempt fails.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0
ROTATE_AT_FRACTION = 0.8  # reissue once this share of a workload cert's lifetime has passed
BACKDATE_SECONDS = 60  # tolerate a little clock skew between the CA and the proxies


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def kuma_service_uri(service: str) -> str:
    return f"kuma://kuma.io/service/{service}"


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _seconds(text: Any, default: float) -> float:
    return parse_duration(str(text)) if text else default


def _cert_seconds(text: Any, default: float) -> float:
    return parse_cert_duration(str(text)) if text else default


@dataclass(frozen=True)
class Backend:
    """One entry of a Mesh's ``mtls.backends``, as the CA code reads it."""

    mesh: str
    name: str
    type: str  # builtin | provided
    conf: Mapping[str, Any]
    index: int  # its position in mtls.backends: field errors name it
    cert_validity_seconds: float = DEFAULT_CERT_VALIDITY_SECONDS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS  # dpCert.requestTimeout
    root_chain_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS  # rootChain.requestTimeout

    @property
    def path(self) -> str:
        return f"mtls.backends[{self.index}]"

    @classmethod
    def of(cls, mesh: str, index: int, spec: Mapping[str, Any]) -> Backend:
        dp_cert = spec.get("dpCert") or {}
        return cls(
            mesh=mesh,
            name=str(spec.get("name") or ""),
            type=str(spec.get("type") or ""),
            conf=spec.get("conf") or {},
            index=index,
            cert_validity_seconds=_cert_seconds(
                (dp_cert.get("rotation") or {}).get("expiration"), DEFAULT_CERT_VALIDITY_SECONDS
            ),
            request_timeout=_seconds(dp_cert.get("requestTimeout"), DEFAULT_REQUEST_TIMEOUT_SECONDS),
            root_chain_timeout=_seconds(
                (spec.get("rootChain") or {}).get("requestTimeout"), DEFAULT_REQUEST_TIMEOUT_SECONDS
            ),
        )


def backends(mesh: Resource) -> list[Backend]:
    return [Backend.of(mesh.name, i, b) for i, b in enumerate((mesh.spec.get("mtls") or {}).get("backends") or [])]


def backend_named(mesh: Resource, name: str) -> Backend | None:
    return next((b for b in backends(mesh) if b.name == name), None)


def enabled_backend(mesh: Resource) -> Backend | None:
    """The backend ``mtls.enabledBackend`` names (None: mTLS is off)."""
    enabled = (mesh.spec.get("mtls") or {}).get("enabledBackend")
    return backend_named(mesh, str(enabled)) if enabled else None


class CaManager(Protocol):
    """One backend type. Methods read the store they are given (the resource manager's on API
    writes, the control plane's otherwise) and never write but in ``ensure``."""

    type: str

    async def validate(self, backend: Backend, store: Store, *, material: bool = True) -> list[FieldError]:
        """``material``: also load and check the CA itself (False: ``mtls.skipValidation``)."""
        ...

    async def ensure(self, backend: Backend, store: Store) -> None: ...

    def used_secrets(self, backend: Backend) -> list[str]: ...

    async def signing_ca(self, backend: Backend, store: Store, now: float) -> SigningCA: ...


@dataclass(frozen=True)
class IssuedCert:
    """A workload certificate: ``cert_pem`` is the leaf followed by the CA certificates a peer needs
    to reach the root (none for a self-signed CA)."""

    cert_pem: bytes
    key_pem: bytes
    backend: str
    ca_fingerprint: str  # of the signing CA
    not_before: dt.datetime
    not_after: dt.datetime
    rotate_after: dt.datetime
    issued_at: dt.datetime

    @property
    def leaf_pem(self) -> bytes:
        end = b"-----END CERTIFICATE-----"
        return self.cert_pem[: self.cert_pem.index(end) + len(end)] + b"\n"


def issue_workload_cert(ca: SigningCA, mesh: str, service: str, validity_seconds: float, now: float) -> IssuedCert:
    """Sign an ECDSA P-256 workload certificate for ``service`` (CPU-bound: call it off the loop).
    Its lifetime ends with its CA's at the latest."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = _utc(now - BACKDATE_SECONDS)
    not_after = min(_utc(now + validity_seconds), ca.not_after)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonemesh"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, mesh),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_encipherment=True, key_agreement=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(spiffe_id(mesh, service)),
                    x509.UniformResourceIdentifier(kuma_service_uri(service)),
                ]
            ),
            critical=False,  # the subject is non-empty, so RFC 5280 wants the SAN non-critical
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    lifetime = not_after - not_before
    return IssuedCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM) + ca.presented_chain,
        key_pem=private_key_pem(key),
        backend=ca.backend,
        ca_fingerprint=ca.fingerprint,
        not_before=not_before,
        not_after=not_after,
        rotate_after=not_before + lifetime * ROTATE_AT_FRACTION,
        issued_at=_utc(now),
    )
