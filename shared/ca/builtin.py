"""The builtin CA: one self-signed root per mesh backend, generated once and kept as mesh Secrets.

When a Mesh lists a backend ``ca-1`` of ``type: builtin``, its CA key and certificate are
generated (``ensure``) and stored as the mesh Secrets ``{mesh}.ca-builtin-key-{backend}`` and
``{mesh}.ca-builtin-cert-{backend}`` (Kuma's names; ``data`` is the base64 of the PEM). Every
control plane replica, and every zone (KDS carries Secrets from global), reads the same pair.

The CA is RSA with ``conf.caCert.RSAbits`` bits (default 2048, as Kuma), valid for
``conf.caCert.expiration`` (default 10 years). Those two settings apply when the CA is generated:
changing them for a backend whose CA exists is refused (add a backend with a new name instead).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Callable

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from zonemesh.shared.ca.backend import BACKDATE_SECONDS, Backend
from zonemesh.shared.ca.material import CaProblem, SigningCA, load_signing_ca, split_pem
from zonemesh.shared.certs import key_usage, private_key_pem, self_signed_ca
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import FieldError, parse_cert_duration
from zonemesh.shared.store import AlreadyExists, Store

log = structlog.get_logger(__name__)

TYPE = "builtin"
DEFAULT_RSA_BITS = 2048
DEFAULT_CA_VALIDITY_SECONDS = 10 * 365 * 24 * 3600
_CA_RACE_WAIT_SECONDS = 5.0


class CaNotYetSynced(Exception):
    """A federated zone has no copy of global's mesh CA yet (it comes with the mesh over KDS)."""


def ca_cert_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-cert-{backend}"


def ca_key_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-key-{backend}"


def rsa_bits(backend: Backend) -> int:
    return int((backend.conf.get("caCert") or {}).get("RSAbits") or DEFAULT_RSA_BITS)


def ca_validity_seconds(backend: Backend) -> float:
    text = (backend.conf.get("caCert") or {}).get("expiration")
    return parse_cert_duration(str(text)) if text else DEFAULT_CA_VALIDITY_SECONDS


def generate_ca(mesh: str, backend: str, bits: int, validity_seconds: float, now: float) -> tuple[bytes, bytes]:
    """A self-signed CA certificate and its RSA key, as PEM (CPU-bound: call it off the event loop)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
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
        dt.datetime.fromtimestamp(now - BACKDATE_SECONDS, dt.UTC),
        dt.datetime.fromtimestamp(now + validity_seconds, dt.UTC),
        key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
        [x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}")])],
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def _secret(mesh: str, name: str, pem: bytes) -> Resource:
    return Resource(type="Secret", name=name, mesh=mesh, spec={"data": base64.b64encode(pem).decode()})


def _pem(res: Resource | None) -> bytes | None:
    return base64.b64decode(res.spec["data"]) if res is not None else None


class BuiltinCaManager:
    type = TYPE

    def __init__(self, clock: Callable[[], float] = time.time, *, generate: bool = True) -> None:
        self.clock = clock
        # False on a federated zone: the mesh CA is global's (one root for every zone, so that
        # mTLS works across zones) and arrives as mesh Secrets over KDS; the zone never makes its own.
        self.generate = generate
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def used_secrets(self, backend: Backend) -> list[str]:
        return [ca_cert_secret_name(backend.mesh, backend.name), ca_key_secret_name(backend.mesh, backend.name)]

    async def _stored(self, backend: Backend, store: Store) -> tuple[bytes, bytes] | None:
        cert = _pem(await store.find("Secret", ca_cert_secret_name(backend.mesh, backend.name), backend.mesh))
        key = _pem(await store.find("Secret", ca_key_secret_name(backend.mesh, backend.name), backend.mesh))
        return (cert, key) if cert is not None and key is not None else None

    async def validate(self, backend: Backend, store: Store, *, material: bool = True) -> list[FieldError]:
        errors = [
            FieldError(f"{backend.path}.conf.{name}", "only a backend of type provided has it (this one is builtin)")
            for name in ("cert", "key")
            if name in backend.conf
        ]
        ca_conf = backend.conf.get("caCert") or {}
        stored = await self._stored(backend, store)
        if stored is None or not ca_conf:
            return errors
        certs = split_pem(stored[0])
        if not certs:
            return errors
        cert = certs[0]
        key = cert.public_key()
        fix = "add a backend with a new name to get a CA with these settings, then switch enabledBackend to it"
        if ca_conf.get("RSAbits") and isinstance(key, rsa.RSAPublicKey) and key.key_size != rsa_bits(backend):
            errors.append(
                FieldError(
                    f"{backend.path}.conf.caCert.RSAbits",
                    f"the CA of backend {backend.name!r} exists already with {key.key_size} bits; caCert applies "
                    f"when a CA is generated: {fix}",
                )
            )
        if ca_conf.get("expiration"):
            lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() - BACKDATE_SECONDS
            if abs(lifetime - ca_validity_seconds(backend)) > 1:
                errors.append(
                    FieldError(
                        f"{backend.path}.conf.caCert.expiration",
                        f"the CA of backend {backend.name!r} exists already, valid until "
                        f"{cert.not_valid_after_utc.isoformat()}; caCert applies when a CA is generated: {fix}",
                    )
                )
        return errors

    async def ensure(self, backend: Backend, store: Store) -> None:
        """Generate and store the backend's CA unless it exists (race-safe across replicas)."""
        async with self._locks.setdefault((backend.mesh, backend.name), asyncio.Lock()):
            if await self._stored(backend, store) is not None:
                return
            if not self.generate:
                raise CaNotYetSynced(
                    f"the CA of mesh {backend.mesh!r} (backend {backend.name!r}) has not arrived from the "
                    "global control plane yet"
                )
            cert_pem, key_pem = await asyncio.to_thread(
                generate_ca, backend.mesh, backend.name, rsa_bits(backend), ca_validity_seconds(backend), self.clock()
            )
            try:
                # The key goes first: whoever stores it owns the pair; a loser waits for the cert.
                await store.create(_secret(backend.mesh, ca_key_secret_name(backend.mesh, backend.name), key_pem))
            except AlreadyExists:
                await self._wait_for_cert(backend, store)
                return
            await store.create(_secret(backend.mesh, ca_cert_secret_name(backend.mesh, backend.name), cert_pem))
            log.info(
                "builtin_ca_created",
                mesh=backend.mesh,
                backend=backend.name,
                rsa_bits=rsa_bits(backend),
                secrets=self.used_secrets(backend),
            )

    async def _wait_for_cert(self, backend: Backend, store: Store) -> None:
        deadline = time.monotonic() + _CA_RACE_WAIT_SECONDS
        while time.monotonic() < deadline:
            if await self._stored(backend, store) is not None:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(
            f"the CA key of mesh {backend.mesh!r} backend {backend.name!r} exists but its certificate "
            f"{ca_cert_secret_name(backend.mesh, backend.name)!r} does not: delete both secrets to regenerate the CA"
        )

    async def signing_ca(self, backend: Backend, store: Store, now: float) -> SigningCA:
        stored = await self._stored(backend, store)
        if stored is None:
            await self.ensure(backend, store)  # raises CaNotYetSynced where it may not generate
            stored = await self._stored(backend, store)
            assert stored is not None
        try:
            return await asyncio.to_thread(load_signing_ca, backend.name, stored[0], stored[1], now)
        except CaProblem as exc:
            raise CaProblem(
                exc.part,
                f"{exc.reason} (the builtin CA of backend {backend.name!r}, Secrets {self.used_secrets(backend)})",
            ) from None
