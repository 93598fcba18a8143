"""HTTP API behaviour over a real socket (aiohttp server on 127.0.0.1, memory store)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ensure_admin_token
from zonemesh.shared.resources.defaults import DEFAULT_POLICY_NAMES
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store
from zonemesh.shared.store.factory import open_store
from zonemesh.shared.store.memory import MemoryStore

TIMEOUT = {
    "type": "MeshTimeout",
    "name": "t1",
    "mesh": "default",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}],
    },
}

# Set by a test to make the server see the client as coming from another host: loopback
# sockets cannot produce a non-loopback peer, so this one fault is injected.
REMOTE_OVERRIDE = web.AppKey("remote_override", list[str])


@web.middleware
async def _fake_remote(request: web.Request, handler: Any) -> web.StreamResponse:
    override = request.app[REMOTE_OVERRIDE]
    if override:
        request = request.clone(remote=override[0])
    response: web.StreamResponse = await handler(request)
    return response


async def make_client(
    mode: Mode = Mode.STANDALONE, store: Store | None = None
) -> tuple[TestClient[web.Request, web.Application], Store]:
    store = store or MemoryStore()
    manager = ResourceManager(store, mode=mode, zone="zone-1" if mode is Mode.ZONE else "")
    await ensure_admin_token(store)
    if mode is not Mode.ZONE:
        await manager.ensure_default_mesh()
    app = build_api_app(manager, {"tagline": "zonemesh"}, {"mode": mode.value})
    app[REMOTE_OVERRIDE] = []
    app.middlewares.insert(0, _fake_remote)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, store


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def api(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The same API tests run on every store backend, etcd being a real etcd server."""
    if request.param == "etcd":
        etcd = request.getfixturevalue("etcd_server")
        url = f"etcd://{etcd.endpoint}?prefix=/api-test-{uuid.uuid4().hex}"
    elif request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'api.db'}"
    else:
        url = "memory://"
    store = await open_store(url)
    client, _ = await make_client(store=store)
    yield client
    await client.close()
    await store.close()


async def test_default_mesh_and_default_policies(api: TestClient[web.Request, web.Application]) -> None:
    meshes = await (await api.get("/meshes")).json()
    assert [m["name"] for m in meshes["items"]] == ["default"]
    timeouts = await (await api.get("/meshes/default/meshtimeouts")).json()
    assert sorted(t["name"] for t in timeouts["items"]) == [
        "mesh-gateways-timeout-all-default",
        "mesh-timeout-all-default",
    ]
    sidecar = next(t for t in timeouts["items"] if t["name"] == "mesh-timeout-all-default")
    assert sidecar["spec"]["to"][0]["default"]["http"]["requestTimeout"] == "15s"
    assert sidecar["spec"]["from"][0]["default"]["http"]["maxStreamDuration"] == "0s"
    retry = await (await api.get("/meshes/default/meshretries/mesh-retry-all-default")).json()
    assert retry["spec"]["to"][0]["default"]["grpc"]["backOff"] == {"baseInterval": "25ms", "maxInterval": "250ms"}
    cb = await (await api.get("/meshes/default/meshcircuitbreakers/mesh-circuit-breaker-all-default")).json()
    assert cb["spec"]["to"][0]["default"]["connectionLimits"]["maxRetries"] == 3


