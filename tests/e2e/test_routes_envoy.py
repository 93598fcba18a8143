"""MeshHTTPRoute and MeshTCPRoute end to end: a standalone control plane, real Envoys
(zonemesh-dp) on 127.0.0.1, observed through what the backends receive and answer.

    client --> web-1's outbounds (api: HTTP, db: TCP) --> backends-1 (api v1, api v2, other, mirror, db v1, db v2)
    client --> builtin gateway edge-1 (HTTP listener) --> backends-1

Every route applied here is read from docs/policies.md (``<!-- example: name -->``), so the page
shows exactly what is tested; seed 002's ``route-1`` is applied with ``zmctl apply -f`` as written
there. One Dataplane serves all the backends (one Envoy), each app answering with its name, the
path, the Host and the headers it received. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import socket
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from zonemesh.shared.resources import REGISTRY

from zonemesh.testing import (
    ControlPlaneProcess,
    dp_run_command,
    free_port,
    log_excerpt,
    stop_processes,
    wait_until,
    zmctl,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
WAIT = 40.0  # shared machine: generous, still bounded
REQUESTS = 300  # the 90/10 split: bounded, and enough for a tight tolerance
SPLIT_TOLERANCE = 0.07  # 10% +- 7 points: ~4 standard deviations of a binomial(300, 0.1)
# Seed 002 ("Policies"): the universal form of a policy names its type, name and mesh so.
SEED_002_HEAD = "type: MeshHTTPRoute\nname: route-1\nmesh: default\n"

# ``python -c APPS kind:name:port ...``: HTTP apps answer JSON (their name, the path, the headers
# they got; ``?sleep=S`` first sleeps), a header ``x-app: <name>``, and ``GET /__seen`` lists the
# paths they served; TCP apps send their name and close.
APPS = textwrap.dedent(
    """
    import http.server, json, socketserver, sys, threading, time, urllib.parse
    seen = {}
    def http_app(name, port):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/__seen":
                    body = json.dumps(seen.get(name, []))
                else:
                    seen.setdefault(name, []).append(self.path)
                    sleep = urllib.parse.parse_qs(url.query).get("sleep")
                    if sleep:
                        time.sleep(float(sleep[0]))
                    headers = {}
                    for key, value in self.headers.items():  # repeated headers joined with ","
                        key = key.lower()
                        headers[key] = headers[key] + "," + value if key in headers else value
                    body = json.dumps({"name": name, "path": self.path, "headers": headers})
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-app", name)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    def tcp_app(name, port):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.sendall(name.encode())
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    for spec in sys.argv[1:]:
        kind, name, port = spec.split(":")
        (http_app if kind == "http" else tcp_app)(name, int(port))
    threading.Event().wait()
    """
)

# name: (service, protocol, extra tags)
BACKENDS = {
    "api-v1": ("api", "http", {"version": "v1"}),
    "api-v2": ("api", "http", {"version": "v2"}),
    "other": ("other", "http", {}),
    "mirror": ("mirror", "http", {}),
    "db-v1": ("db", "tcp", {"version": "v1"}),
    "db-v2": ("db", "tcp", {"version": "v2"}),
}


def example(name: str) -> tuple[str, dict[str, Any]]:
    """The YAML block after ``<!-- example: name -->`` in docs/policies.md: its text and document."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert found, f"docs/policies.md has no example {name!r}"
    doc = yaml.safe_load(found.group(1))
    assert isinstance(doc, dict)
    return found.group(1), doc


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    @property
    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    @property
    def name(self) -> str:
        try:
            return str(self.json.get("name"))
        except ValueError:
            return f"<{self.status}: {self.body[:80]}>"


