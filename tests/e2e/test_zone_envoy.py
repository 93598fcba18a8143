"""A zone control plane driving real Envoys: mTLS, policies, NACKs and admission, end to end.

One standalone control plane (SQLite store) and two workloads on 127.0.0.1, each a tiny HTTP
app with a ``zonemesh-dp`` sidecar running the real Envoy binary:

    client --> app-a's Envoy (outbound :a_out) ==mTLS==> app-b's Envoy (inbound :b_in) --> app B

Mesh ``default`` has builtin mTLS. Every wait is bounded; every process is killed in the end.
No fault is simulated: the NACK test uses a policy our validation accepts but Envoy refuses (a
timeout beyond protobuf's Duration range), crashes are real signals to real processes.
"""

from __future__ import annotations

import base64
import contextlib
import http.client as http_client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.resources import REGISTRY
from zonemesh.zone_cp.insights import bounded_error

from zonemesh.testing import (
    ALLOW_ALL,
    DENY_A_TO_B,
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    log_tails,
    sidecar_dataplane,
    start_http_app,
    stop_process,
    stop_processes,
    wait_until,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

MESH_MTLS = {
    "type": "Mesh",
    "name": "default",
    "mtls": {
        "enabledBackend": "ca-1",
        # Short-lived workload certificates (reissued ~12 s after issue, the CA backdates them
        # 60 s): rotation happens several times while this module runs.
        "backends": [{"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "30s"}}}],
    },
}
OTHER_MESH = {"type": "Mesh", "name": "other"}


def get(url: str, timeout: float = 3) -> tuple[int, str]:
    status, body = http("GET", url, timeout=timeout)
    return status, body if isinstance(body, str) else json.dumps(body)


@dataclass
class Proxy(EnvoyAdmin):
    inbound: int
    app_port: int
    outbound: int | None
    process: subprocess.Popen[bytes] | None = None
    app: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    def identity_cert(self, spiffe: str) -> dict[str, Any]:
        """The certificate Envoy holds for ``spiffe`` (admin ``/certs``)."""
        for entry in json.loads(self.admin("/certs"))["certificates"]:
            for cert in entry.get("cert_chain") or []:
                if any(san.get("uri") == spiffe for san in cert.get("subject_alt_names") or []):
                    return cert  # type: ignore[no-any-return]
        raise AssertionError(f"no certificate for {spiffe} in {self.name}'s Envoy")


@dataclass
class Zone:
    cp: ControlPlaneProcess
    xds_port: int
    work: Path
    a: Proxy
    b: Proxy
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    expired_token: tuple[str, float] = ("", 0.0)  # issued with the fixture, (token, when)

    @property
    def ca_file(self) -> Path:
        return self.cp.data_dir / "xds.crt"

    @property
    def url_a_to_b(self) -> str:
        assert self.a.outbound is not None
        return f"http://127.0.0.1:{self.a.outbound}/"

    def zmctl(self, *args: str) -> str:
        return zmctl_ok(self.cp.api, *args)

    def token(self, name: str, valid_for: str = "1h", mesh: str = "default") -> str:
        """Issued through zmctl, as an operator would."""
        return self.zmctl(
            "generate", "dataplane-token", "--mesh", mesh, "--name", name, "--valid-for", valid_for
        ).strip()

    def start_dp(
        self, name: str, dataplane: dict[str, Any], token: str, admin_port: int, *extra: str, as_file: bool = False
    ) -> tuple[subprocess.Popen[bytes], Path]:
        token_file = self.work / f"{name}.token"
        token_file.write_text(token)
        source = ["--dataplane-inline", json.dumps(dataplane)]
        if as_file:
            (self.work / f"{name}.yaml").write_text(yaml.safe_dump(dataplane, sort_keys=False))
            source = ["--dataplane-file", str(self.work / f"{name}.yaml")]
        log = self.work / f"{name}-dp.log"
        cmd = dp_run_command(
            xds_port=self.xds_port,
            ca_file=self.ca_file,
            name=name,
            mesh="default",
            dataplane=source,
            token_file=token_file,
            admin_port=admin_port,
            work_dir=self.work / name,
            extra=extra,
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def put(self, doc: dict[str, Any]) -> None:
        path = REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", ""))
        status, body = self.cp.put(path, doc)
        assert status in (200, 201), body

    def delete(self, doc: dict[str, Any]) -> None:
        status, body = self.cp.delete(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")))
        assert status == 200, body

    def metric(self, name: str, labels: str = "") -> float:
        status, text = http("GET", f"http://127.0.0.1:{self.cp.diagnostics_port}/metrics")
        assert status == 200
        total = 0.0
        for line in str(text).splitlines():
            if line.startswith(name + ("{" if labels else "")) and labels in line.split(" ")[0]:
                total += float(line.rsplit(" ", 1)[1])
        return total


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not reaped it yet.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


@contextlib.contextmanager
def running_zone(work: Path) -> Iterator[Zone]:
    """The control plane, both apps and both sidecars, A -> B answering; everything stopped after
    (also used by bench/dataplane_e2e.py)."""
    xds_port = free_port()
    cp = ControlPlaneProcess(
        work / "cp",
        # The default store (SQLite in the data dir): the control plane restart test needs it.
        args=["--mode", "standalone", "--xds-address", "127.0.0.1", "--xds-port", str(xds_port)],
    )
    a = Proxy("app-a", free_port(), free_port(), free_port(), free_port())
    b = Proxy("app-b", free_port(), free_port(), free_port(), None)
    zone = Zone(cp, xds_port, work, a, b)
    try:
        cp.start()
        zone.put(MESH_MTLS)
        zone.put(OTHER_MESH)
        zone.put(ALLOW_ALL)
        # Issued now, used by the token tests once it has expired (1 s + the validator's 5 s of leeway).
        zone.expired_token = (zone.token("intruder-expired", valid_for="1s"), time.monotonic())
        for proxy in (a, b):
            proxy.app = start_http_app(proxy.name, proxy.app_port)
            zone.procs.append(proxy.app)
            outbound = [("app-b", proxy.outbound)] if proxy.outbound else []
            dataplane = sidecar_dataplane(proxy.name, proxy.inbound, proxy.app_port, outbound=outbound)
            proxy.process, proxy.log = zone.start_dp(proxy.name, dataplane, zone.token(proxy.name), proxy.admin_port)
        wait_until(
            lambda: get(zone.url_a_to_b) == (200, "app-b"),
            timeout=30,
            what="app-a's outbound to reach app-b through both Envoys",
        )
        yield zone
    except BaseException:
        for proxy in (a, b):
            if proxy.log.is_file():
                print(f"--- {proxy.name} agent log ---\n{proxy.log.read_text(errors='replace')[-4000:]}")
        print(f"--- control plane log ---\n{cp.logs()[-6000:]}")
        raise
    finally:
        stop_processes(zone.procs)
        cp.kill()


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    with running_zone(tmp_path_factory.mktemp("zone-envoy")) as zone:
        yield zone


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, zone: Zone) -> None:
    """A failed test shows what the control plane logged while it ran (tests/conftest.py), and the
    log of each agent it started: Envoy writes there too (a crash's backtrace among it)."""
    since = len(zone.cp.logs())
    before = set(zone.work.glob("*-dp.log"))

    def logs() -> str:
        agents = log_tails(sorted(set(zone.work.glob("*-dp.log")) - before), 6000)
        return "\n".join([log_excerpt("control plane", zone.cp.logs()[since:]), *agents])

    request.node.failure_logs = logs


def test_request_crosses_two_envoys_over_mtls(zone: Zone) -> None:
    status, body = get(zone.url_a_to_b)
    assert (status, body) == (200, "app-b")
    # mTLS is verified, not assumed: both sides completed TLS handshakes...
    assert zone.a.stat("cluster.app-b.ssl.handshake") > 0
    inbound_handshakes = [
        line for line in zone.b.admin("/stats?filter=ssl.handshake").splitlines() if line.startswith("listener.")
    ]
    assert any(int(line.rsplit(": ", 1)[1]) > 0 for line in inbound_handshakes), inbound_handshakes
    # ...B saw no client without a certificate, and each Envoy holds its SPIFFE identity.
    assert all(
        int(line.rsplit(": ", 1)[1]) == 0
        for line in zone.b.admin("/stats?filter=ssl.no_certificate").splitlines()
        if line.startswith("listener.")
    )
    assert zone.a.identity_cert("spiffe://default/app-a")
    assert zone.b.identity_cert("spiffe://default/app-b")
    # A checks the server's SAN (the SPIFFE ID of app-b) and no handshake failed that check.
    tls = json.dumps(zone.a.cluster("app-b")["transport_socket"])
    assert '"exact": "spiffe://default/app-b"' in tls, tls
    assert zone.a.stat("cluster.app-b.ssl.fail_verify_san") == 0
    # A plaintext client is refused by B's inbound (mode STRICT): TLS is required.
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{zone.b.inbound}/")


def test_insights_show_connected_proxies(zone: Zone) -> None:
    def overview() -> dict[str, Any] | None:
        status, body = zone.cp.get("/meshes/default/dataplanes+insights")
        assert status == 200
        items = {item["name"]: item for item in body["items"] if item["name"] in ("app-a", "app-b")}
        subs = [item["dataplaneInsight"]["subscriptions"] for item in items.values()]
        ready = len(items) == 2 and all(s and int(s[-1]["status"]["total"]["responsesAcknowledged"]) > 0 for s in subs)
        return items if ready else None

    # Insights are written asynchronously, at most once a second per proxy.
    items = wait_until(overview, timeout=10, what="both proxies' subscriptions with ACKs")
    for item in items.values():
        sub = item["dataplaneInsight"]["subscriptions"][-1]
        assert "disconnectTime" not in sub
        assert sub["connectTime"] and sub["controlPlaneInstanceId"]
        assert sub["version"]["envoy"]["version"]
        assert {"clusters", "listeners", "secrets"} <= set(sub["status"])
    table = zone.zmctl("inspect", "dataplanes", "-m", "default").splitlines()
    for name in ("app-a", "app-b"):
        assert any(line.split()[1] == name and "Online" in line.split() for line in table[1:]), table
    status, insight = zone.cp.get("/meshes/default/dataplane-insights/app-a")
    assert status == 200
    assert insight["mTLS"]["certificateExpirationTime"]
    assert insight["mTLS"]["issuedBackend"] == "ca-1"


def test_config_api_and_zmctl_show_what_envoy_runs(zone: Zone) -> None:
    status, body = zone.cp.get("/meshes/default/dataplanes/app-a/_config")
    assert status == 200, body
    generated = {c["name"] for c in body["xds"]["clusters"]}
    assert "app-b" in generated
    assert all(s["tlsCertificate"]["privateKey"]["inlineBytes"] == "<redacted>" for s in body["xds"]["secrets"][:1])

    def envoy_has_it() -> bool:
        dump = zone.a.config_dump()
        section = next(sec for sec in dump["configs"] if "dynamic_active_clusters" in sec)
        names = {e["cluster"]["name"] for e in section["dynamic_active_clusters"]}
        _, now = zone.cp.get("/meshes/default/dataplanes/app-a/_config")
        return names == generated and section["version_info"] == now["versions"]["clusters"]

    wait_until(envoy_has_it, timeout=10, what="app-a's Envoy to run the generated clusters at the same version")
    out = json.loads(zone.zmctl("inspect", "dataplane", "app-a", "--mesh", "default", "--type", "config-dump"))
    assert {c["name"] for c in out["xds"]["clusters"]} == generated
    assert zone.cp.get("/meshes/default/dataplanes/nobody/_config")[0] == 404


def test_traffic_permission_deny_then_allow_without_restarts(zone: Zone) -> None:
    pids = (zone.a.process.pid, zone.b.process.pid)  # type: ignore[union-attr]
    zone.put(DENY_A_TO_B)
    wait_until(lambda: get(zone.url_a_to_b)[0] == 403, timeout=15, interval=0.2, what="403 after the deny policy")
    denied = [line for line in zone.b.admin("/stats?filter=rbac.denied").splitlines() if not line.endswith(": 0")]
    assert denied, "app-b's Envoy counted no RBAC denial"  # refused by B's inbound RBAC filter, not elsewhere
    zone.delete(DENY_A_TO_B)
    wait_until(lambda: get(zone.url_a_to_b) == (200, "app-b"), timeout=15, interval=0.2, what="200 after removal")
    assert (zone.a.process.pid, zone.b.process.pid) == pids  # type: ignore[union-attr]
    assert zone.a.process.poll() is None and zone.b.process.poll() is None  # type: ignore[union-attr]


def test_permissive_mode_admits_plaintext_and_strict_refuses_it_again(zone: Zone) -> None:
    inbound_b = f"http://127.0.0.1:{zone.b.inbound}/"
    permissive = json.loads(json.dumps(MESH_MTLS))
    permissive["mtls"]["backends"][0]["mode"] = "PERMISSIVE"
    zone.put(permissive)
    try:
        wait_until(lambda: get(inbound_b) == (200, "app-b"), timeout=15, what="a plaintext client admitted by B")
        assert get(zone.url_a_to_b) == (200, "app-b")  # mesh traffic keeps flowing (over mTLS)
    finally:
        zone.put(MESH_MTLS)

    def refused() -> bool:
        try:
            get(inbound_b)
        except OSError:
            return True
        return False

    wait_until(refused, timeout=15, what="B to require TLS again (STRICT)")
    assert get(zone.url_a_to_b) == (200, "app-b")


def test_timeout_and_retry_changes_reach_the_config_dump(zone: Zone) -> None:
    timeout = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "timeout-to-b",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"connectionTimeout": "7s"}}],
        },
    }
    retry = {
        "type": "MeshRetry",
        "mesh": "default",
        "name": "retry-to-b",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"http": {"numRetries": 7}}}],
        },
    }
    zone.put(timeout)
    zone.put(retry)
    try:
        wait_until(
            lambda: zone.a.cluster("app-b").get("connect_timeout") == "7s",
            timeout=15,
            what="connect_timeout 7s on cluster app-b",
        )
        wait_until(
            lambda: '"num_retries": 7' in zone.a.admin("/config_dump?resource=dynamic_route_configs"),
            timeout=15,
            what="num_retries 7 in the routes",
        )
        assert get(zone.url_a_to_b) == (200, "app-b")
    finally:
        zone.delete(timeout)
        zone.delete(retry)
    wait_until(
        lambda: zone.a.cluster("app-b").get("connect_timeout") == "5s",
        timeout=15,
        what="the default policy's connect_timeout 5s back on cluster app-b",
    )