async def test_create_update_and_stale_version(api: TestClient[web.Request, web.Application]) -> None:
    resp = await api.put("/meshes/default/meshtimeouts/t1", json=TIMEOUT)
    assert resp.status == 201
    created = await resp.json()
    assert created["version"] == 1

    changed = {**TIMEOUT, "version": 1}
    changed["spec"] = {
        **TIMEOUT["spec"],
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "4s"}}],
    }
    resp = await api.put("/meshes/default/meshtimeouts/t1", json=changed)
    assert resp.status == 200
    assert (await resp.json())["version"] == 2

    stale = {**changed, "version": 1}
    stale["spec"] = {**TIMEOUT["spec"], "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "9s"}}]}
    resp = await api.put("/meshes/default/meshtimeouts/t1", json=stale)
    assert resp.status == 409
    body = await resp.json()
    assert "version 1" in body["detail"] and "version is 2" in body["detail"]
    current = await (await api.get("/meshes/default/meshtimeouts/t1")).json()
    assert current["spec"]["to"][0]["default"]["connectionTimeout"] == "4s"
    assert current["version"] == 2


@pytest.mark.parametrize(
    ("doc_change", "field", "reason"),
    [
        ({"color": "blue"}, "color", "unknown field"),
        (
            {"spec": {"targetRef": {}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}},
            "spec.targetRef.kind",
            "must be defined",
        ),
        (
            {"spec": {**TIMEOUT["spec"], "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": 5}}]}},
            "spec.to[0].default.connectionTimeout",
            "duration",
        ),
        (
            {"spec": {**TIMEOUT["spec"], "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idle": "5s"}}]}},
            "spec.to[0].default.idle",
            "unknown field",
        ),
        ({"name": "Not_Valid!"}, "name", "lower case"),
    ],
)
async def test_invalid_documents_are_refused_field_by_field(
    api: TestClient[web.Request, web.Application], doc_change: dict[str, Any], field: str, reason: str
) -> None:
    doc = {**TIMEOUT, **doc_change}
    resp = await api.put("/meshes/default/meshtimeouts/t1", json=doc)
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "/std-errors" and body["status"] == 400
    matching = [p for p in body["invalid_parameters"] if p["field"] == field]
    assert matching, body
    assert reason in matching[0]["reason"]
    # Nothing was written.
    assert (await api.get("/meshes/default/meshtimeouts/t1")).status == 404


async def test_invalid_yaml_body(api: TestClient[web.Request, web.Application]) -> None:
    resp = await api.put(
        "/meshes/default/meshtimeouts/t1", data="type: [unclosed", headers={"Content-Type": "application/yaml"}
    )
    assert resp.status == 400
    assert "invalid JSON/YAML" in (await resp.json())["detail"]


async def test_not_found_and_method_not_allowed(api: TestClient[web.Request, web.Application]) -> None:
    resp = await api.get("/meshes/default/meshtimeouts/nope")
    assert resp.status == 404
    assert (await resp.json())["status"] == 404
    resp = await api.get("/meshes/missing/meshtimeouts")  # nothing in a mesh that does not exist, as Kuma
    assert resp.status == 200 and await resp.json() == {"total": 0, "items": []}
    resp = await api.post("/meshes/default/meshtimeouts/t1", json=TIMEOUT)
    assert resp.status == 405
    assert (await resp.json())["type"] == "/std-errors"
    resp = await api.get("/no-such-path")
    assert resp.status == 404


async def test_mismatched_path_and_body(api: TestClient[web.Request, web.Application]) -> None:
    resp = await api.put("/meshes/default/meshtimeouts/other-name", json=TIMEOUT)
    assert resp.status == 400
    fields = {p["field"] for p in (await resp.json())["invalid_parameters"]}
    assert "name" in fields
    resp = await api.put("/meshes/default/meshretries/t1", json=TIMEOUT)
    assert resp.status == 400
    assert (await resp.json())["invalid_parameters"][0]["field"] == "type"


async def test_policy_in_missing_mesh_is_refused(api: TestClient[web.Request, web.Application]) -> None:
    resp = await api.put("/meshes/ghost/meshtimeouts/t1", json={**TIMEOUT, "mesh": "ghost"})
    assert resp.status == 400
    assert (await resp.json())["invalid_parameters"][0]["field"] == "mesh"


