"""Gateways end to end: a standalone control plane, real Envoys (zonemesh-dp) on 127.0.0.1.

    client --> builtin gateway Envoy (MeshGateway listeners) ==mTLS==> backend-a / backend-b / echo sidecars
    client --> delegated gateway's outbound 33033            ==mTLS==> backend-b

Every MeshGateway, MeshGatewayRoute and Dataplane applied here is read from docs/gateways.md
(only the ports are replaced with free ones), so the page shows exactly what is tested. Mesh
``default`` has builtin mTLS and an allow-all MeshTrafficPermission. Every wait is bounded;
every process is stopped at the end.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from zonemesh.shared.resources import REGISTRY
from zonemesh.zone_cp.xds.testing import self_signed_server_cert

from zonemesh.testing import (
    ALLOW_ALL,
    HTTP_APP,
    MTLS_MESH,
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    sidecar_dataplane,
    stop_processes,
    wait_until,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "gateways.md"
REQUESTS = 300  # for the weighted split: bounded, and enough for a tight tolerance
SPLIT_TOLERANCE = 0.08  # 90% +- 8 points: ~4.6 standard deviations of a binomial(300, 0.9)

CROSS_MESHES = ("mesh-a", "mesh-b")

ECHO_APP = textwrap.dedent(
    """
    import socketserver, sys
    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
    """
)


def example(name: str) -> dict[str, Any]:
    """The YAML block after ``<!-- example: name -->`` in docs/gateways.md."""
    text = DOCS.read_text()
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```yaml\n(.*?)```", text, re.S)
    assert found, f"docs/gateways.md has no example {name!r}"
    doc = yaml.safe_load(found.group(1))
    assert isinstance(doc, dict)
    return doc


def request(url: str, host: str | None = None, timeout: float = 5) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def https_get(port: int, sni: str, ca_pem: bytes, path: str = "/") -> tuple[str, str]:
    """GET over TLS to 127.0.0.1 with ``sni``, verifying against ``ca_pem``: (status line, body)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        for _ in range(1000):  # bounded; the server closes the connection
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return head.splitlines()[0], body


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Env:
    cp: ControlPlaneProcess
    xds_port: int
    work: Path
    http_port: int = field(default_factory=free_port)
    tcp_port: int = field(default_factory=free_port)
    gateway_admin: int = field(default_factory=free_port)
    delegated_port: int = 33033
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)
    gateway_proc: subprocess.Popen[bytes] | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def zmctl(self, *args: str) -> str:
        return zmctl_ok(self.cp.api, *args)

    def put(self, doc: dict[str, Any]) -> tuple[int, Any]:
        return self.cp.put(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")), doc)

    def apply(self, doc: dict[str, Any]) -> None:
        status, body = self.put(doc)
        assert status in (200, 201), body

    def start(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[name] = log
        return proc

    def start_dp(self, name: str, dataplane: dict[str, Any], admin_port: int) -> subprocess.Popen[bytes]:
        mesh = str(dataplane.get("mesh") or "default")
        token = self.zmctl("generate", "dataplane-token", "--mesh", mesh, "--name", name, "--valid-for", "1h")
        token_file = self.work / f"{name}.token"
        token_file.write_text(token.strip())
        spec = {k: v for k, v in dataplane.items() if k not in ("mesh", "name")}
        cmd = dp_run_command(
            xds_port=self.xds_port,
            ca_file=self.cp.data_dir / "xds.crt",
            name=name,
            mesh=mesh,
            dataplane=["--dataplane-inline", json.dumps(spec)],
            token_file=token_file,
            admin_port=admin_port,
            work_dir=self.work / name,
        )
        return self.start(cmd, f"{name}-dp")

    def gateway(self) -> dict[str, Any]:
        doc = example("meshgateway")
        for listener in doc["conf"]["listeners"]:
            listener["port"] = {8080: self.http_port, 9090: self.tcp_port}[listener["port"]]
        return doc

    @property
    def gateway_envoy(self) -> EnvoyAdmin:
        return EnvoyAdmin("edge-gateway-1", self.gateway_admin)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("gateways")
    xds_port = free_port()
    cp = ControlPlaneProcess(
        work / "cp",
        args=["--mode", "standalone", "--store", "memory", "--xds-address", "127.0.0.1", "--xds-port", str(xds_port)],
    )
    env = Env(cp, xds_port, work)
    if not port_is_free(env.delegated_port):  # the seed's port, unless something on this machine holds it
        env.delegated_port = free_port()
    try:
        cp.start()
        env.apply(MTLS_MESH)
        env.apply(ALLOW_ALL)
        for service, protocol in (("backend-a", "http"), ("backend-b", "http"), ("echo", "tcp")):
            app_port, inbound = free_port(), free_port()
            code = ECHO_APP if protocol == "tcp" else HTTP_APP
            args = [str(app_port)] if protocol == "tcp" else [service, str(app_port)]
            env.start([sys.executable, "-c", code, *args], service)
            env.start_dp(f"{service}-1", sidecar_dataplane(service, inbound, app_port, protocol), free_port())
        env.gateway_proc = env.start_dp("edge-gateway-1", example("builtin-dataplane"), env.gateway_admin)
        env.apply(env.gateway())
        for name in ("route-http", "route-host-b", "route-tcp"):
            env.apply(example(name))
        wait_until(
            lambda: request(f"{env.gateway_url}/api")[:2] == (200, "backend-a"),
            timeout=40,
            what="the builtin gateway to route /api to backend-a",
        )
        yield env
    except BaseException:
        for name, log in env.logs.items():
            if name.endswith("-dp"):
                print(f"--- {name} log ---\n{log.read_text(errors='replace')[-3000:]}")
        print(f"--- control plane log ---\n{cp.logs()[-6000:]}")
        raise
    finally:
        stop_processes(env.procs)
        cp.kill()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, env: Env) -> None:
    """A failed test shows what the control plane logged while it ran (tests/conftest.py)."""
    since = len(env.cp.logs())
    request.node.failure_logs = lambda: log_excerpt("control plane", env.cp.logs()[since:])


def test_path_routing(env: Env) -> None:
    for _ in range(10):
        assert request(f"{env.gateway_url}/api")[:2] == (200, "backend-a")
        assert request(f"{env.gateway_url}/api/users")[:2] == (200, "backend-a")
    # A PREFIX matches whole segments: /apix is not /api, it falls to "/" (the split).
    assert request(f"{env.gateway_url}/apix")[1] in ("backend-a", "backend-b")


def test_weighted_split_90_10(env: Env) -> None:
    counts = {"backend-a": 0, "backend-b": 0}
    for i in range(REQUESTS):
        status, body, _ = request(f"{env.gateway_url}/page/{i}")
        assert status == 200, body
        counts[body] += 1
    share_b = counts["backend-b"] / REQUESTS
    print(f"weighted split over {REQUESTS} requests: {counts} (backend-b {share_b:.3f}, configured 0.9)")
    assert abs(share_b - 0.9) <= SPLIT_TOLERANCE, counts
    assert counts["backend-a"] > 0  # the 10% is really sent somewhere


def test_hostname_picks_the_listener(env: Env) -> None:
    status, body, headers = request(f"{env.gateway_url}/api", host="b.example.com")
    assert (status, body) == (200, "backend-b")
    assert headers.get("x-served-by") == "host-b-route"
    # With a port in the Host header too; and any other host keeps the catch-all listener's routes.
    assert request(f"{env.gateway_url}/api", host=f"b.example.com:{env.http_port}")[1] == "backend-b"
    status, body, headers = request(f"{env.gateway_url}/api", host="other.example.com")
    assert (status, body) == (200, "backend-a")
    assert "x-served-by" not in headers


def test_tcp_listener_reaches_the_echo_service(env: Env) -> None:
    for payload in (b"ping", b"x" * 10_000):
        with socket.create_connection(("127.0.0.1", env.tcp_port), timeout=5) as sock:
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):  # bounded by the payload and the socket timeout
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert received == payload