def test_policy_envoy_rejects_is_nacked_and_last_good_config_keeps_serving(zone: Zone) -> None:
    # Valid for the API (a Cluster message), refused by Envoy: a cluster's connect_timeout must be
    # greater than 0s, a rule of Envoy's own that the control plane does not check. Envoy NACKs
    # the CDS response; the control plane names the policy that made that config.
    bad = {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": "connect-timeout-zero",
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": "app-a"},
            "default": {
                "appendModifications": [
                    {"cluster": {"operation": "Patch", "match": {"name": "app-b"}, "value": "connectTimeout: 0s"}}
                ]
            },
        },
    }

    def clusters_status() -> dict[str, Any] | None:
        found, insight = zone.cp.get("/meshes/default/dataplane-insights/app-a")
        subscriptions = insight.get("subscriptions") if found == 200 else None
        return subscriptions[-1]["status"].get("clusters") if subscriptions else None

    # Written asynchronously: run alone, this test may come before app-a's first insight.
    before = int(wait_until(clusters_status, timeout=15, what="app-a's insight")["responsesRejected"])
    nacks_before = zone.metric("xds_nack_total", "Cluster")
    good = zone.a.cluster("app-b")
    zone.put(bad)
    try:
        status = wait_until(
            lambda: (s := clusters_status()) and int(s["responsesRejected"]) > before and s,
            timeout=15,
            what="a NACK from app-a recorded in its insight",
        )
        # Counted and logged with Envoy's own words, and the policy that changed that config.
        assert "connect_timeout" in status["lastError"], status
        assert status["lastErrorPolicies"] == ["MeshProxyPatch/connect-timeout-zero"], status
        assert status["lastResponse"] == "NACK", status  # Envoy runs its previous config now
        assert zone.metric("xds_nack_total", "Cluster") > nacks_before
        nacks = [json.loads(line) for line in zone.cp.logs().splitlines() if '"event": "xds_nack"' in line]
        # the log has Envoy's whole message, the insight its start and its end, where Envoy says why
        assert "ConnectTimeout: value must be greater than 0s" in status["lastError"], status
        assert any(
            n["proxy"] == "default/app-a"
            and status["lastError"] == bounded_error(n["error"])
            and "ConnectTimeout: value must be greater than 0s" in n["error"]
            and n["policies"] == ["MeshProxyPatch/connect-timeout-zero"]
            for n in nacks
        ), nacks[-3:]
        # Still serving, with the last good cluster.
        for _ in range(5):
            assert get(zone.url_a_to_b) == (200, "app-b")
        assert zone.a.stat("cluster_manager.cds.update_rejected") > 0
        assert zone.a.cluster("app-b") == good
    finally:
        zone.delete(bad)
    wait_until(lambda: get(zone.url_a_to_b) == (200, "app-b"), timeout=15, what="200 after removing the bad policy")
    # The next config is ACKed: the NACK is history (lastError stays), no longer the present.
    after = wait_until(
        lambda: (s := clusters_status()) and s.get("lastResponse") == "ACK" and s,
        timeout=15,
        what="app-a's ACK of the config without the bad policy",
    )
    assert "ConnectTimeout" in after["lastError"], after