async def test_pagination_walks_every_item_once(api: TestClient[web.Request, web.Application]) -> None:
    for i in range(25):
        doc = {**TIMEOUT, "name": f"p-{i:02d}"}
        assert (await api.put(f"/meshes/default/meshtimeouts/p-{i:02d}", json=doc)).status == 201
    seen: list[str] = []
    url: str | None = "/meshes/default/meshtimeouts?size=10"
    pages = 0
    while url and pages < 10:
        page = await (await api.get(url)).json()
        assert page["total"] == 27  # 25 + the two defaults
        seen += [i["name"] for i in page["items"]]
        url = URL(page["next"]).path_qs if "next" in page else None
        pages += 1
    assert pages == 3
    assert len(seen) == 27 == len(set(seen))
    assert seen == sorted(seen)


@pytest.mark.parametrize("size", ["0", "1001", "ten"])
async def test_bad_page_size(api: TestClient[web.Request, web.Application], size: str) -> None:
    resp = await api.get(f"/meshes/default/meshtimeouts?size={size}")
    assert resp.status == 400
    assert (await resp.json())["invalid_parameters"][0]["field"] == "size"


async def test_label_and_name_filters(api: TestClient[web.Request, web.Application]) -> None:
    await api.put("/meshes/default/meshtimeouts/a-team", json={**TIMEOUT, "name": "a-team", "labels": {"team": "a"}})
    await api.put("/meshes/default/meshtimeouts/b-team", json={**TIMEOUT, "name": "b-team", "labels": {"team": "b"}})
    page = await (await api.get("/meshes/default/meshtimeouts?filter[labels.team]=a")).json()
    assert [i["name"] for i in page["items"]] == ["a-team"]
    page = await (await api.get("/meshes/default/meshtimeouts?name=b-te")).json()
    assert [i["name"] for i in page["items"]] == ["b-team"]


async def test_meshes_are_isolated_and_mesh_delete_cascades(api: TestClient[web.Request, web.Application]) -> None:
    assert (await api.put("/meshes/other", json={"type": "Mesh", "name": "other"})).status == 201
    await api.put("/meshes/other/meshtimeouts/only-other", json={**TIMEOUT, "mesh": "other", "name": "only-other"})
    default_names = [i["name"] for i in (await (await api.get("/meshes/default/meshtimeouts")).json())["items"]]
    other_names = [i["name"] for i in (await (await api.get("/meshes/other/meshtimeouts")).json())["items"]]
    assert "only-other" not in default_names
    assert "only-other" in other_names
    # Every mesh-scoped list across meshes still tells them apart.
    everywhere = (await (await api.get("/meshtimeouts")).json())["items"]
    assert {(i["mesh"], i["name"]) for i in everywhere} >= {
        ("other", "only-other"),
        ("default", "mesh-timeout-all-default"),
    }

    assert (await api.delete("/meshes/other")).status == 200
    assert (await api.get("/meshes/other")).status == 404
    leftovers = [i for i in (await (await api.get("/meshtimeouts")).json())["items"] if i["mesh"] == "other"]
    assert leftovers == []
    assert len((await (await api.get("/meshes/default/meshtimeouts")).json())["items"]) == 2


@pytest.mark.parametrize(
    ("skip", "expected_missing"),
    [(["*"], set(DEFAULT_POLICY_NAMES)), (["mesh-retry-all-default"], {"mesh-retry-all-default"})],
)
async def test_skip_creating_initial_policies(
    api: TestClient[web.Request, web.Application], skip: list[str], expected_missing: set[str]
) -> None:
    await api.put("/meshes/lean", json={"type": "Mesh", "name": "lean", "skipCreatingInitialPolicies": skip})
    names: set[str] = set()
    for path in ("meshtimeouts", "meshretries", "meshcircuitbreakers"):
        names |= {i["name"] for i in (await (await api.get(f"/meshes/lean/{path}")).json())["items"]}
    assert names == set(DEFAULT_POLICY_NAMES) - expected_missing


