"""What the GUI stands on, over a real socket (aiohttp on 127.0.0.1, memory store): the /gui files and
their headers, /gui/identity, conditional GETs of computed answers, dataplanes+insights on every
control plane with its filters, the insight's latest ACK/NACK and Envoy's bounded error, and the
GUI's modules resolving among the files that ship. (The GUI in a real browser:
tests/e2e/test_gui_browser.py; in a built wheel: tests/integration/test_gui_wheel.py.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ADMIN_GROUP, ensure_admin_token
from zonemesh.shared.api.gui import GUI_DIR, SECURITY_HEADERS, load_assets
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.runtime import ControlPlane
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens import user
from zonemesh.zone_cp.insights import MAX_ERROR, _TypeStats, bounded_error

Client = TestClient[web.Request, web.Application]


async def serve(
    store: MemoryStore, *, gui: bool = True, localhost_is_admin: bool = True, mode: Mode = Mode.STANDALONE
) -> Client:
    manager = ResourceManager(store, mode=mode)
    await ensure_admin_token(store)
    await manager.ensure_default_mesh()
    app = build_api_app(manager, {"product": "zonemesh"}, {}, localhost_is_admin=localhost_is_admin, gui=gui)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client = await serve(MemoryStore())
    yield client
    await client.close()


# -- the files ------------------------------------------------------------------------------


async def test_gui_is_served_with_headers_that_pin_what_it_may_do(client: Client) -> None:
    resp = await client.get("/gui", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/gui/")
    resp = await client.get("/gui/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="js/main.js">' in await resp.text()
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers[name] == value
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    module = await client.get("/gui/js/main.js")
    assert module.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert module.headers["X-Frame-Options"] == "DENY"


async def test_gui_files_are_revalidated_with_their_etag_and_sent_compressed(client: Client) -> None:
    plain = {"Accept-Encoding": "identity"}
    first = await client.get("/gui/gui.css", headers=plain)
    body = (GUI_DIR / "gui.css").read_bytes()
    assert await first.read() == body and "Content-Encoding" not in first.headers
    again = await client.get("/gui/gui.css", headers={**plain, "If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    assert (await client.get("/gui/gui.css", headers={**plain, "If-None-Match": '"other"'})).status == 200
    gzipped = await client.get("/gui/gui.css", headers={"Accept-Encoding": "gzip, deflate"})
    assert gzipped.headers["Content-Encoding"] == "gzip" and gzipped.headers["Vary"] == "Accept-Encoding"
    assert await gzipped.read() == body  # decompressed by the client
    assert gzipped.headers["ETag"] != first.headers["ETag"]
    assert int(gzipped.headers["Content-Length"]) < len(body) / 2


@pytest.mark.parametrize(
    "path", ["/gui/nope.js", "/gui/js/", "/gui/../shared/config.py", "/gui/%2e%2e/%2e%2e/pyproject.toml", "/gui/api.py"]
)
async def test_only_the_gui_files_are_served(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404, await resp.text()


async def test_the_gui_can_be_turned_off(tmp_path: Any) -> None:
    client = await serve(MemoryStore(), gui=False)
    try:
        assert (await client.get("/gui/")).status == 404
        assert (await client.get("/meshes")).status == 200
    finally:
        await client.close()
    on = ControlPlane(Config(data_dir=str(tmp_path))).index()
    off = ControlPlane(Config(data_dir=str(tmp_path), api_gui_enabled=False)).index()
    assert on["gui"] == "/gui" and off["gui"] == ""  # Kuma's index: "" while the GUI is off


def test_every_module_the_gui_imports_ships_and_exports_what_is_imported() -> None:
    """No build step means no bundler to catch a wrong import: this does, over the files served."""
    assets = load_assets(GUI_DIR)
    sources = {path: a.body.decode() for path, a in assets.items() if path.endswith(".js")}
    assert "js/main.js" in sources and "index.html" in assets
    problems = []
    for path, source in sources.items():
        base = path.rsplit("/", 1)[0]
        for names, target in re.findall(r'import\s+(.+?)\s+from\s+"([^"]+)"', source, re.S):
            resolved = _resolve(base, target)
            if resolved not in sources:
                problems.append(f"{path}: imports {target}, which is not shipped")
                continue
            wanted = re.findall(r"(\w+)(?:\s+as\s+\w+)?\s*[,}]", names) if "{" in names else []
            for name in wanted:
                if not re.search(rf"export (?:async )?(?:function|const|class|let) {name}\b", sources[resolved]):
                    problems.append(f"{path}: imports {name} from {target}, which does not export it")
            if not names.startswith(("{", "*")) and "export default" not in sources[resolved]:
                problems.append(f"{path}: imports the default of {target}, which has none")
        if "innerHTML" in source or "insertAdjacentHTML" in source or "document.write" in source:
            problems.append(f"{path}: builds markup from strings (the API's text must stay text)")
    assert not problems, "\n".join(problems)


def _resolve(base: str, target: str) -> str:
    parts = base.split("/") if base else []
    for part in target.split("/"):
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


# -- who the API takes the page for ---------------------------------------------------------


async def test_identity_says_who_the_api_takes_the_caller_for() -> None:
    store = MemoryStore()
    client = await serve(store, localhost_is_admin=False)
    try:
        anonymous = await (await client.get("/gui/identity")).json()
        assert anonymous["source"] == "anonymous" and anonymous["admin"] is False
        assert "api_localhost_is_admin is off" in anonymous["whyNotAdmin"]
        token = await user.issue(store, "bob", ["team-a"], 3600)
        bob = await (await client.get("/gui/identity", headers={"Authorization": f"Bearer {token}"})).json()
        assert bob == {
            "name": "bob",
            "groups": ["team-a", "mesh-system:authenticated"],
            "source": "token",
            "admin": False,
            "whyNotAdmin": None,
        }
        assert token not in str(bob)
        refused = await client.get("/gui/identity", headers={"Authorization": "Bearer not-a-token"})
        assert refused.status == 401
    finally:
        await client.close()
    client = await serve(store, localhost_is_admin=True)
    try:
        local = await client.get("/gui/identity")
        assert (await local.json())["admin"] is True and local.headers["Cache-Control"] == "no-store"
        admin = await user.issue(store, "alice", [ADMIN_GROUP], 3600)
        alice = await (await client.get("/gui/identity", headers={"Authorization": f"Bearer {admin}"})).json()
        assert (alice["name"], alice["source"], alice["admin"]) == ("alice", "token", True)
    finally:
        await client.close()


# -- conditional GETs -----------------------------------------------------------------------

RETRY = {
    "type": "MeshRetry",
    "mesh": "default",
    "name": "r1",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": 3}}}],
    },
}


async def test_a_list_answers_304_until_it_changes(client: Client) -> None:
    first = await client.get("/meshes/default/meshretries")
    etag = first.headers["ETag"]
    assert first.status == 200 and etag.startswith('"b-')
    same = await client.get("/meshes/default/meshretries", headers={"If-None-Match": etag})
    assert same.status == 304 and same.headers["ETag"] == etag and await same.read() == b""
    assert (await client.get("/meshes/default/meshretries", headers={"If-None-Match": f'"x", W/{etag}'})).status == 304
    assert (await client.put("/meshes/default/meshretries/r1", json=RETRY)).status == 201
    changed = await client.get("/meshes/default/meshretries", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert "r1" in [i["name"] for i in (await changed.json())["items"]]
    # another query is another answer
    other = await client.get("/meshes/default/meshretries?name=zzz", headers={"If-None-Match": changed.headers["ETag"]})
    assert other.status == 200


async def test_items_keep_their_version_etag_and_errors_get_none(client: Client) -> None:
    created = await client.put("/meshes/default/meshretries/r1", json=RETRY)
    assert created.headers["ETag"] == '"1"'
    item = await client.get("/meshes/default/meshretries/r1", headers={"If-None-Match": '"1"'})
    assert item.status == 200 and item.headers["ETag"] == '"1"'  # never 304: a recreated item has version 1 too
    missing = await client.get("/meshes/default/meshretries/nope")
    assert missing.status == 404 and "ETag" not in missing.headers


# -- dataplanes+insights ----------------------------------------------------------------------


def _dataplane(name: str, service: str, gateway: str | None = None, mesh: str = "default") -> Resource:
    networking: dict[str, Any] = {"address": "10.0.0.1"}
    if gateway:
        networking["gateway"] = {"type": gateway, "tags": {"kuma.io/service": service}}
    else:
        networking["inbound"] = [{"port": 8080, "tags": {"kuma.io/service": service}}]
    return Resource(type="Dataplane", mesh=mesh, name=name, spec={"networking": networking}, labels={"team": service})


async def test_dataplanes_with_insights_are_filtered_and_paged_by_the_api() -> None:
    store = MemoryStore()
    client = await serve(store)
    try:
        await store.create(Resource(type="Mesh", name="other"))
        for res in [
            _dataplane("web-1", "web"),
            _dataplane("web-2", "web"),
            _dataplane("edge-1", "edge", gateway="BUILTIN"),
            _dataplane("ext-1", "ext", gateway="DELEGATED"),
            _dataplane("web-3", "web", mesh="other"),
        ]:
            await store.create(res)
        insight = {"subscriptions": [{"id": "s1", "connectTime": "2026-01-01T00:00:00Z", "status": {}}]}
        await store.create(Resource(type="DataplaneInsight", mesh="default", name="web-1", spec=insight))

        async def names(query: str, mesh: str | None = "default") -> list[str]:
            path = f"/meshes/{mesh}/dataplanes+insights" if mesh else "/dataplanes+insights"
            resp = await client.get(path + query)
            assert resp.status == 200, await resp.text()
            return [i["name"] for i in (await resp.json())["items"]]

        assert await names("") == ["edge-1", "ext-1", "web-1", "web-2"]
        assert await names("?gateway=true") == ["edge-1", "ext-1"]
        assert await names("?gateway=builtin") == ["edge-1"]
        assert await names("?gateway=DELEGATED") == ["ext-1"]
        assert await names("?gateway=false") == ["web-1", "web-2"]
        assert await names("?gateway=false&tag=kuma.io/service:web&name=2") == ["web-2"]
        assert await names("?filter[labels.team]=edge") == ["edge-1"]
        assert await names("?tag=kuma.io/service:web", mesh=None) == ["web-1", "web-2", "web-3"]
        page = await (await client.get("/meshes/default/dataplanes+insights?size=2")).json()
        assert (page["total"], len(page["items"])) == (4, 2) and "offset=2" in page["next"]
        one = await (await client.get("/meshes/default/dataplanes+insights/web-1")).json()
        assert one["type"] == "DataplaneOverview" and one["dataplaneInsight"] == insight
        assert one["dataplane"]["networking"]["inbound"][0]["port"] == 8080

        bad = await client.get("/meshes/default/dataplanes+insights?gateway=maybe")
        assert bad.status == 400 and "gateway" in (await bad.json())["detail"]
        nothing = await client.get("/meshes/nope/dataplanes+insights")  # a mesh that does not exist: empty, as Kuma
        assert nothing.status == 200 and (await nothing.json())["total"] == 0
    finally:
        await client.close()


async def test_global_serves_dataplanes_with_insights_of_every_zone() -> None:
    """Global holds what zones upload, a Dataplane and its insight under the same {zone}.{name}."""
    store = MemoryStore()
    client = await serve(store, mode=Mode.GLOBAL)
    try:
        labels = {"zonemesh.io/origin": "zone", "zonemesh.io/zone": "zone-1", "zonemesh.io/display-name": "web-1"}
        dp = _dataplane("zone-1.web-1", "web")
        await store.create(Resource(type="Dataplane", mesh="default", name=dp.name, spec=dp.spec, labels=labels))
        await store.create(Resource(type="Dataplane", mesh="default", name="zone-2.web-1", spec=dp.spec))
        insight = {"subscriptions": [{"id": "s1", "status": {"clusters": {"lastResponse": "NACK"}}}]}
        await store.create(Resource(type="DataplaneInsight", mesh="default", name="zone-1.web-1", spec=insight))
        resp = await client.get("/meshes/default/dataplanes+insights?filter[labels.zonemesh.io/zone]=zone-1")
        body = await resp.json()
        assert [i["name"] for i in body["items"]] == ["zone-1.web-1"]
        assert body["items"][0]["dataplaneInsight"] == insight and body["items"][0]["labels"] == labels
    finally:
        await client.close()


# -- what the insight says of Envoy's latest answer -------------------------------------------------


def test_the_latest_answer_is_told_apart_from_an_earlier_nack() -> None:
    stats = _TypeStats()
    assert "lastResponse" not in stats.as_dict()
    stats.acked, stats.last_rejected = 1, False
    assert stats.as_dict()["lastResponse"] == "ACK"
    stats.rejected, stats.last_rejected, stats.last_error = 1, True, "bad"
    assert stats.as_dict()["lastResponse"] == "NACK"
    stats.acked, stats.last_rejected = 2, False  # the next config taken: the error stays, as history
    assert stats.as_dict() == {
        "responsesSent": "3",
        "responsesAcknowledged": "2",
        "responsesRejected": "1",
        "lastResponse": "ACK",
        "lastError": "bad",
        "lastErrorPolicies": [],
    }


def test_envoys_error_keeps_its_start_and_its_reason() -> None:
    """Envoy prints the refused resource first and the reason last: both survive the bound."""
    reason = (
        ": Proto constraint validation failed (ClusterValidationError.ConnectTimeout: value must be greater than 0s)"
    )
    error = 'goo.gle/debugproto\nname: "backend"\n' + "circuit_breakers {\n}\n" * 300 + reason
    kept = bounded_error(error)
    assert len(kept) == MAX_ERROR
    assert kept.startswith('goo.gle/debugproto\nname: "backend"') and kept.endswith(reason)
    assert f"{len(error)}-character error" in kept
    assert bounded_error("short") == "short"
