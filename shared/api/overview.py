"""Each resource with its insight (Kuma's overviews), on every control plane.

A type whose registry entry names an ``insight`` (Dataplane, ZoneIngress, ZoneEgress; Zone on
global: global_cp/api.py) is served with it, under Kuma's paths:

- ``<collection>/_overview`` and ``<collection>/{name}/_overview``, for every path of the type
  (``/meshes/{mesh}/dataplanes/_overview``, ``/dataplanes/_overview`` for every mesh,
  ``/zoneingresses/{name}/_overview``, ...);
- the paths Kuma served before ``_overview`` and still serves (``LEGACY_PATHS``):
  ``/meshes/{mesh}/dataplanes+insights[/{name}]``, ``/dataplanes+insights``,
  ``/zoneingresses+insights[/{name}]``, ``/zoneegressoverviews[/{name}]``, ``/zones+insights``.

An item is Kuma's ``<Type>Overview``: the resource's meta (``type``, ``mesh``, ``name``, times,
``labels``), its fields under ``dataplane`` / ``zoneIngress`` / ... and its insight under
``dataplaneInsight`` / ``zoneIngressInsight`` / ... (``{"subscriptions": []}`` when none is
recorded). A zone holds its own proxies and the insights it records (zone_cp/insights.py);
global holds the copies zones upload, each resource and its insight under the
same key: the join is the same on both.

Lists take the filters of other lists (``name``, ``tag``, ``filter[labels.<key>]``, ``size`` and
``offset``: shared/api/resources.py) and, for dataplanes, Kuma's ``gateway``: ``true`` (gateways
only), ``false`` (no gateways), ``builtin`` or ``delegated``. Each page reads one insight per item
on it. A mesh that does not exist lists nothing (200), as other mesh lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import list_body, parse_list_query
from zonemesh.shared.resources.codec import to_universal
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import Registry, ResourceType, Scope
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import ListFilter

# Kuma's paths of overviews before ``_overview`` (typeToLegacyOverviewPath in its API server).
LEGACY_PATHS = {
    "Dataplane": "dataplanes+insights",
    "ZoneIngress": "zoneingresses+insights",
    "ZoneEgress": "zoneegressoverviews",
    "Zone": "zones+insights",
}

# The meta fields of a universal document; the rest is the resource's own content.
_META = ("type", "mesh", "name", "creationTime", "modificationTime", "version", "labels")

# ?gateway= value -> which Dataplanes it keeps, by the kind of their networking.gateway (None: a sidecar).
_GATEWAY_KINDS: dict[str, frozenset[str | None]] = {
    "true": frozenset({"BUILTIN", "DELEGATED"}),
    "false": frozenset({None}),
    "builtin": frozenset({"BUILTIN"}),
    "delegated": frozenset({"DELEGATED"}),
}

# Builds the overview of one resource from it and its insight (None when none is recorded).
Build = Callable[[Resource, Resource | None], dict[str, Any]]


def lower_camel(type_name: str) -> str:
    """``ZoneIngressInsight`` -> ``zoneIngressInsight``: the key Kuma's overviews use."""
    return type_name[:1].lower() + type_name[1:]


def overview(res: Resource, insight: Resource | None, insight_type: str) -> dict[str, Any]:
    """Kuma's ``<Type>Overview`` of ``res``."""
    doc = to_universal(res)
    body: dict[str, Any] = {
        "type": f"{res.type}Overview",
        "mesh": res.mesh,
        "name": res.name,
        "creationTime": doc.get("creationTime"),
        "modificationTime": doc.get("modificationTime"),
        "labels": res.labels,
        lower_camel(res.type): {k: v for k, v in doc.items() if k not in _META},
        lower_camel(insight_type): insight.spec if insight is not None else {"subscriptions": []},
    }
    if not res.mesh:
        del body["mesh"]  # a global-scoped resource (ZoneIngress, Zone) has no mesh
    return body


