"""The HTTP API application both control planes serve on :5681."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from zonemesh.shared.api import overview
from zonemesh.shared.api.auth import LOCALHOST_IS_ADMIN, auth_middleware
from zonemesh.shared.api.conditional import conditional_get
from zonemesh.shared.api.context import CONFIG_VIEW, INDEX, MANAGER
from zonemesh.shared.api.errors import error_middleware
from zonemesh.shared.api.gui import gui_routes
from zonemesh.shared.api.resources import check_path_names, resource_routes
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.registry import Scope
from zonemesh.shared.tokens import user as user_tokens


async def index(request: web.Request) -> web.Response:
    return web.json_response(request.app[INDEX])


async def config(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONFIG_VIEW])


def _describe_types() -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "path": t.path,
            "singularDisplayName": t.name,
            "pluralDisplayName": t.plural,
            "scope": "Mesh" if t.scope is Scope.MESH else "Global",
            "shortName": t.short_name,
            "readOnly": t.system,
            "includeInFederation": t.synced_down or t.synced_up,
            "policy": {"isTargetRef": True} if t.policy else None,
        }
        for t in REGISTRY
    ]


async def resources(request: web.Request) -> web.Response:
    return web.json_response({"resources": _describe_types()})


async def policies(request: web.Request) -> web.Response:
    return web.json_response({"policies": [d for d in _describe_types() if d["policy"]]})


def build_api_app(
    manager: ResourceManager,
    index_doc: dict[str, Any],
    config_view: dict[str, Any],
    extra_routes: list[web.RouteDef] | None = None,
    localhost_is_admin: bool = True,
    gui: bool = True,
) -> web.Application:
    # error_middleware outside: a refused token or name becomes a Kuma-format 401/400 like any other error.
    app = web.Application(
        middlewares=[error_middleware, conditional_get, check_path_names, auth_middleware],
        client_max_size=10 * 1024 * 1024,
    )
    app[MANAGER] = manager
    app[LOCALHOST_IS_ADMIN] = localhost_is_admin
    app[INDEX] = index_doc
    app[CONFIG_VIEW] = config_view
    app.router.add_routes(
        [
            web.get("/", index),
            web.get("/config", config),
            web.get("/_resources", resources),
            web.get("/policies", policies),
            *user_tokens.routes(),
            *overview.routes(),
            *(gui_routes() if gui else []),
            *(extra_routes or []),
            *resource_routes(REGISTRY),
        ]
    )
    return app
