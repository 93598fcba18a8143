"""MeshCA: the workload certificates and the trust bundle of each mesh, for the xDS side.

What a proxy gets follows the mesh's ``MeshCAState`` (rotation.py), which the control plane
that drives rotations writes (global, or a standalone control plane) and KDS carries to zones:

- its certificate comes from the CA the state names as ``issuing`` (during a rotation that is
  not yet the enabled backend's: the new CA issues only once every proxy trusts it);
- it trusts the roots of every CA in ``trusted`` (the old and the new CA during a rotation).

Before a mesh has a state (mTLS just enabled, or an older control plane drove it), the enabled
backend issues and only its root is trusted.

Certificates are cached per (mesh, service, issuing CA) and reissued after 80% of their life.
Issuing one is bounded by the backend's ``dpCert.requestTimeout``, loading a CA (its Secrets,
its root chain) by ``rootChain.requestTimeout`` (both 10s by default, as Kuma).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog
from zonemesh.shared.ca.backend import (
    Backend,
    CaManager,
    IssuedCert,
    backend_named,
    enabled_backend,
    issue_workload_cert,
)
from zonemesh.shared.ca.builtin import BuiltinCaManager
from zonemesh.shared.ca.material import SigningCA
from zonemesh.shared.ca.provided import ProvidedCaManager
from zonemesh.shared.ca.state import STATE_TYPE, CaEntry, issuing_of, trusted_of
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store

log = structlog.get_logger(__name__)

MAX_REMEMBERED = 4096  # issued certificates remembered for insights (what a proxy holds)


class MtlsNotEnabled(Exception):
    """The mesh does not exist or has mTLS off: there is nothing to issue."""


class CaNotReady(Exception):
    """The CA the mesh's state names cannot issue here yet (its Secrets or its Mesh backend have
    not arrived over KDS, or they do not match the state): retried with the next change."""


def default_managers(clock: Callable[[], float] = time.time, *, generate: bool = True) -> dict[str, CaManager]:
    """The backend types zonemesh serves, by ``type``."""
    managers: list[CaManager] = [BuiltinCaManager(clock, generate=generate), ProvidedCaManager()]
    return {m.type: m for m in managers}


@dataclass(frozen=True)
class Trust:
    """What a mesh's proxies trust: the PEM bundle, and which CA each root belongs to."""

    bundle: bytes
    entries: tuple[CaEntry, ...]


