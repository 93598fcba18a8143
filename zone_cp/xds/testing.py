"""Helpers for tests of the xDS side (and for users testing their own hooks): a tiny CA that
issues SPIFFE workload certificates, a loader of universal YAML into Resources, and a
MeshContext built from such Resources."""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import os
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy.config.core.v3 import base_pb2
from zonemesh.shared.certs import key_usage, private_key_pem, self_signed_ca
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotCache
from zonemesh.zone_cp.xds.context import MeshContext, WorkloadCert, services
from zonemesh.zone_cp.xds.proxy import ProxyIdentity
from zonemesh.zone_cp.xds.server import StreamInfo


def load_resources(text: str) -> list[Resource]:
    """Universal YAML documents -> Resources, without validation (inputs of generator tests)."""
    resources = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        doc = dict(doc)
        rtype, name, mesh = doc.pop("type"), doc.pop("name"), doc.pop("mesh", "")
        labels = doc.pop("labels", {}) or {}
        # targetRef policies keep their spec under `spec:`; the other types are flat.
        spec = (doc.get("spec") or {}) if REGISTRY.get(rtype).wrapped else doc
        resources.append(Resource(type=rtype, name=name, mesh=mesh, spec=spec, labels=labels, version=1))
    return resources


async def mesh_context(
    resources: Iterable[Resource],
    base_dataplanes: Iterable[Resource] = (),
    ca: TestCA | None = None,
    policy_types: Container[str] | None = None,
) -> MeshContext:
    """The MeshContext of the one Mesh in ``resources``: ``base_dataplanes`` (overridden by name
    by the Dataplanes in ``resources``), ExternalServices, the other resources (those of
    ``policy_types`` if given) as policies, and with mTLS a certificate from ``ca`` (a new TestCA
    unless given) for every service."""
    resources = list(resources)
    dataplanes = {r.name: r for r in base_dataplanes}
    dataplanes.update((r.name, r) for r in resources if r.type == "Dataplane")
    mesh = next(r for r in resources if r.type == "Mesh")
    others = [
        r
        for r in resources
        if r.type not in ("Mesh", "Dataplane", "ExternalService") and (policy_types is None or r.type in policy_types)
    ]
    externals = [r for r in resources if r.type == "ExternalService"]
    certs = {}
    if (mesh.spec.get("mtls") or {}).get("enabledBackend"):
        ca = ca or TestCA()
        for dp in dataplanes.values():
            for service in services(dp):
                certs[service] = WorkloadCert(*await ca.workload_cert(mesh.name, service))
    return MeshContext.build(mesh, dataplanes.values(), others, externals, certs)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TestCA:
    """A CA per mesh (EC P-256, fast) issuing ``spiffe://<mesh>/<service>`` certificates; it
    satisfies the CertProvider protocol."""

    __test__ = False  # not a pytest class

    def __init__(self, validity: dt.timedelta = dt.timedelta(days=1)) -> None:
        self.validity = validity
        self._cas: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}
        self._certs: dict[tuple[str, str], tuple[bytes, bytes, bytes, dt.datetime]] = {}
        self.issued = 0

    def _ca(self, mesh: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if mesh not in self._cas:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"test CA {mesh}")])
            now = dt.datetime.now(dt.UTC)
            usage = key_usage(key_cert_sign=True, crl_sign=True)
            cert = self_signed_ca(key, name, now - dt.timedelta(minutes=5), now + dt.timedelta(days=3650), usage)
            self._cas[mesh] = (key, cert)
        return self._cas[mesh]

    def ca_pem(self, mesh: str) -> bytes:
        return _pem_cert(self._ca(mesh)[1])

    def issue(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        ca_key, ca_cert = self._ca(mesh)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = now + self.validity
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, mesh)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}/{service}")]),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = private_key_pem(key)
        self.issued += 1
        return _pem_cert(cert), key_pem, self.ca_pem(mesh), not_after

    async def workload_cert(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        if (mesh, service) not in self._certs:
            self._certs[(mesh, service)] = self.issue(mesh, service)
        return self._certs[(mesh, service)]

    async def workload_certs(
        self, mesh: str, services: Iterable[str]
    ) -> dict[str, tuple[bytes, bytes, bytes, dt.datetime] | Exception]:
        return {service: await self.workload_cert(mesh, service) for service in services}


def self_signed_server_cert(host: str = "127.0.0.1", *more_hosts: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) for a TLS server on ``host`` (and ``more_hosts``): IP addresses (then
    DNS localhost too) or DNS names. The certificate is its own CA, so clients can trust it directly."""
    import ipaddress

    sans: list[x509.GeneralName] = []
    for entry in (host, *more_hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            sans.append(x509.DNSName(entry))
    if any(isinstance(san, x509.IPAddress) for san in sans):
        sans.append(x509.DNSName("localhost"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = private_key_pem(key)
    return _pem_cert(cert), key_pem


class RecordingCache(SnapshotCache):
    """The real cache, remembering which proxies each push went to."""

    def __init__(self) -> None:
        super().__init__()
        self.pushes: list[str] = []

    def set_snapshot(self, node: str, snapshot: Snapshot) -> None:
        self.pushes.append(node)
        super().set_snapshot(node, snapshot)

    async def settle(self, *reconcilers: Idle, within: float = 10.0) -> list[str]:
        """Wait (bounded by ``within`` seconds) until ``reconcilers`` are idle, in order (every change they
        have seen generated and pushed); the nodes pushed to since the last call, in order."""
        async with asyncio.timeout(within):
            for reconciler in reconcilers:
                await reconciler.idle()
        pushed, self.pushes = self.pushes, []
        return pushed


class Idle(Protocol):
    """A reconciler's awaitable idle signal (xds.reconciler.Reconciler, xds.zoneproxies.ZoneProxyReconciler)."""

    async def idle(self) -> None: ...


def stream_infos(*names: str, mesh: str = "default") -> list[StreamInfo]:
    """What the xDS server hands the reconciler when proxies ``names`` of ``mesh`` open streams."""
    return [
        StreamInfo(i, ProxyIdentity(mesh, name), base_pb2.Node(id=f"{mesh}.{name}"), "test")
        for i, name in enumerate(names)
    ]


def yaml_dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=120)


UPDATE_GOLDEN = "UPDATE_GOLDEN_FILES"


class GoldenMismatch(AssertionError):
    """Generated config differs from a golden file; the message is a unified diff."""


def assert_golden(golden: Path, rendered: str) -> None:
    """Compare ``rendered`` with the golden file; with ``UPDATE_GOLDEN_FILES=true`` (or when the
    file does not exist yet) write it instead. A new golden file fails once, to be reviewed.
    The failure shows a unified diff (golden → generated), which is what a review reads too."""
    update = os.environ.get(UPDATE_GOLDEN, "").lower() in ("1", "true", "yes")
    if update or not golden.exists():
        golden.write_text(rendered)
        if not update:
            raise GoldenMismatch(f"{golden.name} did not exist and was written: review it, then run again")
        return
    expected = golden.read_text()
    if rendered != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=f"{golden.name} (golden)",
            tofile="generated",
        )
        raise GoldenMismatch(f"generated config differs ({UPDATE_GOLDEN}=true rewrites it):\n{''.join(diff)}")