def gateway_kind(dataplane: Resource) -> str | None:
    """``BUILTIN`` or ``DELEGATED`` for a gateway (Kuma's default type is delegated), None for a sidecar."""
    gateway = (dataplane.spec.get("networking") or {}).get("gateway")
    if not isinstance(gateway, dict):
        return None
    return "BUILTIN" if str(gateway.get("type", "")).upper() == "BUILTIN" else "DELEGATED"


def _with_gateway_filter(request: web.Request, flt: ListFilter) -> ListFilter:
    wanted = request.query.get("gateway")
    if wanted is None:
        return flt
    kinds = _GATEWAY_KINDS.get(wanted.lower())
    if kinds is None:
        raise ValidationError(
            [FieldError("gateway", f"invalid value {wanted!r}: use true, false, builtin or delegated")],
            title="Could not retrieve resources",
            source="query",
        )
    tags = flt.predicate

    def keep(res: Resource) -> bool:
        return gateway_kind(res) in kinds and (tags is None or tags(res))

    return ListFilter(labels=flt.labels, name_contains=flt.name_contains, predicate=keep)


class Overviews:
    """The overview routes of one type with an insight; ``build`` may add what a mode knows
    beyond the store (global's online verdict for zones)."""

    def __init__(self, rtype: ResourceType, build: Build | None = None) -> None:
        assert rtype.insight is not None, f"{rtype.name} has no insight"
        self.rtype = rtype
        self.insight_type: str = rtype.insight
        self.build: Build = build or (lambda res, insight: overview(res, insight, self.insight_type))

    async def _insight(self, request: web.Request, res: Resource) -> Resource | None:
        return await request.app[MANAGER].store.find(self.insight_type, res.name, res.mesh)

    async def _list(self, request: web.Request, mesh: str | None) -> web.Response:
        flt, offset, size = parse_list_query(request)
        if self.rtype.name == "Dataplane":
            flt = _with_gateway_filter(request, flt)
        page = await request.app[MANAGER].list(self.rtype.name, mesh, filter=flt, offset=offset, size=size)
        items = [self.build(res, await self._insight(request, res)) for res in page.items]
        return web.json_response(list_body(request, page.total, items, page.next_offset, size))

    async def list_items(self, request: web.Request) -> web.Response:
        return await self._list(request, request.match_info["mesh"] if self.rtype.scope is Scope.MESH else None)

    async def list_all_meshes(self, request: web.Request) -> web.Response:
        return await self._list(request, None)

    async def get(self, request: web.Request) -> web.Response:
        mesh = request.match_info.get("mesh", "")
        res = await request.app[MANAGER].get(self.rtype.name, request.match_info["name"], mesh)
        return web.json_response(self.build(res, await self._insight(request, res)))

    def routes(self) -> list[web.RouteDef]:
        """Kuma's overview paths of the type (to be added before its CRUD routes, whose
        ``{name}`` would otherwise take ``_overview``)."""
        legacy = LEGACY_PATHS.get(self.rtype.name)
        prefix = "/meshes/{mesh}" if self.rtype.scope is Scope.MESH else ""
        routes: list[web.RouteDef] = []
        for path in self.rtype.paths:
            routes += [
                web.get(f"{prefix}/{path}/_overview", self.list_items),
                web.get(f"{prefix}/{path}/{{name}}/_overview", self.get),
            ]
            if prefix:  # every mesh at once
                routes.append(web.get(f"/{path}/_overview", self.list_all_meshes))
        if legacy:
            routes += [web.get(f"{prefix}/{legacy}", self.list_items), web.get(f"{prefix}/{legacy}/{{name}}", self.get)]
            if prefix:
                routes.append(web.get(f"/{legacy}", self.list_all_meshes))
        return routes


def routes(registry: Registry, skip: tuple[str, ...] = ("Zone",)) -> list[web.RouteDef]:
    """Overview routes of every type with an insight but those in ``skip`` (global serves zones')."""
    found: list[web.RouteDef] = []
    for rtype in registry.filter(lambda t: t.insight is not None and t.name not in skip):
        found += Overviews(rtype).routes()
    return found