async def test_index_resources_and_config(api: TestClient[web.Request, web.Application]) -> None:
    assert (await (await api.get("/")).json())["tagline"] == "zonemesh"
    types = {t["name"]: t for t in (await (await api.get("/_resources")).json())["resources"]}
    assert types["MeshTimeout"]["path"] == "meshtimeouts" and types["MeshTimeout"]["scope"] == "Mesh"
    assert types["Mesh"]["scope"] == "Global"
    assert (await (await api.get("/config")).json())["mode"] == "standalone"


async def test_writes_from_other_hosts_need_the_admin_token() -> None:
    client, store = await make_client()
    try:
        client.app[REMOTE_OVERRIDE].append("192.0.2.10")  # only the server's view of the peer changes
        resp = await client.put("/meshes/default/meshtimeouts/t1", json=TIMEOUT)
        assert resp.status == 401
        assert "admin token" in (await resp.json())["detail"]
        resp = await client.put(
            "/meshes/default/meshtimeouts/t1", json=TIMEOUT, headers={"Authorization": "Bearer not-a-jwt"}
        )
        assert resp.status == 401
        # Reads of ordinary resources stay open; secrets do not.
        assert (await client.get("/meshes/default/meshtimeouts")).status == 200
        assert (await client.get("/global-secrets/admin-user-token")).status == 401

        secret = await store.get("GlobalSecret", "admin-user-token")
        token = base64.b64decode(secret.spec["data"]).decode()
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.put("/meshes/default/meshtimeouts/t1", json=TIMEOUT, headers=auth)).status == 201
        assert (await client.get("/global-secrets/admin-user-token", headers=auth)).status == 200
    finally:
        await client.close()


async def test_zone_refuses_writes_to_types_synced_from_global() -> None:
    client, store = await make_client(Mode.ZONE)
    try:
        await store.create(Resource(type="Mesh", name="default"))  # as if synced from global
        resp = await client.put("/meshes/default", json={"type": "Mesh", "name": "default"})
        assert resp.status == 405
        assert "global control plane" in (await resp.json())["detail"]
    finally:
        await client.close()


async def test_zone_creates_its_own_policy_only_when_labelled_zone() -> None:
    """Kuma 2.x: a federated zone creates policies that apply in it, labelled kuma.io/origin: zone
    (Kuma's guard against creating on a zone what was meant for every zone)."""
    client, store = await make_client(Mode.ZONE)
    try:
        await store.create(Resource(type="Mesh", name="default"))  # as if synced from global
        resp = await client.put("/meshes/default/meshtimeouts/t1", json=TIMEOUT)
        assert resp.status == 400
        assert "kuma.io/origin" in await resp.text()
        assert (await client.get("/meshes/default/meshtimeouts/t1")).status == 404
        labelled = {**TIMEOUT, "labels": {"kuma.io/origin": "zone"}}
        assert (await client.put("/meshes/default/meshtimeouts/t1", json=labelled)).status == 201
        stored = await store.get("MeshTimeout", "t1", "default")
        assert stored.labels == {
            "zonemesh.io/origin": "zone",
            "zonemesh.io/zone": "zone-1",
            "kuma.io/origin": "zone",
            "kuma.io/zone": "zone-1",
        }
    finally:
        await client.close()


async def test_system_types_are_read_only(api: TestClient[web.Request, web.Application]) -> None:
    resp = await api.put("/zone-insights/z1", json={"type": "ZoneInsight", "name": "z1"})
    assert resp.status == 405


# -- what zonemesh does not apply yet is refused, never stored and ignored ----------------------------

NOT_SUPPORTED_YET = [
    {
        "type": "MeshAccessLog",
        "mesh": "default",
        "name": "log-all",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"file": {"path": "/dev/stdout"}}]}}],
        },
    },
]