def call(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
    """One GET to 127.0.0.1:``port``, redirects not followed; status 0 when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode())
    except OSError as exc:
        return Reply(0, {}, str(exc))
    finally:
        conn.close()


def connect(port: int) -> str:
    """A TCP connection to 127.0.0.1:``port``: what the backend sent before closing it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            data = b""
            for _ in range(100):  # bounded; the backend closes after its name
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
        return data.decode()
    except OSError as exc:
        return f"<{exc}>"


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    xds_port: int
    work: Path
    app_ports: dict[str, int] = field(default_factory=dict)
    api_out: int = field(default_factory=free_port)
    db_out: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    def put(self, doc: dict[str, Any]) -> tuple[int, Any]:
        return self.cp.put(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")), doc)

    def apply(self, doc: dict[str, Any]) -> None:
        status, body = self.put(doc)
        assert status in (200, 201), body

    def delete(self, doc: dict[str, Any]) -> None:
        status, body = self.cp.delete(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")))
        assert status in (200, 404), body

    def start(self, args: list[str], name: str) -> None:
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
        self.logs[name] = log

    def start_dp(self, name: str, dataplane: dict[str, Any]) -> None:
        token = zmctl_ok(
            self.cp.api, "generate", "dataplane-token", "--mesh", "default", "--name", name, "--valid-for", "1h"
        )
        token_file = self.work / f"{name}.token"
        token_file.write_text(token.strip())
        cmd = dp_run_command(
            xds_port=self.xds_port,
            ca_file=self.cp.data_dir / "xds.crt",
            name=name,
            mesh="default",
            dataplane=["--dataplane-inline", json.dumps(dataplane)],
            token_file=token_file,
            work_dir=self.work / name,
        )
        self.start(cmd, f"{name}-dp")

    def api(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return call(self.api_out, path, headers)

    def seen(self, app: str) -> list[str]:
        """The paths ``app`` has served (asked of the app directly, not through the mesh)."""
        reply = call(self.app_ports[app], "/__seen")
        return list(json.loads(reply.body)) if reply.status == 200 else []


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("routes")
    xds_port = free_port()
    cp = ControlPlaneProcess(
        work / "cp",
        args=["--mode", "standalone", "--store", "memory", "--xds-address", "127.0.0.1", "--xds-port", str(xds_port)],
    )
    m = Mesh(cp, xds_port, work)
    try:
        cp.start()
        m.app_ports = {name: free_port() for name in ["web", *BACKENDS]}
        specs = [f"http:web:{m.app_ports['web']}"]
        specs += [f"{protocol}:{name}:{m.app_ports[name]}" for name, (_, protocol, _) in BACKENDS.items()]
        m.start([sys.executable, "-c", APPS, *specs], "apps")
        inbounds = [
            {
                "port": free_port(),
                "servicePort": m.app_ports[name],
                "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol, **tags},
            }
            for name, (service, protocol, tags) in BACKENDS.items()
        ]
        m.start_dp("backends-1", {"type": "Dataplane", "networking": {"address": "127.0.0.1", "inbound": inbounds}})
        web = {
            "type": "Dataplane",
            "networking": {
                "address": "127.0.0.1",
                "inbound": [
                    {
                        "port": free_port(),
                        "servicePort": m.app_ports["web"],
                        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
                    }
                ],
                "outbound": [
                    {"port": m.api_out, "tags": {"kuma.io/service": "api"}},
                    {"port": m.db_out, "tags": {"kuma.io/service": "db"}},
                ],
            },
        }
        m.start_dp("web-1", web)
        gateway = {
            "type": "Dataplane",
            "networking": {"address": "127.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}},
        }
        m.start_dp("edge-1", gateway)
        m.apply(
            {
                "type": "MeshGateway",
                "mesh": "default",
                "name": "edge",
                "selectors": [{"match": {"kuma.io/service": "edge"}}],
                "conf": {"listeners": [{"port": m.gateway_port, "protocol": "HTTP", "tags": {"port": "http"}}]},
            }
        )
        wait_until(lambda: m.api("/").name in ("api-v1", "api-v2"), WAIT, what="web-1 -> api")
        wait_until(lambda: connect(m.db_out) in ("db-v1", "db-v2"), WAIT, what="web-1 -> db")
        yield m
    except BaseException:
        for name, log in m.logs.items():
            print(f"--- {name} log ---\n{log.read_text(errors='replace')[-3000:]}")
        print(f"--- control plane log ---\n{cp.logs()[-6000:]}")
        raise
    finally:
        stop_processes(m.procs)
        cp.kill()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, mesh: Mesh) -> None:
    """A failed test shows what the control plane logged while it ran (tests/conftest.py)."""
    since = len(mesh.cp.logs())
    request.node.failure_logs = lambda: log_excerpt("control plane", mesh.cp.logs()[since:])


def names(m: Mesh, path: str, count: int, headers: dict[str, str] | None = None) -> Counter[str]:
    return Counter(m.api(path, headers).name for _ in range(count))


def test_seed_002_route_applies_as_written_path_header_and_weighted_routing(mesh: Mesh) -> None:
    m = mesh
    text, doc = example("route-1")
    assert text.startswith(SEED_002_HEAD), "docs/policies.md's route-1 is seed 002's example"
    (m.work / "route-1.yaml").write_text(text)
    assert "route-1" in zmctl_ok(m.cp.api, "apply", "-f", str(m.work / "route-1.yaml"))
    try:
        # Before route-1 takes effect /v2 goes to either version: wait for a run of v2 only.
        wait_until(lambda: set(names(m, "/v2/orders", 20)) == {"api-v2"}, WAIT, what="route-1: /v2 to api's v2")
        reply = m.api("/v2/orders")
        assert reply.json["path"] == "/v2/orders"  # no rewrite
        assert set(names(m, "/v2/x", 10)) == {"api-v2"}
        # Path and header routing to another service.
        assert set(names(m, "/other/y", 5)) == {"other"}
        assert set(names(m, "/", 5, {"x-team": "other"})) == {"other"}
        assert m.api("/otherwise").name != "other"  # /other matches whole path segments only
        # The rest is split 90/10 between the versions.
        counts = Counter(m.api(f"/page/{i}").name for i in range(REQUESTS))
        share = counts["api-v2"] / REQUESTS
        print(f"90/10 split over {REQUESTS} requests: {dict(counts)} (v2 {share:.3f}, configured 0.1)")
        assert set(counts) == {"api-v1", "api-v2"} and abs(share - 0.1) <= SPLIT_TOLERANCE, counts

        # 100/0: every request to v1. The same update sends /v2 to v1 too, which shows when it is in
        # force (one route configuration: both change at once).
        all_v1 = copy.deepcopy(doc)
        all_v1["spec"]["to"][0]["rules"][0]["default"]["backendRefs"][0]["tags"] = {"version": "v1"}
        refs = all_v1["spec"]["to"][0]["rules"][2]["default"]["backendRefs"]
        refs[0]["weight"], refs[1]["weight"] = 100, 0
        m.apply(all_v1)
        wait_until(lambda: m.api("/v2/x").name == "api-v1", WAIT, what="the 100/0 update in force")
        assert set(names(m, "/p", 50)) == {"api-v1"}
    finally:
        m.delete(doc)
    wait_until(lambda: m.api("/v2/x").name == "api-v1", WAIT, what="route-1 gone: /v2 round robin again")


def test_redirect_rewrite_header_modifiers_and_mirror(mesh: Mesh) -> None:
    m = mesh
    _, doc = example("route-filters")
    m.apply(doc)
    try:
        wait_until(lambda: m.api("/old").status == 301, WAIT, what="the redirect of /old")
        served = m.seen("api-v1").count("/old") + m.seen("api-v2").count("/old")  # before the redirect was on
        reply = m.api("/old")
        assert reply.headers["location"] == "https://new.example.com:8443/new"
        assert m.seen("api-v1").count("/old") + m.seen("api-v2").count("/old") == served  # Envoy answered

        # URL rewrite and request headers, as the backend received them; response headers as the client does.
        reply = m.api("/legacy/orders?id=7", {"x-internal": "secret", "x-trace": "0"})
        assert reply.status == 200, reply.body
        got = reply.json
        assert (got["name"], got["path"]) == ("api-v1", "/v1/orders?id=7")
        assert got["headers"]["host"] == "api.internal"
        assert got["headers"]["x-route"] == "legacy"
        assert "x-internal" not in got["headers"]
        assert got["headers"]["x-trace"] == "0,1"  # `add` appends to what the client sent
        assert reply.headers["x-resp"] == "legacy" and "x-app" not in reply.headers
        assert m.api("/legacy").json["path"] == "/v1"
        assert m.api("/legacyx").json["path"] == "/legacyx"  # not a segment of /legacy: untouched

        # Mirror: served by api v1, a copy reaches the mirror service.
        marker = f"/mirror/{uuid.uuid4().hex}"
        reply = m.api(marker)
        assert (reply.status, reply.name) == (200, "api-v1")
        wait_until(lambda: marker in m.seen("mirror"), 10, what="the mirrored request at the mirror")
        assert marker in m.seen("api-v1")
    finally:
        m.delete(doc)


def test_per_route_timeout_targets_one_route_only(mesh: Mesh) -> None:
    m = mesh
    _, route = example("route-filters")
    _, timeout = example("route-timeout")
    m.apply(route)
    m.apply(timeout)
    try:
        # api-filters' routes time out after 1 s; the rest keeps the default request timeout (15 s).
        wait_until(lambda: m.api("/legacy/x?sleep=2").status == 504, WAIT, what="the 1s timeout on api-filters' routes")
        assert m.api("/elsewhere?sleep=2").status == 200
        m.delete(timeout)
        wait_until(lambda: m.api("/legacy/x?sleep=2").status == 200, WAIT, what="api-filters' routes without it")
    finally:
        m.delete(timeout)
        m.delete(route)


def test_tcp_route_weighted_split(mesh: Mesh) -> None:
    m = mesh
    _, doc = example("tcp-route")
    only_v2 = copy.deepcopy(doc)
    only_v2["spec"]["to"][0]["rules"][0]["default"]["backendRefs"][0]["weight"] = 0
    m.apply(only_v2)
    try:
        wait_until(lambda: {connect(m.db_out) for _ in range(20)} == {"db-v2"}, WAIT, what="0/100: db v2 only")
        assert {connect(m.db_out) for _ in range(30)} == {"db-v2"}
        m.apply(doc)  # 1/1
        wait_until(lambda: {connect(m.db_out) for _ in range(40)} == {"db-v1", "db-v2"}, WAIT, what="1/1 split")
    finally:
        m.delete(doc)


def test_http_route_wins_over_tcp_route_for_an_http_service(mesh: Mesh) -> None:
    m = mesh
    _, route = example("route-1")
    tcp = {
        "type": "MeshTCPRoute",
        "mesh": "default",
        "name": "api-as-tcp",
        "spec": {
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "api"},
                    "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "other"}]}}],
                }
            ]
        },
    }
    m.apply(route)
    m.apply(tcp)
    try:
        wait_until(lambda: set(names(m, "/v2/x", 20)) == {"api-v2"}, WAIT, what="route-1 in place")
        assert set(names(m, "/v2/x", 10)) == {"api-v2"}  # the HTTP route wins
        m.delete(route)
        # Without an HTTP route the TCP route forwards api's connections (HTTP as bytes) to other.
        wait_until(lambda: m.api("/v2/x").name == "other", WAIT, what="the TCP route alone")
        assert set(names(m, "/anything", 10)) == {"other"}
    finally:
        m.delete(tcp)
        m.delete(route)
    wait_until(lambda: m.api("/").name in ("api-v1", "api-v2"), WAIT, what="api again")


def test_gateway_routes_hostnames_split_and_redirect(mesh: Mesh) -> None:
    m = mesh
    _, doc = example("route-gateway")
    m.apply(doc)
    try:
        gw = m.gateway_port
        wait_until(
            lambda: call(gw, "/", {"host": "v2.example.com"}).name == "api-v2", WAIT, what="the gateway's routes"
        )
        assert {call(gw, f"/x{i}", {"host": "v2.example.com"}).name for i in range(10)} == {"api-v2"}
        assert {call(gw, f"/x{i}", {"host": "any.example.org"}).name for i in range(20)} == {"api-v1", "api-v2"}
        reply = call(gw, "/insecure", {"host": "v2.example.com"})
        assert reply.status == 308 and reply.headers["location"] == "https://v2.example.com/insecure"
    finally:
        m.delete(doc)
    wait_until(lambda: call(m.gateway_port, "/").status == 404, WAIT, what="no route on the gateway")


def test_what_cannot_take_effect_is_refused_and_not_stored(mesh: Mesh) -> None:
    m = mesh
    _, doc = example("route-1")
    bad = copy.deepcopy(doc)
    bad["name"] = "with-port"
    bad["spec"]["to"][0]["rules"][0]["default"]["backendRefs"][0]["port"] = 8080
    status, body = m.put(bad)
    assert status == 400, body
    field = "spec.to[0].rules[0].default.backendRefs[0].port"
    assert body["invalid_parameters"][0]["field"] == field
    assert "a backendRef port is not supported yet by zonemesh" in body["invalid_parameters"][0]["reason"]
    assert m.cp.get("/meshes/default/meshhttproutes/with-port")[0] == 404
    path = m.work / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = zmctl(m.cp.api, "apply", "-f", str(path))
    assert out.returncode != 0 and "a backendRef port is not supported yet" in out.stderr + out.stdout
