"""Global-only API routes: zone tokens, zones with their insights, the global insight, zone deletion,
and a dataplane's ``_config`` / ``_rules`` / ``_policies``, answered with the zone to ask.

Zone-originated resources are stored at global as ``{zone}.{name}`` with labels
``zonemesh.io/origin=zone``, ``zonemesh.io/zone=<zone>`` and ``zonemesh.io/display-name=<name>``;
list them per zone with ``?filter[labels.zonemesh.io/zone]=zone-1``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from zonemesh.global_cp import insight
from zonemesh.global_cp.kds_server import GlobalKds
from zonemesh.global_cp.zones import zone_enabled
from zonemesh.shared.api import overview
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import read_document
from zonemesh.shared.resources.model import (
    DISPLAY_NAME_LABEL,
    ORIGIN_LABEL,
    ORIGIN_ZONE,
    ZONE_LABEL,
    Resource,
    ResourceKey,
    format_time,
)
from zonemesh.shared.resources.registry import REGISTRY, Scope, upstream_types
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import ListFilter, NotFound
from zonemesh.shared.tokens.zone import check_scope, issue_requested


def global_routes(kds: GlobalKds) -> list[web.RouteDef]:
    async def issue_zone_token(request: web.Request) -> web.Response:
        manager = request.app[MANAGER]
        await require_admin(request, manager.store)
        doc = await read_document(request)
        if not isinstance(doc, dict):
            raise ValidationError([FieldError("<body>", 'must be an object: {"zone": ..., "validFor": ...}')])
        errors: list[FieldError] = []
        # The name the zone will connect with: the rule of the Zone type, as KDS checks it.
        zone_errors = REGISTRY.get("Zone").name_errors(doc.get("zone"))
        errors += [FieldError("zone", e.reason) for e in zone_errors]
        zone = "" if zone_errors else str(doc["zone"])
        scope: list[str] = []
        requested = doc.get("scope") or []
        if not isinstance(requested, list) or not all(isinstance(s, str) for s in requested):
            errors.append(FieldError("scope", 'must be a list of scopes, e.g. ["cp"]'))
        else:
            try:
                scope = check_scope(requested)
            except ValueError as exc:
                errors.append(FieldError("scope", str(exc)))
        token = await issue_requested(manager.store, zone, scope, doc, errors)
        return web.Response(text=token, content_type="text/plain")

    def zone_overview(zone: Resource, _stored_insight: Resource | None) -> dict[str, Any]:
        """Kuma's ZoneOverview with global's live view of the zone (its insight as KDS keeps it,
        and ``state``/``online``: a heartbeat younger than the offline timeout)."""
        online = kds.zones is not None and kds.zones.is_online(zone.name)
        return overview.overview(zone, None, "ZoneInsight") | {
            "zone": {"enabled": zone_enabled(zone)},
            "zoneInsight": kds.zones.insight(zone.name) if kds.zones is not None else {},
            "state": "Online" if online else "Offline",
            "online": online,
        }

    async def global_insights(request: web.Request) -> web.Response:
        """Kuma's ``/global-insights``: how many resources of each global-scoped type (insights
        aside) this control plane holds."""
        store = request.app[MANAGER].store
        counts = {
            t.name: {"total": (await store.list(t.name, size=1)).total}
            for t in REGISTRY
            if t.scope is Scope.GLOBAL and not t.name.endswith("Insight")
        }
        return web.json_response(
            {"type": "GlobalInsights", "creationTime": format_time(datetime.now(UTC)), "resources": counts}
        )

    async def global_insight(request: web.Request) -> web.Response:
        store = request.app[MANAGER].store

        async def all_of(type: str) -> list[Resource]:
            return (await store.list(type, size=None)).items

        totals = {t.name: (await store.list(t.name, size=1)).total for t in REGISTRY}
        body = insight.global_insight(
            created_at=format_time(datetime.now(UTC)) or "",
            zones=await all_of("Zone"),
            zone_online=lambda name: kds.zones is not None and kds.zones.is_online(name),
            dataplanes=await all_of("Dataplane"),
            dataplane_insights=await all_of("DataplaneInsight"),
            ingresses=await all_of("ZoneIngress"),
            egresses=await all_of("ZoneEgress"),
            totals=totals,
            policy_types=[t.name for t in REGISTRY.policies()],
        )
        return web.json_response(body)

    async def delete_zone(request: web.Request) -> web.Response:
        """Refused while the zone is connected (Kuma's rule); then its synced resources go with it."""
        manager = request.app[MANAGER]
        await require_admin(request, manager.store)
        name = request.match_info["name"]
        if kds.zones is not None and kds.zones.is_online(name):
            raise web.HTTPConflict(
                reason="Conflict",
                text=f"unable to delete Zone {name!r}, Zone CP is still connected; "
                "stop the zone control plane (or disable the zone with enabled: false) and retry",
            )
        zone = await manager.store.find("Zone", name)
        if zone is None:
            raise NotFound(ResourceKey("Zone", "", name))
        owned: list[ResourceKey] = []
        for type in upstream_types():
            found = await manager.store.list(
                type, filter=ListFilter(labels={ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: name})
            )
            owned += [r.key for r in found.items]
        await manager.store.batch(deletes=[*owned, ResourceKey("ZoneInsight", "", name), zone.key])
        if kds.zones is not None:
            await kds.zones.forget(name)
        return web.json_response({})

    return [
        web.post("/tokens/zone", issue_zone_token),
        web.post("/tokens/zone/", issue_zone_token),
        *overview.Overviews(REGISTRY.get("Zone"), zone_overview).routes(),
        web.get("/global-insight", global_insight),
        web.get("/global-insights", global_insights),
        web.delete("/zones/{name}", delete_zone),
        *(web.get(f"/meshes/{{mesh}}/dataplanes/{{name}}/{what}", zone_data) for what in ZONE_DATA),
        *(zones_select(t.name, "_resources/dataplanes") for t in REGISTRY.policies()),
        zones_select("MeshGateway", "dataplanes"),
    ]


# What a zone computes for its proxies from its own view (the config it generates, the policies it
# applies). Global holds a copy of each Dataplane (named ``<zone>.<name>``) that may lag behind,
# and does not generate config: it answers these with the zone to ask instead of a guess.
ZONE_DATA = ("_config", "_rules", "_policies")


def zones_select(type_name: str, what: str) -> web.RouteDef:
    """Which proxies a policy or a MeshGateway selects is computed by the zones, from the Dataplanes
    they hold (zone_cp/inspect_api.py): global names the zones to ask."""
    rtype = REGISTRY.get(type_name)
    path = f"/meshes/{{mesh}}/{rtype.path}/{{name}}/{what}"

    async def handler(request: web.Request) -> web.Response:
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        store = request.app[MANAGER].store
        await store.get(type_name, name, mesh)  # 404 for no such policy or gateway
        zones = sorted(z.name for z in (await store.list("Zone")).items)
        raise web.HTTPBadRequest(
            reason="Bad Request",
            text=f"the proxies a {type_name} selects are computed by the zone control planes, which hold them: "
            f"ask the API of each zone's control plane (GET /meshes/{mesh}/{rtype.path}/{name}/{what}); zones: "
            + (", ".join(zones) or "none yet"),
        )

    return web.get(path, handler)


async def zone_data(request: web.Request) -> web.Response:
    mesh, name = request.match_info["mesh"], request.match_info["name"]
    what = request.path.rsplit("/", 1)[-1]
    dp = await request.app[MANAGER].store.find("Dataplane", name, mesh)
    if dp is None:
        raise NotFound(ResourceKey("Dataplane", mesh, name))
    zone = dp.labels.get(ZONE_LABEL, "")
    local = dp.labels.get(DISPLAY_NAME_LABEL) or name
    raise web.HTTPBadRequest(
        reason="Bad Request",
        text=f"the {what} of a dataplane is computed by the zone control plane it is connected to, not by "
        f"global: ask the API of the control plane of zone {zone!r} (GET /meshes/{mesh}/dataplanes/{local}/{what})",
    )
