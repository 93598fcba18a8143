"""Zone tokens hold for the life of a stream, with real processes: a global control plane, a
federated zone, and that zone's ingress and egress run by ``zonemesh-dp`` (real Envoy).

- a zone proxy token revoked on global: the zone closes that proxy's xDS stream within a second
  (global publishes the revocation in ZoneTokenTrust, KDS carries it to the zone), the other proxy
  keeps its stream, reconnects are refused;
- a zone token's exp (plus the 5 s verification leeway): global closes the zone's KDS stream;
- a zone token revoked on global: global closes the zone's KDS stream within a second.

Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS

from zonemesh.testing import (
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    log_tails,
    stop_processes,
    wait_until,
)

pytestmark = pytest.mark.slow

WAIT = 60.0  # two cores shared with other work: generous, still bounded


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def events(cp: ControlPlaneProcess, event: str, **fields: str) -> list[dict[str, Any]]:
    found = []
    for line in cp.logs().splitlines():
        if f'"{event}"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                    found.append(entry)
    return found


def at(entry: dict[str, Any]) -> float:
    """A log entry's timestamp (this machine's clock) as Unix time."""
    return dt.datetime.fromisoformat(entry["timestamp"]).timestamp()


class ZoneProxy(EnvoyAdmin):
    def connected(self) -> bool:
        return self.stat("control_plane.connected_state") == 1


@dataclass
class World:
    work: Path
    kds_port: int
    glob: ControlPlaneProcess
    zone: ControlPlaneProcess | None = None
    zone_token: str = ""
    xds_port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)  # proxy name -> its zone token
    proxies: dict[str, ZoneProxy] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def issue(self, zone: str, scope: list[str], valid_for: str) -> str:
        status, token = http(
            "POST", f"{self.glob.api}/tokens/zone", {"zone": zone, "scope": scope, "validFor": valid_for}
        )
        assert status == 200, token
        return str(token)

    def revoke(self, token: str) -> float:
        """Add the token's jti to global's zone-token-revocations (docs/kds.md); the time just before."""
        self.revoked.append(claims(token)["jti"])
        secret = {
            "type": "GlobalSecret",
            "name": "zone-token-revocations",
            "data": base64.b64encode(",".join(self.revoked).encode()).decode(),
        }
        started = time.time()
        status, body = self.glob.put("/global-secrets/zone-token-revocations", secret)
        assert status in (200, 201), body
        return started

    def start_zone(self, name: str, token: str) -> ControlPlaneProcess:
        data = self.work / name
        data.mkdir(parents=True, exist_ok=True)
        (data / "zone.token").write_text(token)
        xds_port = free_port()
        args = [
            "--mode", "zone", "--zone", name, "--store", "memory",
            "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
            "--global-address", f"grpcs://127.0.0.1:{self.kds_port}",
            "--zone-token-file", str(data / "zone.token"),
            "--global-ca-file", str(self.work / "global" / "kds-tls.crt"),
        ]  # fmt: skip
        return ControlPlaneProcess(data, args=args, xds_port=xds_port).start(timeout=WAIT)

    def start_zone_proxy(self, proxy_type: str) -> ZoneProxy:
        assert self.zone is not None
        name = f"{proxy_type}-1"
        port, admin = free_port(), free_port()
        networking: dict[str, Any] = {"address": "127.0.0.1", "port": port}
        if proxy_type == "ingress":
            networking.update(advertisedAddress="127.0.0.1", advertisedPort=port)
        doc = {"type": "ZoneIngress" if proxy_type == "ingress" else "ZoneEgress", "networking": networking}
        spec = self.work / f"{name}.json"
        spec.write_text(json.dumps(doc))
        self.tokens[name] = self.issue("zone-1", [proxy_type], "1h")  # global issues them (docs/cross-zone.md)
        token_file = self.work / f"{name}.token"
        token_file.write_text(self.tokens[name])
        cmd = dp_run_command(
            xds_port=self.zone.xds_port,
            ca_file=self.zone.data_dir / "xds.crt",
            name=name,
            mesh="default",
            dataplane=["--dataplane-file", str(spec)],
            token_file=token_file,
            admin_port=admin,
            work_dir=self.work / name,
            extra=["--proxy-type", proxy_type],
        )
        with (self.work / f"{name}.log").open("ab") as out:
            self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        proxy = ZoneProxy(name, admin)
        self.proxies[name] = proxy
        return proxy

    def online(self, zone: str) -> bool:
        status, body = self.glob.get("/zones+insights")
        assert status == 200, body
        return any(item["name"] == zone and item["online"] for item in body["items"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("zone-credentials")
    kds_port = free_port()
    glob = ControlPlaneProcess(
        work / "global",
        args=["--mode", "global", "--store", "memory", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)],
    )
    w = World(work, kds_port, glob)
    try:
        glob.start(timeout=WAIT)
        w.zone_token = w.issue("zone-1", ["cp"], "24h")
        w.zone = w.start_zone("zone-1", w.zone_token)
        wait_until(lambda: w.online("zone-1"), WAIT, what="zone-1 online at global")
        # The zone checks its proxies' tokens with the public keys global publishes.
        wait_until(lambda: w.zone.get("/zone-token-trusts/zone-token")[0] == 200, WAIT, what="trust in zone-1")
        for proxy in (w.start_zone_proxy("ingress"), w.start_zone_proxy("egress")):
            wait_until(proxy.connected, WAIT, what=f"{proxy.name}'s Envoy connected to zone-1")
        yield w
    finally:
        stop_processes(w.procs)
        if w.zone is not None:
            w.zone.kill()
        glob.kill()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, world: World) -> None:
    cps = {"global": world.glob, "zone-1": world.zone}
    since = {name: len(cp.logs()) for name, cp in cps.items() if cp is not None}

    def logs() -> str:
        agents = log_tails(sorted(world.work.glob("*.log")), 2000)
        excerpts = [log_excerpt(n, cp.logs()[since[n] :]) for n, cp in cps.items() if cp is not None]
        return "\n".join(agents + excerpts)

    request.node.failure_logs = logs


def revoke_zone_proxy(w: World, proxy_type: str) -> None:
    """Revoke the proxy's zone token on global; its stream in the zone must close within a second."""
    assert w.zone is not None
    zone = w.zone
    proxy = w.proxies[f"{proxy_type}-1"]
    revoked_at = w.revoke(w.tokens[proxy.name])
    wait_until(lambda: not proxy.connected(), 10, interval=0.05, what=f"{proxy.name}'s Envoy disconnected")
    closed = events(zone, "xds_stream_revoked", proxy=f"{proxy_type}:/{proxy.name}")
    assert len(closed) == 1, closed
    jti = claims(w.tokens[proxy.name])["jti"]
    assert closed[0]["reason"] == f"zone token refused: token {jti} has been revoked"
    # Global published it, KDS carried it to the zone, the zone closed the stream: within a second.
    assert at(closed[0]) - revoked_at < 1.0
    # Envoy's reconnects are refused by the zone with the same reason.
    wait_until(
        lambda: [
            e
            for e in events(zone, "zone_proxy_auth_refused", name=proxy.name)
            if at(e) > at(closed[0]) and "revoked" in e["reason"]
        ],
        20,
        what=f"a reconnect of {proxy.name} refused",
    )
    assert not proxy.connected()
    assert w.tokens[proxy.name] not in zone.logs()


