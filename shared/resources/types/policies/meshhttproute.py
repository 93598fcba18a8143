"""MeshHTTPRoute: HTTP routing (matches, filters, weighted backends) per destination.

Unlike other policies a `to` entry holds ``rules`` (each with ``matches`` and a
``default``) rather than a single ``default``, so the spec is written out here instead of
going through ``policy_spec``. Applied by ``zone_cp/xds/policies/meshhttproute.py`` on sidecar
outbounds and, with a top-level MeshGateway targetRef, on builtin gateway listeners.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import (
    Bool,
    Enum,
    Errors,
    FieldError,
    Int,
    List,
    Node,
    Obj,
    Str,
    at_least_one,
)
from zonemesh.shared.resources.types.common import PORT, is_ip
from zonemesh.shared.resources.types.policies.common import (
    HEADER_MATCH,
    HEADER_NAME,
    HEADER_VALUE,
    PERCENTAGE,
    backend_ref,
    backend_ref_not_yet,
    gateway_to_mesh_only,
    not_empty,
    policy_semantic,
    sidecar_to_kinds,
    top_kind,
    type_matches_field,
)
from zonemesh.shared.resources.types.targetref import (
    GATEWAY,
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    TOP_KINDS,
    not_supported,
    selectable_proxy_types,
    target_ref,
    top_level,
)

METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class PreciseHostname(Node):
    """A DNS name Envoy can put in a Host header: RFC 1123, lower case, not an IP address."""

    _node = Str(
        min_len=1,
        max_len=253,
        pattern=r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
        pattern_reason="must be a lower-case DNS name (RFC 1123)",
    )

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if isinstance(value, str) and is_ip(value):
            errors.add(path, "cannot be an IP address")
            return
        self._node.check(value, path, errors)


def _absolute_path(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    kind, text = value.get("type"), value.get("value")
    if kind not in ("Exact", "PathPrefix") or not isinstance(text, str) or not text:
        return
    if not text.startswith("/"):
        errors.add(f"{path}.value", "must be an absolute path")
    elif kind == "PathPrefix" and text != "/" and text.endswith("/"):
        errors.add(
            f"{path}.value",
            "does not need a trailing slash because only a `/`-separated prefix or an entire path is matched",
        )


def _unique_query_params(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    params = value.get("queryParams")
    if not isinstance(params, list):
        return
    seen: set[str] = set()
    for i, param in enumerate(params):
        name = param.get("name") if isinstance(param, Mapping) else None
        if isinstance(name, str) and name in seen:
            errors.add(f"{path}.queryParams[{i}].name", f"multiple entries for name {name}")
        if isinstance(name, str):
            seen.add(name)


MATCH = Obj(
    {
        "path": Obj(
            {"type": Enum("Exact", "PathPrefix", "RegularExpression"), "value": Str(min_len=1)},
            required=("type", "value"),
            checks=(_absolute_path,),
        ),
        "method": Enum(*METHODS),
        "queryParams": List(
            Obj(
                {"type": Enum("Exact", "RegularExpression"), "name": Str(min_len=1), "value": Str()},
                required=("type", "name"),
            )
        ),
        "headers": List(HEADER_MATCH),
    },
    checks=(_unique_query_params,),
)


def _unique_header_names(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Only one action per header name, as in the Gateway API."""
    seen: set[str] = set()
    for action in ("set", "add", "remove"):
        items = value.get(action)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, Mapping) else item
            if not isinstance(name, str):
                continue
            if name in seen:
                errors.add(f"{path}.{action}[{i}]", f"duplicate header name {name!r}")
            seen.add(name)


HEADER_MODIFIER = Obj(
    {
        "set": List(HEADER_VALUE, max_items=16),
        "add": List(HEADER_VALUE, max_items=16),
        "remove": List(HEADER_NAME, max_items=16),
    },
    checks=(at_least_one("set", "add", "remove"), _unique_header_names),
)

