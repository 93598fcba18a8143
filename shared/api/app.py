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
from zonemesh.shared.resources.manager import ReadOnly, ResourceManager
from zonemesh.shared.resources.registry import ResourceType, Scope
from zonemesh.shared.tokens import user as user_tokens


async def index(request: web.Request) -> web.Response:
    return web.json_response(request.app[INDEX])


async def config(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONFIG_VIEW])


def _writable(manager: ResourceManager, rtype: ResourceType) -> bool:
    try:
        manager.check_writable(rtype)
    except ReadOnly:
        return False
    return True


def describe_type(rtype: ResourceType, manager: ResourceManager) -> dict[str, Any]:
    """Kuma's ResourceTypeDescription of a type, as this control plane serves it."""
    description: dict[str, Any] = {
        "name": rtype.name,
        "path": rtype.path,
        "singularDisplayName": rtype.display_name,
        "pluralDisplayName": rtype.plural_display_name,
        "scope": "Mesh" if rtype.scope is Scope.MESH else "Global",
        "shortName": rtype.short_name or "",
        "readOnly": not _writable(manager, rtype),
        # Kuma: what a federation export carries, the types global sends to zones that users write.
        "includeInFederation": rtype.synced_down and not rtype.system,
    }
    if rtype.policy:
        description["policy"] = {
            "isTargetRef": True,
            "hasToTargetRef": rtype.has_section("to"),
            "hasFromTargetRef": rtype.has_section("from"),
            "hasRulesTargetRef": rtype.has_section("rules"),
            "isFromAsRules": rtype.from_as_rules,
        }
    return description


async def resources(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    return web.json_response({"resources": [describe_type(t, manager) for t in sorted(REGISTRY, key=lambda t: t.name)]})


async def policies(request: web.Request) -> web.Response:
    """The targetRef policy types: each with its ResourceTypeDescription and the fields of Kuma's
    ``/policies`` entries (``isTargetRefBased``, ``isInbound``, ``isOutbound``, ``isExperimental``)."""
    manager = request.app[MANAGER]
    entries = []
    for rtype in sorted(REGISTRY.policies(), key=lambda t: t.name):
        description = describe_type(rtype, manager)
        entries.append(
            description
            | {
                "isExperimental": False,
                "isTargetRefBased": True,
                "isInbound": description["policy"]["hasFromTargetRef"],
                "isOutbound": description["policy"]["hasToTargetRef"],
            }
        )
    return web.json_response({"policies": entries})


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
            *overview.routes(REGISTRY),
            *(gui_routes() if gui else []),
            *(extra_routes or []),
            *resource_routes(REGISTRY),
        ]
    )
    return app
