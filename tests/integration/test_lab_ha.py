"""`zonemesh-lab up --replicas 2` end to end: two global replicas on a 3-member etcd, zones given
both replicas' addresses, and the lab's check passing through `chaos kill-leader global`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lab import _alive, _logs, lab, passes

from zonemesh.jsonhttp import http
from zonemesh.lab.topology import Topology
from zonemesh.testing import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Topology]]:
    directory = tmp_path_factory.mktemp("lab-ha")
    up = lab(directory, "up", "--port-base", "0", "--replicas", "2", timeout=300)
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n{_logs(directory)}"
        yield directory, Topology.from_json((directory / "topology.json").read_text())
    finally:
        down = lab(directory, "down", timeout=90)
        assert down.returncode == 0, down.stderr
        state = json.loads((directory / "state.json").read_text())
        leftovers = [p for p in state["processes"] if p["pid"] and _alive(p["pid"])]
        assert not leftovers, f"processes still running after down: {leftovers}"


def leads(api_url: str) -> bool:
    status, body = http("GET", api_url + "/status/leader", timeout=3)
    return status == 200 and body["leader"] is True


def test_two_global_replicas_on_etcd_and_zones_given_both(ha_lab: tuple[Path, Topology]) -> None:
    directory, topo = ha_lab
    status = lab(directory, "status")
    assert status.returncode == 0
    for name in ("etcd-1", "etcd-2", "etcd-3", "global", "global-2", "zone-1", "zone-1-2", "zone-2"):
        assert f"  {name} " in status.stdout, status.stdout
    assert topo.zone_replicas == 2
    for cp in topo.globals:
        _, config = http("GET", cp.api_url + "/config", timeout=5)
        assert config["store"] == "etcd" and config["etcd_endpoints"].count(",") == 2, config
    for zone in topo.zones:  # the replica that leads its zone holds the zone's one KDS stream
        statuses = [http("GET", cp.api_url + "/status/kds", timeout=5)[1] for cp in topo.replicas_of(zone.name)]
        assert all(len(kds["globalAddresses"]) == 2 for kds in statuses), statuses
        assert [kds["leader"] for kds in statuses if kds["connected"]] == [True], statuses
    wait_until(lambda: passes(topo), timeout=60, what="the lab's check to pass")
    assert [cp.name for cp in topo.globals if leads(cp.api_url)] in (["global"], ["global-2"])


def test_check_passes_through_a_leader_kill(ha_lab: tuple[Path, Topology]) -> None:
    directory, topo = ha_lab
    wait_until(lambda: passes(topo), timeout=60, what="the lab's check to pass first")
    (leader,) = [cp for cp in topo.globals if leads(cp.api_url)]
    (other,) = [cp for cp in topo.globals if cp is not leader]
    result = lab(directory, "chaos", "kill-leader", "global", "--for", "120s")
    assert result.returncode == 0, result.stderr
    assert f"{leader.name}, the leader of global, killed" in result.stdout
    wait_until(lambda: leads(other.api_url), timeout=30, what=f"{other.name} leading")
    wait_until(lambda: passes(topo), timeout=90, what="the lab's check to pass with the leader down")
    state = json.loads((directory / "state.json").read_text())
    killed = next(p for p in state["processes"] if p["name"] == leader.name)
    assert killed["state"] == "held down", killed  # the check passed without it
    result = lab(directory, "check", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "one global replica leads" in result.stdout


def test_kill_leader_of_an_unknown_control_plane_is_a_clear_error(ha_lab: tuple[Path, Topology]) -> None:
    directory, _ = ha_lab
    result = lab(directory, "chaos", "kill-leader", "zone-9")
    assert result.returncode == 1
    assert "no control plane 'zone-9'; control planes: global, zone-1, zone-2" in result.stderr


def test_kill_leader_of_a_zone_kills_its_only_replica_and_the_lab_converges(ha_lab: tuple[Path, Topology]) -> None:
    directory, topo = ha_lab
    result = lab(directory, "chaos", "kill-leader", "zone-2", "--for", "2s")
    assert result.returncode == 0, result.stderr
    assert "zone-2, the leader of zone-2, killed (SIGKILL)" in result.stdout
    wait_until(lambda: passes(topo), timeout=90, what="the lab to converge after zone-2's restart")


def test_kill_leader_of_zone_1_the_other_zone_replica_leads_and_the_check_passes(
    ha_lab: tuple[Path, Topology],
) -> None:
    directory, topo = ha_lab
    wait_until(lambda: passes(topo), timeout=90, what="the lab's check to pass first")
    replicas = topo.replicas_of("zone-1")
    wait_until(lambda: sum(leads(cp.api_url) for cp in replicas) == 1, timeout=30, what="one zone-1 leader")
    (leader,) = [cp for cp in replicas if leads(cp.api_url)]
    (other,) = [cp for cp in replicas if cp is not leader]
    result = lab(directory, "chaos", "kill-leader", "zone-1", "--for", "120s")
    assert result.returncode == 0, result.stderr
    assert f"{leader.name}, the leader of zone-1, killed" in result.stdout
    wait_until(lambda: leads(other.api_url), timeout=30, what=f"{other.name} leading zone-1")
    wait_until(lambda: passes(topo), timeout=120, what="the lab's check to pass with zone-1's leader down")
