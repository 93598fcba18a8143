"""Open xDS streams answer for their token, with a real control plane and real Envoys.

One standalone control plane (``--auth-timeout 3s --xds-max-unauthenticated-streams 3``) and
sidecars run by ``zonemesh-dp`` (real Envoy) on 127.0.0.1. What a revoked, expired or
key-less token may still do once its stream is open, and what a client that never
authenticates may hold:

- a revoked token's ADS stream is closed within 1 s, reconnects are refused, and its proxy gets
  no renewed workload certificate while the other proxies of its service do;
- deleting a signing key closes the streams of the tokens it signed, and no other;
- a token's exp (plus the 5 s verification leeway) closes its stream;
- a client that sends nothing is dropped at the deadline; silent streams beyond the bound are
  refused at once, while a real proxy still joins.

The control plane's log (events with timestamps), its metrics and insights, and each Envoy's
admin stats (``control_plane.connected_state``) show it. Every wait is bounded; every process is
stopped at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS

from zonemesh.testing import (
    ALLOW_ALL,
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    log_tails,
    sidecar_dataplane,
    stop_process,
    stop_processes,
    wait_until,
)

pytestmark = pytest.mark.slow

AUTH_TIMEOUT = 3.0
LIMIT = 3
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
MESH = {
    "type": "Mesh",
    "name": "default",
    "mtls": {
        "enabledBackend": "ca-1",
        # The CA backdates certificates by 60 s and reissues them after 80% of their life: a
        # "20s" certificate is renewed about 4 s after it is issued, again and again.
        "backends": [{"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "20s"}}}],
    },
}
KEYS_MESH = {"type": "Mesh", "name": "keys"}


@dataclass
class Sidecar(EnvoyAdmin):
    mesh: str = "default"
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    def connected(self) -> bool:
        """Envoy's own view of its ADS connection to the control plane (False before Envoy runs)."""
        try:
            return self.stat("control_plane.connected_state") == 1
        except OSError:
            return False

    def cert_serial(self, spiffe: str) -> str | None:
        """The serial of the certificate Envoy holds for ``spiffe`` (admin ``/certs``), if any."""
        for entry in json.loads(self.admin("/certs"))["certificates"]:
            for cert in entry.get("cert_chain") or []:
                if any(san.get("uri") == spiffe for san in cert.get("subject_alt_names") or []):
                    return str(cert["serial_number"])
        return None


