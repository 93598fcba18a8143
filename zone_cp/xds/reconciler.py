"""Store changes -> regenerate the proxies they affect -> snapshot cache (which pushes).

The reconciler reads the types generation reads (Mesh, Dataplane, policies, Secret,
ExternalService) from the zone's view (zone_cp/view.py: the one in-memory copy of the zone's
resources), follows the view's changes, and keeps the set of connected proxies (stream hooks
of the xDS server). Of its own it keeps only indexes of names (which proxies consume a service,
which are builtin gateways) and the shapes generation reuses, so a re-list of the view (an etcd
compaction) reaches it as the changes the re-list found. Changes are debounced (a burst of writes
makes one round), then only the affected proxies are regenerated:

- a Mesh, Secret or MeshCAState change in mesh M: every connected proxy of M (a MeshCAState
  says which CA issues the mesh's certificates and which CAs its proxies trust: shared/ca/state.py);
- a targetRef policy change: the proxies its top-level ``targetRef`` selects, before or after
  the change (``to`` entries configure the selected clients, ``from`` entries the selected
  servers: either way only the selected proxies' config changes); of those, when the policy
  only configures traffic to named services (``to`` MeshService entries), only the ones that
  may send traffic there (an outbound to one, a route sending there, the builtin gateways);
- an ExternalService change: the proxies with an outbound to its service;
- a Dataplane change: that proxy, plus the proxies whose outbounds target a service it serves
  (before or after the change), whose endpoints changed. Only the outbounds a proxy builds
  count (``context.outbounds``: those to its ``reachableServices``), so in a large mesh a
  service's changes regenerate the proxies that may reach it, not every proxy declaring it;
- a proxy connecting: that proxy; a workload certificate due for rotation: the proxies of its
  service (only their secrets change).

A renewed workload certificate goes only to proxies whose token still passes at that moment
(``still_admitted``, checked against the store by the xDS server, which closes the others' streams).

The "which proxies" rules are the pure functions ``affected_by_*`` (unit-tested alone).

A resource of the view that fails validation is left out, as if absent (``usable.py``): one bad
document never fails a round.

One MeshContext per mesh per round lets proxies share identical pieces; the round pushes its
snapshots in slices of ~10 ms of generation and yields to the event loop between slices, so that
streams, the API and KDS keep being served while a round runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography import x509
from zonemesh.shared.aio import gc_paused
from zonemesh.shared.ca.state import STATE_TYPE
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.resources.types.targetref import MESH_HTTP_ROUTE, MESH_SERVICE, top_level
from zonemesh.shared.store import Store
from zonemesh.zone_cp.view import ZoneView
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotBuilder, SnapshotCache
from zonemesh.zone_cp.xds.context import (
    DATAPLANE,
    EXTERNAL_SERVICE,
    MESH,
    SECRET,
    SERVICE_TAG,
    CertProvider,
    Endpoint,
    MeshContext,
    PlacedListener,
    WorkloadCert,
    local_endpoints,
    outbound_services,
    services,
)
from zonemesh.zone_cp.xds.crosszone import CrossZoneViews
from zonemesh.zone_cp.xds.generators import (
    OWN_TYPES,
    GenerationError,
    MadeFrom,
    crossmesh,
    generate,
    inbound,
    made_from,
)
from zonemesh.zone_cp.xds.generators.gateway import MESH_GATEWAY_ROUTE_TYPE, MESH_GATEWAY_TYPE, is_builtin
from zonemesh.zone_cp.xds.kept import Kept
from zonemesh.zone_cp.xds.metrics import XDS_GENERATION
from zonemesh.zone_cp.xds.policies import PLUGINS, POLICY_TYPES
from zonemesh.zone_cp.xds.policies.matching import selects
from zonemesh.zone_cp.xds.proxy import ProxyIdentity, ProxyType, node_key
from zonemesh.zone_cp.xds.resources import ResourceSet
from zonemesh.zone_cp.xds.server import StreamInfo
from zonemesh.zone_cp.xds.usable import usable

log = structlog.get_logger(__name__)

GATEWAY_TYPES = (MESH_GATEWAY_TYPE, MESH_GATEWAY_ROUTE_TYPE)
MESH_CA_STATE = STATE_TYPE
# What generation reads: meshes, dataplanes, secrets, the meshes' CA states, external services,
# the builtin gateways' MeshGateways and routes, and the policy types that have a plugin
# (policies/, from the registry).
WATCHED_TYPES = (MESH, DATAPLANE, SECRET, MESH_CA_STATE, EXTERNAL_SERVICE, *POLICY_TYPES, *GATEWAY_TYPES)
_WATCHED = frozenset(WATCHED_TYPES)
# Mesh-scoped types generation reads through MeshContext.policies (by type): policies, the
# builtin gateways' MeshGateways and routes, and Secrets (gateway listener certificates).
CONTEXT_TYPES = (*POLICY_TYPES, *GATEWAY_TYPES, SECRET)
# The route types, by name: what they send traffic to (Plugin.destinations) ties proxies to services.
ROUTE_PLUGINS = {p.type: p for p in PLUGINS if p.destinations is not None}


ROTATE_AT_FRACTION = 0.8  # as the builtin CA: a certificate is reissued after 80% of its lifetime
MIN_ROTATION_CHECK = 1.0
YIELD_EVERY = 0.01  # seconds of generation in a slice (pushed together, then the loop runs)
MAX_ROTATION_CHECK = 60.0


def rotation_due(cert: WorkloadCert) -> dt.datetime:
    """When a workload certificate should be replaced: 80% into its validity period."""
    not_before = x509.load_pem_x509_certificate(cert.cert_pem).not_valid_before_utc
    return not_before + (cert.not_after - not_before) * ROTATE_AT_FRACTION


@dataclass
class _Pending:
    meshes: set[str] = field(default_factory=set)
    nodes: set[tuple[str, str]] = field(default_factory=set)  # (mesh, name)
    since: float | None = None  # monotonic time of the first change in this batch

    def mark(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def __bool__(self) -> bool:
        return bool(self.meshes or self.nodes)


def next_snapshot(
    ctx: MeshContext,
    builder: SnapshotBuilder,
    dp: Resource,
    previous: Snapshot | None,
    made: dict[str, MadeFrom],
    changed_at: float | None = None,
) -> Snapshot:
    """A proxy's new snapshot in a round (``previous``: its current one; ``made``: what each proxy
    of the mesh was made from, updated here). Once its shape is generated this round (by a replica
    before it), a proxy whose own config is made from what it was made from (``MadeFrom``: the same
    Dataplane, templates and shape's clusters and listeners) keeps its clusters and listeners and
    takes the rest from its shape: a mesh-wide change of routes then costs each replica no copy,
    placing or comparison, only its shape's. Any other proxy is generated."""
    before = made.get(dp.name)
    if previous is not None and before is not None and before.proxy is dp:
        shape = made_from(ctx, dp, builder.encoded)
        if shape is not None and shape.makes(before, dp):
            return builder.carried(previous, shape.resources, OWN_TYPES, shape.applied, changed_at)
    snapshot = builder.build(generate(ctx, dp), changed_at, previous)
    shape = made_from(ctx, dp, builder.encoded)
    if shape is None:
        made.pop(dp.name, None)
    else:
        made[dp.name] = shape.made(dp)
    return snapshot


# -- which proxies a change affects (pure) ------------------------------------------------------

Consumers = Mapping[str, Set[str]]  # service -> names of the dataplanes with an outbound to it


def affected_by_dataplane(before: Resource | None, after: Resource | None, consumers: Consumers) -> set[str]:
    """A Dataplane came, changed or went: itself, and the consumers of every service it served
    before or serves after (their endpoints changed)."""
    dp = after or before
    if dp is None:
        return set()
    affected = {dp.name}
    for service in {*(services(before) if before else ()), *(services(after) if after else ())}:
        affected.update(consumers.get(service, ()))
    return affected


def affected_by_policy(
    before: Resource | None,
    after: Resource | None,
    dataplanes: Sequence[Resource],
    *,
    consumers: Consumers | None = None,
    routes: Iterable[Resource] = (),
) -> set[str]:
    """A targetRef policy changed: the proxies its top-level targetRef selects, before or after
    (a ``MeshGateway`` targetRef: the builtin gateways, which MeshGateway selects them is the
    generator's business; a ``MeshHTTPRoute`` targetRef, a policy for that route's routes: every
    proxy, which the route selects is the generator's business too).

    Given ``consumers`` (and the mesh's ``routes``), a policy that only configures traffic to
    named services (``policy_destinations``) narrows that to the selected proxies that may send
    traffic there: those with an outbound to one of them, those a route sends to one of them
    from another outbound (``affected_by_routes``), and the builtin gateways (their routes may
    lead there). Nothing else in another proxy's config reads such a policy's entries
    (tests/unit/test_xds_affected.py generates every proxy with and without each golden case's
    policies and checks it)."""
    refs = [top_level(p.spec) for p in (before, after) if p is not None]
    if any(ref.get("kind") == MESH_HTTP_ROUTE for ref in refs):
        return {dp.name for dp in dataplanes}
    selected = {
        dp.name
        for dp in dataplanes
        if any(selects(ref, dp) or (ref.get("kind") == MESH_GATEWAY_TYPE and is_builtin(dp)) for ref in refs)
    }
    if consumers is None:
        return selected
    destinations: set[str] = set()
    for policy in (before, after):
        found = policy_destinations(policy) if policy is not None else frozenset()
        if found is None:
            return selected
        destinations |= found
    reach = builtin_gateways(dataplanes) | affected_by_routes(destinations, routes, dataplanes, consumers)
    for service in destinations:
        reach.update(consumers.get(service, ()))
    return selected & reach


def policy_destinations(policy: Resource) -> frozenset[str] | None:
    """The services whose outbound traffic is all ``policy`` configures: a spec of a top-level
    targetRef and ``to`` entries each naming a MeshService (by name). None for anything else (a
    ``from`` or ``rules`` section configures inbounds; a top-level ``default`` the whole proxy;
    a ``to`` Mesh every outbound; a MeshService by labels is not matched by name)."""
    if set(policy.spec) - {"targetRef", "to"}:
        return None
    to = policy.spec.get("to")
    if not isinstance(to, list) or not to:
        return None
    names: set[str] = set()
    for entry in to:
        ref = entry.get("targetRef") if isinstance(entry, Mapping) else None
        if not isinstance(ref, Mapping) or ref.get("kind") != MESH_SERVICE or not isinstance(ref.get("name"), str):
            return None
        names.add(ref["name"])
    return frozenset(names)


def affected_by_routes(
    services: Set[str], routes: Iterable[Resource], dataplanes: Sequence[Resource], consumers: Consumers | None = None
) -> set[str]:
    """Where a route (MeshHTTPRoute, MeshTCPRoute) sends traffic to one of ``services`` (a
    backend or mirror whose endpoints or settings changed): the proxies the route applies to,
    which may have no outbound to that service (given ``consumers``: of those, the ones its
    ``to`` entries reach, as ``affected_by_policy`` narrows)."""
    affected: set[str] = set()
    for route in routes:
        plugin = ROUTE_PLUGINS.get(route.type)
        sends = plugin.destinations(route) if plugin is not None and plugin.destinations is not None else ()
        if any(dest.service in services for dest in sends):
            affected |= affected_by_policy(None, route, dataplanes, consumers=consumers)
    return affected


def builtin_gateways(dataplanes: Iterable[Resource]) -> set[str]:
    """Builtin gateways have no outbounds to index: any change to a MeshGateway, a route, or
    a dataplane or external service they may route to regenerates them (they are few)."""
    return {dp.name for dp in dataplanes if is_builtin(dp)}


def affected_by_external_service(before: Resource | None, after: Resource | None, consumers: Consumers) -> set[str]:
    """An ExternalService changed: the proxies with an outbound to its service (before or after)."""
    names: set[str] = set()
    for es in (before, after):
        service = (es.spec.get("tags") or {}).get(SERVICE_TAG) if es is not None else None
        if service:
            names.update(consumers.get(str(service), ()))
    return names


def proxies_serving(dataplanes: Iterable[Resource], wanted: Set[str]) -> set[str]:
    """The proxies holding the identity of one of ``wanted`` services (a certificate is per service)."""
    return {dp.name for dp in dataplanes if any(service in wanted for service in services(dp))}


StillAdmitted = Callable[[list[ProxyIdentity]], Awaitable[set[ProxyIdentity]]]


class Reconciler:
    def __init__(
        self,
        view: Store,
        cache: SnapshotCache,
        cert_provider: CertProvider | None,
        *,
        debounce: float = 0.05,
        max_delay: float = 0.25,
        cross_zone: CrossZoneViews | None = None,
        still_admitted: StillAdmitted | None = None,
    ) -> None:
        # The zone's view (zone_cp/app.py starts it before this). Given a plain store (tests,
        # tools), the reconciler opens a view of it of its own, started and stopped with it.
        self._own_view = not isinstance(view, ZoneView)
        self.view = view if isinstance(view, ZoneView) else ZoneView()
        self._store = view if self._own_view else None
        self.cache = cache
        self.cert_provider = cert_provider
        self.debounce = debounce
        self.max_delay = max_delay
        # Keys of resources in the view that fail validation: read as if absent (usable.py).
        self._unusable: set[ResourceKey] = set()
        self._consumers: dict[str, dict[str, set[str]]] = {}  # mesh -> service -> dataplanes with outbounds to it
        # mesh -> names of its builtin gateways: a Dataplane event must not scan every Dataplane
        # of the zone (registering 1,000 proxies was quadratic).
        self._gateways: dict[str, set[str]] = {}
        # mesh -> (dataplanes generation, local endpoints): recomputed only after a Dataplane change.
        self._dp_generation: dict[str, int] = {}
        self._endpoints: dict[str, tuple[int, dict[str, list[Endpoint]]]] = {}
        # mesh -> Dataplane name -> its shape (MeshContext.shapes): serialized once per Dataplane version.
        self._shapes: dict[str, dict[str, tuple[Resource, Any, str]]] = {}
        # mesh -> Dataplane name -> its inbound listeners as placed (MeshContext.placed): an inbound
        # placed from a template of the same content at the same ports is not built again.
        self._placed: dict[str, dict[str, dict[int, PlacedListener]]] = {}
        # mesh -> Dataplane name -> what its snapshot in the cache was made from (generators.MadeFrom)
        self._made_from: dict[str, dict[str, MadeFrom]] = {}
        # mesh -> inbound templates by what they are built from (MeshContext.templates)
        self._templates: dict[str, dict[Any, Any]] = {}
        # mesh -> messages kept across rounds by what they are built from (MeshContext.kept)
        self._kept: dict[str, Kept] = {}
        self._connected: dict[tuple[str, str], int] = {}  # (mesh, name) -> open streams
        self._pending = _Pending()
        self._wake = asyncio.Event()
        # (mesh, service) -> (certificate, when it is due for rotation)
        self._rotations: dict[tuple[str, str], tuple[bytes, dt.datetime]] = {}
        self._next_rotation: dt.datetime | None = None
        self._rotation_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unfollow: Callable[[], None] | None = None
        self._rounding = False  # a round is generating and pushing
        self._progress = asyncio.Event()  # set each time a change was taken in or a round ended (idle())
        self.rounds = 0
        # Other zones' ingresses and this zone's egress per mesh, as the zone-proxy reconciler computes
        # them (zone_cp/xds/zoneproxies.py); a change regenerates what it touches.
        self.cross_zone = cross_zone if cross_zone is not None else CrossZoneViews()
        self.cross_zone.follow(self.invalidate_mesh, self.invalidate_services)
        # Of the given proxies, those whose stream credential passes now (zone_cp/app.py passes the
        # xDS server's check): a renewed workload certificate goes to those only.
        self.still_admitted = still_admitted
        self._last_certs: dict[tuple[str, str], bytes] = {}  # (mesh, service) -> the certificate last handed out

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._own_view:
            assert self._store is not None
            await self.view.start(self._store)
        # What the view holds, then its changes: no await in between, so none is missed or seen twice.
        for rtype in WATCHED_TYPES:
            for res in self.view.all(rtype):
                self._take(None, res)
        self._unfollow = self.view.follow(self._changed)
        self._warn_unsupported()
        self._tasks = [
            asyncio.create_task(self._loop(), name="xds-reconciler"),
            asyncio.create_task(self._cert_refresh(), name="xds-cert-refresh"),
        ]
        log.info("xds_reconciler_started", dataplanes=self.view.count(DATAPLANE))

    def _warn_unsupported(self) -> None:
        """Policies of a type zonemesh does not apply (stored before an upgrade refused the type)
        are not read at all: say so once, so that nobody wonders why they do nothing."""
        for rtype in REGISTRY.policies():
            if rtype.name in POLICY_TYPES:
                continue
            stored = self.view.count(rtype.name)
            if stored:
                log.warning("xds_policy_type_not_supported", type=rtype.name, stored=stored)

    async def idle(self) -> None:
        """Return once every change seen so far has been generated and pushed: store events this
        view has received, proxies that connected, invalidations. (A store whose watch
        delivers events after the write returns, as etcd's does, may still hold back a change
        made just before: tests use the memory store, which delivers at once.)"""
        while self._busy():
            self._progress.clear()
            if self.view.behind():
                await self.view.caught_up()  # it tells _changed of each change as it takes it in
                continue
            await self._progress.wait()

    def _busy(self) -> bool:
        return self.view.behind() or bool(self._pending) or self._rounding

    async def stop(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._own_view:
            await self.view.stop()

    async def __aenter__(self) -> Reconciler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- stream hooks (register on the xDS server's Callbacks) ---------------------------------

    async def on_stream_open(self, info: StreamInfo) -> None:
        if info.identity.proxy_type is not ProxyType.DATAPLANE:
            return  # zone ingress/egress: zone_cp/xds/zoneproxies.py
        key = (info.identity.mesh, info.identity.name)
        self._connected[key] = self._connected.get(key, 0) + 1
        self._mark_nodes([key])

    async def on_stream_close(self, info: StreamInfo) -> None:
        if info.identity.proxy_type is not ProxyType.DATAPLANE:
            return
        key = (info.identity.mesh, info.identity.name)
        left = self._connected.get(key, 0) - 1
        if left > 0:
            self._connected[key] = left
            return
        self._connected.pop(key, None)
        self.cache.clear_snapshot(info.identity.key)

    # -- explicit invalidation (e.g. the CA after rotating a mesh's certificates) ---------------

    def invalidate_mesh(self, mesh: str) -> None:
        self._pending.meshes.add(mesh)
        self._pending.mark(time.monotonic())
        self._wake.set()

    def invalidate_proxy(self, mesh: str, name: str) -> None:
        self._mark_nodes([(mesh, name)])

    def invalidate_services(self, mesh: str, services: Iterable[str]) -> None:
        """Regenerate the proxies of ``mesh`` calling any of ``services`` (their other-zone
        endpoints changed: zone_cp/xds/zoneproxies.py), and its builtin gateways."""
        consumers = self._consumers.get(mesh, {})
        names = {name for service in services for name in consumers.get(service, ())}
        names |= self._gateways.get(mesh, set())
        self._mark_nodes((mesh, name) for name in names)

    def _mark_nodes(self, keys: Iterable[tuple[str, str]]) -> None:
        added = False
        for key in keys:
            if key in self._connected:
                self._pending.nodes.add(key)
                added = True
        if added:
            self._pending.mark(time.monotonic())
            self._wake.set()

    # -- following the view ---------------------------------------------------------------------

    def _changed(self, before: Resource | None, after: Resource | None) -> None:
        """The view took a change in (``ZoneView.follow``): index it, and mark the proxies it affects."""
        res = after or before
        assert res is not None
        if res.type not in _WATCHED:
            return
        try:
            self._apply(*self._take(before, after))
        except Exception:  # one bad resource must not stop the view's other changes reaching rounds
            log.exception("xds_change_failed", resource=f"{res.type}/{res.mesh}/{res.name}")
            self.invalidate_mesh(res.mesh or res.name)
        finally:
            self._progress.set()

    def _take(self, before: Resource | None, after: Resource | None) -> tuple[Resource | None, Resource | None]:
        """Index a change of the view; returns it as generation sees it (an unusable state as None)."""
        res = after or before
        assert res is not None
        if before is not None and res.key in self._unusable:
            before = None
        self._unusable.discard(res.key)
        if after is not None and not usable(after):
            self._unusable.add(res.key)  # as if absent: one broken document must not break its mesh's rounds
            after = None
        if res.type == DATAPLANE:
            if before is not None:
                self._index_dataplane(before, remove=True)
            if after is not None:
                self._index_dataplane(after, remove=False)
        return before, after

    def _apply(self, before: Resource | None, after: Resource | None) -> None:
        res = after or before
        if res is None:
            return  # an unusable resource stayed unusable
        mesh = res.mesh or res.name  # a Mesh is named by itself
        if res.type == DATAPLANE:
            names = affected_by_dataplane(before, after, self._consumers.get(mesh, {}))
            names |= self._gateways.get(mesh, set())
            served = {*(services(before) if before else ()), *(services(after) if after else ())}
            names |= affected_by_routes(served, self._routes(mesh), self._dataplanes(mesh))
            if any(is_builtin(dp) for dp in (before, after) if dp is not None):
                # Another mesh's proxies may reach it as a cross-mesh gateway.
                self._mark_nodes(crossmesh.cross_mesh_clients(self._all(DATAPLANE)))
        elif res.type in POLICY_TYPES:
            names = affected_by_policy(
                before,
                after,
                self._dataplanes(mesh),
                consumers=self._consumers.get(mesh, {}),
                routes=self._routes(mesh),
            )
        elif res.type == EXTERNAL_SERVICE:
            names = affected_by_external_service(before, after, self._consumers.get(mesh, {}))
            names |= self._gateways.get(mesh, set())
            served = {str((es.spec.get("tags") or {}).get(SERVICE_TAG)) for es in (before, after) if es is not None}
            names |= affected_by_routes(served, self._routes(mesh), self._dataplanes(mesh))
        elif res.type in GATEWAY_TYPES:
            names = set(self._gateways.get(mesh, ()))
            self._mark_nodes(crossmesh.cross_mesh_clients(self._all(DATAPLANE)))
        else:
            self.invalidate_mesh(mesh)
            if crossmesh.changes_trust(res):
                # Cross-mesh listeners of every mesh trust this mesh's CA.
                self._mark_nodes((dp.mesh, dp.name) for dp in self._all(DATAPLANE) if is_builtin(dp))
            return
        self._mark_nodes((mesh, name) for name in names)

    # -- reading the view ---------------------------------------------------------------------

    def _all(self, rtype: str) -> list[Resource]:
        """Every usable ``rtype`` of the view."""
        return [r for r in self.view.all(rtype) if not self._unusable or r.key not in self._unusable]

    def _in_mesh(self, rtype: str, mesh: str) -> list[Resource]:
        """A mesh's usable resources of ``rtype``."""
        held = self.view.in_mesh(rtype, mesh).values()
        return [r for r in held if r.key not in self._unusable] if self._unusable else list(held)

    def _get(self, rtype: str, name: str, mesh: str = "") -> Resource | None:
        res = self.view.peek(rtype, name, mesh)
        return None if res is None or res.key in self._unusable else res

    def _cross_mesh(self, mesh_name: str) -> list[Resource]:
        """What a mesh's generation needs to know about the others (cross-mesh gateways, CAs)."""
        return crossmesh.context_resources(
            mesh_name,
            self._all(MESH),
            self._all(MESH_GATEWAY_TYPE),
            self._all(DATAPLANE),
            self._all(SECRET),
            self._all(MESH_CA_STATE),
        )

    def _routes(self, mesh: str) -> list[Resource]:
        return [r for t in ROUTE_PLUGINS for r in self._in_mesh(t, mesh)]

    def _dataplanes(self, mesh: str) -> list[Resource]:
        return self._in_mesh(DATAPLANE, mesh)

    def _mesh_inputs(self, mesh_name: str) -> tuple[list[Resource], list[Resource]]:
        """The policies (and other context types, and what other meshes tell it) and the external
        services a mesh's generation reads."""
        policies = [r for t in CONTEXT_TYPES for r in self._in_mesh(t, mesh_name)]
        policies += self._cross_mesh(mesh_name)
        return policies, self._in_mesh(EXTERNAL_SERVICE, mesh_name)

    def _local_endpoints(self, mesh: str) -> dict[str, list[Endpoint]]:
        """The mesh's local endpoints, recomputed only when one of its Dataplanes changed (a
        policy change regenerates every proxy but moves no endpoint)."""
        generation = self._dp_generation.get(mesh, 0)
        cached = self._endpoints.get(mesh)
        if cached is None or cached[0] != generation:
            cached = self._endpoints[mesh] = (generation, local_endpoints(self._dataplanes(mesh)))
        return cached[1]

    def _index_dataplane(self, dp: Resource, *, remove: bool) -> None:
        self._index_consumers(dp, remove=remove)
        self._dp_generation[dp.mesh] = self._dp_generation.get(dp.mesh, 0) + 1
        gateways = self._gateways.setdefault(dp.mesh, set())
        if remove:
            gateways.discard(dp.name)
            self._shapes.get(dp.mesh, {}).pop(dp.name, None)
            self._placed.get(dp.mesh, {}).pop(dp.name, None)
            self._made_from.get(dp.mesh, {}).pop(dp.name, None)
        elif is_builtin(dp):
            gateways.add(dp.name)

    def _index_consumers(self, dp: Resource, *, remove: bool) -> None:
        by_service = self._consumers.setdefault(dp.mesh, {})
        for service in outbound_services(dp):
            consumers = by_service.setdefault(service, set())
            if remove:
                consumers.discard(dp.name)
            else:
                consumers.add(dp.name)

    # -- rounds ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            # Debounce: wait for a quiet moment, but no longer than max_delay after the first change.
            while True:
                self._wake.clear()
                since = self._pending.since or time.monotonic()
                remaining = self.max_delay - (time.monotonic() - since)
                if remaining <= 0:
                    break
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
                # comes as the event is set, and stop() then waited for the next timeout.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.debounce, remaining)):
                        await self._wake.wait()
                    continue
                break
            self._wake.clear()
            pending, self._pending = self._pending, _Pending()
            self._rounding = bool(pending)  # before any await: idle() never sees the work in between
            if pending:
                try:
                    await self.reconcile(pending.meshes, pending.nodes, pending.since)
                except Exception:
                    log.exception("xds_reconcile_failed")
                finally:
                    self._rounding = False
                    self._progress.set()

    async def reconcile(
        self, meshes: Iterable[str], nodes: Iterable[tuple[str, str]], changed_at: float | None = None
    ) -> None:
        by_mesh: dict[str, set[str]] = {}
        for mesh in meshes:
            by_mesh.setdefault(mesh, set()).update(name for (m, name) in self._connected if m == mesh)
        for mesh, name in nodes:
            by_mesh.setdefault(mesh, set()).add(name)
        self.rounds += 1
        with gc_paused():  # what the round leaves is walked at most once, not again and again during it
            for mesh, names in sorted(by_mesh.items()):
                if names:
                    await self._reconcile_mesh(mesh, sorted(names), changed_at)

    async def _reconcile_mesh(self, mesh_name: str, names: list[str], changed_at: float | None) -> None:
        mesh = self._get(MESH, mesh_name)
        if mesh is None:
            log.warning("xds_mesh_missing", mesh=mesh_name, proxies=len(names))
            return
        dataplanes = self._dataplanes(mesh_name)
        proxies = [dp for dp in (self._get(DATAPLANE, n, mesh_name) for n in names) if dp is not None]
        certs = await self._certs(mesh, proxies)
        renewed = self._renewed(mesh_name, certs)
        if renewed:
            proxies = await self._admitted_for(renewed, proxies)
        policies, externals = self._mesh_inputs(mesh_name)
        ctx = MeshContext.build(
            mesh,
            dataplanes,
            policies,
            externals,
            certs,
            cross=self.cross_zone.get(mesh_name),
            endpoints=self._local_endpoints(mesh_name),
            shapes=self._shapes.setdefault(mesh_name, {}),
            placed=self._placed.setdefault(mesh_name, {}),
            templates=self._templates.setdefault(mesh_name, {}),
            kept=self._kept.setdefault(mesh_name, Kept()),
        )
        # Proxies are pushed in slices of YIELD_EVERY seconds of generation, then the loop runs:
        # it starts the slice's writes, then handles the ACKs that came meanwhile. A yield after
        # every proxy made each proxy's config wait for the ACK handling of all before it
        # (bench/xds_zone.py, 2,000 proxies, 10 changes each: per-change p99 1.04-1.64 s with
        # slices, 1.18-1.89 s with a yield per proxy; all pushed at the end, 20 changes: 1.00-1.83 s).
        builder = SnapshotBuilder(ctx.encoded)
        made = self._made_from.setdefault(mesh_name, {})
        ready: list[tuple[str, Snapshot]] = []
        slice_started = time.perf_counter()
        for dp in proxies:
            started = time.perf_counter()
            node = node_key(dp.mesh, dp.name)
            try:
                snapshot = next_snapshot(ctx, builder, dp, self.cache.snapshot(node), made, changed_at)
            except GenerationError as exc:
                log.error("xds_generation_failed", proxy=f"{dp.mesh}/{dp.name}", error=str(exc))
                continue
            XDS_GENERATION.observe(time.perf_counter() - started)
            ready.append((node, snapshot))
            if started - slice_started >= YIELD_EVERY:
                self._publish(ready)
                await asyncio.sleep(0)  # the API, KDS and other streams keep being served
                slice_started = time.perf_counter()
        self._publish(ready)
        inbound.keep_placed(ctx, builder.encoded)
        inbound.forget_templates(ctx)
        ctx.kept.after_round(builder.encoded)

    def _publish(self, ready: list[tuple[str, Snapshot]]) -> None:
        for node, snapshot in ready:
            self.cache.set_snapshot(node, snapshot)
        ready.clear()

    async def _certs(self, mesh: Resource, proxies: list[Resource]) -> dict[str, WorkloadCert]:
        if not (mesh.spec.get("mtls") or {}).get("enabledBackend") or self.cert_provider is None:
            return {}
        certs: dict[str, WorkloadCert] = {}
        wanted = sorted({s for dp in proxies for s in services(dp)})
        if not wanted:
            return certs
        try:
            # One call for the mesh: its CA is read once, not once per service.
            issued = await self.cert_provider.workload_certs(mesh.name, wanted)
        except Exception as exc:
            issued = dict.fromkeys(wanted, exc)
        for service, cert in issued.items():
            if isinstance(cert, Exception):
                log.error("xds_workload_cert_failed", mesh=mesh.name, service=service, error=str(cert))
            else:
                certs[service] = WorkloadCert(*cert)
        for service, cert in certs.items():
            self._track_rotation(mesh.name, service, cert)
        return certs

    def _renewed(self, mesh: str, certs: Mapping[str, WorkloadCert]) -> set[str]:
        """The services whose certificate is not the one a round handed out before (rotated, or
        a new CA); a service's first certificate goes to proxies that have just authenticated."""
        renewed = set()
        for service, cert in certs.items():
            previous = self._last_certs.get((mesh, service))
            if previous is not None and previous != cert.cert_pem:
                renewed.add(service)
            self._last_certs[(mesh, service)] = cert.cert_pem
        return renewed

    async def _admitted_for(self, renewed: set[str], proxies: list[Resource]) -> list[Resource]:
        """``proxies`` without those due a renewed certificate whose token no longer passes (their
        streams are being closed): a revoked proxy gets no new certificate, even in the moment
        between the revocation and its stream's end."""
        if self.still_admitted is None:
            return proxies
        receivers = [ProxyIdentity(dp.mesh, dp.name) for dp in proxies if renewed & set(services(dp))]
        refused = set(receivers) - await self.still_admitted(receivers)
        if refused:
            log.info("xds_cert_withheld", proxies=sorted(p.key for p in refused), services=sorted(renewed))
        return [dp for dp in proxies if ProxyIdentity(dp.mesh, dp.name) not in refused]

    def _track_rotation(self, mesh: str, service: str, cert: WorkloadCert) -> None:
        known = self._rotations.get((mesh, service))
        if known is not None and known[0] == cert.cert_pem:
            return
        due = rotation_due(cert)
        self._rotations[(mesh, service)] = (cert.cert_pem, due)
        if self._next_rotation is None or due < self._next_rotation:
            self._next_rotation = due
            self._rotation_wake.set()

    async def _cert_refresh(self) -> None:
        """Regenerate the proxies of a service once its workload certificate is due for rotation:
        asked again, the CertProvider returns the reissued certificate, pushed over SDS (Envoy
        swaps it in for new handshakes; open connections stay up)."""
        while True:
            self._rotation_wake.clear()
            now = dt.datetime.now(dt.UTC)
            wait = MAX_ROTATION_CHECK if self._next_rotation is None else (self._next_rotation - now).total_seconds()
            with contextlib.suppress(TimeoutError):
                # At least MIN_ROTATION_CHECK apart: a provider that keeps answering with a due
                # certificate must not spin the loop.
                # (asyncio.timeout rather than wait_for: see _loop.)
                async with asyncio.timeout(min(max(wait, MIN_ROTATION_CHECK), MAX_ROTATION_CHECK)):
                    await self._rotation_wake.wait()
                continue
            now = dt.datetime.now(dt.UTC)
            due = sorted(key for key, (_, at) in self._rotations.items() if at <= now)
            for key in due:
                del self._rotations[key]  # tracked again when the round fetches the new certificate
            self._next_rotation = min((at for _, at in self._rotations.values()), default=None)
            by_mesh: dict[str, set[str]] = {}
            for mesh, service in due:
                by_mesh.setdefault(mesh, set()).add(service)
            for mesh, due_services in by_mesh.items():
                names = proxies_serving(self._dataplanes(mesh), due_services)
                log.info("xds_cert_rotation", mesh=mesh, services=sorted(due_services), proxies=len(names))
                self._mark_nodes((mesh, name) for name in names)

    # -- for the API -------------------------------------------------------------------------

    async def render(self, mesh_name: str, name: str) -> ResourceSet:
        """Generate a proxy's config now, from the view (the ``_config`` API)."""
        mesh, dp = self._proxy(mesh_name, name)
        return generate(self._context(mesh, await self._certs(mesh, [dp])), dp)

    def inspection(self, mesh_name: str, name: str) -> tuple[MeshContext, Resource]:
        """The context generation reads for a proxy, from the view, and the proxy (the
        ``_rules`` and ``_policies`` API: which policies set what; no certificates)."""
        mesh, dp = self._proxy(mesh_name, name)
        return self._context(mesh, {}), dp

    def _proxy(self, mesh_name: str, name: str) -> tuple[Resource, Resource]:
        mesh = self._get(MESH, mesh_name)
        dp = self._get(DATAPLANE, name, mesh_name)
        if mesh is None or dp is None:
            raise LookupError(f"dataplane {name!r} in mesh {mesh_name!r} not found")
        return mesh, dp

    def _context(self, mesh: Resource, certs: Mapping[str, WorkloadCert]) -> MeshContext:
        mesh_name = mesh.name
        policies, externals = self._mesh_inputs(mesh_name)
        return MeshContext.build(
            mesh, self._dataplanes(mesh_name), policies, externals, certs, cross=self.cross_zone.get(mesh_name)
        )

    def connected(self) -> list[ProxyIdentity]:
        return [ProxyIdentity(mesh, name) for mesh, name in sorted(self._connected)]


__all__ = ["WATCHED_TYPES", "Reconciler", "StreamInfo", "next_snapshot"]