@pytest.mark.parametrize("doc", NOT_SUPPORTED_YET, ids=[d["type"] for d in NOT_SUPPORTED_YET])
async def test_types_not_supported_yet_are_refused_and_nothing_is_stored(
    api: TestClient[web.Request, web.Application], doc: dict[str, Any]
) -> None:
    path = f"/meshes/default/{doc['type'].lower()}s/{doc['name']}"
    resp = await api.put(path, json=doc)
    assert resp.status == 400
    body = await resp.json()
    assert body["title"] == f"{doc['type']} is not supported yet by zonemesh"
    reason = f"{doc['type']} is not supported yet by zonemesh: it would be stored but never applied to a proxy"
    assert body["invalid_parameters"] == [{"field": "type", "reason": reason, "source": "body"}]
    assert (await api.get(path)).status == 404
    assert (await (await api.get(f"/meshes/default/{doc['type'].lower()}s")).json())["total"] == 0


# The route types are applied now (zone_cp/xds/policies/meshhttproute.py, meshtcproute.py).
ROUTES = [
    # Kuma's canonical MeshHTTPRoute: /v2 of backend goes to its v2 instances.
    {
        "type": "MeshHTTPRoute",
        "mesh": "default",
        "name": "backend-v2",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "backend"},
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                            "default": {
                                "backendRefs": [
                                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}
                                ]
                            },
                        }
                    ],
                }
            ],
        },
    },
    {
        "type": "MeshTCPRoute",
        "mesh": "default",
        "name": "db-split",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "db"},
                    "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "db-v2", "weight": 1}]}}],
                }
            ],
        },
    },
]


@pytest.mark.parametrize("doc", ROUTES, ids=[d["type"] for d in ROUTES])
async def test_route_types_are_accepted_and_stored(
    api: TestClient[web.Request, web.Application], doc: dict[str, Any]
) -> None:
    path = f"/meshes/default/{doc['type'].lower()}s/{doc['name']}"
    resp = await api.put(path, json=doc)
    assert resp.status == 201, await resp.text()
    stored = await (await api.get(path)).json()
    assert stored["spec"] == doc["spec"]


FAULT = {
    "type": "MeshFaultInjection",
    "mesh": "default",
    "name": "faults",
    "spec": {
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [{"abort": {"httpStatus": 503, "percentage": 5}}]}}]
    },
}


async def test_fault_injection_by_caller_tags_is_refused_by_service_applied(
    api: TestClient[web.Request, web.Application],
) -> None:
    """On sidecars a caller is known by its certificate's service only: a `from` entry selecting
    callers by another tag could not be enforced, so it is refused and nothing is stored."""
    path = "/meshes/default/meshfaultinjections/faults"
    faults = FAULT["spec"]["to"][0]["default"]
    by_version = {"kind": "MeshSubset", "tags": {"kuma.io/service": "web", "version": "v2"}}
    backend = {"kind": "MeshService", "name": "backend"}
    spec = {"targetRef": backend, "from": [{"targetRef": by_version, "default": faults}]}
    resp = await api.put(path, json={**FAULT, "spec": spec})
    assert resp.status == 400
    [problem] = (await resp.json())["invalid_parameters"]
    assert problem["field"] == "spec.from[0].targetRef.tags"
    assert "selecting MeshFaultInjection clients by tags other than kuma.io/service" in problem["reason"]
    assert (await api.get(path)).status == 404
    by_service = {"kind": "MeshSubset", "tags": {"kuma.io/service": "web"}}
    spec["from"] = [{"targetRef": by_service, "default": faults}]
    assert (await api.put(path, json={**FAULT, "spec": spec})).status == 201
    gateway = {**FAULT, "spec": {"targetRef": {"kind": "MeshGateway", "name": "edge"}, **FAULT["spec"]}}
    assert (await api.put(path, json=gateway)).status == 200


