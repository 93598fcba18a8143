"""The builtin CA: one root per mesh backend, kept as mesh Secrets, issuing SPIFFE workload certs.

When a Mesh says ``mtls.enabledBackend: ca-1`` and backend ``ca-1`` is ``type: builtin``,
the CA key and certificate are generated on first use and stored as the mesh Secrets
``{mesh}.ca-builtin-key-{backend}`` and ``{mesh}.ca-builtin-cert-{backend}`` (Kuma's names;
``data`` is the base64 of the PEM). Every control plane replica reads the same pair.

Key types: the CA is RSA with ``conf.caCert.RSAbits`` bits (default 2048, as Kuma); workload
keys are ECDSA P-256, which is ~100x faster to generate than RSA 2048 and which Envoy
supports on both sides of the handshake.

Workload certificates carry the URI SANs ``spiffe://<mesh>/<service>`` and
``kuma://kuma.io/service/<service>``, are valid for ``dpCert.rotation.expiration``
(default 24h), are cached per (mesh, service, CA) and reissued once 80% of their lifetime has
passed, so the xDS side can push the new SDS secret long before the old one expires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from zonemesh.shared.certs import key_usage, private_key_pem, self_signed_ca
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import parse_duration
from zonemesh.shared.store import AlreadyExists, Store

log = structlog.get_logger(__name__)

DEFAULT_RSA_BITS = 2048
DEFAULT_CA_VALIDITY_SECONDS = 10 * 365 * 24 * 3600
DEFAULT_CERT_VALIDITY_SECONDS = 24 * 3600
ROTATE_AT_FRACTION = 0.8  # reissue once this share of a workload cert's lifetime has passed
BACKDATE_SECONDS = 60  # tolerate a little clock skew between the CA and the proxies
_CA_RACE_WAIT_SECONDS = 5.0


class CaNotYetSynced(Exception):
    """A federated zone has no copy of global's mesh CA yet (it comes with the mesh over KDS)."""


class MtlsNotEnabled(Exception):
    """The mesh has no enabled builtin mTLS backend, so there is nothing to issue."""


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def kuma_service_uri(service: str) -> str:
    return f"kuma://kuma.io/service/{service}"


def ca_cert_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-cert-{backend}"


def ca_key_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-key-{backend}"


@dataclass(frozen=True)
class CaBundle:
    mesh: str
    backend: str
    cert_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        return x509.load_pem_x509_certificate(self.cert_pem).fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class WorkloadCert:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    rotate_after: dt.datetime

    def as_tuple(self) -> tuple[bytes, bytes, bytes, dt.datetime]:
        return self.cert_pem, self.key_pem, self.ca_pem, self.not_after


@dataclass(frozen=True)
class BackendSettings:
    name: str
    rsa_bits: int
    ca_validity_seconds: float
    cert_validity_seconds: float


def builtin_backend(mesh: Resource) -> BackendSettings | None:
    """The mesh's enabled backend when it is a builtin CA, else None."""
    mtls = mesh.spec.get("mtls") or {}
    enabled = mtls.get("enabledBackend")
    if not enabled:
        return None
    for backend in mtls.get("backends") or []:
        if backend.get("name") == enabled and backend.get("type") == "builtin":
            conf = backend.get("conf") or {}
            ca_conf = conf.get("caCert") or {}
            rotation = (backend.get("dpCert") or {}).get("rotation") or {}
            return BackendSettings(
                name=enabled,
                rsa_bits=int(ca_conf.get("RSAbits") or DEFAULT_RSA_BITS),
                ca_validity_seconds=_duration(ca_conf.get("expiration"), DEFAULT_CA_VALIDITY_SECONDS),
                cert_validity_seconds=_duration(rotation.get("expiration"), DEFAULT_CERT_VALIDITY_SECONDS),
            )
    return None