PATH_REWRITE = Obj(
    {
        "type": Enum("ReplaceFullPath", "ReplacePrefixMatch"),
        "replaceFullPath": Str(),
        "replacePrefixMatch": Str(),
    },
    required=("type",),
    checks=(type_matches_field({"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}),),
)


def _redirect_status(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    status = value.get("statusCode")
    if isinstance(status, int) and status not in REDIRECT_STATUSES:
        errors.add(f"{path}.statusCode", f"must be one of: {', '.join(map(str, REDIRECT_STATUSES))}")


def _host_rewrite(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    if value.get("hostToBackendHostname") is True and value.get("hostname") is not None:
        errors.add(f"{path}.hostToBackendHostname", "cannot be set together with hostname")


FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
}

FILTER = Obj(
    {
        "type": Enum(*FILTER_FIELDS),
        "requestHeaderModifier": HEADER_MODIFIER,
        "responseHeaderModifier": HEADER_MODIFIER,
        "requestRedirect": Obj(
            {
                "scheme": Enum("http", "https"),
                "hostname": PreciseHostname(),
                "path": PATH_REWRITE,
                "port": PORT,
                "statusCode": Int(),
            },
            checks=(_redirect_status,),
        ),
        "urlRewrite": Obj(
            {"hostname": PreciseHostname(), "path": PATH_REWRITE, "hostToBackendHostname": Bool()},
            checks=(_host_rewrite,),
        ),
        "requestMirror": Obj(
            {"percentage": PERCENTAGE, "backendRef": backend_ref(weighted=False)},
            required=("backendRef",),
        ),
    },
    required=("type",),
    checks=(type_matches_field(FILTER_FIELDS),),
)


def _prefix_rewrite_needs_prefix_matches(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Replacing "the matched prefix" means nothing unless every match is a path prefix."""
    matches = value.get("matches")
    conf = value.get("default")
    if not isinstance(matches, list) or not isinstance(conf, Mapping) or not isinstance(conf.get("filters"), list):
        return
    all_prefix = all(
        isinstance(m, Mapping) and isinstance(m.get("path"), Mapping) and m["path"].get("type") == "PathPrefix"
        for m in matches
    )
    if all_prefix:
        return
    for i, filt in enumerate(conf["filters"]):
        if not isinstance(filt, Mapping):
            continue
        for field in ("requestRedirect", "urlRewrite"):
            rewrite = filt.get(field)
            rewrite_path = rewrite.get("path") if isinstance(rewrite, Mapping) else None
            if isinstance(rewrite_path, Mapping) and rewrite_path.get("replacePrefixMatch") is not None:
                errors.add(
                    f"{path}.default.filters[{i}].{field}.path.replacePrefixMatch",
                    "can only appear if all matches match a path prefix",
                )


def _redirect_alone(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """A redirect answers the request itself: nothing is forwarded to rewrite or mirror (the
    Gateway API forbids RequestRedirect with URLRewrite too)."""
    filters = value.get("filters")
    if not isinstance(filters, list):
        return
    kinds = [f.get("type") for f in filters if isinstance(f, Mapping)]
    if "RequestRedirect" not in kinds:
        return
    for i, kind in enumerate(kinds):
        if kind in ("URLRewrite", "RequestMirror"):
            errors.add(f"{path}.filters[{i}].type", f"{kind} cannot be combined with RequestRedirect")
    if kinds.count("RequestRedirect") > 1:
        errors.add(f"{path}.filters", "must hold at most one RequestRedirect")


RULE = Obj(
    {
        "matches": List(MATCH, min_items=1),
        "default": Obj(
            {"filters": List(FILTER), "backendRefs": List(backend_ref(weighted=True))}, checks=(_redirect_alone,)
        ),
    },
    required=("matches", "default"),
    checks=(_prefix_rewrite_needs_prefix_matches,),
)

SPEC = Obj(
    {
        "targetRef": target_ref(TOP_KINDS, top_level=True, listener_tags=True),
        "to": List(
            Obj(
                {
                    "targetRef": target_ref((MESH, MESH_SERVICE)),
                    "hostnames": List(Str(min_len=1)),
                    "rules": List(RULE, min_items=1),
                },
                required=("targetRef", "rules"),
            )
        ),
    },
    required=("to",),
)


def _gateway_only_fields(spec: Mapping[str, Any]) -> list[FieldError]:
    """Hostnames, host rewriting to the backend, and backend-less rules only make sense on a
    gateway: a sidecar route already knows its destination host and backend."""
    if top_kind(spec) == MESH_GATEWAY:
        return _gateway_rules_need_backends(spec)
    errors: list[FieldError] = []
    for i, entry in enumerate(spec["to"]):
        if entry.get("hostnames"):
            errors.append(
                FieldError(f"spec.to[{i}].hostnames", "can only be set when the top-level targetRef is a MeshGateway")
            )
        for j, rule in enumerate(entry["rules"]):
            for k, filt in enumerate(rule["default"].get("filters") or []):
                if (filt.get("urlRewrite") or {}).get("hostToBackendHostname"):
                    errors.append(
                        FieldError(
                            f"spec.to[{i}].rules[{j}].default.filters[{k}].urlRewrite.hostToBackendHostname",
                            "can only be set when the top-level targetRef is a MeshGateway",
                        )
                    )
    return errors


def gateways_need_mesh_gateway(spec: Mapping[str, Any]) -> list[FieldError]:
    """On builtin gateways a route applies with a top-level MeshGateway targetRef (its `to`
    targets Mesh); one whose targetRef selects only gateways otherwise would route nothing."""
    ref = top_level(spec)
    if ref.get("kind") == MESH_GATEWAY or selectable_proxy_types(ref) != {GATEWAY}:
        return []
    return [
        FieldError(
            "spec.targetRef",
            "selects only gateways, where routes apply with a top-level MeshGateway targetRef: use kind MeshGateway",
        )
    ]


def _gateway_rules_need_backends(spec: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, entry in enumerate(spec["to"]):
        for j, rule in enumerate(entry["rules"]):
            conf = rule["default"]
            redirects = any(f["type"] == "RequestRedirect" for f in conf.get("filters") or [])
            if not conf.get("backendRefs") and not redirects:
                errors.append(
                    FieldError(
                        f"spec.to[{i}].rules[{j}].default.backendRefs",
                        "must not be empty on a MeshGateway route unless the rule redirects",
                    )
                )
    return errors


def backend_refs(spec: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Every backendRef of a route spec (MeshHTTPRoute or MeshTCPRoute) with its path: the
    rules' backends and the mirrors' backends."""
    for i, entry in enumerate(spec.get("to") or []):
        for j, rule in enumerate(entry.get("rules") or [] if isinstance(entry, Mapping) else []):
            conf = rule.get("default") if isinstance(rule, Mapping) else None
            if not isinstance(conf, Mapping):
                continue
            where = f"spec.to[{i}].rules[{j}].default"
            for k, ref in enumerate(conf.get("backendRefs") or []):
                yield f"{where}.backendRefs[{k}]", ref
            for k, filt in enumerate(conf.get("filters") or []):
                mirror = filt.get("requestMirror") if isinstance(filt, Mapping) else None
                if isinstance(mirror, Mapping) and isinstance(mirror.get("backendRef"), Mapping):
                    yield f"{where}.filters[{k}].requestMirror.backendRef", mirror["backendRef"]


def backend_refs_not_yet(res: Resource) -> list[FieldError]:
    """The backendRefs of a route that zonemesh cannot route to yet (``backend_ref_not_yet``)."""
    return [error for path, ref in backend_refs(res.spec) for error in backend_ref_not_yet(ref, path, res.mesh)]


def _not_yet(res: Resource) -> list[FieldError]:
    errors = backend_refs_not_yet(res)
    for i, entry in enumerate(res.spec.get("to") or []):
        for j, rule in enumerate(entry.get("rules") or []):
            for k, filt in enumerate((rule.get("default") or {}).get("filters") or []):
                if (filt.get("urlRewrite") or {}).get("hostToBackendHostname") is not None:
                    errors.append(
                        FieldError(
                            f"spec.to[{i}].rules[{j}].default.filters[{k}].urlRewrite.hostToBackendHostname",
                            not_supported("MeshHTTPRoute urlRewrite.hostToBackendHostname")
                            + " (the mesh's endpoints carry no hostname to rewrite to: use hostname)",
                        )
                    )
    return errors


MESH_HTTP_ROUTE = register(
    ResourceType(
        name="MeshHTTPRoute",
        plural="meshhttproutes",
        short_name="mhttpr",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        # Outbounds of sidecars (and delegated gateways); builtin gateway listeners with a
        # top-level MeshGateway targetRef (generators/gateway.py).
        support=PolicySupport(plugin="meshhttproute", sidecar=("to",), gateway=("to",), not_yet=_not_yet),
        spec=SPEC,
        semantic=policy_semantic(
            not_empty("to"),
            gateway_to_mesh_only,
            sidecar_to_kinds(MESH_SERVICE),
            _gateway_only_fields,
            gateways_need_mesh_gateway,
        ),
    )
)