async def test_kuma_output_applies_as_is(api: TestClient[web.Request, web.Application]) -> None:
    """What Kuma 2.14's `kumactl get meshtimeout -o yaml` prints: kri, times, Kuma's labels, a
    status block; accepted, the read-only parts dropped."""
    kuma_output = """
type: MeshTimeout
mesh: default
name: timeout-on-backend
creationTime: "2025-11-04T10:00:00Z"
modificationTime: "2025-11-04T10:00:00Z"
kri: kri_mt_default___timeout-on-backend_
labels:
  kuma.io/mesh: default
  kuma.io/origin: global
  kuma.io/env: universal
  kuma.io/policy-role: system
status: {}
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        idleTimeout: 20s
"""
    resp = await api.put("/meshes/default/meshtimeouts/timeout-on-backend", data=kuma_output)
    assert resp.status == 201, await resp.text()
    stored = await (await api.get("/meshes/default/meshtimeouts/timeout-on-backend")).json()
    assert "kri" not in stored and "status" not in stored
    assert stored["spec"]["targetRef"] == {"kind": "Dataplane", "labels": {"app": "backend"}}


# --- issue 15: names and input that used to get a 500 ---------------------------------------------


@pytest.mark.parametrize("path", ["/meshes", "/zoneingresses", "/zoneegresses", "/meshes/default/meshtimeouts"])
async def test_an_offset_past_any_integer_is_an_empty_page(
    api: TestClient[web.Request, web.Application], path: str
) -> None:
    """?offset=99999999999999999999 overflowed SQLite's OFFSET (a 500); every store gives an empty
    page now (the etcd store's offsets are key tokens: a number is refused as one)."""
    resp = await api.get(f"{path}?offset=99999999999999999999")
    body = await resp.json()
    if resp.status == 400:  # etcd: not one of its tokens
        assert body["invalid_parameters"][0]["field"] == "offset"
        return
    assert resp.status == 200, body
    assert body["items"] == [] and "next" not in body
    assert body["total"] == (await (await api.get(path)).json())["total"]


async def test_a_zone_name_follows_the_rule_kds_checks() -> None:
    """A Zone is named as its control plane connects (a DNS label): "zone.one" could never connect."""
    client, _ = await make_client()
    try:
        resp = await client.put("/zones/zone.one", json={"type": "Zone", "name": "zone.one"})
        assert resp.status == 400
        assert [p["field"] for p in (await resp.json())["invalid_parameters"]] == ["name"]
        assert (await client.put("/zones/zone-1", json={"type": "Zone", "name": "zone-1"})).status == 201
    finally:
        await client.close()


async def test_a_token_with_a_unicode_digit_kid_is_refused_with_401() -> None:
    """'²'.isdigit() is True and int('²') raises: the admin check answered 500."""
    client, store = await make_client()
    try:
        client.app[REMOTE_OVERRIDE].append("192.0.2.10")
        secret = await store.get("GlobalSecret", "admin-user-token")
        real = base64.b64decode(secret.spec["data"]).decode()
        header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT","kid":"\xc2\xb2"}').rstrip(b"=").decode()
        forged = ".".join([header, *real.split(".")[1:]])
        resp = await client.put(
            "/meshes/default/meshtimeouts/t1", json=TIMEOUT, headers={"Authorization": f"Bearer {forged}"}
        )
        assert resp.status == 401
        assert "no valid kid" in (await resp.json())["detail"]
    finally:
        await client.close()


async def test_a_resource_stored_under_an_earlier_name_can_still_be_deleted() -> None:
    """zonemesh took '_' (and dotted mesh names) before it took Kuma's rule: such a resource is
    refused by name on reads and writes, and DELETE still removes it."""
    client, store = await make_client()
    try:
        await store.create(Resource(type="Mesh", name="old_mesh.a"))
        await store.create(Resource(type="MeshTimeout", mesh="default", name="old_name", spec=TIMEOUT["spec"]))
        assert (await client.get("/meshes/default/meshtimeouts/old_name")).status == 400
        assert (await client.put("/meshes/default/meshtimeouts/old_name", json=TIMEOUT)).status == 400
        assert (await client.delete("/meshes/default/meshtimeouts/old_name")).status == 200
        assert await store.find("MeshTimeout", "old_name", "default") is None
        assert (await client.delete("/meshes/old_mesh.a")).status == 200
        assert await store.find("Mesh", "old_mesh.a") is None
        # what was never a name is still refused
        assert (await client.delete("/meshes/default/meshtimeouts/..%2Fx")).status == 400
    finally:
        await client.close()


