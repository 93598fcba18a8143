"""`zonemesh-lab` end to end: the no-docker lab comes up, carries traffic, survives its own chaos.

This is the README's multi-zone command run for real: global + two zones + zone proxies + demo
apps with real Envoy sidecars, all on 127.0.0.1 with free ports and a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from zonemesh.lab.main import check
from zonemesh.lab.topology import Topology
from zonemesh.spawn import python_module
from zonemesh.testing import wait_until

pytestmark = pytest.mark.slow


def lab(directory: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_module("zonemesh.lab.main", "--dir", str(directory), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def failures(topo: Topology) -> list[str]:
    return [f"{what}: {detail}" for what, ok, detail in check(topo) if not ok]


def passes(topo: Topology) -> bool:
    """True when the lab's check passes; else raises with its failing lines, which a timed-out
    ``wait_until`` then reports."""
    failed = failures(topo)
    if failed:
        raise AssertionError("; ".join(failed))
    return True


@pytest.fixture(scope="module")
def running_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Topology]]:
    directory = tmp_path_factory.mktemp("lab")
    up = lab(directory, "up", "--port-base", "0")
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n{_logs(directory)}"
        yield directory, Topology.from_json((directory / "topology.json").read_text())
    finally:
        down = lab(directory, "down", timeout=90)
        assert down.returncode == 0, down.stderr
        state = json.loads((directory / "state.json").read_text())
        assert state["phase"] == "stopped"
        leftovers = [p for p in state["processes"] if p["pid"] and _alive(p["pid"])]
        assert not leftovers, f"processes still running after down: {leftovers}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _logs(directory: Path) -> str:
    out = []
    for log in sorted((directory / "logs").glob("*.log")):
        out.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-1500:]}")
    return "\n".join(out)


def test_up_prints_where_everything_is(running_lab: tuple[Path, Topology]) -> None:
    directory, _ = running_lab
    status = lab(directory, "status")
    assert status.returncode == 0
    for name in ("global", "zone-1", "zone-2", "frontend", "backend-zone-2"):
        assert f"  {name} " in status.stdout


def test_check_passes_on_a_fresh_lab(running_lab: tuple[Path, Topology]) -> None:
    directory, _ = running_lab
    result = lab(directory, "check", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_partition_shows_the_zone_offline_then_back(running_lab: tuple[Path, Topology]) -> None:
    directory, topo = running_lab
    assert lab(directory, "chaos", "partition", "zone-2", "--for", "8s").returncode == 0
    wait_until(
        lambda: "zone-2 online at global: " in " ".join(failures(topo)), timeout=15, what="zone-2 offline at global"
    )
    # Traffic inside zone-1 does not depend on global.
    assert not [f for f in failures(topo) if f.startswith("traffic")]
    wait_until(lambda: passes(topo), timeout=40, what="the lab to converge after the partition")


def test_killed_global_comes_back_and_the_lab_converges(running_lab: tuple[Path, Topology]) -> None:
    directory, topo = running_lab
    result = lab(directory, "chaos", "kill", "global", "--for", "2s")
    assert result.returncode == 0, result.stderr
    assert not [f for f in failures(topo) if f.startswith("traffic")]  # proxies keep their config
    wait_until(lambda: passes(topo), timeout=60, what="the lab to converge after global's restart")


def test_unknown_chaos_target_is_a_clear_error(running_lab: tuple[Path, Topology]) -> None:
    directory, _ = running_lab
    result = lab(directory, "chaos", "partition", "zone-9")
    assert result.returncode == 1
    assert "no zone 'zone-9'" in result.stderr


def test_expired_zone_token_is_refused_and_a_renewed_one_reconnects(running_lab: tuple[Path, Topology]) -> None:
    directory, topo = running_lab
    result = lab(directory, "chaos", "expire-token", "zone-2")
    assert result.returncode == 0, result.stderr
    wait_until(
        lambda: "zone-2 online at global: " in " ".join(failures(topo)), timeout=40, what="zone-2 offline at global"
    )

    def refused_as_expired() -> bool:
        lines = (directory / "logs" / "global.log").read_text(errors="replace").splitlines()
        return any("zone_token_refused" in line and "expired" in line for line in lines)

    wait_until(refused_as_expired, timeout=20, what="global to refuse zone-2's expired token")
    assert "zone-2 online at global: " in " ".join(failures(topo))  # still out while its token is expired
    assert lab(directory, "chaos", "renew-token", "zone-2").returncode == 0
    wait_until(lambda: passes(topo), timeout=40, what="zone-2 back online with its renewed token")
