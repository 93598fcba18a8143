"""DataplaneInsight: what the zone knows about each proxy's connection, config and certificate.

Fed by the xDS server's hooks (stream open/close, ACK, NACK); an ACK of secrets tells which
certificates and roots the proxy holds now (zone_cp/certificates.py, read when the insight is
written).
State is kept in memory per proxy and written to the store as ``DataplaneInsight`` resources
(Kuma's shape: ``subscriptions[]`` with connect/disconnect time, control plane instance id and
per-type ACK/NACK counters, the last NACK's error and the policies it is due to (``lastError``,
``lastErrorPolicies``: zone_cp/xds/nacks.py), plus ``mTLS``: the expiry and issuing CA of the
certificates the proxy ACKed, and the CAs it trusts).

Nothing proportional to the number of proxies happens after a change is delivered: an ACK only
moves counters in memory (no store access: ACKs are never queued behind persistence). Insights
are written in batches of at most ``batch_size`` (one store batch each, an etcd transaction), at
most one batch per ``flush_interval``, and first after a burst of ACKs is over. What says
something new about a proxy (a stream opened or closed, a NACK, the ACK that follows one, the
first ACK of a type, a certificate) is written in the next batch; an ACK that only moves the
counters waits up to ``refresh_interval`` (a minute), so a proxy's insight is written at most
once a minute for its counters however many changes it ACKs in that minute: mesh-wide changes
a few seconds apart cost one insight write per proxy per minute, not one per change (and on a
federated zone, one upload of it to global per minute). Insights waiting to be written:
``dataplane_insights_pending``; written: ``dataplane_insights_written_total``.

Read them at ``/meshes/{mesh}/dataplane-insights/{name}`` and, joined with the Dataplanes,
at ``/meshes/{mesh}/dataplanes+insights`` (shared/api/overview.py, on global too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter, Gauge
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource, ResourceKey, format_time, now
from zonemesh.shared.store import AlreadyExists, Conflict, NotFound, Store
from zonemesh.zone_cp.certificates import Held, HeldCertificates
from zonemesh.zone_cp.ingress import is_local
from zonemesh.zone_cp.xds.proxy import INSIGHT_TYPES, ProxyType
from zonemesh.zone_cp.xds.resources import SHORT_NAMES
from zonemesh.zone_cp.xds.server import StreamInfo

log = structlog.get_logger(__name__)

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
QUIET_SECONDS = 0.2  # no ACK for this long: a burst of pushes is over, insights may be written
BATCH_SIZE = 100  # insights per store write
# How long an ACK that only moves the counters may wait to be written. Every mesh-wide change moves
# every proxy's counters: at 10 s, changes 10 s or more apart cost one insight write per proxy per
# change (2,000 writes, ~0.3-0.6 s of CPU at 2,000 proxies, and as many KDS uploads to global).
REFRESH_SECONDS = 60.0
MAX_SUBSCRIPTIONS = 5  # older connections of a proxy are dropped from its insight
MERGE_ATTEMPTS = 5  # writes of a batch of insights that lost a race to another replica, then deferred
MAX_ERROR = 1000  # characters of a NACK's error kept in the insight (the log has all of it)

PENDING = Gauge("dataplane_insights_pending", "DataplaneInsights waiting to be written to the store")
WRITTEN = Counter("dataplane_insights_written", "DataplaneInsights written to the store")


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


# Counters up to this are written as one shared string per value (``_count``).
MAX_SHARED_COUNT = 10_000
_COUNT_TEXT: dict[int, str] = {}


def _count(n: int) -> str:
    """``str(n)``, the same string object for every insight that shows that count: the zone's view
    holds every proxy's insight, 18 counters each, mostly the same small numbers (``str`` makes a
    new 50-byte string each time, even of one digit)."""
    text = _COUNT_TEXT.get(n)
    if text is None:
        text = str(n)
        if n <= MAX_SHARED_COUNT:
            _COUNT_TEXT[n] = text
    return text


@dataclass(slots=True)  # one per type per proxy
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
            "responsesSent": _count(self.acked + self.rejected),
            "responsesAcknowledged": _count(self.acked),
            "responsesRejected": _count(self.rejected),
        }
        if self.acked or self.rejected:
            out["lastResponse"] = "NACK" if self.last_rejected else "ACK"
        if self.last_error:
            out["lastError"] = self.last_error
            out["lastErrorPolicies"] = list(self.last_error_policies)
        return out


@dataclass(slots=True)  # one per stream of every proxy (the last MAX_SUBSCRIPTIONS)
class _Subscription:
    id: str
    stream_id: int
    connect_time: dt.datetime
    disconnect_time: dt.datetime | None = None
    last_update: float | None = None  # time.time(): an ACK stores a float, the document formats it
    stats: dict[str, _TypeStats] = field(default_factory=dict)

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


@dataclass(slots=True)  # one per proxy
class _ProxyState:
    mesh: str
    name: str
    subscriptions: list[_Subscription] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    mtls: dict[str, Any] = field(default_factory=dict)
    mtls_stale: bool = False  # a certificate was ACKed: read which one when the insight is written
    mtls_acked: tuple[str, str] = ("", "")  # (xDS node, secrets version) of that ACK
    held: Held | None = None  # the certificates and roots of the secrets it last ACKed
    regenerations: int = 0  # how often the certificates it holds changed

    @property
    def online(self) -> bool:
        return bool(self.subscriptions) and self.subscriptions[-1].disconnect_time is None

    def subscription(self, stream_id: int) -> _Subscription | None:
        for sub in reversed(self.subscriptions):  # a plain loop: this runs on every ACK
            if sub.stream_id == stream_id:
                return sub
        return None


Key = tuple[str, str]  # (mesh, name)


class InsightRecorder:
    """Collects per-proxy xDS facts in memory and writes them to DataplaneInsight resources in
    bounded batches at a bounded rate."""

    def __init__(
        self,
        manager: ResourceManager,
        instance_id: str,
        flush_interval: float = 1.0,
        attribute: Callable[[str, str, str], list[str]] | None = None,
        batch_size: int = BATCH_SIZE,
        refresh_interval: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        held: HeldCertificates | None = None,
        stored: Callable[[str, str], Resource | None] | None = None,
    ) -> None:
        self.manager = manager
        # The DataplaneInsight stored now, read from memory (the zone's view: zone_cp/view.py): the
        # subscriptions other replicas of the zone recorded in it are kept when this one writes it.
        self.stored = stored
        self.held_certificates = held  # what a secrets ACK holds (None: no mTLS section)
        self.attribute = attribute  # which policies a NACK is due to (zone_cp/xds/nacks.py)
        self.instance_id = instance_id
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.refresh_interval = refresh_interval
        self.clock = clock
        self._proxies: dict[Key, _ProxyState] = {}
        # To be written: in the next batch (in the order they came), or once due (``clock()`` time;
        # in the order they came too, so the first is the first due).
        self._urgent: dict[Key, None] = {}
        self._deferred: dict[Key, float] = {}
        self._wake = asyncio.Event()
        self._last_touch = 0.0

    def _state(self, mesh: str, name: str) -> _ProxyState:
        state = self._proxies.get((mesh, name))  # every ACK comes here: build a state only when new
        if state is None:
            state = self._proxies[(mesh, name)] = _ProxyState(mesh, name)
        return state

    def _touch(self, mesh: str, name: str) -> None:
        """Something new about the proxy: written in the next batch."""
        key = (mesh, name)
        self._deferred.pop(key, None)
        self._urgent[key] = None
        self._last_touch = time.time()
        self._wake.set()

    def _defer(self, key: Key) -> None:
        """Only counters moved: written within ``refresh_interval`` (or with something new before)."""
        if key in self._urgent or key in self._deferred:
            return
        self._deferred[key] = self.clock() + self.refresh_interval
        if len(self._deferred) == 1:
            self._wake.set()  # the writer may be waiting with no due time

    @property
    def pending(self) -> int:
        """Insights waiting to be written."""
        return len(self._urgent) + len(self._deferred)

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
        # Every ACK of every proxy comes here (2,000 per mesh-wide change): counters in memory
        # only, no store access, no allocation unless something is new.
        key = (info.identity.mesh, info.identity.name)
        state = self._proxies.get(key) or self._state(*key)
        sub = state.subscription(info.stream_id)
        if sub is None:
            return
        stats = sub.stats.get(type_url)
        news = stats is None or stats.last_rejected  # its first ACK of the type, or the end of a NACK
        if stats is None:
            stats = sub.stats[type_url] = _TypeStats()
        stats.acked += 1
        stats.last_rejected = False
        sub.last_update = self._last_touch = time.time()
        if type_url == SECRET_TYPE_URL and self.held_certificates is not None:
            state.mtls_stale = True
            state.mtls_acked = (info.identity.key, version)
            news = True
        if news:
            self._touch(*key)
        else:
            self._defer(key)

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
        await self._write([(mesh, name)])

    async def _record_mtls(self, state: _ProxyState) -> None:
        state.mtls_stale = False
        assert self.held_certificates is not None
        node, version = state.mtls_acked
        held = await self.held_certificates.acked(state.mesh, node, version)
        if held is None:  # the snapshot moved on: a newer secrets version is on its way, its ACK tells
            return
        before = {c.fingerprint for c in state.held.certs} if state.held is not None else set()
        if before and before != {c.fingerprint for c in held.certs}:
            state.regenerations += 1
        state.held = held
        state.mtls = held.mtls(state.regenerations)

    def connected_held(self) -> dict[tuple[str, str], Held]:
        """(mesh, name) -> what each connected proxy holds (the expiry watch reads it)."""
        return {key: state.held for key, state in self._proxies.items() if state.online and state.held is not None}

    # -- writing --------------------------------------------------------------------------

    def document(self, mesh: str, name: str) -> dict[str, Any]:
        """The insight to write: this replica's subscriptions merged into the stored one."""
        return self._merged(mesh, name, self.stored(mesh, name) if self.stored is not None else None)

    def _merged(self, mesh: str, name: str, stored: Resource | None) -> dict[str, Any]:
        state = self._state(mesh, name)
        subscriptions = [s.as_dict(self.instance_id, state.versions) for s in state.subscriptions]
        if stored is not None:
            # A proxy that moved between replicas of the zone: what the other replica recorded stays,
            # ordered by connect time, so the last subscription is the proxy's latest stream.
            others = [
                s
                for s in (stored.spec.get("subscriptions") or [] if stored is not None else [])
                if isinstance(s, dict) and s.get("controlPlaneInstanceId") != self.instance_id
            ]
            if others:
                subscriptions = sorted([*others, *subscriptions], key=lambda s: str(s.get("connectTime") or ""))
                subscriptions = subscriptions[-MAX_SUBSCRIPTIONS:]
        spec: dict[str, Any] = {"subscriptions": subscriptions}
        if state.mtls:
            spec["mTLS"] = state.mtls
        return spec

    def _take(self, everything: bool = False) -> list[Key]:
        """The next batch: what is new first, then what is due (everything pending: all of it)."""
        batch: list[Key] = []
        while self._urgent and len(batch) < self.batch_size:
            key = next(iter(self._urgent))
            del self._urgent[key]
            batch.append(key)
        moment = self.clock()
        while self._deferred and len(batch) < self.batch_size:
            key, due = next(iter(self._deferred.items()))
            if due > moment and not everything:
                break
            del self._deferred[key]
            batch.append(key)
        return batch

    async def _write(self, keys: list[Key]) -> None:
        """One store batch with the insights of ``keys``."""
        for key in keys:  # no longer waiting (an unregistration writes at once)
            self._urgent.pop(key, None)
            self._deferred.pop(key, None)
        for mesh, name in keys:
            state = self._state(mesh, name)
            if state.mtls_stale:  # a certificate ACK: which certificate is on the Dataplane's services
                await self._record_mtls(state)
        try:
            await self._merge_and_write(keys)
        except Exception as exc:  # a store outage: keep serving, try again when they are due
            log.warning("dataplane_insights_write_failed", count=len(keys), error=str(exc))
            for key in keys:
                self._defer(key)

    async def _merge_and_write(self, keys: list[Key]) -> None:
        """Write the insights of ``keys``, merged into what is stored. With other replicas of the
        zone (``self.stored`` given), each write is conditional on the version the merge read: two
        replicas writing one proxy's insight at once cannot lose either's subscriptions. The loser
        reads the stored insights again (from the store: its view may not have the winner's write
        yet), merges again and retries."""
        read = self.stored
        stored = {(mesh, name): read(mesh, name) if read is not None else None for mesh, name in keys}
        for attempt in range(1, MERGE_ATTEMPTS + 1):
            resources = [
                Resource(type="DataplaneInsight", name=name, mesh=mesh, spec=self._merged(mesh, name, stored[key]))
                for key in keys
                for mesh, name in (key,)
            ]
            # Alone (no ``stored`` to merge into) a replica's write needs no check: nobody else writes.
            expected = None
            if read is not None:
                expected = {
                    ResourceKey("DataplaneInsight", mesh, name): res.version if res is not None else 0
                    for (mesh, name), res in stored.items()
                }
            try:
                homeless = await self.manager.upsert_batch(resources, expected=expected)
                for res in homeless:
                    log.debug("dataplane_insight_mesh_gone", mesh=res.mesh, name=res.name)
                WRITTEN.inc(len(resources) - len(homeless))
                return
            except Conflict as exc:
                if attempt == MERGE_ATTEMPTS:
                    raise
                log.info("dataplane_insight_merge_retried", insight=str(exc.key), attempt=attempt)
                store = self.manager.store
                stored = {(mesh, name): await store.find("DataplaneInsight", name, mesh) for mesh, name in keys}

    async def flush_due(self) -> int:
        """Write one batch of what is new or due; how many insights it held."""
        batch = self._take()
        if batch:
            await self._write(batch)
        return len(batch)

    async def flush(self) -> None:
        """Write everything pending now (in batches)."""
        while batch := self._take(everything=True):
            await self._write(batch)

    async def _quiet(self, limit: float) -> None:
        """Wait until no ACK came for QUIET_SECONDS, at most ``limit`` seconds."""
        step = self.flush_interval / 10
        for _ in range(max(1, round(limit / step))):
            if time.time() - self._last_touch >= QUIET_SECONDS:
                return
            await asyncio.sleep(step)

    async def _until_due(self) -> None:
        """Wait until something is new, or the first deferred insight is due."""
        self._wake.clear()
        if self._urgent:
            return
        timeout = None
        if self._deferred:
            timeout = max(0.0, next(iter(self._deferred.values())) - self.clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _run(self) -> None:
        while True:
            await self._until_due()
            # Let the burst that woke us finish first: after a mesh-wide change every proxy ACKs
            # within a few seconds, and writing insights meanwhile would slow those very pushes.
            # So wait for the interval, then for a quiet moment (bounded: 5 intervals in all).
            await asyncio.sleep(self.flush_interval)
            await self._quiet(4 * self.flush_interval)
            # One batch per interval, each after a quiet moment (bounded: a long stream of changes
            # still lets insights reach the store).
            while await self.flush_due():
                await asyncio.sleep(self.flush_interval)
                await self._quiet(self.flush_interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InsightRecorder]:
        PENDING.set_function(lambda: self.pending)  # read when scraped: nothing to update per ACK
        task = asyncio.create_task(self._run(), name="dataplane-insights")
        try:
            yield self
        finally:
            await cancel_and_wait([task])
            # This instance stops serving: every stream it held is disconnected.
            for state in self._proxies.values():
                for sub in state.subscriptions:
                    if sub.disconnect_time is None:
                        sub.disconnect_time = now()
                        self._touch(state.mesh, state.name)
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


# -- streams of replicas that died -------------------------------------------------------------

FINALIZE_INTERVAL = 5.0
# A sweep when nothing seems to have changed, in case a write of a dying replica landed late.
FINALIZE_EVERY = 60.0
# What the streams of a zone's proxies are recorded in (each replica records the streams it holds).
STREAM_INSIGHTS = ("DataplaneInsight", "ZoneIngressInsight", "ZoneEgressInsight")


def close_dead_streams(spec: dict[str, Any], alive: set[str], closed: str) -> dict[str, Any] | None:
    """The insight with the open subscriptions of control plane instances that are gone closed at
    ``closed``; None when nothing changes."""
    subs = spec.get("subscriptions") or []
    out = [
        {**s, "disconnectTime": closed}
        if isinstance(s, dict) and not s.get("disconnectTime") and s.get("controlPlaneInstanceId") not in alive
        else s
        for s in subs
    ]
    return {**spec, "subscriptions": out} if out != subs else None


class StreamFinalizer:
    """Leader-only on a zone: closes the subscriptions that replicas which are no longer alive (a
    replica killed, or this one's previous run) left open, so their proxies show offline until they
    reconnect to a live replica. Live replicas' streams are theirs to record.

    It reads the insights from ``view`` (the zone's in-memory view: nothing decoded again) and
    writes through ``store`` (the leader's fenced store). A sweep reads every insight of the zone,
    so it runs only when there can be something to close: at start, when the set of live replicas
    changed, after a sweep whose write lost a race, and every ``FINALIZE_EVERY`` seconds; a zone
    whose replicas stay up does no work proportional to its proxies."""

    def __init__(
        self,
        store: Any,
        members: Callable[[], Any],
        zone: str,
        interval: float = FINALIZE_INTERVAL,
        *,
        view: Any = None,
    ) -> None:
        self.store = store
        self.view = store if view is None else view
        self.members = members
        self.zone = zone
        self.interval = interval
        self.sweeps = 0  # (tests, diagnostics)
        self.incomplete = False  # the last sweep lost a race: the next round looks again

    async def sweep(self, alive: set[str] | None = None) -> int:
        """Close what dead replicas left open; the number of insights written. Raises nothing for
        an insight that changed meanwhile: ``self.incomplete`` says the next round must look again."""
        if alive is None:
            alive = set(await self.members())
        self.sweeps += 1
        self.incomplete = False
        closed = 0
        for rtype in STREAM_INSIGHTS:
            for res in (await self.view.list(rtype)).items:
                if rtype != "DataplaneInsight" and not is_local(res, self.zone):
                    continue  # another zone's ingress, as global pushed it
                spec = close_dead_streams(res.spec, alive, format_time(now()) or "")
                if spec is None:
                    continue
                try:
                    await self.store.update(dataclasses.replace(res, spec=spec))
                    closed += 1
                except (Conflict, NotFound):  # changed meanwhile (or the view is behind): look again
                    self.incomplete = True
        if closed:
            log.info("dead_streams_closed", zone=self.zone, insights=closed)
        return closed

    async def _loop(self) -> None:
        swept_for: frozenset[str] | None = None
        last = -FINALIZE_EVERY
        while True:
            try:
                alive = frozenset(await self.members())
                due = time.monotonic() - last >= FINALIZE_EVERY
                if alive != swept_for or due:
                    last = time.monotonic()
                    await self.sweep(set(alive))
                    swept_for = None if self.incomplete else alive
            except Exception as exc:
                swept_for = None
                log.warning("stream_insight_sweep_failed", zone=self.zone, error=str(exc))
            await asyncio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StreamFinalizer]:
        task = asyncio.create_task(self._loop(), name="zone-stream-finalizer")
        try:
            yield self
        finally:
            await cancel_and_wait([task])