def test_route_change_takes_effect_without_restart(env: Env) -> None:
    uptime = env.gateway_envoy.stat("server.uptime")
    changed = copy.deepcopy(example("route-http"))
    changed["conf"]["http"]["rules"][0]["backends"][0]["destination"]["kuma.io/service"] = "backend-b"
    try:
        env.apply(changed)
        wait_until(
            lambda: request(f"{env.gateway_url}/api")[1] == "backend-b", timeout=20, what="/api to go to backend-b"
        )
        assert env.gateway_proc is not None and env.gateway_proc.poll() is None
        assert env.gateway_envoy.stat("server.uptime") >= uptime  # the same Envoy, not a restarted one
    finally:
        env.apply(example("route-http"))
    wait_until(lambda: request(f"{env.gateway_url}/api")[1] == "backend-a", timeout=20, what="/api back to backend-a")


def test_delegated_gateway_outbound_reaches_the_backend(env: Env) -> None:
    doc = example("delegated-dataplane")
    doc["networking"]["outbound"][0]["port"] = env.delegated_port
    env.start_dp("kong-01", doc, free_port())
    url = f"http://127.0.0.1:{env.delegated_port}/"
    wait_until(lambda: request(url)[:2] == (200, "backend-b"), timeout=30, what="the delegated gateway's outbound")
    for _ in range(5):
        assert request(url)[:2] == (200, "backend-b")
    # No inbound: the delegated proxy's Envoy has only the outbound listener.
    kinds = env.zmctl("get", "dataplanes", "--mesh", "default")
    rows = {line.split()[1]: line.split() for line in kinds.splitlines()[1:] if line.strip()}
    assert "gateway:delegated" in rows["kong-01"]
    assert "gateway:builtin" in rows["edge-gateway-1"]
    assert "sidecar" in rows["backend-a-1"]
    gateways = env.zmctl("get", "meshgateways", "--mesh", "default")
    assert f"HTTP:{env.http_port}/b.example.com" in gateways and f"TCP:{env.tcp_port}" in gateways


