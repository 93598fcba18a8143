"""MeshGateway / MeshGatewayRoute: registry declarations and field-by-field validation.

Invalid cases start from a small valid document and change one thing, so each row shows
exactly what breaks it and which field/reason the API reports. The seed's own examples are in
testdata/resources/valid/gateway.yaml (validated by test_resources.py as written).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import pytest
from zonemesh.shared.resources import REGISTRY, Resource, Scope, Sync
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store.memory import MemoryStore

GATEWAY: dict[str, Any] = {
    "type": "MeshGateway",
    "mesh": "default",
    "name": "edge-gateway",
    "selectors": [{"match": {"kuma.io/service": "edge-gateway"}}],
    "conf": {
        "listeners": [{"port": 8080, "protocol": "HTTP", "hostname": "foo.example.com", "tags": {"port": "http"}}]
    },
}
ROUTE: dict[str, Any] = {
    "type": "MeshGatewayRoute",
    "mesh": "default",
    "name": "edge-route",
    "selectors": [{"match": {"kuma.io/service": "edge-gateway", "port": "http"}}],
    "conf": {
        "http": {
            "rules": [
                {
                    "matches": [{"path": {"match": "PREFIX", "value": "/"}}],
                    "backends": [{"weight": 1, "destination": {"kuma.io/service": "backend"}}],
                }
            ]
        }
    },
}


def errors_of(doc: Any) -> list[FieldError]:
    with pytest.raises(ValidationError) as exc:
        from_universal(doc)
    return exc.value.errors


def patched(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or delete, with value=...) one field, addressed like ``conf.listeners[0].port``."""
    doc = copy.deepcopy(base)
    parts: list[Any] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        parts.append(name)
        if rest:
            parts.extend(int(i) for i in rest.rstrip("]").split("]["))
    target = doc
    for key in parts[:-1]:
        target = target[key]
    if value is ...:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return doc


class Case(NamedTuple):
    id: str
    doc: dict[str, Any]
    field: str
    reason: str  # a substring of the reported reason