@dataclass
class Zone:
    cp: ControlPlaneProcess
    xds_port: int
    work: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)  # jti in dataplane-token-revocations-default

    @property
    def ca_file(self) -> Path:
        return self.cp.data_dir / "xds.crt"

    def put(self, doc: dict[str, Any]) -> None:
        status, body = self.cp.put(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")), doc)
        assert status in (200, 201), body

    def token(self, name: str, mesh: str = "default", valid_for: str = "1h") -> str:
        status, token = http(
            "POST", f"{self.cp.api}/tokens/dataplane", {"mesh": mesh, "name": name, "validFor": valid_for}
        )
        assert status == 200, token
        return str(token)

    def revoke(self, token: str, mesh: str = "default") -> float:
        """Add the token's jti to the mesh's revocation list (as docs/dataplane.md shows); the time
        just before the write."""
        self.revoked.append(claims(token)["jti"])
        ids = ",".join(self.revoked)
        secret = {
            "type": "Secret",
            "mesh": mesh,
            "name": f"dataplane-token-revocations-{mesh}",
            "data": base64.b64encode(ids.encode()).decode(),
        }
        started = time.time()
        self.put(secret)
        return started

    def start_sidecar(self, name: str, service: str, token: str, mesh: str = "default") -> Sidecar:
        sidecar = Sidecar(name, free_port(), mesh=mesh)
        token_file = self.work / f"{name}.token"
        token_file.write_text(token)
        dataplane = sidecar_dataplane(service, free_port(), free_port())
        cmd = dp_run_command(
            xds_port=self.xds_port,
            ca_file=self.ca_file,
            name=name,
            mesh=mesh,
            dataplane=["--dataplane-inline", json.dumps(dataplane)],
            token_file=token_file,
            admin_port=sidecar.admin_port,
            work_dir=self.work / name,
        )
        sidecar.log = self.work / f"{name}-dp.log"
        with sidecar.log.open("wb") as out:
            sidecar.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(sidecar.process)
        return sidecar

    def wait_connected(self, *sidecars: Sidecar, timeout: float = 30) -> None:
        for sidecar in sidecars:
            wait_until(sidecar.connected, timeout=timeout, what=f"{sidecar.name}'s Envoy connected to the CP")

    def events(self, event: str, **fields: str) -> list[dict[str, Any]]:
        found = []
        for line in self.cp.logs().splitlines():
            if f'"{event}"' not in line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                    found.append(entry)
        return found

    def metric(self, name: str, labels: str) -> float:
        status, text = http("GET", f"http://127.0.0.1:{self.cp.diagnostics_port}/metrics")
        assert status == 200
        for line in str(text).splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def at(entry: dict[str, Any]) -> float:
    """A log entry's timestamp (the control plane's clock: this machine's) as Unix time."""
    return dt.datetime.fromisoformat(entry["timestamp"]).timestamp()


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    work = tmp_path_factory.mktemp("stream-credentials")
    xds_port = free_port()
    cp = ControlPlaneProcess(
        work / "cp",
        args=[
            "--mode", "standalone", "--store", "memory",
            "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
            "--auth-timeout", f"{AUTH_TIMEOUT:g}s", "--xds-max-unauthenticated-streams", str(LIMIT),
        ],
    )  # fmt: skip
    zone = Zone(cp, xds_port, work)
    try:
        cp.start()
        for doc in (MESH, KEYS_MESH, ALLOW_ALL):
            zone.put(doc)
        yield zone
    finally:
        stop_processes(zone.procs)
        cp.kill()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, zone: Zone) -> None:
    """A failed test shows what the control plane and the agents logged while it ran."""
    since = len(zone.cp.logs())

    def logs() -> str:
        agents = log_tails(sorted(zone.work.glob("*-dp.log")), 2000)
        return "\n".join([*agents, log_excerpt("control plane", zone.cp.logs()[since:])])

    request.node.failure_logs = logs


def test_a_revoked_sidecar_is_disconnected_within_a_second_and_refused_after(zone: Zone) -> None:
    token = zone.token("rev-1")
    revoked = zone.start_sidecar("rev-1", "rev", token)
    other = zone.start_sidecar("rev-2", "rev", zone.token("rev-2"))
    zone.wait_connected(revoked, other)
    refused_before = zone.metric("xds_stream_revoked_total", 'reason="refused"')

    revoked_at = zone.revoke(token)
    wait_until(lambda: not revoked.connected(), timeout=10, interval=0.05, what="rev-1's Envoy disconnected")
    closed = wait_until(lambda: zone.events("xds_stream_revoked", proxy="default/rev-1"), timeout=5)
    assert len(closed) == 1
    assert closed[0]["reason"] == f"dataplane token refused: token {claims(token)['jti']} has been revoked"
    assert at(closed[0]) - revoked_at < 1.0, "the stream outlived the revocation by more than a second"
    assert zone.metric("xds_stream_revoked_total", 'reason="refused"') == refused_before + 1
    assert token not in zone.cp.logs()

    # Envoy retries; every new stream is refused with the same reason, and it stays disconnected.
    wait_until(
        lambda: [e for e in zone.events("xds_unauthenticated", node="default.rev-1") if at(e) > at(closed[0])],
        timeout=20,
        what="a reconnect of rev-1 refused",
    )
    refusals = [e for e in zone.events("dataplane_auth_refused", name="rev-1") if at(e) > at(closed[0])]
    assert refusals and all("has been revoked" in e["reason"] for e in refusals)
    assert not revoked.connected()
    assert other.connected()  # same mesh, same service, its own valid token

    def disconnected_in_insight() -> bool:
        status, insight = zone.cp.get("/meshes/default/dataplane-insights/rev-1")
        return status == 200 and "disconnectTime" in insight["subscriptions"][-1]

    wait_until(disconnected_in_insight, timeout=10, what="rev-1's subscription closed in its insight")
    for sidecar in (revoked, other):
        assert sidecar.process is not None
        stop_process(sidecar.process)


