"""Kuma's REST paths and shapes, as a Kuma user's scripts and clients expect them (issue 18).

Each answer is checked against Kuma's own OpenAPI document where it describes it
(tests/integration/testdata/kuma-openapi-v2.14.3.yaml); tests/integration/test_api_fuzz.py
fuzzes every operation of that document a control plane serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL
from zonemesh.global_cp.api import global_routes
from zonemesh.global_cp.kds_server import GlobalKds
from zonemesh.shared import runtime
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ensure_admin_token
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore

Client = TestClient[web.Request, web.Application]
OPENAPI = Path(__file__).parents[1] / "integration" / "testdata" / "kuma-openapi-v2.14.3.yaml"
COMPONENTS = yaml.safe_load(OPENAPI.read_text())["components"]


def kuma_errors(schema: str, body: Any) -> list[str]:
    """What in ``body`` does not follow Kuma's schema ``schema`` (components/schemas)."""
    validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{schema}", "components": COMPONENTS})
    return [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(body)]


async def serve(mode: Mode, store: MemoryStore) -> Client:
    manager = ResourceManager(store, mode=mode, zone="")
    await ensure_admin_token(store)
    await manager.ensure_default_mesh()
    extra = global_routes(GlobalKds(Config(mode="global"))) if mode is Mode.GLOBAL else []
    client = TestClient(TestServer(build_api_app(manager, {}, {}, extra), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def api(store: MemoryStore) -> AsyncIterator[Client]:
    client = await serve(Mode.STANDALONE, store)
    yield client
    await client.close()


@pytest.fixture
async def global_api(store: MemoryStore) -> AsyncIterator[Client]:
    client = await serve(Mode.GLOBAL, store)
    yield client
    await client.close()


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "source"),
    [
        ("PUT", "/meshes/default/meshtimeouts/t1", {"type": "MeshTimeout", "name": "t1", "spec": {"x": 1}}, "body"),
        ("GET", "/meshes/default/meshtimeouts?size=0", None, "query"),
        ("GET", "/meshes/default/meshtimeouts/Not_A_Name", None, "path"),
    ],
)
async def test_errors_are_problem_json_with_kumas_error_schema(
    api: Client, method: str, path: str, body: Any, source: str
) -> None:
    resp = await api.request(method, path, json=body)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    error = await resp.json(content_type=None)
    assert kuma_errors("Error", error) == []
    assert error["invalid_parameters"] and {p["source"] for p in error["invalid_parameters"]} == {source}
    assert error["instance"].startswith("zonemesh:error:")
    # The deprecated twins older kumactl reads.
    assert error["details"] == error["detail"]
    assert [c["field"] for c in error["causes"]] == [p["field"] for p in error["invalid_parameters"]]


async def test_not_found_is_problem_json_too(api: Client) -> None:
    resp = await api.get("/meshes/default/meshtimeouts/nope")
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    assert kuma_errors("Error", await resp.json(content_type=None)) == []


# -- lists ----------------------------------------------------------------------------------------


async def test_next_is_a_url_while_there_is_more_and_absent_on_the_last_page(api: Client) -> None:
    for name in ("a", "b"):
        resp = await api.put(f"/meshes/{name}", json={"type": "Mesh", "name": name})
        assert resp.status == 201
    first = await (await api.get("/meshes?size=2")).json()
    assert first["total"] == 3 and isinstance(first["next"], str)  # default, a, b
    last = await (await api.get(URL(first["next"]).path_qs)).json()
    assert len(last["items"]) == 1
    assert "next" not in last, "Kuma's schema types next as a string: never null"


async def test_a_mesh_that_does_not_exist_lists_nothing(api: Client) -> None:
    for path in ("/meshes/nope/meshtimeouts", "/meshes/nope/dataplanes", "/meshes/nope/dataplanes/_overview"):
        resp = await api.get(path)
        assert resp.status == 200, path
        assert await resp.json() == {"total": 0, "items": []}, path
    assert (await api.get("/meshes/nope")).status == 404  # the mesh itself is still not found


# -- paths ----------------------------------------------------------------------------------------