HTTP_LISTENER = {"port": 8080, "protocol": "HTTP"}
TCP_LISTENER = {"port": 8080, "protocol": "TCP"}
CASES = [
    Case("gw-missing-selectors", patched(GATEWAY, "selectors", ...), "selectors", "must be defined"),
    Case("gw-empty-selectors", patched(GATEWAY, "selectors", []), "selectors", "must not be empty"),
    Case("gw-empty-match", patched(GATEWAY, "selectors", [{"match": {}}]), "selectors[0].match", "must not be empty"),
    Case("gw-missing-conf", patched(GATEWAY, "conf", ...), "conf", "must be defined"),
    Case("gw-no-listeners", patched(GATEWAY, "conf.listeners", []), "conf.listeners", "must not be empty"),
    Case("gw-port-range", patched(GATEWAY, "conf.listeners[0].port", 70000), "conf.listeners[0].port", "65535"),
    Case("gw-missing-port", patched(GATEWAY, "conf.listeners[0].port", ...), "conf.listeners[0].port", "defined"),
    Case(
        "gw-protocol-udp",
        patched(GATEWAY, "conf.listeners[0].protocol", "UDP"),
        "conf.listeners[0].protocol",
        "must be one of: HTTP, HTTPS, TCP, TLS",
    ),
    Case(
        "gw-same-port-different-protocols",
        patched(GATEWAY, "conf.listeners", [HTTP_LISTENER, TCP_LISTENER]),
        "conf.listeners[1].protocol",
        "port 8080 is already used with protocol HTTP by listeners[0]",
    ),
    Case(
        "gw-same-port-same-hostname",
        patched(GATEWAY, "conf.listeners", [HTTP_LISTENER, HTTP_LISTENER]),
        "conf.listeners[1].hostname",
        "hostname '*' on port 8080 is already used by listeners[0]",
    ),
    Case(
        "gw-bad-hostname",
        patched(GATEWAY, "conf.listeners[0].hostname", "foo.*.com"),
        "conf.listeners[0].hostname",
        "wildcard",
    ),
    Case(
        "gw-tcp-hostname",
        patched(GATEWAY, "conf.listeners", [{**TCP_LISTENER, "hostname": "a.example.com"}]),
        "conf.listeners[0].hostname",
        "cannot be set with protocol TCP",
    ),
    Case(
        "gw-https-without-tls",
        patched(GATEWAY, "conf.listeners", [{"port": 8443, "protocol": "HTTPS"}]),
        "conf.listeners[0].tls",
        "must be defined with protocol HTTPS",
    ),
    Case(
        "gw-https-without-certificates",
        patched(GATEWAY, "conf.listeners", [{"port": 8443, "protocol": "HTTPS", "tls": {"mode": "TERMINATE"}}]),
        "conf.listeners[0].tls.certificates",
        "at least one certificate",
    ),
    Case(
        "gw-tls-passthrough",
        patched(
            GATEWAY,
            "conf.listeners",
            [{"port": 8443, "protocol": "TLS", "tls": {"mode": "PASSTHROUGH", "certificates": [{"secret": "s"}]}}],
        ),
        "conf.listeners[0].tls.mode",
        "PASSTHROUGH is not supported",
    ),
    Case(
        "gw-certificate-two-sources",
        patched(
            GATEWAY,
            "conf.listeners",
            [{"port": 8443, "protocol": "HTTPS", "tls": {"certificates": [{"secret": "s", "file": "/f"}]}}],
        ),
        "conf.listeners[0].tls.certificates[0]",
        "exactly one of",
    ),
    Case(
        "gw-tls-on-http",
        patched(GATEWAY, "conf.listeners[0].tls", {"certificates": [{"secret": "s"}]}),
        "conf.listeners[0].tls",
        "can only be set with protocol HTTPS or TLS",
    ),
    Case(
        "gw-cross-mesh-tcp",
        patched(GATEWAY, "conf.listeners", [{**TCP_LISTENER, "crossMesh": True}]),
        "conf.listeners[0].crossMesh",
        "only protocol HTTP, not TCP",
    ),
    Case(
        "gw-cross-mesh-two-selectors",
        patched(
            patched(GATEWAY, "conf.listeners[0].crossMesh", True),
            "selectors",
            [{"match": {"kuma.io/service": "a"}}, {"match": {"kuma.io/service": "b"}}],
        ),
        "selectors",
        "exactly one selector (has 2)",
    ),
    Case(
        "gw-unknown-field",
        patched(GATEWAY, "conf.listeners[0].proto", "HTTP"),
        "conf.listeners[0].proto",
        "unknown field",
    ),
    Case("route-missing-selectors", patched(ROUTE, "selectors", ...), "selectors", "must be defined"),
    Case("route-no-conf-kind", patched(ROUTE, "conf", {}), "conf", "exactly one of: http, tcp"),
    Case(
        "route-http-and-tcp",
        patched(ROUTE, "conf.tcp", {"rules": [{"backends": [{"destination": {"kuma.io/service": "x"}}]}]}),
        "conf",
        "exactly one of: http, tcp",
    ),
    Case("route-no-rules", patched(ROUTE, "conf.http.rules", []), "conf.http.rules", "must not be empty"),
    Case(
        "route-no-matches",
        patched(ROUTE, "conf.http.rules[0].matches", []),
        "conf.http.rules[0].matches",
        "must not be empty",
    ),
    Case(
        "route-empty-match",
        patched(ROUTE, "conf.http.rules[0].matches", [{}]),
        "conf.http.rules[0].matches[0]",
        "at least one of: path, method",
    ),
    Case(
        "route-path-match-kind",
        patched(ROUTE, "conf.http.rules[0].matches[0].path.match", "GLOB"),
        "conf.http.rules[0].matches[0].path.match",
        "must be one of: EXACT, PREFIX, REGEX",
    ),
    Case(
        "route-relative-path",
        patched(ROUTE, "conf.http.rules[0].matches[0].path.value", "api"),
        "conf.http.rules[0].matches[0].path.value",
        "must be an absolute path",
    ),
    Case(
        "route-bad-regex",
        patched(ROUTE, "conf.http.rules[0].matches[0].path", {"match": "REGEX", "value": "(unclosed"}),
        "conf.http.rules[0].matches[0].path.value",
        "not a valid regular expression",
    ),
    Case(
        "route-header-without-value",
        patched(ROUTE, "conf.http.rules[0].matches[0].headers", [{"match": "EXACT", "name": "x-a"}]),
        "conf.http.rules[0].matches[0].headers[0].value",
        "must be set with match EXACT",
    ),
    Case(
        "route-absent-header-with-value",
        patched(ROUTE, "conf.http.rules[0].matches[0].headers", [{"match": "ABSENT", "name": "x-a", "value": "1"}]),
        "conf.http.rules[0].matches[0].headers[0].value",
        "must not be set with match ABSENT",
    ),
    Case(
        "route-query-without-value",
        patched(ROUTE, "conf.http.rules[0].matches[0].queryParameters", [{"name": "q"}]),
        "conf.http.rules[0].matches[0].queryParameters[0].value",
        "must be set with match EXACT",
    ),
    Case(
        "route-no-backends",
        patched(ROUTE, "conf.http.rules[0].backends", ...),
        "conf.http.rules[0].backends",
        "at least one backend (or a redirect filter)",
    ),
    Case(
        "route-backend-without-service",
        patched(ROUTE, "conf.http.rules[0].backends", [{"destination": {"version": "v1"}}]),
        'conf.http.rules[0].backends[0].destination["kuma.io/service"]',
        "has to exist",
    ),
    Case(
        "route-negative-weight",
        patched(ROUTE, "conf.http.rules[0].backends[0].weight", -1),
        "conf.http.rules[0].backends[0].weight",
        "greater than or equal to 0",
    ),
    Case(
        "route-redirect-with-backends",
        patched(
            ROUTE,
            "conf.http.rules[0].filters",
            [{"redirect": {"scheme": "https", "hostname": "x.example.com", "statusCode": 301}}],
        ),
        "conf.http.rules[0].backends",
        "must not be set with a redirect filter",
    ),
    Case(
        "route-redirect-status",
        patched(
            patched(ROUTE, "conf.http.rules[0].backends", ...),
            "conf.http.rules[0].filters",
            [{"redirect": {"scheme": "https", "hostname": "x.example.com", "statusCode": 200}}],
        ),
        "conf.http.rules[0].filters[0].redirect.statusCode",
        "must be one of: 301, 302, 303, 307, 308",
    ),
    Case(
        "route-filter-two-kinds",
        patched(ROUTE, "conf.http.rules[0].filters", [{"requestHeader": {}, "rewrite": {"replaceFull": "/"}}]),
        "conf.http.rules[0].filters[0]",
        "exactly one of",
    ),
    Case(
        "route-rewrite-both-paths",
        patched(ROUTE, "conf.http.rules[0].filters", [{"rewrite": {"replaceFull": "/a", "replacePrefixMatch": "/"}}]),
        "conf.http.rules[0].filters[0].rewrite",
        "only one of replaceFull, replacePrefixMatch",
    ),
    Case(
        "route-prefix-rewrite-on-exact",
        patched(
            patched(ROUTE, "conf.http.rules[0].matches[0].path.match", "EXACT"),
            "conf.http.rules[0].filters",
            [{"rewrite": {"replacePrefixMatch": "/"}}],
        ),
        "conf.http.rules[0].matches[0].path",
        "replacePrefixMatch needs a PREFIX path match",
    ),
    Case(
        "route-tcp-no-backends",
        patched(ROUTE, "conf", {"tcp": {"rules": [{"backends": []}]}}),
        "conf.tcp.rules[0].backends",
        "must not be empty",
    ),
    Case(
        "route-tcp-matches",
        patched(ROUTE, "conf", {"tcp": {"rules": [{"matches": [{}], "backends": [{"destination": {"a": "b"}}]}]}}),
        "conf.tcp.rules[0].matches",
        "unknown field",
    ),
]


