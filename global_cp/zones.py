"""The zone registry at global: Zone resources, ZoneInsights, online state.

A Zone is created the first time a zone connects (``enabled: true``); ``enabled: false``
stops its sync. Each stream is a *subscription* in the zone's ZoneInsight (connect and
disconnect time, versions, per-type counters, last heartbeat). A zone is online while it
has an open stream here whose last message is younger than the heartbeat timeout, or,
for another replica's stream, while its last recorded heartbeat is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.kds.session import Stats
from zonemesh.shared.resources.labels import stamped
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, Resource, format_time, parse_time
from zonemesh.shared.store import Store

log = structlog.get_logger(__name__)

MAX_SUBSCRIPTIONS = 5  # ZoneInsight keeps the last few streams, newest last
# Heartbeats and counters of open streams are persisted this often (Kuma: zoneInsightFlushInterval
# 10s); connects and disconnects at the next flush tick. The API reads live values regardless:
# writing every zone's insight on every heartbeat only stalled the streams of a 50-zone global.
INSIGHT_PERSIST_INTERVAL = 5.0


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
    def __init__(self, store: Store, instance_id: str, heartbeat_timeout: float, flush_interval: float = 1.0) -> None:
        self.store = store
        self.instance_id = instance_id
        self.heartbeat_timeout = heartbeat_timeout
        self.flush_interval = flush_interval
        self.active: dict[str, Subscription] = {}  # zone -> its open stream on this instance
        self._insights: dict[str, dict[str, Any]] = {}  # zone -> ZoneInsight spec (cache of what is stored)
        self._dirty: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for res in (await self.store.list("ZoneInsight")).items:
            self._insights[res.name] = res.spec
            self._close_stale(res.name)
        await self.flush()
        self._task = asyncio.create_task(self._flush_loop(), name="zone-insight-flush")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        for sub in list(self.active.values()):
            self.disconnected(sub)
        await self.flush()

    def _close_stale(self, zone: str) -> None:
        """Subscriptions left open by a global that died: closed at their last heartbeat."""
        insight = self._insights[zone]
        last = parse_time((insight.get("healthCheck") or {}).get("time"))
        for sub in insight.get("subscriptions") or []:
            stale = last is None or _age(last) > self.heartbeat_timeout + INSIGHT_PERSIST_INTERVAL
            if sub.get("disconnectTime") is None and stale:
                sub["disconnectTime"] = format_time(last) or sub.get("connectTime")
                self._dirty.add(zone)

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
        insight = self._insights.get(zone) or {}
        subs = insight.get("subscriptions") or []
        if not subs or subs[-1].get("disconnectTime") is not None:
            return False
        last = parse_time((insight.get("healthCheck") or {}).get("time"))
        # Another replica's stream: its heartbeats reach the store every INSIGHT_PERSIST_INTERVAL.
        return last is not None and _age(last) <= self.heartbeat_timeout + INSIGHT_PERSIST_INTERVAL

    def insight(self, zone: str) -> dict[str, Any]:
        spec = self._insights.get(zone)
        if spec is None:
            return {}
        sub = self.active.get(zone)
        if sub is not None:  # counters and last heartbeat of the open stream as of now
            spec = dict(spec)
            spec["subscriptions"] = [*spec.get("subscriptions", [])[:-1], sub.as_dict()]
            spec["healthCheck"] = {"time": _ts(sub.last_heartbeat)}
        return spec

    # -- subscriptions ------------------------------------------------------------------

    def connected(self, sub: Subscription) -> Subscription | None:
        """Record a new stream; returns the stream it replaces (same zone), if any."""
        previous = self.active.get(sub.zone)
        self.active[sub.zone] = sub
        insight = self._insights.setdefault(sub.zone, {})
        subs = [s for s in insight.get("subscriptions") or [] if s.get("id") != sub.id]
        # A zone holds one stream at a time: a new one means any older one has ended (e.g. its
        # global died before recording the disconnect).
        for old in subs:
            if old.get("disconnectTime") is None:
                old["disconnectTime"] = format_time(sub.connect_time)
        subs.append(sub.as_dict())
        insight["subscriptions"] = subs[-MAX_SUBSCRIPTIONS:]
        insight["healthCheck"] = {"time": _ts(sub.last_heartbeat)}
        self._dirty.add(sub.zone)
        return previous

    def heartbeat(self, sub: Subscription, status: bytes) -> None:
        sub.last_heartbeat = time.time()
        sub.last_seen = time.monotonic()
        if status:
            with contextlib.suppress(ValueError, RecursionError):  # a zone's status is informative only
                sub.status = json.loads(status)

    def disconnected(self, sub: Subscription) -> None:
        sub.disconnect_time = datetime.now(UTC)
        if self.active.get(sub.zone) is sub:
            del self.active[sub.zone]
        self._update_subscription(sub)
        self._dirty.add(sub.zone)

    def _update_subscription(self, sub: Subscription) -> None:
        insight = self._insights.setdefault(sub.zone, {})
        subs = insight.setdefault("subscriptions", [])
        for i, entry in enumerate(subs):
            if entry.get("id") == sub.id:
                subs[i] = sub.as_dict()
        insight["healthCheck"] = {"time": _ts(sub.last_heartbeat)}

    async def forget(self, zone: str) -> None:
        self._insights.pop(zone, None)
        self._dirty.discard(zone)

    async def flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        upserts = []
        for zone in sorted(dirty):
            sub = self.active.get(zone)
            if sub is not None:
                self._update_subscription(sub)
            if zone in self._insights:
                upserts.append(Resource(type="ZoneInsight", name=zone, spec=self._insights[zone]))
        if upserts:
            await self.store.batch(upserts=upserts)

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


def _age(ts: datetime) -> float:
    return (datetime.now(UTC) - ts).total_seconds()
