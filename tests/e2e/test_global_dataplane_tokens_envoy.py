"""Dataplane tokens issued on the global control plane, with real processes: a global CP, a
federated zone, and sidecars run by ``zonemesh-dp`` (real Envoy) in that zone.

- ``zmctl generate dataplane-token`` against global issues a token (kid ``global-1``) that the
  zone admits; a token the zone issued itself before (its own key 1) keeps working beside it;
- the zone never holds global's private key, only the public halves (DataplaneTokenTrust);
- a forged token (kid ``global-1``, another key) and a token of another mesh are refused;
- revoking the global token on global (the mesh's revocation list, synced down) closes its
  stream in the zone; the zone-issued proxy keeps its stream;
- rotating global's keys (add key 2, delete key 1 on global) closes the streams key 1 signed in
  the zone, and only those.

Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from zonemesh.shared.tokens.dataplane import DataplaneClaims
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import sign

from zonemesh.testing import (
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

WAIT = 60.0  # two cores shared with other work: generous, still bounded


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


class Sidecar(EnvoyAdmin):
    def connected(self) -> bool:
        try:
            return self.stat("control_plane.connected_state") == 1
        except OSError:
            return False


@dataclass
class World:
    work: Path
    kds_port: int
    glob: ControlPlaneProcess
    zone: ControlPlaneProcess | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_zone(self, name: str) -> ControlPlaneProcess:
        status, token = http("POST", f"{self.glob.api}/tokens/zone", {"zone": name, "validFor": "24h"})
        assert status == 200, token
        data = self.work / name
        data.mkdir(parents=True, exist_ok=True)
        (data / "zone.token").write_text(str(token))
        xds_port = free_port()
        args = [
            "--mode", "zone", "--zone", name, "--store", "memory",
            "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
            "--global-address", f"grpcs://127.0.0.1:{self.kds_port}",
            "--zone-token-file", str(data / "zone.token"),
            "--global-ca-file", str(self.work / "global" / "kds-tls.crt"),
        ]  # fmt: skip
        return ControlPlaneProcess(data, args=args, xds_port=xds_port).start(timeout=WAIT)

    def agent(self, name: str, token: str, admin_port: int) -> list[str]:
        assert self.zone is not None
        token_file = self.work / f"{name}.token"
        token_file.write_text(token)
        return dp_run_command(
            xds_port=self.zone.xds_port,
            ca_file=self.zone.data_dir / "xds.crt",
            name=name,
            mesh="default",
            dataplane=["--dataplane-inline", json.dumps(sidecar_dataplane("web", free_port(), free_port()))],
            token_file=token_file,
            admin_port=admin_port,
            work_dir=self.work / name,
        )

    def start_sidecar(self, name: str, token: str) -> Sidecar:
        sidecar = Sidecar(name, free_port())
        with (self.work / f"{name}-dp.log").open("wb") as out:
            self.procs.append(
                subprocess.Popen(self.agent(name, token, sidecar.admin_port), stdout=out, stderr=subprocess.STDOUT)
            )
        return sidecar

    def refusal(self, name: str, token: str) -> str:
        """The agent's output when the zone refuses its token (it must exit, not run)."""
        run = subprocess.run(self.agent(name, token, free_port()), capture_output=True, text=True, timeout=WAIT)
        assert run.returncode != 0, run.stdout + run.stderr
        return run.stdout + run.stderr

    def zone_events(self, event: str, **fields: str) -> list[dict[str, Any]]:
        assert self.zone is not None
        found = []
        for line in self.zone.logs().splitlines():
            if f'"{event}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    entry = json.loads(line)
                    if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                        found.append(entry)
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("global-dataplane-tokens")
    kds_port = free_port()
    glob = ControlPlaneProcess(
        work / "global",
        args=["--mode", "global", "--store", "memory", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)],
    )
    w = World(work, kds_port, glob)
    try:
        glob.start(timeout=WAIT)
        status, body = glob.put("/meshes/other", {"type": "Mesh", "name": "other"})
        assert status == 201, body
        w.zone = w.start_zone("zone-1")
        zone = w.zone
        wait_until(lambda: zone.get("/meshes/default")[0] == 200, WAIT, what="mesh default in zone-1")
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
        agents = [f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(world.work.glob("*.log"))]
        excerpts = [log_excerpt(n, cp.logs()[since[n] :]) for n, cp in cps.items() if cp is not None]
        return "\n".join(agents + excerpts)

    request.node.failure_logs = logs