async def test_a_mesh_blocking_passthrough_is_refused_and_one_stored_earlier_keeps_working() -> None:
    """`networking.outbound.passthrough: false` asks zonemesh to stop what it never sees (no
    transparent proxying): refused on write; a Mesh an earlier version stored with it stays usable."""
    from zonemesh.shared.resources.codec import validate_resource

    store = MemoryStore()
    client, _ = await make_client(store=store)
    try:
        blocked = {"type": "Mesh", "name": "closed", "networking": {"outbound": {"passthrough": False}}}
        resp = await client.put("/meshes/closed", json=blocked)
        assert resp.status == 400
        [problem] = (await resp.json())["invalid_parameters"]
        assert problem["field"] == "networking.outbound.passthrough"
        assert problem["reason"].startswith("false is not supported yet by zonemesh")
        assert (await client.get("/meshes/closed")).status == 404
        open_mesh = {**blocked, "networking": {"outbound": {"passthrough": True}}}
        assert (await client.put("/meshes/closed", json=open_mesh)).status == 201
        # Stored before the upgrade: what is stored or synced is still valid (zones keep using it).
        earlier = Resource(type="Mesh", name="earlier", spec={"networking": {"outbound": {"passthrough": False}}})
        validate_resource(earlier)
        await store.create(earlier)
        assert (await client.get("/meshes/earlier")).status == 200
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"logging": {"backends": [{"name": "file", "type": "file", "conf": {"path": "/tmp/a.log"}}]}}, "logging"),
        ({"tracing": {"backends": [{"name": "zipkin", "type": "zipkin"}]}}, "tracing"),
        ({"metrics": {"enabledBackend": "prometheus-1", "backends": [{"name": "prometheus-1"}]}}, "metrics"),
        ({"meshServices": {"mode": "Exclusive"}}, "meshServices.mode"),
    ],
)
async def test_mesh_fields_that_would_do_nothing_are_refused_as_not_supported_yet(
    extra: dict[str, Any], field: str
) -> None:
    client, store = await make_client(store=MemoryStore())
    try:
        resp = await client.put("/meshes/observed", json={"type": "Mesh", "name": "observed", **extra})
        assert resp.status == 400
        [problem] = (await resp.json())["invalid_parameters"]
        assert problem["field"] == field
        assert "not supported yet by zonemesh" in problem["reason"]
        assert await store.find("Mesh", "observed") is None
        # What asks for nothing is taken: an empty section, meshServices Disabled.
        quiet = {"type": "Mesh", "name": "observed", "logging": {}, "meshServices": {"mode": "Disabled"}}
        assert (await client.put("/meshes/observed", json=quiet)).status == 201
    finally:
        await client.close()


async def test_a_dataplane_metrics_override_is_refused_as_not_supported_yet(
    api: TestClient[web.Request, web.Application],
) -> None:
    dataplane = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]},
        "metrics": {"type": "prometheus", "conf": {"port": 5670}},
    }
    resp = await api.put("/meshes/default/dataplanes/web-1", json=dataplane)
    assert resp.status == 400
    [problem] = (await resp.json())["invalid_parameters"]
    assert problem["field"] == "metrics"
    assert "not supported yet" in problem["reason"]


async def test_an_outbound_by_backend_ref_is_refused_not_skipped(api: TestClient[web.Request, web.Application]) -> None:
    dataplane = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            "outbound": [{"port": 10001, "backendRef": {"kind": "MeshService", "name": "backend"}}],
        },
    }
    resp = await api.put("/meshes/default/dataplanes/web-1", json=dataplane)
    assert resp.status == 400
    [problem] = (await resp.json())["invalid_parameters"]
    assert problem["field"] == "networking.outbound[0].backendRef"
    assert "not supported yet" in problem["reason"]
    assert (await api.get("/meshes/default/dataplanes/web-1")).status == 404
