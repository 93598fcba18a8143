"""The zone registry at global: Zone resources, ZoneInsights, online state.

A Zone is created the first time a zone connects (``enabled: true``); ``enabled: false``
stops its sync. Each stream is a *subscription* in the zone's ZoneInsight (connect and
disconnect time, versions, per-type counters, last heartbeat). A zone is online while it
has an open stream here whose last message is younger than the heartbeat timeout, or,
for another replica's stream, while its last recorded heartbeat is. A global replica that
dies leaves its subscriptions open: the leader closes them (``ZoneInsightFinalizer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.kds.session import Stats
from zonemesh.shared.resources.labels import stamped
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, Resource, ResourceKey, format_time, parse_time
from zonemesh.shared.store import AlreadyExists, Conflict, EventKind, NotFound, Store, Watch

log = structlog.get_logger(__name__)

MAX_SUBSCRIPTIONS = 5  # ZoneInsight keeps the last few streams, newest last
# Heartbeats and counters of open streams are persisted this often (Kuma: zoneInsightFlushInterval
# 10s); connects and disconnects at the next flush tick. The API reads live values regardless:
# writing every zone's insight on every heartbeat only stalled the streams of a 50-zone global.
INSIGHT_PERSIST_INTERVAL = 5.0
FINALIZE_INTERVAL = 5.0  # how often the leader closes what dead global replicas left open


class ZoneDisabled(Exception):
    pass


def zone_enabled(zone: Resource) -> bool:
    return zone.spec.get("enabled", True) is not False


@dataclass
class Subscription:
    id: str
    zone: str
    global_instance_id: str
    zone_instance_id: str
    version: str
    features: list[str]
    config: dict[str, Any]
    stats: Stats
    connect_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    disconnect_time: datetime | None = None
    last_heartbeat: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    status: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        total = self.stats.total()
        return {
            "id": self.id,
            "globalInstanceId": self.global_instance_id,
            "zoneInstanceId": self.zone_instance_id,
            "connectTime": format_time(self.connect_time),
            "disconnectTime": format_time(self.disconnect_time),
            "status": {
                "lastUpdateTime": _ts(self.stats.last_update) if self.stats.last_update else None,
                "total": total,
                "stat": {t: s.as_dict() for t, s in sorted(self.stats.by_type.items())},
            },
            "version": {"zonemeshCp": {"version": self.version}},
            "features": self.features,
            "config": self.config,
            "authTokenProvided": True,
            "zoneStatus": self.status,
        }


def _ts(epoch: float) -> str | None:
    return format_time(datetime.fromtimestamp(epoch, UTC))


class ZoneRegistry:
    """Zones and their insights on one global replica.

    Each replica records the subscriptions of the streams it holds; several replicas may write one
    zone's insight (its stream moved), so a write merges: the subscriptions of other instances are
    kept as stored, this instance's are written from memory, and a zone holds one stream at a time
    (an older one still open is closed at the newer one's connect time). Other replicas' writes are
    followed from the store, so every replica tells online from offline the same way.
    """

    def __init__(self, store: Store, instance_id: str, heartbeat_timeout: float, flush_interval: float = 1.0) -> None:
        self.store = store
        self.instance_id = instance_id
        self.heartbeat_timeout = heartbeat_timeout
        self.flush_interval = flush_interval
        self.active: dict[str, Subscription] = {}  # zone -> its open stream on this instance
        self._ended: dict[str, list[Subscription]] = {}  # zone -> streams that ended here, not written yet
        self._insights: dict[str, dict[str, Any]] = {}  # zone -> ZoneInsight spec as stored (followed)
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        watch = self.store.watch(["ZoneInsight"])  # before listing: no gap
        for res in (await self.store.list("ZoneInsight")).items:
            self._insights[res.name] = res.spec
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="zone-insight-flush"),
            asyncio.create_task(self._follow(watch), name="zone-insight-follow"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        for sub in list(self.active.values()):
            self.disconnected(sub)
        with contextlib.suppress(Exception):  # the store may be gone: the leader's finalizer closes them then
            await self.flush()

    async def _follow(self, watch: Watch) -> None:
        async with watch:
            async for event in watch:
                res = event.resource
                if event.kind is EventKind.DELETED:
                    self._insights.pop(res.name, None)
                else:
                    self._insights[res.name] = res.spec

    # -- zones ----------------------------------------------------------------------------

    async def ensure_zone(self, zone: str) -> Resource:
        """The Zone resource, created on first connect. Raises ZoneDisabled when disabled."""
        res = await self.store.find("Zone", zone)
        if res is None:
            res = Resource(type="Zone", name=zone, spec={"enabled": True}, labels=stamped({}, ORIGIN_GLOBAL))
            with contextlib.suppress(Exception):  # created concurrently by another stream / replica
                res = await self.store.create(res)
                log.info("zone_created", zone=zone)
            res = await self.store.get("Zone", zone)
        if not zone_enabled(res):
            raise ZoneDisabled(
                f"zone {zone!r} is disabled on the global control plane (Zone.enabled=false); "
                "enable it there to resume sync"
            )
        return res

    def is_online(self, zone: str) -> bool:
        sub = self.active.get(zone)
        if sub is not None:
            return time.monotonic() - sub.last_seen <= self.heartbeat_timeout
        insight = self.insight(zone)  # with the streams that ended here and are not written yet
        subs = insight.get("subscriptions") or []
        if not subs or subs[-1].get("disconnectTime") is not None:
            return False
        last = parse_time((insight.get("healthCheck") or {}).get("time"))
        # Another replica's stream: its heartbeats reach the store every INSIGHT_PERSIST_INTERVAL.
        return last is not None and _age(last) <= self.heartbeat_timeout + INSIGHT_PERSIST_INTERVAL

    def insight(self, zone: str) -> dict[str, Any]:
        spec = self._insights.get(zone) or {}
        active = self.active.get(zone)
        ours = [*self._ended.get(zone, []), *([active] if active is not None else [])]
        if not ours:
            return spec
        # counters and last heartbeat of this replica's streams as of now, written or not yet
        return merged(spec, ours, self.instance_id, active)

    # -- subscriptions ------------------------------------------------------------------

    def connected(self, sub: Subscription) -> Subscription | None:
        """Record a new stream; returns the stream it replaces (same zone), if any."""
        previous = self.active.get(sub.zone)
        self.active[sub.zone] = sub
        if previous is not None:
            self._ended.setdefault(sub.zone, []).append(previous)
        self._dirty.add(sub.zone)
        return previous

    def heartbeat(self, sub: Subscription, status: bytes) -> None:
        sub.last_heartbeat = time.time()
        sub.last_seen = time.monotonic()
        if status:
            with contextlib.suppress(ValueError, RecursionError):  # a zone's status is informative only
                sub.status = json.loads(status)

    def disconnected(self, sub: Subscription) -> None:
        if sub.disconnect_time is None:
            sub.disconnect_time = datetime.now(UTC)
        if self.active.get(sub.zone) is sub:
            del self.active[sub.zone]
        ended = self._ended.setdefault(sub.zone, [])
        if sub not in ended:
            ended.append(sub)
        self._dirty.add(sub.zone)

    async def forget(self, zone: str) -> None:
        self._insights.pop(zone, None)
        self._ended.pop(zone, None)
        self._dirty.discard(zone)

    async def flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        for zone in sorted(dirty):
            try:
                await self._write(zone)
            except Exception:
                self._dirty.add(zone)  # written with the next flush
                raise

    async def _write(self, zone: str) -> None:
        """Merge this instance's subscriptions of ``zone`` into its stored insight (version-checked)."""
        active = self.active.get(zone)
        ours = [*self._ended.get(zone, []), *([active] if active is not None else [])]
        if not ours:
            return
        for _ in range(5):  # bounded: another replica writing the same insight makes it retry
            current = await self.store.find("ZoneInsight", zone)
            spec = merged(current.spec if current else {}, ours, self.instance_id, active)
            try:
                if current is None:
                    await self.store.create(Resource(type="ZoneInsight", name=zone, spec=spec))
                else:
                    await self.store.update(dataclasses.replace(current, spec=spec))
            except (AlreadyExists, Conflict):
                continue
            self._insights[zone] = spec
            self._ended.pop(zone, None)
            return
        raise Conflict(ResourceKey("ZoneInsight", "", zone), 0, 0)

    async def _flush_loop(self) -> None:
        last_persist = time.monotonic()
        while True:
            await asyncio.sleep(self.flush_interval)
            if time.monotonic() - last_persist >= INSIGHT_PERSIST_INTERVAL:
                last_persist = time.monotonic()
                self._dirty.update(self.active)
            try:
                await self.flush()
            except Exception as exc:  # a store hiccup must not end insight recording
                log.warning("zone_insight_flush_failed", error=str(exc))


def merged(
    stored: dict[str, Any], ours: list[Subscription], instance_id: str, active: Subscription | None
) -> dict[str, Any]:
    """A zone's insight with this instance's subscriptions (``ours``) put in: other instances' are kept
    as stored, except that one still open when ``active`` (this instance's open stream) connected is
    closed at that moment (a zone holds one stream at a time); newest last, at most MAX_SUBSCRIPTIONS."""
    by_id = {sub.id: sub for sub in ours}
    subs: list[dict[str, Any]] = []
    for entry in stored.get("subscriptions") or []:
        if not isinstance(entry, dict) or entry.get("id") in by_id:
            continue
        entry = dict(entry)
        if active is not None and entry.get("disconnectTime") is None:
            started = parse_time(entry.get("connectTime"))
            if started is None or started <= active.connect_time:
                entry["disconnectTime"] = format_time(active.connect_time)
        subs.append(entry)
    subs += [sub.as_dict() for sub in ours]
    subs.sort(key=lambda entry: str(entry.get("connectTime") or ""))
    spec = {**stored, "subscriptions": subs[-MAX_SUBSCRIPTIONS:]}
    if active is not None:
        spec["healthCheck"] = {"time": _ts(active.last_heartbeat)}
    elif ours and "healthCheck" not in spec:
        spec["healthCheck"] = {"time": _ts(max(sub.last_heartbeat for sub in ours))}
    return spec


def close_dead(spec: dict[str, Any], alive: set[str]) -> dict[str, Any] | None:
    """The insight with the open subscriptions of global instances that are gone closed at the last
    heartbeat recorded (their replica died without saying so); None when nothing changes."""
    subs = spec.get("subscriptions") or []
    last = (spec.get("healthCheck") or {}).get("time")
    changed = False
    out = []
    for entry in subs:
        if (
            isinstance(entry, dict)
            and entry.get("disconnectTime") is None
            and entry.get("globalInstanceId") not in alive
        ):
            entry = {**entry, "disconnectTime": max(str(last or ""), str(entry.get("connectTime") or "")) or None}
            changed = True
        out.append(entry)
    return {**spec, "subscriptions": out} if changed else None


class ZoneInsightFinalizer:
    """Leader-only: marks zones whose stream died with its global replica offline in the store, by
    closing the subscriptions of instances that are no longer alive (``Elector.members``). A zone that
    reconnects to another replica is closed there anyway; this covers a zone that went away too."""

    def __init__(self, store: Store, members: Any, interval: float = FINALIZE_INTERVAL) -> None:
        self.store = store
        self.members = members
        self.interval = interval

    async def sweep(self) -> int:
        alive = await self.members()
        closed = 0
        for res in (await self.store.list("ZoneInsight")).items:
            spec = close_dead(res.spec, alive)
            if spec is None:
                continue
            with contextlib.suppress(Conflict, NotFound):  # changed meanwhile: the next sweep looks again
                await self.store.update(dataclasses.replace(res, spec=spec))
                closed += 1
                log.info("zone_marked_offline", zone=res.name, reason="its global instance is gone")
        return closed

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("zone_insight_sweep_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ZoneInsightFinalizer]:
        task = asyncio.create_task(self._loop(), name="zone-insight-finalizer")
        try:
            yield self
        finally:
            await cancel_and_wait([task])


def _age(ts: datetime) -> float:
    return (datetime.now(UTC) - ts).total_seconds()