def test_revoking_a_zone_proxy_token_closes_its_stream_in_the_zone_within_a_second(world: World) -> None:
    revoke_zone_proxy(world, "ingress")
    assert world.proxies["egress-1"].connected(), "the egress lost its stream for the ingress's revocation"
    revoke_zone_proxy(world, "egress")


def test_global_closes_a_kds_stream_when_its_zone_token_expires(world: World) -> None:
    w = world
    token = w.issue("zone-2", ["cp"], "15s")
    exp = claims(token)["exp"]
    assert exp - claims(token)["iat"] == 15
    zone2 = w.start_zone("zone-2", token)
    try:
        wait_until(lambda: w.online("zone-2"), exp + LEEWAY_SECONDS - time.time(), what="zone-2 online at global")
        expired = wait_until(
            lambda: events(w.glob, "zone_token_expired", zone="zone-2"),
            exp + LEEWAY_SECONDS + 5 - time.time(),
            interval=0.05,
            what="global to close zone-2's stream at its token's exp",
        )
        assert exp + LEEWAY_SECONDS - 0.1 <= at(expired[0]) <= exp + LEEWAY_SECONDS + 1.0
        wait_until(
            lambda: "token expired" in (zone2.get("/status/kds")[1].get("lastError") or ""),
            20,
            what="zone-2 told its token expired",
        )
        # It reconnects with the same token: refused.
        wait_until(
            lambda: [e for e in events(w.glob, "zone_token_refused", zone="zone-2") if e["reason"] == "token expired"],
            20,
            what="zone-2's reconnect refused",
        )
        assert not w.online("zone-2")
    finally:
        zone2.kill()


def test_revoking_a_zone_token_closes_the_kds_stream_within_a_second(world: World) -> None:
    """Last: zone-1 stays offline after it."""
    w = world
    assert w.zone is not None and w.online("zone-1")
    revoked_at = w.revoke(w.zone_token)
    closed = wait_until(
        lambda: events(w.glob, "zone_stream_closed", zone="zone-1"),
        10,
        interval=0.05,
        what="global to close zone-1's stream",
    )
    assert "has been revoked" in closed[0]["reason"]
    assert at(closed[0]) - revoked_at < 1.0
    wait_until(lambda: not w.online("zone-1"), 20, what="zone-1 offline at global")
    wait_until(
        lambda: "has been revoked" in (w.zone.get("/status/kds")[1].get("lastError") or ""),  # type: ignore[union-attr]
        20,
        what="zone-1 told its token is revoked",
    )