def finalizer_component(view: Any) -> Callable[[Any], contextlib.AbstractAsyncContextManager[StreamFinalizer]]:
    """The zone's ``zone-insight-finalizer`` leader component (zone_cp/app.py), reading ``view``."""

    @contextlib.asynccontextmanager
    async def component(cp: Any) -> AsyncIterator[StreamFinalizer]:
        finalizer = StreamFinalizer(cp.leader_store, cp.elector.members, cp.config.zone or "default", view=view)
        async with finalizer.running():
            yield finalizer

    return component


# --- ZoneIngressInsight / ZoneEgressInsight ------------------------------------------------------


class ZoneProxyInsights:
    """One subscription per ADS stream of a zone proxy, written at once on open and close.

    Zone proxies are few and their streams long-lived, so there is no batching. The insight is
    uploaded by KDS (ZoneIngressInsight on to the other zones, which use an ingress only while
    its last subscription is open: ``crosszone.online``).
    """

    def __init__(self, store: Store, instance_id: str, zone: str) -> None:
        self.store = store
        self.instance_id = instance_id
        self.zone = zone
        self._ids: dict[int, str] = {}  # xDS stream id -> subscription id

    async def _change(
        self, proxy_type: str, name: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> None:
        rtype = INSIGHT_TYPES[proxy_type]
        for _ in range(5):  # bounded: only a concurrent write of the same insight makes it retry
            current = await self.store.find(rtype, name)
            subscriptions = change(list((current.spec.get("subscriptions") if current else None) or []))
            subscriptions = subscriptions[-MAX_SUBSCRIPTIONS:]
            try:
                if current is None:
                    await self.store.create(Resource(type=rtype, name=name, spec={"subscriptions": subscriptions}))
                else:
                    spec = {**current.spec, "subscriptions": subscriptions}
                    await self.store.update(dataclasses.replace(current, spec=spec))
                return
            except (AlreadyExists, Conflict):
                continue
        log.warning("zone_proxy_insight_not_written", type=rtype, name=name)

    async def stream_open(self, info: StreamInfo) -> None:
        identity = info.identity
        if identity.proxy_type is ProxyType.DATAPLANE:
            return
        sub_id = str(uuid.uuid4())
        self._ids[info.stream_id] = sub_id
        subscription = {"id": sub_id, "controlPlaneInstanceId": self.instance_id, "connectTime": format_time(now())}
        await self._change(identity.proxy_type.value, identity.name, lambda subs: [*subs, subscription])
        log.info("zone_proxy_online", type=identity.proxy_type.value, name=identity.name, peer=info.peer)

    async def stream_close(self, info: StreamInfo) -> None:
        identity = info.identity
        sub_id = self._ids.pop(info.stream_id, None)
        if identity.proxy_type is ProxyType.DATAPLANE or sub_id is None:
            return
        closed = format_time(now())

        def close(subs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**s, "disconnectTime": closed} if s.get("id") == sub_id else s for s in subs]

        await self._change(identity.proxy_type.value, identity.name, close)
        log.info("zone_proxy_offline", type=identity.proxy_type.value, name=identity.name)

    async def forget(self, proxy_type: str, name: str) -> None:
        """The proxy unregistered: its insight goes with its resource."""
        with contextlib.suppress(NotFound):
            await self.store.delete(INSIGHT_TYPES[proxy_type], name)

    def install(self, callbacks: Any) -> None:
        callbacks.stream_open.append(self.stream_open)
        callbacks.stream_close.append(self.stream_close)
