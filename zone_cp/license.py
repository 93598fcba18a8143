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
import copy
import dataclasses
import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.config import Config
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.license import metrics
from zonemesh.shared.license.counting import counted
from zonemesh.shared.resources.model import ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL, Resource
from zonemesh.shared.resources.types.license import QUOTA_REQUEST_NAME
from zonemesh.shared.store import AlreadyExists, Conflict, EventKind, Store, StoreError
from zonemesh.shared.store.etcd import EtcdStore

log = structlog.get_logger(__name__)

REQUEST_NAME = QUOTA_REQUEST_NAME
RELEASE_DELAY = 5.0  # seconds a zone keeps slots it no longer uses before giving them back
OVER_QUOTA_LOG_EVERY = 10.0
METRICS_TICK = 5.0
LICENSE_NAME = "default"
# The zone's slot ledger in etcd, beside its resources (``<prefix>/zone-license/slots``).
LEDGER_KEY = "zone-license/slots"
# A slot taken for a Dataplane that is not stored (yet): a registration in progress on some replica.
# One whose Dataplane is still missing this long after is given back (its replica died mid-way),
# at the latest METRICS_TICK later.
PENDING_GRACE = 60.0
# While a proxy waits for a slot: how often the ledger is read again (another replica may free one).
WAIT_POLL = 0.5
MAX_SWAPS = 100


class LicenseRefused(Exception):
    """The proxy may not join: the license's limit is reached (strict mode). The message says why."""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


Key = tuple[str, str]
# What the ledger holds (JSON): {"holders": {"mesh/name": reserved at (epoch s)}, "requests": [[seq, want]]
# not yet answered, "seq", "want": the last request, "waiting": {instance: [proxies waiting, until (epoch s)]}}.
State = dict[str, Any]


def _slot(key: Key) -> str:
    return f"{key[0]}/{key[1]}"  # mesh names hold no "/"


def _key(slot: str) -> Key:
    mesh, name = slot.split("/", 1)
    return mesh, name


class Ledger(ABC):
    """Where a strict zone's slots are kept: the one place every replica of the zone admits through."""

    @abstractmethod
    async def load(self) -> tuple[State | None, int]:
        """The state and a token for ``swap`` (0 while there is none)."""

    @abstractmethod
    async def swap(self, token: int, state: State | None) -> bool:
        """Replace the state (None: remove it) if it is still the one ``token`` was read with."""


class LocalLedger(Ledger):
    """SQLite and memory stores belong to one process: the ledger lives in its memory."""

    def __init__(self) -> None:
        self._state: State | None = None
        self._version = 0

    async def load(self) -> tuple[State | None, int]:
        return copy.deepcopy(self._state), self._version

    async def swap(self, token: int, state: State | None) -> bool:
        if token != self._version:
            return False
        self._state = copy.deepcopy(state)
        self._version = self._version + 1 if state is not None else 0
        return True