def test_invalid_gateways_are_refused_field_by_field(env: Env) -> None:
    bad = env.gateway()
    bad["name"] = "bad-gateway"
    bad["conf"]["listeners"][2]["port"] = env.http_port  # TCP on the HTTP port
    status, body = env.put(bad)
    assert status == 400, body
    first = body["invalid_parameters"][0]
    assert (first["field"], first["source"]) == ("conf.listeners[2].protocol", "body")
    assert "already used with protocol HTTP" in first["reason"]

    no_selector = env.gateway()
    no_selector["name"] = "bad-gateway"
    del no_selector["selectors"]
    status, body = env.put(no_selector)
    assert status == 400
    assert {"field": "selectors", "reason": "must be defined", "source": "body"} in body["invalid_parameters"]

    cross_tcp = env.gateway()
    cross_tcp["name"] = "bad-gateway"
    cross_tcp["conf"]["listeners"] = [{"port": env.tcp_port, "protocol": "TCP", "crossMesh": True}]
    status, body = env.put(cross_tcp)
    assert status == 400
    assert {
        "field": "conf.listeners[0].crossMesh",
        "reason": "cross-mesh listeners support only protocol HTTP, not TCP",
        "source": "body",
    } in body["invalid_parameters"]
    # Nothing was stored, and the running gateway is untouched.
    assert env.cp.get(REGISTRY.get("MeshGateway").item_path("bad-gateway", "default"))[0] == 404
    assert request(f"{env.gateway_url}/api")[:2] == (200, "backend-a")


