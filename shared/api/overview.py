"""Each Dataplane with its DataplaneInsight (Kuma's DataplaneOverview), on every control plane.

``GET /meshes/{mesh}/dataplanes+insights``, ``GET /dataplanes+insights`` (every mesh) and
``GET /meshes/{mesh}/dataplanes+insights/{name}``. A zone holds its own proxies' Dataplanes and
the insights it records (zone_cp/insights.py); global holds the copies zones upload, each
Dataplane and its insight under the same ``{zone}.{name}``: the join is the same on both.

Lists take the filters of other lists (``name``, ``tag``, ``filter[labels.<key>]``, ``size`` and
``offset``: shared/api/resources.py) and Kuma's ``gateway``: ``true`` (gateways only), ``false``
(no gateways), ``builtin`` or ``delegated``. Each page reads one insight per Dataplane on it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import parse_list_query
from zonemesh.shared.resources.codec import to_universal
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import ListFilter

# ?gateway= value -> which Dataplanes it keeps, by the kind of their networking.gateway (None: a sidecar).
_GATEWAY_KINDS: dict[str, frozenset[str | None]] = {
    "true": frozenset({"BUILTIN", "DELEGATED"}),
    "false": frozenset({None}),
    "builtin": frozenset({"BUILTIN"}),
    "delegated": frozenset({"DELEGATED"}),
}


def gateway_kind(dataplane: Resource) -> str | None:
    """``BUILTIN`` or ``DELEGATED`` for a gateway (Kuma's default type is delegated), None for a sidecar."""
    gateway = (dataplane.spec.get("networking") or {}).get("gateway")
    if not isinstance(gateway, dict):
        return None
    return "BUILTIN" if str(gateway.get("type", "")).upper() == "BUILTIN" else "DELEGATED"


def overview(dataplane: Resource, insight: Resource | None) -> dict[str, Any]:
    doc = to_universal(dataplane)
    spec = {k: v for k, v in doc.items() if k not in ("type", "mesh", "name", "creationTime", "modificationTime")}
    spec.pop("version", None)
    return {
        "type": "DataplaneOverview",
        "mesh": dataplane.mesh,
        "name": dataplane.name,
        "creationTime": doc.get("creationTime"),
        "modificationTime": doc.get("modificationTime"),
        "labels": dataplane.labels,
        "dataplane": {k: v for k, v in spec.items() if k != "labels"},
        "dataplaneInsight": insight.spec if insight is not None else {"subscriptions": []},
    }


def _with_gateway_filter(request: web.Request, flt: ListFilter) -> ListFilter:
    wanted = request.query.get("gateway")
    if wanted is None:
        return flt
    kinds = _GATEWAY_KINDS.get(wanted.lower())
    if kinds is None:
        raise ValidationError(
            [FieldError("gateway", f"invalid value {wanted!r}: use true, false, builtin or delegated")],
            title="Could not retrieve resources",
        )
    tags = flt.predicate

    def keep(res: Resource) -> bool:
        return gateway_kind(res) in kinds and (tags is None or tags(res))

    return ListFilter(labels=flt.labels, name_contains=flt.name_contains, predicate=keep)


async def _list(request: web.Request, mesh: str | None) -> web.Response:
    manager = request.app[MANAGER]
    flt, offset, size = parse_list_query(request)
    flt = _with_gateway_filter(request, flt)
    if mesh is not None:
        await manager.get("Mesh", mesh)  # 404 for a mesh that does not exist, as other mesh lists
    page = await manager.list("Dataplane", mesh, filter=flt, offset=offset, size=size)
    items = []
    for dataplane in page.items:
        insight = await manager.store.find("DataplaneInsight", dataplane.name, dataplane.mesh)
        items.append(overview(dataplane, insight))
    next_url = None
    if page.next_offset is not None:
        next_url = str(request.url.update_query({"offset": page.next_offset, "size": str(size)}))
    return web.json_response({"total": page.total, "items": items, "next": next_url})


async def dataplanes_insights(request: web.Request) -> web.Response:
    return await _list(request, request.match_info["mesh"])


async def all_dataplanes_insights(request: web.Request) -> web.Response:
    return await _list(request, None)


async def dataplane_insight_overview(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    mesh, name = request.match_info["mesh"], request.match_info["name"]
    dataplane = await manager.get("Dataplane", name, mesh)
    return web.json_response(overview(dataplane, await manager.store.find("DataplaneInsight", name, mesh)))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/dataplanes+insights", all_dataplanes_insights),
        web.get("/meshes/{mesh}/dataplanes+insights", dataplanes_insights),
        web.get("/meshes/{mesh}/dataplanes+insights/{name}", dataplane_insight_overview),
    ]