def test_a_token_issued_on_global_admits_a_proxy_in_the_zone_until_global_revokes_it(world: World) -> None:
    zone = world.zone
    assert zone is not None
    # A token the zone issued itself, with the key it made (its key 1), before global issued any.
    status, own = http("POST", f"{zone.api}/tokens/dataplane", {"mesh": "default", "name": "web-2", "validFor": "1h"})
    assert status == 200, own
    assert header(str(own))["kid"] == "1"
    status, own_key = zone.get("/meshes/default/secrets/dataplane-token-signing-key-default-1")
    assert status == 200, own_key

    issued = zmctl_ok(
        world.glob.api, "generate", "dataplane-token", "--mesh", "default", "--name", "web-1", "--valid-for", "1h"
    ).strip()
    assert header(issued)["kid"] == "global-1"
    assert claims(issued)["exp"] - claims(issued)["iat"] == 3600

    trust = "/meshes/default/dataplane-token-trusts/dataplane-token"
    wait_until(lambda: zone.get(trust)[0] == 200, WAIT, what="global's DataplaneTokenTrust in zone-1")
    assert "PRIVATE" not in json.dumps(zone.get(trust)[1])
    status, secrets = zone.get("/meshes/default/secrets")
    assert status == 200, secrets
    names = [s["name"] for s in secrets["items"]]
    assert not [n for n in names if n.startswith("dataplane-token-global-signing-key")], names
    assert zone.get("/meshes/default/secrets/dataplane-token-signing-key-default-1")[1] == own_key  # kept as it was

    web1 = world.start_sidecar("web-1", issued)
    web2 = world.start_sidecar("web-2", str(own))
    for sidecar in (web1, web2):
        wait_until(sidecar.connected, WAIT, what=f"{sidecar.name}'s Envoy connected to zone-1")

    forged = sign(
        DataplaneClaims(mesh="default", name="web-3").as_jwt_claims(), generate_private_key_pem(), "global-1", 3600
    )
    assert "signature verification failed" in world.refusal("web-3", forged)
    other_mesh = zmctl_ok(
        world.glob.api, "generate", "dataplane-token", "--mesh", "other", "--name", "web-4", "--valid-for", "1h"
    ).strip()
    assert "issued for mesh 'other'" in world.refusal("web-4", other_mesh)

    # Revoked on global: the mesh's revocation list reaches the zone, which closes the stream.
    jti = claims(issued)["jti"]
    secret = {
        "type": "Secret",
        "mesh": "default",
        "name": "dataplane-token-revocations-default",
        "data": base64.b64encode(jti.encode()).decode(),
    }
    status, body = world.glob.put("/meshes/default/secrets/dataplane-token-revocations-default", secret)
    assert status == 201, body
    wait_until(lambda: not web1.connected(), 20, interval=0.05, what="web-1's Envoy disconnected")
    closed = wait_until(lambda: world.zone_events("xds_stream_revoked", proxy="default/web-1"), 10)
    assert closed[0]["reason"] == f"dataplane token refused: token {jti} has been revoked"
    # Envoy retries: each new stream is checked again, and refused.
    wait_until(
        lambda: [
            e for e in world.zone_events("dataplane_auth_refused", name="web-1") if "has been revoked" in e["reason"]
        ],
        20,
        what="a reconnect of web-1 refused",
    )
    assert not web1.connected()
    assert web2.connected()
    assert issued not in zone.logs() and issued not in world.glob.logs()


def test_deleting_a_global_key_on_global_closes_the_streams_it_signed_in_the_zone(world: World) -> None:
    """Rotation on global: key 2 added (the newest signs), key 1 deleted; global republishes the
    trust, the zone closes the streams of key 1's tokens and keeps those of key 2 and its own."""
    zone = world.zone
    assert zone is not None
    old = zmctl_ok(
        world.glob.api, "generate", "dataplane-token", "--mesh", "default", "--name", "old-1", "--valid-for", "1h"
    ).strip()
    assert header(old)["kid"] == "global-1"
    name = "dataplane-token-global-signing-key-default-2"
    key = {
        "type": "Secret",
        "mesh": "default",
        "name": name,
        "data": base64.b64encode(generate_private_key_pem()).decode(),
    }
    status, body = world.glob.put(f"/meshes/default/secrets/{name}", key)
    assert status == 201, body
    new = zmctl_ok(
        world.glob.api, "generate", "dataplane-token", "--mesh", "default", "--name", "new-1", "--valid-for", "1h"
    ).strip()
    assert header(new)["kid"] == "global-2"
    status, own = http("POST", f"{zone.api}/tokens/dataplane", {"mesh": "default", "name": "own-1", "validFor": "1h"})
    assert status == 200, own

    def kids() -> list[int]:
        status, trust = zone.get("/meshes/default/dataplane-token-trusts/dataplane-token")
        return [k["kid"] for k in trust["publicKeys"]] if status == 200 else []

    wait_until(lambda: kids() == [1, 2], WAIT, what="global's key 2 in zone-1's trust")
    sidecars = [world.start_sidecar(n, t) for n, t in (("old-1", old), ("new-1", new), ("own-1", str(own)))]
    for sidecar in sidecars:
        wait_until(sidecar.connected, WAIT, what=f"{sidecar.name}'s Envoy connected to zone-1")

    assert world.glob.delete("/meshes/default/secrets/dataplane-token-global-signing-key-default-1")[0] == 200
    old_sidecar, new_sidecar, own_sidecar = sidecars
    wait_until(lambda: not old_sidecar.connected(), 20, interval=0.05, what="old-1's Envoy disconnected")
    closed = wait_until(lambda: world.zone_events("xds_stream_revoked", proxy="default/old-1"), 10)
    assert (
        closed[0]["reason"] == "dataplane token refused: global signing key 1 not found (rotated out or never existed)"
    )
    assert kids() == [2]
    assert new_sidecar.connected() and own_sidecar.connected()