class EtcdLedger(Ledger):
    """One etcd key changed by transactions that require it unchanged since it was read: the zone
    replicas' admissions and quota requests serialize on it, so together they never pass the grant."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store

    async def load(self) -> tuple[State | None, int]:
        raw, revision = await self.store.read_raw(LEDGER_KEY)
        return (json.loads(raw) if raw else None), revision

    async def swap(self, token: int, state: State | None) -> bool:
        return await self.store.swap_raw(LEDGER_KEY, token, None if state is None else json.dumps(state).encode())


def ledger_for(store: Store) -> Ledger:
    return EtcdLedger(store) if isinstance(store, EtcdStore) else LocalLedger()


class ZoneLicense:
    def __init__(self, config: Config, view: Store | None = None) -> None:
        self.config = config
        # Where the license, the grant and the Dataplanes are read and followed: the zone's resources in
        # memory (zone_cp/view.py); the store itself when None. Writes go to the store.
        self.resources = view
        self.zone = config.zone
        self.quota_wait = parse_duration(config.license_quota_wait)
        self.store: Store | None = None
        self.ledger: Ledger = LocalLedger()
        self.instance = "local"
        self.synced: dict[str, Any] | None = None  # spec of License/default from global
        # Counted proxies of this zone holding a slot (mesh, name): in strict mode, what the ledger
        # said when this replica last read it; otherwise every counted Dataplane stored or joining.
        self.holders: set[Key] = set()
        self.stored: dict[Key, tuple[float, str]] = {}  # counted Dataplanes stored -> creation order
        self.granted = 0
        self.answered = 0
        self.outstanding: list[tuple[int, int]] = []  # (seq, want) sent, not yet answered
        self.last_want = 0
        self.last_seq = 0
        self.waiting = 0  # proxies waiting for a slot, on every replica of the zone
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

    @property
    def unadmitted(self) -> set[Key]:
        """Counted Dataplanes stored without a slot (created through the API beyond the quota)."""
        return set(self.stored) - self.holders

    def limit(self) -> int:
        caps = [want for seq, want in self.outstanding if seq > self.answered]
        return min([self.granted, *caps])

    def _limit_of(self, state: State) -> int:
        caps: list[int] = [want for seq, want in state["requests"] if seq > self.answered]
        return min([self.granted, *caps])

    def _adopt(self, state: State) -> None:
        self.holders = {_key(slot) for slot in state["holders"]}
        self.outstanding = [(seq, want) for seq, want in state["requests"]]
        self.last_seq, self.last_want = state["seq"], state["want"]
        self.waiting = sum(count for count, _ in state["waiting"].values())

    def _initial(self, cap: bool) -> State:
        """The ledger of a zone that has none yet: what this replica sees stored (oldest first, at most
        the grant when ``cap``: any excess was created through the API beyond the quota)."""
        stored = sorted(self.stored, key=lambda key: self.stored[key])
        keep = stored[: self.granted] if cap else stored
        now = time.time()
        return {
            "holders": {_slot(key): now for key in keep},
            "requests": [[seq, want] for seq, want in self.outstanding],
            "seq": self.last_seq,
            "want": self.last_want,
            "waiting": {},
        }

    async def _mutate(self, change: Callable[[State], None], *, cap: bool = True) -> State:
        """Read the ledger, apply ``change`` and write it back unless another replica changed it
        meanwhile (then again, on what it wrote). The result is what this replica then knows."""
        for _ in range(MAX_SWAPS):
            state, token = await self.ledger.load()
            before = state
            if state is None:
                state = self._initial(cap)
            state = copy.deepcopy(state)
            now = time.time()
            state["requests"] = [[s, w] for s, w in state["requests"] if s > self.answered]
            state["waiting"] = {i: [c, until] for i, (c, until) in state["waiting"].items() if c > 0 and until > now}
            # A slot taken for a registration whose Dataplane never got stored (its replica died mid-way).
            for slot, reserved in list(state["holders"].items()):
                if reserved < now - PENDING_GRACE and _key(slot) not in self.stored:
                    del state["holders"][slot]
            change(state)
            if state == before or await self.ledger.swap(token, state):
                self._adopt(state)
                if state["seq"] > (before or {}).get("seq", -1):
                    self._write.set()
                return state
        raise StoreError("the zone's license slots changed too often to be updated; try again")

    def _next_seq(self, last: int) -> int:
        # Microseconds: increasing across restarts of this zone and roughly first-come-first-served across zones.
        return max(last + 1, time.time_ns() // 1000)

    def _asked(self, state: State, *, force: bool = False) -> None:
        """Record in ``state`` how many slots this zone wants now, if that changed (strict mode only).

        More: at once. Fewer: only after RELEASE_DELAY, so that a proxy that re-registers (an agent
        restart) takes its slot back without asking global, even while global is unreachable.
        Recorded in the same ledger write as the admissions it counts: a replica cannot admit past a
        release another one asked for."""
        want = len(state["holders"]) + sum(count for count, _ in state["waiting"].values())
        if not force and want >= state["want"]:
            self._lower_since = None
            if want == state["want"]:
                return
        elif not force:
            now = time.monotonic()
            if self._lower_since is None:
                self._lower_since = now
            if now - self._lower_since < RELEASE_DELAY:
                self._schedule_release()
                return
            self._lower_since = None
        seq = self._next_seq(state["seq"])
        state["requests"].append([seq, want])
        state["seq"], state["want"] = seq, want

    async def _ask(self) -> None:
        if self.strict:
            await self._mutate(self._asked)

    def _schedule_release(self) -> None:
        if self._release_timer is None or self._release_timer.done():
            self._release_timer = asyncio.get_running_loop().create_task(self._release_later())

    async def _release_later(self) -> None:
        await asyncio.sleep(RELEASE_DELAY)
        try:
            await self._ask()
        except StoreError as exc:
            log.warning("license_quota_release_failed", zone=self.zone, error=str(exc))

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
        self.ledger = ledger_for(store)
        self.instance = getattr(cp, "instance_id", "local")
        reads = self.resources if self.resources is not None else store
        watch = reads.watch(["License", "LicenseQuota", "Dataplane"])  # before loading: no gap
        try:
            await self._load(reads)
        except BaseException:
            watch.close()
            raise
        self._update_metrics()
        tasks = [
            asyncio.create_task(self._follow(watch), name="zone-license-watch"),
            asyncio.create_task(self._writer(), name="zone-license-request"),
            asyncio.create_task(self._metrics_tick(), name="zone-license-metrics"),
        ]
        self._write.set()  # a request recorded in the ledger that did not reach the store yet
        log.info("zone_license_ready", zone=self.zone, synced=self.synced is not None, granted=self.granted)
        try:
            yield self
        finally:
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
        self.stored = {(r.mesh, r.name): _created(r) for r in (await store.list("Dataplane")).items if counted(r)}
        mine = await store.find("LicenseQuotaRequest", REQUEST_NAME)
        if mine is not None:
            seq, want = _int(mine.spec.get("seq")), _int(mine.spec.get("want"))
            self.last_seq, self.last_want = seq, want
            if seq > self.answered:
                # Requests sent before the restart may still be unanswered and one of them may have released
                # slots: until global answers, use no more than what is held now (never more than any of them).
                held = min(len(self.stored), self.granted) if self.strict else len(self.stored)
                self.outstanding = [(seq, min(want, held))]
        if not self.strict:
            self.holders = set(self.stored)
            await self._drop_ledger()
            return
        # _mutate gives back the slots of Dataplanes gone while no replica ran, and of registrations
        # that died mid-way; and says how many this zone wants now.
        await self._mutate(self._asked)

    async def _drop_ledger(self) -> None:
        """Not strict (any more): the slots kept for strict mode go; a later strict license starts anew."""
        for _ in range(MAX_SWAPS):
            state, token = await self.ledger.load()
            if state is None or await self.ledger.swap(token, None):
                return

    async def _follow(self, watch: Any) -> None:
        async for event in watch:
            try:
                await self._on_event(event)
            except Exception as exc:  # never stop following the license and the quota
                log.warning("zone_license_event_failed", resource=str(event.resource.key), error=repr(exc))
            await self._notify()

    async def _on_event(self, event: Any) -> None:
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
                # now strict: every proxy that joined meanwhile holds a slot, and global hears what this zone holds
                await self._mutate(lambda state: self._asked(state, force=True), cap=False)
            if not self.strict:
                self.holders |= set(self.stored)
                if before:
                    await self._drop_ledger()
            self._update_metrics()
        elif res.type == "LicenseQuota" and res.name == self.zone:
            self._apply_grant({} if deleted else res.spec)
            self._update_metrics()
        elif res.type == "Dataplane":
            key = (res.mesh, res.name)
            if deleted or not counted(res):
                self.stored.pop(key, None)
                if not self.strict:
                    self.holders.discard(key)
                else:
                    await self._mutate(lambda state: self._released(state, key))
                return
            self.stored[key] = _created(res)
            if not self.strict:
                self.holders.add(key)
                return
            # Admitted through registration on some replica (its slot is in the ledger), or created
            # through the API: then it holds a slot if one is free; otherwise its proxy is refused when it
            # connects (see `connection`).
            await self._mutate(lambda state: self._took(state, key, wait=False))
            if key not in self.holders and time.monotonic() - self._over_logged >= OVER_QUOTA_LOG_EVERY:
                self._over_logged = time.monotonic()  # not one line per proxy
                log.warning(
                    "dataplane_over_license_quota",
                    zone=self.zone,
                    mesh=res.mesh,
                    name=res.name,
                    without_slot=len(self.unadmitted),
                    reason="created without registration while every slot of this zone is in use: "
                    "its proxy is refused when it connects unless a slot frees up",
                )

    def _took(self, state: State, key: Key, *, wait: bool) -> None:
        """Take a slot for ``key`` in ``state`` if it has none and one is free; else, with ``wait``,
        count this replica's proxy as waiting (global is asked for more)."""
        slot = _slot(key)
        if slot not in state["holders"] and len(state["holders"]) < self._limit_of(state):
            state["holders"][slot] = time.time()
        elif slot not in state["holders"] and wait:
            count, _ = state["waiting"].get(self.instance, [0, 0])
            state["waiting"][self.instance] = [count + 1, time.time() + self.quota_wait + PENDING_GRACE]
        self._asked(state)

    def _released(self, state: State, key: Key) -> None:
        state["holders"].pop(_slot(key), None)
        self._asked(state)

    def _unwaited(self, state: State) -> None:
        count, until = state["waiting"].get(self.instance, [0, 0])
        if count > 1:
            state["waiting"][self.instance] = [count - 1, until]
        else:
            state["waiting"].pop(self.instance, None)
        self._asked(state)

    async def _writer(self) -> None:
        """Puts the ledger's last request in the store, where KDS uploads it. Intermediate requests may be
        coalesced away: safe, since global only ever acts on a request it receives and the zone honours every
        one it recorded. Never replaces a later request with an earlier one (replicas write it in turns)."""
        assert self.store is not None
        while True:
            await self._write.wait()
            self._write.clear()
            try:
                if self.strict:
                    await self._write_request(self.store)
            except Exception as exc:
                log.warning("license_quota_request_failed", zone=self.zone, error=str(exc))
                await asyncio.sleep(1)
                self._write.set()

    async def _write_request(self, store: Store) -> None:
        state, _ = await self.ledger.load()
        if state is None or state["seq"] == 0:
            return
        spec = {"zone": self.zone, "want": state["want"], "seq": state["seq"], "used": len(state["holders"])}
        labels = {ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: self.zone}
        for _ in range(MAX_SWAPS):
            stored = await store.find("LicenseQuotaRequest", REQUEST_NAME)
            try:
                if stored is None:
                    await store.create(
                        Resource(type="LicenseQuotaRequest", name=REQUEST_NAME, spec=spec, labels=labels)
                    )
                elif _int(stored.spec.get("seq")) < state["seq"]:
                    await store.update(dataclasses.replace(stored, spec=spec, labels={**stored.labels, **labels}))
                return
            except (AlreadyExists, Conflict):
                continue  # another replica wrote it meanwhile: look again

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
        """The expiry countdown moves with time, not only when global sends something; and slots taken
        by registrations that died mid-way are given back even when nothing else changes."""
        while True:
            await asyncio.sleep(METRICS_TICK)
            self._update_metrics()
            if self.strict:
                try:
                    await self._mutate(self._asked)
                except StoreError as exc:
                    log.warning("license_quota_release_failed", zone=self.zone, error=str(exc))

    # -- admission ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admission(self, dataplane: Resource) -> AsyncIterator[None]:
        """Hold a slot for ``dataplane`` while it is stored; raises LicenseRefused when none is free."""
        key = (dataplane.mesh, dataplane.name)
        if not counted(dataplane):
            yield  # a gateway
            return
        if not self.strict:
            self.holders.add(key)
        else:
            await self._reserve(key)  # a proxy that already holds its slot (re-registration) keeps it
        try:
            yield
        except BaseException:
            assert self.store is not None
            if await self.store.find("Dataplane", dataplane.name, dataplane.mesh) is None:
                if self.strict:
                    await self._mutate(lambda state: self._released(state, key))
                else:
                    self.holders.discard(key)
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

    async def _reserve(self, key: tuple[str, str]) -> None:
        deadline = time.monotonic() + self.quota_wait
        waiting = False
        try:
            while True:
                take = functools.partial(self._took, key=key, wait=not waiting)
                state = await self._mutate(take)
                if _slot(key) in state["holders"]:
                    return
                waiting = True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LicenseRefused(self._refusal())
                # Woken by this replica's watch (a grant, a Dataplane gone); polled for what another
                # replica changes in the ledger alone (a registration it gave up).
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=min(left, WAIT_POLL))
        finally:
            if waiting:
                await self._mutate(self._unwaited)

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
