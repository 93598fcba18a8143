"""The license authority on the global control plane.

- The license in force is the one in the store (GlobalSecret ``zonemesh-license``), the same for
  every replica on one etcd. A replica puts its configured license there (``--license-path`` /
  ``ZONEMESH_LICENSE_PATH`` / ``KMESH_LICENSE_PATH``, or ``..._LICENSE_INLINE``) when it starts, and
  again when its file changes; ``PUT /license`` on any replica puts one there too. Without any, the
  pre-bundled demo license (5 proxies, 30 days from the first start, recorded in the store). An
  invalid, altered or expired license stops the start (`StartupRefused`) with the exact reason.
- While running: a license that expires keeps the control plane running and logs errors; warnings
  (fewer than 30 days left, more proxies than allowed) are logged and shown in ``GET /license``.
- The leader (one replica at a time, shared/components.py) counts active proxies across all zones
  from the synced Dataplanes and DataplaneInsights (gateways, ingresses and egresses excluded),
  publishes the ``License/default`` resource that KDS carries to every zone, and grants zones proxy
  slots (``LicenseQuota``) in answer to their ``LicenseQuotaRequest``s so that the sum of grants
  never exceeds the limit (docs/license.md).
- A zone gets no more slots than it can use (``quota_cap``): what it asks for is capped by the
  counted proxies it has uploaded, so that a compromised zone asking for every slot cannot starve
  the others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import error_response
from zonemesh.shared.config import Config
from zonemesh.shared.license import metrics
from zonemesh.shared.license.counting import ActiveCount, counted
from zonemesh.shared.license.format import (
    WARN_BEFORE,
    License,
    LicenseError,
    check_expiry,
    demo_license,
    format_expiry,
    parse,
)
from zonemesh.shared.license.keys import trusted_keys
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, ORIGIN_LABEL, ZONE_LABEL, Resource, ResourceKey
from zonemesh.shared.resources.types.license import QUOTA_REQUEST_NAME
from zonemesh.shared.runtime import StartupRefused
from zonemesh.shared.store import EventKind, Store

log = structlog.get_logger(__name__)

LICENSE_NAME = "default"
INSTALLED_SECRET = "zonemesh-license"  # GlobalSecret holding the license in force (every replica reads it)
SOURCE_LABEL = "zonemesh.io/license-source"  # where that license came from: a path, "inline" or "api"
TICK = 1.0  # file change and expiry checks
EXPIRED_LOG_EVERY = 60.0
WARNING_LOG_EVERY = 60.0
PUBLISH_DEBOUNCE = 0.2
# A zone that asks for more slots than it holds gets at most twice the counted proxies (Dataplanes)
# it has uploaded, and at least this many beyond them: room for proxies joining while their
# Dataplanes are on their way to global (a burst of N from nothing takes about log2(N) rounds).
QUOTA_HEADROOM = 2


@dataclass
class Grant:
    slots: int = 0
    answered: int = 0  # the seq of the last request this grant answers


@dataclass
class Request:
    want: int
    seq: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def quota_cap(uploaded: int) -> int:
    """The most slots a zone with ``uploaded`` counted proxies at global may grow to."""
    return uploaded + max(uploaded, QUOTA_HEADROOM)


def allocate(
    allowed: int, grants: dict[str, Grant], requests: dict[str, Request], caps: Mapping[str, int] | None = None
) -> dict[str, Grant]:
    """Answer quota requests without ever letting the sum of grants exceed ``allowed``.

    Releases first (they free slots), then growth, oldest request first. A request asking for
    fewer slots than granted is answered at once (the zone promised not to use more than it
    asked for since it sent it). A request for more gets what is free, up to the zone's cap
    (``caps``; never below what it holds, so a cap never takes back slots the zone did not
    release); if that is not enough it stays open and is served again when slots are freed or
    the cap grows. Returns the grants that changed.
    """

    def wanted(zone: str, req: Request) -> int:
        held = grants.get(zone, Grant()).slots
        if caps is None or zone not in caps or req.want <= held:
            return req.want
        return min(req.want, max(held, caps[zone]))

    free = allowed - sum(g.slots for g in grants.values())
    changed: dict[str, Grant] = {}
    order = sorted(requests.items(), key=lambda kv: (wanted(*kv) > grants.get(kv[0], Grant()).slots, kv[1].seq))
    for zone, req in order:
        grant = grants.get(zone, Grant())
        want = wanted(zone, req)
        if req.seq <= grant.answered and (want <= grant.slots or free <= 0):
            continue  # answered already, and nothing more to give
        slots = want if want <= grant.slots else grant.slots + max(0, min(want - grant.slots, free))
        free -= slots - grant.slots
        new = Grant(slots, max(req.seq, grant.answered))
        if new != grant:
            grants[zone] = changed[zone] = new
    return changed


class LicenseAuthority:
    """Constructed by the global assembly (so that a bad configured license stops the start before
    anything else). Two components (docs/ha.md):

    - ``serve`` on every replica: puts this replica's configured license in force at start, watches
      its file, answers ``GET``/``PUT /license``, and follows the license in force in the store (the
      GlobalSecret ``zonemesh-license``), whichever replica put it there;
    - ``run`` on the leader only: counts proxies, answers quota requests, publishes ``License/default``.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.license_file = Path(config.license_path).expanduser() if config.license_path else None
        try:
            self.keys = trusted_keys(config.license_trusted_keys)
            self.configured = self._load_configured()
        except LicenseError as exc:
            raise StartupRefused(f"invalid license: {exc}") from None
        self.license: License = self.configured or demo_license(datetime.now(UTC))
        self.first_start: datetime | None = None
        self.store: Store | None = None  # reads, and the license in force (every replica)
        self.writer: Store | None = None  # what the leader writes grants and License/default through
        self.leading = False
        self.count = ActiveCount()
        self.grants: dict[str, Grant] = {}
        self.requests: dict[str, Request] = {}
        self.uploaded: dict[str, set[tuple[str, str]]] = {}  # zone -> its counted Dataplanes here (mesh, name)
        self._zone_of: dict[tuple[str, str], str] = {}  # uploaded Dataplane -> its zone (deletes carry a key only)
        self.warnings: list[str] = []
        self.published: dict[str, Any] = {}  # License/default as the leader published it (any replica)
        self.published_grants: dict[str, Grant] = {}
        self.published_requests: dict[str, int] = {}
        self._file_state: tuple[int, int] | None = None
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._expired_logged = 0.0
        self._logged: dict[str, float] = {}  # warning kind -> when it was last logged
        self._unwritten: set[str] = set()  # zones whose latest grant is not stored yet

    # -- loading -----------------------------------------------------------------------------

    def _load_configured(self) -> License | None:
        config = self.config
        if config.license_inline:
            lic = parse(config.license_inline, self.keys, source="inline")
        elif self.license_file is not None:
            path = self.license_file
            try:
                data = path.read_bytes()
                self._file_state = _stat(path)
            except OSError as exc:
                raise LicenseError(f"cannot read the license file {path}: {exc.strerror}") from None
            try:
                lic = parse(data, self.keys, source=str(path))
            except LicenseError as exc:
                raise LicenseError(f"{path}: {exc}") from None
        else:
            return None
        check_expiry(lic, datetime.now(UTC))
        return lic

    @staticmethod
    def _stored_text(secret: Resource) -> str:
        try:
            return base64.b64decode(secret.spec.get("data", ""), validate=True).decode()
        except (binascii.Error, ValueError):
            raise LicenseError(
                f"the license in force in the store (GlobalSecret {INSTALLED_SECRET}) is not base64"
            ) from None

    def _installed(self, secret: Resource) -> License:
        """The license a GlobalSecret holds, verified (LicenseError when it does not verify)."""
        source = secret.labels.get(SOURCE_LABEL) or "api"
        lic = parse(self._stored_text(secret), self.keys, source=source)
        check_expiry(lic, datetime.now(UTC))
        return lic

    # -- every replica: the license in force --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self, cp: Any) -> AsyncIterator[LicenseAuthority]:
        """The license in force on this replica: put there at start, followed from the store."""
        store: Store = cp.store
        self.store = store
        watch = store.watch(["GlobalSecret", "License", "LicenseQuota", "LicenseQuotaRequest"])  # no gap
        try:
            await self._adopt(store)
        except BaseException:
            watch.close()
            raise
        log.info(
            "license_loaded",
            source=self.license.source,
            demo=self.license.demo,
            customer=self.license.customer,
            allowed=self.license.dataplanes,
            expires=format_expiry(self.license.expires),
            enforcement="strict" if self.license.strict else "warn",
        )
        tasks = [
            asyncio.create_task(self._follow_store(watch), name="license-follow"),
            asyncio.create_task(self._check_file_loop(), name="license-file"),
        ]
        try:
            yield self
        finally:
            await cancel_and_wait(tasks)
            watch.close()

    async def _adopt(self, store: Store) -> None:
        """At start: this replica's configured license goes in force for every replica (written to the
        store when it is not there already); without one, the license in force in the store, else the
        demo license. Refuses the start (StartupRefused) when the license in force does not verify or
        has expired."""
        published = await store.find("License", LICENSE_NAME)
        if published is not None:
            self._take_published(published.spec)
        secret = await store.find("GlobalSecret", INSTALLED_SECRET)
        self.first_start = self.first_start or datetime.now(UTC).replace(microsecond=0)
        try:
            if self.configured is not None:
                self.license = self.configured
                if secret is None or self._stored_text(secret) != self.configured.text:
                    await self._persist_store(self.configured)
            elif secret is not None:
                self.license = self._installed(secret)
            else:
                self.license = demo_license(self.first_start)
            check_expiry(self.license, datetime.now(UTC))
        except LicenseError as exc:
            raise StartupRefused(f"invalid license: {exc}") from None
        for res in (await store.list("LicenseQuota")).items:
            self.published_grants[res.name] = Grant(_int(res.spec.get("slots")), _int(res.spec.get("answered")))
        for res in (await store.list("LicenseQuotaRequest")).items:
            if (zone := _request_zone(res)) is not None:
                self.published_requests[zone] = _int(res.spec.get("want"))
        self._update_metrics()

    def _take_published(self, spec: dict[str, Any]) -> None:
        self.published = dict(spec)
        first = spec.get("firstStart") or ""
        with contextlib.suppress(ValueError, AttributeError):
            recorded = datetime.fromisoformat(first.replace("Z", "+00:00")) if first else None
            if recorded is not None and recorded != self.first_start:
                self.first_start = recorded
                if self.license.demo:  # the demo license runs from the first start the leader recorded
                    self.license = demo_license(recorded)

    async def _follow_store(self, watch: Any) -> None:
        async for event in watch:
            try:
                await self._on_store_event(event)
            except Exception as exc:  # never stop following the license in force
                log.warning("license_event_failed", resource=str(event.resource.key), error=repr(exc))

    async def _on_store_event(self, event: Any) -> None:
        res = event.resource
        deleted = event.kind is EventKind.DELETED
        if res.type == "GlobalSecret" and res.name == INSTALLED_SECRET:
            if deleted:
                log.warning("license_secret_deleted", keeping=self.license.source, secret=INSTALLED_SECRET)
                return
            try:
                lic = self._installed(res)
            except LicenseError as exc:
                log.error("license_in_store_invalid", reason=str(exc), keeping="the license in force")
                return
            if lic.text != self.license.text:
                await self._put_in_force(lic)
        elif res.type == "License" and res.name == LICENSE_NAME and not deleted:
            self._take_published(res.spec)
            self._update_metrics()
        elif res.type == "LicenseQuota":
            if deleted:
                self.published_grants.pop(res.name, None)
            else:
                self.published_grants[res.name] = Grant(_int(res.spec.get("slots")), _int(res.spec.get("answered")))
        elif res.type == "LicenseQuotaRequest":
            zone = res.labels.get(ZONE_LABEL) or res.name.split(".", 1)[0]
            if deleted:
                self.published_requests.pop(zone, None)
            elif res.name == f"{zone}.{QUOTA_REQUEST_NAME}":
                self.published_requests[zone] = _int(res.spec.get("want"))

    async def _put_in_force(self, lic: License) -> None:
        previous, self.license = self.license, lic
        log.info(
            "license_replaced",
            source=lic.source,
            customer=lic.customer,
            allowed=lic.dataplanes,
            expires=format_expiry(lic.expires),
            previous_allowed=previous.dataplanes,
            previous_demo=previous.demo,
        )
        self._update_metrics()
        if self.leading:
            self._update_warnings(datetime.now(UTC))
            await self._publish()  # at once: zones see a new license without the count's debounce
            await self._allocate()

    async def replace(self, text: str | bytes, source: str) -> License:
        """Verify a new license and put it in force on every replica (through the store). Raises
        LicenseError (the old one stays)."""
        lic = parse(text, self.keys, source=source)
        check_expiry(lic, datetime.now(UTC))
        if source == "api" and self.license_file is not None:
            await self._persist_file(lic.text)  # so that this replica's file and the API agree
        await self._persist_store(lic)
        await self._put_in_force(lic)
        return lic

    async def _persist_file(self, text: str) -> None:
        assert self.license_file is not None
        path = self.license_file
        tmp = path.with_name(path.name + ".tmp")
        await asyncio.to_thread(tmp.write_text, text)
        await asyncio.to_thread(os.replace, tmp, path)
        self._file_state = await asyncio.to_thread(_stat, path)

    async def _persist_store(self, lic: License) -> None:
        """The license in force for every replica: the GlobalSecret ``zonemesh-license`` (an ordinary
        write: any replica may install a license, the leader then enforces it)."""
        assert self.store is not None
        data = base64.b64encode(lic.text.encode()).decode()
        secret = Resource(type="GlobalSecret", name=INSTALLED_SECRET, spec={"data": data})
        secret.labels[SOURCE_LABEL] = lic.source
        await self.store.batch(upserts=[secret])

    async def _check_file(self) -> None:
        path = self.license_file
        if path is None:
            return
        try:
            state = await asyncio.to_thread(_stat, path)
        except OSError as exc:
            if self._file_state is not None:
                log.error("license_file_unreadable", path=str(path), error=exc.strerror, keeping=self.license.source)
                self._file_state = None
            return
        if state == self._file_state:
            return
        self._file_state = state
        data = await asyncio.to_thread(path.read_bytes)
        if data.decode(errors="replace") == self.license.text:
            return
        try:
            await self.replace(data, str(path))
        except LicenseError as exc:
            log.error("license_file_invalid", path=str(path), reason=str(exc), keeping="the license in force")

    async def _check_file_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._check_file()
                if not self.leading:
                    self._update_metrics()
            except Exception as exc:
                log.warning("license_check_failed", error=repr(exc))

    def _update_metrics(self) -> None:
        lic, now = self.license, datetime.now(UTC)
        metrics.DATAPLANES_ALLOWED.set(lic.dataplanes)
        metrics.DATAPLANES_ACTIVE.set(
            self.count.active if self.leading else _int(self.published.get("activeDataplaneProxies"))
        )
        metrics.EXPIRY_SECONDS.set(lic.remaining(now).total_seconds())

    @contextlib.asynccontextmanager
    async def running(self, cp: Any) -> AsyncIterator[LicenseAuthority]:
        """Both parts on one replica that leads (what the component manager does on a single process)."""
        async with self.serve(cp), self.run(cp):
            yield self

    # -- leader: counting, grants, publishing ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def run(self, cp: Any) -> AsyncIterator[LicenseAuthority]:
        """The leader's part: count proxies, grant quota, publish ``License/default``. Enter after
        ``serve`` (the license in force)."""
        assert self.store is not None, "LicenseAuthority.serve runs on every replica, before run"
        self.writer = cp.leader_store
        # A new term starts from what is stored, not from what an earlier term of this replica knew.
        self.count, self.grants, self.requests, self.uploaded, self._zone_of = ActiveCount(), {}, {}, {}, {}
        self._unwritten, self.warnings, self._logged = set(), [], {}
        existing = await self.store.find("License", LICENSE_NAME)
        first = (existing.spec.get("firstStart") if existing is not None else None) or ""
        with contextlib.suppress(ValueError):
            self.first_start = datetime.fromisoformat(first.replace("Z", "+00:00")) if first else self.first_start
        if self.first_start is None:  # recorded once, durably: the demo license runs 30 days from it
            self.first_start = datetime.now(UTC).replace(microsecond=0)
        watch = self.store.watch(["Dataplane", "DataplaneInsight", "LicenseQuotaRequest"])  # before listing: no gap
        try:
            self.leading = True
            await self._load_state(self.store)
        except BaseException:
            self.leading = False
            watch.close()
            raise
        tasks = [
            asyncio.create_task(self._follow(watch), name="license-watch"),
            asyncio.create_task(self._tick(), name="license-tick"),
            asyncio.create_task(self._publisher(), name="license-publish"),
        ]
        try:
            yield self
        finally:
            self.leading = False
            await cancel_and_wait(tasks)
            watch.close()
            self.writer = None

    async def _load_state(self, store: Store) -> None:
        for type in ("Dataplane", "DataplaneInsight"):
            for i, res in enumerate((await store.list(type)).items):
                if i % 1000 == 999:  # 100,000 of each: let the loop answer lease keepalives meanwhile
                    await asyncio.sleep(0)
                self.count.upsert(res)
                self._track_uploaded(res, deleted=False)
        for res in (await store.list("LicenseQuota")).items:
            self.grants[res.name] = Grant(_int(res.spec.get("slots")), _int(res.spec.get("answered")))
        for res in (await store.list("LicenseQuotaRequest")).items:
            self._take_request(res)
        self._update_warnings(datetime.now(UTC))
        await self._publish()
        await self._allocate()

    # -- state, warnings, publishing ----------------------------------------------------------------

    def _update_warnings(self, now: datetime) -> None:
        lic = self.license
        found: dict[str, str] = {}  # kind -> text
        expiry = format_expiry(lic.expires)
        if lic.expired(now):
            found["expired"] = (
                f"the license expired at {expiry}: this control plane keeps running, "
                "but it will refuse to start again until a valid license is installed"
            )
        elif lic.remaining(now) < WARN_BEFORE:
            days = lic.remaining(now).days
            found["expiring"] = f"the {'demo ' if lic.demo else ''}license expires in {days} days, at {expiry}"
        active = self.count.active
        if active > lic.dataplanes:
            outcome = "new proxies are refused" if lic.strict else "proxies over the limit still join"
            found["over-limit"] = (
                f"{active} data plane proxies are active but the license allows {lic.dataplanes}: {outcome}"
            )
        warnings = list(found.values())
        if warnings != self.warnings:
            # Logged when a kind of warning appears, then at most once a minute while it lasts
            # (the over-limit text changes with every proxy that joins).
            for kind, warning in found.items():
                if kind not in self._logged or time.monotonic() - self._logged[kind] >= WARNING_LOG_EVERY:
                    self._logged[kind] = time.monotonic()
                    log.warning("license_warning", warning=warning, active=active, allowed=lic.dataplanes)
            for kind in set(self._logged) - set(found):
                del self._logged[kind]
            self.warnings = warnings
            self._dirty.set()
        if lic.expired(now) and time.monotonic() - self._expired_logged >= EXPIRED_LOG_EVERY:
            self._expired_logged = time.monotonic()
            log.error("license_expired", expired_at=expiry, source=lic.source, customer=lic.customer)
        self._update_metrics()

    def view(self) -> dict[str, Any]:
        """GET /license, and the spec of the synced License resource (without local details). On a
        replica that does not lead, the count and warnings are those the leader published."""
        lic = self.license
        if self.leading:
            active, warnings = self.count.active, list(self.warnings)
        else:
            active = _int(self.published.get("activeDataplaneProxies"))
            warnings = [w for w in self.published.get("warnings") or [] if isinstance(w, str)]
        return {
            "allowedDataplaneProxies": lic.dataplanes,
            "activeDataplaneProxies": active,
            "expirationDate": format_expiry(lic.expires),
            "demo": lic.demo,
            "enforcement": "strict" if lic.strict else "warn",
            "customer": lic.customer,
            "warnings": warnings,
        }

    def quota_view(self) -> dict[str, dict[str, int]]:
        if self.leading:
            grants, wanted = self.grants, {zone: req.want for zone, req in self.requests.items()}
        else:
            grants, wanted = self.published_grants, self.published_requests
        return {
            zone: {"grantedSlots": grant.slots, "wantedSlots": wanted.get(zone, 0)}
            for zone, grant in sorted(grants.items())
        }

    def _spec(self) -> dict[str, Any]:
        assert self.first_start is not None
        return self.view() | {"firstStart": format_expiry(self.first_start)}

    async def _publish(self) -> None:
        assert self.store is not None and self.writer is not None
        spec = self._spec()
        current = await self.store.find("License", LICENSE_NAME)
        if current is not None and current.spec == spec:
            return
        await self.writer.batch(
            upserts=[Resource(type="License", name=LICENSE_NAME, spec=spec, labels={ORIGIN_LABEL: ORIGIN_GLOBAL})]
        )

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(PUBLISH_DEBOUNCE)
            self._dirty.clear()
            try:
                await self._publish()
            except Exception as exc:  # a store hiccup: retry with the next change or tick
                log.warning("license_publish_failed", error=str(exc))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._update_warnings(datetime.now(UTC))
                if self._unwritten:
                    await self._allocate()
            except Exception as exc:
                log.warning("license_check_failed", error=repr(exc))

    # -- counting and quota ------------------------------------------------------------------

    def _take_request(self, res: Resource) -> None:
        zone = _request_zone(res)
        if zone is not None:
            self.requests[zone] = Request(_int(res.spec.get("want")), _int(res.spec.get("seq")))

    def _track_uploaded(self, res: Resource, *, deleted: bool) -> str | None:
        """Keep each zone's counted Dataplanes (what caps its quota); returns the zone."""
        if res.type != "Dataplane":
            return None
        key = (res.mesh, res.name)
        # A delete may carry the key only (etcd compacted its last value): the zone is remembered.
        zone = res.labels.get(ZONE_LABEL) or self._zone_of.get(key)
        if not zone:
            return None
        mine = self.uploaded.setdefault(zone, set())
        if deleted or not counted(res):
            mine.discard(key)
            self._zone_of.pop(key, None)
        else:
            mine.add(key)
            self._zone_of[key] = zone
        return zone

    def caps(self) -> dict[str, int]:
        return {zone: quota_cap(len(self.uploaded.get(zone, ()))) for zone in self.requests}

    async def _follow(self, watch: Any) -> None:
        async for event in watch:
            try:
                await self._on_event(event)
            except Exception as exc:  # a store hiccup must not end counting and granting; the tick retries grants
                log.warning("license_event_failed", resource=str(event.resource.key), error=repr(exc))

    async def _on_event(self, event: Any) -> None:
        res = event.resource
        if res.type in ("Dataplane", "DataplaneInsight"):
            if event.kind is EventKind.DELETED:
                self.count.delete(res)
            else:
                self.count.upsert(res)
            self._update_warnings(datetime.now(UTC))
            self._dirty.set()
            zone = self._track_uploaded(res, deleted=event.kind is EventKind.DELETED)
            request = self.requests.get(zone or "")
            if zone and request is not None and request.want > self.grants.get(zone, Grant()).slots:
                await self._allocate()  # its cap may have grown: serve the rest of its request
        elif res.type == "LicenseQuotaRequest":
            zone = _request_zone(res)
            if zone is None:
                return
            if event.kind is EventKind.DELETED:  # the zone was deleted: its slots are free again
                self.requests.pop(zone, None)
                if self.grants.pop(zone, None) is not None:
                    assert self.writer is not None
                    await self.writer.batch(deletes=[ResourceKey("LicenseQuota", "", zone)])
            else:
                self._take_request(res)
            await self._allocate()

    async def _allocate(self) -> None:
        async with self._lock:
            caps = self.caps()
            changed = allocate(self.license.dataplanes, self.grants, self.requests, caps)
            if self._unwritten:  # grants decided earlier whose write failed
                changed = {zone: self.grants[zone] for zone in self._unwritten if zone in self.grants} | changed
            if not changed:
                return
            assert self.writer is not None
            # Decided in memory first: if the write fails, the zone just does not learn of the grant yet
            # (it never uses slots it was not told about), and the next tick writes it again. A write
            # refused because this replica's term ended (NotLeader) is the next leader's to decide.
            self._unwritten |= set(changed)
            upserts = [
                Resource(
                    type="LicenseQuota",
                    name=zone,
                    spec={"zone": zone, "slots": grant.slots, "answered": grant.answered},
                    labels={ORIGIN_LABEL: ORIGIN_GLOBAL},
                )
                for zone, grant in changed.items()
            ]
            await self.writer.batch(upserts=upserts)
            self._unwritten.clear()
            for zone, grant in changed.items():
                log.info(
                    "license_quota_granted",
                    zone=zone,
                    slots=grant.slots,
                    wanted=self.requests[zone].want,
                    cap=caps.get(zone),
                    granted_total=sum(g.slots for g in self.grants.values()),
                    allowed=self.license.dataplanes,
                )

    # -- HTTP API ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        async def get_license(request: web.Request) -> web.Response:
            return web.json_response(self.view() | {"source": self.license.source, "quota": self.quota_view()})

        async def put_license(request: web.Request) -> web.Response:
            await require_admin(request, request.app[MANAGER].store)
            raw = await request.read()  # bytes: parse() says so when they are not UTF-8
            try:
                await self.replace(raw, "api")
            except LicenseError as exc:
                return error_response(400, "Invalid license", str(exc))
            return web.json_response(self.view() | {"source": self.license.source})

        return [web.get("/license", get_license), web.put("/license", put_license)]


def _request_zone(res: Resource) -> str | None:
    """The zone of a LicenseQuotaRequest at global: each zone has one, ``<zone>.request``. Any other
    a zone uploads is ignored (it would let a zone replace its request back and forth, or release
    its grant by deleting it)."""
    zone = res.labels.get(ZONE_LABEL) or res.name.split(".", 1)[0]
    if res.name != f"{zone}.{QUOTA_REQUEST_NAME}":
        log.warning("license_quota_request_ignored", name=res.name, zone=zone, reason="not the zone's request")
        return None
    return zone


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)
