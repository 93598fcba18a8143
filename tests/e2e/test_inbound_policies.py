"""Inbound-side policies end to end: a standalone control plane, real Envoys (zonemesh-dp) on 127.0.0.1.

    test --> client-a's outbound ==mTLS (spiffe://default/client-a)==> server's inbound --> server app
    test --> client-b's outbound ==mTLS (spiffe://default/client-b)==> server's inbound --> server app

The server's sidecar tells its callers apart by their certificates: MeshFaultInjection `from` and
`rules`, MeshRateLimit `from` and `rules`, MeshTimeout `rules` and MeshTrafficPermission `rules`
act on one caller and not the other. Fields once refused are observed on client-a's outbound:
MeshRetry retriableResponseHeaders, MeshHealthCheck eventLogPath. Mesh `default` has builtin
mTLS, no default policies (they would retry or time out around what is observed) and an
allow-all MeshTrafficPermission.
Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from zonemesh.shared.resources import REGISTRY

from zonemesh.testing import (
    ALLOW_ALL,
    MTLS_MESH,
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    log_excerpt,
    sidecar_dataplane,
    stop_processes,
    wait_until,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

# The server app: "/" answers its name; "/slow" after 1.5 s; "/retry/<key>" answers "attempt <n>"
# (n-th request for that key) with `x-retry-me: yes` on the first one; "/headers" the request's
# header names as JSON.
SERVER_APP = textwrap.dedent(
    """
    import http.server, json, sys, threading, time
    port = int(sys.argv[1])
    attempts, lock = {}, threading.Lock()
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            headers = {}
            if self.path == "/slow":
                time.sleep(1.5)
                body = "slow"
            elif self.path.startswith("/retry/"):
                with lock:
                    n = attempts[self.path] = attempts.get(self.path, 0) + 1
                body = f"attempt {n}"
                if n == 1:
                    headers["x-retry-me"] = "yes"
            elif self.path == "/headers":
                body = json.dumps(sorted(k.lower() for k in self.headers.keys()))
            else:
                body = "server"
            data = body.encode()
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)

MESH = {**MTLS_MESH, "skipCreatingInitialPolicies": ["*"]}
CALLERS = ("client-a", "client-b")
ABORT_REQUESTS = 200  # for the 50% abort: bounded, and enough for a wide binomial bound
ABORT_TOLERANCE = 0.15  # 50% +- 15 points: over 4 standard deviations of a binomial(200, 0.5)


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    headers: dict[str, str]


def get(url: str, timeout: float = 10) -> Reply:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Reply(response.status, response.read().decode(), {k.lower(): v for k, v in response.headers.items()})
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(), {k.lower(): v for k, v in exc.headers.items()})