def test_bases_are_valid() -> None:
    assert from_universal(copy.deepcopy(GATEWAY))[0].spec["conf"] == GATEWAY["conf"]
    assert from_universal(copy.deepcopy(ROUTE))[0].spec["conf"] == ROUTE["conf"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid(case: Case) -> None:
    errors = errors_of(case.doc)
    found = [e for e in errors if e.field == case.field]
    assert found, f"no error at {case.field}; got {errors}"
    assert any(case.reason in e.reason for e in found), f"{case.reason!r} not in {found}"


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_listener_problem_is_reported_at_once() -> None:
    doc = patched(
        GATEWAY,
        "conf.listeners",
        [HTTP_LISTENER, {**TCP_LISTENER, "crossMesh": True}, {"port": 8443, "protocol": "HTTPS"}],
    )
    fields = {e.field for e in errors_of(doc)}
    assert {"conf.listeners[1].protocol", "conf.listeners[1].crossMesh", "conf.listeners[2].tls"} <= fields


@pytest.mark.parametrize(
    ("name", "plural", "short", "sync"),
    [
        # Kuma 2.14: zones create MeshGateways too (GlobalToZonesFlag | ZoneToGlobalFlag), routes global only
        ("MeshGateway", "meshgateways", "mgw", Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL),
        ("MeshGatewayRoute", "meshgatewayroutes", "mgwr", Sync.GLOBAL_TO_ZONES),
    ],
)
def test_declared_types(name: str, plural: str, short: str, sync: Sync) -> None:
    rtype = REGISTRY.get(name)
    assert (rtype.plural, rtype.short_name, rtype.scope, rtype.sync) == (plural, short, Scope.MESH, sync)
    assert not rtype.wrapped and not rtype.policy
    assert rtype.collection_path("default") == f"/meshes/default/{plural}"
    assert REGISTRY.resolve(short) is rtype


# --- rules that need the mesh, through the resource manager --------------------------------------

MTLS_MESH = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


async def _manager_with(mesh_spec: dict[str, Any]) -> ResourceManager:
    manager = ResourceManager(MemoryStore())
    await manager.create(Resource(type="Mesh", name="default", spec=mesh_spec))
    return manager


async def test_cross_mesh_gateway_needs_mtls_on_its_mesh() -> None:
    cross = from_universal(patched(GATEWAY, "conf.listeners[0].crossMesh", True))[0]
    manager = await _manager_with({})
    with pytest.raises(ValidationError) as exc:
        await manager.create(cross.copy())
    assert [e.as_dict() for e in exc.value.errors] == [
        {
            "field": "conf.listeners[0].crossMesh",
            "reason": "mesh 'default' has no mTLS enabled; cross-mesh gateways need mTLS on every mesh involved",
        }
    ]
    assert await manager.store.find("MeshGateway", "edge-gateway", "default") is None  # nothing written

    manager = await _manager_with(MTLS_MESH)
    created = await manager.create(cross.copy())
    assert created.spec["conf"]["listeners"][0]["crossMesh"] is True


async def test_plain_gateway_needs_no_mtls() -> None:
    manager = await _manager_with({})
    await manager.create(from_universal(copy.deepcopy(GATEWAY))[0])
    await manager.create(from_universal(copy.deepcopy(ROUTE))[0])