def test_workload_certificate_rotation_keeps_connections_open(zone: Zone) -> None:
    serial = zone.b.identity_cert("spiffe://default/app-b")["serial_number"]
    conn = http_client.HTTPConnection("127.0.0.1", zone.a.outbound, timeout=5)  # keep-alive, client -> A
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"app-b")
        sock = conn.sock
        upstream = zone.a.stat("cluster.app-b.upstream_cx_total")
        destroyed = zone.a.stat("cluster.app-b.upstream_cx_destroy")
        wait_until(
            lambda: zone.b.identity_cert("spiffe://default/app-b")["serial_number"] != serial,
            timeout=40,
            interval=0.5,
            what="app-b's workload certificate to be rotated (30 s lifetime)",
        )
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"app-b")
        assert conn.sock is sock, "the client's connection to app-a's Envoy was reopened"
        # The Envoy-to-Envoy mTLS connection opened before the rotation carried the second request.
        assert zone.a.stat("cluster.app-b.upstream_cx_total") == upstream
        assert zone.a.stat("cluster.app-b.upstream_cx_destroy") == destroyed
    finally:
        conn.close()
    assert get(zone.url_a_to_b) == (200, "app-b")  # and new connections handshake with the new certificate


# The reason each refusal gives (docs/dataplane.md, Troubleshooting, lists the same).
BAD_TOKENS = {
    "forged": "signature verification failed",
    "expired": "token expired",
    "revoked": "has been revoked",
    "wrong-mesh": "token was issued for mesh 'other', the proxy belongs to mesh 'default'",
    "wrong-name": "token was issued for dataplane 'app-a', the proxy is 'intruder-wrong-name'",
}