@dataclass
class Env:
    cp: ControlPlaneProcess
    xds_port: int
    work: Path
    outbound: dict[str, int] = field(default_factory=dict)  # caller -> its outbound port to the server
    envoy: dict[str, EnvoyAdmin] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    def url(self, caller: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.outbound[caller]}{path}"

    def get(self, caller: str, path: str = "/") -> Reply:
        return get(self.url(caller, path))

    def apply(self, doc: dict[str, Any]) -> None:
        status, body = self.cp.put(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")), doc)
        assert status in (200, 201), body

    def delete(self, doc: dict[str, Any]) -> None:
        status, body = self.cp.delete(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")))
        assert status == 200, body

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
        spec = {k: v for k, v in dataplane.items() if k not in ("mesh", "name")}
        self.envoy[name] = EnvoyAdmin(name, free_port())
        cmd = dp_run_command(
            xds_port=self.xds_port,
            ca_file=self.cp.data_dir / "xds.crt",
            name=name,
            mesh="default",
            dataplane=["--dataplane-inline", json.dumps(spec)],
            token_file=token_file,
            admin_port=self.envoy[name].admin_port,
            work_dir=self.work / name,
        )
        self.start(cmd, f"{name}-dp")


def remove_default_policies(cp: ControlPlaneProcess) -> None:
    """The mesh `default` exists at start with the seed's default policies: their retries and
    timeouts would act around what the tests observe."""
    for rtype in REGISTRY.policies():
        status, body = cp.get(rtype.collection_path("default"))
        assert status == 200, body
        for item in body.get("items") or []:
            status, body = cp.delete(rtype.item_path(item["name"], "default"))
            assert status == 200, body


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("inbound-policies")
    xds_port = free_port()
    cp = ControlPlaneProcess(
        work / "cp",
        args=["--mode", "standalone", "--store", "memory", "--xds-address", "127.0.0.1", "--xds-port", str(xds_port)],
    )
    env = Env(cp, xds_port, work)
    try:
        cp.start()
        env.apply(MESH)
        remove_default_policies(cp)
        env.apply(ALLOW_ALL)
        app_port = free_port()
        env.start([sys.executable, "-c", SERVER_APP, str(app_port)], "server")
        env.start_dp("server-1", sidecar_dataplane("server", free_port(), app_port))
        for caller in CALLERS:
            env.outbound[caller] = free_port()
            # The callers' inbounds give them their identity; nothing listens behind them.
            dataplane = sidecar_dataplane(caller, free_port(), free_port(), outbound=[("server", env.outbound[caller])])
            env.start_dp(f"{caller}-1", dataplane)
        for caller in CALLERS:
            wait_until(lambda c=caller: env.get(c).body == "server", timeout=60, what=f"{caller} to reach the server")
        yield env
    except BaseException:
        for name, log in env.logs.items():
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


def policy(type_name: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_name, "mesh": "default", "name": name, "spec": spec}


SERVER = {"kind": "MeshService", "name": "server"}


def spiffe(caller: str) -> dict[str, Any]:
    return {"spiffeID": {"type": "Exact", "value": f"spiffe://default/{caller}"}}


def test_fault_injection_from_aborts_one_caller_only(env: Env) -> None:
    """`from` naming client-a (MeshService): its requests are aborted, client-b's are not."""
    fault = policy(
        "MeshFaultInjection",
        "abort-client-a",
        {
            "targetRef": SERVER,
            "from": [
                {
                    "targetRef": {"kind": "MeshService", "name": "client-a"},
                    "default": {"http": [{"abort": {"httpStatus": 418, "percentage": 100}}]},
                }
            ],
        },
    )
    env.apply(fault)
    try:
        wait_until(lambda: env.get("client-a").status == 418, timeout=30, what="client-a's requests to be aborted")
        assert all(env.get("client-a").status == 418 for _ in range(20))
        assert all(env.get("client-b").body == "server" for _ in range(20))
    finally:
        env.delete(fault)
    wait_until(lambda: env.get("client-a").status == 200, timeout=30, what="the abort to go away")


def test_fault_injection_rules_abort_half_of_one_callers_requests(env: Env) -> None:
    """`rules` with a spiffeID match: 50% aborts for client-b, within a wide binomial bound."""
    fault = policy(
        "MeshFaultInjection",
        "half-client-b",
        {
            "targetRef": SERVER,
            "rules": [
                {
                    "matches": [spiffe("client-b")],
                    "default": {"http": [{"abort": {"httpStatus": 500, "percentage": 50}}]},
                }
            ],
        },
    )
    env.apply(fault)
    try:
        wait_until(lambda: any(env.get("client-b").status == 500 for _ in range(20)), 30, what="aborts for client-b")
        statuses = [env.get("client-b").status for _ in range(ABORT_REQUESTS)]
        share = statuses.count(500) / ABORT_REQUESTS
        print(f"client-b: {statuses.count(500)} of {ABORT_REQUESTS} aborted (configured 50%)")
        assert set(statuses) == {200, 500}
        assert abs(share - 0.5) <= ABORT_TOLERANCE
        assert all(env.get("client-a").status == 200 for _ in range(20))  # not matched: untouched
    finally:
        env.delete(fault)
    wait_until(lambda: all(env.get("client-b").status == 200 for _ in range(10)), 30, what="aborts to stop")


def test_injected_delay_makes_the_callers_timeout_fire(env: Env) -> None:
    """client-a's MeshTimeout (500 ms) does not fire on its own; with a 3 s delay injected on the
    server's inbound for client-a, it does (504), while client-b (no timeout) still gets through."""
    timeout = policy(
        "MeshTimeout",
        "client-a-short",
        {
            "targetRef": {"kind": "MeshService", "name": "client-a"},
            "to": [{"targetRef": SERVER, "default": {"http": {"requestTimeout": "500ms"}}}],
        },
    )
    delay = policy(
        "MeshFaultInjection",
        "delay",
        {
            "targetRef": SERVER,
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {"http": [{"delay": {"value": "3s", "percentage": 100}}]}}
            ],
        },
    )
    env.apply(timeout)
    try:
        wait_until(
            lambda: '"timeout": "0.500s"' in env.envoy["client-a-1"].admin("/config_dump"),
            timeout=30,
            what="client-a's Envoy to hold the 500 ms timeout",
        )
        assert env.get("client-a").status == 200  # the timeout alone changes nothing
        env.apply(delay)
        wait_until(lambda: env.get("client-a").status == 504, timeout=30, what="client-a to time out on the delay")
        reply = env.get("client-a")
        assert (reply.status, reply.body) == (504, "upstream request timeout")
        assert env.get("client-b").status == 200  # delayed, not timed out
    finally:
        env.delete(delay)
        env.delete(timeout)
    wait_until(lambda: env.get("client-a").status == 200, timeout=30, what="the delay to go away")