def test_a_revoked_sidecar_gets_no_renewed_workload_certificate(zone: Zone) -> None:
    """Both proxies serve ``cert``, so they share its certificate; after the revocation only the
    valid one receives the renewed certificates (about every 4 s here)."""
    spiffe = "spiffe://default/cert"
    token = zone.token("cert-1")
    revoked = zone.start_sidecar("cert-1", "cert", token)
    other = zone.start_sidecar("cert-2", "cert", zone.token("cert-2"))
    zone.wait_connected(revoked, other)
    serial = wait_until(lambda: revoked.cert_serial(spiffe), timeout=15, what="cert-1's workload certificate")

    zone.revoke(token)
    held = revoked.cert_serial(spiffe)
    # Two renewals at the valid proxy after the revocation: both issued after it.
    seen = {held, serial}
    for renewal in (1, 2):
        wait_until(
            lambda: other.cert_serial(spiffe) not in seen,
            timeout=30,
            interval=0.2,
            what=f"renewal {renewal} of the cert service's certificate at cert-2",
        )
        seen.add(other.cert_serial(spiffe))
    assert revoked.cert_serial(spiffe) == held, "the revoked proxy received a renewed certificate"
    assert not revoked.connected()
    for sidecar in (revoked, other):
        assert sidecar.process is not None
        stop_process(sidecar.process)


def test_deleting_a_signing_key_disconnects_the_sidecars_it_signed(zone: Zone) -> None:
    old = zone.token("keys-1", mesh="keys")  # the mesh's first token creates its key 1
    key2 = {
        "type": "Secret",
        "mesh": "keys",
        "name": "dataplane-token-signing-key-keys-2",
        "data": base64.b64encode(generate_private_key_pem()).decode(),
    }
    zone.put(key2)  # rotation step 1: a new key; new tokens are signed with it
    new = zone.token("keys-2", mesh="keys")
    assert (json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "==")))["kid"] == "1"
    assert (json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "==")))["kid"] == "2"
    signed_by_1 = zone.start_sidecar("keys-1", "keys-app", old, mesh="keys")
    signed_by_2 = zone.start_sidecar("keys-2", "keys-app", new, mesh="keys")
    zone.wait_connected(signed_by_1, signed_by_2)

    deleted_at = time.time()
    status, body = zone.cp.delete("/meshes/keys/secrets/dataplane-token-signing-key-keys-1")
    assert status == 200, body
    wait_until(lambda: not signed_by_1.connected(), timeout=10, interval=0.05, what="keys-1's Envoy disconnected")
    closed = wait_until(lambda: zone.events("xds_stream_revoked", proxy="keys/keys-1"), timeout=5)
    assert closed[0]["reason"] == "dataplane token refused: signing key 1 not found (rotated out or never existed)"
    assert at(closed[0]) - deleted_at < 1.0
    time.sleep(1)  # the key-2 proxy keeps its stream
    assert signed_by_2.connected() and not zone.events("xds_stream_revoked", proxy="keys/keys-2")
    for sidecar in (signed_by_1, signed_by_2):
        assert sidecar.process is not None
        stop_process(sidecar.process)


