"""KDS with real processes: one global (sqlite) and two zones, over TLS on 127.0.0.1.

Covers: global→zones push, zone→global upload (zone-qualified, labelled, read-only at global),
read-only global resources on zones, deletes, kill -9 of global (zones keep serving; restart
converges without duplicates or recreation), zone restart, offline detection, zone deletion rule.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from zonemesh.shared.kds.naming import hashed_name

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = pytest.mark.slow

WAIT = 20.0


def policy(name: str, retries: int = 2) -> dict[str, Any]:
    return {
        "type": "MeshRetry",
        "name": name,
        "mesh": "default",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": retries}}}],
        },
    }


def retry_on_zones(name: str) -> str:
    """Where global's MeshRetry ``name`` is on a zone: under Kuma's hashed name."""
    return f"/meshes/default/meshretries/{hashed_name('default', name)}"


def dataplane(name: str, port: int = 8080) -> dict[str, Any]:
    return {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": "10.0.0.1", "inbound": [{"port": port, "tags": {"kuma.io/service": "backend"}}]},
    }


def start_global(data_dir: Path, kds_port: int) -> ControlPlaneProcess:
    args = ["--mode", "global", "--store", "sqlite", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)]
    return ControlPlaneProcess(data_dir, args=args).start()


def zone_process(data_dir: Path, zone: str, kds_port: int, token: str, ca: Path, store: str) -> ControlPlaneProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "zone.token"
    token_file.write_text(token)
    args = [
        "--mode", "zone", "--zone", zone, "--store", store,
        "--xds-address", "127.0.0.1", "--xds-port", str(free_port()),
        "--global-address", f"grpcs://127.0.0.1:{kds_port}",
        "--zone-token-file", str(token_file), "--global-ca-file", str(ca),
    ]  # fmt: skip
    return ControlPlaneProcess(data_dir, args=args)


def zone_token(cp: ControlPlaneProcess, zone: str) -> str:
    status, token = http("POST", cp.api + "/tokens/zone", {"zone": zone, "validFor": "24h"})
    assert status == 200, token
    assert isinstance(token, str)
    return token


def items(cp: ControlPlaneProcess, path: str) -> dict[str, dict[str, Any]]:
    status, body = cp.get(path)
    assert status == 200, body
    return {item["name"]: item for item in body["items"]}


def online(cp: ControlPlaneProcess) -> dict[str, bool]:
    return {name: z["online"] for name, z in items(cp, "/zones+insights").items()}


def kds_connected(zone: ControlPlaneProcess) -> bool:
    status, body = zone.get("/status/kds")
    return status == 200 and bool(body["connected"])


def versions(cp: ControlPlaneProcess, path: str) -> dict[str, int]:
    return {name: item["version"] for name, item in items(cp, path).items()}


def test_global_and_two_zones(tmp_path: Path) -> None:
    kds_port = free_port()
    glob = start_global(tmp_path / "global", kds_port)
    zones: list[ControlPlaneProcess] = []
    try:
        ca = tmp_path / "global" / "kds-tls.crt"
        zone1 = zone_process(tmp_path / "zone-1", "zone-1", kds_port, zone_token(glob, "zone-1"), ca, "sqlite")
        zone2 = zone_process(tmp_path / "zone-2", "zone-2", kds_port, zone_token(glob, "zone-2"), ca, "memory")
        zones += [zone1.start(), zone2.start()]
        wait_until(lambda: online(glob) == {"zone-1": True, "zone-2": True}, WAIT, what="both zones online")

        # global -> zones
        # (zones store global's policies under Kuma's hashed names: shared/kds/naming.py)
        assert glob.put("/meshes/default/meshretries/r1", policy("r1"))[0] == 201
        for zone in zones:
            wait_until(lambda z=zone: z.get(retry_on_zones("r1"))[0] == 200, WAIT, what="r1 in zone")
            _, synced = zone.get(retry_on_zones("r1"))
            assert synced["labels"]["zonemesh.io/origin"] == "global"
            assert synced["labels"]["kuma.io/display-name"] == "r1"
        status, refused = zone2.put(retry_on_zones("r1"), policy(hashed_name("default", "r1"), 3))
        assert status == 405 and "read-only here" in refused["detail"]
        assert zone2.delete(retry_on_zones("r1"))[0] == 405

        # zone -> global: zone-qualified, labelled, read-only at global
        assert zone1.put("/meshes/default/dataplanes/dp-1", dataplane("dp-1"))[0] == 201
        wait_until(lambda: "zone-1.dp-1" in items(glob, "/meshes/default/dataplanes"), WAIT, what="dp-1 at global")
        dp = items(glob, "/meshes/default/dataplanes?filter[labels.zonemesh.io/zone]=zone-1")["zone-1.dp-1"]
        assert dp["labels"] == {
            "zonemesh.io/origin": "zone",
            "zonemesh.io/zone": "zone-1",
            "zonemesh.io/display-name": "dp-1",
            "kuma.io/origin": "zone",
            "kuma.io/zone": "zone-1",
            "kuma.io/display-name": "dp-1",
        }
        assert items(glob, "/meshes/default/dataplanes?filter[labels.zonemesh.io/zone]=zone-2") == {}
        by_original_name = "/meshes/default/dataplanes?filter[labels.zonemesh.io/display-name]=dp-1"
        assert set(items(glob, by_original_name)) == {"zone-1.dp-1"}
        status, refused = glob.put("/meshes/default/dataplanes/zone-1.dp-1", dataplane("zone-1.dp-1"))
        assert status == 405 and "read-only on global" in refused["detail"]
        assert glob.delete("/meshes/default/dataplanes/zone-1.dp-1")[0] == 405
        assert "dp-1" not in items(zone2, "/meshes/default/dataplanes")  # dataplanes are not synced across zones

        status, overview = glob.get("/global-insight")
        assert status == 200, overview
        assert overview["zones"]["controlPlanes"] == {"online": 2, "total": 2}
        assert overview["dataplanes"]["standard"]["total"] == 1  # dp-1, no proxy connected: offline
        assert overview["dataplanes"]["standard"]["offline"] == 1
        assert overview["policies"]["total"] >= 1 and overview["meshes"] == {"total": 1}

        # KDS metrics on global's diagnostics port (:5680)
        status, metrics = http("GET", f"http://127.0.0.1:{glob.diagnostics_port}/metrics")
        assert status == 200
        for zone_name in ("zone-1", "zone-2"):
            assert f'kds_zone_active_connections{{zone_name="{zone_name}"}} 1.0' in metrics
            assert f'kds_delta_generation_count{{zone_name="{zone_name}"}}' in metrics
        assert 'kds_resources_sync_count{zone_name="zone-1"}' in metrics  # dp-1 applied at global
        assert "# TYPE kds_nack_total counter" in metrics

        # deletes on global reach the zones
        assert glob.delete("/meshes/default/meshretries/r1")[0] == 200
        for zone in zones:
            wait_until(lambda z=zone: z.get(retry_on_zones("r1"))[0] == 404, WAIT, what="r1 deleted")
        assert glob.put("/meshes/default/meshretries/r2", policy("r2"))[0] == 201
        for zone in zones:
            wait_until(lambda z=zone: z.get(retry_on_zones("r2"))[0] == 200, WAIT, what="r2 in zone")

        # a connected zone cannot be deleted
        status, refused = glob.delete("/zones/zone-1")
        assert status == 409 and "unable to delete Zone" in refused["detail"]

        # kill -9 global: zones keep their resources and keep answering
        zone1_policies = versions(zone1, "/meshes/default/meshretries")
        dp1_version = versions(glob, "/meshes/default/dataplanes")["zone-1.dp-1"]
        glob.kill()
        wait_until(lambda: not kds_connected(zone1) and not kds_connected(zone2), WAIT, what="zones see global gone")
        for zone in zones:
            assert zone.get(retry_on_zones("r2"))[0] == 200
        assert zone1.put("/meshes/default/dataplanes/dp-2", dataplane("dp-2", 8081))[0] == 201

        # restart global: zones reconnect, state converges, nothing duplicated or recreated
        glob.start()
        wait_until(lambda: kds_connected(zone1) and kds_connected(zone2), WAIT, what="zones reconnected")
        wait_until(
            lambda: set(items(glob, "/meshes/default/dataplanes")) == {"zone-1.dp-1", "zone-1.dp-2"},
            WAIT,
            what="dp-2 uploaded after global restart",
        )
        dps = versions(glob, "/meshes/default/dataplanes")
        assert dps["zone-1.dp-1"] == dp1_version  # resumed: dp-1 not rewritten
        assert versions(zone1, "/meshes/default/meshretries") == zone1_policies  # nothing recreated in the zone
        assert set(online(glob)) == {"zone-1", "zone-2"}

        # restart zone-1 (sqlite): same story from the zone's side
        assert zone1.stop() == 0, zone1.logs()[-2000:]
        zone1.start()
        wait_until(lambda: kds_connected(zone1), WAIT, what="zone-1 reconnected")
        assert glob.put("/meshes/default/meshretries/r3", policy("r3"))[0] == 201
        wait_until(lambda: zone1.get(retry_on_zones("r3"))[0] == 200, WAIT, what="r3 in zone-1")
        assert versions(glob, "/meshes/default/dataplanes") == dps
        assert {
            k: v for k, v in versions(zone1, "/meshes/default/meshretries").items() if k != hashed_name("default", "r3")
        } == zone1_policies

        # a killed zone shows offline; then it can be deleted, with what it had uploaded
        zone1.stop(signal.SIGKILL)
        wait_until(lambda: online(glob).get("zone-1") is False, WAIT, what="zone-1 offline at global")
        assert glob.delete("/zones/zone-1")[0] == 200
        assert items(glob, "/meshes/default/dataplanes") == {}
        assert "zone-1" not in online(glob)
    finally:
        for cp in [*zones, glob]:
            cp.kill()


def test_zone_without_global_runs_standalone(tmp_path: Path) -> None:
    """Federation is optional: no --global-address, no KDS client."""
    zone = ControlPlaneProcess(
        tmp_path / "zone",
        args=["--mode", "zone", "--zone", "z", "--store", "memory", "--xds-address", "127.0.0.1", "--xds-port",
              str(free_port())],
    ).start()  # fmt: skip
    try:
        assert zone.get("/status/kds")[0] == 404
        assert zone.get("/meshes")[0] == 200
    finally:
        zone.kill()