EXTERNAL = {
    "type": "ExternalService",
    "mesh": "default",
    "name": "httpbin",
    "tags": {"kuma.io/service": "httpbin", "kuma.io/protocol": "http"},
    "networking": {"address": "127.0.0.1:8080"},
}


async def test_kumas_paths_and_the_earlier_ones_serve_the_same_resources(api: Client) -> None:
    assert (await api.put("/meshes/default/external-services/httpbin", json=EXTERNAL)).status == 201
    for path in (
        "/meshes/default/external-services/httpbin",
        "/meshes/default/externalservices/httpbin",  # zonemesh's earlier path, kept
    ):
        assert (await (await api.get(path)).json())["name"] == "httpbin", path
    for path in ("/meshes/default/external-services", "/external-services", "/externalservices"):
        assert [i["name"] for i in (await (await api.get(path)).json())["items"]] == ["httpbin"], path

    secret = {"type": "GlobalSecret", "name": "s1", "data": "c2VjcmV0"}
    assert (await api.put("/globalsecrets/s1", json=secret)).status == 201
    assert (await api.get("/global-secrets/s1")).status == 200

    ingress = {"type": "ZoneIngress", "name": "zi-1", "networking": {"address": "127.0.0.1", "port": 10001}}
    assert (await api.put("/zone-ingresses/zi-1", json=ingress)).status == 201
    assert (await api.get("/zoneingresses/zi-1")).status == 200
    for path in ("/zoneegressinsights", "/zone-egress-insights"):
        assert (await api.get(path)).status == 200, path


async def test_resource_types_list_kumas_path(api: Client) -> None:
    types = {t["name"]: t for t in (await (await api.get("/_resources")).json())["resources"]}
    assert types["ExternalService"]["path"] == "external-services"
    assert types["GlobalSecret"]["path"] == "globalsecrets"
    assert types["ZoneEgressInsight"]["path"] == "zoneegressinsights"


# -- overviews ------------------------------------------------------------------------------------


async def test_resources_with_insights_are_served_as_kumas_overviews(api: Client, store: MemoryStore) -> None:
    insight = {"subscriptions": [{"id": "s1", "controlPlaneInstanceId": "cp-1"}]}
    spec = {"networking": {"address": "127.0.0.1", "port": 10001}}
    await store.create(Resource(type="ZoneIngress", name="zi-1", spec=spec, labels={"team": "a"}))
    await store.create(Resource(type="ZoneIngressInsight", name="zi-1", spec=insight))
    await store.create(Resource(type="ZoneEgress", name="ze-1", spec=spec))
    for path in ("/zoneingresses+insights", "/zoneingresses/_overview", "/zone-ingresses/_overview"):
        page = await (await api.get(path)).json()
        assert page["total"] == 1 and "next" not in page, path
        item = page["items"][0]
        assert item["type"] == "ZoneIngressOverview" and item["name"] == "zi-1", path
        assert item["zoneIngress"]["networking"] == spec["networking"] and item["zoneIngressInsight"] == insight
        assert item["labels"] == {"team": "a"} and "mesh" not in item
    one = await (await api.get("/zoneingresses/zi-1/_overview")).json()
    assert one == item
    assert (await (await api.get("/zoneingresses+insights/zi-1")).json()) == item
    egress = await (await api.get("/zoneegressoverviews/ze-1")).json()
    assert egress["type"] == "ZoneEgressOverview" and egress["zoneEgressInsight"] == {"subscriptions": []}
    assert (await (await api.get("/zoneegresses/_overview")).json())["items"] == [egress]

    dataplane = {"networking": {"address": "127.0.0.1", "inbound": [{"port": 80, "tags": {"kuma.io/service": "w"}}]}}
    await store.create(Resource(type="Dataplane", mesh="default", name="web-1", spec=dataplane))
    overview_paths = ("/meshes/default/dataplanes/_overview", "/dataplanes/_overview", "/dataplanes+insights")
    for path in overview_paths:
        page = await (await api.get(path)).json()
        assert [i["name"] for i in page["items"]] == ["web-1"], path
        assert kuma_errors("DataplaneOverviewWithMeta", page["items"][0]) == [], path
    overview = await (await api.get("/meshes/default/dataplanes/web-1/_overview")).json()
    assert overview["type"] == "DataplaneOverview" and overview["mesh"] == "default"
    assert overview["dataplane"]["networking"]["address"] == "127.0.0.1"


