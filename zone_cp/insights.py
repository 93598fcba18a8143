"""DataplaneInsight: what the zone knows about each proxy's connection, config and certificate.

Fed by the xDS server's hooks (stream open/close, ACK, NACK) and by the certificate provider.
State is kept in memory per proxy and written to the store as ``DataplaneInsight`` resources
(Kuma's shape: ``subscriptions[]`` with connect/disconnect time, control plane instance id and
per-type ACK/NACK counters, the last NACK's error and the policies it is due to (``lastError``,
``lastErrorPolicies``: zone_cp/xds/nacks.py), plus ``mTLS`` with the certificate expiry) at most once per flush
interval per proxy, so a burst of ACKs costs one write.

Read them at ``/meshes/{mesh}/dataplane-insights/{name}`` and, joined with the Dataplanes,
at ``/meshes/{mesh}/dataplanes+insights`` (shared/api/overview.py, on global too).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from zonemesh.shared.ca.builtin import WorkloadCert
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource, format_time, now
from zonemesh.shared.resources.types.dataplane import dataplane_tags
from zonemesh.shared.store import Conflict
from zonemesh.zone_cp.xds.resources import SHORT_NAMES

log = structlog.get_logger(__name__)

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
QUIET_SECONDS = 0.2  # no ACK for this long: a burst of pushes is over, insights may be written
MAX_SUBSCRIPTIONS = 5  # older connections of a proxy are dropped from its insight
MAX_ERROR = 1000  # characters of a NACK's error kept in the insight (the log has all of it)


def bounded_error(error: str, limit: int = MAX_ERROR) -> str:
    """Envoy's NACK message within ``limit`` characters, its start and its end: Envoy writes the
    refused resource first (often thousands of characters of proto text) and the reason last
    (``...: Proto constraint validation failed (...)``), so the end is what says what is wrong."""
    if len(error) <= limit:
        return error
    head = limit // 4
    marker = f"\n[... the middle of this {len(error)}-character error is left out ...]\n"
    tail = limit - head - len(marker)
    return error[:head] + marker + error[-tail:]


@dataclass
class _TypeStats:
    acked: int = 0
    rejected: int = 0
    last_error: str = ""
    last_error_policies: list[str] = field(default_factory=list)  # the policies the last NACK is due to
    # Whether Envoy's latest answer was a NACK: it runs its previous config until an ACK clears this
    # (the counters alone cannot tell a NACK an hour ago, since fixed, from one now).
    last_rejected: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "responsesSent": str(self.acked + self.rejected),
            "responsesAcknowledged": str(self.acked),
            "responsesRejected": str(self.rejected),
        }
        if self.acked or self.rejected:
            out["lastResponse"] = "NACK" if self.last_rejected else "ACK"
        if self.last_error:
            out["lastError"] = self.last_error
            out["lastErrorPolicies"] = list(self.last_error_policies)
        return out


@dataclass
class _Subscription:
    id: str
    stream_id: int
    connect_time: dt.datetime
    disconnect_time: dt.datetime | None = None
    last_update: float | None = None  # time.time(): an ACK stores a float, the document formats it
    stats: dict[str, _TypeStats] = field(default_factory=dict)
    acked_versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self, instance_id: str, versions: dict[str, Any]) -> dict[str, Any]:
        total = _TypeStats(
            acked=sum(s.acked for s in self.stats.values()),
            rejected=sum(s.rejected for s in self.stats.values()),
            last_rejected=any(s.last_rejected for s in self.stats.values()),  # some type runs a rejected config
        )
        last_update = None if self.last_update is None else dt.datetime.fromtimestamp(self.last_update, dt.UTC)
        status: dict[str, Any] = {"lastUpdateTime": format_time(last_update), "total": total.as_dict()}
        for type_url, stats in self.stats.items():
            status[SHORT_NAMES.get(type_url, type_url)] = stats.as_dict()
        out: dict[str, Any] = {
            "id": self.id,
            "controlPlaneInstanceId": instance_id,
            "connectTime": format_time(self.connect_time),
            "status": status,
            "version": versions,
        }
        if self.disconnect_time is not None:
            out["disconnectTime"] = format_time(self.disconnect_time)
        return out


@dataclass
class _ProxyState:
    mesh: str
    name: str
    subscriptions: list[_Subscription] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    mtls: dict[str, Any] = field(default_factory=dict)

    def subscription(self, stream_id: int) -> _Subscription | None:
        for sub in reversed(self.subscriptions):  # a plain loop: this runs on every ACK
            if sub.stream_id == stream_id:
                return sub
        return None


class InsightRecorder:
    """Collects per-proxy xDS facts and flushes them to DataplaneInsight resources."""

    def __init__(
        self,
        manager: ResourceManager,
        instance_id: str,
        flush_interval: float = 1.0,
        attribute: Callable[[str, str, str], list[str]] | None = None,
    ) -> None:
        self.manager = manager
        self.attribute = attribute  # which policies a NACK is due to (zone_cp/xds/nacks.py)
        self.instance_id = instance_id
        self.flush_interval = flush_interval
        self._proxies: dict[tuple[str, str], _ProxyState] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._last_touch = 0.0
        self._certs: dict[tuple[str, str], tuple[WorkloadCert, int, str]] = {}  # (cert, regenerations, backend)

    def _state(self, mesh: str, name: str) -> _ProxyState:
        state = self._proxies.get((mesh, name))  # every ACK comes here: build a state only when new
        if state is None:
            state = self._proxies[(mesh, name)] = _ProxyState(mesh, name)
        return state

    def _touch(self, mesh: str, name: str) -> None:
        self._dirty.add((mesh, name))
        self._last_touch = time.time()
        self._wake.set()

    # -- xDS hooks (signatures of zone_cp.xds.server.Callbacks) ---------------------------

    async def stream_open(self, info: Any) -> None:
        state = self._state(info.identity.mesh, info.identity.name)
        state.subscriptions.append(_Subscription(id=str(uuid.uuid4()), stream_id=info.stream_id, connect_time=now()))
        del state.subscriptions[:-MAX_SUBSCRIPTIONS]
        envoy_version = _envoy_version(info.node)
        if envoy_version:
            state.versions.setdefault("envoy", {})["version"] = envoy_version
        self._touch(state.mesh, state.name)

    async def stream_close(self, info: Any) -> None:
        state = self._state(info.identity.mesh, info.identity.name)
        sub = state.subscription(info.stream_id)
        if sub is not None and sub.disconnect_time is None:
            sub.disconnect_time = now()
        self._touch(state.mesh, state.name)

    async def ack(self, info: Any, type_url: str, version: str) -> None:
        # Every ACK of every proxy comes here (2,000 per mesh-wide change): counters only, no
        # allocation unless something is new; the document is built when it is written.
        key = (info.identity.mesh, info.identity.name)
        state = self._proxies.get(key) or self._state(*key)
        sub = state.subscription(info.stream_id)
        if sub is None:
            return
        stats = sub.stats.get(type_url)
        if stats is None:
            stats = sub.stats[type_url] = _TypeStats()
        stats.acked += 1
        stats.last_rejected = False
        sub.acked_versions[type_url] = version
        sub.last_update = self._last_touch = time.time()
        if type_url == SECRET_TYPE_URL:
            await self._record_mtls(state)
        self._dirty.add(key)
        self._wake.set()

    async def nack(self, info: Any, type_url: str, version: str, error: str) -> None:
        state = self._state(info.identity.mesh, info.identity.name)
        sub = state.subscription(info.stream_id)
        if sub is None:
            return
        stats = sub.stats.setdefault(type_url, _TypeStats())
        stats.rejected += 1
        stats.last_rejected = True
        stats.last_error = bounded_error(error)
        if self.attribute is not None:
            stats.last_error_policies = self.attribute(info.identity.key, type_url, version)
        sub.last_update = time.time()
        self._touch(state.mesh, state.name)

    def install(self, callbacks: Any) -> None:
        """Register the hooks on the xDS server's ``Callbacks``."""
        callbacks.stream_open.append(self.stream_open)
        callbacks.stream_close.append(self.stream_close)
        callbacks.ack.append(self.ack)
        callbacks.nack.append(self.nack)

    # -- registration and certificates ----------------------------------------------------

    def registered(self, mesh: str, name: str, *, agent_version: str = "", envoy_version: str = "") -> None:
        state = self._state(mesh, name)
        if agent_version:
            state.versions["zonemeshDp"] = {"version": agent_version}
        if envoy_version:
            state.versions.setdefault("envoy", {})["version"] = envoy_version
        self._touch(mesh, name)

    async def unregistered(self, mesh: str, name: str) -> None:
        """The agent is leaving: the proxy is offline from now on, whatever its stream does."""
        state = self._state(mesh, name)
        for sub in state.subscriptions:
            if sub.disconnect_time is None:
                sub.disconnect_time = now()
        await self._flush_one((mesh, name))

    def cert_issued(self, mesh: str, service: str, cert: WorkloadCert, backend: str) -> None:
        previous = self._certs.get((mesh, service))
        if previous is not None and previous[0].cert_pem == cert.cert_pem:
            return
        regenerations = previous[1] + 1 if previous is not None else 0
        self._certs[(mesh, service)] = (cert, regenerations, backend)

    async def _record_mtls(self, state: _ProxyState) -> None:
        dataplane = await self.manager.store.find("Dataplane", state.name, state.mesh)
        if dataplane is None:
            return
        for tags in dataplane_tags(dataplane):
            found = self._certs.get((state.mesh, tags.get("kuma.io/service", "")))
            if found is not None:
                cert, regenerations, backend = found
                state.mtls = {
                    "certificateExpirationTime": format_time(cert.not_after),
                    "lastCertificateRegeneration": format_time(cert.not_before),
                    "certificateRegenerations": regenerations,
                    "issuedBackend": backend,
                    "supportedBackends": [backend],
                }
                return

    # -- writing --------------------------------------------------------------------------

    def document(self, mesh: str, name: str) -> dict[str, Any]:
        state = self._state(mesh, name)
        spec: dict[str, Any] = {
            "subscriptions": [s.as_dict(self.instance_id, state.versions) for s in state.subscriptions]
        }
        if state.mtls:
            spec["mTLS"] = state.mtls
        return spec

    async def _flush_one(self, key: tuple[str, str]) -> None:
        self._dirty.discard(key)
        mesh, name = key
        spec = self.document(mesh, name)
        for _ in range(3):  # Conflict: someone else (a previous CP instance) wrote it: read and retry
            try:
                await self.manager.apply(Resource(type="DataplaneInsight", name=name, mesh=mesh, spec=spec))
                return
            except Conflict:
                continue
            except Exception as exc:  # a missing mesh, a store outage: keep serving, retry next flush
                log.warning("dataplane_insight_write_failed", mesh=mesh, name=name, error=str(exc))
                return

    async def flush(self) -> None:
        for key in list(self._dirty):
            await self._flush_one(key)

    async def _quiet(self, limit: float) -> None:
        """Wait until no ACK came for QUIET_SECONDS, at most ``limit`` seconds."""
        step = self.flush_interval / 10
        for _ in range(max(1, round(limit / step))):
            if time.time() - self._last_touch >= QUIET_SECONDS:
                return
            await asyncio.sleep(step)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Let the burst that woke us finish first: after a mesh-wide change every proxy ACKs
            # within a few seconds, and writing insights meanwhile would slow those very pushes.
            # So wait for the interval, then for a quiet moment (bounded: 5 intervals in all).
            await asyncio.sleep(self.flush_interval)
            await self._quiet(4 * self.flush_interval)
            self._wake.clear()
            # Writing 2,000 insights takes seconds; a push that starts meanwhile (the next
            # change) gets the loop back: pause between writes while ACKs flow, each pause
            # bounded so insights still reach the store during a long stream of changes.
            for key in list(self._dirty):
                await self._quiet(self.flush_interval)
                if key in self._dirty:  # not written meanwhile (an unregistration)
                    await self._flush_one(key)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InsightRecorder]:
        task = asyncio.create_task(self._run(), name="dataplane-insights")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # This instance stops serving: every stream it held is disconnected.
            for state in self._proxies.values():
                for sub in state.subscriptions:
                    if sub.disconnect_time is None:
                        sub.disconnect_time = now()
                        self._dirty.add((state.mesh, state.name))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout=5)


def _envoy_version(node: Any) -> str:
    try:
        build = node.user_agent_build_version
        if build.HasField("version"):
            v = build.version
            return f"{v.major_number}.{v.minor_number}.{v.patch}"
    except AttributeError:
        pass
    return ""


class RecordingCertProvider:
    """Wraps the builtin CA's CertProvider to tell the recorder what was issued."""

    def __init__(self, ca: Any, recorder: InsightRecorder) -> None:
        self.ca = ca
        self.recorder = recorder

    async def workload_cert(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]:
        cert: WorkloadCert = await self.ca.issue(mesh, service)
        settings = await self.ca.settings(mesh)
        self.recorder.cert_issued(mesh, service, cert, settings.name)
        return cert.as_tuple()