def test_cross_mesh_gateway_reachable_from_another_mesh(env: Env) -> None:
    for mesh in CROSS_MESHES:
        env.apply({**MTLS_MESH, "name": mesh})
    env.apply({**ALLOW_ALL, "mesh": "mesh-a"})
    app_port, inbound = free_port(), free_port()
    env.start([sys.executable, "-c", HTTP_APP, "backend-x", str(app_port)], "backend-x")
    env.start_dp("backend-x-1", sidecar_dataplane("backend-x", inbound, app_port, mesh="mesh-a"), free_port())

    gateway_port = free_port()
    gateway = example("crossmesh-gateway")
    gateway["conf"]["listeners"][0]["port"] = gateway_port
    env.apply(gateway)
    env.apply(example("crossmesh-route"))
    gateway_admin = free_port()
    env.start_dp("cross-mesh-gateway-1", example("crossmesh-gateway-dataplane"), gateway_admin)
    client = example("crossmesh-client-dataplane")
    client["networking"]["inbound"][0].update(port=free_port(), servicePort=free_port())
    client["networking"]["outbound"][0]["port"] = gateway_port  # the listener's port, as the docs say
    client["networking"]["outbound"][0]["address"] = "127.0.0.2"  # the gateway itself binds 127.0.0.1:port
    client_admin = free_port()
    env.start_dp("client-b-1", client, client_admin)

    url = f"http://127.0.0.2:{gateway_port}/hello"
    host = "internal.cross-mesh-gateway.mesh-a.mesh"
    try:
        wait_until(
            lambda: request(url, host=host)[:2] == (200, "backend-x"),
            timeout=40,
            what="mesh-b's client to reach mesh-a's cross-mesh gateway",
        )
    except TimeoutError:
        for admin in (client_admin, gateway_admin):  # what each Envoy holds
            for path in ("/listeners", "/clusters"):
                print(f"--- :{admin}{path} ---\n{str(http('GET', f'http://127.0.0.1:{admin}{path}')[1])[:3000]}")
        for name in ("client-b-1-dp", "cross-mesh-gateway-1-dp"):
            print(f"--- {name} log ---\n{env.logs[name].read_text(errors='replace')[-3000:]}")
        raise  # the control plane's log: logs_on_failure
    # Another Host is not this listener's: the gateway answers 404 (the request did reach it).
    assert request(url, host="elsewhere.example.com")[0] == 404
    # The listener is mTLS only: a plaintext client going straight to the gateway is refused.
    with pytest.raises(OSError):
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{gateway_port}/", headers={"Host": host}), timeout=3
        )


def test_https_listener_terminates_tls_with_a_secret_certificate(env: Env) -> None:
    cert_pem, key_pem = self_signed_server_cert("secure.example.com")
    bundle = cert_pem + key_pem
    secret = example("https-secret")
    secret["data"] = base64.b64encode(bundle).decode()
    env.apply(secret)
    https_port = free_port()
    gateway = env.gateway()
    listener = example("https-listener")
    listener["port"] = https_port
    gateway["conf"]["listeners"].append(listener)
    env.apply(example("route-https"))
    env.apply(gateway)
    try:
        wait_until(
            lambda: https_get(https_port, "secure.example.com", cert_pem) == ("HTTP/1.1 200 OK", "backend-a"),
            timeout=30,
            what="the HTTPS listener to answer with backend-a",
        )
        # The certificate is checked for real: a client trusting another CA refuses the handshake.
        other_ca, _ = self_signed_server_cert("secure.example.com")
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(https_port, "secure.example.com", other_ca)
        # The plain HTTP listeners keep working meanwhile.
        assert request(f"{env.gateway_url}/api")[:2] == (200, "backend-a")
    finally:
        env.apply(env.gateway())