class MeshCA:
    """Implements the xDS side's CertProvider: ``workload_cert(mesh, service)``.

    Safe to share across tasks: issuance for one (mesh, service) is serialized so that
    concurrent proxies of one service get the same certificate, not one each.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        *,
        generate: bool = True,
        managers: Mapping[str, CaManager] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.managers = dict(managers) if managers is not None else default_managers(clock, generate=generate)
        self._certs: dict[tuple[str, str], IssuedCert] = {}
        self._issued: dict[bytes, IssuedCert] = {}  # by leaf PEM: what proxies hold (insights)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def manager(self, backend: Backend) -> CaManager:
        manager = self.managers.get(backend.type)
        if manager is None:
            raise MtlsNotEnabled(
                f"mesh {backend.mesh!r}: backend {backend.name!r} has type {backend.type!r}, not served"
            )
        return manager

    async def _mesh(self, name: str) -> Resource:
        mesh = await self.store.find("Mesh", name)
        if mesh is None:
            raise MtlsNotEnabled(f"mesh {name!r} does not exist")
        if enabled_backend(mesh) is None:
            raise MtlsNotEnabled(f"mesh {name!r} has no enabled mTLS backend")
        return mesh

    async def _state(self, mesh: str) -> Resource | None:
        return await self.store.find(STATE_TYPE, mesh, mesh)

    async def signing_ca(self, mesh: Resource, backend: Backend) -> SigningCA:
        """The backend's CA, bounded by its ``rootChain.requestTimeout``."""
        async with asyncio.timeout(backend.root_chain_timeout):
            return await self.manager(backend).signing_ca(backend, self.store, self.clock())

    async def _issuing(self, mesh: Resource) -> tuple[Backend, SigningCA]:
        state = await self._state(mesh.name)
        wanted = issuing_of(state.spec) if state is not None else None
        backend = backend_named(mesh, wanted.backend) if wanted is not None else enabled_backend(mesh)
        if backend is None:
            assert wanted is not None
            raise CaNotReady(f"mesh {mesh.name!r} has no backend {wanted.backend!r}, which its CA state issues from")
        ca = await self.signing_ca(mesh, backend)
        if wanted is not None and ca.fingerprint != wanted.fingerprint:
            raise CaNotReady(
                f"the CA of backend {backend.name!r} of mesh {mesh.name!r} is not the one its CA state issues from "
                f"({ca.fingerprint[:16]} here, {wanted.fingerprint[:16]} in the state): waiting for them to agree"
            )
        return backend, ca

    async def trust(self, mesh_name: str) -> Trust:
        """The roots the mesh's proxies trust now."""
        mesh = await self._mesh(mesh_name)
        state = await self._state(mesh_name)
        if state is not None:
            entries = tuple(trusted_of(state.spec))
        else:
            backend = enabled_backend(mesh)
            assert backend is not None
            entries = (CaEntry.of(await self.signing_ca(mesh, backend)),)
        seen: dict[str, str] = {}
        for entry in entries:
            seen.update(entry.anchor_pems())
        return Trust(b"".join(pem.encode() for pem in seen.values()), entries)

    async def issue(self, mesh_name: str, service: str) -> IssuedCert:
        """The current workload certificate of ``service``: cached, reissued after 80% of its life
        or when another CA issues."""
        mesh = await self._mesh(mesh_name)
        backend, ca = await self._issuing(mesh)
        return await self._issue_from(mesh_name, service, backend, ca)

    async def _issue_from(self, mesh_name: str, service: str, backend: Backend, ca: SigningCA) -> IssuedCert:
        async with self._locks.setdefault((mesh_name, service), asyncio.Lock()):
            cached = self._certs.get((mesh_name, service))
            now = self.clock()
            at = dt.datetime.fromtimestamp(now, dt.UTC)
            if cached is not None and cached.ca_fingerprint == ca.fingerprint and at < cached.rotate_after:
                return cached
            async with asyncio.timeout(backend.request_timeout):
                cert = await asyncio.to_thread(
                    issue_workload_cert, ca, mesh_name, service, backend.cert_validity_seconds, now
                )
            self._certs[(mesh_name, service)] = cert
            self._remember(cert)
            log.info(
                "workload_cert_issued",
                mesh=mesh_name,
                service=service,
                backend=backend.name,
                ca=ca.fingerprint[:16],
                not_after=cert.not_after.isoformat(),
                rotate_after=cert.rotate_after.isoformat(),
                reason="first"
                if cached is None
                else "new CA"
                if cached.ca_fingerprint != ca.fingerprint
                else "rotation",
            )
            return cert

    def _remember(self, cert: IssuedCert) -> None:
        self._issued[cert.leaf_pem] = cert
        while len(self._issued) > MAX_REMEMBERED:
            del self._issued[next(iter(self._issued))]

    def issued(self, leaf_pem: bytes) -> IssuedCert | None:
        """What this control plane knows of a certificate it issued (None: not one of its own)."""
        return self._issued.get(leaf_pem)

    async def workload_cert(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        """CertProvider: (certificate chain PEM, key PEM, trusted roots PEM, not_after)."""
        cert = await self.issue(mesh, service)
        trust = await self.trust(mesh)
        return cert.cert_pem, cert.key_pem, trust.bundle, cert.not_after

    async def workload_certs(
        self, mesh: str, services: Iterable[str]
    ) -> dict[str, tuple[bytes, bytes, bytes, dt.datetime] | Exception]:
        """CertProvider: ``workload_cert`` of each service, the Mesh, its CA state and its issuing
        CA read once for all (a round asks for every service of the mesh: per service, that was
        five store reads and a CA load in a thread, 1,000 of them per mesh-wide change at 200
        services). A failure of one service's issuance is its entry; one of the mesh or its CA raises."""
        found = await self._mesh(mesh)
        backend, ca = await self._issuing(found)
        issued: dict[str, IssuedCert | Exception] = {}
        for service in services:
            try:
                issued[service] = await self._issue_from(mesh, service, backend, ca)
            except Exception as exc:
                issued[service] = exc
        trust = await self.trust(mesh)
        found_certs: dict[str, tuple[bytes, bytes, bytes, dt.datetime] | Exception] = {}
        for service, cert in issued.items():
            found_certs[service] = (
                cert if isinstance(cert, Exception) else (cert.cert_pem, cert.key_pem, trust.bundle, cert.not_after)
            )
        return found_certs
