"""REST routes for every registered resource type, built from the registry.

Mesh-scoped types live under ``/meshes/{mesh}/<path>`` (plus a cross-mesh ``/<path>`` list),
global-scoped under ``/<path>``. Items: GET, PUT (create 201 / update 200), DELETE.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import Handler
from zonemesh.shared.resources.codec import MAX_VERSION, from_universal, parse_document, to_universal
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.redaction import has_markers, redact, restore
from zonemesh.shared.resources.registry import Registry, ResourceType, Scope
from zonemesh.shared.resources.schema import (
    EARLIER_NAME,
    MESH_NAME,
    RESOURCE_NAME,
    FieldError,
    ValidationError,
    check_name,
)
from zonemesh.shared.store import ListFilter
from zonemesh.shared.store.base import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

_LABEL_FILTER = re.compile(r"filter\[labels\.(.+)\]")
# An ETag as responses send it ("3"), weak or bare forms too; 19 digits hold any int64.
_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,19})"?')


def resource_routes(registry: Registry) -> list[web.RouteDef]:
    """The CRUD routes of every type, under its path and each of its ``path_aliases`` (as Kuma
    serves a type's AlternativeWsPath)."""
    routes: list[web.RouteDef] = []
    for rtype in registry:
        handlers = _Handlers(rtype)
        for path in rtype.paths:
            if rtype.scope is Scope.MESH:
                coll, item = f"/meshes/{{mesh}}/{path}", f"/meshes/{{mesh}}/{path}/{{name}}"
                routes.append(web.get(f"/{path}", handlers.list_all_meshes))
            else:
                coll, item = f"/{path}", f"/{path}/{{name}}"
            routes += [
                web.get(coll, handlers.list),
                web.get(item, handlers.get),
                web.put(item, handlers.put),
                web.delete(item, handlers.delete),
            ]
    return routes


def resource_tags(res: Resource) -> list[dict[str, str]]:
    """Tag groups a resource carries (dataplane inbounds/gateway, external services), for ?tag= filters."""
    spec = res.spec
    networking = spec.get("networking") or {}
    groups = [i.get("tags") or {} for i in networking.get("inbound") or []]
    if networking.get("gateway"):
        groups.append(networking["gateway"].get("tags") or {})
    if isinstance(spec.get("tags"), dict):
        groups.append(spec["tags"])
    return groups


@web.middleware
async def check_path_names(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``{mesh}`` and ``{name}`` of a route is a resource name, percent-decoded by the router
    (``..%2F..%2Fetc`` arrives as ``../../etc``): one the name rule refuses gets a 400 before any
    handler looks it up or stores it. Types with a stricter rule (Mesh, Zone) apply it on writes."""
    errors: list[FieldError] = []
    deleting = request.method == "DELETE"  # a name stored before the rule was Kuma's can be removed
    if "mesh" in request.match_info:
        errors += check_name(request.match_info["mesh"], "mesh", EARLIER_NAME if deleting else MESH_NAME)
    if "name" in request.match_info:
        errors += check_name(request.match_info["name"], "name", EARLIER_NAME if deleting else RESOURCE_NAME)
    if errors:
        raise ValidationError(errors, title="Invalid resource name", source="path")
    return await handler(request)


def page_query(request: web.Request) -> tuple[str | None, int, list[FieldError]]:
    """``?offset=`` (an opaque token, checked by the store) and ``?size=`` of a list request,
    with the problems found in them."""
    errors: list[FieldError] = []
    size = DEFAULT_PAGE_SIZE
    if "size" in request.query:
        text = request.query["size"]
        # ASCII digits only: int() also takes "+5", " 5", "1_0" and non-ASCII digits (fullwidth, Arabic-Indic).
        if re.fullmatch(r"[0-9]{1,4}", text) and 1 <= int(text) <= MAX_PAGE_SIZE:
            size = int(text)
        else:
            errors.append(FieldError("size", f"must be an integer between 1 and {MAX_PAGE_SIZE}"))
    return request.query.get("offset") or None, size, errors


def parse_version(text: str, field: str) -> int | None:
    """The version a write is conditional on, from ``If-Match`` or ``?version=``; None for "" and "*"
    (no condition)."""
    text = text.strip()
    if not text or text == "*":
        return None
    match = _ETAG.fullmatch(text)
    if match is None or int(match.group(1)) > MAX_VERSION:
        raise ValidationError(
            [FieldError(field, 'must be the version of the resource, as its ETag gives it (e.g. "3"), or *')],
            title="Invalid precondition",
            source="header" if field == "If-Match" else "query",
        )
    return int(match.group(1))


def parse_list_query(request: web.Request) -> tuple[ListFilter, str | None, int]:
    offset, size, errors = page_query(request)
    labels: dict[str, str] = {}
    tags: list[tuple[str, str]] = []
    for key, value in request.query.items():
        if match := _LABEL_FILTER.fullmatch(key):
            labels[match.group(1)] = value
        elif key == "tag":
            tag_key, sep, tag_value = value.partition(":")
            if not sep or not tag_key:
                errors.append(FieldError("tag", f"invalid tag filter {value!r}: use key:value"))
            tags.append((tag_key, tag_value))
    if errors:
        raise ValidationError(errors, title="Could not retrieve resources", source="query")

    def has_tags(res: Resource) -> bool:
        groups = resource_tags(res)
        return all(any(g.get(k) == v for g in groups) for k, v in tags)

    flt = ListFilter(
        labels=labels or None,
        name_contains=request.query.get("name") or None,
        predicate=has_tags if tags else None,
    )
    return flt, offset, size


async def read_document(request: web.Request) -> Any:
    """The request body as one JSON or YAML document (UTF-8, within codec's bounds), else a 400."""
    return parse_document(await request.read())


def served(res: Resource) -> dict[str, Any]:
    """A resource as the API shows it: inline private keys redacted (shared/resources/redaction.py)."""
    return to_universal(redact(res))


def list_body(request: web.Request, total: int, items: list[Any], next_offset: str | None, size: int) -> dict[str, Any]:
    """A page of a list as Kuma's schema gives it: ``total``, ``items`` and ``next``, the URL of the
    next page, only while there is one (Kuma's schema types ``next`` as a string, never null; a
    client that reads a missing ``next`` as Kuma's null sees the last page either way)."""
    body: dict[str, Any] = {"total": total, "items": items}
    if next_offset is not None:
        body["next"] = str(request.url.update_query({"offset": next_offset, "size": str(size)}))
    return body


def _json(res: Resource, status: int = 200) -> web.Response:
    response = web.json_response(served(res), status=status)
    response.headers["ETag"] = f'"{res.version}"'
    return response


class _Handlers:
    def __init__(self, rtype: ResourceType) -> None:
        self.rtype = rtype

    async def _guard_read(self, request: web.Request) -> None:
        if self.rtype.sensitive:
            await require_admin(request, request.app[MANAGER].store)

    async def list(self, request: web.Request) -> web.Response:
        """A mesh that does not exist has nothing in it: an empty list (200), as Kuma answers."""
        mesh = request.match_info.get("mesh", "")
        await self._guard_read(request)
        return await self._list(request, mesh if self.rtype.scope is Scope.MESH else None)

    async def list_all_meshes(self, request: web.Request) -> web.Response:
        await self._guard_read(request)
        return await self._list(request, None)

    async def _list(self, request: web.Request, mesh: str | None) -> web.Response:
        flt, offset, size = parse_list_query(request)
        result = await request.app[MANAGER].list(self.rtype.name, mesh, filter=flt, offset=offset, size=size)
        items = [served(r) for r in result.items]
        return web.json_response(list_body(request, result.total, items, result.next_offset, size))

    async def get(self, request: web.Request) -> web.Response:
        await self._guard_read(request)
        mesh = request.match_info.get("mesh", "")
        return _json(await request.app[MANAGER].get(self.rtype.name, request.match_info["name"], mesh))

    async def put(self, request: web.Request) -> web.Response:
        manager = request.app[MANAGER]
        await require_admin(request, manager.store)
        manager.check_writable(self.rtype)
        mesh = request.match_info.get("mesh") if self.rtype.scope is Scope.MESH else None
        doc = await read_document(request)
        res, version = from_universal(doc, expected_type=self.rtype, mesh=mesh, name=request.match_info["name"])
        if has_markers(res):  # a key shown redacted (GET) and applied back stands for the stored one
            res = restore(res, await manager.store.find(res.type, res.name, res.mesh))
        if version is None:
            version = parse_version(request.headers.get("If-Match", ""), "If-Match")
        stored, created = await manager.apply(res, version)
        return _json(stored, 201 if created else 200)

    async def delete(self, request: web.Request) -> web.Response:
        manager = request.app[MANAGER]
        await require_admin(request, manager.store)
        manager.check_writable(self.rtype)
        if "version" in request.query:
            version = parse_version(request.query["version"], "version")
        else:
            version = parse_version(request.headers.get("If-Match", ""), "If-Match")
        await manager.delete(
            self.rtype.name, request.match_info["name"], request.match_info.get("mesh", ""), version=version
        )
        return web.json_response({})
