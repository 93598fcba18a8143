"""A zone ingress's ``availableServices``: what other zones may reach through it.

Every ZoneIngress registered in this zone advertises the zone's services: per (mesh, full tag
set of a ready inbound) the number of instances. KDS uploads the ZoneIngress to global, which
pushes it on to every other zone; their proxies then get this ingress's advertised address as
an endpoint of those services, weighted by ``instances`` (see ``xds/crosszone.py``).

``available_services`` is the pure computation; ``AvailableServicesUpdater`` keeps the stored
ZoneIngresses of this zone current: it watches Dataplanes and ZoneIngresses, and after a short
quiet period rewrites the ingresses whose list (or ``zone`` field) changed. A write that loses
a version race is retried in the next round, which the losing write's own event triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, ORIGIN_LABEL, ZONE_LABEL, Resource
from zonemesh.shared.store import Store
from zonemesh.shared.store.base import Conflict, NotFound
from zonemesh.zone_cp.xds.context import SERVICE_TAG, inbounds, is_gateway

log = structlog.get_logger(__name__)

ZONE_INGRESS = "ZoneIngress"
DATAPLANE = "Dataplane"


def is_local(res: Resource, zone: str) -> bool:
    """Registered in this zone, as opposed to another zone's copy received from global."""
    return res.labels.get(ORIGIN_LABEL) != ORIGIN_GLOBAL and res.labels.get(ZONE_LABEL, zone) == zone


def _ready(inbound: Mapping[str, Any]) -> bool:
    if inbound.get("state") in ("NotReady", "Ignored"):
        return False
    return (inbound.get("health") or {}).get("ready") is not False


def available_services(dataplanes: Iterable[Resource]) -> list[dict[str, Any]]:
    """``[{mesh, tags, instances}]`` grouped by mesh and full inbound tag set, sorted.

    Only ready inbounds count; gateways are not reachable through an ingress.
    """
    counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for dp in dataplanes:
        if is_gateway(dp):
            continue
        for inbound in inbounds(dp):
            tags = inbound.get("tags") or {}
            if not tags.get(SERVICE_TAG) or not _ready(inbound):
                continue
            key = (dp.mesh, tuple(sorted((str(k), str(v)) for k, v in tags.items())))
            counts[key] = counts.get(key, 0) + 1
    return [
        {"tags": dict(tags), "instances": instances, "mesh": mesh} for (mesh, tags), instances in sorted(counts.items())
    ]


def updated_ingress(ingress: Resource, zone: str, services: list[dict[str, Any]]) -> Resource | None:
    """The ingress with ``zone`` and ``availableServices`` set, or None when it already has them."""
    if ingress.spec.get("availableServices", []) == services and ingress.spec.get("zone") == zone:
        return None
    res = ingress.copy()
    res.spec["zone"] = zone
    res.spec["availableServices"] = services
    return res


class AvailableServicesUpdater:
    """Writes ``availableServices`` of this zone's ZoneIngresses whenever the dataplanes change."""

    def __init__(self, store: Store, zone: str, *, quiet: float = 0.2, view: Store | None = None) -> None:
        self.store = store  # written to
        self.view = view if view is not None else store  # read from (the zone's view: zone_cp/view.py)
        self.zone = zone
        self.quiet = quiet  # batch a burst of dataplane changes into one write
        self.rounds = 0
        self._wake = asyncio.Event()

    async def update_once(self) -> int:
        """One round: recompute and write what changed; returns the number of ingresses written."""
        self.rounds += 1
        ingresses = [r for r in (await self.view.list(ZONE_INGRESS)).items if is_local(r, self.zone)]
        if not ingresses:
            return 0
        services = available_services((await self.view.list(DATAPLANE)).items)
        written = 0
        for ingress in ingresses:
            res = updated_ingress(ingress, self.zone, services)
            if res is None:
                continue
            try:
                await self.store.update(res)
            except (Conflict, NotFound) as exc:
                # Changed or deleted meanwhile: its own watch event brings another round.
                log.debug("zone_ingress_update_raced", ingress=ingress.name, error=str(exc))
                continue
            written += 1
            log.info(
                "zone_ingress_services_updated",
                ingress=ingress.name,
                zone=self.zone,
                services=len(services),
                instances=sum(s["instances"] for s in services),
            )
        return written

    async def _watch(self) -> None:
        async with self.view.watch([DATAPLANE, ZONE_INGRESS]) as watch:
            async for _ in watch:
                self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.quiet)
            self._wake.clear()
            try:
                await self.update_once()
            except Exception:
                log.exception("zone_ingress_update_failed", zone=self.zone)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AvailableServicesUpdater]:
        watcher = asyncio.create_task(self._watch(), name="zone-ingress-watch")
        loop = asyncio.create_task(self._loop(), name="zone-ingress-available-services")
        self._wake.set()  # a first round for what is already stored
        try:
            yield self
        finally:
            for task in (watcher, loop):
                task.cancel()
            await asyncio.gather(watcher, loop, return_exceptions=True)


def component(view: Store) -> Callable[[Any], AbstractAsyncContextManager[AvailableServicesUpdater]]:
    """The zone's leader component (``zone_cp/app.py``): one replica writes the ingresses, fenced by its
    term, from what ``view`` (the zone's resources in memory) holds."""

    @contextlib.asynccontextmanager
    async def run(cp: Any) -> AsyncIterator[AvailableServicesUpdater]:
        zone = cp.config.zone or "default"
        async with AvailableServicesUpdater(cp.leader_store, zone, view=view).running() as updater:
            yield updater

    return run