def _duration(text: Any, default: float) -> float:
    if not text:
        return default
    return parse_duration(str(text))


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def generate_ca(mesh: str, backend: str, rsa_bits: int, validity_seconds: float, now: float) -> CaBundle:
    """A self-signed CA certificate and its RSA key (CPU-bound: call it off the event loop)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonemesh"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, mesh),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{mesh} builtin CA ({backend})"),
        ]
    )
    cert = self_signed_ca(
        key,
        name,
        _utc(now - BACKDATE_SECONDS),
        _utc(now + validity_seconds),
        key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
        [x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}")])],
    )
    return CaBundle(
        mesh=mesh,
        backend=backend,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=private_key_pem(key),
    )


@functools.lru_cache(maxsize=64)
def _load_ca(
    cert_pem: bytes, key_pem: bytes
) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """The parsed CA, once per CA: loading an RSA key checks it (tens of ms), and a zone whose
    proxies connect at once issues a certificate per service in a row."""
    ca_cert = x509.load_pem_x509_certificate(cert_pem)
    ca_key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"unsupported CA key type {type(ca_key).__name__}")
    return ca_cert, ca_key


def issue_workload_cert(ca: CaBundle, service: str, validity_seconds: float, now: float) -> WorkloadCert:
    """Sign an ECDSA P-256 workload certificate for ``service`` with the mesh CA."""
    ca_cert, ca_key = _load_ca(ca.cert_pem, ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = _utc(now - BACKDATE_SECONDS)
    not_after = _utc(now + validity_seconds)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonemesh"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ca.mesh),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
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
                    x509.UniformResourceIdentifier(spiffe_id(ca.mesh, service)),
                    x509.UniformResourceIdentifier(kuma_service_uri(service)),
                ]
            ),
            critical=False,  # the subject is non-empty, so RFC 5280 wants the SAN non-critical
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    lifetime = not_after - not_before
    return WorkloadCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=private_key_pem(key),
        ca_pem=ca.cert_pem,
        not_before=not_before,
        not_after=not_after,
        rotate_after=not_before + lifetime * ROTATE_AT_FRACTION,
    )


def _secret(mesh: str, name: str, pem: bytes) -> Resource:
    return Resource(type="Secret", name=name, mesh=mesh, spec={"data": base64.b64encode(pem).decode()})


def _pem(res: Resource | None) -> bytes | None:
    return base64.b64decode(res.spec["data"]) if res is not None else None


class BuiltinCA:
    """Implements the xDS side's CertProvider: ``workload_cert(mesh, service)``.

    Safe to share across tasks: issuance for one (mesh, service) is serialized so that
    concurrent proxies of one service get the same certificate, not one each.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, *, generate: bool = True) -> None:
        self.store = store
        self.clock = clock
        # False on a federated zone: the mesh CA is global's (one root for every zone, so that
        # mTLS works across zones) and arrives as mesh Secrets over KDS; the zone never makes its own.
        self.generate = generate
        self._certs: dict[tuple[str, str], tuple[str, WorkloadCert]] = {}  # value: (CA fingerprint, cert)
        self._cas: dict[tuple[str, str], tuple[int, int, CaBundle]] = {}  # value: (cert/key versions, CA)
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}

    def _lock(self, *key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def settings(self, mesh: str) -> BackendSettings:
        res = await self.store.find("Mesh", mesh)
        if res is None:
            raise MtlsNotEnabled(f"mesh {mesh!r} does not exist")
        settings = builtin_backend(res)
        if settings is None:
            raise MtlsNotEnabled(f"mesh {mesh!r} has no enabled builtin mTLS backend")
        return settings

    async def ensure_ca(self, mesh: str, settings: BackendSettings | None = None) -> CaBundle:
        """The mesh's CA for its enabled builtin backend, generated and stored on first use."""
        settings = settings or await self.settings(mesh)
        backend = settings.name
        async with self._lock("ca", mesh, backend):
            found = await self._load_ca(mesh, backend)
            if found is not None:
                return found
            if not self.generate:
                raise CaNotYetSynced(
                    f"the CA of mesh {mesh!r} (backend {backend!r}) has not arrived from the global control plane yet"
                )
            ca = await asyncio.to_thread(
                generate_ca, mesh, backend, settings.rsa_bits, settings.ca_validity_seconds, self.clock()
            )
            try:
                # The key goes first: whoever stores it owns the pair; a loser waits for the cert.
                await self.store.create(_secret(mesh, ca_key_secret_name(mesh, backend), ca.key_pem))
            except AlreadyExists:
                return await self._wait_for_ca(mesh, backend)
            await self.store.create(_secret(mesh, ca_cert_secret_name(mesh, backend), ca.cert_pem))
            log.info(
                "builtin_ca_created",
                mesh=mesh,
                backend=backend,
                rsa_bits=settings.rsa_bits,
                secrets=[ca_cert_secret_name(mesh, backend), ca_key_secret_name(mesh, backend)],
            )
            loaded = await self._load_ca(mesh, backend)
            assert loaded is not None
            return loaded

    async def _load_ca(self, mesh: str, backend: str) -> CaBundle | None:
        cert_res = await self.store.find("Secret", ca_cert_secret_name(mesh, backend), mesh)
        key_res = await self.store.find("Secret", ca_key_secret_name(mesh, backend), mesh)
        if cert_res is None or key_res is None:
            return None
        cached = self._cas.get((mesh, backend))
        if cached is not None and cached[:2] == (cert_res.version, key_res.version):
            return cached[2]
        cert_pem, key_pem = _pem(cert_res), _pem(key_res)
        assert cert_pem is not None and key_pem is not None
        ca = CaBundle(mesh=mesh, backend=backend, cert_pem=cert_pem, key_pem=key_pem)
        self._cas[(mesh, backend)] = (cert_res.version, key_res.version, ca)
        return ca

    async def _wait_for_ca(self, mesh: str, backend: str) -> CaBundle:
        deadline = time.monotonic() + _CA_RACE_WAIT_SECONDS
        while time.monotonic() < deadline:
            found = await self._load_ca(mesh, backend)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise RuntimeError(
            f"the CA key of mesh {mesh!r} backend {backend!r} exists but its certificate "
            f"{ca_cert_secret_name(mesh, backend)!r} does not: delete both secrets to regenerate the CA"
        )

    async def issue(self, mesh: str, service: str) -> WorkloadCert:
        """The current workload certificate of ``service``: cached, reissued after 80% of its life."""
        settings = await self.settings(mesh)
        ca = await self.ensure_ca(mesh, settings)
        fingerprint = ca.fingerprint
        async with self._lock("cert", mesh, service):
            cached = self._certs.get((mesh, service))
            now = self.clock()
            if cached is not None and cached[0] == fingerprint and _utc(now) < cached[1].rotate_after:
                return cached[1]
            cert = await asyncio.to_thread(issue_workload_cert, ca, service, settings.cert_validity_seconds, now)
            self._certs[(mesh, service)] = (fingerprint, cert)
            log.info(
                "workload_cert_issued",
                mesh=mesh,
                service=service,
                not_after=cert.not_after.isoformat(),
                rotate_after=cert.rotate_after.isoformat(),
                reason="rotation" if cached is not None else "first",
            )
            return cert

    async def workload_cert(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        """CertProvider: (cert PEM, key PEM, CA PEM, not_after)."""
        return (await self.issue(mesh, service)).as_tuple()

    def next_rotation(self) -> dt.datetime | None:
        """When the earliest cached certificate is due for reissue (for a rotation timer)."""
        times = [cert.rotate_after for _, cert in self._certs.values()]
        return min(times) if times else None

    def forget(self, mesh: str, service: str | None = None) -> None:
        """Drop cached certificates (e.g. when a mesh is deleted)."""
        for key in list(self._certs):
            if key[0] == mesh and (service is None or key[1] == service):
                with contextlib.suppress(KeyError):
                    del self._certs[key]


def cert_info(cert_pem: bytes) -> Mapping[str, Any]:
    """What an operator wants to see about a certificate (no key material)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
        "uris": uris,
        "serial": format(cert.serial_number, "x"),
    }