def _bad_token(zone: Zone, kind: str, name: str) -> str:
    if kind == "forged":  # a genuine token with its claims altered (a longer life), signature kept
        header, payload, signature = zone.token(name).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["exp"] += 365 * 24 * 3600
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"{header}.{forged}.{signature}"
    if kind == "expired":
        token, issued = zone.expired_token
        time.sleep(max(0.0, issued + 7 - time.monotonic()))  # 1 s validity + 5 s of leeway
        return token
    if kind == "revoked":
        # Issued over the HTTP API, revoked with `zmctl apply` (docs/dataplane.md shows both).
        status, token = http(
            "POST", f"{zone.cp.api}/tokens/dataplane", {"mesh": "default", "name": name, "validFor": "24h"}
        )
        assert status == 200, token
        payload = token.split(".")[1]
        jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        revocations = zone.work / "revocations.yaml"
        revocations.write_text(
            "type: Secret\n"
            "mesh: default\n"
            "name: dataplane-token-revocations-default\n"
            f"data: {base64.b64encode(jti.encode()).decode()}\n"
        )
        zone.zmctl("apply", "-f", str(revocations))
        return str(token)
    if kind == "wrong-mesh":
        return zone.token(name, mesh="other")
    assert kind == "wrong-name"
    return zone.token("app-a")