def test_rate_limit_from_replies_429_with_the_configured_headers(env: Env) -> None:
    limit = policy(
        "MeshRateLimit",
        "server-limit",
        {
            "targetRef": SERVER,
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "local": {
                            "http": {
                                # A long interval: no token comes back while the test runs.
                                "requestRate": {"num": 3, "interval": "1h"},
                                "onRateLimit": {
                                    "status": 429,
                                    "headers": {"add": [{"name": "x-limited", "value": "true"}]},
                                },
                            }
                        }
                    },
                }
            ],
        },
    )
    env.apply(limit)
    try:
        wait_until(lambda: env.get("client-a").status == 429, timeout=30, interval=0.5, what="the limit")
        for caller in CALLERS:  # one bucket for every caller: spent
            replies = [env.get(caller) for _ in range(10)]
            assert all(r.status == 429 and r.headers.get("x-limited") == "true" for r in replies), replies
    finally:
        env.delete(limit)
    wait_until(lambda: all(env.get(c).status == 200 for c in CALLERS), timeout=30, what="the limit to go away")


def test_rate_limit_rules_limit_one_caller_only(env: Env) -> None:
    limit = policy(
        "MeshRateLimit",
        "client-a-limit",
        {
            "targetRef": SERVER,
            "rules": [
                {
                    "matches": [spiffe("client-a")],
                    "default": {"local": {"http": {"requestRate": {"num": 2, "interval": "1h"}}}},
                }
            ],
        },
    )
    env.apply(limit)
    try:
        wait_until(lambda: env.get("client-a").status == 429, timeout=30, interval=0.5, what="client-a's limit")
        assert all(env.get("client-a").status == 429 for _ in range(10))
        assert all(env.get("client-b").status == 200 for _ in range(20))
    finally:
        env.delete(limit)
    wait_until(lambda: env.get("client-a").status == 200, timeout=30, what="the limit to go away")