def test_https_certificate_secret_rotation_reaches_envoy_and_a_missing_secret_is_named(env: Env) -> None:
    """The Secret of an HTTPS listener changes: Envoy serves the new certificate (over SDS, no
    restart). A listener naming a Secret that does not exist: the gateway's generation fails with
    the MeshGateway, the field and the Secret in the error, and the gateway keeps serving."""
    first, second = self_signed_server_cert("secure.example.com"), self_signed_server_cert("secure.example.com")
    secret = example("https-secret")
    secret["data"] = base64.b64encode(first[0] + first[1]).decode()
    env.apply(secret)
    https_port = free_port()
    gateway = env.gateway()
    listener = example("https-listener")
    listener["port"] = https_port
    gateway["conf"]["listeners"].append(listener)
    env.apply(example("route-https"))
    env.apply(gateway)
    ok = ("HTTP/1.1 200 OK", "backend-a")
    try:
        wait_until(lambda: https_get(https_port, "secure.example.com", first[0]) == ok, 30, what="first cert")
        secret["data"] = base64.b64encode(second[0] + second[1]).decode()
        env.apply(secret)
        wait_until(lambda: https_get(https_port, "secure.example.com", second[0]) == ok, 30, what="rotated cert")
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(https_port, "secure.example.com", first[0])

        log_start = len(env.cp.logs())
        broken = copy.deepcopy(listener)
        broken["port"] = free_port()
        broken["tls"]["certificates"] = [{"secret": "no-such-secret"}]
        gateway["conf"]["listeners"].append(broken)
        env.apply(gateway)
        index = len(gateway["conf"]["listeners"]) - 1
        expected = (
            f"MeshGateway 'edge-gateway' conf.listeners[{index}].tls.certificates[0]: "
            "secret 'no-such-secret' not found in mesh 'default'"
        )

        def config_error() -> str:
            status, body = env.cp.get("/meshes/default/dataplanes/edge-gateway-1/_config")
            return str(body.get("detail")) if status == 500 and isinstance(body, dict) else ""

        assert expected in wait_until(config_error, 30, what="the gateway's generation to fail")
        wait_until(lambda: expected in env.cp.logs()[log_start:], 30, what="the error in the log")
        # The gateway keeps its last config; the other proxies are generated as ever.
        assert https_get(https_port, "secure.example.com", second[0]) == ok
        assert request(f"{env.gateway_url}/api")[:2] == (200, "backend-a")
        assert env.cp.get("/meshes/default/dataplanes/backend-a-1/_config")[0] == 200
    finally:
        env.apply(env.gateway())


def _delete(env: Env, doc: dict[str, Any]) -> None:
    status, body = env.cp.delete(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")))
    assert status == 200, body


def test_gateway_policies_fault_injection_and_rate_limit(env: Env) -> None:
    url = f"{env.gateway_url}/api"
    fault = example("policy-fault")
    env.apply(fault)
    try:
        wait_until(lambda: request(url)[0] == 418, timeout=20, what="the gateway to inject aborts")
        assert all(request(url)[0] == 418 for _ in range(5))
    finally:
        _delete(env, fault)
    wait_until(lambda: request(url)[:2] == (200, "backend-a"), timeout=20, what="aborts to stop")

    limit = example("policy-rate-limit")
    env.apply(limit)
    try:
        # Three requests per 10 s: a burst of ten sees 429s with the configured header.
        def limited() -> bool:
            statuses = [request(url) for _ in range(10)]
            return any(s == 429 and h.get("x-rate-limited") == "true" for s, _, h in statuses)

        wait_until(limited, timeout=30, interval=0.5, what="the gateway to rate-limit")
    finally:
        _delete(env, limit)
    wait_until(lambda: all(request(url)[0] == 200 for _ in range(5)), timeout=30, what="rate limiting to stop")


GATEWAY_POLICIES = [
    {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "gw-timeouts",
        "spec": {
            "targetRef": {"kind": "MeshGateway", "name": "edge-gateway"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"connectionTimeout": "2s", "idleTimeout": "30m", "http": {"requestTimeout": "7s"}},
                }
            ],
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "idleTimeout": "10m",
                        "http": {"streamIdleTimeout": "20s", "requestHeadersTimeout": "1s"},
                    },
                }
            ],
        },
    },
    {
        "type": "MeshRetry",
        "mesh": "default",
        "name": "gw-retry",
        "spec": {
            "targetRef": {"kind": "MeshGateway", "name": "edge-gateway"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"http": {"numRetries": 2, "retryOn": ["5xx"]}, "tcp": {"maxConnectAttempt": 3}},
                }
            ],
        },
    },
    {
        "type": "MeshCircuitBreaker",
        "mesh": "default",
        "name": "gw-cb",
        "spec": {
            "targetRef": {"kind": "MeshGateway", "name": "edge-gateway"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionLimits": {"maxConnections": 77}}}],
        },
    },
    {
        "type": "MeshHealthCheck",
        "mesh": "default",
        "name": "gw-hc",
        "spec": {
            "targetRef": {"kind": "MeshGateway", "name": "edge-gateway"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"interval": "10s", "timeout": "2s", "http": {"path": "/health"}},
                }
            ],
        },
    },
    {
        "type": "MeshRateLimit",
        "mesh": "default",
        "name": "gw-tcp-rate",
        "spec": {
            "targetRef": {"kind": "MeshGateway", "name": "edge-gateway"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"local": {"tcp": {"connectionRate": {"num": 100, "interval": "1s"}}}},
                }
            ],
        },
    },
]