def _ads_status(zone: Zone, token: str | None, node_id: str) -> grpc.StatusCode:
    """Open an ADS stream as Envoy would (TLS, bearer token, node id) and return how it ends."""
    credentials = grpc.ssl_channel_credentials(root_certificates=zone.ca_file.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{zone.xds_port}", credentials) as channel:
        stream = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        request = discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
        request.node.id = node_id
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        try:
            for _ in stream(iter([request]), metadata=metadata, timeout=10):
                return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_proxy_with_a_bad_token_is_refused(zone: Zone, kind: str) -> None:
    name = f"intruder-{kind}"
    token = _bad_token(zone, kind, name)
    # Envoy's own door: the ADS stream is refused with UNAUTHENTICATED.
    assert _ads_status(zone, token, f"default.{name}") == grpc.StatusCode.UNAUTHENTICATED
    # The agent's door: registration is refused, the agent says so and exits 3 without starting Envoy.
    dataplane = sidecar_dataplane(name, free_port(), free_port())
    proc, log = zone.start_dp(name, dataplane, token, free_port())
    code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 3, text
    assert "the control plane refused this proxy: dataplane token refused" in text
    assert '"envoy_started"' not in text
    logs = zone.cp.logs()
    refusals = [json.loads(line) for line in logs.splitlines() if '"dataplane_auth_refused"' in line]
    mine = [r for r in refusals if r.get("name") == name]
    assert len(mine) >= 2 and all(BAD_TOKENS[kind] in r["reason"] for r in mine), mine  # one per door
    assert token not in logs  # tokens are never logged
    assert http("GET", f"{zone.cp.api}/meshes/default/dataplanes/{name}")[0] == 404


def test_proxy_without_a_token_is_refused(zone: Zone) -> None:
    assert _ads_status(zone, None, "default.intruder-none") == grpc.StatusCode.UNAUTHENTICATED
    refusals = [json.loads(line) for line in zone.cp.logs().splitlines() if '"dataplane_auth_refused"' in line]
    assert any(r.get("name") == "intruder-none" and r["reason"] == "no dataplane token provided" for r in refusals)
    # The agent does not even try with an empty token file.
    dataplane = sidecar_dataplane("intruder-none", free_port(), free_port())
    proc, log = zone.start_dp("intruder-none", dataplane, "", free_port())
    assert proc.wait(timeout=30) == 2
    assert "is empty" in log.read_text()


def test_zone_proxy_with_a_dataplane_token_is_refused(zone: Zone) -> None:
    """A zone ingress needs a zone token of scope ingress (tests/e2e/test_cross_zone.py runs real ones)."""
    ingress = {"type": "ZoneIngress", "networking": {"address": "127.0.0.1", "port": free_port()}}
    proc, log = zone.start_dp("edge", ingress, zone.token("edge"), free_port(), "--proxy-type", "ingress")
    assert proc.wait(timeout=30) == 3
    assert "zone token refused" in log.read_text()


def _envoy_shared_memory() -> set[str]:
    """The hot-restart shared memory segments of Envoys on this host (Linux: /dev/shm)."""
    return {path.name for path in Path("/dev/shm").glob("envoy_shared_memory_*")}


def test_agent_restarts_crashed_envoy_then_drains_and_unregisters_on_sigterm(zone: Zone) -> None:
    name = "short-lived"
    admin = Proxy(name, free_port(), free_port(), free_port(), None)
    dataplane = sidecar_dataplane(name, admin.inbound, admin.app_port)
    segments = _envoy_shared_memory()
    proc, log = zone.start_dp(name, dataplane, zone.token(name), admin.admin_port, as_file=True)
    wait_until(lambda: zone.cp.get(f"/meshes/default/dataplanes/{name}")[0] == 200, timeout=20, what="registration")
    wait_until(lambda: admin.stat("listener_manager.total_listeners_active") >= 1, timeout=20, what="Envoy configured")
    first = _events(log, "envoy_started")[-1]["pid"]

    # Envoy dies under the agent: it is started again (after a backoff) and configured again.
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(_events(log, "envoy_started")) == 2, timeout=20, what="a second envoy_started")
    second = _events(log, "envoy_started")[-1]
    assert second["pid"] != first and second["restarts"] == 1
    exited = _events(log, "envoy_exited")[-1]
    assert exited["exit_code"] == -signal.SIGKILL and exited["crashes_in_a_row"] == 1
    wait_until(lambda: admin.stat("listener_manager.total_listeners_active") >= 1, timeout=20, what="reconfigured")
    assert proc.poll() is None
    # Hot restart is off: neither Envoy made a shared memory segment, so the killed one left none.
    assert _envoy_shared_memory() <= segments

    # SIGTERM: drain, stop Envoy, unregister, exit 0.
    assert stop_process(proc) == 0, log.read_text()
    assert not _alive(second["pid"])
    assert zone.cp.get(f"/meshes/default/dataplanes/{name}")[0] == 404
    _, insight = zone.cp.get(f"/meshes/default/dataplane-insights/{name}")
    assert insight["subscriptions"][-1]["disconnectTime"]
    text = log.read_text()
    assert text.index('"envoy_draining"') < text.index('"envoy_stopped"') < text.index('"dataplane_unregistered"')
    assert not (zone.work / name / "bootstrap.json").stat().st_mode & 0o077  # it holds the token