def test_timeout_rules_per_caller_route(env: Env) -> None:
    """MeshTimeout `rules` matching client-a: its requests to the server's slow path time out on
    the server's inbound route (504), client-b's do not; the XFCC header the routes match on
    never reaches the service."""
    timeout = policy(
        "MeshTimeout",
        "server-rules",
        {
            "targetRef": SERVER,
            "rules": [{"matches": [spiffe("client-a")], "default": {"http": {"requestTimeout": "300ms"}}}],
        },
    )
    env.apply(timeout)
    try:
        wait_until(lambda: env.get("client-a", "/slow").status == 504, timeout=30, what="client-a to time out")
        assert env.get("client-b", "/slow").status == 200
        for caller in CALLERS:
            assert "x-forwarded-client-cert" not in json.loads(env.get(caller, "/headers").body)
    finally:
        env.delete(timeout)
    wait_until(lambda: env.get("client-a", "/slow").status == 200, timeout=30, what="the timeout to go away")


def test_retry_on_a_retriable_response_header(env: Env) -> None:
    """MeshRetry retriableResponseHeaders (once refused as not supported yet): a response carrying
    `x-retry-me: yes` is retried; before the policy, the caller gets it as is."""
    assert env.get("client-a", "/retry/before").body == "attempt 1"
    retry = policy(
        "MeshRetry",
        "retry-on-header",
        {
            "targetRef": {"kind": "MeshService", "name": "client-a"},
            "to": [
                {
                    "targetRef": SERVER,
                    "default": {
                        "http": {
                            "numRetries": 2,
                            "retriableResponseHeaders": [{"name": "x-retry-me", "type": "Exact", "value": "yes"}],
                        }
                    },
                }
            ],
        },
    )
    env.apply(retry)
    keys = iter(range(1000))
    try:
        wait_until(
            lambda: env.get("client-a", f"/retry/{next(keys)}").body == "attempt 2",
            timeout=30,
            what="the retry on x-retry-me",
        )
        reply = env.get("client-a", "/retry/after")
        assert (reply.body, reply.headers.get("x-retry-me")) == ("attempt 2", None)
        assert env.get("client-b", "/retry/other").body == "attempt 1"  # client-b has no such policy
    finally:
        env.delete(retry)


def test_traffic_permission_rules_deny_then_allow(env: Env) -> None:
    """MeshTrafficPermission `rules` on the server: client-a not allowed (403), then allowed (200);
    the Mesh-wide `from` allow-all is not read on an inbound a policy with rules selects."""
    permission = policy(
        "MeshTrafficPermission",
        "server-callers",
        {"targetRef": SERVER, "rules": [{"default": {"allow": [spiffe("client-b")]}}]},
    )
    env.apply(permission)
    try:
        wait_until(lambda: env.get("client-a").status == 403, timeout=30, what="client-a to be denied")
        assert env.get("client-a").body == "RBAC: access denied"
        assert env.get("client-b").status == 200
        permission["spec"]["rules"][0]["default"]["allow"].append(
            {"spiffeID": {"type": "Prefix", "value": "spiffe://default/client-a"}}
        )
        env.apply(permission)
        wait_until(lambda: env.get("client-a").status == 200, timeout=30, what="client-a to be allowed")
        assert env.get("client-b").status == 200
    finally:
        env.delete(permission)


def test_health_check_events_go_to_the_event_log_path(env: Env) -> None:
    """MeshHealthCheck eventLogPath (once refused as not supported yet): client-a's Envoy appends
    its health check events for the server's endpoints to that file."""
    log = env.work / "client-a-health.log"
    check = policy(
        "MeshHealthCheck",
        "server-health",
        {
            "targetRef": {"kind": "MeshService", "name": "client-a"},
            "to": [
                {
                    "targetRef": SERVER,
                    "default": {"interval": "1s", "timeout": "1s", "eventLogPath": str(log), "http": {"path": "/"}},
                }
            ],
        },
    )
    env.apply(check)
    try:
        text = wait_until(lambda: log.exists() and log.read_text(), timeout=30, what="health check events in the log")
        event = json.loads(text.splitlines()[0])
        assert event["cluster_name"] == "server" and event["health_checker_type"] == "HTTP", event
        assert env.get("client-a").body == "server"  # the checked endpoint stays in use
    finally:
        env.delete(check)