def test_every_gateway_policy_is_accepted_by_envoy(env: Env) -> None:
    """Timeouts, retries, circuit breaker, health check, TCP rate limit and a connection limit on
    the real gateway Envoy: every update accepted (no NACK), the settings visible in its config."""

    stat = env.gateway_envoy.stat
    limited = env.gateway()
    limited["conf"]["listeners"][0]["resources"] = {"connectionLimit": 500}
    try:
        for doc in GATEWAY_POLICIES:
            env.apply(doc)
        env.apply(limited)

        def applied() -> bool:
            dump = env.gateway_envoy.admin("/config_dump")
            return (
                all(
                    marker in dump
                    for marker in (
                        '"max_connections": 77',
                        '"num_retries": 2',
                        "connection_limit",
                        "rate_limit_",
                        "/health",
                    )
                )
                and '"timeout": "7s"' in dump
            )

        wait_until(applied, timeout=30, interval=0.5, what="the gateway Envoy to hold every policy")
        assert stat("listener_manager.lds.update_success") > 0  # the counters are really read
        assert stat("listener_manager.lds.update_rejected") == 0
        assert stat("cluster_manager.cds.update_rejected") == 0
        assert request(f"{env.gateway_url}/api")[:2] == (200, "backend-a")
        with socket.create_connection(("127.0.0.1", env.tcp_port), timeout=5) as sock:
            sock.sendall(b"still echoing")
            assert sock.recv(100) == b"still echoing"
    finally:
        for doc in GATEWAY_POLICIES:
            _delete(env, doc)
        env.apply(env.gateway())


def test_load_balancing_strategy_on_the_gateway(env: Env) -> None:
    """MeshLoadBalancingStrategy on the gateway Envoy: its clusters' load balancer and its routes'
    hash policies, accepted (no NACK) and visible in its config; traffic still flows."""
    policy = {
        "type": "MeshLoadBalancingStrategy",
        "mesh": "default",
        "name": "gw-sticky",
        "spec": {
            "targetRef": {"kind": "MeshGateway", "name": "edge-gateway"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "loadBalancer": {"type": "RingHash", "ringHash": {"minRingSize": 128}},
                        "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}, "terminal": True}],
                    },
                }
            ],
        },
    }
    stat = env.gateway_envoy.stat
    try:
        env.apply(policy)

        def applied() -> bool:
            dump = env.gateway_envoy.config_dump()
            cluster = next(
                entry["cluster"]
                for section in dump["configs"]
                for entry in section.get("dynamic_active_clusters", [])
                if entry["cluster"]["name"] == "backend-a"
            )
            return cluster.get("lb_policy") == "RING_HASH" and '"header_name": "x-user"' in json.dumps(dump)

        # The config dump holds only what Envoy accepted: the cluster and the route's hash policy.
        wait_until(applied, timeout=30, interval=0.5, what="the gateway Envoy to hold the load balancing strategy")
        assert stat("cluster_manager.cds.update_rejected") == 0
        for user in ("u1", "u2"):
            assert http("GET", f"{env.gateway_url}/api", headers={"x-user": user}) == (200, "backend-a")
    finally:
        _delete(env, policy)