def test_endpoints_follow_instances_coming_and_going(zone: Zone) -> None:
    def hosts() -> set[str]:
        lines = zone.a.admin("/clusters").splitlines()
        return {line.split("::")[1] for line in lines if line.startswith("app-b::") and "::cx_total::" in line}

    assert len(hosts()) == 1
    second = Proxy("app-b-2", free_port(), free_port(), free_port(), None)
    second.app = start_http_app(second.name, second.app_port)
    zone.procs.append(second.app)
    # Another instance of service app-b (its own Dataplane name and token).
    dataplane = sidecar_dataplane("app-b", second.inbound, second.app_port)
    proc, log = zone.start_dp(second.name, dataplane, zone.token(second.name), second.admin_port)
    try:
        wait_until(lambda: len(hosts()) == 2, timeout=20, what="A's cluster app-b to have two endpoints")
        bodies = wait_until(
            lambda: {get(zone.url_a_to_b)[1] for _ in range(6)} == {"app-b", "app-b-2"},
            timeout=20,
            what="requests spread over both instances",
        )
        assert bodies
    finally:
        assert stop_process(proc) == 0, log.read_text()  # unregisters: its endpoint goes away
        stop_process(second.app)
    wait_until(lambda: len(hosts()) == 1, timeout=20, what="A's cluster app-b back to one endpoint")
    assert all(get(zone.url_a_to_b) == (200, "app-b") for _ in range(4))


