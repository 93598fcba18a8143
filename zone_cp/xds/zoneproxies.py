"""The config of zone ingress and zone egress proxies: ``ZoneProxyReconciler``.

It generates their config (``generators/ingress.py``, ``egress.py``) from the zone's view of its
resources (zone_cp/view.py) whenever a mesh, dataplane, ExternalService, ZoneIngress or ZoneEgress
changes, and computes the per-mesh ``CrossZone`` views (other zones' ingresses, this zone's egress,
resolved ExternalService hosts) the dataplane reconciler reads (``crosszone.CrossZoneViews``). It
follows the view's changes and reads the view in place: a change that only the zone proxies'
config reads (a Dataplane, a policy) makes a round only while a zone proxy is connected, and a
round lists nothing from the store. What it reads goes through
``UsableFilter`` (zone_cp/xds/usable.py): a resource that fails validation (another zone's
ZoneIngress with a port that is not one...) is skipped, logged and counted, and the round goes on.
Who may run a zone proxy and how it registers: zone_cp/admission.py; its insight: zone_cp/insights.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import error_response
from zonemesh.shared.ca.state import STATE_TYPE
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store
from zonemesh.zone_cp.view import ZoneView
from zonemesh.zone_cp.xds import usable
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotCache
from zonemesh.zone_cp.xds.context import (
    DATAPLANE,
    EXTERNAL_SERVICE,
    MESH,
    SECRET,
    CertProvider,
    MeshContext,
    WorkloadCert,
)
from zonemesh.zone_cp.xds.crosszone import (
    EGRESS_SERVICE,
    CrossZone,
    CrossZoneViews,
    ZoneContext,
    online,
    resolve_hosts,
)
from zonemesh.zone_cp.xds.generators import egress as egress_generator
from zonemesh.zone_cp.xds.generators import ingress as ingress_generator
from zonemesh.zone_cp.xds.generators.gateway import MESH_GATEWAY_ROUTE_TYPE
from zonemesh.zone_cp.xds.policies import EGRESS_LOCALITY_TYPES, EGRESS_TYPES, ROUTE_TYPES
from zonemesh.zone_cp.xds.proxy import (
    INSIGHT_TYPES,
    RESOURCE_TYPES,
    ProxyType,
    zone_proxy_key,
)
from zonemesh.zone_cp.xds.resources import ResourceSet
from zonemesh.zone_cp.xds.server import StreamInfo

log = structlog.get_logger(__name__)

# What zone proxies are generated from: the meshes and their workloads, the zone proxies, the
# Secrets ExternalService TLS refers to (the egress presents them), the policies with an
# egress hook (policies/: MeshTrafficPermission checks ExternalService callers) or laying out the
# egress's endpoints (MeshLoadBalancingStrategy's failover order), and the routes (the subsets
# they send to get SNI filter chains of their own: ingress.routed_subsets), and the meshes' CA
# states (the egress's certificate and the roots it trusts follow a CA rotation).
INPUTS = (MESH, DATAPLANE, EXTERNAL_SERVICE, SECRET, STATE_TYPE, *RESOURCE_TYPES.values(), *INSIGHT_TYPES.values())
CONTEXT_POLICIES = tuple(dict.fromkeys((*EGRESS_TYPES, *EGRESS_LOCALITY_TYPES, *ROUTE_TYPES, MESH_GATEWAY_ROUTE_TYPE)))
WATCHED = (*INPUTS, *CONTEXT_POLICIES)
# Of those, what the per-mesh CrossZone views are computed from: a change of one of them is read
# by the dataplane side too, so it makes a round even with no zone proxy connected.
CROSS_ZONE_INPUTS = frozenset((MESH, EXTERNAL_SERVICE, *RESOURCE_TYPES.values(), *INSIGHT_TYPES.values()))
_WATCHED = frozenset(WATCHED)


# --- config of connected zone proxies ------------------------------------------------------------


class ZoneProxyReconciler:
    """Regenerates connected zone proxies from the zone's view, and computes the zone's per-mesh
    CrossZone ``views`` (which the dataplane reconciler reads and follows: crosszone.CrossZoneViews).

    Reads the view in place each round (zone proxies are few; rounds are debounced), so it keeps
    no copy of its own.
    """

    def __init__(
        self,
        view: Store,
        cache: SnapshotCache,
        certs: CertProvider | None,
        zone: str,
        *,
        quiet: float = 0.1,
        dns_ttl: float = 30.0,
        views: CrossZoneViews | None = None,
    ) -> None:
        # The zone's view (zone_cp/app.py starts it before this); given a plain store (tests), a view
        # of it of its own, started and stopped with the reconciler.
        self._own_view = not isinstance(view, ZoneView)
        self.view = view if isinstance(view, ZoneView) else ZoneView()
        self._store = view if self._own_view else None
        self.cache = cache
        self.certs = certs
        self.zone = zone
        self.quiet = quiet
        self.dns_ttl = dns_ttl
        self.views = views if views is not None else CrossZoneViews()
        self._connected: dict[tuple[str, str], int] = {}  # (proxy type, name) -> open streams
        self._resolved: dict[str, tuple[list[str], float]] = {}  # host -> (addresses, when looked up)
        self._wake = asyncio.Event()
        self._usable = usable.UsableFilter()
        self._unfollow: Callable[[], None] | None = None
        self._rounding = False
        self._progress = asyncio.Event()  # set when a round ended (idle())
        self.rounds = 0

    def cross_zone(self, mesh: str) -> CrossZone | None:
        return self.views.get(mesh)

    async def on_stream_open(self, info: StreamInfo) -> None:
        identity = info.identity
        if identity.proxy_type is ProxyType.DATAPLANE:
            return
        key = (identity.proxy_type.value, identity.name)
        self._connected[key] = self._connected.get(key, 0) + 1
        self._wake.set()

    async def on_stream_close(self, info: StreamInfo) -> None:
        identity = info.identity
        if identity.proxy_type is ProxyType.DATAPLANE:
            return
        key = (identity.proxy_type.value, identity.name)
        left = self._connected.get(key, 0) - 1
        if left > 0:
            self._connected[key] = left
            return
        self._connected.pop(key, None)
        self.cache.clear_snapshot(identity.key)

    def _all(self, rtype: str) -> list[Resource]:
        """Every ``rtype`` of the view that passes validation (the others are skipped and said so
        once), by mesh and name as a listing gives them (the cross-zone views keep that order)."""
        return sorted(self._usable(rtype, self.view.all(rtype)), key=lambda r: (r.mesh, r.name))

    def _changed(self, before: Resource | None, after: Resource | None) -> None:
        """The view took a change in (``ZoneView.follow``): a round if the cross-zone views or a
        connected zone proxy's config may read it."""
        res = after or before
        assert res is not None
        if after is None:
            self._usable.forget(res.key)
        if res.type in CROSS_ZONE_INPUTS or (res.type in _WATCHED and self._connected):
            self._wake.set()

    async def _egress_certs(self, meshes: list[MeshContext]) -> dict[str, WorkloadCert]:
        certs: dict[str, WorkloadCert] = {}
        if self.certs is None:
            return certs
        for mctx in meshes:
            if mctx.mtls is None or not mctx.external_services:
                continue
            try:
                certs[mctx.name] = WorkloadCert(*await self.certs.workload_cert(mctx.name, EGRESS_SERVICE))
            except Exception as exc:
                log.error("zone_egress_cert_failed", mesh=mctx.name, error=str(exc))
        return certs

    async def _resolve(self, externals: list[Resource]) -> dict[str, list[str]]:
        """ExternalService hosts -> addresses, looked up again once ``dns_ttl`` has passed."""
        now = time.monotonic()
        stale = [
            es
            for es in externals
            if (host := _host(es)) and (host not in self._resolved or now - self._resolved[host][1] > self.dns_ttl)
        ]
        if stale:
            for host, addresses in (await resolve_hosts(stale)).items():
                self._resolved[host] = (addresses, now)
        wanted = {_host(es) for es in externals}
        return {host: addresses for host, (addresses, _) in self._resolved.items() if host in wanted}

    async def context(self, *, with_dataplanes: bool = False) -> ZoneContext:
        """Everything zone proxies are generated from, read from the view now. The per-mesh
        cross-zone view is always refreshed; the zone's dataplanes are read only when a zone
        proxy is connected to be generated from them."""
        meshes = self._all("Mesh")
        externals = self._all("ExternalService")
        # Only proxies holding an xDS stream now: a killed ingress/egress stays registered.
        ingresses = online(self._all("ZoneIngress"), self._all("ZoneIngressInsight"))
        egresses = online(self._all("ZoneEgress"), self._all("ZoneEgressInsight"))
        resolved = await self._resolve(externals)
        cross = {m.name: CrossZone.build(self.zone, m.name, ingresses, egresses, resolved) for m in meshes}
        self.views.replace(cross)
        contexts: dict[str, MeshContext] = {}
        if self._connected or with_dataplanes:
            # The egress runs the egress hooks of policies (MeshTrafficPermission for ExternalServices),
            # and reads the Secrets their TLS settings refer to; both read the routes' subsets.
            for mesh in meshes:
                contexts[mesh.name] = MeshContext.build(
                    mesh,
                    self._in_mesh(DATAPLANE, mesh.name),
                    [p for t in (*CONTEXT_POLICIES, SECRET) for p in self._in_mesh(t, mesh.name)],
                    external_services=[e for e in externals if e.mesh == mesh.name],
                    cross=cross[mesh.name],
                )
        return ZoneContext(self.zone, contexts, await self._egress_certs(list(contexts.values())))

    def _in_mesh(self, rtype: str, mesh: str) -> list[Resource]:
        """A mesh's ``rtype`` of the view that pass validation, by name (as generation reads them)."""
        held = self.view.in_mesh(rtype, mesh)
        return [r for r in (held[name] for name in sorted(held)) if self._usable.passes(r)]

    async def render(self, proxy_type: str, name: str) -> ResourceSet:
        """A zone proxy's config generated now (the ``_config`` API); LookupError when unknown."""
        proxy = self.view.peek(RESOURCE_TYPES[proxy_type], name)
        if proxy is None:
            raise LookupError(f"{RESOURCE_TYPES[proxy_type]} {name!r} not found")
        return self.generate(await self.context(with_dataplanes=True), proxy)

    def generate(self, zctx: ZoneContext, proxy: Resource) -> ResourceSet:
        if proxy.type == "ZoneIngress":
            return ingress_generator.generate(zctx, proxy)
        return egress_generator.generate(zctx, proxy)

    async def reconcile(self) -> None:
        self.rounds += 1
        started = time.monotonic()
        zctx = await self.context()
        for (proxy_type, name), _ in sorted(self._connected.items()):
            proxy = self.view.peek(RESOURCE_TYPES[proxy_type], name)
            if proxy is None:
                log.warning("zone_proxy_not_registered", type=proxy_type, name=name)
                continue
            try:
                resources = self.generate(zctx, proxy)
            except Exception as exc:
                log.error("zone_proxy_generation_failed", type=proxy_type, name=name, error=str(exc))
                continue
            self.cache.set_snapshot(zone_proxy_key(proxy_type, name), Snapshot.from_resources(resources))
        log.debug("zone_proxies_reconciled", proxies=len(self._connected), seconds=time.monotonic() - started)

    async def idle(self) -> None:
        """Return once every change seen so far (store events received, zone proxies that
        connected) has been generated and pushed, and the dataplane side told of cross-zone
        changes (await its own ``idle()`` next). Same caveat as ``Reconciler.idle``."""
        while self._busy():
            self._progress.clear()
            if self.view.behind() and not self._wake.is_set() and not self._rounding:
                await self.view.caught_up()  # it tells _changed of each change as it takes it in
                continue
            await self._progress.wait()

    def _busy(self) -> bool:
        return self.view.behind() or self._wake.is_set() or self._rounding

    async def _loop(self) -> None:
        while True:
            # Also every dns_ttl without changes: ExternalService addresses may have moved.
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.dns_ttl):
                    await self._wake.wait()
            await asyncio.sleep(self.quiet)
            self._wake.clear()
            self._rounding = True  # with the clear, before any await: idle() sees no gap
            try:
                await self.reconcile()
            except Exception:
                log.exception("zone_proxy_reconcile_failed")
            finally:
                self._rounding = False
                self._progress.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ZoneProxyReconciler]:
        if self._own_view:
            assert self._store is not None
            await self.view.start(self._store)
        self._unfollow = self.view.follow(self._changed)
        tasks = [asyncio.create_task(self._loop(), name="zone-proxies")]
        try:
            await self.context()  # the cross-zone view is there before the first dataplane is generated
            yield self
        finally:
            self._unfollow()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._own_view:
                await self.view.stop()


