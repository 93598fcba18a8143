"""Secrets at rest, with a real `zonemesh-cp`: what it creates is owner-only whatever the umask it
is started with, and it refuses to start, touching nothing, while its secrets are open to others.
And `zonemesh-dp`: its work dir (the bootstrap holds the dataplane token) is owner-only."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from zonemesh.testing import ControlPlaneProcess, dp_run_command, free_port, http, stop_process, wait_until

pytestmark = pytest.mark.slow

POLICY = {
    "type": "MeshTimeout",
    "name": "t1",
    "mesh": "default",
    "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]},
}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def control_plane(tmp_path: Path, data: Path, *args: str) -> ControlPlaneProcess:
    """A standalone CP (SQLite; serves xDS, so it writes xds.key) on ``data``. The harness keeps its
    log in a directory of its own: ``--data-dir`` in ``args`` overrides the harness's."""
    return ControlPlaneProcess(tmp_path / "harness", args=["--data-dir", str(data), *args])


def modes(directory: Path) -> dict[str, str]:
    return {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in directory.iterdir()}


def state(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Everything a start could change: each entry's mode, size and modification time."""
    found = {".": directory.stat()} | {p.name: p.stat() for p in directory.iterdir()}
    return {name: (st.st_mode, st.st_size, st.st_mtime_ns) for name, st in found.items()}


def test_fresh_data_dir_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    cp = control_plane(tmp_path, data)
    with umask(0o022):  # what a shell usually gives: the CP must not rely on it
        cp.start()
    try:
        assert cp.put("/meshes/default/meshtimeouts/t1", POLICY)[0] == 201
        # While it runs: the WAL and its index exist, and hold the latest writes.
        assert {"zonemesh.db", "zonemesh.db-wal", "zonemesh.db-shm", "xds.key"} <= set(modes(data))
        assert oct(stat.S_IMODE(data.stat().st_mode)) == "0o700"
        assert oct(stat.S_IMODE((tmp_path / "new").stat().st_mode)) == "0o700"
        assert set(modes(data).values()) == {"0o600"}, modes(data)
    finally:
        assert cp.stop() == 0


LOOSE = {
    "data dir": (".", 0o755, "chmod 700"),
    "database": ("zonemesh.db", 0o644, "chmod 600"),
    "xDS key": ("xds.key", 0o640, "chmod 600"),
}


@pytest.mark.parametrize("what", LOOSE)
def test_exposed_secrets_are_refused_and_left_alone(tmp_path: Path, what: str) -> None:
    data = tmp_path / "data"
    first = control_plane(tmp_path, data).start()
    assert first.put("/meshes/default/meshtimeouts/t1", POLICY)[0] == 201
    assert first.stop() == 0

    name, mode, fix = LOOSE[what]
    loose = data / name
    loose.chmod(mode)
    before = state(data)
    cp = control_plane(tmp_path, data)
    cp.start(wait=False)
    try:
        assert cp.process is not None
        assert cp.process.wait(30) == 1
    finally:
        cp.kill()
    assert (
        f"zonemesh-cp: refusing to start: {loose} is accessible by group or others (mode 0{mode:o}) and holds the "
        f"control plane's secrets: {fix} {loose}"
    ) in cp.logs()
    assert "Traceback" not in cp.logs()
    assert state(data) == before


def test_store_path_outside_the_data_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    cp = control_plane(tmp_path, tmp_path / "data", "--store-path", str(shared / "zm.db"))
    cp.start(wait=False)
    try:
        assert cp.process is not None
        assert cp.process.wait(30) == 1
    finally:
        cp.kill()
    assert f"refusing to start: {shared} is accessible by group or others (mode 0755)" in cp.logs()
    assert list(shared.iterdir()) == []

    own = tmp_path / "own" / "zm.db"
    cp = control_plane(tmp_path, tmp_path / "data", "--store-path", str(own))
    with umask(0o022):
        cp.start()
    try:
        assert cp.put("/meshes/default/meshtimeouts/t1", POLICY)[0] == 201
        assert oct(stat.S_IMODE(own.parent.stat().st_mode)) == "0o700"
        assert set(modes(own.parent).values()) == {"0o600"}, modes(own.parent)
    finally:
        assert cp.stop() == 0


def test_dataplane_work_dir_is_owner_only(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    proc = None
    try:
        body = {"mesh": "default", "name": "web-1", "validFor": "1h"}
        status, token = http("POST", cp.api + "/tokens/dataplane", body)
        assert status == 200, token
        (tmp_path / "token").write_text(token)
        inbound = {"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}
        dataplane = {"type": "Dataplane", "networking": {"address": "127.0.0.1", "inbound": [inbound]}}
        admin = free_port()
        work = tmp_path / "work" / "web-1"
        cmd = dp_run_command(
            xds_port=cp.xds_port,
            ca_file=cp.data_dir / "xds.crt",
            name="web-1",
            mesh="default",
            dataplane=["--dataplane-inline", json.dumps(dataplane)],
            token_file=tmp_path / "token",
            admin_port=admin,
            work_dir=work,
        )
        with umask(0o022), (tmp_path / "dp.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        envoy = f"http://127.0.0.1:{admin}/ready"
        wait_until(lambda: http("GET", envoy, timeout=1)[0] == 200, 30, what="the sidecar's Envoy to be ready")
        assert modes(work) == {"bootstrap.json": "0o600"}
        assert oct(stat.S_IMODE(work.stat().st_mode)) == "0o700"
        assert oct(stat.S_IMODE(work.parent.stat().st_mode)) == "0o700"
    finally:
        if proc is not None:
            stop_process(proc)
        cp.stop()
