"""Both labs put their mesh and allow-all policy on global only when they are missing: a user's
change survives the next `zonemesh-lab up` and the next `docker compose up -d` (issue 18: the
compose lab's init PUT them on every run and silently reset the mesh).

Against a real global control plane started with the no-docker lab's own command line
(``Supervisor.cp_argv``); the compose lab's ``init`` role talks to it through the API as it talks
to the compose global (with the admin token `zonemesh-cp admin-token` reads from its store).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from zonemesh.lab import container
from zonemesh.lab.supervisor import LAB_RESOURCES, MESH_DOC, Supervisor
from zonemesh.lab.topology import MESH, Topology, plan
from zonemesh.spawn import python_module
from zonemesh.testing import http, stop_process, wait_until

pytestmark = pytest.mark.slow

MESH_PATH = f"/meshes/{MESH}"
ALLOW_ALL_PATH = LAB_RESOURCES[1][0]


@dataclass
class LabGlobal:
    topo: Topology
    process: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return self.topo.global_cp.api_url

    def get(self, path: str) -> dict[str, Any]:
        status, body = http("GET", self.api + path)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    def admin_token(self) -> str:
        read = subprocess.run(
            python_module("zonemesh.cp", "admin-token", "--data-dir", str(self.topo.directory / "global")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert read.returncode == 0, read.stderr
        return read.stdout.strip()


@pytest.fixture
def lab_global(tmp_path: Path) -> Iterator[LabGlobal]:
    """A fresh global, exactly as `zonemesh-lab up` starts it (free ports)."""
    topo = plan(tmp_path / "lab", zones=2, port_base=0)
    topo.directory.mkdir(mode=0o700, parents=True)
    log = (tmp_path / "global.log").open("wb")
    process = subprocess.Popen(Supervisor(topo).cp_argv(topo.global_cp), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "global.log").read_text()
            return http("GET", f"http://127.0.0.1:{topo.global_cp.diagnostics}/ready", timeout=1)[0] == 200

        wait_until(ready, 30, what="the lab's global")
        yield LabGlobal(topo, process)
    finally:
        stop_process(process)


def a_users_changes(g: LabGlobal) -> dict[str, Any]:
    """What a user might do between two runs: change the mesh, delete the allow-all policy."""
    mesh = g.get(MESH_PATH)
    changed = {**MESH_DOC, "routing": {"localityAwareLoadBalancing": True}}
    assert http("PUT", g.api + MESH_PATH, changed)[0] == 200
    assert http("DELETE", g.api + ALLOW_ALL_PATH)[0] == 200
    after = g.get(MESH_PATH)
    assert after["version"] > mesh["version"]
    return after


async def test_zonemesh_lab_up_creates_what_is_missing_and_keeps_what_a_user_changed(lab_global: LabGlobal) -> None:
    g = lab_global
    assert g.get("/meshes")["items"] == []  # the lab's global makes no default mesh of its own
    supervisor = Supervisor(g.topo)
    async with aiohttp.ClientSession() as session:
        supervisor._http = session
        assert await supervisor.ensure_lab_resources(g.api) == [MESH_PATH, ALLOW_ALL_PATH]
        first = g.get(MESH_PATH)
        assert first["mtls"]["enabledBackend"] == "ca-1"  # the lab's mesh, with mTLS for cross-zone traffic
        assert first["routing"] == {"localityAwareLoadBalancing": False}

        users = a_users_changes(g)
        # The next `up`: the deleted policy comes back, the user's mesh stays as the user left it.
        assert await supervisor.ensure_lab_resources(g.api) == [ALLOW_ALL_PATH]
        assert g.get(MESH_PATH) == users
        allow_all = g.get(ALLOW_ALL_PATH)
        # And the one after changes nothing.
        assert await supervisor.ensure_lab_resources(g.api) == []
        assert g.get(MESH_PATH) == users and g.get(ALLOW_ALL_PATH) == allow_all


def test_compose_init_creates_what_is_missing_and_keeps_what_a_user_changed(
    lab_global: LabGlobal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = lab_global
    paths = container.Paths(admin=tmp_path / "admin", tokens=tmp_path / "tokens")
    container.write_private(paths.admin_token("global"), g.admin_token().encode())
    init = container.Init(paths, global_url=g.api)

    init.run([], [], [])  # the first `docker compose up -d`
    first = g.get(MESH_PATH)
    assert first["mtls"]["enabledBackend"] == "ca-1"
    assert first["routing"] == {"localityAwareLoadBalancing": False}
    assert "created Mesh default on global" in capsys.readouterr().out

    users = a_users_changes(g)
    init.run([], [], [])  # a later `docker compose up -d`
    out = capsys.readouterr().out
    assert "Mesh default already on global: kept as it is" in out
    assert "created MeshTrafficPermission allow-all on global" in out
    assert g.get(MESH_PATH) == users
    allow_all = g.get(ALLOW_ALL_PATH)

    init.run([], [], [])
    assert g.get(MESH_PATH) == users and g.get(ALLOW_ALL_PATH) == allow_all


def test_both_labs_start_global_without_a_default_mesh_of_its_own(tmp_path: Path) -> None:
    """Otherwise global's default mesh (no mTLS) would be there first, and be kept."""
    topo = plan(tmp_path, zones=2, port_base=0)
    assert "--defaults-skip-mesh-creation" in Supervisor(topo).cp_argv(topo.global_cp)
    assert "--defaults-skip-mesh-creation" in container.cp_argv("global", container.Paths())
