"""Kuma's inspect endpoints for which proxies a policy or a MeshGateway selects (xds/affected.py).

Served by zone and standalone control planes, which hold their proxies' Dataplanes; global
answers them with the zones to ask (global_cp/api.py). Ordinary reads: they show the names and
labels of Dataplanes, which a list of Dataplanes shows too.
"""

from __future__ import annotations

import re

from aiohttp import web
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import page_query
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.zone_cp.xds import affected

GATEWAY_TYPE = "MeshGateway"


def _offset(text: str | None) -> int:
    """Kuma's offset of an inspect list: a position (ASCII digits)."""
    if text is None:
        return 0
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise ValidationError(
            [FieldError("offset", "must be a non-negative integer")], title="Invalid offset", source="query"
        )
    return int(text)


def policy_dataplanes(policy_type: str) -> web.RouteDef:
    rtype = REGISTRY.get(policy_type)

    async def handler(request: web.Request) -> web.Response:
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        offset_text, size, errors = page_query(request)
        if errors:
            raise ValidationError(errors, title="Could not retrieve resources", source="query")
        offset = _offset(offset_text)
        manager = request.app[MANAGER]
        policy = await manager.get(policy_type, name, mesh)  # 404 when there is no such policy
        store = manager.store
        found = affected.selected_dataplanes(
            policy,
            (await store.list("Dataplane", mesh)).items,
            (await store.list(GATEWAY_TYPE, mesh)).items,
            (await store.list(affected.MESH_HTTP_ROUTE, mesh)).items,
        )
        contains = request.query.get("name")
        if contains:
            found = [dp for dp in found if contains in dp.name]
        body: dict[str, object] = {
            "total": len(found),
            "items": [affected.meta(dp) for dp in found[offset : offset + size]],
        }
        if offset + size < len(found):  # Kuma's "next" is a URL, left out on the last page
            body["next"] = str(request.url.update_query({"offset": str(offset + size), "size": str(size)}))
        return web.json_response(body)

    return web.get(f"/meshes/{{mesh}}/{rtype.path}/{{name}}/_resources/dataplanes", handler)


async def gateway_dataplanes(request: web.Request) -> web.Response:
    """kumactl's ``inspect meshgateway NAME``: ``{"total", "items": [{"dataplane": {"mesh", "name"}}]}``."""
    mesh, name = request.match_info["mesh"], request.match_info["name"]
    manager = request.app[MANAGER]
    gateway = await manager.get(GATEWAY_TYPE, name, mesh)
    store = manager.store
    found = affected.gateway_dataplanes(
        gateway, (await store.list("Dataplane", mesh)).items, (await store.list(GATEWAY_TYPE, mesh)).items
    )
    items = [{"dataplane": {"mesh": dp.mesh, "name": dp.name}} for dp in found]
    return web.json_response({"total": len(items), "items": items})


def routes() -> list[web.RouteDef]:
    gateways = REGISTRY.get(GATEWAY_TYPE).path
    return [
        *(policy_dataplanes(t.name) for t in REGISTRY.policies()),
        web.get(f"/meshes/{{mesh}}/{gateways}/{{name}}/dataplanes", gateway_dataplanes),
    ]
