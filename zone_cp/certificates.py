"""What each proxy's certificates are, as it holds them, and warnings before they expire.

``held(...)`` reads the SDS secrets of the snapshot version a proxy ACKed: its identity
certificates (with the CA that issued each: MeshCA remembers what it issued) and the roots it
trusts. The insight recorder writes that as the DataplaneInsight's ``mTLS`` section (Kuma's
fields, plus the fingerprints a CA rotation is decided by), so a rotation step counts only what
proxies confirmed, not what was sent.

``ExpiryWatch`` checks every ``interval`` seconds what connected proxies hold and which CAs
their meshes trust, sets the gauges of shared/ca/metrics.py, and logs once per certificate:

- ``proxy_certificate_expiring`` when a proxy's certificate is in the last 10% of its lifetime
  (certificates are replaced at 80%: one still held at 90% means its rotation is not happening);
- ``mesh_ca_expiring`` when a CA the mesh trusts expires within 30 days (or within a quarter of
  its lifetime, for CAs shorter than 120 days).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import structlog
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2
from zonemesh.shared.ca.material import fingerprint, split_pem
from zonemesh.shared.ca.mesh import MeshCA
from zonemesh.shared.ca.metrics import CA_EXPIRY, CERTS_EXPIRING, PROXY_CERT_EXPIRY
from zonemesh.shared.ca.state import backend_names
from zonemesh.shared.resources.model import format_time, parse_time
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.resources import SECRET

log = structlog.get_logger(__name__)

IDENTITY_PREFIX = "identity_cert:secret:"
MESH_CA_PREFIX = "mesh_ca:secret:"
PROXY_WARN_FRACTION = 0.1  # warn when a proxy certificate has less than this share of its lifetime left
CA_WARN_SECONDS = 30 * 24 * 3600
CA_WARN_FRACTION = 0.25  # for short-lived CAs: warn in the last quarter of the lifetime
CHECK_INTERVAL = 10.0


@dataclass(frozen=True)
class HeldCert:
    """One identity certificate a proxy holds: what the insight and the expiry watch read of it.
    Not the certificate itself (1.1 KB of PEM per proxy): its fingerprint tells one from another."""

    service: str
    fingerprint: str  # SHA-256 of the leaf's DER, hex (shared/ca/material.fingerprint)
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime
    backend: str  # "" when this control plane did not issue it (it cannot tell)
    ca_fingerprint: str

    @cached_property
    def warn_at(self) -> dt.datetime:
        """From when it is in the last PROXY_WARN_FRACTION of its lifetime (``ExpiryWatch``
        looks at every connected proxy's certificates every interval: computed once)."""
        return self.not_after - (self.not_after - self.not_before) * PROXY_WARN_FRACTION


@dataclass(frozen=True)
class Held:
    """What a proxy ACKed in one SDS version: its certificates and the roots it trusts."""

    certs: tuple[HeldCert, ...]
    trusted: tuple[str, ...]  # root fingerprints
    trusted_backends: tuple[str, ...]

    def mtls(self, regenerations: int) -> dict[str, Any]:
        """The DataplaneInsight ``mTLS`` section (Kuma's fields, then zonemesh's fingerprints)."""
        if not self.certs:
            return {}
        oldest = min(self.certs, key=lambda c: c.issued_at)
        return {
            "certificateExpirationTime": format_time(min(c.not_after for c in self.certs)),
            "lastCertificateRegeneration": format_time(max(c.issued_at for c in self.certs)),
            "certificateRegenerations": regenerations,
            "issuedBackend": oldest.backend,
            "supportedBackends": list(self.trusted_backends),
            "issuedCAFingerprint": oldest.ca_fingerprint,
            "issuedCAFingerprints": sorted({c.ca_fingerprint for c in self.certs if c.ca_fingerprint}),
            "supportedCAFingerprints": list(self.trusted),
        }


def _secrets(encoded: Iterable[bytes]) -> list[secret_pb2.Secret]:
    out = []
    for raw in encoded:
        packed = any_pb2.Any.FromString(raw)
        secret = secret_pb2.Secret()
        if packed.Unpack(secret):
            out.append(secret)
    return out


def _held_cert(ca: MeshCA, service: str, chain: bytes) -> HeldCert | None:
    certs = split_pem(chain)
    if not certs:
        return None
    leaf = certs[0]
    leaf_pem = chain[: chain.index(b"-----END CERTIFICATE-----") + 25] + b"\n"
    issued = ca.issued(leaf_pem)
    if issued is not None:
        return HeldCert(
            service,
            fingerprint(leaf),
            issued.not_before,
            issued.not_after,
            issued.issued_at,
            issued.backend,
            issued.ca_fingerprint,
        )
    # Not one of ours (issued before a restart): what the certificate itself says.
    issuer = fingerprint(certs[1]) if len(certs) > 1 else ""
    return HeldCert(
        service,
        fingerprint(leaf),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        leaf.not_valid_before_utc,
        "",
        issuer,
    )


class HeldCertificates:
    """Reads what a proxy holds from the snapshot version it ACKed."""

    def __init__(self, cache: SnapshotCache, ca: MeshCA) -> None:
        self.cache = cache
        self.ca = ca

    async def acked(self, mesh: str, node: str, version: str) -> Held | None:
        """What the proxy ``node`` holds once it ACKed secrets ``version`` (None: that version is
        no longer the snapshot's, a newer one is on its way and its ACK will tell)."""
        snapshot = self.cache.snapshot(node)
        typed = snapshot.types.get(SECRET) if snapshot is not None else None
        if typed is None or typed.version != version:
            return None
        certs: list[HeldCert] = []
        roots: list[str] = []
        for secret in _secrets(typed.resources.values()):
            if secret.name.startswith(IDENTITY_PREFIX) and secret.HasField("tls_certificate"):
                service = secret.name.removeprefix(IDENTITY_PREFIX)
                held = _held_cert(self.ca, service, secret.tls_certificate.certificate_chain.inline_bytes)
                if held is not None:
                    certs.append(held)
            elif secret.name == MESH_CA_PREFIX + mesh and secret.HasField("validation_context"):
                roots = [fingerprint(c) for c in split_pem(secret.validation_context.trusted_ca.inline_bytes)]
        try:
            entries = (await self.ca.trust(mesh)).entries
        except Exception:  # mTLS just turned off, the mesh gone: the names are only a help
            entries = ()
        return Held(tuple(certs), tuple(sorted(roots)), tuple(backend_names(entries, roots)))


def _ca_warn_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    lifetime = not_after - not_before
    margin = min(dt.timedelta(seconds=CA_WARN_SECONDS), lifetime * CA_WARN_FRACTION)
    return not_after - margin


@dataclass
class ExpiryWatch:
    """Gauges and one-time warnings of certificate and CA expiry (see the module's doc)."""

    ca: MeshCA
    held: Callable[[], Mapping[tuple[str, str], Held]]  # (mesh, proxy) -> what each connected proxy holds
    clock: Callable[[], float] = time.time
    interval: float = CHECK_INTERVAL
    _warned: set[tuple[str, str]] = field(default_factory=set)  # (kind, certificate fingerprint)
    _meshes: set[str] = field(default_factory=set)

    async def check(self) -> None:
        at = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        soonest: dict[str, dt.datetime] = {}
        expiring: dict[str, int] = {}
        connected = self.held()
        for (mesh, proxy), held in connected.items():
            for cert in held.certs:
                first = soonest.get(mesh)
                if first is None or cert.not_after < first:
                    soonest[mesh] = cert.not_after
                if at > cert.warn_at:
                    expiring[mesh] = expiring.get(mesh, 0) + 1
                    if self._first(("proxy", cert.fingerprint)):
                        log.warning(
                            "proxy_certificate_expiring",
                            mesh=mesh,
                            proxy=proxy,
                            service=cert.service,
                            backend=cert.backend,
                            not_after=format_time(cert.not_after),
                            seconds_left=round((cert.not_after - at).total_seconds()),
                        )
        for mesh in self._meshes - set(soonest):
            with contextlib.suppress(KeyError):  # no proxy of the mesh holds a certificate any more
                PROXY_CERT_EXPIRY.remove(mesh)
        for mesh, when in soonest.items():
            PROXY_CERT_EXPIRY.labels(mesh=mesh).set((when - at).total_seconds())
        meshes = set(soonest) | {mesh for mesh, _ in connected}
        for mesh in meshes | self._meshes:
            CERTS_EXPIRING.labels(mesh=mesh, kind="proxy").set(expiring.get(mesh, 0))
            CERTS_EXPIRING.labels(mesh=mesh, kind="ca").set(await self._check_cas(mesh, at) if mesh in meshes else 0)
        self._meshes = meshes

    async def _check_cas(self, mesh: str, at: dt.datetime) -> int:
        try:
            trust = await self.ca.trust(mesh)
        except Exception:  # mTLS off (MtlsNotEnabled), the CA not loadable: nothing to watch
            return 0
        expiring = 0
        for entry in trust.entries:
            for anchor in entry.anchors:
                cert = x509.load_pem_x509_certificate(anchor.encode())
                not_after = min(cert.not_valid_after_utc, parse_time(entry.not_after) or cert.not_valid_after_utc)
                CA_EXPIRY.labels(mesh=mesh, backend=entry.backend).set((not_after - at).total_seconds())
                if at >= _ca_warn_at(cert.not_valid_before_utc, not_after):
                    expiring += 1
                    if self._first(("ca", entry.fingerprint)):
                        log.warning(
                            "mesh_ca_expiring",
                            mesh=mesh,
                            backend=entry.backend,
                            fingerprint=entry.fingerprint,
                            not_after=format_time(not_after),
                            seconds_left=round((not_after - at).total_seconds()),
                        )
        return expiring

    def _first(self, key: tuple[str, str]) -> bool:
        """True the first time a certificate is found expiring: each warning is logged once."""
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # a check that fails must not end the watch
                log.warning("certificate_check_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ExpiryWatch]:
        task = asyncio.create_task(self._run(), name="certificate-expiry-watch")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