async def test_a_name_that_is_an_overview_segment_is_not_taken_for_a_resource(api: Client) -> None:
    resp = await api.get("/zoneingresses/_overview")
    assert resp.status == 200 and (await resp.json())["items"] == []


# -- type descriptions ----------------------------------------------------------------------------


async def test_type_descriptions_follow_kumas_schema(api: Client) -> None:
    body = await (await api.get("/_resources")).json()
    assert kuma_errors("ResourceTypeDescriptionList", body) == []
    types = {t["name"]: t for t in body["resources"]}
    assert types["MeshTimeout"]["policy"] == {
        "isTargetRef": True,
        "hasToTargetRef": True,
        "hasFromTargetRef": True,
        "hasRulesTargetRef": True,
        "isFromAsRules": True,
    }
    route = types["MeshHTTPRoute"]["policy"]
    assert route["hasToTargetRef"] and not route["hasFromTargetRef"] and not route["isFromAsRules"]
    assert types["MeshHTTPRoute"]["singularDisplayName"] == "Mesh HTTP Route"
    assert types["MeshRetry"]["pluralDisplayName"] == "Mesh Retries"
    assert types["DataplaneInsight"]["readOnly"] is True and types["MeshTimeout"]["readOnly"] is False
    assert "policy" not in types["Mesh"]
    policies = (await (await api.get("/policies")).json())["policies"]
    assert {p["name"] for p in policies} == {name for name, t in types.items() if "policy" in t}
    assert all(p["isTargetRefBased"] for p in policies)


async def test_index_follows_kumas_schema_with_a_cluster_id_kept_in_the_store(store: MemoryStore) -> None:
    first = await runtime.ensure_cluster_id(store)
    assert first and await runtime.ensure_cluster_id(store) == first  # a restart, or another replica, reads it
    assert await runtime.ensure_cluster_id(MemoryStore()) != first  # another control plane


# -- global ---------------------------------------------------------------------------------------


async def test_global_insights_count_each_global_type(global_api: Client, store: MemoryStore) -> None:
    for name in ("zone-1", "zone-2"):
        await store.create(Resource(type="Zone", name=name, spec={"enabled": True}))
    body = await (await global_api.get("/global-insights")).json()
    assert body["type"] == "GlobalInsights"
    assert body["resources"]["Zone"] == {"total": 2}
    assert body["resources"]["Mesh"] == {"total": 1}
    assert "ZoneInsight" not in body["resources"]
    assert (await global_api.get("/global-insight")).status == 200  # Kuma's other document, fuzzed


async def test_global_serves_zones_as_kumas_zone_overviews(global_api: Client, store: MemoryStore) -> None:
    await store.create(Resource(type="Zone", name="zone-1", spec={"enabled": False}))
    for path in ("/zones/_overview", "/zones+insights"):
        items = (await (await global_api.get(path)).json())["items"]
        assert [(i["type"], i["name"], i["zone"], i["state"]) for i in items] == [
            ("ZoneOverview", "zone-1", {"enabled": False}, "Offline")
        ], path
    one = await (await global_api.get("/zones/zone-1/_overview")).json()
    assert one["zoneInsight"] == {} and one["online"] is False


async def test_every_path_of_a_sensitive_type_needs_an_admin(store: MemoryStore) -> None:
    """Secrets under Kuma's path and the alias alike: no reader without a token."""
    manager = ResourceManager(store, mode=Mode.STANDALONE)
    await ensure_admin_token(store)
    app = build_api_app(manager, {}, {}, localhost_is_admin=False)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        for path in ("/globalsecrets", "/global-secrets", "/globalsecrets/admin-user-token"):
            resp = await client.get(path)
            assert resp.status == 401 and resp.content_type == "application/problem+json", path
    finally:
        await client.close()
