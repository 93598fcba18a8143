"""``GET /meshes/{mesh}/dataplanes/{name}/_rules`` and ``_policies`` over a real socket: the zone's
routes (aiohttp server on 127.0.0.1, memory store, the real reconciler mirroring it), who may read
them, and global's answer pointing to the zone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_api import REMOTE_OVERRIDE, _fake_remote
from zonemesh.global_cp.api import ZONE_DATA, zone_data
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ensure_admin_token
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import DISPLAY_NAME_LABEL, ORIGIN_LABEL, ZONE_LABEL, Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.app import DataPlaneSide
from zonemesh.zone_cp.view import ZoneView
from zonemesh.zone_cp.xds import inspection
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.reconciler import Reconciler

from zonemesh.testing import sidecar_dataplane

Client = TestClient[web.Request, web.Application]

BACKEND_TIMEOUT = {
    "type": "MeshTimeout",
    "mesh": "default",
    "name": "backend-timeout",
    "spec": {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"connectionTimeout": "7s"}}],
    },
}


@dataclass
class Zone:
    client: Client
    app: web.Application
    side: DataPlaneSide

    def from_network(self) -> None:
        """The next requests come from another host (injected: loopback cannot fake a peer)."""
        self.app[REMOTE_OVERRIDE].append("192.0.2.10")


@pytest.fixture
async def zone() -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store, mode=Mode.STANDALONE)
    await ensure_admin_token(store)
    await manager.ensure_default_mesh()  # with the default policies
    web_1 = {**sidecar_dataplane("web", 8080, 8081, outbound=[("backend", 10001)]), "mesh": "default", "name": "web-1"}
    side = DataPlaneSide(ZoneView())  # its routes only: the reconciler is set below
    app = build_api_app(manager, {}, {"mode": "standalone"}, extra_routes=side.routes())
    app[REMOTE_OVERRIDE] = []
    app.middlewares.insert(0, _fake_remote)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    async with Reconciler(store, SnapshotCache(), None) as reconciler:
        side.reconciler = reconciler
        assert (await client.put("/meshes/default/dataplanes/web-1", json=web_1)).status == 201
        assert (await client.put("/meshes/default/meshtimeouts/backend-timeout", json=BACKEND_TIMEOUT)).status == 201
        await reconciler.idle()  # its mirror has both
        yield Zone(client, app, side)
    await client.close()


async def test_rules_are_served_in_kumas_shape(zone: Zone) -> None:
    resp = await zone.client.get("/meshes/default/dataplanes/web-1/_rules")
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"resource", "rules", "httpMatches"}
    assert body["resource"] == {"type": "Dataplane", "mesh": "default", "name": "web-1", "labels": {}}
    assert body["rules"][0].keys() >= {"type", "toRules", "toResourceRules", "fromRules", "inboundRules", "warnings"}
    timeout = next(r for r in body["rules"] if r["type"] == "MeshTimeout")
    backend = next(
        r for r in timeout["toRules"] if r["matchers"] == [{"key": "kuma.io/service", "value": "backend", "not": False}]
    )
    assert backend["conf"]["connectionTimeout"] == "7s"
    assert [o["name"] for o in backend["origin"]] == ["mesh-timeout-all-default", "backend-timeout"]
    # The defaults seed 002 creates with the mesh configure it too.
    assert {r["type"] for r in body["rules"]} >= {"MeshTimeout", "MeshRetry", "MeshCircuitBreaker"}
    reconciler = zone.side.reconciler
    assert reconciler is not None
    assert body == inspection.rules(*reconciler.inspection("default", "web-1"))


async def test_policies_are_served_in_kumas_shape(zone: Zone) -> None:
    resp = await zone.client.get("/meshes/default/dataplanes/web-1/_policies")
    assert resp.status == 200
    assert await resp.json() == {"policies": []}  # no MeshProxyPatch yet
    modification = {"cluster": {"operation": "Patch", "match": {"name": "backend"}, "value": "connectTimeout: 9s"}}
    patch = {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": "web-patch",
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": "web-1"},
            "default": {"appendModifications": [modification]},
        },
    }
    assert (await zone.client.put("/meshes/default/meshproxypatches/web-patch", json=patch)).status == 201
    reconciler = zone.side.reconciler
    assert reconciler is not None
    await reconciler.idle()
    resp = await zone.client.get("/meshes/default/dataplanes/web-1/_policies")
    assert await resp.json() == {
        "policies": [
            {
                "kind": "MeshProxyPatch",
                "conf": {"appendModifications": [modification]},
                "origins": [{"kri": "kri_mpp_default___web-patch_"}],
            }
        ]
    }


@pytest.mark.parametrize("what", ["_rules", "_policies"])
@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/meshes/default/dataplanes/nope", "Dataplane 'nope' in mesh 'default'"),
        ("/meshes/other/dataplanes/web-1", "Dataplane 'web-1' in mesh 'other'"),
    ],
)
async def test_an_unknown_dataplane_is_a_404(zone: Zone, what: str, path: str, detail: str) -> None:
    resp = await zone.client.get(f"{path}/{what}")
    assert resp.status == 404
    body: dict[str, Any] = await resp.json()
    assert detail in body["detail"]


async def test_while_the_xds_side_is_down_it_is_a_503(zone: Zone) -> None:
    zone.side.reconciler = None
    resp = await zone.client.get("/meshes/default/dataplanes/web-1/_rules")
    assert resp.status == 503
    assert "the xDS server is not running" in (await resp.json())["detail"]


async def test_rules_and_policies_are_ordinary_reads_unlike_the_config_dump(zone: Zone) -> None:
    zone.from_network()  # no token, not on loopback: anonymous
    for what in ("_rules", "_policies"):
        assert (await zone.client.get(f"/meshes/default/dataplanes/web-1/{what}")).status == 200
    assert (await zone.client.get("/meshes/default/dataplanes/web-1/_config")).status == 401
    forged = {"Authorization": "Bearer not-a-token"}
    assert (await zone.client.get("/meshes/default/dataplanes/web-1/_rules", headers=forged)).status == 401


# -- global: zone data, answered with the zone to ask ------------------------------------------


@pytest.fixture
async def global_api() -> AsyncIterator[tuple[Client, MemoryStore]]:
    store = MemoryStore()
    manager = ResourceManager(store, mode=Mode.GLOBAL)
    await manager.ensure_default_mesh()
    routes = [web.get(f"/meshes/{{mesh}}/dataplanes/{{name}}/{what}", zone_data) for what in ZONE_DATA]
    app = build_api_app(manager, {}, {"mode": "global"}, extra_routes=routes)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client, store
    await client.close()


@pytest.mark.parametrize("what", ZONE_DATA)
async def test_global_points_to_the_zone_that_computes_them(global_api: tuple[Client, MemoryStore], what: str) -> None:
    client, store = global_api
    spec = {"networking": sidecar_dataplane("web", 8080, 8081)["networking"]}
    labels = {ORIGIN_LABEL: "zone", ZONE_LABEL: "zone-1", DISPLAY_NAME_LABEL: "web-1"}
    await store.create(Resource(type="Dataplane", mesh="default", name="zone-1.web-1", spec=spec, labels=labels))
    resp = await client.get(f"/meshes/default/dataplanes/zone-1.web-1/{what}")
    assert resp.status == 400
    detail = (await resp.json())["detail"]
    assert f"the {what} of a dataplane is computed by the zone control plane it is connected to" in detail
    assert "zone 'zone-1'" in detail and f"GET /meshes/default/dataplanes/web-1/{what}" in detail
    assert (await client.get(f"/meshes/default/dataplanes/nope/{what}")).status == 404
