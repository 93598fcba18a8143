"""The license on a zone: the copy global syncs (``License/default``) and strict, quota-limited admission.

A zone never takes a license of its own (one given to it is ignored, with a log line). With a
``warn`` license every proxy joins. With a ``strict`` license (the demo license, or an issued one
with ``enforcement: strict``) a proxy that would be counted (a sidecar Dataplane: gateways,
ingresses and egresses never are) joins only within the slots global granted this zone
(``LicenseQuota/<zone>``). When they are all in use the zone asks for more
(``LicenseQuotaRequest/request``, uploaded over KDS) and the proxy waits up to
``license_quota_wait``; without a grant it is refused with RESOURCE_EXHAUSTED and the reason.

Why the sum over zones never exceeds the limit (docs/license.md): global never grants more than is
free; a zone never uses more than its grant; and when a zone asks for *fewer* slots than it holds
(so that global may give them to another zone), it stops using them at the moment it asks — every
request not yet answered caps the zone's limit at what it asked for. A zone cut off from global
keeps its last grant and admits nothing beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

import structlog
from aiohttp import web
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.config import Config
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.license import metrics
from zonemesh.shared.license.counting import counted
from zonemesh.shared.resources.model import ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL, Resource
from zonemesh.shared.resources.types.license import QUOTA_REQUEST_NAME
from zonemesh.shared.store import EventKind, Store

log = structlog.get_logger(__name__)

REQUEST_NAME = QUOTA_REQUEST_NAME
RELEASE_DELAY = 5.0  # seconds a zone keeps slots it no longer uses before giving them back
OVER_QUOTA_LOG_EVERY = 10.0
METRICS_TICK = 5.0
LICENSE_NAME = "default"

# The running zone license of each store: how zone_cp/admission.py finds it without extra wiring.
_GATES: WeakKeyDictionary[Store, ZoneLicense] = WeakKeyDictionary()


class LicenseRefused(Exception):
    """The proxy may not join: the license's limit is reached (strict mode). The message says why."""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class ZoneLicense:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.zone = config.zone
        self.quota_wait = parse_duration(config.license_quota_wait)
        self.store: Store | None = None
        self.synced: dict[str, Any] | None = None  # spec of License/default from global
        self.holders: set[tuple[str, str]] = set()  # counted proxies of this zone holding a slot (mesh, name)
        self.unadmitted: set[tuple[str, str]] = set()  # counted Dataplanes stored without a slot (API-created)
        self.granted = 0
        self.answered = 0
        self.outstanding: list[tuple[int, int]] = []  # (seq, want) sent, not yet answered
        self.last_want = 0
        self.last_seq = 0
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._lower_since: float | None = None
        self._over_logged = -OVER_QUOTA_LOG_EVERY
        self._expires: datetime | None = None
        self._release_timer: asyncio.Task[None] | None = None
        self._write = asyncio.Event()

    # -- state ------------------------------------------------------------------------------

    @property
    def strict(self) -> bool:
        """Strict until global says otherwise: a zone that never heard from global admits nothing counted."""
        return self.synced is None or self.synced.get("enforcement") == "strict"

    def limit(self) -> int:
        caps = [want for seq, want in self.outstanding if seq > self.answered]
        return min([self.granted, *caps])

    def _next_seq(self) -> int:
        # Microseconds: increasing across restarts of this zone and roughly first-come-first-served across zones.
        self.last_seq = max(self.last_seq + 1, time.time_ns() // 1000)
        return self.last_seq

    def _ask(self) -> None:
        """Tell global how many slots this zone wants now (strict mode only).

        More: at once. Fewer: only after RELEASE_DELAY, so that a proxy that re-registers (an agent
        restart) takes its slot back without asking global, even while global is unreachable."""
        if not self.strict:
            return
        want = len(self.holders) + self.waiting
        if want >= self.last_want:
            self._lower_since = None
            if want == self.last_want:
                return
        else:
            now = time.monotonic()
            if self._lower_since is None:
                self._lower_since = now
            if now - self._lower_since < RELEASE_DELAY:
                self._schedule_release()
                return
            self._lower_since = None
        seq = self._next_seq()
        self.outstanding.append((seq, want))
        self.last_want = want
        self._write.set()

    def _schedule_release(self) -> None:
        if self._release_timer is None or self._release_timer.done():
            self._release_timer = asyncio.get_running_loop().create_task(self._release_later())

    async def _release_later(self) -> None:
        await asyncio.sleep(RELEASE_DELAY)
        self._ask()

    def _apply_grant(self, spec: dict[str, Any]) -> None:
        self.granted = _int(spec.get("slots"))
        self.answered = _int(spec.get("answered"))
        self.outstanding = [(s, w) for s, w in self.outstanding if s > self.answered]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the component -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def run(self, cp: Any) -> AsyncIterator[ZoneLicense]:
        if self.config.license_path or self.config.license_inline:
            log.warning(
                "license_ignored",
                zone=self.zone,
                reason="only the global control plane takes a license; zones receive it from global over KDS",
            )
        store: Store = cp.store
        self.store = store
        watch = store.watch(["License", "LicenseQuota", "Dataplane"])  # before loading: no gap
        try:
            await self._load(store)
        except BaseException:
            watch.close()
            raise
        self._ask()
        self._update_metrics()
        _GATES[store] = self
        tasks = [
            asyncio.create_task(self._follow(watch), name="zone-license-watch"),
            asyncio.create_task(self._writer(), name="zone-license-request"),
            asyncio.create_task(self._metrics_tick(), name="zone-license-metrics"),
        ]
        log.info("zone_license_ready", zone=self.zone, synced=self.synced is not None, granted=self.granted)
        try:
            yield self
        finally:
            _GATES.pop(store, None)
            if self._release_timer is not None:
                tasks.append(self._release_timer)
            await cancel_and_wait(tasks)
            watch.close()

    async def _load(self, store: Store) -> None:
        lic = await store.find("License", LICENSE_NAME)
        self.synced = lic.spec if lic is not None else None
        grant = await store.find("LicenseQuota", self.zone)
        if grant is not None:
            self._apply_grant(grant.spec)
        stored = sorted((r for r in (await store.list("Dataplane")).items if counted(r)), key=_created)
        # Strict: at most the grant holds slots (oldest first); any excess was created through the API
        # beyond the quota and stays without a slot, as before the restart.
        keep = self.granted if self.strict else len(stored)
        self.holders = {(r.mesh, r.name) for r in stored[:keep]}
        self.unadmitted = {(r.mesh, r.name) for r in stored[keep:]}
        mine = await store.find("LicenseQuotaRequest", REQUEST_NAME)
        if mine is not None:
            seq, want = _int(mine.spec.get("seq")), _int(mine.spec.get("want"))
            self.last_seq, self.last_want = seq, want
            if seq > self.answered:
                # Requests sent before the restart may still be unanswered and one of them may have released
                # slots: until global answers, use no more than what is held now (never more than any of them).
                self.outstanding = [(seq, min(want, len(self.holders)))]

    async def _follow(self, watch: Any) -> None:
        async for event in watch:
            try:
                self._on_event(event)
            except Exception as exc:  # never stop following the license and the quota
                log.warning("zone_license_event_failed", resource=str(event.resource.key), error=repr(exc))
            await self._notify()

    def _on_event(self, event: Any) -> None:
        res = event.resource
        deleted = event.kind is EventKind.DELETED
        if res.type == "License" and res.name == LICENSE_NAME:
            before = self.strict
            self.synced = None if deleted else res.spec
            if not deleted:
                log.info(
                    "license_synced",
                    zone=self.zone,
                    allowed=res.spec.get("allowedDataplaneProxies"),
                    demo=res.spec.get("demo"),
                    enforcement=res.spec.get("enforcement"),
                )
            if self.strict and not before:
                self.last_want = -1  # now strict: tell global what this zone holds
                self._ask()
            if not self.strict:
                self.holders |= self.unadmitted
                self.unadmitted.clear()
            self._update_metrics()
        elif res.type == "LicenseQuota" and res.name == self.zone:
            self._apply_grant({} if deleted else res.spec)
            self._update_metrics()
        elif res.type == "Dataplane":
            key = (res.mesh, res.name)
            if deleted or not counted(res):
                self.holders.discard(key)
                self.unadmitted.discard(key)
            elif key not in self.holders:
                # Not admitted through registration (created through the API): it holds a slot if one is
                # free; otherwise its proxy is refused when it connects (see `connection`).
                if not self.strict or len(self.holders) < self.limit():
                    self.holders.add(key)
                    self.unadmitted.discard(key)
                elif key not in self.unadmitted:
                    self.unadmitted.add(key)
                    if time.monotonic() - self._over_logged >= OVER_QUOTA_LOG_EVERY:  # not one line per proxy
                        self._over_logged = time.monotonic()
                        log.warning(
                            "dataplane_over_license_quota",
                            zone=self.zone,
                            mesh=res.mesh,
                            name=res.name,
                            without_slot=len(self.unadmitted),
                            reason="created without registration while every slot of this zone is in use: "
                            "its proxy is refused when it connects unless a slot frees up",
                        )
            self._ask()

    async def _writer(self) -> None:
        """Writes the latest request; KDS uploads it. Intermediate requests may be coalesced away: safe,
        since global only ever acts on a request it receives and the zone honours every one it sent."""
        assert self.store is not None
        while True:
            await self._write.wait()
            self._write.clear()
            spec = {"zone": self.zone, "want": self.last_want, "seq": self.last_seq, "used": len(self.holders)}
            labels = {ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: self.zone}
            try:
                await self.store.batch(
                    upserts=[Resource(type="LicenseQuotaRequest", name=REQUEST_NAME, spec=spec, labels=labels)]
                )
            except Exception as exc:
                log.warning("license_quota_request_failed", zone=self.zone, error=str(exc))
                await asyncio.sleep(1)
                self._write.set()

    def _update_metrics(self) -> None:
        spec = self.synced or {}
        metrics.DATAPLANES_ALLOWED.set(_int(spec.get("allowedDataplaneProxies")))
        metrics.DATAPLANES_ACTIVE.set(_int(spec.get("activeDataplaneProxies")))
        expiry = spec.get("expirationDate")
        if isinstance(expiry, str):
            with contextlib.suppress(ValueError):
                self._expires = datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        if self._expires is not None:
            metrics.EXPIRY_SECONDS.set((self._expires - datetime.now(UTC)).total_seconds())

    async def _metrics_tick(self) -> None:
        """The expiry countdown moves with time, not only when global sends something."""
        while True:
            await asyncio.sleep(METRICS_TICK)
            self._update_metrics()

    # -- admission ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admission(self, dataplane: Resource) -> AsyncIterator[None]:
        """Hold a slot for ``dataplane`` while it is stored; raises LicenseRefused when none is free."""
        key = (dataplane.mesh, dataplane.name)
        if not counted(dataplane) or key in self.holders:
            yield  # a gateway, or a proxy that already holds its slot (re-registration)
            return
        if not self.strict:
            self.holders.add(key)
        else:
            await self._reserve(key)
        try:
            yield
        except BaseException:
            assert self.store is not None
            if await self.store.find("Dataplane", dataplane.name, dataplane.mesh) is None:
                self.holders.discard(key)
                self._ask()
                await self._notify()
            raise

    async def connection(self, mesh: str, name: str) -> None:
        """An xDS stream opens for ``mesh/name``: a Dataplane stored without a slot needs one now."""
        key = (mesh, name)
        if key not in self.unadmitted:
            return
        if self.strict:
            await self._reserve(key)
        else:
            self.holders.add(key)
        self.unadmitted.discard(key)

    async def _reserve(self, key: tuple[str, str]) -> None:
        deadline = time.monotonic() + self.quota_wait
        self.waiting += 1
        try:
            async with self._changed:
                while True:
                    if key in self.holders:
                        return
                    if len(self.holders) < self.limit():
                        self.holders.add(key)  # no await between the check and the add: no overshoot
                        return
                    self._ask()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LicenseRefused(self._refusal())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=left)
        finally:
            self.waiting -= 1
            self._ask()

    def _refusal(self) -> str:
        spec = self.synced
        if spec is None:
            return (
                "license limit reached: this zone has not received the license from the global control plane yet, "
                "so it admits no data plane proxies; connect the zone to global"
            )
        allowed = spec.get("allowedDataplaneProxies")
        kind = "demo license" if spec.get("demo") else "license (strict enforcement)"
        return (
            f"license limit reached: the {kind} allows {allowed} data plane proxies across all zones; "
            f"zone {self.zone!r} holds {self.granted} slot(s), all in use, and the global control plane granted "
            f"no more within {self.quota_wait:g}s (all slots taken, or global unreachable). "
            "Remove a proxy or install a license that allows more"
        )

    # -- HTTP API ----------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        spec = dict(self.synced or {})
        spec.pop("firstStart", None)
        warnings = list(spec.get("warnings") or [])
        if self.synced is None:
            warnings.append("no license has been received from the global control plane yet")
        return {
            "allowedDataplaneProxies": spec.get("allowedDataplaneProxies"),
            "activeDataplaneProxies": spec.get("activeDataplaneProxies"),
            "expirationDate": spec.get("expirationDate"),
            "demo": spec.get("demo"),
            "enforcement": spec.get("enforcement", "strict"),
            "customer": spec.get("customer"),
            "warnings": warnings,
            "source": "global",
            "zone": {
                "name": self.zone,
                "activeDataplaneProxies": len(self.holders),
                "quota": {"grantedSlots": self.granted, "limit": self.limit(), "wantedSlots": self.last_want},
            },
        }

    def routes(self) -> list[web.RouteDef]:
        async def get_license(request: web.Request) -> web.Response:
            return web.json_response(self.view())

        return [web.get("/license", get_license)]


def _created(res: Resource) -> tuple[float, str]:
    return (res.creation_time.timestamp() if res.creation_time else 0.0, res.name)


def license_for(store: Store) -> ZoneLicense | None:
    return _GATES.get(store)


async def license_connection(store: Store, mesh: str, name: str) -> None:
    """What zone_cp/admission.py calls when a data plane proxy opens its xDS stream; raises LicenseRefused."""
    gate = license_for(store)
    if gate is not None:
        await gate.connection(mesh, name)


@contextlib.asynccontextmanager
async def license_admission(store: Store, dataplane: Resource) -> AsyncIterator[None]:
    """What zone_cp/admission.py wraps around storing a joining proxy's Dataplane: a no-op
    on a control plane without a zone license (standalone)."""
    gate = license_for(store)
    if gate is None:
        yield
        return
    async with gate.admission(dataplane):
        yield