def config_routes(reconciler: Callable[[], ZoneProxyReconciler | None]) -> list[web.RouteDef]:
    """``GET /zoneingresses/{name}/_config`` and ``/zoneegresses/{name}/_config``: the xDS config
    generated for a zone proxy now (``{"xds": ...}``, private keys redacted); admin only."""
    from zonemesh.zone_cp.xds.dump import dump

    def handler(proxy_type: str) -> Callable[[web.Request], Any]:
        async def config(request: web.Request) -> web.Response:
            await require_admin(request, request.app[MANAGER].store)  # as a dataplane's _config
            current = reconciler()
            if current is None:
                raise web.HTTPServiceUnavailable(reason="the xDS server is not running")
            name = request.match_info["name"]
            try:
                resources = await current.render(proxy_type, name)
            except LookupError as exc:
                return error_response(404, "Not found", str(exc))
            except Exception as exc:
                return error_response(500, "Config generation failed", str(exc))
            return web.json_response({"xds": dump(resources)})

        return config

    return [
        web.get("/zoneingresses/{name}/_config", handler(ProxyType.INGRESS.value)),
        web.get("/zoneegresses/{name}/_config", handler(ProxyType.EGRESS.value)),
    ]


def _host(es: Resource) -> str:
    return str((es.spec.get("networking") or {}).get("address") or "").rpartition(":")[0].strip("[]")