def test_proxies_keep_serving_through_a_control_plane_restart(zone: Zone) -> None:
    _, before = zone.cp.get("/meshes/default/dataplane-insights/app-a")
    old_instance = before["subscriptions"][-1]["controlPlaneInstanceId"]
    zone.cp.kill()  # SIGKILL: no goodbye to anyone
    for _ in range(5):  # Envoy keeps its last config while the control plane is gone
        assert get(zone.url_a_to_b) == (200, "app-b")
    zone.cp.start()

    def reconnected(name: str) -> bool:
        _, insight = zone.cp.get(f"/meshes/default/dataplane-insights/{name}")
        sub = insight["subscriptions"][-1]
        acked = int(sub["status"]["total"]["responsesAcknowledged"])
        return sub["controlPlaneInstanceId"] != old_instance and "disconnectTime" not in sub and acked > 0

    for name in ("app-a", "app-b"):
        wait_until(lambda n=name: reconnected(n), timeout=30, what=f"{name} back on the new control plane")
    # Driven by the new instance: a policy change still takes effect.
    zone.put(DENY_A_TO_B)
    wait_until(lambda: get(zone.url_a_to_b)[0] == 403, timeout=15, interval=0.2, what="403 from the new instance")
    zone.delete(DENY_A_TO_B)
    wait_until(lambda: get(zone.url_a_to_b) == (200, "app-b"), timeout=15, interval=0.2, what="200 again")