def test_a_token_closes_its_stream_when_it_expires(zone: Zone) -> None:
    token = zone.token("short-1", valid_for="8s")
    exp = claims(token)["exp"]
    assert exp - claims(token)["iat"] == 8
    sidecar = zone.start_sidecar("short-1", "short", token)
    zone.wait_connected(sidecar, timeout=exp + LEEWAY_SECONDS - time.time())
    wait_until(
        lambda: not sidecar.connected(),
        timeout=exp + LEEWAY_SECONDS + 5 - time.time(),
        interval=0.05,
        what="short-1's Envoy disconnected once its token expired",
    )
    closed = zone.events("xds_token_expired", proxy="default/short-1")
    assert len(closed) == 1 and closed[0]["credential"] == "dataplane token"
    assert exp + LEEWAY_SECONDS - 0.1 <= at(closed[0]) <= exp + LEEWAY_SECONDS + 1.0
    assert zone.metric("xds_stream_revoked_total", 'reason="expired"') >= 1
    # Its reconnects are refused as expired.
    wait_until(
        lambda: [e for e in zone.events("dataplane_auth_refused", name="short-1") if e["reason"] == "token expired"],
        timeout=20,
        what="a reconnect of short-1 refused as expired",
    )
    assert not sidecar.connected()
    assert sidecar.process is not None
    stop_process(sidecar.process)


def silent_tcp_client_dropped_after(port: int, limit: float) -> float | None:
    """Connect, send nothing; seconds until the server closes the connection (None: still open)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        try:
            while sock.recv(4096):  # TLS alerts or nothing: read until the server closes
                pass
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            if time.monotonic() - started >= limit:
                return None
        return time.monotonic() - started


async def test_silent_clients_are_dropped_and_bounded_while_a_proxy_joins(zone: Zone) -> None:
    # The transport first: a TCP client that never starts TLS is dropped at the deadline too.
    took = await asyncio.to_thread(silent_tcp_client_dropped_after, zone.xds_port, AUTH_TIMEOUT + 5)
    assert took is not None, "a silent TCP client kept its connection"
    assert took <= AUTH_TIMEOUT + 1

    credentials = grpc.ssl_channel_credentials(root_certificates=zone.ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{zone.xds_port}", credentials) as channel:

        def silent() -> grpc.aio.StreamStreamCall:
            """An ADS stream that never sends its first request (nor a token)."""
            return channel.stream_stream(
                ADS,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()

        limit_before = zone.metric("xds_unauthenticated_dropped_total", 'reason="limit"')
        holders = [silent() for _ in range(LIMIT)]
        await asyncio.sleep(0.5)  # they now hold every slot
        started = time.monotonic()
        excess = [silent() for _ in range(2)]
        for call in excess:
            async with asyncio.timeout(AUTH_TIMEOUT):
                assert await call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many xDS streams waiting to authenticate" in (await call.details() or "")
        assert time.monotonic() - started < AUTH_TIMEOUT / 2, "the excess waited instead of being refused at once"
        for call in holders:
            async with asyncio.timeout(AUTH_TIMEOUT + 2):
                assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no DiscoveryRequest within 3s" in (await call.details() or "")
        assert zone.metric("xds_unauthenticated_dropped_total", 'reason="limit"') == limit_before + 2
        assert zone.metric("xds_unauthenticated_dropped_total", 'reason="deadline"') >= LIMIT

        # A real proxy joins while silent streams keep every slot taken (replaced as they are dropped).
        sidecar = zone.start_sidecar("late-1", "late", zone.token("late-1"))
        holders = [silent() for _ in range(LIMIT)]
        refused = 0
        deadline = time.monotonic() + 40
        while not await asyncio.to_thread(sidecar.connected):
            assert time.monotonic() < deadline, "late-1 did not join while the slots were taken"
            assert sidecar.process is not None and sidecar.process.poll() is None, sidecar.log.read_text()
            for i, call in enumerate(holders):
                if call.done():
                    holders[i] = silent()
            probe = silent()  # shows the bound is still reached (or takes a slot freed a moment ago)
            async with asyncio.timeout(AUTH_TIMEOUT + 2):
                refused += await probe.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.2)
        assert refused >= 1, "the slots were not all taken while late-1 joined"
        for call in holders:
            call.cancel()
    assert zone.events("xds_auth_timeout") and zone.events("xds_unauthenticated_limit")
    assert sidecar.process is not None
    stop_process(sidecar.process)
